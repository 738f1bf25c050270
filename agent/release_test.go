package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/store"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/internal/fakeengine"
)

// The tests of the release core: the service with the in-memory engine
// and a bbolt store in a temporary directory, through the service's own
// methods (Deploy, Rollback, Lock, Recover) as the doors call them.

// Images by digest, so that resolving them asks no registry.
func img(repo string, c byte) string {
	return "registry.test/" + repo + "@sha256:" + strings.Repeat(string(c), 64)
}

var (
	webV1, webV2, webV3 = img("web", '1'), img("web", '2'), img("web", '3')
	dbV1, dbV2          = img("db", 'a'), img("db", 'b')
)

// shopCompose is db (stop-first: a named volume) and web (start-first)
// behind it. Gates without a probe wait for the monitor period (20ms).
const shopCompose = `
services:
  db:
    image: ` + "DBV1" + `
    volumes: [dbdata:/var/lib/db]
    stop_grace_period: 0s
    deploy:
      update_config: {monitor: 20ms}
  web:
    image: ` + "WEBV1" + `
    depends_on: [db]
    deploy:
      update_config: {monitor: 20ms}
volumes:
  dbdata: {}
`

// release is a service over a fake engine and a real store.
type release struct {
	t   *testing.T
	eng *fakeengine.Engine
	st  *store.Store
	cfg *config.Config
	svc *Service
	log *syncBuffer
}

// syncBuffer is a log sink that several goroutines write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newRelease(t *testing.T, composeFile string) *release {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "compose.yaml")
	composeFile = strings.NewReplacer("DBV1", dbV1, "WEBV1", webV1).Replace(composeFile)
	if err := os.WriteFile(file, []byte(composeFile), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	eng := fakeengine.New()
	var imgs []image.Summary
	for _, ref := range []string{webV1, webV2, webV3, dbV1, dbV2} {
		_, d, _ := strings.Cut(ref, "@")
		imgs = append(imgs, image.Summary{ID: d, RepoDigests: []string{ref}})
	}
	eng.SetImages(imgs...)
	cfg := &config.Config{
		StateDir: filepath.Join(dir, "state"),
		Projects: map[string]config.Project{"shop": {ComposeFile: file, KeepReleases: 10,
			MaxComposeFiles: config.DefaultMaxComposeFiles, MaxComposeBytes: config.DefaultMaxComposeBytes}},
		Recovery: config.Recovery{Settle: 10 * time.Millisecond, SettleLimit: time.Second},
	}
	r := &release{t: t, eng: eng, st: st, cfg: cfg, log: &syncBuffer{}}
	r.svc = r.service(eng)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agentd's log:\n%s", r.log)
		}
	})
	return r
}

// service is a new service (a new agentd) over the same store and
// configuration, talking to eng.
func (r *release) service(eng Engine) *Service {
	r.t.Helper()
	svc, err := New(r.cfg, eng, r.st, slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		r.t.Fatal(err)
	}
	return svc
}

var alice = auth.Local("alice")

// events collects what a request emits.
type eventLog struct {
	mu  sync.Mutex
	evs []api.Event
	on  func(api.Event)
}

func (l *eventLog) emit(e api.Event) {
	l.mu.Lock()
	l.evs = append(l.evs, e)
	on := l.on
	l.mu.Unlock()
	if on != nil {
		on(e)
	}
}

func (l *eventLog) result() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range slices.Backward(l.evs) {
		if e.Type == api.EventResult {
			return e.Message
		}
	}
	return ""
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, e := range l.evs {
		fmt.Fprintf(&b, "%s %s: %s\n", e.Type, e.Service, e.Message)
	}
	return b.String()
}

// deploy deploys images (service -> ref) through svc and returns the exit
// code and what was emitted.
func (r *release) deploy(svc *Service, req api.DeployRequest, on func(api.Event)) (int, *eventLog) {
	r.t.Helper()
	req.Project = "shop"
	l := &eventLog{on: on}
	code, err := svc.Deploy(r.t.Context(), alice, req, l.emit)
	if err != nil {
		r.t.Fatalf("deploy refused: %v", err)
	}
	return code, l
}

// mustDeploy deploys and wants exit code want.
func (r *release) mustDeploy(images map[string]string, want int) *eventLog {
	r.t.Helper()
	code, l := r.deploy(r.svc, api.DeployRequest{Images: images}, nil)
	if code != want {
		r.t.Fatalf("deploy %v: exit code %d, want %d:\n%s", images, code, want, l)
	}
	return l
}

// running returns, by name, the image and release label of the running
// containers of shop's services (not one-offs).
func (r *release) running() map[string]string {
	r.t.Helper()
	list, err := r.eng.ContainerList(r.t.Context(), container.ListOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]string{}
	for _, c := range list {
		if c.Labels[compose.LabelProject] == "shop" {
			out[strings.TrimPrefix(c.Names[0], "/")] = c.Image + " #" + c.Labels[compose.LabelRelease]
		}
	}
	return out
}

// all returns the names of every container of shop, running or not.
func (r *release) all() []string {
	return slices.Sorted(maps.Keys(r.eng.IDs()))
}

func (r *release) get(n int) api.Release {
	r.t.Helper()
	rel, err := r.st.Get("shop", n)
	if err != nil {
		r.t.Fatal(err)
	}
	return rel
}

func (r *release) live() int {
	r.t.Helper()
	cur, ok, err := r.st.Current("shop")
	if err != nil {
		r.t.Fatal(err)
	}
	if !ok {
		return 0
	}
	return cur.Number
}

func wantMap(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
}

// TestDeployGateFailsRestoresPrevious: release 2 changes db and web; web's
// new container exits at once (its gate fails) after db was replaced. The
// whole release goes back to release 1, db included: exit code 1, release
// 1 live and serving, and the history says release 2 was rolled back to 1
// and why.
func TestDeployGateFailsRestoresPrevious(t *testing.T) {
	start := time.Now()
	r := newRelease(t, shopCompose)
	r.mustDeploy(nil, api.ExitOK)
	v1 := map[string]string{"shop-db-1": dbV1 + " #1", "shop-web-1": webV1 + " #1"}
	wantMap(t, "after release 1", r.running(), v1)

	r.eng.CrashOnStart(webV2, 3)
	l := r.mustDeploy(map[string]string{"db": dbV2, "web": webV2}, api.ExitRolledBack)
	if res := l.result(); !strings.Contains(res, "release 2 failed; release 1 is serving again") || !strings.Contains(res, "exit code 3") {
		t.Errorf("result %q: want release 1 serving again, and web's exit code", res)
	}
	wantMap(t, "after the failed release 2", r.running(), v1)
	if names := r.all(); !slices.Equal(names, []string{"shop-db-1", "shop-web-1"}) {
		t.Errorf("containers left: %v, want only db's and web's", names)
	}
	if got := r.live(); got != 1 {
		t.Errorf("live release %d, want 1", got)
	}
	rel := r.get(2)
	if rel.Outcome != api.OutcomeRolledBack || rel.RestoredTo != 1 || !strings.Contains(rel.Error, "service web") {
		t.Errorf("release 2: outcome %s, restored to %d, error %q; want rolled back to 1 with web's failure", rel.Outcome, rel.RestoredTo, rel.Error)
	}
	if rel.Interrupted {
		t.Error("release 2 is marked interrupted: no agentd died")
	}

	// The next deploy starts from release 1, and succeeds.
	r.mustDeploy(map[string]string{"web": webV3}, api.ExitOK)
	wantMap(t, "after release 3", r.running(), map[string]string{"shop-db-1": dbV1 + " #1", "shop-web-1": webV3 + " #3"})
	t.Logf("took %v", time.Since(start).Round(time.Millisecond))
}

// TestUndoFailedFirstRelease: a stack that `docker compose up` started runs
// before Berth's first release, which fails at web's gate after replacing
// db. There is no release to go back to: the release's containers are
// removed, and the containers it replaced run again under their names,
// with their IDs. Exit code 1; nothing is live; the history says so.
func TestUndoFailedFirstRelease(t *testing.T) {
	r := newRelease(t, shopCompose)
	// What docker compose started: the same services, on images of its
	// own, without Berth's release label.
	d := r.desired(map[string]string{"db": dbV2, "web": webV2})
	o, err := compose.Observe(t.Context(), r.eng, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if err := (&compose.Executor{Engine: r.eng}).Apply(t.Context(), compose.MakePlan(d, o)); err != nil {
		t.Fatal(err)
	}
	before := r.eng.IDs()
	wantMap(t, "docker compose's stack", r.running(), map[string]string{"shop-db-1": dbV2 + " #", "shop-web-1": webV2 + " #"})

	r.eng.CrashOnStart(webV1, 1)
	l := r.mustDeploy(nil, api.ExitRolledBack)
	if res := l.result(); !strings.Contains(res, "release 1 failed and was undone (there was no earlier release") {
		t.Errorf("result %q: want the undo said", res)
	}
	wantMap(t, "containers after the undo", r.eng.IDs(), before)
	wantMap(t, "running after the undo", r.running(), map[string]string{"shop-db-1": dbV2 + " #", "shop-web-1": webV2 + " #"})
	if got := r.live(); got != 0 {
		t.Errorf("live release %d, want none", got)
	}
	if rel := r.get(1); rel.Outcome != api.OutcomeRolledBack || rel.RestoredTo != 0 {
		t.Errorf("release 1: outcome %s, restored to %d; want rolled back to nothing", rel.Outcome, rel.RestoredTo)
	}
	if !r.eng.HasVolume("shop_dbdata") {
		t.Error("the undo removed db's volume")
	}
}

// desired is shop's desired state with images (service -> ref) over the
// compose file's.
func (r *release) desired(images map[string]string) *compose.Desired {
	r.t.Helper()
	p, err := compose.Load(r.t.Context(), loadOptions("shop", r.cfg.Projects["shop"], images))
	if err != nil {
		r.t.Fatal(err)
	}
	pins := map[string]compose.Pin{}
	for name, s := range p.Services {
		_, digest, _ := strings.Cut(s.Image, "@")
		pins[name] = compose.Pin{Ref: s.Image, Pinned: s.Image, Digest: digest}
	}
	d, err := compose.NewDesired(p, pins)
	if err != nil {
		r.t.Fatal(err)
	}
	return d
}

// TestMonitorWindowDeathRollsBack: web's new container passes its gate (an
// exec probe) and dies 50ms into a 5s monitor window. The release fails
// at once, not at the end of the window, and release 1 serves again.
func TestMonitorWindowDeathRollsBack(t *testing.T) {
	r := newRelease(t, shopCompose)
	r.mustDeploy(nil, api.ExitOK)
	v1 := r.running()
	// Release 2's file: web gated by an exec probe, watched for 5s.
	long := strings.Replace(shopCompose, `    depends_on: [db]
    deploy:
      update_config: {monitor: 20ms}`, `    depends_on: [db]
    x-berth:
      health: {exec: ["true"], interval: 20ms}
    deploy:
      update_config: {monitor: 5s}`, 1)
	long = strings.NewReplacer("DBV1", dbV1, "WEBV1", webV1).Replace(long)
	if err := os.WriteFile(r.cfg.Projects["shop"].ComposeFile, []byte(long), 0o600); err != nil {
		t.Fatal(err)
	}

	var killed atomic.Bool
	var dieAt atomic.Int64
	var once sync.Once
	start := time.Now()
	code, l := r.deploy(r.svc, api.DeployRequest{Images: map[string]string{"web": webV2}}, func(e api.Event) {
		if !strings.HasPrefix(e.Message, "monitoring ") {
			return
		}
		// Release 2's window only, not the rollback's.
		once.Do(func() {
			id := r.eng.IDs()["shop-web-1"]
			time.AfterFunc(50*time.Millisecond, func() {
				dieAt.Store(time.Now().UnixNano())
				r.eng.Exit(id, 139)
				r.eng.SendContainer(id, events.ActionDie, map[string]string{"exitCode": "139"})
				killed.Store(true)
			})
		})
	})
	end := time.Now()
	took := end.Sub(start)
	if code != api.ExitRolledBack || !killed.Load() {
		t.Fatalf("exit code %d (killed in the window: %v), want 1:\n%s", code, killed.Load(), l)
	}
	if res := l.result(); !strings.Contains(res, "monitor window") || !strings.Contains(res, "exit code 139") {
		t.Errorf("result %q: want the monitor window's failure and the exit code", res)
	}
	wantMap(t, "after the rollback", r.running(), v1)
	if rel := r.get(2); rel.Outcome != api.OutcomeRolledBack || !strings.Contains(rel.Error, "monitor window") {
		t.Errorf("release 2: %s, %q", rel.Outcome, rel.Error)
	}
	// Seen at once: by the die event, not by the next inspect (every
	// second) nor at the end of the window.
	seen := time.Duration(0)
	for _, e := range l.evs {
		if strings.HasPrefix(e.Message, "release 2 failed: monitor window") {
			seen = e.Time.Sub(time.Unix(0, dieAt.Load()))
		}
	}
	if seen <= 0 || seen > 500*time.Millisecond {
		t.Errorf("the failure was said %v after the death, want at once", seen)
	}
	t.Logf("release took %v; the failure was seen %v after the death", took.Round(time.Millisecond), seen.Round(time.Millisecond))
}

// TestStopEndedBySIGKILLIsRecorded: db ignores its stop signal; its grace
// period is 0s, so the engine kills it when release 2 replaces it. The
// release succeeds, and its record names the kill.
func TestStopEndedBySIGKILLIsRecorded(t *testing.T) {
	r := newRelease(t, shopCompose)
	r.mustDeploy(nil, api.ExitOK)
	r.eng.SetStubborn("db")
	r.mustDeploy(map[string]string{"db": dbV2}, api.ExitOK)
	rel := r.get(2)
	if len(rel.KilledOnStop) != 1 {
		t.Fatalf("killed on stop: %+v, want db's container", rel.KilledOnStop)
	}
	k := rel.KilledOnStop[0]
	if k.Service != "db" || k.Signal != "SIGTERM" || k.During != api.StopDuringRollout || k.GracePeriod != 0 {
		t.Errorf("killed on stop: %+v, want db, SIGTERM, during the rollout, grace 0", k)
	}
	wantMap(t, "after release 2", r.running(), map[string]string{"shop-db-1": dbV2 + " #2", "shop-web-1": webV1 + " #1"})
}

// freezing is the engine of an agentd that stops at its nth change
// (create, start, stop, remove, rename, connect): that call never returns,
// as if agentd had been killed there. Before arm, it is the engine.
type freezing struct {
	*fakeengine.Engine
	at      atomic.Int32 // the change that freezes; 0: none
	changes atomic.Int32
	frozen  chan struct{}
}

func (f *freezing) arm(n int) {
	f.changes.Store(0)
	f.at.Store(int32(n))
}

// change counts a change and, at the armed one, freezes for good.
func (f *freezing) change() {
	at := f.at.Load()
	if at == 0 {
		return
	}
	if n := f.changes.Add(1); n >= at {
		if n == at {
			close(f.frozen)
		}
		select {} // a dead agentd makes no more calls
	}
}

func (f *freezing) ContainerCreate(ctx context.Context, cfg *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig, p *ocispec.Platform, name string) (container.CreateResponse, error) {
	f.change()
	return f.Engine.ContainerCreate(ctx, cfg, hc, nc, p, name)
}

func (f *freezing) ContainerStart(ctx context.Context, id string, o container.StartOptions) error {
	f.change()
	return f.Engine.ContainerStart(ctx, id, o)
}

func (f *freezing) ContainerStop(ctx context.Context, id string, o container.StopOptions) error {
	f.change()
	return f.Engine.ContainerStop(ctx, id, o)
}

func (f *freezing) ContainerRemove(ctx context.Context, id string, o container.RemoveOptions) error {
	f.change()
	return f.Engine.ContainerRemove(ctx, id, o)
}

func (f *freezing) ContainerRename(ctx context.Context, id, name string) error {
	f.change()
	return f.Engine.ContainerRename(ctx, id, name)
}

func (f *freezing) NetworkConnect(ctx context.Context, net, id string, s *network.EndpointSettings) error {
	f.change()
	return f.Engine.NetworkConnect(ctx, net, id, s)
}

// TestRecoverAfterCrashAtEveryChange: agentd dies at each change of
// release 2 in turn (db replaced stop-first, web start-first): the journal
// says release 2 is in progress. A new agentd's Recover brings shop back
// to release 1, whatever the engine was left with (a container renamed
// aside, a new one created and not started, one started and not gated,
// the old one stopped), marks release 2 interrupted and rolled back, and
// a deploy after it works.
func TestRecoverAfterCrashAtEveryChange(t *testing.T) {
	start := time.Now()
	for n := 1; ; n++ {
		if n > 50 {
			t.Fatal("release 2 still froze after 50 changes")
		}
		r := newRelease(t, shopCompose)
		dead := &freezing{Engine: r.eng, frozen: make(chan struct{})}
		first := r.service(dead)
		if code, l := r.deploy(first, api.DeployRequest{}, nil); code != api.ExitOK {
			t.Fatalf("release 1: exit code %d:\n%s", code, l)
		}
		v1 := r.running()
		dead.arm(n)
		done := make(chan int, 1)
		go func() {
			code, _ := r.deploy(first, api.DeployRequest{Images: map[string]string{"db": dbV2, "web": webV2}}, nil)
			done <- code
		}()
		select {
		case code := <-done:
			// Release 2 made fewer than n changes: every point was tried.
			if code != api.ExitOK {
				t.Fatalf("release 2 without a crash: exit code %d", code)
			}
			if n < 6 {
				t.Fatalf("release 2 made only %d changes: the test tries too few crash points", n-1)
			}
			t.Logf("crashed at each of %d changes; took %v", n-1, time.Since(start).Round(time.Millisecond))
			return
		case <-dead.frozen:
		case <-time.After(10 * time.Second):
			t.Fatalf("crash at change %d: release 2 neither froze nor ended", n)
		}
		t.Run(fmt.Sprintf("change%d", n), func(t *testing.T) {
			// Before the commit, release 2 is in progress in the journal and
			// recovery puts release 1 back; after it (agentd died removing
			// what release 2 retired), release 2 stays and recovery
			// finishes the cleanup.
			committed := false
			switch rel := r.get(2); rel.Outcome {
			case api.OutcomeInProgress:
			case api.OutcomeSucceeded:
				committed = true
			default:
				t.Fatalf("release 2 is %s in the journal, want in progress or succeeded", rel.Outcome)
			}
			mid := r.running()
			again := r.service(r.eng)
			if err := again.Recover(t.Context()); err != nil {
				t.Fatalf("recover (engine left with %v): %v", mid, err)
			}
			want, live := v1, 1
			if committed {
				want = map[string]string{"shop-db-1": dbV2 + " #2", "shop-web-1": webV2 + " #2"}
				live = 2
			}
			wantMap(t, fmt.Sprintf("after recovery (engine was left with %v)", mid), r.running(), want)
			if names := r.all(); !slices.Equal(names, []string{"shop-db-1", "shop-web-1"}) {
				t.Errorf("containers left after recovery: %v", names)
			}
			rel := r.get(2)
			switch {
			case committed && (rel.Outcome != api.OutcomeSucceeded || rel.Interrupted):
				t.Errorf("release 2: outcome %s, interrupted %v; want it live as committed", rel.Outcome, rel.Interrupted)
			case !committed && (rel.Outcome != api.OutcomeRolledBack || !rel.Interrupted || rel.RestoredTo != 1):
				t.Errorf("release 2: outcome %s, interrupted %v, restored to %d; want rolled back to 1, interrupted", rel.Outcome, rel.Interrupted, rel.RestoredTo)
			}
			if got := r.live(); got != live {
				t.Errorf("live release %d, want %d", got, live)
			}
			// The recovered agentd deploys.
			if code, l := r.deploy(again, api.DeployRequest{Images: map[string]string{"web": webV3}}, nil); code != api.ExitOK {
				t.Errorf("deploy after recovery: exit code %d:\n%s", code, l)
			}
		})
	}
}

// hold is an engine whose first container start waits until released: a
// deploy caught in its rollout.
type hold struct {
	*fakeengine.Engine
	started atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (h *hold) ContainerStart(ctx context.Context, id string, o container.StartOptions) error {
	if h.started.CompareAndSwap(false, true) {
		close(h.reached)
		<-h.release
	}
	return h.Engine.ContainerStart(ctx, id, o)
}

// TestSecondDeployWhileOneRuns: while a deploy runs, another is refused
// at once with exit code 3, naming who runs what; one that may wait
// (--wait) waits, says so, and runs when the first is done.
func TestSecondDeployWhileOneRuns(t *testing.T) {
	r := newRelease(t, shopCompose)
	h := &hold{Engine: r.eng, reached: make(chan struct{}), release: make(chan struct{})}
	svc := r.service(h)
	firstDone := make(chan int, 1)
	go func() {
		code, _ := r.deploy(svc, api.DeployRequest{Message: "first"}, nil)
		firstDone <- code
	}()
	select {
	case <-h.reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the first deploy never started a container")
	}

	start := time.Now()
	code, l := r.deploy(svc, api.DeployRequest{Images: map[string]string{"web": webV2}}, nil)
	if code != api.ExitLocked {
		t.Fatalf("second deploy: exit code %d, want 3:\n%s", code, l)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the refusal took %v, want at once", took)
	}
	if res := l.result(); !strings.Contains(res, "project shop is locked: local:alice is running deploy since") || !strings.Contains(res, `("first")`) {
		t.Errorf("refusal %q: want who runs what, since when, and its message", res)
	}
	if running, held := svc.LockState("shop"); !running || held {
		t.Errorf("lock state: running %v, held %v; want a deploy running and no hold", running, held)
	}

	// One that may wait: it says it waits, and runs after the first.
	waiting := make(chan struct{})
	var once sync.Once
	secondDone := make(chan int, 1)
	go func() {
		code, l := r.deploy(svc, api.DeployRequest{Images: map[string]string{"web": webV2}, Wait: 10 * time.Second}, func(e api.Event) {
			if strings.HasPrefix(e.Message, "waiting up to 10s for the lock") {
				once.Do(func() { close(waiting) })
			}
		})
		if code != api.ExitOK {
			t.Errorf("waiting deploy: exit code %d:\n%s", code, l)
		}
		secondDone <- code
	}()
	select {
	case <-waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("the second deploy did not say it waits")
	}
	select {
	case <-secondDone:
		t.Fatal("the second deploy ran while the first held the lock")
	case <-time.After(100 * time.Millisecond):
	}
	close(h.release)
	if code := <-firstDone; code != api.ExitOK {
		t.Errorf("first deploy: exit code %d", code)
	}
	select {
	case <-secondDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting deploy did not run after the first")
	}
	if got := r.live(); got != 2 {
		t.Errorf("live release %d, want 2 (the waiting deploy's)", got)
	}
}

// TestHeldLockRefusesWithWhoAndWhy: an operator's lock refuses deploys and
// rollbacks with exit code 3, saying who holds it, since when and why,
// and changes nothing; a deploy that waits runs once it is lifted.
func TestHeldLockRefusesWithWhoAndWhy(t *testing.T) {
	r := newRelease(t, shopCompose)
	r.mustDeploy(nil, api.ExitOK)
	ops := auth.Principal{Identity: "ops", Method: "ssh", Detail: "SHA256:x"}
	r.cfg.Identities = []config.Identity{{Name: "ops", LocalUsers: []string{"deploy"}, Projects: []string{"*"}, Verbs: []string{"*"}}}
	svc := r.service(r.eng)
	if _, err := svc.Lock(t.Context(), ops, api.LockRequest{Project: "shop", Message: "migrating the database by hand"}); err != nil {
		t.Fatal(err)
	}
	r.eng.TakeCalls()

	code, l := r.deploy(svc, api.DeployRequest{Images: map[string]string{"web": webV2}}, nil)
	want := `project shop is locked: ops (ssh SHA256:x) locked it since `
	if code != api.ExitLocked || !strings.Contains(l.result(), want) || !strings.Contains(l.result(), `("migrating the database by hand")`) {
		t.Errorf("deploy under the lock: exit code %d, %q; want 3 and who, since when, why", code, l.result())
	}
	rl := &eventLog{}
	if code, err := svc.Rollback(t.Context(), alice, api.RollbackRequest{Project: "shop", To: 1}, rl.emit); err != nil || code != api.ExitLocked {
		t.Errorf("rollback under the lock: exit code %d, %v; want 3", code, err)
	}
	if calls := r.eng.TakeCalls(); len(calls) != 0 {
		t.Errorf("the engine was changed under the lock: %v", calls)
	}
	if _, held := svc.LockState("shop"); !held {
		t.Error("lock state: not held")
	}

	// A deploy that waits runs when the hold is lifted.
	done := make(chan int, 1)
	waiting := make(chan struct{})
	var once sync.Once
	go func() {
		code, _ := r.deploy(svc, api.DeployRequest{Images: map[string]string{"web": webV2}, Wait: 10 * time.Second}, func(e api.Event) {
			if strings.HasPrefix(e.Message, "waiting up to") {
				once.Do(func() { close(waiting) })
			}
		})
		done <- code
	}()
	<-waiting
	select {
	case code := <-done:
		t.Fatalf("the waiting deploy ended (exit code %d) while the lock was held", code)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := svc.Lock(t.Context(), ops, api.LockRequest{Project: "shop", Unlock: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != api.ExitOK {
			t.Errorf("deploy after the unlock: exit code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting deploy did not run after the unlock")
	}
	wantMap(t, "after the unlock", r.running(), map[string]string{"shop-db-1": dbV1 + " #1", "shop-web-1": webV2 + " #2"})
}
