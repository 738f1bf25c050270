package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
)

// graceStack: worker takes 30 s to stop after SIGTERM (STOP_DELAY in its
// images) but has a grace period of 2 s; web stops at once.
const graceStack = `
services:
  web:
    image: $REGISTRY/web:v1
  worker:
    image: $REGISTRY/worker:v1
    stop_grace_period: 2s
`

// TestKilledAtEndOfGracePeriodIsReported: a worker that outlives its
// grace period is killed by the engine when a release replaces it, and
// when the rollback of a failed release stops the failed one. Each time
// the deploy's output says so, history --json records it on the release
// (service, container, grace period, how long the stop took, when), and
// /metrics counts it. web, which stops in time, appears in none of them.
func TestKilledAtEndOfGracePeriodIsReported(t *testing.T) {
	port := freePort(t)
	h := newHarness(t, graceStack, options{extra: fmt.Sprintf("metrics:\n  listen: 127.0.0.1:%s\n", port)})
	// Images of their own (the project name in them), so no other test's
	// image carries these tags.
	img := func(env ...string) testenv.Image {
		m := map[string]string{"OWNER": h.project}
		for i := 0; i+1 < len(env); i += 2 {
			m[env[i]] = env[i+1]
		}
		return testenv.Image{Healthcheck: true, Env: m}
	}
	h.image("web:v1", img("VERSION", "v1"))
	h.image("web:v2", img("VERSION", "v2"))
	h.image("worker:v1", img("VERSION", "v1", "STOP_DELAY", "30s"))
	h.image("worker:v2", img("VERSION", "v2", "STOP_DELAY", "30s"))
	h.image("worker:bad", img("VERSION", "bad", "STOP_DELAY", "30s", "HEALTH", "fail"))
	h.start()

	if out := h.deploy(0); strings.Contains(out, "killed") {
		t.Errorf("the first release stopped nothing, yet says:\n%s", out)
	}

	// Release 2 replaces both: the old worker is killed, the old web not.
	out := h.deploy(0, "--image", "web="+h.reg.Ref("web:v2"), "--image", "worker="+h.reg.Ref("worker:v2"))
	t.Logf("release 2:\n%s", out)
	warning := "[worker] warning: " + h.project + "-worker-1-retired-"
	says := "was killed at the end of its grace period: it had not exited 2s after SIGTERM, so the engine sent SIGKILL (exit code 137; the stop took "
	if lines := grepLines(out, "killed at the end of its grace period"); len(lines) != 1 || !strings.Contains(lines[0], warning) || !strings.Contains(lines[0], says) ||
		!strings.Contains(lines[0], "raise stop_grace_period (2s) if worker needs longer to stop") {
		t.Errorf("release 2's output should warn once that the old worker was killed, says:\n%s", strings.Join(lines, "\n"))
	}

	// Release 3's worker never turns healthy: its rollback stops it, and
	// it is killed too.
	out = h.deploy(api.ExitRolledBack, "--image", "worker="+h.reg.Ref("worker:bad"))
	t.Logf("release 3:\n%s", out)
	if lines := grepLines(out, "killed at the end of its grace period"); len(lines) != 1 || !strings.Contains(lines[0], "[worker] warning: "+h.project+"-worker-1 was killed") {
		t.Errorf("release 3's rollback should warn once that the failed worker was killed, says:\n%s", strings.Join(lines, "\n"))
	}

	hist := h.history()
	if len(hist) != 3 {
		t.Fatalf("history has %d releases, want 3", len(hist))
	}
	for _, c := range []struct {
		rel       api.Release
		container string
		during    string
	}{
		{hist[1], h.project + "-worker-1-retired-", api.StopDuringRollout},
		{hist[0], h.project + "-worker-1", api.StopDuringRollback},
	} {
		k := c.rel.KilledOnStop
		if len(k) != 1 {
			t.Errorf("release %d: killed_on_stop = %+v, want the worker alone", c.rel.Number, k)
			continue
		}
		if k[0].Service != "worker" || !strings.HasPrefix(k[0].Container, c.container) || k[0].Signal != "SIGTERM" || k[0].GracePeriod != 2 || k[0].During != c.during {
			t.Errorf("release %d: killed_on_stop = %+v, want worker's %s, SIGTERM, 2 s, during %s", c.rel.Number, k[0], c.container, c.during)
		}
		// The engine kills at 2 s; the app would have taken 30 s.
		if k[0].StoppedAfter < 2 || k[0].StoppedAfter > 20 {
			t.Errorf("release %d: stopped after %gs, want between 2 and 20", c.rel.Number, k[0].StoppedAfter)
		}
		t.Logf("release %d: %+v", c.rel.Number, k[0])
	}
	if k := hist[2].KilledOnStop; len(k) != 0 {
		t.Errorf("release 1 stopped nothing, killed_on_stop = %+v", k)
	}
	text, code := h.ctl("history", h.project)
	if code != 0 || !strings.Contains(text, "killed on stop: worker "+h.project+"-worker-1-retired-") {
		t.Errorf("history (exit %d) does not name the killed worker:\n%s", code, text)
	}

	resp, err := http.Get("http://127.0.0.1:" + port + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`berth_container_stop_killed_total{project="%s",service="worker"} 2`, h.project),
		fmt.Sprintf(`berth_container_stop_killed_total{project="%s",service="web"} 0`, h.project),
		fmt.Sprintf(`berth_container_stop_killed_grace_seconds{project="%s",service="worker"} 2`, h.project),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// grepLines returns the lines of out that contain word.
func grepLines(out, word string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, word) {
			lines = append(lines, l)
		}
	}
	return lines
}
