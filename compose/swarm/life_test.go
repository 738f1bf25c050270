package swarm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/compose/life"
	"github.com/berth-deploy/berth/healthcheck"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
)

const project = "shop"

// svc builds a desired service as Convert would, by hand: image is a tag,
// its pin and the spec hash follow from it.
func svc(name, tag string, opts ...func(*compose.ServiceSpec)) compose.ServiceSpec {
	replicas := uint64(1)
	ref := "reg.example/" + name + ":" + tag
	pinned := "reg.example/" + name + "@sha256:" + tag
	s := compose.ServiceSpec{
		Name:     name,
		Image:    compose.Pin{Ref: ref, Pinned: pinned, Digest: "sha256:" + tag},
		Replicas: 1,
		Policy: compose.Policy{
			Order: compose.StartFirst, FailureAction: compose.FailRollback,
			Health: healthcheck.Spec{Timeout: 10 * time.Second},
		},
		Swarm: &swarm.ServiceSpec{
			Annotations: swarm.Annotations{Name: project + "_" + name, Labels: map[string]string{LabelNamespace: project, LabelImage: ref}},
			TaskTemplate: swarm.TaskSpec{
				ContainerSpec: &swarm.ContainerSpec{Image: pinned, Labels: map[string]string{LabelNamespace: project}},
			},
			Mode:           swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
			UpdateConfig:   &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStartFirst, FailureAction: swarm.UpdateFailureActionPause},
			RollbackConfig: &swarm.UpdateConfig{Parallelism: 2, Order: swarm.UpdateOrderStopFirst, FailureAction: swarm.UpdateFailureActionPause},
		},
	}
	setHash(&s, "h-"+name+"-"+tag)
	for _, o := range opts {
		o(&s)
	}
	return s
}

func setHash(s *compose.ServiceSpec, h string) {
	s.Swarm.Labels[LabelSpecHash] = h
	s.Swarm.TaskTemplate.ContainerSpec.Labels[LabelSpecHash] = h
}

func replicas(n int) func(*compose.ServiceSpec) {
	return func(s *compose.ServiceSpec) {
		s.Replicas = n
		r := uint64(n)
		s.Swarm.Mode.Replicated.Replicas = &r
		setHash(s, s.Swarm.Labels[LabelSpecHash]+fmt.Sprintf("-x%d", n))
	}
}

func dependsOn(deps ...string) func(*compose.ServiceSpec) {
	return func(s *compose.ServiceSpec) { s.DependsOn = deps }
}

func preDeploy(cmd ...string) func(*compose.ServiceSpec) {
	return func(s *compose.ServiceSpec) {
		s.Policy.PreDeploy = append(s.Policy.PreDeploy, compose.Hook{Command: cmd, Timeout: time.Minute})
	}
}

func monitorFor(d time.Duration) func(*compose.ServiceSpec) {
	return func(s *compose.ServiceSpec) { s.Policy.Monitor, s.Policy.Rollback.Monitor = d, d }
}

func gateLimit(d time.Duration) func(*compose.ServiceSpec) {
	return func(s *compose.ServiceSpec) { s.Policy.Health.Timeout = d }
}

func desired(svcs ...compose.ServiceSpec) *compose.Desired {
	return &compose.Desired{
		Project: project,
		Networks: []compose.NetworkSpec{{Key: "default", Name: project + "_default", Options: network.CreateOptions{
			Driver: "overlay", Attachable: true, Labels: map[string]string{LabelNamespace: project},
		}}},
		Services: svcs,
	}
}

// fakeHooks records the hooks run and fails those of fail.
type fakeHooks struct {
	eng  *fakeSwarm
	fail map[string]error
}

func (h *fakeHooks) Run(_ context.Context, spec *compose.ServiceSpec, phase string, hooks []compose.Hook) error {
	h.eng.mu.Lock()
	h.eng.record("hook %s %s %d", phase, spec.Name, len(hooks))
	h.eng.mu.Unlock()
	return h.fail[spec.Name]
}

// fakeProxies records each sync with the running tasks of the service.
type fakeProxies struct {
	eng   *fakeSwarm
	mu    sync.Mutex
	syncs map[string][]int // service -> running tasks of the new spec at each sync
}

func (p *fakeProxies) Sync(_ context.Context, d *compose.Desired, service string) error {
	p.eng.mu.Lock()
	n := 0
	for _, t := range p.eng.tasks {
		if s := p.eng.services[t.ServiceID]; s != nil && s.Spec.Name == project+"_"+service && t.Status.State == swarm.TaskStateRunning && t.DesiredState == swarm.TaskStateRunning {
			n++
		}
	}
	p.eng.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.syncs == nil {
		p.syncs = map[string][]int{}
	}
	p.syncs[service] = append(p.syncs[service], n)
	return nil
}

func newLife(f *fakeSwarm, release string) *Life {
	return &Life{
		Engine: f, Project: project, Release: release, Poll: time.Millisecond,
		Hooks: &fakeHooks{eng: f},
		Auth: func(_ context.Context, ref string) (string, error) {
			return "auth(" + ref + ")", nil
		},
	}
}

// deploy plans and rolls desired out.
func deploy(t *testing.T, l *Life, d *compose.Desired) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := l.Plan(ctx, d)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	return l.RollOut(ctx, p, l.Graph(p))
}

// runningHashes returns, per service, the hashes of its tasks meant to run.
func runningHashes(f *fakeSwarm) map[string][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]string{}
	for _, t := range f.tasks {
		if t.DesiredState != swarm.TaskStateRunning {
			continue
		}
		name := f.services[t.ServiceID].Spec.Name
		out[name] = append(out[name], taskHash(t))
	}
	return out
}

func TestRollOutCreatesThenUpdates(t *testing.T) {
	f := newFakeSwarm()
	l := newLife(f, "1")
	var steps []string
	var mu sync.Mutex
	l.OnStep = func(r compose.StepResult) {
		mu.Lock()
		defer mu.Unlock()
		steps = append(steps, fmt.Sprintf("%s %s %s", r.Kind, r.Target, r.State))
	}
	if err := deploy(t, l, desired(svc("db", "v1"), svc("web", "v1", dependsOn("db"), replicas(2)))); err != nil {
		t.Fatalf("first release: %v", err)
	}
	if got, want := f.takeCalls(), []string{"create network shop_default", "create shop_db", "create shop_web"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %q, want %q", got, want)
	}
	slices.Sort(steps)
	if want := []string{
		"create-network shop_default done", "gate shop_db done", "gate shop_web done",
		"update-service shop_db done", "update-service shop_web done",
	}; !slices.Equal(steps, want) {
		t.Errorf("steps = %q, want %q", steps, want)
	}
	if got := f.service("shop_web").Spec.Labels[LabelRelease]; got != "1" {
		t.Errorf("release label of shop_web = %q, want 1", got)
	}
	if got := f.auth["create shop_web"]; got != "auth(reg.example/web:v1)" {
		t.Errorf("auth on create = %q", got)
	}

	l2 := newLife(f, "2")
	if err := deploy(t, l2, desired(svc("db", "v1"), svc("web", "v2", dependsOn("db"), replicas(2)))); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if got, want := f.takeCalls(), []string{"update shop_web"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %q, want %q", got, want)
	}
	web := f.service("shop_web")
	if web.Spec.Labels[LabelRelease] != "2" || web.Spec.Labels[LabelSpecHash] != "h-web-v2-x2" {
		t.Errorf("shop_web labels = %v", web.Spec.Labels)
	}
	if f.service("shop_db").Spec.Labels[LabelRelease] != "1" {
		t.Errorf("the unchanged db was relabelled: %v", f.service("shop_db").Spec.Labels)
	}
	if got := f.auth["update shop_web"]; got != "auth(reg.example/web:v2)" {
		t.Errorf("auth on update = %q", got)
	}
	if got := runningHashes(f)["shop_web"]; !slices.Equal(got, []string{"h-web-v2-x2", "h-web-v2-x2"}) {
		t.Errorf("running tasks of web = %q", got)
	}
	// The hash label does not count LabelRelease: the desired spec is
	// left as it was.
	if _, ok := svc("web", "v2").Swarm.Labels[LabelRelease]; ok {
		t.Error("the desired spec got the release label")
	}
}

func TestRollOutFailsOnAPausedUpdate(t *testing.T) {
	f := newFakeSwarm()
	if err := deploy(t, newLife(f, "1"), desired(svc("db", "v1"), svc("web", "v1"))); err != nil {
		t.Fatal(err)
	}
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		if s.Spec.Name != "shop_web" {
			f.converge(s, create)
			return
		}
		f.addTask(s, 1, swarm.TaskStateFailed, "task: non-zero exit (1)")
		s.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStatePaused, Message: "update paused due to failure or early termination of task abc"}
	}
	start := time.Now()
	err := deploy(t, newLife(f, "2"), desired(svc("db", "v1"), svc("web", "v2")))
	if err == nil {
		t.Fatal("a paused update passed")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the pause was seen after %s: not at once, but at the gate's 10s limit", took)
	}
	for _, want := range []string{"service web", "Swarm paused the update of shop_web: update paused due to failure or early termination of task abc"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if errors.Is(err, compose.ErrPaused) {
		t.Errorf("failure_action rollback reported as paused: %v", err)
	}
}

func TestRollOutFailsOnSwarmRollback(t *testing.T) {
	f := newFakeSwarm()
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		s.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateRollbackStarted, Message: "update rolled back due to failure"}
	}
	err := deploy(t, newLife(f, "1"), desired(svc("web", "v1")))
	if err == nil || !strings.Contains(err.Error(), "service web") || !strings.Contains(err.Error(), "rollback_started") {
		t.Fatalf("err = %v, want the Swarm rollback of web", err)
	}
}

func TestGateWaitsForEveryTaskOfTheNewSpec(t *testing.T) {
	f := newFakeSwarm()
	if err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", replicas(3)))); err != nil {
		t.Fatal(err)
	}
	f.takeCalls()
	// The update brings one task of the new spec up per look, retiring an
	// old one each time, and completes after the third.
	var web *swarm.Service
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		web = s
		s.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateUpdating}
	}
	up, ticks := 0, 0
	f.onTick = func(f *fakeSwarm) {
		if web == nil || up == 3 {
			return
		}
		if ticks++; ticks%2 == 1 {
			return // a look that sees no change
		}
		up++
		for i := range f.tasks {
			tk := &f.tasks[i]
			if tk.ServiceID == web.ID && tk.Slot == up && tk.DesiredState == swarm.TaskStateRunning {
				tk.DesiredState, tk.Status.State = swarm.TaskStateShutdown, swarm.TaskStateShutdown
			}
		}
		f.addTask(web, up, swarm.TaskStateRunning, "")
		f.record("task %d up", up)
		if up == 3 {
			web.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateCompleted}
		}
	}
	l := newLife(f, "2")
	l.Progress = func(service, msg string) {
		if strings.HasSuffix(msg, "is ready") {
			f.record("%s: %s", service, msg)
		}
	}
	px := &fakeProxies{eng: f}
	l.Proxies = px
	if err := deploy(t, l, desired(svc("web", "v2", replicas(3)))); err != nil {
		t.Fatal(err)
	}
	want := []string{"update shop_web", "task 1 up", "task 2 up", "task 3 up", "web: shop_web is ready"}
	if got := f.takeCalls(); !slices.Equal(got, want) {
		t.Fatalf("calls = %q, want %q", got, want)
	}
	// The proxies were synced at the first look (the old three) and then
	// as each task of the new spec replaced an old one, not at the looks
	// that saw no change.
	if got := px.syncs["web"]; len(got) != 4 {
		t.Errorf("proxy syncs of web = %v, want one per change of its running tasks (4)", got)
	}
}

func TestGateWaitsForEveryTaskOfANewService(t *testing.T) {
	f := newFakeSwarm()
	// A create has no update status: only the tasks say it is done. One
	// comes up per look.
	var web *swarm.Service
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) { web = s }
	up := 0
	f.onTick = func(f *fakeSwarm) {
		if web == nil || up == 3 {
			return
		}
		up++
		f.addTask(web, up, swarm.TaskStateRunning, "")
		f.record("task %d up", up)
	}
	l := newLife(f, "1")
	l.Progress = func(service, msg string) {
		if strings.HasSuffix(msg, "is ready") {
			f.record("%s: %s", service, msg)
		}
	}
	if err := deploy(t, l, desired(svc("web", "v1", replicas(3)))); err != nil {
		t.Fatal(err)
	}
	want := []string{"create network shop_default", "create shop_web", "task 1 up", "task 2 up", "task 3 up", "web: shop_web is ready"}
	if got := f.takeCalls(); !slices.Equal(got, want) {
		t.Fatalf("calls = %q, want %q", got, want)
	}
}

func TestGateFailsOnANewTaskFailingPastItsRestartPolicy(t *testing.T) {
	f := newFakeSwarm()
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		f.addTask(s, 1, swarm.TaskStateFailed, "starting container failed: exec: \"gunicorn\": not found")
	}
	none := func(s *compose.ServiceSpec) {
		s.Swarm.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone}
	}
	err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", none)))
	if err == nil || !strings.Contains(err.Error(), `exec: "gunicorn": not found`) || !strings.Contains(err.Error(), "service web") {
		t.Fatalf("err = %v, want the task's error", err)
	}
	// At once, not at the gate's limit.
	if strings.Contains(err.Error(), "not ready within") || !strings.Contains(err.Error(), "the restart policy allows 0") {
		t.Errorf("err = %v, want the failure past the restart policy", err)
	}
}

func TestGateLimitSaysWhatItWaitedFor(t *testing.T) {
	f := newFakeSwarm()
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		f.addTask(s, 1, swarm.TaskStateStarting, "")
	}
	start := time.Now()
	err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", gateLimit(200*time.Millisecond))))
	if err == nil || !strings.Contains(err.Error(), "not ready within 200ms") || !strings.Contains(err.Error(), "is starting") {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > 10*time.Second {
		t.Errorf("the gate gave up after %s, want its 200ms limit", took)
	}
}

func TestMonitorFailsOnANewTaskFailing(t *testing.T) {
	f := newFakeSwarm()
	var web *swarm.Service
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		web = s
		f.converge(s, create)
	}
	looks := 0
	f.onTick = func(f *fakeSwarm) {
		looks++
		if looks == 5 && web != nil {
			for i := range f.tasks {
				tk := &f.tasks[i]
				if tk.ServiceID == web.ID && tk.DesiredState == swarm.TaskStateRunning {
					tk.Status.State, tk.Status.Err, tk.Status.Timestamp = swarm.TaskStateFailed, "task: non-zero exit (137)", time.Now().Add(time.Hour)
				}
			}
		}
	}
	// The fake's clock is far behind the wall clock: task times count
	// from the gate's end only if they are after it, as on a real engine.
	f.now = time.Now()
	err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", monitorFor(5*time.Second))))
	if err == nil || !strings.Contains(err.Error(), "monitor window") || !strings.Contains(err.Error(), "non-zero exit (137)") {
		t.Fatalf("err = %v, want the monitor to catch the failed task", err)
	}
}

func TestMonitorFailsOnANewTaskStoppingUnasked(t *testing.T) {
	f := newFakeSwarm()
	var web *swarm.Service
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		web = s
		f.converge(s, create)
	}
	looks := 0
	f.onTick = func(f *fakeSwarm) {
		looks++
		if looks == 5 && web != nil {
			for i := range f.tasks {
				tk := &f.tasks[i]
				if tk.ServiceID == web.ID && tk.DesiredState == swarm.TaskStateRunning {
					// Exited 0, Swarm still wanting it to run.
					tk.Status.State, tk.Status.Timestamp = swarm.TaskStateComplete, time.Now().Add(time.Hour)
				}
			}
		}
	}
	f.now = time.Now()
	err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", monitorFor(5*time.Second))))
	if err == nil || !strings.Contains(err.Error(), "monitor window") || !strings.Contains(err.Error(), ") complete") {
		t.Fatalf("err = %v, want the monitor to catch the task that stopped", err)
	}

	// A task Swarm shuts down itself (a scale, a drain) is no failure.
	f = newFakeSwarm()
	web, looks = nil, 0
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		web = s
		f.converge(s, create)
	}
	f.onTick = func(f *fakeSwarm) {
		if looks++; looks == 5 && web != nil {
			f.shutdownTasks(web.ID)
			f.addTask(web, 1, swarm.TaskStateRunning, "")
		}
	}
	f.now = time.Now()
	if err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", monitorFor(300*time.Millisecond)))); err != nil {
		t.Fatalf("a task Swarm moved failed the monitor: %v", err)
	}
}

func TestHookFailureStopsTheRelease(t *testing.T) {
	f := newFakeSwarm()
	if err := deploy(t, newLife(f, "1"), desired(svc("db", "v1"), svc("web", "v1", dependsOn("db")))); err != nil {
		t.Fatal(err)
	}
	f.takeCalls()
	l := newLife(f, "2")
	l.Hooks = &fakeHooks{eng: f, fail: map[string]error{"web": errors.New("migrate exited 1")}}
	err := deploy(t, l, desired(svc("db", "v2"), svc("web", "v2", dependsOn("db"), preDeploy("migrate"))))
	if !errors.Is(err, compose.ErrHook) || !strings.Contains(err.Error(), "migrate exited 1") {
		t.Fatalf("err = %v, want a hook failure", err)
	}
	// The hook ran after db, which web depends on, and before web.
	if got, want := f.takeCalls(), []string{"update shop_db", "hook pre-deploy web 1"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %q, want %q", got, want)
	}

	// A runner that names the service and wraps ErrHook (as Hooks.Run
	// does) is not named twice.
	f.takeCalls()
	l.Hooks = &fakeHooks{eng: f, fail: map[string]error{"web": fmt.Errorf("service web: %w: migrate exited 1", compose.ErrHook)}}
	err = deploy(t, l, desired(svc("db", "v3"), svc("web", "v3", dependsOn("db"), preDeploy("migrate"))))
	if want := "service web: pre-deploy hook failed: migrate exited 1"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
}

func TestRollBackPutsEveryServiceBack(t *testing.T) {
	f := newFakeSwarm()
	prev := desired(svc("db", "v1"), svc("web", "v1", dependsOn("db")))
	if err := deploy(t, newLife(f, "1"), prev); err != nil {
		t.Fatal(err)
	}
	// Release 2: db updates fine, worker is new (web waits for both),
	// web's update pauses.
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		if s.Spec.Name == "shop_web" && s.Spec.Labels[LabelSpecHash] == "h-web-v2" {
			s.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStatePaused, Message: "update paused"}
			return
		}
		f.converge(s, create)
	}
	next := desired(svc("db", "v2"), svc("worker", "v2"), svc("web", "v2", dependsOn("db", "worker")))
	if err := deploy(t, newLife(f, "2"), next); err == nil {
		t.Fatal("release 2 passed")
	}
	if got := f.service("shop_db").Spec.Labels[LabelSpecHash]; got != "h-db-v2" {
		t.Fatalf("db is at %s before the rollback, want the v2 it updated to", got)
	}
	f.takeCalls()
	l := newLife(f, "1")
	var plans []string
	l.OnPlan = func(p life.Plan) { plans = append(plans, p.String()) }
	if err := l.RollBack(context.Background(), prev, false); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	calls := f.takeCalls()
	slices.Sort(calls)
	if want := []string{"remove shop_worker", "update shop_db", "update shop_web"}; !slices.Equal(calls, want) {
		t.Fatalf("calls = %q, want %q", calls, want)
	}
	for _, name := range []string{"db", "web"} {
		s := f.service(project + "_" + name)
		if got := s.Spec.Labels[LabelSpecHash]; got != "h-"+name+"-v1" {
			t.Errorf("%s is at %s, want v1", name, got)
		}
		if got := runningHashes(f)[project+"_"+name]; !slices.Equal(got, []string{"h-" + name + "-v1"}) {
			t.Errorf("%s runs %q", name, got)
		}
		// The update used the rollback_config.
		if uc := s.Spec.UpdateConfig; uc == nil || uc.Parallelism != 2 || uc.Order != swarm.UpdateOrderStopFirst {
			t.Errorf("%s rolled back with update config %+v, want its rollback_config", name, uc)
		}
		if s.Spec.Labels[LabelRelease] != "1" {
			t.Errorf("%s release label = %q", name, s.Spec.Labels[LabelRelease])
		}
	}
	want := "rollback plan for shop:\n" +
		"  service db: update shop_db (image reg.example/db:v2 -> reg.example/db:v1)\n" +
		"  service web: update shop_web (image reg.example/web:v2 -> reg.example/web:v1)\n" +
		"  service worker: remove shop_worker (no longer in the file)\n"
	if len(plans) != 1 || plans[0] != want {
		t.Errorf("rollback plan =\n%s\nwant\n%s", strings.Join(plans, "--\n"), want)
	}

	// After a crash, recheck updates and gates what already matches.
	f.takeCalls()
	if err := l.RollBack(context.Background(), prev, true); err != nil {
		t.Fatal(err)
	}
	calls = f.takeCalls()
	slices.Sort(calls)
	if want := []string{"update shop_db", "update shop_web"}; !slices.Equal(calls, want) {
		t.Errorf("recheck calls = %q, want %q", calls, want)
	}
}

func TestRollBackRecreatesALostService(t *testing.T) {
	f := newFakeSwarm()
	prev := desired(svc("db", "v1"), svc("web", "v1"))
	if err := deploy(t, newLife(f, "1"), prev); err != nil {
		t.Fatal(err)
	}
	if err := deploy(t, newLife(f, "2"), desired(svc("web", "v2"))); err != nil {
		t.Fatal(err)
	}
	if f.service("shop_db") != nil {
		t.Fatal("release 2 kept db")
	}
	if err := newLife(f, "1").RollBack(context.Background(), prev, false); err != nil {
		t.Fatal(err)
	}
	if s := f.service("shop_db"); s == nil || s.Spec.Labels[LabelSpecHash] != "h-db-v1" {
		t.Fatalf("db after the rollback: %+v", s)
	}
}

func TestUndoRemovesWhatTheFirstReleaseCreated(t *testing.T) {
	f := newFakeSwarm()
	// A service the stack had before Berth, and the failed first release.
	other := svc("cache", "v0")
	if _, err := f.ServiceCreate(context.Background(), *other.Swarm, swarm.ServiceCreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.onDeploy = func(f *fakeSwarm, s *swarm.Service, create bool) {
		if s.Spec.Name == "shop_web" {
			s.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStateRollbackStarted}
			return
		}
		f.converge(s, create)
	}
	failed := desired(svc("cache", "v1"), svc("db", "v1"), svc("web", "v1"))
	l := newLife(f, "1")
	if err := deploy(t, l, failed); err == nil {
		t.Fatal("the first release passed")
	}
	f.takeCalls()
	f.netBusy["shop_default"] = 2
	if err := l.Undo(context.Background(), failed); err != nil {
		t.Fatalf("undo: %v", err)
	}
	want := []string{"rollback shop_cache", "remove shop_db", "remove shop_web", "remove network shop_default"}
	if got := f.takeCalls(); !slices.Equal(got, want) {
		t.Fatalf("calls = %q, want %q", got, want)
	}
	if s := f.service("shop_cache"); s == nil || s.Spec.Labels[LabelSpecHash] != "h-cache-v0" {
		t.Errorf("cache after undo: %+v, want its spec from before", s)
	}
}

func TestCleanupRemovesWhatTheFileNoLongerHas(t *testing.T) {
	f := newFakeSwarm()
	old := desired(svc("db", "v1"), svc("web", "v1"))
	old.Networks = append(old.Networks, compose.NetworkSpec{Key: "back", Name: "shop_back", Options: network.CreateOptions{Labels: map[string]string{LabelNamespace: project}}})
	if err := deploy(t, newLife(f, "1"), old); err != nil {
		t.Fatal(err)
	}
	f.nets["other_default"] = network.Summary{Name: "other_default", Labels: map[string]string{LabelNamespace: "other"}}
	f.takeCalls()
	next := desired(svc("web", "v1"))
	if err := newLife(f, "2").Cleanup(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	if got, want := f.takeCalls(), []string{"remove shop_db", "remove network shop_back"}; !slices.Equal(got, want) {
		t.Fatalf("calls = %q, want %q", got, want)
	}
}

func TestPostDeploySaysAFailure(t *testing.T) {
	f := newFakeSwarm()
	l := newLife(f, "1")
	l.Hooks = &fakeHooks{eng: f, fail: map[string]error{"web": errors.New("notify exited 2")}}
	var said []string
	l.Progress = func(service, msg string) { said = append(said, service+": "+msg) }
	post := func(s *compose.ServiceSpec) { s.Policy.PostDeploy = []compose.Hook{{Command: []string{"notify"}}} }
	l.PostDeploy(context.Background(), desired(svc("db", "v1", post), svc("web", "v1", post)), []string{"web"})
	if got, want := f.takeCalls(), []string{"hook post-deploy web 1"}; !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if !slices.ContainsFunc(said, func(s string) bool {
		return strings.Contains(s, "web: warning") && strings.Contains(s, "notify exited 2")
	}) {
		t.Errorf("said %q, want the hook's failure", said)
	}
}

func TestObserveSkipsHooksAndOtherStacks(t *testing.T) {
	f := newFakeSwarm()
	ctx := context.Background()
	web := svc("web", "v1")
	hook := svc("web_hook-0-2", "v1")
	hook.Swarm.Labels[LabelHook] = "pre-deploy/0"
	other := svc("web", "v1")
	other.Swarm.Name, other.Swarm.Labels = "other_web", map[string]string{LabelNamespace: "other"}
	for _, s := range []compose.ServiceSpec{web, hook, other} {
		if _, err := f.ServiceCreate(ctx, *s.Swarm, swarm.ServiceCreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	o, err := Observe(ctx, f, project)
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(o.Services)); !slices.Equal(got, []string{"shop_web"}) {
		t.Errorf("observed %q", got)
	}
}

func TestFailureActions(t *testing.T) {
	paused := func(f *fakeSwarm, s *swarm.Service, create bool) {
		if s.Spec.Name == "shop_web" {
			s.UpdateStatus = &swarm.UpdateStatus{State: swarm.UpdateStatePaused, Message: "update paused"}
			return
		}
		f.converge(s, create)
	}
	action := func(a string) func(*compose.ServiceSpec) {
		return func(s *compose.ServiceSpec) { s.Policy.FailureAction = a }
	}

	// pause: the release stops there, for an operator.
	f := newFakeSwarm()
	if err := deploy(t, newLife(f, "1"), desired(svc("web", "v1"))); err != nil {
		t.Fatal(err)
	}
	f.onDeploy = paused
	err := deploy(t, newLife(f, "2"), desired(svc("web", "v2", action(compose.FailPause))))
	if !errors.Is(err, compose.ErrPaused) {
		t.Errorf("failure_action pause: err = %v, want ErrPaused", err)
	}

	// continue: said, and the rest goes on (worker depends on web).
	f = newFakeSwarm()
	if err := deploy(t, newLife(f, "1"), desired(svc("web", "v1"))); err != nil {
		t.Fatal(err)
	}
	f.onDeploy = paused
	f.takeCalls()
	l := newLife(f, "2")
	var said []string
	l.Progress = func(service, msg string) { said = append(said, service+": "+msg) }
	if err := deploy(t, l, desired(svc("web", "v2", action(compose.FailContinue)), svc("worker", "v2", dependsOn("web")))); err != nil {
		t.Errorf("failure_action continue: err = %v", err)
	}
	if got, want := f.takeCalls(), []string{"update shop_web", "create shop_worker"}; !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if !slices.ContainsFunc(said, func(s string) bool { return strings.HasPrefix(s, "web: failed, going on") }) {
		t.Errorf("said %q, want web's failure", said)
	}
}
