// Package life runs the life of a release on one engine, in one place: its
// rollout as the plan's graph (hooks, boots, gates, proxies, drains, the
// monitor window); on failure, the whole project back to the release
// before (with the same gates) or, when there was none, the release
// undone; after the commit, the cleanup of what it retired and the
// post-deploy hooks. It keeps no record and takes no lock: the caller
// journals, records the outcome and answers the doors.
package life

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/berth-deploy/berth/compose"
)

// Backend is where a project's releases run: one Docker engine (Life) or
// a Docker Swarm (package compose/swarm). agent drives either the same
// way: it journals the graph, runs it, and on failure rolls back.
type Backend interface {
	// Plan observes the project and plans the way to desired; a pure
	// comparison, printable, changing nothing.
	Plan(ctx context.Context, desired *compose.Desired) (Plan, error)
	// Graph is the graph RollOut runs for plan: the journal records it
	// first.
	Graph(plan Plan) *compose.Graph
	// RollOut runs the release's rollout, ending with its monitor window.
	RollOut(ctx context.Context, plan Plan, graph *compose.Graph) error
	// RollBack brings the whole project back to prev, a release that was
	// live, with the same gates; recheck after a crash.
	RollBack(ctx context.Context, prev *compose.Desired, recheck bool) error
	// Undo takes a failed first release away.
	Undo(ctx context.Context, failed *compose.Desired) error
	// Cleanup removes what a committed release retired.
	Cleanup(ctx context.Context, desired *compose.Desired) error
	// PostDeploy runs the post-deploy hooks of the services that changed;
	// a failure is said, never returned.
	PostDeploy(ctx context.Context, desired *compose.Desired, changed []string)
}

// Plan is what a release will change, as its backend planned it.
type Plan interface {
	Empty() bool
	ChangedServices() []string
	String() string
}

var _ Backend = (*Life)(nil)

// Checker gates and watches containers (healthcheck.Checker).
type Checker interface {
	compose.Gater
	compose.Monitor
}

// When a container was stopped, in a release's life (agent/api's words).
const (
	DuringRollout  = "rollout"
	DuringRollback = "rollback"
	DuringUndo     = "undo"
	DuringCleanup  = "cleanup"
)

// Life is one release of one project.
type Life struct {
	Engine  compose.Engine
	Health  Checker
	Project string
	// Release labels what the release creates (its number).
	Release string
	// BootCPUShares: see compose.Executor.
	BootCPUShares int64
	// DefaultCPUShares: see compose.Executor.
	DefaultCPUShares int64
	// Idle: see compose.Executor; nil boots by the weight alone.
	Idle compose.Idler
	// Pin: see compose.Executor; nil boots on every CPU.
	Pin compose.Pinner
	// Progress receives a line per thing done; may be nil.
	Progress compose.Progress
	// OnPlan is shown every plan made (the rollback's too); may be nil.
	OnPlan func(*compose.Plan)
	// OnStep is told of each step of the release's own rollout as it
	// ends; may be nil.
	OnStep func(compose.StepResult)
	// OnKilled is told of the containers the engine killed at the end of
	// their grace period, and when; may be nil.
	OnKilled func(during string, killed []compose.Killed)
}

func (l *Life) say(service, format string, args ...any) {
	if l.Progress != nil {
		l.Progress(service, fmt.Sprintf(format, args...))
	}
}

func (l *Life) executor(rollback bool) *compose.Executor {
	return &compose.Executor{
		Engine:           l.Engine,
		Health:           l.Health,
		Monitor:          l.Health,
		Release:          l.Release,
		Progress:         l.Progress,
		KeepRetired:      !rollback,
		Rollback:         rollback,
		BootCPUShares:    l.BootCPUShares,
		DefaultCPUShares: l.DefaultCPUShares,
		Idle:             l.Idle,
		Pin:              l.Pin,
	}
}

func (l *Life) killed(during string, k []compose.Killed) {
	if l.OnKilled != nil && len(k) > 0 {
		l.OnKilled(during, k)
	}
}

// Plan observes the project and plans the way to desired.
func (l *Life) Plan(ctx context.Context, desired *compose.Desired) (Plan, error) {
	return l.plan(ctx, desired)
}

func (l *Life) plan(ctx context.Context, desired *compose.Desired) (*compose.Plan, error) {
	observed, err := compose.Observe(ctx, l.Engine, l.Project)
	if err != nil {
		return nil, err
	}
	plan := compose.MakePlan(desired, observed)
	if l.OnPlan != nil {
		l.OnPlan(plan)
	}
	return plan, nil
}

// Graph is the graph RollOut runs for plan: the journal records it first.
func (l *Life) Graph(plan Plan) *compose.Graph {
	return plan.(*compose.Plan).Graph(l.executor(false).Mode())
}

// RollOut runs the release's rollout: graph, made by Graph from plan. What
// it retires is kept aside until Cleanup, so RollBack can go back to it.
func (l *Life) RollOut(ctx context.Context, plan Plan, graph *compose.Graph) error {
	exec := l.executor(false)
	exec.OnStep = l.OnStep
	err := exec.Run(ctx, plan.(*compose.Plan), graph)
	// Recorded whether it succeeded or not: a kill on the way to a failure
	// counts as much.
	l.killed(DuringRollout, exec.Killed())
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the rollout timed out: %w", err)
	}
	return err
}

// RollBack brings the project back to prev, a release that was live, with
// each service's rollback policy and the same gates, from the images on
// disk. After a crash (recheck), it also gates every running container of
// prev: a rollback the dead agentd had begun may have started one no gate
// has passed.
func (l *Life) RollBack(ctx context.Context, prev *compose.Desired, recheck bool) error {
	plan, err := l.plan(ctx, prev)
	if err != nil {
		return err
	}
	exec := l.executor(true)
	err = exec.Apply(ctx, plan)
	l.killed(DuringRollback, exec.Killed())
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("the rollback timed out: %w", err)
		}
		return err
	}
	if recheck {
		return l.gateRunning(ctx, prev)
	}
	return nil
}

// gateRunning waits until every running container of desired's services
// is ready, as a rollout's gate would, and gives one that booted at the
// boot CPU weight (its gate never passed before the crash) its own back.
func (l *Life) gateRunning(ctx context.Context, desired *compose.Desired) error {
	observed, err := compose.Observe(ctx, l.Engine, l.Project)
	if err != nil {
		return err
	}
	exec := l.executor(true)
	for i := range desired.Services {
		spec := &desired.Services[i]
		for _, c := range observed.Service(spec.Name) {
			if !c.Running() {
				continue
			}
			l.say(spec.Name, "checking that %s is ready", c.Name)
			if err := l.Health.Gate(ctx, c.ID, spec.Policy.Health); err != nil {
				return fmt.Errorf("service %s: %w", spec.Name, err)
			}
			if err := exec.Unshield(ctx, spec, []string{c.ID}); err != nil {
				return fmt.Errorf("service %s: %w", spec.Name, err)
			}
		}
	}
	return nil
}

// Undo takes a failed first release away: its containers removed, those
// it replaced (a stack docker compose had started) running again.
func (l *Life) Undo(ctx context.Context, failed *compose.Desired) error {
	exec := &compose.Executor{Engine: l.Engine, Progress: l.Progress}
	err := exec.Undo(ctx, failed, l.Release)
	l.killed(DuringUndo, exec.Killed())
	return err
}

// Cleanup removes what a committed release retired (and networks no
// longer in the file); the engine's kills at the end of a grace period are
// told to OnKilled.
func (l *Life) Cleanup(ctx context.Context, desired *compose.Desired) error {
	observed, err := compose.Observe(ctx, l.Engine, l.Project)
	if err != nil {
		return err
	}
	exec := &compose.Executor{Engine: l.Engine, Progress: l.Progress}
	err = exec.Apply(ctx, compose.MakePlan(desired, observed).Cleanup())
	l.killed(DuringCleanup, exec.Killed())
	return err
}

// PostDeploy runs the post-deploy hooks of the services that changed.
// They cannot fail a committed release: a failure is said.
func (l *Life) PostDeploy(ctx context.Context, desired *compose.Desired, changed []string) {
	exec := &compose.Executor{Engine: l.Engine, Release: l.Release, Progress: l.Progress}
	for i := range desired.Services {
		spec := &desired.Services[i]
		if !slices.Contains(changed, spec.Name) || len(spec.Policy.PostDeploy) == 0 {
			continue
		}
		if err := exec.RunHooks(ctx, l.Project, spec, "post-deploy", spec.Policy.PostDeploy); err != nil {
			l.say(spec.Name, "warning: %v", err)
		}
	}
}
