package swarm

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
)

// ServiceStatus is one service of a stack as the Swarm runs it.
type ServiceStatus struct {
	Name  string // the Swarm service (PROJECT_SERVICE)
	Image string // as deployed (LabelImage), or the task image
	Mode  string // replicated or global
	// Replicas is the number wanted (replicated), Running the tasks
	// running.
	Replicas, Running int
	// UpdateState and UpdateMessage are the last update's.
	UpdateState, UpdateMessage string
	// Release is the Berth release that last set the spec.
	Release string
	Tasks   []TaskStatus
}

// TaskStatus is one task of a service.
type TaskStatus struct {
	ID   string
	Node string // the node's hostname
	Slot int
	// State is where the task is, DesiredState where Swarm wants it.
	State, DesiredState string
	Error               string
	// Health is "healthy" for a running task, "starting" for a starting
	// one, when the service's spec has a healthcheck: Swarm holds a task
	// in starting until its healthcheck passes (seen on Engine 20.10).
	// Swarm's task status carries no health of its own, so a healthcheck
	// only the image declares is not seen here: "".
	Health string
	Image  string
	// Release is the release of the spec the task runs, when it is the
	// service's current or previous spec.
	Release string
	Since   time.Time
}

// Status reports the services of project's stack and their tasks: per
// slot (per node for a global service) the current task (the one Swarm
// wants running) and the newest one before it.
func Status(ctx context.Context, eng Engine, project string) ([]ServiceStatus, error) {
	svcs, err := eng.ServiceList(ctx, swarm.ServiceListOptions{Filters: stackFilter(project)})
	if err != nil {
		return nil, fmt.Errorf("status of %s: list services: %w", project, err)
	}
	nodes, err := eng.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("status of %s: list nodes: %w", project, err)
	}
	hostnames := map[string]string{}
	for _, n := range nodes {
		hostnames[n.ID] = n.Description.Hostname
	}
	var out []ServiceStatus
	for _, s := range svcs {
		if _, hook := s.Spec.Labels[LabelHook]; hook || s.Spec.Labels[LabelNamespace] != project {
			continue
		}
		// Named as in the compose file; the image by digest, as the
		// tasks run it.
		st := ServiceStatus{
			Name:    strings.TrimPrefix(s.Spec.Name, project+"_"),
			Image:   s.Spec.Labels[LabelImage],
			Release: s.Spec.Labels[LabelRelease],
		}
		if cs := s.Spec.TaskTemplate.ContainerSpec; cs != nil && cs.Image != "" {
			st.Image = cs.Image
		}
		switch {
		case s.Spec.Mode.Global != nil:
			st.Mode = "global"
		default:
			st.Mode = "replicated"
			if r := s.Spec.Mode.Replicated; r != nil && r.Replicas != nil {
				st.Replicas = int(*r.Replicas)
			}
		}
		if us := s.UpdateStatus; us != nil {
			st.UpdateState, st.UpdateMessage = string(us.State), us.Message
		}
		tasks, err := eng.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", s.ID))})
		if err != nil {
			return nil, fmt.Errorf("status of %s: list the tasks of %s: %w", project, s.Spec.Name, err)
		}
		if st.Mode == "global" {
			st.Replicas = 0
		}
		for _, t := range tasks {
			if t.DesiredState == swarm.TaskStateRunning {
				if st.Mode == "global" {
					st.Replicas++
				}
				if t.Status.State == swarm.TaskStateRunning {
					st.Running++
				}
			}
		}
		// A task's spec does not carry the release (the label is the
		// service's): it is the release of the spec, current or
		// previous, whose hash it runs.
		releases := map[string]string{}
		if ps := s.PreviousSpec; ps != nil && ps.Labels[LabelSpecHash] != "" {
			releases[ps.Labels[LabelSpecHash]] = ps.Labels[LabelRelease]
		}
		if h := s.Spec.Labels[LabelSpecHash]; h != "" {
			releases[h] = s.Spec.Labels[LabelRelease]
		}
		st.Tasks = taskStatuses(tasks, hostnames, releases)
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ServiceStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// taskStatuses sorts tasks by slot (node, for a global service), the one
// Swarm wants running first, then newest first, keeping two of each: the
// current task and the one before it.
func taskStatuses(tasks []swarm.Task, hostnames, releases map[string]string) []TaskStatus {
	key := func(t swarm.Task) string {
		if t.Slot != 0 {
			return fmt.Sprintf("%09d", t.Slot)
		}
		return "node " + hostnames[t.NodeID] + " " + t.NodeID
	}
	slices.SortFunc(tasks, func(a, b swarm.Task) int {
		if c := cmp.Compare(key(a), key(b)); c != 0 {
			return c
		}
		// The task Swarm wants running is the slot's current one, even
		// when newer ones (restarts of a failing update) have ended.
		if ar, br := a.DesiredState == swarm.TaskStateRunning, b.DesiredState == swarm.TaskStateRunning; ar != br {
			if ar {
				return -1
			}
			return 1
		}
		return b.Meta.CreatedAt.Compare(a.Meta.CreatedAt)
	})
	var out []TaskStatus
	seen := map[string]int{}
	for _, t := range tasks {
		k := key(t)
		if seen[k] >= 2 {
			continue
		}
		seen[k]++
		ts := TaskStatus{
			ID:           t.ID,
			Node:         hostnames[t.NodeID],
			Slot:         t.Slot,
			State:        string(t.Status.State),
			DesiredState: string(t.DesiredState),
			Error:        t.Status.Err,
			Since:        t.Status.Timestamp,
		}
		if ts.Node == "" {
			ts.Node = shortID(t.NodeID)
		}
		if cs := t.Spec.ContainerSpec; cs != nil {
			ts.Image = cs.Image
			ts.Release = releases[cs.Labels[LabelSpecHash]]
		}
		if cs := t.Status.ContainerStatus; cs != nil && cs.ContainerID != "" {
			ts.Health = healthOf(t)
		}
		out = append(out, ts)
	}
	return out
}

// healthOf is a running task's health as far as Swarm tells: a task with
// a Docker healthcheck reaches running only once healthy.
func healthOf(t swarm.Task) string {
	cs := t.Spec.ContainerSpec
	if cs == nil || cs.Healthcheck == nil || len(cs.Healthcheck.Test) == 0 || cs.Healthcheck.Test[0] == "NONE" {
		return ""
	}
	switch t.Status.State {
	case swarm.TaskStateRunning:
		return "healthy"
	case swarm.TaskStateStarting:
		return "starting"
	}
	return ""
}
