package swarm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
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

// fakeSwarm is an in-memory Swarm manager: services with versions and an
// update status, tasks per node, networks, service logs. By default a
// create or update converges at once (every task of the new spec running,
// the update completed); a test scripts otherwise with onDeploy (what a
// create or update leaves) and onTick (called at every TaskList, as time
// passes), or puts services (put) and sets their tasks (setTasks) itself.
// A hook service (labelled LabelHook) gets one task when created, which
// stays pending for hookPending looks at its tasks (TaskList calls) and
// then ends as hookEnd says (never, if nil).
type fakeSwarm struct {
	mu       sync.Mutex
	services map[string]*swarm.Service // by ID
	tasks    []swarm.Task
	nets     map[string]network.Summary // by name
	nodes    []swarm.Node
	calls    []string
	// auth is the registry auth each create or update was sent, by
	// "create NAME" / "update NAME".
	auth map[string]string
	// specs is every spec a service was created or updated with, in order.
	specs map[string][]swarm.ServiceSpec
	// created is every service create's spec and options, in order.
	created []serviceCreate
	// removeCtxErr is the error of the context of each service removal,
	// at its call.
	removeCtxErr []error
	// looks counts the TaskList calls by service name.
	looks       map[string]int
	hookPending int
	hookEnd     func(spec swarm.ServiceSpec) swarm.TaskStatus
	// logs is what each service wrote, by name: stdout, stderr.
	logs   map[string][2]string
	nextID int
	now    time.Time

	onDeploy func(f *fakeSwarm, s *swarm.Service, create bool)
	onTick   func(f *fakeSwarm)
	// netBusy is how many removals of a network fail as in use first.
	netBusy map[string]int
}

type serviceCreate struct {
	spec swarm.ServiceSpec
	opts swarm.ServiceCreateOptions
}

func newFakeSwarm() *fakeSwarm {
	return &fakeSwarm{
		services: map[string]*swarm.Service{},
		nets:     map[string]network.Summary{},
		nodes: []swarm.Node{{
			ID:          "node1",
			Description: swarm.NodeDescription{Hostname: "manager-1"},
			Status:      swarm.NodeStatus{State: swarm.NodeStateReady, Addr: "127.0.0.1"},
		}},
		auth:    map[string]string{},
		specs:   map[string][]swarm.ServiceSpec{},
		now:     time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		netBusy: map[string]int{},
		looks:   map[string]int{},
		logs:    map[string][2]string{},
	}
}

func (f *fakeSwarm) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

// removed returns the names of the services removed so far, in order.
func (f *fakeSwarm) removed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if name, ok := strings.CutPrefix(c, "remove "); ok && !strings.HasPrefix(name, "network ") {
			out = append(out, name)
		}
	}
	return out
}

// takeCalls returns the calls so far and forgets them.
func (f *fakeSwarm) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// tick moves the fake's clock on.
func (f *fakeSwarm) tick() time.Time {
	f.now = f.now.Add(time.Second)
	return f.now
}

func (f *fakeSwarm) id() string {
	f.nextID++
	return fmt.Sprintf("id%04d", f.nextID)
}

func (f *fakeSwarm) byName(name string) *swarm.Service {
	for _, s := range f.services {
		if s.Spec.Name == name || s.ID == name {
			return s
		}
	}
	return nil
}

// service returns a copy of the service named name (nil if none).
func (f *fakeSwarm) service(name string) *swarm.Service {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(name)
	if s == nil {
		return nil
	}
	c := *s
	return &c
}

// put adds a service as if someone had created it, without tasks, and
// returns its ID.
func (f *fakeSwarm) put(spec swarm.ServiceSpec) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &swarm.Service{ID: f.id(), Spec: cloneSpec(spec)}
	s.Version.Index = 1
	f.services[s.ID] = s
	return s.ID
}

// setTasks replaces the tasks of the service named service with tasks.
func (f *fakeSwarm) setTasks(service string, tasks ...swarm.Task) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(service)
	if s == nil {
		panic("setTasks: no service " + service)
	}
	f.tasks = slices.DeleteFunc(f.tasks, func(t swarm.Task) bool { return t.ServiceID == s.ID })
	for _, t := range tasks {
		t.ServiceID = s.ID
		f.tasks = append(f.tasks, t)
	}
}

func replicasOf(spec swarm.ServiceSpec) int {
	if r := spec.Mode.Replicated; r != nil && r.Replicas != nil {
		return int(*r.Replicas)
	}
	return 1
}

// shutdownTasks shuts down the running tasks of a service.
func (f *fakeSwarm) shutdownTasks(serviceID string) {
	for i := range f.tasks {
		t := &f.tasks[i]
		if t.ServiceID == serviceID && t.DesiredState == swarm.TaskStateRunning {
			t.DesiredState = swarm.TaskStateShutdown
			t.Status.State = swarm.TaskStateShutdown
			t.Status.Timestamp = f.tick()
		}
	}
}

// addTask adds a task of s's current spec in state.
func (f *fakeSwarm) addTask(s *swarm.Service, slot int, state swarm.TaskState, errMsg string) *swarm.Task {
	cs := *s.Spec.TaskTemplate.ContainerSpec
	cs.Labels = maps.Clone(cs.Labels)
	desired := swarm.TaskStateRunning
	if state == swarm.TaskStateFailed || state == swarm.TaskStateRejected {
		desired = swarm.TaskStateShutdown
	}
	now := f.tick()
	f.tasks = append(f.tasks, swarm.Task{
		ID:           f.id(),
		Meta:         swarm.Meta{CreatedAt: now},
		ServiceID:    s.ID,
		Slot:         slot,
		NodeID:       "node1",
		Spec:         swarm.TaskSpec{ContainerSpec: &cs},
		DesiredState: desired,
		Status:       swarm.TaskStatus{State: state, Err: errMsg, Timestamp: now, ContainerStatus: &swarm.ContainerStatus{ContainerID: "c" + f.id()}},
	})
	return &f.tasks[len(f.tasks)-1]
}

// converge replaces a service's tasks with running tasks of its spec and
// completes its update.
func (f *fakeSwarm) converge(s *swarm.Service, create bool) {
	f.shutdownTasks(s.ID)
	for slot := 1; slot <= replicasOf(s.Spec); slot++ {
		f.addTask(s, slot, swarm.TaskStateRunning, "")
	}
	if !create {
		s.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateCompleted, Message: "update completed"}
	}
}

func (f *fakeSwarm) deployed(s *swarm.Service, create bool) {
	if create && s.Spec.Labels[LabelHook] != "" {
		t := f.addTask(s, 1, swarm.TaskStatePending, "")
		t.DesiredState = swarm.TaskStateComplete
		t.Status.Message = "pending task scheduling"
		return
	}
	if f.onDeploy != nil {
		f.onDeploy(f, s, create)
		return
	}
	f.converge(s, create)
}

func cloneSpec(spec swarm.ServiceSpec) swarm.ServiceSpec {
	spec.Labels = maps.Clone(spec.Labels)
	if spec.TaskTemplate.ContainerSpec != nil {
		cs := *spec.TaskTemplate.ContainerSpec
		cs.Labels = maps.Clone(cs.Labels)
		spec.TaskTemplate.ContainerSpec = &cs
	}
	return spec
}

func (f *fakeSwarm) ServiceCreate(_ context.Context, spec swarm.ServiceSpec, opts swarm.ServiceCreateOptions) (swarm.ServiceCreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byName(spec.Name) != nil {
		return swarm.ServiceCreateResponse{}, errdefs.Conflict(fmt.Errorf("service %s already exists", spec.Name))
	}
	f.record("create %s", spec.Name)
	f.auth["create "+spec.Name] = opts.EncodedRegistryAuth
	f.specs[spec.Name] = append(f.specs[spec.Name], cloneSpec(spec))
	f.created = append(f.created, serviceCreate{cloneSpec(spec), opts})
	s := &swarm.Service{ID: f.id(), Spec: cloneSpec(spec)}
	s.Version.Index = 1
	f.services[s.ID] = s
	f.deployed(s, true)
	return swarm.ServiceCreateResponse{ID: s.ID}, nil
}

func (f *fakeSwarm) ServiceUpdate(_ context.Context, id string, version swarm.Version, spec swarm.ServiceSpec, opts swarm.ServiceUpdateOptions) (swarm.ServiceUpdateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(id)
	if s == nil {
		return swarm.ServiceUpdateResponse{}, errdefs.NotFound(fmt.Errorf("service %s not found", id))
	}
	if version.Index != s.Version.Index {
		return swarm.ServiceUpdateResponse{}, fmt.Errorf("update out of sequence")
	}
	if opts.Rollback == "previous" {
		f.record("rollback %s", s.Spec.Name)
		if s.PreviousSpec == nil {
			return swarm.ServiceUpdateResponse{}, fmt.Errorf("service %s has no previous spec", s.Spec.Name)
		}
		spec = *s.PreviousSpec
	} else {
		f.record("update %s", s.Spec.Name)
	}
	f.auth["update "+spec.Name] = opts.EncodedRegistryAuth
	f.specs[spec.Name] = append(f.specs[spec.Name], cloneSpec(spec))
	prev := s.Spec
	s.PreviousSpec = &prev
	s.Spec = cloneSpec(spec)
	s.Version.Index++
	s.UpdateStatus = nil
	f.deployed(s, false)
	return swarm.ServiceUpdateResponse{}, nil
}

func (f *fakeSwarm) ServiceInspectWithRaw(_ context.Context, id string, _ swarm.ServiceInspectOptions) (swarm.Service, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(id)
	if s == nil {
		return swarm.Service{}, nil, errdefs.NotFound(fmt.Errorf("service %s not found", id))
	}
	return *s, nil, nil
}

// hasLabel reports whether labels match every "label" filter (k=v or k).
func hasLabel(labels map[string]string, want []string) bool {
	for _, w := range want {
		k, v, withValue := strings.Cut(w, "=")
		got, ok := labels[k]
		if !ok || (withValue && got != v) {
			return false
		}
	}
	return true
}

// ServiceList answers the filters label and name (a prefix of the name,
// as the engine matches it).
func (f *fakeSwarm) ServiceList(_ context.Context, opts swarm.ServiceListOptions) ([]swarm.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []swarm.Service
	for _, id := range slices.Sorted(maps.Keys(f.services)) {
		s := f.services[id]
		if hasLabel(s.Spec.Labels, opts.Filters.Get("label")) && hasNamePrefix(s.Spec.Name, opts.Filters.Get("name")) {
			out = append(out, *s)
		}
	}
	return out, nil
}

// hasNamePrefix reports whether name starts with every "name" filter.
func hasNamePrefix(name string, want []string) bool {
	for _, w := range want {
		if !strings.HasPrefix(name, w) {
			return false
		}
	}
	return true
}

func (f *fakeSwarm) ServiceRemove(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(id)
	if s == nil {
		return errdefs.NotFound(fmt.Errorf("service %s not found", id))
	}
	f.record("remove %s", s.Spec.Name)
	f.removeCtxErr = append(f.removeCtxErr, ctx.Err())
	delete(f.services, s.ID)
	f.tasks = slices.DeleteFunc(f.tasks, func(t swarm.Task) bool { return t.ServiceID == s.ID })
	return nil
}

// ServiceLogs answers with what the service wrote (logs), multiplexed as
// the engine does.
func (f *fakeSwarm) ServiceLogs(_ context.Context, id string, opts container.LogsOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(id)
	if s == nil {
		return nil, errdefs.NotFound(fmt.Errorf("service %s not found", id))
	}
	var b bytes.Buffer
	out := f.logs[s.Spec.Name]
	if opts.ShowStdout && out[0] != "" {
		stdcopy.NewStdWriter(&b, stdcopy.Stdout).Write([]byte(out[0]))
	}
	if opts.ShowStderr && out[1] != "" {
		stdcopy.NewStdWriter(&b, stdcopy.Stderr).Write([]byte(out[1]))
	}
	return io.NopCloser(&b), nil
}

// TaskList answers the filters service (a name or an ID, not found when
// there is no such service, as the engine does) and desired-state. Each
// look at a hook service's pending task counts towards its end.
func (f *fakeSwarm) TaskList(ctx context.Context, opts swarm.TaskListOptions) ([]swarm.Task, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.onTick != nil {
		f.onTick(f)
	}
	want := map[string]bool{} // by ID
	for _, ref := range opts.Filters.Get("service") {
		s := f.byName(ref)
		if s == nil {
			return nil, errdefs.NotFound(fmt.Errorf("service %s not found", ref))
		}
		want[s.ID] = true
		f.looks[s.Spec.Name]++
		f.endHook(s)
	}
	desired := opts.Filters.Get("desired-state")
	var out []swarm.Task
	for _, t := range f.tasks {
		if len(want) > 0 && !want[t.ServiceID] || len(desired) > 0 && !slices.Contains(desired, string(t.DesiredState)) {
			continue
		}
		c := t
		if t.Spec.ContainerSpec != nil {
			cs := *t.Spec.ContainerSpec
			c.Spec.ContainerSpec = &cs
		}
		out = append(out, c)
	}
	return out, nil
}

// endHook ends a hook service's pending task as hookEnd says, once it has
// been looked at more than hookPending times.
func (f *fakeSwarm) endHook(s *swarm.Service) {
	if s.Spec.Labels[LabelHook] == "" || f.hookEnd == nil || f.looks[s.Spec.Name] <= f.hookPending {
		return
	}
	var mine []int
	for i, t := range f.tasks {
		if t.ServiceID == s.ID {
			mine = append(mine, i)
		}
	}
	if len(mine) == 1 && f.tasks[mine[0]].Status.State == swarm.TaskStatePending {
		f.tasks[mine[0]].Status = f.hookEnd(s.Spec)
	}
}

func (f *fakeSwarm) NodeList(context.Context, swarm.NodeListOptions) ([]swarm.Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.nodes), nil
}

func (f *fakeSwarm) NetworkList(_ context.Context, opts network.ListOptions) ([]network.Summary, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []network.Summary
	for _, name := range slices.Sorted(maps.Keys(f.nets)) {
		if n := f.nets[name]; hasLabel(n.Labels, opts.Filters.Get("label")) {
			out = append(out, n)
		}
	}
	return out, nil
}

func (f *fakeSwarm) NetworkCreate(_ context.Context, name string, opts network.CreateOptions) (network.CreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.nets[name]; ok {
		return network.CreateResponse{}, errdefs.Conflict(fmt.Errorf("network %s exists", name))
	}
	f.record("create network %s", name)
	f.nets[name] = network.Summary{ID: f.id(), Name: name, Driver: opts.Driver, Labels: maps.Clone(opts.Labels)}
	return network.CreateResponse{ID: f.nets[name].ID}, nil
}

func (f *fakeSwarm) NetworkRemove(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.nets[name]; !ok {
		return errdefs.NotFound(fmt.Errorf("network %s not found", name))
	}
	if f.netBusy[name] > 0 {
		f.netBusy[name]--
		return fmt.Errorf("Error response from daemon: rpc error: code = FailedPrecondition desc = network %s is in use by task x", name)
	}
	f.record("remove network %s", name)
	delete(f.nets, name)
	return nil
}

var _ Engine = (*fakeSwarm)(nil)
