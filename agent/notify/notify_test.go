package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
)

// wait bounds every wait of these tests: reached, a test has failed.
const wait = 5 * time.Second

// logSink is a logger's output that a test can wait on.
type logSink struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced at each write
}

func newLog() (*slog.Logger, *logSink) {
	s := &logSink{changed: make(chan struct{})}
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug})), s
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.changed)
	s.changed = make(chan struct{})
	return s.buf.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitFor waits until the log says substr.
func (s *logSink) waitFor(t *testing.T, substr string) {
	t.Helper()
	timeout := time.After(wait)
	for {
		s.mu.Lock()
		found, changed := strings.Contains(s.buf.String(), substr), s.changed
		s.mu.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("the log never said %q:\n%s", substr, s)
		}
	}
}

// request is what a receiver got.
type request struct {
	method, path, contentType, userAgent string
	body                                 []byte
}

func record(r *http.Request) request {
	body, _ := io.ReadAll(r.Body)
	return request{r.Method, r.URL.Path, r.Header.Get("Content-Type"), r.Header.Get("User-Agent"), body}
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("no %s", what)
	}
	var zero T
	return zero
}

func noBackoff(int) time.Duration { return time.Millisecond }

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// The events of the format test.
var (
	secretState = json.RawMessage(`{"env":{"POSTGRES_PASSWORD":"hunter2"}}`)
	shopSuccess = api.RunEvent{
		Project: "shop", Kind: api.KindDeploy, Outcome: api.RunSucceeded, ExitCode: api.ExitOK,
		Duration: 42 * time.Second, Identity: "ci-shop", Message: "release 7 is live",
		Release: api.Release{Project: "shop", Number: 7, Previous: 6, Identity: "ci-shop", Message: "v1.4.2", Outcome: api.OutcomeSucceeded,
			Kind: api.KindDeploy, Compose: "environment:\n  POSTGRES_PASSWORD: hunter2\n", Plan: "recreate web", State: secretState,
			Services: map[string]api.ServiceImage{
				"web":    {Ref: "registry.example/shop/web:v1.4.2", Pinned: "registry.example/shop/web@sha256:aaa", Digest: "sha256:aaa"},
				"worker": {Ref: "registry.example/shop/worker:v1.4.2"},
			}},
		Live: 7, Time: t0,
	}
	shopNoop    = api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: api.RunNoop, Identity: "ci-shop", Message: "nothing to change", Live: 7, Time: t0}
	shopRefused = api.RunEvent{Project: "shop", Kind: api.KindDeploy, Outcome: api.RunRefused, ExitCode: api.ExitLocked, Identity: "ci-shop", Message: "shop is locked", Live: 7, Time: t0}
	shopRolled  = api.RunEvent{
		Project: "shop", Kind: api.KindDeploy, Outcome: api.RunRolledBack, ExitCode: api.ExitRolledBack,
		Duration: 90 * time.Second, Identity: "ci-shop", Message: "web: health check failed; release 7 restored",
		Release: api.Release{Number: 8, Previous: 7, Outcome: api.OutcomeRolledBack, Kind: api.KindDeploy, RestoredTo: 7,
			Error: "web: health check failed\n  <timeout> & gave up", Compose: "POSTGRES_PASSWORD: hunter2", State: secretState,
			Services: map[string]api.ServiceImage{"web": {Ref: "registry.example/shop/web:v1.5.0", Pinned: "registry.example/shop/web@sha256:bbb"}}},
		Live: 7, Time: t0.Add(time.Minute),
	}
	shopFailed = api.RunEvent{
		Project: "shop", Kind: api.KindRollback, Outcome: api.RunFailed, ExitCode: api.ExitBroken,
		Duration: 2 * time.Minute, Identity: "alice", Message: "start web: port is already allocated",
		Release: api.Release{Number: 9, Outcome: api.OutcomeFailed, Kind: api.KindRollback, RollbackOf: 5,
			Error: "start web: port is already allocated", Compose: "POSTGRES_PASSWORD: hunter2", State: secretState},
		Time: t0.Add(2 * time.Minute),
	}
	shopUnhealthy = api.UnhealthyEvent{Project: "shop", Release: 7, Service: "web", Container: "shop-web-1", State: "running",
		Health: "unhealthy", Restarts: 3, Detail: "health check: curl: (7) Failed to connect", Time: t0.Add(time.Hour)}
	blogSuccess = api.RunEvent{
		Project: "blog", Kind: api.KindDeploy, Outcome: api.RunSucceeded, Duration: 500 * time.Millisecond,
		Identity: "ci-blog", Message: "release 3 is live", Release: api.Release{Number: 3}, Live: 3, Time: t0.Add(3 * time.Minute),
	}
	blogUnhealthy = api.UnhealthyEvent{Project: "blog", Service: "app", Container: "blog-app-1", State: "restarting", Time: t0.Add(2 * time.Hour)}
)

func TestFormatsAndFilters(t *testing.T) {
	got := make(chan request, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- record(r)
	}))
	defer srv.Close()

	log, sink := newLog()
	n := newNotifier([]config.Notification{
		{URL: srv.URL + "/json", Format: "json", Timeout: time.Second},
		{URL: srv.URL + "/slack", Format: "slack", Timeout: time.Second},
		{URL: srv.URL + "/json-shop-bad", Format: "json", Events: []string{"failure", "unhealthy"}, Projects: []string{"shop"}, Timeout: time.Second},
		{URL: srv.URL + "/slack-success", Format: "slack", Events: []string{"success"}, Timeout: time.Second},
		{URL: srv.URL + "/slack-nothing", Format: "slack", Projects: []string{"wiki"}, Timeout: time.Second},
	}, srv.Client(), log, noBackoff)
	n.RunFinished(shopSuccess)
	n.RunFinished(shopNoop)
	n.RunFinished(shopRefused)
	n.RunFinished(shopRolled)
	n.RunFinished(shopFailed)
	n.Unhealthy(shopUnhealthy)
	n.RunFinished(blogSuccess)
	n.Unhealthy(blogUnhealthy)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatalf("Close: %v\n%s", err, sink)
	}
	close(got)

	byPath := map[string][]request{}
	for r := range got {
		if r.method != http.MethodPost || r.contentType != "application/json" || r.userAgent != "berth" {
			t.Errorf("%s %s: Content-Type %q, User-Agent %q", r.method, r.path, r.contentType, r.userAgent)
		}
		if bytes.Contains(r.body, []byte("hunter2")) || bytes.Contains(r.body, []byte("recreate web")) {
			t.Errorf("%s got the release's compose file, plan or state: %s", r.path, r.body)
		}
		byPath[r.path] = append(byPath[r.path], r)
	}

	successJSON := `{"event":"success","project":"shop","kind":"deploy","release":7,"outcome":"succeeded","exit_code":0,
		"identity":"ci-shop","message":"release 7 is live","release_message":"v1.4.2",
		"images":{"web":"registry.example/shop/web@sha256:aaa","worker":"registry.example/shop/worker:v1.4.2"},
		"duration_seconds":42,"live":7,"time":"2025-03-01T12:00:00Z"}`
	rollbackJSON := `{"event":"rollback","project":"shop","kind":"deploy","release":8,"outcome":"rolled-back","exit_code":1,
		"identity":"ci-shop","message":"web: health check failed; release 7 restored","error":"web: health check failed\n  <timeout> & gave up",
		"restored_to":7,"images":{"web":"registry.example/shop/web@sha256:bbb"},"duration_seconds":90,"live":7,"time":"2025-03-01T12:01:00Z"}`
	failureJSON := `{"event":"failure","project":"shop","kind":"rollback","release":9,"outcome":"failed","exit_code":5,
		"identity":"alice","message":"start web: port is already allocated","error":"start web: port is already allocated",
		"rollback_of":5,"images":{},"duration_seconds":120,"live":0,"time":"2025-03-01T12:02:00Z"}`
	unhealthyJSON := `{"event":"unhealthy","project":"shop","release":7,"service":"web","container":"shop-web-1","state":"running",
		"health":"unhealthy","restarts":3,"detail":"health check: curl: (7) Failed to connect","time":"2025-03-01T13:00:00Z"}`
	blogSuccessJSON := `{"event":"success","project":"blog","kind":"deploy","release":3,"outcome":"succeeded","exit_code":0,
		"identity":"ci-blog","message":"release 3 is live","images":{},"duration_seconds":0.5,"live":3,"time":"2025-03-01T12:03:00Z"}`
	blogUnhealthyJSON := `{"event":"unhealthy","project":"blog","release":0,"service":"app","container":"blog-app-1","state":"restarting",
		"health":"","restarts":0,"detail":"","time":"2025-03-01T14:00:00Z"}`

	slack := func(text string) string {
		b, _ := json.Marshal(map[string]string{"text": text})
		return string(b)
	}
	successSlack := slack(":white_check_mark: shop: release 7 is live (deploy by ci-shop, 42s) — v1.4.2")
	rollbackSlack := slack(":rewind: shop: release 8 failed and was rolled back to 7 (deploy by ci-shop, 1m30s): web: health check failed &lt;timeout&gt; &amp; gave up")
	failureSlack := slack(":rotating_light: shop: release 9 (rollback to 5) failed and was NOT restored (rollback by alice, 2m0s): start web: port is already allocated")
	unhealthySlack := slack(":warning: shop: shop-web-1 is unhealthy (service web, release 7, state running, health unhealthy, 3 restarts): health check: curl: (7) Failed to connect")
	blogSuccessSlack := slack(":white_check_mark: blog: release 3 is live (deploy by ci-blog, 500ms)")
	blogUnhealthySlack := slack(":warning: blog: blog-app-1 is unhealthy (service app, state restarting)")

	for path, want := range map[string][]string{
		"/json":          {successJSON, rollbackJSON, failureJSON, unhealthyJSON, blogSuccessJSON, blogUnhealthyJSON},
		"/slack":         {successSlack, rollbackSlack, failureSlack, unhealthySlack, blogSuccessSlack, blogUnhealthySlack},
		"/json-shop-bad": {failureJSON, unhealthyJSON},
		"/slack-success": {successSlack, blogSuccessSlack},
		"/slack-nothing": nil,
	} {
		reqs := byPath[path]
		if len(reqs) != len(want) {
			var bodies []string
			for _, r := range reqs {
				bodies = append(bodies, string(r.body))
			}
			t.Errorf("%s got %d notifications, want %d:\n%s", path, len(reqs), len(want), strings.Join(bodies, "\n"))
			continue
		}
		for i, r := range reqs { // each webhook gets its events in order
			var gotBody, wantBody any
			if err := json.Unmarshal(r.body, &gotBody); err != nil {
				t.Fatalf("%s: %v: %s", path, err, r.body)
			}
			if err := json.Unmarshal([]byte(want[i]), &wantBody); err != nil {
				t.Fatalf("want %d of %s: %v", i, path, err)
			}
			if !reflect.DeepEqual(gotBody, wantBody) {
				t.Errorf("%s #%d:\n got %s\nwant %s", path, i, r.body, want[i])
			}
		}
	}
}

func TestRetriesUntilSuccess(t *testing.T) {
	attempts := make(chan request, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts <- record(r)
		if len(attempts) < 3 { // the first two attempts fail
			http.Error(w, "try later", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()

	var mu sync.Mutex
	var waits []int
	log, sink := newLog()
	n := newNotifier([]config.Notification{{URL: srv.URL, Format: "json", Timeout: time.Second, Retries: 3}}, srv.Client(), log,
		func(retry int) time.Duration {
			mu.Lock()
			defer mu.Unlock()
			waits = append(waits, retry)
			return time.Millisecond
		})
	n.RunFinished(shopSuccess)
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(attempts)
	var bodies []string
	for r := range attempts {
		bodies = append(bodies, string(r.body))
	}
	if len(bodies) != 3 || bodies[0] != bodies[1] || bodies[1] != bodies[2] {
		t.Errorf("%d attempts, want 3 of the same body: %q", len(bodies), bodies)
	}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(waits, []int{0, 1}) {
		t.Errorf("backoffs before retries %v, want [0 1]", waits)
	}
	if s := sink.String(); strings.Contains(s, "notification failed") || !strings.Contains(s, "notification sent") {
		t.Errorf("log:\n%s", s)
	}
}

func TestGivesUpAfterRetries(t *testing.T) {
	attempts := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts <- struct{}{}
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	defer srv.Close()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // nothing listens there now

	log, sink := newLog()
	n := newNotifier([]config.Notification{
		{URL: srv.URL + "/services/T000/B000/SECRETTOKEN", Format: "slack", Timeout: time.Second, Retries: 2},
		{URL: gone.URL + "/hooks/OTHERSECRET", Format: "json", Timeout: time.Second},
	}, srv.Client(), log, noBackoff)
	n.Unhealthy(shopUnhealthy)
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(attempts) != 3 {
		t.Errorf("%d attempts, want 3 (one and two retries)", len(attempts))
	}
	s := sink.String()
	if !strings.Contains(s, `3 attempts: 500 Internal Server Error: \"boom\"`) {
		t.Errorf("the log does not say the delivery failed after 3 attempts:\n%s", s)
	}
	if !strings.Contains(s, "1 attempt: Post: dial tcp") {
		t.Errorf("the log does not say the connection failed:\n%s", s)
	}
	if strings.Contains(s, "SECRETTOKEN") || strings.Contains(s, "OTHERSECRET") {
		t.Errorf("the log has a webhook's secret path:\n%s", s)
	}
}

func TestBackoff(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := backoff(i); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i, got, w)
		}
	}
	if got := backoff(100); got != 30*time.Second {
		t.Errorf("backoff(100) = %v", got)
	}
}

// A webhook that hangs holds up neither RunFinished nor the other webhooks,
// and each of its attempts ends at its timeout.
func TestHangingWebhook(t *testing.T) {
	const timeout = 100 * time.Millisecond
	release := make(chan struct{})
	cut := make(chan time.Duration, 10)
	fast := make(chan request, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := record(r) // read the body, so the server watches the connection
		if r.URL.Path != "/hang" {
			fast <- req
			return
		}
		start := time.Now()
		select {
		case <-r.Context().Done(): // the client gave up
			cut <- time.Since(start)
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release) // before srv.Close, which waits for the handlers

	log, sink := newLog()
	n := newNotifier([]config.Notification{
		{URL: srv.URL + "/hang", Format: "json", Timeout: timeout, Retries: 1},
		{URL: srv.URL + "/fast", Format: "slack", Timeout: time.Second},
	}, srv.Client(), log, noBackoff)

	began := time.Now()
	n.RunFinished(shopRolled)
	if took := time.Since(began); took > 50*time.Millisecond {
		t.Errorf("RunFinished took %v with a hanging webhook", took)
	}
	recv(t, fast, "delivery to the other webhook")
	for i := range 2 {
		if d := recv(t, cut, "attempt cut at the timeout"); d > timeout+2*time.Second {
			t.Errorf("attempt %d lasted %v, timeout %v", i+1, d, timeout)
		}
	}
	sink.waitFor(t, "notification failed")
	if took := time.Since(began); took < 2*timeout {
		t.Errorf("two attempts ended in %v, before their timeouts", took)
	}
	if s := sink.String(); !strings.Contains(s, "2 attempts: Post: context deadline exceeded") {
		t.Errorf("the log does not say the attempts timed out:\n%s", s)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Error(err)
	}
}

// Past the queue's size, events are dropped and logged, and RunFinished
// still returns at once.
func TestQueueFull(t *testing.T) {
	arrived := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record(r)
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	}))
	defer srv.Close()

	log, sink := newLog()
	n := newNotifier([]config.Notification{{URL: srv.URL, Format: "json", Timeout: time.Minute}}, srv.Client(), log, noBackoff)
	n.RunFinished(shopSuccess)
	recv(t, arrived, "first delivery") // in flight: the queue is empty again
	var slowest time.Duration
	for range queueSize + 5 {
		began := time.Now()
		n.RunFinished(shopSuccess)
		slowest = max(slowest, time.Since(began))
	}
	if slowest > 50*time.Millisecond {
		t.Errorf("RunFinished took up to %v", slowest)
	}
	if got := strings.Count(sink.String(), "the webhook's queue is full"); got != 5 {
		t.Errorf("%d drops logged, want 5:\n%s", got, sink)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Close = %v, want context.Canceled", err)
	}
	if s := sink.String(); !strings.Contains(s, "dropped=101") {
		t.Errorf("the log does not say 101 notifications were dropped at shutdown:\n%s", s)
	}
}

// Close lets the delivery in flight and the queued ones finish.
func TestCloseWaitsForDeliveries(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan request, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- record(r)
		<-release
	}))
	defer srv.Close()

	log, sink := newLog()
	n := newNotifier([]config.Notification{{URL: srv.URL, Format: "json", Timeout: time.Minute}}, srv.Client(), log, noBackoff)
	n.RunFinished(shopSuccess)
	n.RunFinished(shopRolled)
	n.RunFinished(shopFailed)
	recv(t, arrived, "first delivery")

	closed := make(chan error, 1)
	go func() { closed <- n.Close(context.Background()) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with a delivery in flight", err)
	default:
	}
	close(release)
	if err := recv(t, closed, "return from Close"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if len(arrived) != 2 {
		t.Errorf("%d deliveries after the first, want 2", len(arrived))
	}
	if s := sink.String(); strings.Count(s, "notification sent") != 3 || strings.Contains(s, "dropped") {
		t.Errorf("log:\n%s", s)
	}

	// Closed, it takes no more events (and does not panic).
	n.RunFinished(shopSuccess)
	n.Unhealthy(shopUnhealthy)
	if s := sink.String(); !strings.Contains(s, "the notifier is closed") {
		t.Errorf("an event after Close was not logged:\n%s", s)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// When its context ends first, Close aborts the delivery in flight, drops
// the queue and says how many it dropped.
func TestCloseGivesUpWhenCtxEnds(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record(r)
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)

	log, sink := newLog()
	n := newNotifier([]config.Notification{{URL: srv.URL, Format: "json", Timeout: time.Minute, Retries: 3}}, srv.Client(), log, noBackoff)
	n.RunFinished(shopSuccess)
	n.RunFinished(shopRolled)
	n.Unhealthy(shopUnhealthy)
	recv(t, arrived, "first delivery")

	const grace = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	began := time.Now()
	err := n.Close(ctx)
	took := time.Since(began)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want context.DeadlineExceeded", err)
	}
	if took < grace || took > grace+2*time.Second {
		t.Errorf("Close took %v, its context %v", took, grace)
	}
	if len(arrived) != 0 {
		t.Errorf("%d more deliveries were tried after Close gave up", len(arrived))
	}
	if s := sink.String(); !strings.Contains(s, "dropped=3") || strings.Contains(s, "notification failed") {
		t.Errorf("the log does not say 3 notifications were dropped (and only that):\n%s", s)
	}
}
