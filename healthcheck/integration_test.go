package healthcheck

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/berth-deploy/berth/internal/testenv"
)

// *client.Client is the Engine of production.
var _ Engine = (*client.Client)(nil)

const projectLabel = "com.docker.compose.project"

// itest is one integration test's engine, project and image.
type itest struct {
	t       *testing.T
	cli     *client.Client
	project string
	ref     string
}

// newITest builds a testapp image, with or without its HEALTHCHECK, and
// picks a project name; the project's containers, then the image, are
// removed when the test ends.
func newITest(t *testing.T, healthcheck bool) *itest {
	t.Helper()
	t.Parallel()
	cli := testenv.Docker(t)
	project := testenv.UniqueName("health")
	it := &itest{t: t, cli: cli, project: project, ref: "berthtest/health:" + project}
	start := time.Now()
	testenv.Build(t, cli, it.ref, testenv.Image{Healthcheck: healthcheck})
	t.Logf("built %s (healthcheck %v) in %v", it.ref, healthcheck, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() { it.removeImage() })
	// Registered last, so it runs first and frees the image.
	t.Cleanup(func() { testenv.RemoveProject(t, cli, project) })
	return it
}

func (it *itest) removeImage() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(it.t.Context()), time.Minute)
	defer cancel()
	_, err := it.cli.ImageRemove(ctx, it.ref, image.RemoveOptions{PruneChildren: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		it.t.Errorf("remove image %s: %v", it.ref, err)
	}
}

// run creates and starts container project-name with env (KEY=VALUE) on the
// default bridge network and returns its ID.
func (it *itest) run(name string, env ...string) string {
	it.t.Helper()
	ctx := it.t.Context()
	created, err := it.cli.ContainerCreate(ctx,
		&container.Config{Image: it.ref, Env: env, Labels: map[string]string{projectLabel: it.project}},
		&container.HostConfig{}, nil, nil, it.project+"-"+name)
	if err != nil {
		it.t.Fatalf("create %s: %v", name, err)
	}
	if err := it.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		it.t.Fatalf("start %s: %v", name, err)
	}
	return created.ID
}

// gate runs Gate on id with the production Checker, and logs how long it
// took and what it returned.
func (it *itest) gate(what, id string, spec Spec) (time.Duration, error) {
	return it.gateWith(&Checker{Engine: it.cli}, what, id, spec)
}

func (it *itest) gateWith(c *Checker, what, id string, spec Spec) (time.Duration, error) {
	it.t.Helper()
	start := time.Now()
	err := c.Gate(it.t.Context(), id, spec)
	took := time.Since(start)
	it.t.Logf("%s: Gate took %v: %v", what, took.Round(time.Millisecond), err)
	return took, err
}

func within(t *testing.T, what string, took, limit time.Duration) {
	t.Helper()
	if took > limit {
		t.Errorf("%s took %v, want at most %v", what, took.Round(time.Millisecond), limit)
	}
}

// a. Docker health: healthy after HEALTHY_AFTER.
func TestIntegrationGateDockerHealthy(t *testing.T) {
	it := newITest(t, true)
	id := it.run("web-1", "HEALTHY_AFTER=2s")
	took, err := it.gate("HEALTHY_AFTER=2s", id, Spec{Timeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if took < 2*time.Second {
		t.Errorf("healthy after %v, before HEALTHY_AFTER", took)
	}
	within(t, "healthy", took, 15*time.Second)
}

// b. Docker health: unhealthy once the start period is over.
func TestIntegrationGateDockerUnhealthy(t *testing.T) {
	it := newITest(t, true)
	id := it.run("web-1", "HEALTH=fail")
	took, err := it.gate("HEALTH=fail", id, Spec{Timeout: 60 * time.Second})
	if !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("error = %v, want ErrUnhealthy", err)
	}
	for _, s := range []string{`Docker health "healthy"`, "last health check exited 1", "status 500"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not contain %q", s)
		}
	}
	within(t, "unhealthy", took, 20*time.Second)
}

// c. The container exits at once: ErrExited with its exit code and logs.
func TestIntegrationGateExited(t *testing.T) {
	it := newITest(t, false)
	id := it.run("web-1", "EXIT_AFTER=0s", "EXIT_CODE=3")
	took, err := it.gate("EXIT_AFTER=0s EXIT_CODE=3", id, Spec{Timeout: 60 * time.Second})
	if !errors.Is(err, ErrExited) {
		t.Fatalf("error = %v, want ErrExited", err)
	}
	for _, s := range []string{"gate " + it.project + "-web-1:", "exit code 3", "EXIT_AFTER=0s elapsed, exiting with code 3"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not contain %q", s)
		}
	}
	within(t, "exit", took, 3*time.Second)
}

// d. HTTP probe on a container without HEALTHCHECK.
func TestIntegrationGateHTTPProbe(t *testing.T) {
	it := newITest(t, false)
	probe := &HTTPProbe{Path: "/healthz", Port: 8080, Host: "shop.example.com"}

	id := it.run("web-1", "HEALTHY_AFTER=1s")
	took, err := it.gate("HTTP, HEALTHY_AFTER=1s", id, Spec{HTTP: probe, Interval: 200 * time.Millisecond, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if took < time.Second {
		t.Errorf("ready after %v, before HEALTHY_AFTER", took)
	}
	within(t, "HTTP ready", took, 5*time.Second)

	id = it.run("web-2", "HEALTH=fail")
	took, err = it.gate("HTTP, HEALTH=fail", id, Spec{HTTP: probe, Timeout: 3 * time.Second})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("error = %v, want ErrTimeout", err)
	}
	for _, s := range []string{"waited 3s for the HTTP probe GET http://", ":8080/healthz (Host: shop.example.com) to answer 200", "last answer 500"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not contain %q", s)
		}
	}
	if took < 3*time.Second {
		t.Errorf("timed out after %v, before the 3s Timeout", took)
	}
	within(t, "HTTP timeout", took, 4*time.Second)
}

// e. TCP probe: passes once the app listens.
func TestIntegrationGateTCPProbe(t *testing.T) {
	it := newITest(t, false)
	id := it.run("db-1", "START_DELAY=1s")
	took, err := it.gate("TCP, START_DELAY=1s", id, Spec{TCP: &TCPProbe{Port: 8080}, Interval: 200 * time.Millisecond, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if took < 900*time.Millisecond {
		t.Errorf("connected after %v, before START_DELAY", took)
	}
	within(t, "TCP ready", took, 5*time.Second)
}

// f. No check at all: MinUp.
func TestIntegrationGateMinUp(t *testing.T) {
	it := newITest(t, false)
	id := it.run("worker-1")
	took, err := it.gate("no check", id, Spec{MinUp: time.Second, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if took < time.Second {
		t.Errorf("passed after %v, before MinUp", took)
	}
	within(t, "MinUp", took, 3*time.Second)

	id = it.run("worker-2", "EXIT_AFTER=500ms")
	took, err = it.gate("no check, EXIT_AFTER=500ms", id, Spec{MinUp: 5 * time.Second, Timeout: 30 * time.Second})
	if !errors.Is(err, ErrExited) {
		t.Fatalf("error = %v, want ErrExited", err)
	}
	if !strings.Contains(err.Error(), "exit code 1") {
		t.Errorf("error does not contain the exit code 1")
	}
	within(t, "exit within MinUp", took, 3*time.Second)
}

// The events alone (no inspect fallback) see health and exits on this
// engine: the health_status filter matches "health_status: healthy".
func TestIntegrationGateEventsOnly(t *testing.T) {
	it := newITest(t, true)
	eventsOnly := &Checker{Engine: it.cli, poll: time.Hour}

	id := it.run("web-1")
	took, err := it.gateWith(eventsOnly, "events only, healthy", id, Spec{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	within(t, "healthy by event", took, 10*time.Second)

	id = it.run("web-2", "EXIT_AFTER=1s", "EXIT_CODE=4")
	took, err = it.gateWith(eventsOnly, "events only, exit", id, Spec{Timeout: 30 * time.Second})
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "exit code 4") {
		t.Fatalf("error = %v, want ErrExited with exit code 4", err)
	}
	within(t, "exit by event", took, 3*time.Second)
}

// g. Monitor fails at the container that exits, not at the window's end.
func TestIntegrationMonitor(t *testing.T) {
	it := newITest(t, false)
	steady := it.run("web-1")
	if _, err := it.gate("steady", steady, Spec{HTTP: &HTTPProbe{Path: "/healthz", Port: 8080}, Timeout: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	crashing := it.run("worker-1", "EXIT_AFTER=2s")

	start := time.Now()
	err := (&Checker{Engine: it.cli}).Monitor(t.Context(), []string{steady, crashing}, 5*time.Second)
	took := time.Since(start)
	t.Logf("Monitor took %v: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, ErrExited) {
		t.Fatalf("error = %v, want ErrExited", err)
	}
	for _, s := range []string{"monitor " + it.project + "-worker-1: container exited", "exit code 1", "EXIT_AFTER=2s elapsed"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not contain %q", s)
		}
	}
	if took < time.Second {
		t.Errorf("failed after %v, before the container exited", took)
	}
	within(t, "Monitor", took, 3500*time.Millisecond)

	// A quiet window passes.
	start = time.Now()
	if err := (&Checker{Engine: it.cli}).Monitor(t.Context(), []string{steady}, time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("quiet Monitor took %v", time.Since(start).Round(time.Millisecond))
}

// h. Exec: exit codes and output.
func TestIntegrationExec(t *testing.T) {
	it := newITest(t, true)
	id := it.run("web-1")
	if _, err := it.gate("healthy", id, Spec{Timeout: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	code, out, err := Exec(t.Context(), it.cli, id, []string{"/testapp", "check"})
	t.Logf("exec check: %v: exit code %d, output %q, err %v", time.Since(start).Round(time.Millisecond), code, out, err)
	if err != nil || code != 0 {
		t.Fatalf("Exec check = %d, %q, %v; want exit code 0", code, out, err)
	}

	start = time.Now()
	code, out, err = Exec(t.Context(), it.cli, id, []string{"/testapp", "check", "http://127.0.0.1:1/nothing"})
	t.Logf("exec bad check: %v: exit code %d, output %q, err %v", time.Since(start).Round(time.Millisecond), code, out, err)
	if err != nil || code == 0 {
		t.Fatalf("Exec bad check = %d, %q, %v; want a non-zero exit code", code, out, err)
	}
	if !strings.Contains(out, "testapp check: get http://127.0.0.1:1/nothing") {
		t.Errorf("output %q does not say what failed", out)
	}

	// An exec probe drives the gate too.
	took, err := it.gate("exec probe", id, Spec{Exec: []string{"/testapp", "check"}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	within(t, "exec probe", took, 5*time.Second)
}
