package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
)

// Gate waits until a freshly started container is ready:
//   - if spec has probes (HTTP, TCP, Exec), each of them passes;
//   - and if the container has a Docker HEALTHCHECK, its health is "healthy";
//   - a container with neither must stay running, without restarting, for
//     spec.MinUp.
//
// It fails at once when the container exits (ErrExited), restarts
// (ErrRestarted) or turns unhealthy (ErrUnhealthy), and with ErrTimeout at
// spec.Timeout. It watches Docker events, and inspects the container at the
// start and every second in case an event is missed. The error says what it
// waited for, the last probe result or health-check output, and for a
// container that exited its exit code and last log lines. If ctx ends first,
// the error wraps ctx.Err() and none of the sentinels.
func (c *Checker) Gate(ctx context.Context, containerID string, spec Spec) error {
	spec = spec.withDefaults()
	start := time.Now()

	// Cancelled on return: ends the event stream and the probes.
	gctx, cancel := context.WithCancel(ctx)
	var probes sync.WaitGroup
	defer probes.Wait()
	defer cancel()

	// Subscribe before the first inspect, so that nothing happens unseen.
	msgs, errs := subscribe(gctx, c.Engine, []string{containerID})
	in, err := c.Engine.ContainerInspect(gctx, containerID)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("gate %s: %w", shortID(containerID), ctx.Err())
		}
		return fmt.Errorf("gate %s: inspect: %w", shortID(containerID), err)
	}
	g := &gate{c: c, spec: spec, start: start, w: newWatched(in)}
	g.noteHealth(in)
	if p := g.w.check(in); p != nil {
		return g.fail(ctx, p)
	}
	ps, err := c.probers(spec, in, g.w)
	if err != nil {
		return fmt.Errorf("gate %s: %w", g.w.name, err)
	}
	g.probes = ps
	g.results = make([]string, len(ps))
	g.passed = make([]bool, len(ps))
	results := make(chan probeResult, len(ps))
	for i, p := range ps {
		probes.Add(1)
		go func() {
			defer probes.Done()
			runProbe(gctx, i, p, spec.Interval, results)
		}()
	}

	deadline := time.NewTimer(spec.Timeout)
	defer deadline.Stop()
	ticker := time.NewTicker(c.pollEvery())
	defer ticker.Stop()
	var minUp <-chan time.Time
	if !g.hasChecks() {
		t := time.NewTimer(spec.MinUp)
		defer t.Stop()
		minUp = t.C
	}

	for {
		if g.ready() {
			// Confirm: a die event may still be on its way.
			in, err := c.Engine.ContainerInspect(gctx, g.w.id)
			if err != nil {
				return g.inspectErr(ctx, err)
			}
			if p := g.w.check(in); p != nil {
				return g.fail(ctx, p)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return g.ctxErr(ctx)
		case <-deadline.C:
			return fmt.Errorf("gate %s: waited %s for %s%s: %w", g.w.name, spec.Timeout, g.waitingFor(), g.lastResults(true), ErrTimeout)
		case <-minUp:
			g.upLongEnough = true
		case r := <-results:
			g.results[r.idx] = r.result
			g.passed[r.idx] = r.ok
		case m := <-msgs:
			if m.Actor.ID != "" && m.Actor.ID != g.w.id {
				continue
			}
			p, healthy := c.fromEvent(gctx, g.w, m)
			if p != nil {
				return g.fail(ctx, p)
			}
			if healthy {
				g.healthy = true
			}
		case err := <-errs:
			// The stream is over; the ticker carries on alone.
			msgs, errs = nil, nil
			if ctx.Err() != nil {
				return g.ctxErr(ctx)
			}
			g.eventsErr = err
		case <-ticker.C:
			in, err := c.Engine.ContainerInspect(gctx, g.w.id)
			if err != nil {
				return g.inspectErr(ctx, err)
			}
			if p := g.w.check(in); p != nil {
				return g.fail(ctx, p)
			}
			g.noteHealth(in)
		}
	}
}

// gate is the state of one Gate call.
type gate struct {
	c     *Checker
	spec  Spec
	start time.Time
	w     watched

	probes  []prober
	results []string // last result of each probe; "" before the first
	passed  []bool

	healthy      bool              // Docker health has been "healthy"
	lastHealth   *container.Health // from the last inspect
	upLongEnough bool              // MinUp has passed (containers with no check)
	eventsErr    error             // why the event stream ended, if it did
}

// noteHealth records the Docker health of a fresh inspect.
func (g *gate) noteHealth(in container.InspectResponse) {
	if in.ContainerJSONBase == nil || in.State == nil || in.State.Health == nil {
		return
	}
	g.lastHealth = in.State.Health
	if in.State.Health.Status == container.Healthy {
		g.healthy = true
	}
}

func (g *gate) hasChecks() bool { return len(g.probes) > 0 || g.w.hasHealth }

func (g *gate) ready() bool {
	if !g.hasChecks() {
		return g.upLongEnough
	}
	for _, ok := range g.passed {
		if !ok {
			return false
		}
	}
	return !g.w.hasHealth || g.healthy
}

// waitingFor says what the gate waits for.
func (g *gate) waitingFor() string {
	var parts []string
	for _, p := range g.probes {
		parts = append(parts, p.describe())
	}
	if g.w.hasHealth {
		parts = append(parts, `Docker health "healthy"`)
	}
	if len(parts) == 0 {
		return fmt.Sprintf("the container to stay running for %s", g.spec.MinUp)
	}
	return strings.Join(parts, " and ")
}

// lastResults renders, after ": ", the last result of every probe that has
// not passed and, with health, the Docker health if it is not "healthy"
// yet; "" when there is nothing to say.
func (g *gate) lastResults(health bool) string {
	var parts []string
	for i := range g.probes {
		switch {
		case g.passed[i]:
		case g.results[i] == "":
			parts = append(parts, "no attempt has finished")
		default:
			parts = append(parts, g.results[i])
		}
	}
	if health && g.w.hasHealth && !g.healthy {
		status := container.Starting
		if g.lastHealth != nil {
			status = g.lastHealth.Status
		}
		parts = append(parts, fmt.Sprintf("health is %q, %s", status, healthOutput(g.lastHealth)))
	}
	if g.eventsErr != nil {
		parts = append(parts, fmt.Sprintf("(Docker events lost: %v)", g.eventsErr))
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, "; ")
}

func (g *gate) elapsed() time.Duration { return time.Since(g.start).Round(time.Millisecond) }

// fail reports problem p of the container.
func (g *gate) fail(ctx context.Context, p *problem) error {
	detail := g.c.explain(ctx, g.w, p)
	// An unhealthy container's detail is its last health check already.
	last := g.lastResults(!errors.Is(p.err, ErrUnhealthy))
	return fmt.Errorf("gate %s: waited %s for %s%s: %w: %s", g.w.name, g.elapsed(), g.waitingFor(), last, p.err, detail)
}

// ctxErr reports that ctx ended before the container was ready.
func (g *gate) ctxErr(ctx context.Context) error {
	return fmt.Errorf("gate %s: waited %s for %s: %w", g.w.name, g.elapsed(), g.waitingFor(), ctx.Err())
}

// inspectErr reports a failed inspect, or that ctx ended.
func (g *gate) inspectErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return g.ctxErr(ctx)
	}
	return fmt.Errorf("gate %s: inspect: %w", g.w.name, err)
}
