package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/berth-deploy/berth/agent/api"
)

// Recover brings every project to one consistent release before agentd
// takes requests. A release still in progress in the journal was never
// committed (agentd died during it): the project goes back to the release
// before it, with the same machinery and gating, and the record says so.
// The record is marked interrupted. For a committed release, containers
// it retired but did not remove yet are removed. Every project is tried;
// the errors are returned together.
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
	if ok {
		r := s.newRun(name, "agentd:recovery", nil)
		r.pc = s.cfg.Projects[name]
		r.release = unfinished
		r.release.Interrupted = true
		r.log.Warn("found a release agentd did not finish; restoring the release before it", "release", unfinished.Number, "previous", unfinished.Previous)
		prev := api.Release{Project: name}
		if unfinished.Previous != 0 {
			if prev, err = s.store.Get(name, unfinished.Previous); err != nil {
				return err
			}
		}
		cause := errors.New("agentd stopped before the release was committed")
		o := r.fail(ctx, prev, cause)
		r.log.Warn("recovery done", "release", unfinished.Number, "exit_code", o.code, "result", o.err)
		if o.code != api.ExitRolledBack {
			return o.err
		}
		return nil
	}
	cur, ok, err := s.store.Current(name)
	if err != nil || !ok {
		return err
	}
	desired, err := decodeState(cur)
	if err != nil {
		return err
	}
	return s.cleanup(ctx, name, desired, func(svc, msg string) {
		s.log.Info(msg, "project", name, "service", svc, "release", cur.Number, "phase", "recovery")
	})
}
