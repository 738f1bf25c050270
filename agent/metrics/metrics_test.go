package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/berth-deploy/berth/agent/api"
)

// fakeSource is a Source whose state the test sets.
type fakeSource struct {
	mu      sync.Mutex
	live    map[string]int
	running map[string]bool
	held    map[string]bool
}

func newFakeSource() *fakeSource {
	return &fakeSource{live: map[string]int{}, running: map[string]bool{}, held: map[string]bool{}}
}

func (f *fakeSource) Projects() []string { return []string{"blog", "shop"} }

func (f *fakeSource) LockState(p string) (running, held bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running[p], f.held[p]
}

func (f *fakeSource) Live(p string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live[p]
}

func (f *fakeSource) set(fn func(*fakeSource)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// scrape fetches the handler's exposition text and parses it.
func scrape(t *testing.T, h http.Handler) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, body)
	}
	return mfs, string(body)
}

// find returns the metric of family name whose labels are exactly labels.
func find(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		return m
	}
	return nil
}

func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	m := find(mfs, name, labels)
	if m == nil {
		t.Fatalf("no series %s%v", name, labels)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s%v is neither a counter nor a gauge", name, labels)
	return 0
}

func histogram(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Histogram {
	t.Helper()
	m := find(mfs, name, labels)
	if m == nil || m.Histogram == nil {
		t.Fatalf("no histogram %s%v", name, labels)
	}
	return m.Histogram
}

// bucket returns the cumulative count of the bucket with upper bound le.
func bucket(t *testing.T, h *dto.Histogram, le float64) uint64 {
	t.Helper()
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	t.Fatalf("no bucket le=%g", le)
	return 0
}

func TestScrapeAfterRuns(t *testing.T) {
	src := newFakeSource()
	src.set(func(f *fakeSource) {
		f.live["shop"] = 7
		f.running["shop"] = true
		f.held["blog"] = true
	})
	m := New("1.2.3", src)

	t1 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Hour)
	m.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: api.RunSucceeded,
		Duration: 42 * time.Second, Release: api.Release{Number: 7}, Live: 7, Time: t1})
	m.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: api.RunRolledBack, ExitCode: api.ExitRolledBack,
		Duration: 90 * time.Second, Release: api.Release{Number: 8, RestoredTo: 7}, Live: 7, Time: t1.Add(time.Minute)})
	m.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: api.RunRefused, ExitCode: api.ExitLocked,
		Duration: 5 * time.Millisecond, Live: 7, Time: t1.Add(2 * time.Minute)})
	m.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindRollback, Outcome: api.RunSucceeded,
		Duration: 12 * time.Second, Release: api.Release{Number: 9}, Live: 9, Time: t2})

	m.RunFinished(api.RunEvent{Project: "no-such-project", Kind: api.KindDeploy, Outcome: api.RunRefused, ExitCode: api.ExitBadRequest})

	mfs, text := scrape(t, m.Handler())

	runs := func(kind, outcome string) float64 {
		return value(t, mfs, "berth_runs_total", map[string]string{"project": "shop", "kind": kind, "outcome": outcome})
	}
	for _, c := range []struct {
		kind, outcome string
		want          float64
	}{
		{"deploy", "succeeded", 1},
		{"deploy", "rolled-back", 1},
		{"deploy", "refused", 1},
		{"deploy", "failed", 0},
		{"deploy", "noop", 0},
		{"rollback", "succeeded", 1},
		{"rollback", "refused", 0},
	} {
		if got := runs(c.kind, c.outcome); got != c.want {
			t.Errorf("berth_runs_total{shop,%s,%s} = %g, want %g", c.kind, c.outcome, got, c.want)
		}
	}
	// A project with no runs yet has its counters at zero.
	if got := value(t, mfs, "berth_runs_total", map[string]string{"project": "blog", "kind": "deploy", "outcome": "succeeded"}); got != 0 {
		t.Errorf("blog's succeeded deploys = %g, want 0", got)
	}
	// A project that is not configured does not make a series of its own.
	if got := value(t, mfs, "berth_runs_total", map[string]string{"project": "", "kind": "deploy", "outcome": "refused"}); got != 1 {
		t.Errorf("refusals of unknown projects = %g, want 1", got)
	}
	if strings.Contains(text, "no-such-project") {
		t.Error("an unknown project has a series")
	}
	if !strings.Contains(text, `berth_runs_total{kind="deploy",outcome="succeeded",project="shop"} 1`) {
		t.Errorf("exposition lacks the succeeded deploy line:\n%s", text)
	}

	h := histogram(t, mfs, "berth_deploy_duration_seconds", map[string]string{"project": "shop", "outcome": "succeeded"})
	if h.GetSampleCount() != 1 || h.GetSampleSum() != 42 {
		t.Errorf("succeeded deploys: count %d sum %g, want 1 and 42", h.GetSampleCount(), h.GetSampleSum())
	}
	if bucket(t, h, 30) != 0 || bucket(t, h, 60) != 1 || bucket(t, h, 1800) != 1 {
		t.Errorf("42s is not in the buckets it should be: %v", h.GetBucket())
	}
	// The parser adds the +Inf bucket; the last finite one is half an hour.
	if b := h.GetBucket(); len(b) < 2 || b[0].GetUpperBound() != 1 || b[len(b)-2].GetUpperBound() != 1800 {
		t.Errorf("buckets %v, want 1s to 1800s", b)
	}
	h = histogram(t, mfs, "berth_deploy_duration_seconds", map[string]string{"project": "shop", "outcome": "rolled-back"})
	if h.GetSampleCount() != 1 || h.GetSampleSum() != 90 {
		t.Errorf("rolled-back deploys: count %d sum %g, want 1 and 90", h.GetSampleCount(), h.GetSampleSum())
	}
	if find(mfs, "berth_deploy_duration_seconds", map[string]string{"project": "shop", "outcome": "refused"}) != nil {
		t.Error("a refused deploy was observed in the duration histogram")
	}
	h = histogram(t, mfs, "berth_rollback_duration_seconds", map[string]string{"project": "shop", "outcome": "succeeded"})
	if h.GetSampleCount() != 1 || h.GetSampleSum() != 12 {
		t.Errorf("succeeded rollbacks: count %d sum %g, want 1 and 12", h.GetSampleCount(), h.GetSampleSum())
	}
	if n := len(mfs["berth_deploy_duration_seconds"].GetMetric()); n != 2 {
		t.Errorf("%d deploy duration series, want 2", n)
	}

	if got := value(t, mfs, "berth_last_success_timestamp_seconds", map[string]string{"project": "shop"}); got != float64(t2.Unix()) {
		t.Errorf("last success = %g, want %d", got, t2.Unix())
	}
	if find(mfs, "berth_last_success_timestamp_seconds", map[string]string{"project": "blog"}) != nil {
		t.Error("blog has a last success and never ran")
	}

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"berth_live_release", map[string]string{"project": "shop"}, 7},
		{"berth_live_release", map[string]string{"project": "blog"}, 0},
		{"berth_lock", map[string]string{"project": "shop", "kind": "deploy"}, 1},
		{"berth_lock", map[string]string{"project": "shop", "kind": "hold"}, 0},
		{"berth_lock", map[string]string{"project": "blog", "kind": "deploy"}, 0},
		{"berth_lock", map[string]string{"project": "blog", "kind": "hold"}, 1},
		{"berth_build_info", map[string]string{"version": "1.2.3", "goversion": runtime.Version()}, 1},
	} {
		if got := value(t, mfs, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.name, c.labels, got, c.want)
		}
	}
	for name, typ := range map[string]dto.MetricType{
		"berth_runs_total":                     dto.MetricType_COUNTER,
		"berth_deploy_duration_seconds":        dto.MetricType_HISTOGRAM,
		"berth_rollback_duration_seconds":      dto.MetricType_HISTOGRAM,
		"berth_live_release":                   dto.MetricType_GAUGE,
		"berth_lock":                           dto.MetricType_GAUGE,
		"berth_last_success_timestamp_seconds": dto.MetricType_GAUGE,
		"berth_build_info":                     dto.MetricType_GAUGE,
	} {
		if got := mfs[name].GetType(); got != typ {
			t.Errorf("%s is a %v, want a %v", name, got, typ)
		}
	}
	// The Go and process collectors share the registry.
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total"} {
		if mfs[name] == nil {
			t.Errorf("no %s", name)
		}
	}
}

func TestStateIsReadAtScrapeTime(t *testing.T) {
	src := newFakeSource()
	src.set(func(f *fakeSource) { f.live["shop"] = 7 })
	m := New("dev", src)
	mfs, _ := scrape(t, m.Handler())
	if got := value(t, mfs, "berth_live_release", map[string]string{"project": "shop"}); got != 7 {
		t.Fatalf("live = %g, want 7", got)
	}
	src.set(func(f *fakeSource) {
		f.live["shop"] = 8
		f.held["shop"] = true
	})
	mfs, _ = scrape(t, m.Handler())
	if got := value(t, mfs, "berth_live_release", map[string]string{"project": "shop"}); got != 8 {
		t.Errorf("live = %g after the change, want 8", got)
	}
	if got := value(t, mfs, "berth_lock", map[string]string{"project": "shop", "kind": "hold"}); got != 1 {
		t.Errorf("hold = %g after the change, want 1", got)
	}
}

// Each Metrics has its own registry: two never collide nor share counts.
func TestOwnRegistry(t *testing.T) {
	a, b := New("a", newFakeSource()), New("b", nil)
	a.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: api.RunFailed, Duration: time.Second})
	mfs, _ := scrape(t, b.Handler())
	if mfs["berth_runs_total"] != nil {
		t.Errorf("b counts a's runs: %v", mfs["berth_runs_total"])
	}
	if mfs["berth_live_release"] != nil || mfs["berth_lock"] != nil {
		t.Error("a Metrics without a source reports project state")
	}
	if got := value(t, mfs, "berth_build_info", map[string]string{"version": "b", "goversion": runtime.Version()}); got != 1 {
		t.Errorf("b's build info = %g", got)
	}
	mfs, _ = scrape(t, a.Handler())
	if got := value(t, mfs, "berth_runs_total", map[string]string{"project": "shop", "kind": "deploy", "outcome": "failed"}); got != 1 {
		t.Errorf("a's failed deploys = %g, want 1", got)
	}
}

// Runs may end while a scrape is under way (run with -race).
func TestConcurrentRunsAndScrapes(t *testing.T) {
	src := newFakeSource()
	m := New("dev", src)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 50 {
				outcome := []string{api.RunSucceeded, api.RunRefused}[i%2]
				m.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: outcome, Duration: time.Second, Time: time.Now()})
			}
		})
	}
	wg.Go(func() {
		for range 5 {
			src.set(func(f *fakeSource) { f.live["shop"]++ })
			rec := httptest.NewRecorder()
			m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
			if rec.Code != http.StatusOK {
				t.Errorf("scrape: %d", rec.Code)
			}
		}
	})
	wg.Wait()
	mfs, _ := scrape(t, m.Handler())
	for _, o := range []string{api.RunSucceeded, api.RunRefused} {
		if got := value(t, mfs, "berth_runs_total", map[string]string{"project": "shop", "kind": "deploy", "outcome": o}); got != 200 {
			t.Errorf("%s runs = %g, want 200", o, got)
		}
	}
}

// TestStopKilled: the containers a run's release records as killed at the
// end of their grace period are counted by project and service, with the
// grace period of the last; the counters of a release's other services
// start at zero.
func TestStopKilled(t *testing.T) {
	m := New("1.2.3", newFakeSource())
	svcs := map[string]api.ServiceImage{"web": {}, "worker": {}}
	m.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: api.RunSucceeded,
		Release: api.Release{Number: 1, Services: svcs}})
	mfs, _ := scrape(t, m.Handler())
	if got := value(t, mfs, "berth_container_stop_killed_total", map[string]string{"project": "shop", "service": "worker"}); got != 0 {
		t.Errorf("before any kill: %g, want 0", got)
	}

	m.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindRollback, Outcome: api.RunRolledBack, ExitCode: api.ExitRolledBack,
		Release: api.Release{Number: 2, Services: svcs, KilledOnStop: []api.StopKilled{
			{Service: "worker", Container: "shop-worker-1", Signal: "SIGTERM", GracePeriod: 40, StoppedAfter: 44.1, During: api.StopDuringRollout},
			{Service: "worker", Container: "shop-worker-2", Signal: "SIGTERM", GracePeriod: 40, StoppedAfter: 44.3, During: api.StopDuringRollback},
		}}})
	m.RunFinished(api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: api.RunSucceeded,
		Release: api.Release{Number: 3, Services: svcs, KilledOnStop: []api.StopKilled{
			{Service: "worker", Container: "shop-worker-1", Signal: "SIGTERM", GracePeriod: 60, StoppedAfter: 60.2, During: api.StopDuringRollout},
		}}})
	mfs, _ = scrape(t, m.Handler())
	worker := map[string]string{"project": "shop", "service": "worker"}
	if got := value(t, mfs, "berth_container_stop_killed_total", worker); got != 3 {
		t.Errorf("worker's kills = %g, want 3", got)
	}
	if got := value(t, mfs, "berth_container_stop_killed_grace_seconds", worker); got != 60 {
		t.Errorf("worker's last grace period = %g, want 60", got)
	}
	if got := value(t, mfs, "berth_container_stop_killed_total", map[string]string{"project": "shop", "service": "web"}); got != 0 {
		t.Errorf("web's kills = %g, want 0", got)
	}
}
