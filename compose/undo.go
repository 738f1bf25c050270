package compose

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"
)

// Undo takes a project back to what ran before a failed release when there
// is no earlier release to roll back to: the first release Berth made, over
// nothing or over a stack that `docker compose` started. desired is the
// failed release's state, for the order of its services and its proxies.
//
// The containers the release created are stopped (with their own stop
// signal and timeout) and removed. The containers it had put aside
// (stopped and renamed NAME-retired-ID) get their names back and are
// started again, dependencies first, and the proxies that front a service
// are reloaded onto what runs now. A project left with no container loses
// its networks, as if the release had never been. Undo goes on after an
// error and returns them all.
func (e *Executor) Undo(ctx context.Context, desired *Desired, release string) error {
	observed, err := Observe(ctx, e.Engine, desired.Project)
	if err != nil {
		return err
	}
	plan := MakePlan(desired, observed)
	var errs []error
	left := 0
	for i := range observed.Containers {
		c := &observed.Containers[i]
		if c.Release != release {
			left++
			continue
		}
		e.say(c.Service, "removing %s (created by release %s)", c.Name, release)
		if c.State != "exited" && c.State != "dead" {
			// No timeout given: the container's own stop_grace_period.
			if err := e.stop(ctx, c.Service, c, nil); err != nil {
				errs = append(errs, err)
			}
		}
		if err := e.Engine.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove %s: %w", c.Name, err))
		}
	}

	rank := map[string]int{}
	for i, s := range plan.Services {
		rank[s.Name] = i
	}
	var aside []*Container
	for i := range observed.Containers {
		c := &observed.Containers[i]
		if c.Release != release && strings.Contains(c.Name, retiredMark) {
			aside = append(aside, c)
		}
	}
	slices.SortStableFunc(aside, func(a, b *Container) int {
		ra, oka := rank[a.Service]
		rb, okb := rank[b.Service]
		switch {
		case oka && !okb:
			return -1
		case okb && !oka:
			return 1
		}
		return cmp.Or(cmp.Compare(ra, rb), cmp.Compare(a.Service, b.Service), cmp.Compare(a.Number, b.Number))
	})
	restarted := map[string]bool{}
	for _, c := range aside {
		name := c.Name[:strings.LastIndex(c.Name, retiredMark)]
		if err := e.rename(ctx, c, name); err != nil {
			errs = append(errs, err)
			continue
		}
		e.say(c.Service, "starting %s again (it ran before release %s)", name, release)
		if err := e.Engine.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("start %s: %w", name, err))
			continue
		}
		restarted[c.Service] = true
	}
	for _, s := range plan.Services {
		if restarted[s.Name] {
			if err := e.reloadProxies(ctx, plan, s.Name, nil, nil, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if left == 0 {
		for _, name := range slices.Sorted(maps.Keys(observed.Networks)) {
			e.say("", "removing network %s", name)
			if err := e.Engine.NetworkRemove(ctx, name); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("remove network %s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// RemoveHooks stops and removes the one-off containers of Berth's hooks
// (one-off, labelled with a release) in a project. A hook's container is
// removed as soon as the hook ends, so any found when agentd starts belongs
// to a hook whose agentd died: a migration that may still be running for a
// release that is being rolled back, or one that ended and was never
// removed. `docker compose run` containers (no release label) are left
// alone. It goes on after an error and returns them all.
func (e *Executor) RemoveHooks(ctx context.Context, project string) error {
	observed, err := Observe(ctx, e.Engine, project)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range observed.Containers {
		if !c.Oneoff || c.Release == "" {
			continue
		}
		e.say(c.Service, "removing %s (%s): a hook of release %s whose agentd stopped", c.Name, c.State, c.Release)
		if c.State != "exited" && c.State != "dead" && c.State != "created" {
			// No timeout given: the container's own stop_grace_period, so
			// a migration can roll its transaction back.
			if err := e.Engine.ContainerStop(ctx, c.ID, container.StopOptions{}); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("stop %s: %w", c.Name, err))
			}
		}
		if err := e.Engine.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove %s: %w", c.Name, err))
		}
	}
	return errors.Join(errs...)
}
