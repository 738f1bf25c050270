package swarm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/compose/life"

	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/errdefs"
)

var _ life.Backend = (*Life)(nil)

// Life is one release of one project on a Swarm: the backend agent
// drives as it drives the single engine's life.Life.
type Life struct {
	Engine  Engine
	Project string
	// Release labels the services the release creates or updates
	// (LabelRelease).
	Release string
	// Progress receives a line per thing done; may be nil.
	Progress compose.Progress
	// OnPlan is shown every plan made (the rollback's too); may be nil.
	OnPlan func(life.Plan)
	// OnStep is told of each step of the release's own rollout as it
	// ends; may be nil.
	OnStep func(compose.StepResult)
	// Auth returns the registry credentials (X-Registry-Auth) for an
	// image reference, sent to the nodes with every create and update;
	// may be nil (no credentials).
	Auth func(ctx context.Context, ref string) (string, error)
	// Hooks runs the pre- and post-deploy hooks.
	Hooks HookRunner
	// Proxies, when set, is synced as a service's running tasks change.
	Proxies ProxySyncer
	// Poll is how often gates and the monitor look; DefaultPoll if 0.
	Poll time.Duration
}

func (l *Life) say(service, format string, args ...any) {
	if l.Progress != nil {
		l.Progress(service, fmt.Sprintf(format, args...))
	}
}

// Plan observes the stack and plans the way to desired.
func (l *Life) Plan(ctx context.Context, desired *compose.Desired) (life.Plan, error) {
	return l.plan(ctx, desired, false, false)
}

func (l *Life) plan(ctx context.Context, desired *compose.Desired, rollback, force bool) (*Plan, error) {
	observed, err := Observe(ctx, l.Engine, l.Project)
	if err != nil {
		return nil, err
	}
	p := MakePlan(desired, observed, rollback, force)
	if l.OnPlan != nil {
		l.OnPlan(p)
	}
	return p, nil
}

// Graph is the graph RollOut runs for plan.
func (l *Life) Graph(plan life.Plan) *compose.Graph {
	return plan.(*Plan).Graph()
}

// RollOut runs the release's rollout: graph, made by Graph from plan.
func (l *Life) RollOut(ctx context.Context, plan life.Plan, graph *compose.Graph) error {
	err := l.run(ctx, plan.(*Plan), graph, l.OnStep)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the rollout timed out: %w", err)
	}
	return err
}

// RollBack brings every service of the stack back to prev, a release that
// was live: a service whose spec differs is updated to prev's spec with
// its rollback_config, one prev has and the stack lost is created again,
// and each is gated as in a rollout; the services prev does not have are
// removed. After a crash (recheck), every service of prev is updated and
// gated, whatever its hash.
func (l *Life) RollBack(ctx context.Context, prev *compose.Desired, recheck bool) error {
	p, err := l.plan(ctx, prev, true, recheck)
	if err != nil {
		return err
	}
	if err := l.run(ctx, p, p.Graph(), nil); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("the rollback timed out: %w", err)
		}
		return fmt.Errorf("roll back: %w", err)
	}
	return nil
}

// Undo takes a failed first release away: the services it created are
// removed, a service it updated (one the stack had before Berth) goes
// back to its previous spec, and the networks it created are removed.
func (l *Life) Undo(ctx context.Context, failed *compose.Desired) error {
	observed, err := Observe(ctx, l.Engine, l.Project)
	if err != nil {
		return err
	}
	var errs []error
	for i := range failed.Services {
		spec := &failed.Services[i]
		name := SwarmName(failed.Project, spec)
		svc, ok := observed.Services[name]
		if !ok || (l.Release != "" && svc.Spec.Labels[LabelRelease] != l.Release) {
			continue
		}
		if svc.PreviousSpec == nil {
			if err := l.removeService(ctx, spec.Name, name, svc.ID); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		l.say(spec.Name, "rolling service %s back to the spec it had", name)
		if _, err := l.Engine.ServiceUpdate(ctx, svc.ID, svc.Version, svc.Spec, swarm.ServiceUpdateOptions{Rollback: "previous"}); err != nil {
			errs = append(errs, fmt.Errorf("roll service %s back: %w", name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	var nets []string
	for _, n := range failed.Networks {
		if _, ok := observed.Networks[n.Name]; ok {
			nets = append(nets, n.Name)
		}
	}
	if err := l.removeNetworks(ctx, nets); err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	return nil
}

// Cleanup removes the stack's services desired no longer has, and its
// networks no longer in the file.
func (l *Life) Cleanup(ctx context.Context, desired *compose.Desired) error {
	observed, err := Observe(ctx, l.Engine, l.Project)
	if err != nil {
		return err
	}
	p := MakePlan(desired, observed, false, false)
	var errs []error
	for _, s := range p.RemoveServices {
		if err := l.removeService(ctx, s.Name, s.Service, s.ID); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	keep := map[string]bool{}
	for _, n := range desired.Networks {
		keep[n.Name] = true
	}
	var gone []string
	for _, name := range sortedNames(observed.Networks) {
		if !keep[name] {
			gone = append(gone, name)
		}
	}
	if err := l.removeNetworks(ctx, gone); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	return nil
}

// removeNetworks removes stack networks. A network is in use until Swarm
// has taken down the tasks of the services just removed: each is tried
// again every Poll while the engine says so, until ctx ends.
func (l *Life) removeNetworks(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	ticker := time.NewTicker(l.poll())
	defer ticker.Stop()
	for _, name := range names {
		l.say("", "removing network %s", name)
		for {
			err := l.Engine.NetworkRemove(ctx, name)
			if err == nil || errdefs.IsNotFound(err) {
				break
			}
			if !networkInUse(err) {
				return fmt.Errorf("remove network %s: %w", name, err)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("remove network %s: %w (%w)", name, err, ctx.Err())
			case <-ticker.C:
			}
		}
	}
	return nil
}

// PostDeploy runs the post-deploy hooks of the services that changed.
// They cannot fail a committed release: a failure is said.
func (l *Life) PostDeploy(ctx context.Context, desired *compose.Desired, changed []string) {
	for i := range desired.Services {
		spec := &desired.Services[i]
		if !slices.Contains(changed, spec.Name) || len(spec.Policy.PostDeploy) == 0 {
			continue
		}
		if l.Hooks == nil {
			l.say(spec.Name, "warning: post-deploy hooks not run: no hook runner")
			continue
		}
		if err := l.Hooks.Run(ctx, spec, "post-deploy", spec.Policy.PostDeploy); err != nil {
			l.say(spec.Name, "warning: post-deploy hooks: %v", err)
		}
	}
}

// networkInUse reports whether the engine refused to remove a network
// because tasks or containers are still attached.
func networkInUse(err error) bool {
	if errdefs.IsConflict(err) || errdefs.IsForbidden(err) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "in use") || strings.Contains(msg, "active endpoints")
}
