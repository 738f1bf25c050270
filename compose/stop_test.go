package compose

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/container"
)

func TestKilledAtGrace(t *testing.T) {
	secs := func(n int) *int { return &n }
	state := func(code int, oom bool) *container.ContainerJSONBase {
		return &container.ContainerJSONBase{State: &container.State{ExitCode: code, OOMKilled: oom}}
	}
	for _, tc := range []struct {
		name    string
		in      container.InspectResponse
		timeout *int
		took    time.Duration
		want    bool
		signal  string
		grace   time.Duration
	}{
		{"killed after the grace given", container.InspectResponse{ContainerJSONBase: state(137, false)}, secs(40), 44 * time.Second, true, "SIGTERM", 40 * time.Second},
		{"killed after its own grace", container.InspectResponse{ContainerJSONBase: state(137, false), Config: &container.Config{StopTimeout: secs(3), StopSignal: "SIGQUIT"}}, nil, 3100 * time.Millisecond, true, "SIGQUIT", 3 * time.Second},
		{"the engine's default grace", container.InspectResponse{ContainerJSONBase: state(137, false), Config: &container.Config{}}, nil, 10 * time.Second, true, "SIGTERM", 10 * time.Second},
		{"a numbered signal", container.InspectResponse{ContainerJSONBase: state(137, false), Config: &container.Config{StopSignal: "15"}}, secs(2), 2 * time.Second, true, "signal 15", 2 * time.Second},
		{"the timeout given wins over its own", container.InspectResponse{ContainerJSONBase: state(137, false), Config: &container.Config{StopTimeout: secs(60)}}, secs(5), 6 * time.Second, true, "SIGTERM", 5 * time.Second},
		{"exited in time", container.InspectResponse{ContainerJSONBase: state(0, false)}, secs(40), 3 * time.Second, false, "", 0},
		{"exited on SIGTERM's default action", container.InspectResponse{ContainerJSONBase: state(143, false)}, secs(2), 2 * time.Second, false, "", 0},
		{"137 before the grace ended", container.InspectResponse{ContainerJSONBase: state(137, false)}, secs(40), 39 * time.Second, false, "", 0},
		{"the OOM killer", container.InspectResponse{ContainerJSONBase: state(137, true)}, secs(2), 5 * time.Second, false, "", 0},
		{"stop signal SIGKILL", container.InspectResponse{ContainerJSONBase: state(137, false), Config: &container.Config{StopSignal: "SIGKILL"}}, secs(0), time.Second, false, "", 0},
		{"stop signal KILL", container.InspectResponse{ContainerJSONBase: state(137, false), Config: &container.Config{StopSignal: "kill"}}, secs(0), time.Second, false, "", 0},
		{"stop signal 9", container.InspectResponse{ContainerJSONBase: state(137, false), Config: &container.Config{StopSignal: "9"}}, secs(0), time.Second, false, "", 0},
		{"still running", container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{State: &container.State{Running: true, ExitCode: 137}}}, secs(2), 3 * time.Second, false, "", 0},
		{"no grace limit", container.InspectResponse{ContainerJSONBase: state(137, false)}, secs(-1), time.Hour, false, "", 0},
		{"no state", container.InspectResponse{}, secs(2), 3 * time.Second, false, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, ok := killedAtGrace(tc.in, tc.timeout, tc.took)
			if ok != tc.want {
				t.Fatalf("killed = %v, want %v", ok, tc.want)
			}
			if ok && (k.Signal != tc.signal || k.Grace != tc.grace || k.Took != tc.took) {
				t.Errorf("got %+v, want signal %s, grace %s", k, tc.signal, tc.grace)
			}
		})
	}
}

// progressLog collects an executor's progress lines.
type progressLog struct {
	mu    sync.Mutex
	lines []string
}

func (p *progressLog) add(service, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, "["+service+"] "+msg)
}

func (p *progressLog) grep(word string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.lines {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return out
}

// TestStopsKilledAtGraceAreReported: web (start-first, 10 s) and db
// (stop-first, stop_grace_period 30s) ignore their stop signal, worker
// does not. Every kind of stop the executor makes reports the containers
// the engine killed, with their service and grace period, and only those:
// the retirement of a rollout, the stop of a rollback, and an undo.
func TestStopsKilledAtGraceAreReported(t *testing.T) {
	eng := newFakeEngine()
	eng.SetStubborn("web", "db")
	p1 := load(t, nil)
	apply(t, eng, plan(t, eng, desired(t, p1)))

	// A rollout that changes web, worker and db.
	p2 := load(t, map[string]string{"web": "registry.test/web:v2", "worker": "registry.test/worker:v2", "db": "registry.test/db:v2"})
	var log progressLog
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true, Progress: log.add, clock: eng.Now}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p2))); err != nil {
		t.Fatal(err)
	}
	got := exec.Killed()
	var names []string
	for _, k := range got {
		names = append(names, k.Service+" "+strings.Split(k.Container, retiredMark)[0]+" "+k.Grace.String()+" "+k.Signal)
		if k.Took < k.Grace {
			t.Errorf("%s: took %s, less than its grace %s", k.Container, k.Took, k.Grace)
		}
	}
	slices.Sort(names)
	want := []string{"db shop-db-1 30s SIGTERM", "web shop-web-1 10s SIGTERM", "web shop-web-2 10s SIGTERM"}
	if !slices.Equal(names, want) {
		t.Errorf("killed = %q, want %q", names, want)
	}
	lines := log.grep("killed at the end of its grace period")
	if len(lines) != 3 {
		t.Errorf("%d warnings, want 3:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{"[db] warning: shop-db-1 was killed at the end of its grace period: it had not exited 30s after SIGTERM", "raise stop_grace_period (30s) if db needs longer to stop"} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, want) }) {
			t.Errorf("no warning says %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}

	// The rollback to release 1 stops release 2's containers.
	back := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Rollback: true, Progress: log.add, clock: eng.Now}
	if err := back.Apply(t.Context(), plan(t, eng, desired(t, p1))); err != nil {
		t.Fatal(err)
	}
	names = nil
	for _, k := range back.Killed() {
		names = append(names, k.Service+" "+k.Container)
	}
	slices.Sort(names)
	if want := []string{"db shop-db-1", "web shop-web-1", "web shop-web-2"}; !slices.Equal(names, want) {
		t.Errorf("killed by the rollback = %q, want %q", names, want)
	}
}

// TestUndoReportsKilled: undoing a first release stops its containers
// with their own grace period (from the file: db's 30s); those the engine
// kills are reported.
func TestUndoReportsKilled(t *testing.T) {
	eng := newFakeEngine()
	eng.SetStubborn("db")
	d := desired(t, load(t, nil))
	if err := (&Executor{Engine: eng, Release: "1"}).Apply(t.Context(), plan(t, eng, d)); err != nil {
		t.Fatal(err)
	}
	var log progressLog
	exec := &Executor{Engine: eng, Progress: log.add, clock: eng.Now}
	if err := exec.Undo(t.Context(), d, "1"); err != nil {
		t.Fatal(err)
	}
	got := exec.Killed()
	if len(got) != 1 || got[0].Service != "db" || got[0].Container != "shop-db-1" || got[0].Grace != 30*time.Second {
		t.Errorf("killed = %+v, want db's shop-db-1 with its 30s", got)
	}
	if len(log.grep("shop-db-1 was killed at the end of its grace period")) != 1 {
		t.Errorf("no warning for shop-db-1:\n%s", strings.Join(log.lines, "\n"))
	}
}

// TestStopSignalKillIsNotReported: a service whose stop signal is SIGKILL
// always ends with 137, at once: that is no grace period cut short.
func TestStopSignalKillIsNotReported(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	worker := p.Services["worker"]
	worker.StopSignal = "SIGKILL"
	p.Services["worker"] = worker
	apply(t, eng, plan(t, eng, desired(t, p)))
	p.Services["worker"] = withImage(worker, "registry.test/worker:v2")
	var log progressLog
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", Progress: log.add, clock: eng.Now}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	if got := exec.Killed(); len(got) != 0 {
		t.Errorf("killed = %+v, want none", got)
	}
	if lines := log.grep("warning"); len(lines) != 0 {
		t.Errorf("warnings: %q", lines)
	}
	if !slices.ContainsFunc(eng.takeCalls(), func(c string) bool { return strings.HasPrefix(c, "stop shop-worker-1") }) {
		t.Error("the old worker was not stopped: the test shows nothing")
	}
}

// TestStopFailureIsNotAKill: a stop the engine refuses is an error, as
// before, and reports no kill.
func TestStopFailureIsNotAKill(t *testing.T) {
	eng := &failingStop{fakeEngine: newFakeEngine()}
	p := load(t, nil)
	apply(t, eng.fakeEngine, plan(t, eng.fakeEngine, desired(t, p)))
	eng.SetStubborn("db")
	p.Services["db"] = withImage(p.Services["db"], "registry.test/db:v2")
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng.fakeEngine}, Release: "2", KeepRetired: true, clock: eng.Now}
	err := exec.Apply(t.Context(), plan(t, eng.fakeEngine, desired(t, p)))
	if !errors.Is(err, errStop) {
		t.Fatalf("apply = %v, want the stop's error", err)
	}
	if got := exec.Killed(); len(got) != 0 {
		t.Errorf("killed = %+v, want none", got)
	}
}

var errStop = errors.New("fake: stop refused")

type failingStop struct{ *fakeEngine }

func (f *failingStop) ContainerStop(context.Context, string, container.StopOptions) error {
	return errStop
}

// TestRemovedServiceStopsWithItsOwnGrace: a service no longer in the file
// is stopped with the grace period its containers were created with (25s
// here), not a default 10 s, and a kill at its end is reported with it.
func TestRemovedServiceStopsWithItsOwnGrace(t *testing.T) {
	eng := newFakeEngine()
	eng.SetStubborn("worker")
	p := load(t, nil)
	worker := p.Services["worker"]
	grace := types.Duration(25 * time.Second)
	worker.StopGracePeriod = &grace
	p.Services["worker"] = worker
	apply(t, eng, plan(t, eng, desired(t, p)))

	delete(p.Services, "worker")
	start := eng.Now()
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true, clock: eng.Now}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	if took := eng.Now().Sub(start); took < 25*time.Second {
		t.Errorf("the stop took %s: the engine was not given worker's 25s", took)
	}
	got := exec.Killed()
	if len(got) != 1 || got[0].Service != "worker" || got[0].Grace != 25*time.Second {
		t.Errorf("killed = %+v, want worker with its 25s", got)
	}
}
