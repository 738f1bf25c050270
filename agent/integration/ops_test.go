package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/image"
)

// TestMetricsAndNotifications scrapes /metrics after a good and a failed
// deploy, and checks a local webhook receives both, while a second webhook
// that never answers does not hold the deploys up beyond its timeout.
func TestMetricsAndNotifications(t *testing.T) {
	var mu sync.Mutex
	var got []map[string]any
	received := make(chan struct{}, 10)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		json.NewDecoder(r.Body).Decode(&body)
		mu.Lock()
		got = append(got, body)
		mu.Unlock()
		received <- struct{}{}
	}))
	defer receiver.Close()
	hang := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer hanging.Close()
	defer close(hang)

	port := freePort(t)
	h := newHarness(t, webStack, options{extra: fmt.Sprintf(`metrics:
  listen: 127.0.0.1:%s
notifications:
  - url: %s
  - url: %s
    format: slack
    timeout: 1s
    retries: 0
`, port, receiver.URL, hanging.URL)})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.image("web:bad", testenv.Image{Healthcheck: true, Env: map[string]string{"EXIT_AFTER": "0s"}})
	h.start()

	start := time.Now()
	h.deploy(0)
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the first deploy took %v", took)
	}
	h.deploy(api.ExitRolledBack, "--image", "web="+h.reg.Ref("web:bad"))
	for range 2 {
		select {
		case <-received:
		case <-time.After(30 * time.Second):
			t.Fatal("the webhook did not receive both notifications")
		}
	}
	mu.Lock()
	if got[0]["event"] != "success" || got[1]["event"] != "rollback" || got[0]["project"] != h.project {
		t.Errorf("notifications: %v", got)
	}
	mu.Unlock()

	resp, err := http.Get("http://127.0.0.1:" + port + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`berth_runs_total{kind="deploy",outcome="succeeded",project="%s"} 1`, h.project),
		fmt.Sprintf(`berth_runs_total{kind="deploy",outcome="rolled-back",project="%s"} 1`, h.project),
		fmt.Sprintf(`berth_live_release{project="%s"} 1`, h.project),
		`berth_build_info{`,
		fmt.Sprintf(`berth_deploy_duration_seconds_count{outcome="succeeded",project="%s"} 1`, h.project),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestRollbackAfterPrune: the prune job removes images no recorded
// release needs, and keeps those of the last releases, so a rollback to
// one of them works with the registry stopped.
func TestRollbackAfterPrune(t *testing.T) {
	h := newHarness(t, webStack, options{extra: `jobs:
  prune_images:
    schedule: "@every 2s"
    keep_releases: 2
`})
	// Images of their own (the project name in them): an image other tests
	// built identically would carry their tags too, and prune leaves an
	// image that anything else names.
	mine := func(v string) testenv.Image {
		return testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": v, "OWNER": h.project}}
	}
	v1 := h.image("web:v1", mine("v1"))
	h.image("web:v2", mine("v2"))
	v3 := h.image("web:v3", mine("v3"))
	// Only what agentd pulls by digest is on the engine.
	for _, tag := range []string{"v1", "v2", "v3"} {
		h.docker.ImageRemove(t.Context(), h.reg.Ref("web:"+tag), image.RemoveOptions{Force: true})
	}
	h.start()
	h.deploy(0)
	h.deploy(0, "--image", "web="+h.reg.Ref("web:v2"))
	h.deploy(0, "--image", "web="+h.reg.Ref("web:v3"))
	waitFor(t, func() bool {
		_, err := h.docker.ImageInspect(t.Context(), h.reg.Addr+"/web@"+v1)
		return err != nil
	})
	h.reg.Stop(t)
	if out, code := h.ctl("rollback", h.project); code != 0 {
		t.Fatalf("rollback to release 2 after the prune, registry stopped: exit %d\n%s", code, out)
	}
	if out, code := h.ctl("rollback", h.project, "--to", "1"); code != api.ExitBadRequest || !strings.Contains(out, "not all on this host") {
		t.Errorf("rollback to the pruned release 1: exit %d\n%s", code, out)
	}
	if img := h.containers()[h.project+"-web-1"].Image; strings.Contains(img, v3) {
		t.Errorf("web still runs v3 after the rollback")
	}
}
