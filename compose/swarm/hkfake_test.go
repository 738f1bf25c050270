package swarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
)

// hkSwarm is a small in-memory Swarm manager for the hook and proxy
// tests: services a test creates or puts, tasks it scripts, logs it sets.
// A hook service created gets one task that stays pending for hkPending
// looks (TaskList calls), then ends as hkEnd says (never, if nil).
type hkSwarm struct {
	mu       sync.Mutex
	next     int
	services map[string]*hkService   // by ID
	tasks    map[string][]swarm.Task // by service name, what TaskList shows
	created  []hkCreate
	removed  []string // names
	// removeCtxErr is the error of the context of each removal, at its
	// call.
	removeCtxErr []error
	looks        map[string]int // TaskList calls by service name
	hkPending    int
	hkEnd        func(spec swarm.ServiceSpec) swarm.TaskStatus
	logs         map[string][2]string // by service name: stdout, stderr
	failCreate   error
}

type hkService struct {
	id   string
	spec swarm.ServiceSpec
}

type hkCreate struct {
	spec swarm.ServiceSpec
	opts swarm.ServiceCreateOptions
}

func newHKSwarm() *hkSwarm {
	return &hkSwarm{services: map[string]*hkService{}, tasks: map[string][]swarm.Task{}, looks: map[string]int{}, logs: map[string][2]string{}}
}

var _ Engine = (*hkSwarm)(nil)

// byName returns the service named or with the ID ref.
func (f *hkSwarm) byName(ref string) *hkService {
	for _, s := range f.services {
		if s.id == ref || s.spec.Name == ref {
			return s
		}
	}
	return nil
}

// put adds a service as if someone had created it.
func (f *hkSwarm) put(spec swarm.ServiceSpec) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	id := fmt.Sprintf("svc%d", f.next)
	f.services[id] = &hkService{id: id, spec: spec}
	return id
}

// setTasks sets the tasks of a service, as TaskList shows them.
func (f *hkSwarm) setTasks(service string, tasks ...swarm.Task) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks[service] = tasks
}

func (f *hkSwarm) ServiceCreate(_ context.Context, spec swarm.ServiceSpec, opts swarm.ServiceCreateOptions) (swarm.ServiceCreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failCreate != nil {
		return swarm.ServiceCreateResponse{}, f.failCreate
	}
	if f.byName(spec.Name) != nil {
		return swarm.ServiceCreateResponse{}, errdefs.Conflict(fmt.Errorf("service %s already exists", spec.Name))
	}
	f.next++
	id := fmt.Sprintf("svc%d", f.next)
	f.services[id] = &hkService{id: id, spec: spec}
	f.created = append(f.created, hkCreate{spec, opts})
	f.tasks[spec.Name] = []swarm.Task{{ID: "task-" + id, ServiceID: id, Slot: 1, DesiredState: swarm.TaskStateComplete,
		Meta:   swarm.Meta{CreatedAt: time.Now()},
		Status: swarm.TaskStatus{State: swarm.TaskStatePending, Message: "pending task scheduling"}}}
	return swarm.ServiceCreateResponse{ID: id}, nil
}

func (f *hkSwarm) ServiceRemove(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(id)
	if s == nil {
		return errdefs.NotFound(fmt.Errorf("service %s not found", id))
	}
	delete(f.services, s.id)
	delete(f.tasks, s.spec.Name)
	f.removed = append(f.removed, s.spec.Name)
	f.removeCtxErr = append(f.removeCtxErr, ctx.Err())
	return nil
}

func (f *hkSwarm) ServiceList(_ context.Context, o swarm.ServiceListOptions) ([]swarm.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []swarm.Service
	for _, s := range f.services {
		ok := true
		for _, l := range o.Filters.Get("label") {
			k, v, hasValue := strings.Cut(l, "=")
			if got, found := s.spec.Labels[k]; !found || hasValue && got != v {
				ok = false
			}
		}
		for _, n := range o.Filters.Get("name") {
			if !strings.HasPrefix(s.spec.Name, n) { // the engine matches name prefixes
				ok = false
			}
		}
		if ok {
			out = append(out, swarm.Service{ID: s.id, Spec: s.spec})
		}
	}
	slices.SortFunc(out, func(a, b swarm.Service) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	return out, nil
}

// TaskList answers the filters service (a name or an ID, not found when
// there is no such service) and desired-state. Each look at a hook's
// pending task counts towards its end.
func (f *hkSwarm) TaskList(ctx context.Context, o swarm.TaskListOptions) ([]swarm.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var names []string
	for _, ref := range o.Filters.Get("service") {
		s := f.byName(ref)
		if s == nil {
			return nil, errdefs.NotFound(fmt.Errorf("service %s not found", ref))
		}
		names = append(names, s.spec.Name)
	}
	var out []swarm.Task
	for _, name := range names {
		f.looks[name]++
		s := f.byName(name)
		tasks := f.tasks[name]
		if s.spec.Labels[LabelHook] != "" && len(tasks) == 1 && tasks[0].Status.State == swarm.TaskStatePending &&
			f.looks[name] > f.hkPending && f.hkEnd != nil {
			tasks[0].Status = f.hkEnd(s.spec)
		}
		for _, t := range tasks {
			if ds := o.Filters.Get("desired-state"); len(ds) > 0 && !slices.Contains(ds, string(t.DesiredState)) {
				continue
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// ServiceLogs answers with what the service wrote, multiplexed as the
// engine does.
func (f *hkSwarm) ServiceLogs(_ context.Context, id string, o container.LogsOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(id)
	if s == nil {
		return nil, errdefs.NotFound(fmt.Errorf("service %s not found", id))
	}
	var b bytes.Buffer
	out := f.logs[s.spec.Name]
	if o.ShowStdout && out[0] != "" {
		stdcopy.NewStdWriter(&b, stdcopy.Stdout).Write([]byte(out[0]))
	}
	if o.ShowStderr && out[1] != "" {
		stdcopy.NewStdWriter(&b, stdcopy.Stderr).Write([]byte(out[1]))
	}
	return io.NopCloser(&b), nil
}

var errHKUnused = errors.New("not used by hooks and proxies")

func (f *hkSwarm) ServiceUpdate(context.Context, string, swarm.Version, swarm.ServiceSpec, swarm.ServiceUpdateOptions) (swarm.ServiceUpdateResponse, error) {
	return swarm.ServiceUpdateResponse{}, errHKUnused
}

func (f *hkSwarm) ServiceInspectWithRaw(context.Context, string, swarm.ServiceInspectOptions) (swarm.Service, []byte, error) {
	return swarm.Service{}, nil, errHKUnused
}

func (f *hkSwarm) NodeList(context.Context, swarm.NodeListOptions) ([]swarm.Node, error) {
	return nil, errHKUnused
}

func (f *hkSwarm) NetworkList(context.Context, network.ListOptions) ([]network.Summary, error) {
	return nil, errHKUnused
}

func (f *hkSwarm) NetworkCreate(context.Context, string, network.CreateOptions) (network.CreateResponse, error) {
	return network.CreateResponse{}, errHKUnused
}

func (f *hkSwarm) NetworkRemove(context.Context, string) error { return errHKUnused }
