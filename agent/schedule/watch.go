package schedule

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/compose"
)

// watched is what the watch job remembers of a container between runs.
type watched struct {
	project  string
	restarts int
	// alerted is the state ("exited/", "running/unhealthy", ...) of the
	// last alert, or "" once a run found the container well again.
	alerted string
}

// Watch checks the containers of every configured project with a live
// release and returns an event for each that is stopped (exited,
// restarting or dead), unhealthy, or has restarted since the previous
// run. Each event is logged at warn and passed to the alerter. A
// container is not reported twice in a row in the same state: it is
// reported again after a run has found it well, or in another state.
//
// A project whose newest release is still in progress is left alone for
// the run: a deploy stops and replaces containers on purpose.
func (s *Scheduler) Watch(ctx context.Context) ([]api.UnhealthyEvent, error) {
	if err := acquire(ctx, s.watching); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	defer func() { s.watching <- struct{}{} }()

	var events []api.UnhealthyEvent
	var errs []error
	for _, p := range s.projects {
		found, err := s.watchProject(ctx, p)
		events = append(events, found...)
		if err != nil {
			errs = append(errs, fmt.Errorf("project %s: %w", p, err))
		}
	}
	for _, ev := range events {
		s.log.Warn("container unhealthy", "project", ev.Project, "release", ev.Release, "service", ev.Service,
			"container", ev.Container, "state", ev.State, "health", ev.Health, "restarts", ev.Restarts, "detail", ev.Detail)
		if s.alert != nil {
			s.alert.Unhealthy(ev)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return events, fmt.Errorf("watch: %w", err)
	}
	return events, nil
}

func (s *Scheduler) watchProject(ctx context.Context, project string) ([]api.UnhealthyEvent, error) {
	if _, live, err := s.hist.Current(project); err != nil || !live {
		return nil, err
	}
	history, err := s.hist.History(project)
	if err != nil {
		return nil, err
	}
	if len(history) > 0 && history[0].Outcome == api.OutcomeInProgress {
		s.log.Debug("watch: deploy in progress, project skipped", "project", project, "release", history[0].Number)
		return nil, nil
	}
	containers, err := s.eng.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", compose.LabelProject+"="+project)),
	})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var events []api.UnhealthyEvent
	seen := map[string]bool{}
	for _, c := range containers {
		if oneoff(c.Labels) {
			continue
		}
		in, err := s.eng.ContainerInspect(ctx, c.ID)
		if cerrdefs.IsNotFound(err) {
			continue // removed since the list
		}
		if err != nil {
			return events, fmt.Errorf("inspect container %s: %w", shortID(c.ID), err)
		}
		seen[c.ID] = true
		if ev, ok := s.check(project, c.ID, in); ok {
			events = append(events, ev)
		}
	}
	// Forget the containers that are gone.
	for id, w := range s.watch {
		if w.project == project && !seen[id] {
			delete(s.watch, id)
		}
	}
	return events, nil
}

// check compares a container with what the previous run saw of it.
func (s *Scheduler) check(project, id string, in container.InspectResponse) (api.UnhealthyEvent, bool) {
	state := &container.State{}
	if in.ContainerJSONBase != nil && in.State != nil {
		state = in.State
	}
	restarts := 0
	name := id
	if in.ContainerJSONBase != nil {
		restarts = in.RestartCount
		name = strings.TrimPrefix(in.Name, "/")
	}
	health := ""
	if state.Health != nil {
		health = state.Health.Status
	}

	var problems []string
	switch state.Status {
	case container.StateExited:
		p := fmt.Sprintf("exited with code %d", state.ExitCode)
		if state.OOMKilled {
			p += " (out of memory)"
		}
		problems = append(problems, p)
	case container.StateRestarting:
		problems = append(problems, fmt.Sprintf("restarting (last exit code %d)", state.ExitCode))
	case container.StateDead:
		problems = append(problems, "dead")
	}
	if health == container.Unhealthy {
		p := "health check failing"
		if n := len(state.Health.Log); n > 0 {
			if out := strings.TrimSpace(state.Health.Log[n-1].Output); out != "" {
				p += ": " + truncate(out, 200)
			}
		}
		problems = append(problems, p)
	}

	w, known := s.watch[id]
	if !known {
		// First sight: nothing to compare its restart count with.
		w = &watched{project: project, restarts: restarts}
		s.watch[id] = w
	}
	if grew := restarts - w.restarts; grew > 0 {
		problems = append(problems, fmt.Sprintf("restarted %d time(s) since the last check", grew))
	}
	w.restarts = restarts

	if len(problems) == 0 {
		w.alerted = ""
		return api.UnhealthyEvent{}, false
	}
	key := state.Status + "/" + health
	if key == w.alerted {
		s.log.Debug("watch: container still in the state already reported", "container", name, "state", key)
		return api.UnhealthyEvent{}, false
	}
	w.alerted = key

	var labels map[string]string
	if in.Config != nil {
		labels = in.Config.Labels
	}
	release, _ := strconv.Atoi(labels[compose.LabelRelease])
	return api.UnhealthyEvent{
		Project:   project,
		Release:   release,
		Service:   labels[compose.LabelService],
		Container: name,
		State:     state.Status,
		Health:    health,
		Restarts:  restarts,
		Detail:    strings.Join(problems, "; "),
		Time:      s.now(),
	}, true
}

// oneoff reports whether the labels are those of a one-off container
// (`compose run`, a pre-deploy hook), which may exit as it likes.
func oneoff(labels map[string]string) bool {
	return strings.EqualFold(labels[compose.LabelOneoff], "true")
}

// truncate cuts s to at most n bytes, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
