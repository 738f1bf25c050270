package integration

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
)

const stack = `
services:
  web:
    image: $REGISTRY/web:v1
    depends_on: [db]
  worker:
    image: $REGISTRY/worker:v1
  db:
    image: $REGISTRY/db:v1
    environment:
      DATA_DIR: /data
      TUNING: "1"
    ports: ["127.0.0.1::8080"]
    volumes: [dbdata:/data]
volumes:
  dbdata:
`

// httpDo sends one request to the testapp in a container, retrying until
// it answers (the container may still be starting) or the deadline passes.
func httpDo(t *testing.T, method, url, body string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return string(b)
			}
			last = &statusError{resp.Status, string(b)}
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s %s: %v", method, url, last)
		case <-tick.C:
		}
	}
}

type statusError struct{ status, body string }

func (e *statusError) Error() string { return e.status + ": " + e.body }

func TestDeployLifecycle(t *testing.T) {
	h := newHarness(t, stack, options{})
	webV1 := h.image("web:v1", testenv.Image{Env: map[string]string{"VERSION": "web-v1"}})
	webV2 := h.image("web:v2", testenv.Image{Env: map[string]string{"VERSION": "web-v2"}})
	h.image("worker:v1", testenv.Image{Env: map[string]string{"VERSION": "worker-v1"}})
	h.image("db:v1", testenv.Image{Env: map[string]string{"VERSION": "db-v1"}})
	h.start()

	// 1. The three-service stack deploys; docker ps and docker-compose see it.
	out := h.deploy(0, "--message", "first")
	if !strings.Contains(out, "release 1 is live") {
		t.Errorf("deploy output does not say release 1 is live:\n%s", out)
	}
	cs := h.containers()
	if len(cs) != 3 {
		t.Fatalf("containers after first deploy: %v", names(h.ids()))
	}
	for _, svc := range []string{"web", "worker", "db"} {
		c, ok := cs[h.project+"-"+svc+"-1"]
		if !ok {
			t.Fatalf("no container for %s: %s", svc, names(h.ids()))
		}
		for k, want := range map[string]string{
			"com.docker.compose.project":          h.project,
			"com.docker.compose.service":          svc,
			"com.docker.compose.container-number": "1",
			"com.docker.compose.oneoff":           "False",
		} {
			if c.Labels[k] != want {
				t.Errorf("%s: label %s = %q, want %q", svc, k, c.Labels[k], want)
			}
		}
		if len(c.Labels["com.docker.compose.config-hash"]) != 64 {
			t.Errorf("%s: config-hash label %q", svc, c.Labels["com.docker.compose.config-hash"])
		}
		if c.State != "running" {
			t.Errorf("%s: state %s", svc, c.State)
		}
	}
	composePS(t, h)

	dbURL := func() string { return "http://127.0.0.1:" + h.hostPort(h.project+"-db-1") + "/data/order-1" }
	httpDo(t, http.MethodPut, dbURL(), "42 apples")

	// 2. Only web's image changes: only web is recreated.
	before := h.ids()
	h.deploy(0, "--image", "web="+h.reg.Ref("web:v2"), "--message", "web v2")
	after := h.ids()
	if after[h.project+"-web-1"] == before[h.project+"-web-1"] {
		t.Error("web was not recreated for its new image")
	}
	for _, svc := range []string{"worker", "db"} {
		name := h.project + "-" + svc + "-1"
		if after[name] != before[name] {
			t.Errorf("%s was recreated though it did not change", name)
		}
	}
	hist := h.history()
	if len(hist) != 2 || hist[0].Number != 2 || hist[1].Number != 1 {
		t.Fatalf("history after two deploys: %+v", hist)
	}
	if got := hist[0].Services["web"].Digest; got != webV2 {
		t.Errorf("release 2 web digest %s, want %s", got, webV2)
	}
	if got := hist[1].Services["web"].Digest; got != webV1 {
		t.Errorf("release 1 web digest %s, want %s", got, webV1)
	}
	if !strings.Contains(hist[0].Services["web"].Pinned, "@"+webV2) || hist[0].Identity == "" || hist[0].Outcome != api.OutcomeSucceeded {
		t.Errorf("release 2 record: %+v", hist[0])
	}
	if !strings.Contains(hist[0].Compose, "@"+webV2) {
		t.Errorf("release 2 does not record the compose file with pinned images:\n%s", hist[0].Compose)
	}

	// 3. The same release again touches nothing, quickly.
	before = h.ids()
	evs := h.deployEvents(0, "--image", "web="+h.reg.Ref("web:v2"))
	h.sameIDs(before, "redeploy of the same release")
	last := evs[len(evs)-1]
	if last.Type != api.EventResult || !strings.Contains(last.Message, "nothing to change") {
		t.Errorf("no-op result: %+v", last)
	}
	agentTime := last.Time.Sub(evs[0].Time)
	t.Logf("no-op redeploy took %v of agent time", agentTime)
	if agentTime > 500*time.Millisecond {
		t.Errorf("no-op redeploy took %v of agent time, want well under a second", agentTime)
	}
	if n := len(h.history()); n != 2 {
		t.Errorf("a no-op deploy recorded a release: %d releases", n)
	}

	// 5. A config change recreates the stop-first db; its volume's data stays.
	h.writeCompose(strings.Replace(stack, `TUNING: "1"`, `TUNING: "2"`, 1))
	before = h.ids()
	out = h.deploy(0, "--image", "web="+h.reg.Ref("web:v2"))
	if h.ids()[h.project+"-db-1"] == before[h.project+"-db-1"] {
		t.Error("db was not recreated for its config change")
	}
	if !strings.Contains(out, "service db (stop-first): recreate") || strings.Contains(out, "service web (") {
		t.Errorf("the plan should recreate only db, stop-first (it has a named volume):\n%s", out)
	}
	if got := httpDo(t, http.MethodGet, dbURL(), ""); got != "42 apples" {
		t.Errorf("data after db recreate = %q, want 42 apples", got)
	}

	// 6. A new image pushed under the same tag is a change.
	webV2b := h.image("web:v2", testenv.Image{Env: map[string]string{"VERSION": "web-v2b"}})
	if webV2b == webV2 {
		t.Fatal("rebuilt image has the same digest")
	}
	before = h.ids()
	h.deploy(0, "--image", "web="+h.reg.Ref("web:v2"))
	if h.ids()[h.project+"-web-1"] == before[h.project+"-web-1"] {
		t.Error("web was not recreated after its tag moved")
	}
	hist = h.history()
	if got := hist[0].Services["web"].Digest; got != webV2b {
		t.Errorf("release %d web digest %s, want the new %s", hist[0].Number, got, webV2b)
	}
	if got := httpDo(t, http.MethodGet, dbURL(), ""); got != "42 apples" {
		t.Errorf("data after all redeploys = %q", got)
	}

	// 7. History and the live release survive an agentd restart.
	st := h.status()
	h.stop()
	h.start()
	if got := h.history(); len(got) != len(hist) || got[0].Number != hist[0].Number || got[0].Services["web"].Digest != webV2b {
		t.Errorf("history after restart: %+v, want %+v", got, hist)
	}
	if got := h.status(); got.Current == nil || got.Current.Number != st.Current.Number {
		t.Errorf("live release after restart: %+v, want %d", got.Current, st.Current.Number)
	}
	text, _ := h.ctl("history", h.project)
	if !strings.Contains(text, "* release 4") || !strings.Contains(text, webV2b) {
		t.Errorf("history text:\n%s", text)
	}
}

// composePS checks that Debian's docker-compose (1.29) lists the project's
// containers, so operators' own tools keep working.
func composePS(t *testing.T, h *harness) {
	t.Helper()
	if _, err := exec.LookPath("docker-compose"); err != nil {
		if testenv.Required() {
			t.Fatal("docker-compose is not installed (scripts/setup-host.sh installs it)")
		}
		t.Log("docker-compose not installed: skipping the compatibility check")
		return
	}
	cmd := exec.Command("docker-compose", "-f", filepath.Join(h.dir, "compose.yaml"), "-p", h.project, "ps")
	cmd.Env = append(os.Environ(), "COMPOSE_INTERACTIVE_NO_CLI=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose ps: %v\n%s", err, out)
	}
	for _, svc := range []string{"web", "worker", "db"} {
		if !strings.Contains(string(out), h.project+"-"+svc+"-1") {
			t.Errorf("docker-compose ps does not list %s:\n%s", svc, out)
		}
	}
}

func TestBadRequestsChangeNothing(t *testing.T) {
	h := newHarness(t, stack, options{})
	h.image("web:v1", testenv.Image{})
	h.image("worker:v1", testenv.Image{})
	h.image("db:v1", testenv.Image{})
	h.start()
	h.deploy(0)
	before := h.ids()

	good, err := os.ReadFile(filepath.Join(h.dir, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		compose string
		args    []string
		want    string
	}{
		{name: "bad compose file", compose: "services:\n  web:\n    image: [unclosed\n", want: "compose.yaml"},
		{name: "unknown service", args: []string{"--image", "nope=" + h.reg.Ref("web:v1")}, want: "no service nope"},
		{name: "image that does not exist", args: []string{"--image", "web=" + h.reg.Ref("web:missing")}, want: "manifest unknown"},
		{name: "repository that does not exist", args: []string{"--image", "web=" + h.reg.Ref("nothere:v1")}, want: "nothere"},
		{name: "registry that does not answer", args: []string{"--image", "web=127.0.0.1:1/web:v1"}, want: "127.0.0.1:1"},
		{name: "malformed --image", args: []string{"--image", "web"}, want: "SERVICE=REF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.compose != "" {
				h.writeCompose(tc.compose)
				defer h.writeCompose(string(good))
			}
			out := h.deploy(api.ExitBadRequest, tc.args...)
			if !strings.Contains(out, tc.want) {
				t.Errorf("output does not mention %q:\n%s", tc.want, out)
			}
			h.sameIDs(before, tc.name)
		})
	}
	if n := len(h.history()); n != 1 {
		t.Errorf("refused deploys were recorded: %d releases", n)
	}
}

func TestLockedAndDenied(t *testing.T) {
	// web takes 3 s to stop, so a deploy that replaces it holds the lock.
	h := newHarness(t, `
services:
  web:
    image: $REGISTRY/web:v1
    environment:
      STOP_DELAY: 3s
`, options{})
	h.image("web:v1", testenv.Image{})
	h.image("web:v2", testenv.Image{Env: map[string]string{"VERSION": "v2"}})
	h.start()
	h.deploy(0)

	var wg sync.WaitGroup
	var slowOut string
	var slowCode int
	wg.Add(1)
	go func() {
		defer wg.Done()
		slowOut, slowCode = h.ctl("deploy", h.project, "--image", "web="+h.reg.Ref("web:v2"), "--message", "slow one")
	}()
	// Wait until the first deploy holds the lock.
	waitFor(t, func() bool { return h.status().Deploying != nil })
	out, code := h.ctl("deploy", h.project)
	if code != api.ExitLocked {
		t.Errorf("second deploy: exit %d, want 3\n%s", code, out)
	}
	for _, want := range []string{"local:root", "since", "slow one"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not name %q:\n%s", want, out)
		}
	}
	wg.Wait()
	if slowCode != 0 {
		t.Errorf("first deploy: exit %d\n%s", slowCode, slowOut)
	}
	if st := h.status(); st.Deploying != nil {
		t.Errorf("lock still held after the deploy: %+v", st.Deploying)
	}

	// A local user outside socket.allow_users gets 4 and changes nothing.
	d := newHarness(t, "services:\n  web:\n    image: $REGISTRY/web:v1\n", options{socket: "  allow_users: [nobody]\n"})
	d.image("web:v1", testenv.Image{})
	d.start()
	out, code = d.ctl("deploy", d.project)
	if code != api.ExitDenied || !strings.Contains(out, "not allowed") {
		t.Errorf("deploy by a user not in allow_users: exit %d, want 4\n%s", code, out)
	}
	if n := len(d.ids()); n != 0 {
		t.Errorf("refused deploy created %d containers", n)
	}
}
