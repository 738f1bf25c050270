package schedule

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/internal/fakeengine"
)

// service adds a container of a compose service to eng, in the given
// state, and returns its ID.
func service(eng *fakeengine.Engine, project, service string, n int, release int, status string) string {
	name := fmt.Sprintf("%s-%s-%d", project, service, n)
	eng.Put(container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: "c-" + name, Name: "/" + name,
			State: &container.State{Status: status, Running: status == container.StateRunning}},
		Config: &container.Config{Labels: map[string]string{
			compose.LabelProject: project,
			compose.LabelService: service,
			compose.LabelOneoff:  "False",
			compose.LabelRelease: fmt.Sprint(release),
		}},
	})
	return "c-" + name
}

// setStatus puts a container in a state (running only when status is).
func setStatus(in *container.InspectResponse, status string) {
	in.State.Status = status
	in.State.Running = status == container.StateRunning
}

// setHealth gives a container a Docker health status whose last check
// said output.
func setHealth(in *container.InspectResponse, status, output string) {
	in.State.Health = &container.Health{Status: status, Log: []*container.HealthcheckResult{{Output: output}}}
}

// fakeHistory is an in-memory release store.
type fakeHistory struct {
	mu       sync.Mutex
	releases map[string][]api.Release // newest first
	current  map[string]int
}

func newFakeHistory() *fakeHistory {
	return &fakeHistory{releases: map[string][]api.Release{}, current: map[string]int{}}
}

// record adds a release as the newest of its project; live makes it the
// live one.
func (h *fakeHistory) record(project string, number int, outcome string, live bool, services map[string]string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := api.Release{Project: project, Number: number, Outcome: outcome, Services: map[string]api.ServiceImage{}}
	for svc, pinned := range services {
		digest := pinned
		if _, d, ok := strings.Cut(pinned, "@"); ok {
			digest = d
		}
		r.Services[svc] = api.ServiceImage{Ref: svc + ":latest", Pinned: pinned, Digest: digest}
	}
	h.releases[project] = append([]api.Release{r}, h.releases[project]...)
	if live {
		h.current[project] = number
	}
}

func (h *fakeHistory) History(project string) ([]api.Release, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]api.Release(nil), h.releases[project]...), nil
}

func (h *fakeHistory) Current(project string) (api.Release, bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.current[project]
	for _, r := range h.releases[project] {
		if r.Number == n {
			return r, true, nil
		}
	}
	return api.Release{}, false, nil
}

// alerts records the alerter's events.
type alerts struct {
	mu     sync.Mutex
	events []api.UnhealthyEvent
}

func (a *alerts) Unhealthy(ev api.UnhealthyEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, ev)
}

// logBuffer is a goroutine-safe log sink, shown when the test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger returns a debug logger whose output is printed if t fails.
func testLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	t.Helper()
	buf := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", buf)
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// clock is a fake time source that moves on by step at each reading.
type clock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(c.step)
	return t
}
