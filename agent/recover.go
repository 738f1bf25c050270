package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/compose/life"
	"github.com/berth-deploy/berth/compose/swarm"
)

// Recover brings every project to one consistent release before agentd
// takes requests. A release still in progress in the journal was never
// committed (agentd died during it): the project goes back to the release
// before it, with the same machinery and gating, and the record says so:
// it is marked interrupted. Before that, recovery waits for the
// project's containers to settle (recovery.settle): the engine finishes a
// create the dead agentd had under way. For a committed release,
// containers it retired but did not remove yet are removed. Either way,
// hook containers agentd left (a migration, say) are stopped and removed
// first. Every project is tried; the errors are returned together.
func (s *Service) Recover(ctx context.Context) error {
	var errs []error
	for _, name := range s.cfg.ProjectNames() {
		if err := s.recoverProject(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Service) recoverProject(ctx context.Context, name string) error {
	unfinished, ok, err := s.store.Unfinished(name)
	if err != nil {
		return err
	}
	if s.cfg.Projects[name].Backend == config.BackendSwarm {
		return s.recoverSwarm(ctx, name, unfinished, ok)
	}
	if ok {
		// The engine may still be carrying out the dead agentd's last
		// request (a create): wait for it, or the plan below acts on a
		// view the engine is about to change.
		rc := s.cfg.Recovery
		start := s.now()
		settled, err := compose.Settle(ctx, s.engine, name, rc.Settle, rc.SettleLimit)
		switch {
		case err != nil:
			return err
		case !settled:
			s.log.Warn("the project's containers did not settle; recovering anyway", "project", name, "settle", rc.Settle, "settle_limit", rc.SettleLimit)
		default:
			s.log.Info("the project's containers settled", "project", name, "waited", s.now().Sub(start).Round(time.Millisecond))
		}
	}
	// A hook of a release being rolled back must not go on changing the
	// database under the release put back.
	hooks := &compose.Executor{Engine: s.engine, Progress: func(svc, msg string) {
		s.log.Warn(msg, "project", name, "service", svc, "phase", "recovery")
	}}
	hooksErr := hooks.RemoveHooks(ctx, name)
	return s.recoverRelease(ctx, name, unfinished, ok, hooksErr)
}

// recoverSwarm recovers a swarm project: the hook services a dead agentd
// left are removed (a migration must not go on under the release put
// back), then as recoverRelease. A Swarm carries out what it was asked
// on its own; there is no create to wait for.
func (s *Service) recoverSwarm(ctx context.Context, name string, unfinished api.Release, ok bool) error {
	se, err := s.swarmEngine()
	if err != nil {
		return err
	}
	hooks := &swarm.Hooks{Engine: se, Project: name, Progress: func(svc, msg string) {
		s.log.Warn(msg, "project", name, "service", svc, "phase", "recovery")
	}}
	return s.recoverRelease(ctx, name, unfinished, ok, hooks.RemoveLeftovers(ctx))
}

// recoverRelease rolls back the release agentd did not finish, if any
// (ok), or cleans up after the committed one, on the project's backend.
// hooksErr is what removing the dead agentd's hooks returned.
func (s *Service) recoverRelease(ctx context.Context, name string, unfinished api.Release, ok bool, hooksErr error) error {
	var err error
	if ok {
		r := s.newReleaseRun(name, "agentd:recovery", nil)
		r.pc = s.cfg.Projects[name]
		r.release = unfinished
		r.release.Interrupted = true
		for i := range r.release.Steps {
			if r.release.Steps[i].State == StepPending {
				// It may have begun, or ended, before agentd died: the
				// journal does not say.
				r.release.Steps[i].State = StepInterrupted
			}
		}
		r.log.Warn("found a release agentd did not finish; restoring the release before it", "release", unfinished.Number, "previous", unfinished.Previous)
		prev := api.Release{Project: name}
		if unfinished.Previous != 0 {
			if prev, err = s.store.Get(name, unfinished.Previous); err != nil {
				return errors.Join(hooksErr, err)
			}
		}
		cause := errors.New("agentd stopped before the release was committed")
		o := r.fail(ctx, prev, cause)
		r.log.Warn("recovery done", "release", unfinished.Number, "exit_code", o.code, "result", o.err)
		if o.code != api.ExitRolledBack {
			return errors.Join(hooksErr, o.err)
		}
		return hooksErr
	}
	cur, ok, err := s.store.Current(name)
	if err != nil || !ok {
		return errors.Join(hooksErr, err)
	}
	desired, err := decodeState(cur)
	if err != nil {
		return errors.Join(hooksErr, err)
	}
	progress := func(svc, msg string) {
		s.log.Info(msg, "project", name, "service", svc, "release", cur.Number, "phase", "recovery")
	}
	if s.cfg.Projects[name].Backend == config.BackendSwarm {
		se, err := s.swarmEngine()
		if err != nil {
			return errors.Join(hooksErr, err)
		}
		lf := &swarm.Life{Engine: se, Project: name, Progress: progress}
		return errors.Join(hooksErr, lf.Cleanup(ctx, desired))
	}
	lf := &life.Life{Engine: s.engine, Project: name,
		Progress: progress,
		OnKilled: func(_ string, killed []compose.Killed) {
			for _, k := range killed {
				s.log.Warn("container killed at the end of its grace period", "project", name, "release", cur.Number, "phase", "recovery",
					"service", k.Service, "container", k.Container, "signal", k.Signal, "grace_period", k.Grace, "stopped_after", k.Took)
			}
		},
	}
	return errors.Join(hooksErr, lf.Cleanup(ctx, desired))
}
