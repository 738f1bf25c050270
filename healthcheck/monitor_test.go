package healthcheck

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"

	"github.com/berth-deploy/berth/internal/fakeengine"
)

const workerID = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

// newPair returns a fake with two running containers, web-1 and worker-1.
func newPair(t *testing.T) *fakeengine.Engine {
	t.Helper()
	f := newWeb(t)
	addContainer(f, workerID, "worker-1", "127.0.0.2")
	return f
}

// runMonitor runs Monitor on web-1 and worker-1 and returns how long it took
// and its error.
func runMonitor(ctx context.Context, t *testing.T, c *Checker, window time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	err := c.Monitor(ctx, []string{webID, workerID}, window)
	took := time.Since(start)
	t.Logf("Monitor took %v: %v", took.Round(time.Millisecond), err)
	return took, err
}

func TestMonitorQuietWindowPasses(t *testing.T) {
	f := newPair(t)
	f.SetHealth(webID, container.Healthy)
	took, err := runMonitor(t.Context(), t, &Checker{Engine: f, poll: 50 * time.Millisecond}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if took < 200*time.Millisecond {
		t.Errorf("passed after %v, before the window ended", took)
	}
	wantQuick(t, took, time.Second)
	got := f.EventFilters()[0].Filters.Get("container")
	slices.Sort(got)
	if want := []string{webID, workerID}; !slices.Equal(got, want) {
		t.Errorf("container filter = %v, want %v", got, want)
	}
}

func TestMonitorFailsAtTheFirstDie(t *testing.T) {
	f := newPair(t)
	f.SetLogs(workerID, fakeengine.Output{Stderr: "celery: lost connection to broker\n"})
	after(t, 50*time.Millisecond, func() {
		f.Exit(workerID, 1)
		f.SendContainer(workerID, events.ActionDie, map[string]string{"exitCode": "1"})
	})
	took, err := runMonitor(t.Context(), t, &Checker{Engine: f, poll: never}, 5*time.Second)
	wantErr(t, err, ErrExited, "monitor worker-1: container exited ", "into the 5s window: exit code 1", "celery: lost connection to broker")
	wantQuick(t, took, time.Second)
}

func TestMonitorFailsOnUnhealthy(t *testing.T) {
	f := newPair(t)
	f.SetHealth(webID, container.Healthy)
	after(t, 50*time.Millisecond, func() {
		f.Update(webID, func(in *container.InspectResponse) {
			in.State.Health.Status = container.Unhealthy
			in.State.Health.Log = []*container.HealthcheckResult{{ExitCode: 1, Output: "502 from upstream"}}
		})
		f.SendContainer(webID, events.ActionHealthStatusUnhealthy, nil)
	})
	took, err := runMonitor(t.Context(), t, &Checker{Engine: f, poll: never}, 5*time.Second)
	wantErr(t, err, ErrUnhealthy, "monitor web-1: container is unhealthy", "last health check exited 1: 502 from upstream")
	wantQuick(t, took, time.Second)
}

func TestMonitorIgnoresHealthyAndOtherContainers(t *testing.T) {
	f := newPair(t)
	after(t, 20*time.Millisecond, func() {
		f.SendContainer(webID, events.ActionHealthStatusHealthy, nil)
		f.SendContainer("someone-else", events.ActionDie, map[string]string{"exitCode": "1"})
	})
	if _, err := runMonitor(t.Context(), t, &Checker{Engine: f, poll: never}, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

func TestMonitorFallsBackToInspect(t *testing.T) {
	f := newPair(t)
	after(t, 50*time.Millisecond, func() { f.Exit(workerID, 137) })
	took, err := runMonitor(t.Context(), t, &Checker{Engine: f, poll: 20 * time.Millisecond}, 5*time.Second)
	wantErr(t, err, ErrExited, "monitor worker-1:", "exit code 137")
	wantQuick(t, took, time.Second)
}

func TestMonitorFinalInspect(t *testing.T) {
	// No event and no poll in the window: the inspect at its end sees the
	// restart.
	f := newPair(t)
	after(t, 50*time.Millisecond, func() {
		f.Update(workerID, func(in *container.InspectResponse) { in.RestartCount = 2 })
	})
	took, err := runMonitor(t.Context(), t, &Checker{Engine: f, poll: never}, 200*time.Millisecond)
	wantErr(t, err, ErrRestarted, "monitor worker-1:", "restart count 0 -> 2")
	if took < 200*time.Millisecond {
		t.Errorf("failed after %v, before the window ended", took)
	}
}

func TestMonitorNotRunningAtTheStart(t *testing.T) {
	f := newPair(t)
	f.Exit(webID, 0)
	took, err := runMonitor(t.Context(), t, &Checker{Engine: f, poll: never}, 5*time.Second)
	wantErr(t, err, ErrExited, "monitor web-1:", "exit code 0")
	wantQuick(t, took, 100*time.Millisecond)
}

func TestMonitorContextCancelled(t *testing.T) {
	f := newPair(t)
	ctx, cancel := context.WithCancel(t.Context())
	after(t, 50*time.Millisecond, cancel)
	took, err := runMonitor(ctx, t, &Checker{Engine: f, poll: 20 * time.Millisecond}, 5*time.Second)
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

func TestMonitorNothing(t *testing.T) {
	if err := (&Checker{Engine: fakeengine.New()}).Monitor(t.Context(), nil, time.Hour); err != nil {
		t.Fatal(err)
	}
}

func TestMonitorUnknownContainer(t *testing.T) {
	err := (&Checker{Engine: fakeengine.New()}).Monitor(t.Context(), []string{"gone"}, time.Second)
	if err == nil || !strings.HasPrefix(err.Error(), "monitor gone: inspect:") {
		t.Fatalf("error = %v, want an inspect error", err)
	}
}
