package healthcheck

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"

	"github.com/berth-deploy/berth/internal/fakeengine"
)

const (
	webID = "0123456789ab0123456789ab0123456789ab0123456789ab0123456789abcdef"
	// never is a poll period long enough that only events count.
	never = time.Hour
)

// sentinels are the failures a cancelled context must not be reported as.
func sentinels() []error { return []error{ErrExited, ErrRestarted, ErrUnhealthy, ErrTimeout} }

// runGate runs Gate on webID and returns how long it took and its error.
func runGate(ctx context.Context, t *testing.T, c *Checker, spec Spec) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	err := c.Gate(ctx, webID, spec)
	took := time.Since(start)
	t.Logf("Gate took %v: %v", took.Round(time.Millisecond), err)
	return took, err
}

// after runs f in a goroutine after d.
func after(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	timer := time.AfterFunc(d, f)
	t.Cleanup(func() { timer.Stop() })
}

func wantErr(t *testing.T, err, target error, contains ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func wantQuick(t *testing.T, took, limit time.Duration) {
	t.Helper()
	if took > limit {
		t.Errorf("took %v, want at most %v", took, limit)
	}
}

func newWeb(t *testing.T) *fakeengine.Engine {
	t.Helper()
	f := fakeengine.New()
	addContainer(f, webID, "web-1", "127.0.0.1")
	return f
}

func TestGateAlreadyHealthy(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Healthy)
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wantQuick(t, took, 100*time.Millisecond)
}

func TestGateSubscribesToTheContainersEvents(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Healthy)
	if _, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{}); err != nil {
		t.Fatal(err)
	}
	if len(f.EventFilters()) != 1 {
		t.Fatalf("%d event subscriptions, want 1", len(f.EventFilters()))
	}
	got := f.EventFilters()[0].Filters
	if v := got.Get("type"); !slices.Equal(v, []string{"container"}) {
		t.Errorf("type filter = %v", v)
	}
	if v := got.Get("container"); !slices.Equal(v, []string{webID}) {
		t.Errorf("container filter = %v", v)
	}
	ev := got.Get("event")
	slices.Sort(ev)
	if want := []string{"die", "health_status", "oom", "restart"}; !slices.Equal(ev, want) {
		t.Errorf("event filter = %v, want %v", ev, want)
	}
}

func TestGateHealthyByEvent(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	after(t, 100*time.Millisecond, func() { f.SendContainer(webID, events.ActionHealthStatusHealthy, nil) })
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if took < 100*time.Millisecond {
		t.Errorf("passed after %v, before the healthy event", took)
	}
	wantQuick(t, took, time.Second)
}

func TestGateUnhealthyEventFailsAtOnce(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	after(t, 50*time.Millisecond, func() {
		f.Update(webID, func(in *container.InspectResponse) {
			in.State.Health.Status = container.Unhealthy
			in.State.Health.Log = []*container.HealthcheckResult{{ExitCode: 1, Output: "testapp check: status 500\n"}}
		})
		f.SendContainer(webID, events.ActionHealthStatusUnhealthy, nil)
	})
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{Timeout: 5 * time.Second})
	wantErr(t, err, ErrUnhealthy, "gate web-1:", `Docker health "healthy"`, "last health check exited 1: testapp check: status 500")
	wantQuick(t, took, time.Second)
}

func TestGateDieEventFailsAtOnce(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	f.SetLogs(webID, fakeengine.Output{Stderr: "booting\nfatal: database unreachable\n"})
	after(t, 50*time.Millisecond, func() {
		f.Exit(webID, 3)
		f.SendContainer(webID, events.ActionDie, map[string]string{"exitCode": "3"})
	})
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{Timeout: 5 * time.Second})
	wantErr(t, err, ErrExited, "exit code 3", "last 2 log lines:\n\tbooting\n\tfatal: database unreachable")
	wantQuick(t, took, time.Second)
}

func TestGateAlreadyExited(t *testing.T) {
	f := newWeb(t)
	f.Exit(webID, 2)
	f.SetLogs(webID, fakeengine.Output{Stderr: "panic: boom\n"})
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{Timeout: 5 * time.Second})
	wantErr(t, err, ErrExited, "exit code 2", "last log line:\n\tpanic: boom")
	wantQuick(t, took, 100*time.Millisecond)
}

func TestGateRestartCountGrows(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	after(t, 50*time.Millisecond, func() {
		f.Update(webID, func(in *container.InspectResponse) { in.RestartCount++ })
	})
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: 20 * time.Millisecond}, Spec{Timeout: 5 * time.Second})
	wantErr(t, err, ErrRestarted, "restart count 0 -> 1")
	wantQuick(t, took, time.Second)
}

func TestGateRestartEvent(t *testing.T) {
	f := newWeb(t)
	after(t, 50*time.Millisecond, func() { f.SendContainer(webID, events.ActionRestart, nil) })
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{MinUp: 5 * time.Second, Timeout: 10 * time.Second})
	wantErr(t, err, ErrRestarted, "the container to stay running for 5s")
	wantQuick(t, took, time.Second)
}

func TestGateNoCheckPassesAfterMinUp(t *testing.T) {
	f := newWeb(t)
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: 50 * time.Millisecond}, Spec{MinUp: 200 * time.Millisecond, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if took < 200*time.Millisecond {
		t.Errorf("passed after %v, before MinUp", took)
	}
	wantQuick(t, took, time.Second)
}

func TestGateNoCheckDiesWithinMinUp(t *testing.T) {
	f := newWeb(t)
	after(t, 50*time.Millisecond, func() {
		f.Exit(webID, 1)
		f.SendContainer(webID, events.ActionDie, map[string]string{"exitCode": "1"})
	})
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{MinUp: 200 * time.Millisecond, Timeout: 5 * time.Second})
	wantErr(t, err, ErrExited, "the container to stay running for 200ms", "exit code 1", "no log output")
	wantQuick(t, took, 190*time.Millisecond)
}

func TestGateNoCheckExitSeenAtTheEnd(t *testing.T) {
	// The die event is lost and MinUp ends before the next poll: the final
	// inspect still sees the exit.
	f := newWeb(t)
	after(t, 50*time.Millisecond, func() { f.Exit(webID, 1) })
	_, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{MinUp: 200 * time.Millisecond, Timeout: 5 * time.Second})
	wantErr(t, err, ErrExited, "exit code 1")
}

func TestGateTimeout(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	f.Update(webID, func(in *container.InspectResponse) {
		in.State.Health.Log = []*container.HealthcheckResult{{ExitCode: 1, Output: "connection refused"}}
	})
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: 50 * time.Millisecond}, Spec{Timeout: 300 * time.Millisecond})
	wantErr(t, err, ErrTimeout, `gate web-1: waited 300ms for Docker health "healthy": health is "starting", last health check exited 1: connection refused`)
	if took < 300*time.Millisecond {
		t.Errorf("timed out after %v, before the 300ms Timeout", took)
	}
	wantQuick(t, took, time.Second)
}

func TestGateMissedEventCaughtByInspect(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*container.InspectResponse)
		want   error
		detail string
	}{
		{"unhealthy", func(in *container.InspectResponse) {
			in.State.Health.Status = container.Unhealthy
			in.State.Health.Log = []*container.HealthcheckResult{{ExitCode: 1, Output: "bad"}}
		}, ErrUnhealthy, "last health check exited 1: bad"},
		{"exited", func(in *container.InspectResponse) {
			in.State.Running = false
			in.State.Status = container.StateExited
			in.State.ExitCode = 137
			in.State.OOMKilled = true
		}, ErrExited, "exit code 137 (OOM-killed)"},
		{"restarting", func(in *container.InspectResponse) {
			in.State.Restarting = true
			in.State.ExitCode = 1
		}, ErrExited, "exit code 1, restarting"},
		{"started again", func(in *container.InspectResponse) {
			in.State.StartedAt = "2025-01-01T00:00:09Z"
		}, ErrRestarted, "started again at 2025-01-01T00:00:09Z"},
		{"healthy", func(in *container.InspectResponse) {
			in.State.Health.Status = container.Healthy
		}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newWeb(t)
			f.SetHealth(webID, container.Starting)
			after(t, 50*time.Millisecond, func() { f.Update(webID, tc.change) })
			took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: 20 * time.Millisecond}, Spec{Timeout: 5 * time.Second})
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				wantErr(t, err, tc.want, tc.detail)
			}
			wantQuick(t, took, time.Second)
		})
	}
}

func TestGateDefaultPollCatchesMissedEvent(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	after(t, 50*time.Millisecond, func() {
		f.Update(webID, func(in *container.InspectResponse) { in.State.Health.Status = container.Healthy })
	})
	took, err := runGate(t.Context(), t, &Checker{Engine: f}, Spec{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wantQuick(t, took, 1500*time.Millisecond)
}

func TestGateContextCancelled(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	ctx, cancel := context.WithCancel(t.Context())
	after(t, 50*time.Millisecond, cancel)
	took, err := runGate(ctx, t, &Checker{Engine: f, poll: 20 * time.Millisecond}, Spec{Timeout: 5 * time.Second})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
	for _, s := range sentinels() {
		if errors.Is(err, s) {
			t.Errorf("error %v is %v", err, s)
		}
	}
	wantQuick(t, took, time.Second)
}

func TestGateParentDeadlineIsNotErrTimeout(t *testing.T) {
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := runGate(ctx, t, &Checker{Engine: f, poll: never}, Spec{Timeout: 5 * time.Second})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrTimeout) {
		t.Fatalf("error = %v, want context.DeadlineExceeded and not ErrTimeout", err)
	}
}

func TestGateUnknownContainer(t *testing.T) {
	f := fakeengine.New()
	err := (&Checker{Engine: f}).Gate(t.Context(), "nope", Spec{})
	if err == nil || !strings.HasPrefix(err.Error(), "gate nope: inspect:") {
		t.Fatalf("error = %v, want an inspect error", err)
	}
}

// healthz serves /healthz: 500 for the first fails requests, then 200. It
// records the Host header of the last request.
func healthz(t *testing.T, fails int32) (*httptest.Server, *atomic.Value) {
	t.Helper()
	var n atomic.Int32
	var host atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host.Store(r.Host)
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		if n.Add(1) <= fails {
			http.Error(w, "not ready yet", http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	return srv, &host
}

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestGateHTTPProbePasses(t *testing.T) {
	srv, host := healthz(t, 2)
	f := newWeb(t)
	spec := Spec{
		HTTP:     &HTTPProbe{Path: "healthz", Port: port(t, srv.Listener.Addr().String()), Host: "example.com"},
		Interval: 20 * time.Millisecond,
		Timeout:  5 * time.Second,
	}
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, spec)
	if err != nil {
		t.Fatal(err)
	}
	if got := host.Load(); got != "example.com" {
		t.Errorf("Host header = %v, want example.com", got)
	}
	wantQuick(t, took, time.Second)
}

func TestGateHTTPProbeTimeout(t *testing.T) {
	srv, _ := healthz(t, 1<<30)
	f := newWeb(t)
	p := port(t, srv.Listener.Addr().String())
	spec := Spec{
		HTTP:     &HTTPProbe{Path: "/healthz", Port: p, Host: "example.com"},
		Interval: 20 * time.Millisecond,
		Timeout:  300 * time.Millisecond,
	}
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, spec)
	wantErr(t, err, ErrTimeout,
		"gate web-1: waited 300ms for the HTTP probe GET http://127.0.0.1:"+strconv.Itoa(p)+"/healthz (Host: example.com) to answer 200: last answer 500 Internal Server Error",
		`"not ready yet"`)
	wantQuick(t, took, time.Second)
}

func TestGateHTTPProbeAndDockerHealth(t *testing.T) {
	// Both must pass: the probe passes at once, health only by event.
	srv, _ := healthz(t, 0)
	f := newWeb(t)
	f.SetHealth(webID, container.Starting)
	after(t, 150*time.Millisecond, func() { f.SendContainer(webID, events.ActionHealthStatusHealthy, nil) })
	spec := Spec{HTTP: &HTTPProbe{Path: "/healthz", Port: port(t, srv.Listener.Addr().String())}, Timeout: 5 * time.Second}
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, spec)
	if err != nil {
		t.Fatal(err)
	}
	if took < 150*time.Millisecond {
		t.Errorf("passed after %v, before Docker health was healthy", took)
	}
}

func TestGateHTTPProbeNeedsAnAddress(t *testing.T) {
	f := newWeb(t)
	f.Update(webID, func(in *container.InspectResponse) { in.NetworkSettings.Networks["bridge"].IPAddress = "" })
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{HTTP: &HTTPProbe{Port: 80}, Timeout: 5 * time.Second})
	if err == nil || errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "no IP address on its networks (bridge)") {
		t.Fatalf("error = %v, want no IP address", err)
	}
	wantQuick(t, took, 100*time.Millisecond)
}

func TestProbeHostPicksTheFirstNetworkByName(t *testing.T) {
	f := newWeb(t)
	f.Update(webID, func(in *container.InspectResponse) {
		in.NetworkSettings.Networks["zeta"] = &network.EndpointSettings{IPAddress: "10.0.0.9"}
		in.NetworkSettings.Networks["alpha"] = &network.EndpointSettings{}
		in.NetworkSettings.Networks["beta"] = &network.EndpointSettings{IPAddress: "10.0.0.2"}
	})
	in, _ := f.ContainerInspect(t.Context(), webID)
	if got, err := probeHost(in); err != nil || got != "10.0.0.2" {
		t.Fatalf("probeHost = %q, %v; want 10.0.0.2", got, err)
	}
	in.HostConfig.NetworkMode = "host"
	if got, err := probeHost(in); err != nil || got != "127.0.0.1" {
		t.Fatalf("probeHost on the host network = %q, %v; want 127.0.0.1", got, err)
	}
}

func TestGateTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f := newWeb(t)
	_, err = runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{TCP: &TCPProbe{Port: port(t, ln.Addr().String())}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}

	addr := ln.Addr().String()
	ln.Close()
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, Spec{TCP: &TCPProbe{Port: port(t, addr)}, Interval: 20 * time.Millisecond, Timeout: 300 * time.Millisecond})
	wantErr(t, err, ErrTimeout, "the TCP probe to connect to "+addr, "connection refused")
	wantQuick(t, took, time.Second)
}

func TestGateExecProbe(t *testing.T) {
	f := newWeb(t)
	f.SetExecResults(fakeengine.ExecResult{Stderr: "db not ready\n", ExitCode: 1}, fakeengine.ExecResult{ExitCode: 1}, fakeengine.ExecResult{Stdout: "ok\n", ExitCode: 0})
	spec := Spec{Exec: []string{"pg_isready"}, Interval: 20 * time.Millisecond, Timeout: 5 * time.Second}
	took, err := runGate(t.Context(), t, &Checker{Engine: f, poll: never}, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Execs()) != 3 {
		t.Errorf("ran %d execs, want 3", len(f.Execs()))
	}
	wantQuick(t, took, time.Second)

	f = newWeb(t)
	f.SetExecResults(fakeengine.ExecResult{Stderr: "db not ready\n", ExitCode: 2})
	spec.Timeout = 200 * time.Millisecond
	_, err = runGate(t.Context(), t, &Checker{Engine: f, poll: never}, spec)
	wantErr(t, err, ErrTimeout, `the exec probe "pg_isready" to exit 0: last exit code 2: db not ready`)
}

func TestSpecDefaults(t *testing.T) {
	s := Spec{}.withDefaults()
	if s.Interval != time.Second || s.Timeout != 2*time.Minute || s.MinUp != 5*time.Second {
		t.Errorf("defaults = %+v", s)
	}
}

// addContainer adds a running container with the given name and IP on
// "bridge".
func addContainer(f *fakeengine.Engine, id, name, ip string) {
	f.Put(container.InspectResponse{
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
	})
}
