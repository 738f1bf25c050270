package schedule

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/compose"
)

// fakeEngine is an in-memory Docker engine: containers, images and execs.
type fakeEngine struct {
	mu         sync.Mutex
	containers []*fakeContainer
	images     []image.Summary
	removed    []string
	removeOpts []image.RemoveOptions
	removeErr  map[string]error // by image ID

	// onList, when set, runs at the start of ImageList (the cron tests
	// block a prune there).
	onList func(ctx context.Context) error

	// exec is what every exec does; execs records what was asked.
	exec  fakeExec
	execs []fakeExecCall
}

type fakeContainer struct {
	id, name, image string
	labels          map[string]string
	status          string // running, exited...
	exitCode        int
	health          string
	healthLog       string
	restarts        int
}

type fakeExec struct {
	stdout, stderr string
	exitCode       int
}

type fakeExecCall struct {
	container string
	opts      container.ExecOptions
}

func newFakeEngine() *fakeEngine {
	return &fakeEngine{removeErr: map[string]error{}}
}

// service adds a container of a compose service.
func (f *fakeEngine) service(project, service string, n int, release int, status string) *fakeContainer {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := fmt.Sprintf("%s-%s-%d", project, service, n)
	c := &fakeContainer{
		id:   "c-" + name,
		name: name,
		labels: map[string]string{
			compose.LabelProject: project,
			compose.LabelService: service,
			compose.LabelOneoff:  "False",
			compose.LabelRelease: fmt.Sprint(release),
		},
		status: status,
	}
	f.containers = append(f.containers, c)
	return c
}

// set changes a container under the lock.
func (f *fakeEngine) set(c *fakeContainer, change func(*fakeContainer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(c)
}

func (f *fakeEngine) remove(c *fakeContainer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, x := range f.containers {
		if x == c {
			f.containers = append(f.containers[:i], f.containers[i+1:]...)
			return
		}
	}
}

func (f *fakeEngine) ContainerList(_ context.Context, o container.ListOptions) ([]container.Summary, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []container.Summary
next:
	for _, c := range f.containers {
		for _, kv := range o.Filters.Get("label") {
			k, v, _ := strings.Cut(kv, "=")
			if c.labels[k] != v {
				continue next
			}
		}
		if st := o.Filters.Get("status"); len(st) > 0 && st[0] != c.status {
			continue
		}
		if !o.All && o.Filters.Len() == 0 && c.status != container.StateRunning {
			continue
		}
		out = append(out, container.Summary{
			ID: c.id, Names: []string{"/" + c.name}, ImageID: c.image, Labels: c.labels, State: c.status,
		})
	}
	return out, nil
}

func (f *fakeEngine) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.containers {
		if c.id != id {
			continue
		}
		st := &container.State{Status: c.status, Running: c.status == container.StateRunning, ExitCode: c.exitCode}
		if c.health != "" {
			st.Health = &container.Health{Status: c.health, Log: []*container.HealthcheckResult{{Output: c.healthLog}}}
		}
		return container.InspectResponse{
			ContainerJSONBase: &container.ContainerJSONBase{ID: c.id, Name: "/" + c.name, State: st, RestartCount: c.restarts, Image: c.image},
			Config:            &container.Config{Labels: c.labels},
		}, nil
	}
	return container.InspectResponse{}, fmt.Errorf("no such container %s: %w", id, cerrdefs.ErrNotFound)
}

func (f *fakeEngine) ImageList(ctx context.Context, _ image.ListOptions) ([]image.Summary, error) {
	if f.onList != nil {
		if err := f.onList(ctx); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]image.Summary(nil), f.images...), nil
}

func (f *fakeEngine) ImageRemove(_ context.Context, id string, o image.RemoveOptions) ([]image.DeleteResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.removeErr[id]; err != nil {
		return nil, err
	}
	for i, img := range f.images {
		if img.ID == id {
			f.images = append(f.images[:i], f.images[i+1:]...)
			f.removed = append(f.removed, id)
			f.removeOpts = append(f.removeOpts, o)
			return []image.DeleteResponse{{Deleted: id}}, nil
		}
	}
	return nil, fmt.Errorf("no such image %s: %w", id, cerrdefs.ErrNotFound)
}

func (f *fakeEngine) ContainerExecCreate(_ context.Context, id string, o container.ExecOptions) (container.ExecCreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.execs = append(f.execs, fakeExecCall{container: id, opts: o})
	return container.ExecCreateResponse{ID: fmt.Sprintf("exec-%d", len(f.execs))}, nil
}

func (f *fakeEngine) ContainerExecAttach(context.Context, string, container.ExecAttachOptions) (types.HijackedResponse, error) {
	f.mu.Lock()
	res := f.exec
	f.mu.Unlock()
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		// In pieces, as a real stream comes.
		out := stdcopy.NewStdWriter(server, stdcopy.Stdout)
		for chunk := range slicesChunk([]byte(res.stdout), 7) {
			if _, err := out.Write(chunk); err != nil {
				return
			}
		}
		if res.stderr != "" {
			_, _ = stdcopy.NewStdWriter(server, stdcopy.Stderr).Write([]byte(res.stderr))
		}
	}()
	return types.HijackedResponse{Conn: client, Reader: bufio.NewReader(client)}, nil
}

func (f *fakeEngine) ContainerExecInspect(context.Context, string) (container.ExecInspect, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return container.ExecInspect{Running: false, ExitCode: f.exec.exitCode}, nil
}

// slicesChunk yields b in pieces of at most n bytes.
func slicesChunk(b []byte, n int) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(b) > 0 {
			k := min(n, len(b))
			if !yield(b[:k]) {
				return
			}
			b = b[k:]
		}
	}
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
