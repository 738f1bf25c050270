package swarm

import (
	"context"
	"slices"
	"time"

	"github.com/berth-deploy/berth/compose"
)

// DefaultFollowEvery is how often Follow looks at the tasks when every is
// not positive.
const DefaultFollowEvery = 2 * time.Second

// Follow keeps the proxies of the current desired state (desired(), nil
// while there is none) in step with the running tasks of the services
// they front between deploys too: a node drained, a task restarted or
// rescheduled by Swarm. Every every (DefaultFollowEvery when not
// positive) until ctx ends it syncs each proxy that lists upstreams, as
// Sync does; an error is said (once, until it changes or clears) and the
// next look tries again. Sync and Follow never write the same proxy at
// once.
func (p *Proxies) Follow(ctx context.Context, desired func() *compose.Desired, every time.Duration) {
	if every <= 0 {
		every = DefaultFollowEvery
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	failing := map[string]string{} // by proxy: the error last said
	for {
		if d := desired(); d != nil {
			p.followOnce(ctx, d, failing)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// followOnce syncs every proxy of d that lists upstreams once.
func (p *Proxies) followOnce(ctx context.Context, d *compose.Desired, failing map[string]string) {
	var proxies []string
	for i := range d.Services {
		s := &d.Services[i]
		if px := s.Policy.Proxy; px != nil && (px.Upstreams != "" || px.Servers != "") {
			proxies = append(proxies, s.Name)
			err := p.syncProxy(ctx, d, s)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil && failing[s.Name] != err.Error():
				failing[s.Name] = err.Error()
				p.say(s.Name, "following the tasks: %v (trying again every look)", err)
			case err == nil && failing[s.Name] != "":
				delete(failing, s.Name)
				p.say(s.Name, "following the tasks: in step again")
			}
		}
	}
	for name := range failing {
		if !slices.Contains(proxies, name) {
			delete(failing, name)
		}
	}
}
