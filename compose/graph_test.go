package compose

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/healthcheck"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/container"
)

// funcGater gates a container by calling gate with its ID and name.
type funcGater struct {
	eng  *fakeEngine
	gate func(ctx context.Context, id, name string) error
}

func (g *funcGater) Gate(ctx context.Context, id string, _ healthcheck.Spec) error {
	name := g.eng.Name(id)
	g.eng.Record("gate %s", name)
	return g.gate(ctx, id, name)
}

// v2 is the stack with new images for the named services.
func v2(t *testing.T, services ...string) *Desired {
	images := map[string]string{}
	for _, s := range services {
		images[s] = "registry.test/" + s + ":v2"
	}
	return desired(t, load(t, images))
}

// stepOf finds the first step of a kind for a service.
func stepOf(t *testing.T, g *Graph, kind StepKind, service string) *Step {
	t.Helper()
	for _, s := range g.Steps {
		if s.Kind == kind && s.Service == service {
			return s
		}
	}
	t.Fatalf("no %s step for %s in:\n%s", kind, service, g)
	return nil
}

// waitsFor reports whether step a waits, directly or not, for step b.
func waitsFor(g *Graph, a, b *Step) bool {
	byID := map[int]*Step{}
	for _, s := range g.Steps {
		byID[s.ID] = s
	}
	seen := map[int]bool{}
	var walk func(*Step) bool
	walk = func(s *Step) bool {
		for _, id := range s.After {
			if id == b.ID {
				return true
			}
			if !seen[id] {
				seen[id] = true
				if walk(byID[id]) {
					return true
				}
			}
		}
		return false
	}
	return walk(a)
}

// TestGraphOrder checks the edges of a release that changes every
// service: db (a dependency of web, whose hook needs it) before web's
// hook; the hook before anything else changes; web and worker (both
// depend only on db) independent of each other; the proxy after web.
func TestGraphOrder(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	g := plan(t, eng, v2(t, "web", "worker", "db", "proxy")).Graph(Mode{KeepRetired: true, Monitor: true})

	hook := stepOf(t, g, StepHook, "web")
	dbGate := stepOf(t, g, StepGate, "db")
	webCreate, webGate := stepOf(t, g, StepCreate, "web"), stepOf(t, g, StepGate, "web")
	workerStop, workerGate := stepOf(t, g, StepStop, "worker"), stepOf(t, g, StepGate, "worker")
	proxyStop := stepOf(t, g, StepStop, "proxy")
	monitor := stepOf(t, g, StepMonitor, "")
	for _, c := range []struct {
		a, b *Step
		want bool
		why  string
	}{
		{hook, dbGate, true, "web's hook needs db rolled out"},
		{webCreate, hook, true, "web starts after its hook"},
		{workerStop, hook, true, "worker changes only after every hook passed"},
		{dbGate, hook, false, "db is what the hook needs: it does not wait for it"},
		{workerGate, webGate, false, "worker does not wait for web"},
		{webGate, workerGate, false, "web does not wait for worker"},
		{proxyStop, webGate, true, "the proxy depends on web"},
		{monitor, workerGate, true, "the monitor window comes last"},
		{monitor, proxyStop, true, "the monitor window comes last"},
	} {
		if got := waitsFor(g, c.a, c.b); got != c.want {
			t.Errorf("step %d (%s %s) waits for step %d (%s %s) = %v, want %v: %s\n%s", c.a.ID, c.a.Kind, c.a.Service, c.b.ID, c.b.Kind, c.b.Service, got, c.want, c.why, g)
		}
	}
	// Steps only wait for earlier steps: the graph runs in one pass and
	// has no cycle.
	for _, s := range g.Steps {
		for _, a := range s.After {
			if a >= s.ID {
				t.Errorf("step %d waits for a later step %d", s.ID, a)
			}
		}
	}
}

// TestIndependentServicesRollOutAtOnce: web's gate holds until worker's
// gate has begun. A serial executor would wait for ever (worker would
// wait for web), and the test would time out.
func TestIndependentServicesRollOutAtOnce(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	workerGating := make(chan struct{})
	gater := &funcGater{eng: eng, gate: func(ctx context.Context, _, name string) error {
		switch {
		case strings.HasPrefix(name, "shop-worker-"):
			close(workerGating)
		case strings.HasPrefix(name, "shop-web-"):
			select {
			case <-workerGating:
			case <-time.After(5 * time.Second):
				return errors.New("worker's gate never began while web's waited: the services ran one after the other")
			}
		}
		return nil
	}}
	exec := &Executor{Engine: eng, Health: gater, Release: "2", KeepRetired: true}
	web := load(t, nil).Services["web"]
	one := 1
	web.Deploy.Replicas = &one // one web gate, so workerGating closes once
	p := load(t, map[string]string{"web": "registry.test/web:v2", "worker": "registry.test/worker:v2"})
	web.Image = "registry.test/web:v2"
	p.Services["web"] = web
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	got := map[StepState]int{}
	for _, r := range exec.Steps() {
		got[r.State]++
	}
	if got[StepFailed]+got[StepSkipped] != 0 || got[StepDone] == 0 {
		t.Errorf("step results: %v", got)
	}
}

// TestFailingHookChangesNoOtherService: worker does not depend on web, but
// waits for web's hook; when it fails, worker is untouched, while db (the
// hook's dependency) has rolled out before it.
func TestFailingHookChangesNoOtherService(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	eng.takeCalls()
	eng.SetWaitExit(1)
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true}
	err := exec.Apply(t.Context(), plan(t, eng, v2(t, "web", "worker", "db")))
	if !errors.Is(err, ErrHook) || !strings.Contains(err.Error(), "service web") {
		t.Fatalf("apply = %v, want web's hook failure", err)
	}
	calls := eng.takeCalls()
	hook := slices.IndexFunc(calls, func(c string) bool { return strings.HasPrefix(c, "hook ") })
	dbGate := slices.Index(calls, "gate shop-db-1")
	if hook < 0 || dbGate < 0 || dbGate > hook {
		t.Errorf("db was not rolled out before the hook: %v", calls)
	}
	for _, c := range calls {
		if strings.Contains(c, "worker") || strings.Contains(c, "shop-web-1") || strings.Contains(c, "shop-web-2") {
			t.Errorf("%q after a failed hook: %v", c, calls)
		}
	}
	skipped := 0
	for _, r := range exec.Steps() {
		if r.Service == "worker" && r.State != StepSkipped {
			t.Errorf("worker's step %d (%s) %s", r.ID, r.Kind, r.State)
		}
		if r.State == StepSkipped {
			skipped++
		}
	}
	if skipped == 0 {
		t.Error("no step was skipped")
	}
}

// TestFailureCancelsStepsUnderWay: worker's gate fails while web's gate
// still waits; the run ends at once, web's wait is cancelled and the
// proxy is not switched.
func TestFailureCancelsStepsUnderWay(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	eng.takeCalls()
	gater := &funcGater{eng: eng, gate: func(ctx context.Context, _, name string) error {
		if strings.HasPrefix(name, "shop-worker-") {
			return errors.New("worker never healthy")
		}
		<-ctx.Done()
		return ctx.Err()
	}}
	exec := &Executor{Engine: eng, Health: gater, Release: "2", KeepRetired: true}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err := exec.Apply(ctx, plan(t, eng, v2(t, "web", "worker")))
	if err == nil || !strings.Contains(err.Error(), "service worker: worker never healthy") {
		t.Fatalf("apply = %v, want worker's gate failure", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the run waited for web's gate until the deadline")
	}
	for _, c := range eng.takeCalls() {
		if strings.HasPrefix(c, "exec shop-proxy-1") {
			t.Errorf("the proxy was reloaded after the failure: %q", c)
		}
	}
}

// webAndWorkerV2 runs the stack, then loads v2 of web and worker, worker
// with its own cpu_shares (512).
func webAndWorkerV2(t *testing.T) (*fakeEngine, *types.Project) {
	t.Helper()
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	p := load(t, map[string]string{"web": "registry.test/web:v2", "worker": "registry.test/worker:v2"})
	worker := p.Services["worker"]
	worker.CPUShares = 512
	p.Services["worker"] = worker
	return eng, p
}

// TestBootShield: a new container and a hook boot at the boot CPU weight;
// the container gets the default weight back once it passes its gate; a
// service with its own cpu_shares keeps them.
func TestBootShield(t *testing.T) {
	eng, p := webAndWorkerV2(t)
	var atGate []int64
	gater := &funcGater{eng: eng, gate: func(_ context.Context, id, name string) error {
		if c, ok := eng.Container(id); ok && strings.HasPrefix(name, "shop-web-") {
			atGate = append(atGate, c.HostConfig.CPUShares)
		}
		return nil
	}}
	eng.takeCalls()
	exec := &Executor{Engine: eng, Health: gater, Release: "2", KeepRetired: true, BootCPUShares: 2}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	if len(atGate) != 2 || atGate[0] != 2 || atGate[1] != 2 {
		t.Errorf("web's new containers at their gate had CPU weights %v, want 2", atGate)
	}
	calls := eng.takeCalls()
	for _, want := range []string{"update shop-web-1 cpu-shares 1024", "update shop-web-2 cpu-shares 1024"} {
		if !slices.Contains(calls, want) {
			t.Errorf("no %q in %v", want, calls)
		}
	}
	for name, id := range eng.ids() {
		c, _ := eng.Container(id)
		switch {
		case strings.HasPrefix(name, "shop-worker-") && !strings.Contains(name, retiredMark):
			if c.HostConfig.CPUShares != 512 {
				t.Errorf("%s has CPU weight %d, want its own 512", name, c.HostConfig.CPUShares)
			}
		case strings.HasPrefix(name, "shop-web-") && !strings.Contains(name, retiredMark):
			if c.HostConfig.CPUShares != 1024 {
				t.Errorf("%s has CPU weight %d after its gate, want 1024", name, c.HostConfig.CPUShares)
			}
		}
	}
	// The hook booted shielded too (it is removed; its create is recorded).
	if !slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "hook shop-web-predeploy") }) {
		t.Errorf("no hook ran: %v", calls)
	}
}

// TestBootShieldCgroupV2: on cgroup v2 a shielded container gets the
// shares of the default weight 100 back, not 1024 (weight 39, below every
// container that never set shares).
func TestBootShieldCgroupV2(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	p := load(t, map[string]string{"web": "registry.test/web:v2"})
	eng.takeCalls()
	exec := &Executor{Engine: eng, Health: &funcGater{eng: eng, gate: func(context.Context, string, string) error { return nil }}, Release: "2", KeepRetired: true, BootCPUShares: 2,
		DefaultCPUShares: DefaultShares("2")}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	calls := eng.takeCalls()
	for _, want := range []string{"update shop-web-1 cpu-shares 2598", "update shop-web-2 cpu-shares 2598"} {
		if !slices.Contains(calls, want) {
			t.Errorf("no %q in %v", want, calls)
		}
	}
	if got := DefaultShares("1"); got != 1024 {
		t.Errorf("cgroup v1 default shares %d, want 1024", got)
	}
}

// TestHookBootsShielded checks the hook container's weight at create.
func TestHookBootsShielded(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	var hookShares int64 = -1
	eng.SetOnWait(func(c container.InspectResponse) { hookShares = c.HostConfig.CPUShares })
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true, BootCPUShares: 2}
	if err := exec.Apply(t.Context(), plan(t, eng, v2(t, "web"))); err != nil {
		t.Fatal(err)
	}
	if hookShares != 2 {
		t.Errorf("the hook ran with CPU weight %d, want 2", hookShares)
	}
}

func TestCriticalPath(t *testing.T) {
	g := &Graph{Steps: []*Step{
		{ID: 1, Kind: StepHook},
		{ID: 2, Kind: StepCreate, Service: "web", After: []int{1}},
		{ID: 3, Kind: StepGate, Service: "web", After: []int{2}},
		{ID: 4, Kind: StepCreate, Service: "worker", After: []int{1}},
		{ID: 5, Kind: StepGate, Service: "worker", After: []int{4}},
		{ID: 6, Kind: StepMonitor, After: []int{3, 5}},
	}}
	est := map[int]time.Duration{1: 5 * time.Second, 2: time.Second, 3: 20 * time.Second, 4: time.Second, 5: 8 * time.Second, 6: 5 * time.Second}
	total, path := g.CriticalPath(func(s *Step) time.Duration { return est[s.ID] })
	if total != 31*time.Second {
		t.Errorf("critical path = %s, want 31s", total)
	}
	var got []int
	for _, s := range path {
		got = append(got, s.ID)
	}
	if !slices.Equal(got, []int{1, 2, 3, 6}) {
		t.Errorf("path = %v, want [1 2 3 6]", got)
	}
}

// TestGraphString prints a small rollout.
func TestGraphString(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	delete(p.Services, "proxy")
	apply(t, eng, plan(t, eng, desired(t, p)))
	p = load(t, map[string]string{"worker": "registry.test/worker:v2"})
	delete(p.Services, "proxy")
	got := plan(t, eng, desired(t, p)).Graph(Mode{KeepRetired: true, Monitor: true}).String()
	want := `steps for shop:
    1. rename-aside [worker] shop-worker-1
    2. create [worker] shop-worker-1 (after 1)
    3. gate [worker] shop-worker-1 (after 2)
    4. stop [worker] shop-worker-1 (after 3)
    5. monitor 5s (after 4)
`
	if got != want {
		t.Errorf("graph:\n%s\nwant:\n%s", got, want)
	}
}

// fakeIdler records which processes are in the idle CPU class, and the
// CPU weight each container had when it was taken out (the kernel takes
// no weight for an idle group, so it must come out first).
type fakeIdler struct {
	eng      *fakeEngine
	err      error
	idle     map[int]bool
	everIdle map[string]bool  // container names ever put there
	outAt    map[string]int64 // name: its CPU shares when taken out
}

func (f *fakeIdler) SetIdle(pid int, idle bool) error {
	if f.err != nil && idle {
		return f.err // as cgroup.Host: taking a group not idle out writes nothing
	}
	if name, c, ok := byPid(f.eng, pid); ok {
		if idle {
			f.everIdle[name] = true
		} else if f.idle[pid] {
			f.outAt[name] = c.HostConfig.CPUShares
		}
	}
	f.idle[pid] = idle
	return nil
}

// byPid finds the container whose process is pid, and its name.
func byPid(eng *fakeEngine, pid int) (string, container.InspectResponse, bool) {
	for name, id := range eng.ids() {
		if c, ok := eng.Container(id); ok && c.State.Pid == pid {
			return name, c, true
		}
	}
	return "", container.InspectResponse{}, false
}

// bootedOnlyShielded requires, after webAndWorkerV2's rollout, that no
// running container is still marked (now, by pid), that the worker (its own
// cpu_shares) was never marked (ever, by name) and that a hook was.
func bootedOnlyShielded(t *testing.T, eng *fakeEngine, mark string, now map[int]bool, ever map[string]bool) {
	t.Helper()
	for name, id := range eng.ids() {
		if c, ok := eng.Container(id); ok && c.State.Running && now[c.State.Pid] {
			t.Errorf("%s is still %s after the rollout", name, mark)
		}
	}
	hook := false
	for n := range ever {
		if strings.HasPrefix(n, "shop-worker-") {
			t.Errorf("%s (cpu_shares 512) was %s", n, mark)
		}
		hook = hook || strings.Contains(n, "predeploy")
	}
	if !hook {
		t.Errorf("no hook booted %s: %v", mark, ever)
	}
}

// TestBootIdle: what boots shielded (new containers, hooks) boots in the
// idle CPU class too, and comes out of it before it gets its weight back;
// a service with its own cpu_shares is never put there.
func TestBootIdle(t *testing.T) {
	eng, p := webAndWorkerV2(t)
	idler := &fakeIdler{eng: eng, idle: map[int]bool{}, everIdle: map[string]bool{}, outAt: map[string]int64{}}
	var idleAtGate []bool
	gater := &funcGater{eng: eng, gate: func(_ context.Context, id, name string) error {
		if c, ok := eng.Container(id); ok && strings.HasPrefix(name, "shop-web-") {
			idleAtGate = append(idleAtGate, idler.idle[c.State.Pid])
		}
		return nil
	}}
	exec := &Executor{Engine: eng, Health: gater, Release: "2", KeepRetired: true, BootCPUShares: 2, Idle: idler}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	if len(idleAtGate) != 2 || !idleAtGate[0] || !idleAtGate[1] {
		t.Errorf("web's new containers were idle at their gate: %v, want true twice", idleAtGate)
	}
	for _, n := range []string{"shop-web-1", "shop-web-2"} {
		if !idler.everIdle[n] {
			t.Errorf("%s never booted idle", n)
		}
		if shares, ok := idler.outAt[n]; !ok || shares != 2 {
			t.Errorf("%s taken out of the idle class: %v, at CPU shares %d; want before its weight came back (2)", n, ok, shares)
		}
	}
	bootedOnlyShielded(t, eng, "idle", idler.idle, idler.everIdle)
}

// TestBootIdleRefused: a host that refuses the idle class is said once;
// the rollout goes on by the weight alone.
func TestBootIdleRefused(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	var said []string
	idler := &fakeIdler{eng: eng, err: errors.New("no such file"), idle: map[int]bool{}, everIdle: map[string]bool{}, outAt: map[string]int64{}}
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true, BootCPUShares: 2, Idle: idler,
		Progress: func(_, msg string) { said = append(said, msg) }}
	if err := exec.Apply(t.Context(), plan(t, eng, v2(t, "web"))); err != nil {
		t.Fatal(err)
	}
	saidOnce(t, said, "idle CPU class", "no such file")
}

// saidOnce requires that exactly one of the lines said tells of what (a
// refusal) and that it says why.
func saidOnce(t *testing.T, said []string, what, why string) {
	t.Helper()
	n := 0
	for _, s := range said {
		if strings.Contains(s, what) {
			n++
			if !strings.Contains(s, why) {
				t.Errorf("the refusal does not say why (%q): %q", why, s)
			}
		}
	}
	if n != 1 {
		t.Errorf("%q was said %d times, want once: %q", what, n, said)
	}
}

// fakePinner records which processes are kept to half the CPUs, and
// whether each was still idle when it got every CPU back.
type fakePinner struct {
	eng       *fakeEngine
	err       error
	pinned    map[int]bool
	everPin   map[string]bool // container names ever pinned
	unpinIdle map[string]bool // name: still in the idle class when unpinned
	idler     *fakeIdler
}

func (f *fakePinner) name(pid int) string {
	name, _, _ := byPid(f.eng, pid)
	return name
}

func (f *fakePinner) PinBoot(pid int) (string, error) {
	if f.err != nil {
		return "", f.err
	}
	f.everPin[f.name(pid)] = true
	f.pinned[pid] = true
	return "1", nil
}

func (f *fakePinner) Unpin(pid int) error {
	if f.pinned[pid] {
		f.unpinIdle[f.name(pid)] = f.idler.idle[pid]
	}
	f.pinned[pid] = false
	return nil
}

// TestBootPinned: what boots shielded (new containers, hooks) boots on
// half the CPUs and gets them all back at its gate, before it leaves the
// idle class; a service with its own cpu_shares or cpuset is never pinned.
func TestBootPinned(t *testing.T) {
	eng, p := webAndWorkerV2(t)
	idler := &fakeIdler{eng: eng, idle: map[int]bool{}, everIdle: map[string]bool{}, outAt: map[string]int64{}}
	pinner := &fakePinner{eng: eng, pinned: map[int]bool{}, everPin: map[string]bool{}, unpinIdle: map[string]bool{}, idler: idler}
	var pinnedAtGate []bool
	gater := &funcGater{eng: eng, gate: func(_ context.Context, id, name string) error {
		if c, ok := eng.Container(id); ok && strings.HasPrefix(name, "shop-web-") {
			pinnedAtGate = append(pinnedAtGate, pinner.pinned[c.State.Pid])
		}
		return nil
	}}
	exec := &Executor{Engine: eng, Health: gater, Release: "2", KeepRetired: true, BootCPUShares: 2, Idle: idler, Pin: pinner}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	if len(pinnedAtGate) != 2 || !pinnedAtGate[0] || !pinnedAtGate[1] {
		t.Errorf("web's new containers were pinned at their gate: %v, want true twice", pinnedAtGate)
	}
	for _, n := range []string{"shop-web-1", "shop-web-2"} {
		if idle, ok := pinner.unpinIdle[n]; !ok || !idle {
			t.Errorf("%s unpinned: %v, while idle: %v; want unpinned at its gate, before it left the idle class", n, ok, idle)
		}
	}
	bootedOnlyShielded(t, eng, "pinned", pinner.pinned, pinner.everPin)

	// web with a cpuset of its own: shielded by weight, never pinned.
	p = load(t, map[string]string{"web": "registry.test/web:v3"})
	web := p.Services["web"]
	web.CPUSet = "0"
	p.Services["web"] = web
	pinner.everPin = map[string]bool{}
	exec = &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "3", KeepRetired: true, BootCPUShares: 2, Idle: idler, Pin: pinner}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	for n := range pinner.everPin {
		if strings.HasPrefix(n, "shop-web-") {
			t.Errorf("%s (cpuset 0) was pinned", n)
		}
	}
}

// TestBootPinRefused: a host that refuses the cpuset is said once; the
// rollout goes on, on every CPU.
func TestBootPinRefused(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	var said []string
	pinner := &fakePinner{eng: eng, err: errors.New("no cpuset.cpus"), pinned: map[int]bool{}, everPin: map[string]bool{}}
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true, BootCPUShares: 2, Pin: pinner,
		Progress: func(_, msg string) { said = append(said, msg) }}
	if err := exec.Apply(t.Context(), plan(t, eng, v2(t, "web"))); err != nil {
		t.Fatal(err)
	}
	saidOnce(t, said, "on every CPU", "no cpuset.cpus")
}

// unseen is an Idler and a Pinner that cannot see any process, as agentd
// under systemd's ProtectProc=invisible: every call fails with
// fs.ErrNotExist.
type unseen struct{ calls int }

func (u *unseen) SetIdle(pid int, _ bool) error {
	u.calls++
	return fmt.Errorf("the cgroups of process %d: %w", pid, fs.ErrNotExist)
}

func (u *unseen) PinBoot(pid int) (string, error) { return "", u.SetIdle(pid, true) }

func (u *unseen) Unpin(pid int) error { return u.SetIdle(pid, false) }

// TestBootUnseen: where agentd cannot see the containers' processes, what
// boots is said once to boot without the idle class and the pin, and the
// gates still pass: there is nothing to take back.
func TestBootUnseen(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	var said []string
	u := &unseen{}
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true, BootCPUShares: 2, Idle: u, Pin: u,
		Progress: func(_, msg string) { said = append(said, msg) }}
	if err := exec.Apply(t.Context(), plan(t, eng, v2(t, "web"))); err != nil {
		t.Fatalf("the rollout failed where agentd cannot see its containers' processes: %v", err)
	}
	saidOnce(t, said, "idle CPU class", "file does not exist")
	saidOnce(t, said, "on every CPU", "file does not exist")
	if u.calls < 4 {
		t.Errorf("%d calls to the cgroup files; want the boot's and the gate's for each new container", u.calls)
	}
}
