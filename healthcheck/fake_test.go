package healthcheck

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/pkg/stdcopy"
)

// fakeEngine is an in-memory Engine: containers whose inspect result the test
// changes over time, an event stream the test feeds, canned exec results and
// logs.
type fakeEngine struct {
	mu         sync.Mutex
	containers map[string]*container.InspectResponse // by ID
	logs       map[string]string                     // by ID, written to stderr
	execs      []fakeExec                            // results in order; the last one repeats
	execCmds   [][]string
	nextExec   int
	execByID   map[string]fakeExec
	inspects   int
	filters    []events.ListOptions

	events chan events.Message // what the test feeds
}

// fakeExec is the outcome of one exec.
type fakeExec struct {
	stdout, stderr string
	code           int
	hang           bool // the output never ends (until the caller hangs up)
}

func newFake() *fakeEngine {
	return &fakeEngine{
		containers: map[string]*container.InspectResponse{},
		logs:       map[string]string{},
		execByID:   map[string]fakeExec{},
		events:     make(chan events.Message, 16),
	}
}

// add adds a running container with the given name and IP on "bridge".
func (f *fakeEngine) add(id, name, ip string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers[id] = &container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID:   id,
			Name: "/" + name,
			State: &container.State{
				Status:    container.StateRunning,
				Running:   true,
				StartedAt: "2025-01-01T00:00:00Z",
			},
			HostConfig: &container.HostConfig{NetworkMode: "bridge"},
		},
		Config: &container.Config{},
		NetworkSettings: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
			"bridge": {IPAddress: ip},
		}},
	}
}

// withHealth gives container id a HEALTHCHECK in the given state.
func (f *fakeEngine) withHealth(id, status string) {
	f.update(id, func(in *container.InspectResponse) {
		in.Config.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/testapp", "check"}}
		in.State.Health = &container.Health{Status: status}
	})
}

// update changes the inspect result of container id.
func (f *fakeEngine) update(id string, change func(*container.InspectResponse)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f.containers[id])
}

// exit makes container id exited with code, without an event.
func (f *fakeEngine) exit(id string, code int) {
	f.update(id, func(in *container.InspectResponse) {
		in.State.Running = false
		in.State.Status = container.StateExited
		in.State.ExitCode = code
	})
}

// send feeds an event about container id.
func (f *fakeEngine) send(id string, action events.Action, attrs map[string]string) {
	f.events <- events.Message{Type: events.ContainerEventType, Action: action, Actor: events.Actor{ID: id, Attributes: attrs}}
}

func (f *fakeEngine) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inspects++
	in, ok := f.containers[id]
	if !ok {
		return container.InspectResponse{}, fmt.Errorf("no such container: %s: %w", id, cerrdefs.ErrNotFound)
	}
	// A deep enough copy: the test changes State and Health in place.
	out := *in
	base := *in.ContainerJSONBase
	state := *in.State
	if state.Health != nil {
		h := *state.Health
		state.Health = &h
	}
	base.State = &state
	out.ContainerJSONBase = &base
	return out, nil
}

func (f *fakeEngine) Events(ctx context.Context, o events.ListOptions) (<-chan events.Message, <-chan error) {
	f.mu.Lock()
	f.filters = append(f.filters, o)
	f.mu.Unlock()
	errs := make(chan error, 1)
	go func() {
		<-ctx.Done()
		errs <- ctx.Err()
	}()
	return f.events, errs
}

func (f *fakeEngine) ContainerLogs(_ context.Context, id string, o container.LogsOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var buf bytes.Buffer
	if o.ShowStderr && f.logs[id] != "" {
		_, _ = stdcopy.NewStdWriter(&buf, stdcopy.Stderr).Write([]byte(f.logs[id]))
	}
	return io.NopCloser(&buf), nil
}

func (f *fakeEngine) ContainerExecCreate(_ context.Context, id string, o container.ExecOptions) (container.ExecCreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.containers[id]; !ok {
		return container.ExecCreateResponse{}, fmt.Errorf("no such container: %s: %w", id, cerrdefs.ErrNotFound)
	}
	if len(f.execs) == 0 {
		return container.ExecCreateResponse{}, fmt.Errorf("fake: no exec result for %v", o.Cmd)
	}
	res := f.execs[min(f.nextExec, len(f.execs)-1)]
	f.nextExec++
	f.execCmds = append(f.execCmds, o.Cmd)
	execID := fmt.Sprintf("exec-%d", f.nextExec)
	f.execByID[execID] = res
	return container.ExecCreateResponse{ID: execID}, nil
}

// ContainerExecAttach streams the exec's output, multiplexed as the engine
// does, over an in-memory connection.
func (f *fakeEngine) ContainerExecAttach(_ context.Context, execID string, _ container.ExecAttachOptions) (types.HijackedResponse, error) {
	f.mu.Lock()
	res, ok := f.execByID[execID]
	f.mu.Unlock()
	if !ok {
		return types.HijackedResponse{}, fmt.Errorf("no such exec: %s: %w", execID, cerrdefs.ErrNotFound)
	}
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		if res.stdout != "" {
			_, _ = stdcopy.NewStdWriter(server, stdcopy.Stdout).Write([]byte(res.stdout))
		}
		if res.stderr != "" {
			_, _ = stdcopy.NewStdWriter(server, stdcopy.Stderr).Write([]byte(res.stderr))
		}
		if res.hang {
			_, _ = io.Copy(io.Discard, server) // until the client closes its end
		}
	}()
	return types.HijackedResponse{Conn: client, Reader: bufio.NewReader(client)}, nil
}

func (f *fakeEngine) ContainerExecInspect(_ context.Context, execID string) (container.ExecInspect, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	res, ok := f.execByID[execID]
	if !ok {
		return container.ExecInspect{}, fmt.Errorf("no such exec: %s: %w", execID, cerrdefs.ErrNotFound)
	}
	return container.ExecInspect{ExecID: execID, ExitCode: res.code}, nil
}
