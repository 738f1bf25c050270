package integration

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/image"
)

// poller sends GET requests to url until stopped, counting answers.
type poller struct {
	ok, failed atomic.Int64
	slowest    atomic.Int64 // nanoseconds
	mu         sync.Mutex
	bodies     map[string]int
	lastErr    string
	stop       chan struct{}
	done       chan struct{}
}

func poll(t *testing.T, url string, workers int) *poller {
	t.Helper()
	return pollWith(t, http.MethodGet, url, workers)
}

// pollWith is poll with another method; a POST sends a small body.
func pollWith(t *testing.T, method, url string, workers int) *poller {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	if method == http.MethodPost {
		// A new connection for every POST: nginx closes its idle keep-alive
		// connections when it reloads, and a POST sent on one just as it
		// closes comes back EOF; Go's client retries that only for
		// idempotent methods (2 of ~3,300 POSTs in a CI run). That race is
		// between the client and nginx, whatever the upstreams, and is not
		// what this test measures.
		client.Transport = &http.Transport{DisableKeepAlives: true}
	}
	return pollClient(t, method, url, workers, client)
}

// pollClient is pollWith with the given client.
func pollClient(t *testing.T, method, url string, workers int, client *http.Client) *poller {
	t.Helper()
	p := &poller{bodies: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-p.stop:
					return
				case <-tick.C:
				}
				start := time.Now()
				var body io.Reader
				if method == http.MethodPost {
					body = strings.NewReader(`{"name": "an order"}`)
				}
				req, err := http.NewRequest(method, url, body)
				if err != nil {
					p.fail(err.Error())
					return
				}
				resp, err := client.Do(req)
				if d := int64(time.Since(start)); d > p.slowest.Load() {
					p.slowest.Store(d)
				}
				if err != nil {
					p.fail(err.Error())
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					p.fail(resp.Status + " " + strings.TrimSpace(string(b)))
					continue
				}
				p.ok.Add(1)
				p.mu.Lock()
				p.bodies[strings.TrimSpace(string(b))]++
				p.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(p.done) }()
	t.Cleanup(p.end)
	return p
}

func (p *poller) fail(msg string) {
	p.failed.Add(1)
	p.mu.Lock()
	p.lastErr = msg
	p.mu.Unlock()
}

func (p *poller) end() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// report stops the poller, logs its counts and fails the test on any error.
func (p *poller) report(t *testing.T, what string) {
	t.Helper()
	p.end()
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Logf("%s: %d requests answered, %d failed, slowest %v, answers by body: %v", what, p.ok.Load(), p.failed.Load(), time.Duration(p.slowest.Load()).Round(time.Millisecond), p.bodies)
	if p.failed.Load() != 0 {
		t.Errorf("%s: %d requests failed (last: %s)", what, p.failed.Load(), p.lastErr)
	}
	if p.ok.Load() == 0 {
		t.Errorf("%s: no request was answered", what)
	}
}

// containerIP returns a container's address on its first network.
func (h *harness) containerIP(name string) string {
	h.t.Helper()
	c, err := h.docker.ContainerInspect(h.t.Context(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, n := range c.NetworkSettings.Networks {
		if n.IPAddress != "" {
			return n.IPAddress
		}
	}
	h.t.Fatalf("%s has no IP address", name)
	return ""
}

const webStack = `
services:
  web:
    image: $REGISTRY/web:v1
    deploy:
      update_config: {monitor: 2s}
`

// 1. A health check that never passes: the old container serves
// throughout, the deploy exits 1, the old release is live, and history
// says why.
func TestUnhealthyImageIsRolledBack(t *testing.T) {
	h := newHarness(t, webStack, options{})
	h.image("web:v1", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "v1"}})
	h.image("web:bad", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "bad", "HEALTH": "fail"}})
	h.start()
	h.deploy(0)
	before := h.ids()
	p := poll(t, "http://"+h.containerIP(h.project+"-web-1")+":8080/", 2)

	out := h.deploy(api.ExitRolledBack, "--image", "web="+h.reg.Ref("web:bad"))
	p.report(t, "the old container during the failed deploy")
	for _, want := range []string{"unhealthy", "release 1 is serving again"} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy output lacks %q:\n%s", want, out)
		}
	}
	h.sameIDs(before, "after the rollback")
	st := h.status()
	if st.Current == nil || st.Current.Number != 1 {
		t.Errorf("live release after the failure: %+v, want 1", st.Current)
	}
	hist := h.history()
	if hist[0].Number != 2 || hist[0].Outcome != api.OutcomeRolledBack || hist[0].RestoredTo != 1 || !strings.Contains(hist[0].Error, "unhealthy") {
		t.Errorf("release 2 record: %+v", hist[0])
	}
}

// 2. An image that exits at once fails the gate in seconds, not at the
// health timeout (2 minutes by default).
func TestExitingImageFailsFast(t *testing.T) {
	h := newHarness(t, webStack, options{})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.image("web:crash", testenv.Image{Healthcheck: true, Env: map[string]string{"EXIT_AFTER": "0s", "EXIT_CODE": "3"}})
	h.start()
	h.deploy(0)
	start := time.Now()
	out := h.deploy(api.ExitRolledBack, "--image", "web="+h.reg.Ref("web:crash"))
	took := time.Since(start)
	t.Logf("a crashing image was rolled back in %v", took)
	if took > 15*time.Second {
		t.Errorf("the failed deploy took %v: the gate waited instead of failing at once", took)
	}
	if !strings.Contains(out, "exit code 3") {
		t.Errorf("output does not give the exit code:\n%s", out)
	}
}

// 2b. A stack that Debian's docker-compose started, and a first Berth
// release over it that fails: there is no earlier release to go back to,
// so the release is undone and the very containers compose started run
// again under their names (the database, replaced before web failed,
// included), with the data in their volume.
func TestFailedFirstReleaseOverComposeStack(t *testing.T) {
	if _, err := exec.LookPath("docker-compose"); err != nil {
		if testenv.Required() {
			t.Fatal("docker-compose is not installed (scripts/setup-host.sh installs it)")
		}
		t.Skip("docker-compose not installed")
	}
	h := newHarness(t, stack, options{})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.image("worker:v1", testenv.Image{})
	h.image("db:v1", testenv.Image{Healthcheck: true})
	h.image("web:crash", testenv.Image{Healthcheck: true, Env: map[string]string{"EXIT_AFTER": "0s", "EXIT_CODE": "3"}})
	up := exec.Command("docker-compose", "-f", filepath.Join(h.dir, "compose.yaml"), "-p", h.project, "up", "-d")
	up.Env = append(os.Environ(), "COMPOSE_INTERACTIVE_NO_CLI=1")
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("docker-compose up: %v\n%s", err, out)
	}
	before := h.ids()
	var db string
	for name := range before {
		if strings.Contains(name, "db") {
			db = name
		}
	}
	if len(before) != 3 || db == "" {
		t.Fatalf("docker-compose started %s", names(before))
	}
	dbURL := "http://127.0.0.1:" + h.hostPort(db) + "/data/k"
	httpDo(t, http.MethodPut, dbURL, "kept")

	h.start()
	out := h.deploy(api.ExitRolledBack, "--image", "web="+h.reg.Ref("web:crash"))
	for _, want := range []string{"removing " + h.project + "-db-1", "starting " + db + " again", "was undone"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	h.sameIDs(before, "after the failed first release")
	for name, c := range h.containers() {
		if c.State != "running" {
			t.Errorf("%s is %s after the undo", name, c.State)
		}
	}
	if got := httpDo(t, http.MethodGet, "http://127.0.0.1:"+h.hostPort(db)+"/data/k", ""); got != "kept" {
		t.Errorf("the database's data after the undo: %q, want %q", got, "kept")
	}
	if hist := h.history(); len(hist) != 1 || hist[0].Outcome != api.OutcomeRolledBack {
		t.Errorf("history: %+v", hist)
	}
	if st := h.status(); st.Current != nil {
		t.Errorf("a live release after the failed first one: %+v", st.Current)
	}
}

// 3. Healthy at first, then a crash inside the monitor window: rolled back.
func TestCrashInMonitorWindowIsRolledBack(t *testing.T) {
	h := newHarness(t, `
services:
  web:
    image: $REGISTRY/web:v1
    deploy:
      update_config: {monitor: 8s}
      rollback_config: {monitor: 1s}
`, options{})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.image("web:late", testenv.Image{Healthcheck: true, Env: map[string]string{"EXIT_AFTER": "4s"}})
	h.start()
	h.deploy(0)
	before := h.ids()
	out := h.deploy(api.ExitRolledBack, "--image", "web="+h.reg.Ref("web:late"))
	if !strings.Contains(out, "monitor window") {
		t.Errorf("output does not blame the monitor window:\n%s", out)
	}
	h.sameIDs(before, "after the rollback")
}

// 4. A failing pre-deploy hook: nothing switched, exit 1, its output shown.
func TestFailingHookSwitchesNothing(t *testing.T) {
	h := newHarness(t, webStack, options{})
	h.image("web:v1", testenv.Image{})
	h.image("web:v2", testenv.Image{Env: map[string]string{"VERSION": "v2"}})
	h.start()
	h.deploy(0)
	before := h.ids()
	// The hook runs the image's entrypoint (/testapp) with the hook's
	// command as its arguments: "check URL" fails against a port nothing
	// listens on, and says so.
	h.writeCompose(webStack + `    x-berth:
      pre_deploy:
        - command: ["check", "http://127.0.0.1:1/migrate"]
`)
	out := h.deploy(api.ExitRolledBack, "--image", "web="+h.reg.Ref("web:v2"))
	for _, want := range []string{"pre-deploy hook", "exited 1", "testapp check:", "127.0.0.1:1"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	h.sameIDs(before, "after the failed hook")
	if hist := h.history(); hist[0].Outcome != api.OutcomeRolledBack || !strings.Contains(hist[0].Error, "pre-deploy hook") {
		t.Errorf("release 2: %+v", hist[0])
	}
}

// 5. Two services change and the second fails: the first goes back too.
func TestSecondServiceFailingRollsBackTheFirst(t *testing.T) {
	h := newHarness(t, `
services:
  web:
    image: $REGISTRY/web:v1
    deploy:
      update_config: {monitor: 1s}
  worker:
    image: $REGISTRY/worker:v1
    depends_on: [web]
    deploy:
      update_config: {monitor: 1s}
`, options{})
	webV1 := h.image("web:v1", testenv.Image{Healthcheck: true})
	h.image("web:v2", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "v2"}})
	h.image("worker:v1", testenv.Image{Healthcheck: true})
	h.image("worker:v2", testenv.Image{Healthcheck: true, Env: map[string]string{"EXIT_AFTER": "0s"}})
	h.start()
	h.deploy(0)
	before := h.ids()
	out := h.deploy(api.ExitRolledBack, "--image", "web="+h.reg.Ref("web:v2"), "--image", "worker="+h.reg.Ref("worker:v2"))
	if !strings.Contains(out, "[web] ready") {
		t.Errorf("web's new container was never ready, so this shows nothing:\n%s", out)
	}
	h.sameIDs(before, "after the rollback")
	web := h.containers()[h.project+"-web-1"]
	if !strings.Contains(web.Image, webV1) || web.State != "running" {
		t.Errorf("web after the rollback: %s %s, want v1 (%s) running", web.Image, web.State, webV1)
	}
}

// 6. agentd killed with SIGKILL in the middle of a rollout: see
// TestFaults (faults_test.go), which kills it at each phase of a release.

// 7. Two deploys of one project: one runs, the other exits 3 naming the
// holder (see TestLockedAndDenied); two projects deploy at the same time.
func TestTwoProjectsDeployInParallel(t *testing.T) {
	slow := `
services:
  web:
    image: $REGISTRY/web:v1
    deploy:
      update_config: {monitor: 1s}
`
	h := newHarness(t, slow, options{second: slow})
	h.image("web:v1", testenv.Image{Healthcheck: true, Env: map[string]string{"HEALTHY_AFTER": "3s"}})
	h.start()
	type result struct {
		code       int
		start, end time.Time
	}
	results := make([]result, 2)
	var wg sync.WaitGroup
	for i, p := range []string{h.project, h.project + "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, code := h.ctl("deploy", p)
			results[i] = result{code, start, time.Now()}
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 {
			t.Errorf("project %d: exit %d", i, r.code)
		}
	}
	a, b := results[0], results[1]
	if !(a.start.Before(b.end) && b.start.Before(a.end)) {
		t.Errorf("the deploys did not overlap: %v-%v and %v-%v", a.start, a.end, b.start, b.end)
	}
	t.Logf("deploys took %v and %v, side by side", a.end.Sub(a.start), b.end.Sub(b.start))
}

// 8. agentctl rollback restores a release by digest with the registry
// stopped, and says clearly when an image is not on the host.
func TestRollbackWithRegistryStopped(t *testing.T) {
	h := newHarness(t, webStack, options{})
	v1 := h.image("web:v1", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "v1"}})
	v2 := h.image("web:v2", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "v2"}})
	h.start()
	h.deploy(0)
	h.deploy(0, "--image", "web="+h.reg.Ref("web:v2"))

	// v1 is not on the host and the registry is down: a clear refusal.
	h.reg.Stop(t)
	if _, err := h.docker.ImageRemove(t.Context(), h.reg.Addr+"/web@"+v1, image.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	out, code := h.ctl("rollback", h.project)
	if code != api.ExitBadRequest || !strings.Contains(out, "not all on this host") {
		t.Errorf("rollback with v1 gone and the registry down: exit %d, want 2 with a clear reason\n%s", code, out)
	}

	// With the registry back, the image is pulled again.
	h.reg.Start(t)
	if out, code := h.ctl("rollback", h.project, "-m", "v2 is broken"); code != 0 {
		t.Fatalf("rollback: exit %d\n%s", code, out)
	}
	if img := h.containers()[h.project+"-web-1"].Image; !strings.Contains(img, v1) {
		t.Errorf("after rollback web runs %s, want v1 %s", img, v1)
	}

	// Registry down, images on disk: back to release 2 by digest.
	h.reg.Stop(t)
	out, code = h.ctl("rollback", h.project, "--to", "2")
	if code != 0 {
		t.Fatalf("rollback --to 2 with the registry stopped: exit %d\n%s", code, out)
	}
	if img := h.containers()[h.project+"-web-1"].Image; !strings.Contains(img, v2) {
		t.Errorf("after rollback --to 2 web runs %s, want v2 %s", img, v2)
	}
	hist := h.history()
	if hist[0].Kind != api.KindRollback || hist[0].RollbackOf != 2 || hist[0].Services["web"].Digest != v2 || hist[1].RollbackOf != 1 {
		t.Errorf("history after the rollbacks: %+v", hist[:2])
	}
	if out, code := h.ctl("rollback", h.project, "--to", "99"); code != api.ExitBadRequest {
		t.Errorf("rollback to a release that does not exist: exit %d\n%s", code, out)
	}
}

// lock and unlock hold deploys; --wait waits for a lock to free up.
func TestOperatorLockAndWait(t *testing.T) {
	h := newHarness(t, `
services:
  web:
    image: $REGISTRY/web:v1
    environment:
      STOP_DELAY: 3s
    deploy:
      update_config: {monitor: 1s}
`, options{})
	h.image("web:v1", testenv.Image{})
	h.image("web:v2", testenv.Image{Env: map[string]string{"VERSION": "v2"}})
	h.start()
	h.deploy(0)

	if out, code := h.ctl("lock", h.project, "-m", "database migration"); code != 0 {
		t.Fatalf("lock: exit %d\n%s", code, out)
	}
	out, code := h.ctl("deploy", h.project, "--image", "web="+h.reg.Ref("web:v2"))
	if code != api.ExitLocked || !strings.Contains(out, "database migration") || !strings.Contains(out, "local:root") {
		t.Errorf("deploy while locked: exit %d, want 3 naming who and why\n%s", code, out)
	}
	if st := h.status(); st.Locked == nil {
		t.Error("status does not show the lock")
	}
	// The hold survives an agentd restart.
	h.stop()
	h.start()
	if _, code := h.ctl("rollback", h.project); code != api.ExitLocked {
		t.Errorf("rollback while locked after a restart: exit %d, want 3", code)
	}
	if out, code := h.ctl("unlock", h.project); code != 0 || !strings.Contains(out, "unlocked") {
		t.Fatalf("unlock: exit %d\n%s", code, out)
	}

	// A deploy that waits for a running one goes through after it.
	first := make(chan int, 1)
	go func() {
		_, code := h.ctl("deploy", h.project, "--image", "web="+h.reg.Ref("web:v2"))
		first <- code
	}()
	waitFor(t, func() bool { return h.status().Deploying != nil })
	out, code = h.ctl("deploy", h.project, "--wait", "60s")
	if code != 0 {
		t.Errorf("deploy --wait: exit %d\n%s", code, out)
	}
	if c := <-first; c != 0 {
		t.Errorf("first deploy: exit %d", c)
	}
}

// 9. A start-first rollout of web behind a real nginx (from the Debian
// base image) under continuous HTTP load: zero failed requests. With
// nginx resolving web through Docker's DNS, GETs (nginx retries them on
// another upstream); with an upstreams file Berth writes, POSTs too: the
// old containers are out of nginx and drained before they stop. With the
// servers files Berth writes into the user's own upstream block, which
// keeps idle connections to web open (keepalive 16), the same, and the
// drain of each old container is not held by those idle connections.
func TestStartFirstBehindNginxUnderLoad(t *testing.T) {
	if !testenv.Required() {
		t.Skip("needs the Debian base image (scripts/base-image.sh): runs under scripts/test.sh and in CI")
	}
	docker := testenv.Docker(t)
	base := baseImage(t)
	reg := testenv.StartRegistry(t)
	for _, tc := range []struct {
		mode    string
		proxy   string
		reloads int // by a start-first rollout of two replicas, one at a time
	}{
		{"dns", "{fronts: [web]}", 4},
		{"upstreams", "{fronts: [\"web:8080\"], upstreams: /etc/nginx/berth/upstreams.conf}", 2},
		{"servers", "{fronts: [\"web:8080\"], servers: /etc/nginx/berth/servers, server_parameters: \"max_fails=1 fail_timeout=5s\"}", 2},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			nginxRef := reg.Ref("nginx:" + tc.mode)
			buildNginx(t, base, nginxRef, tc.mode)
			reg.Push(t, docker, nginxRef)
			port := freePort(t)
			h := newHarness(t, `
services:
  web:
    image: $REGISTRY/web:v1
    deploy:
      replicas: 2
      update_config: {monitor: 2s}
    stop_grace_period: 10s
  nginx:
    image: $REGISTRY/nginx:`+tc.mode+`
    ports: ["127.0.0.1:`+port+`:80"]
    depends_on: [web]
    healthcheck:
      test: ["CMD", "curl", "-fsS", "http://127.0.0.1/"]
      interval: 1s
    x-berth:
      proxy: `+tc.proxy+`
`, options{reg: reg})
			// Like gunicorn's sync workers: two requests at a time, 20 ms
			// each, the rest waiting in the listen queue, which the kernel
			// resets when the listener closes at SIGTERM. With upstream
			// keepalive, like gunicorn's gthread workers (or uvicorn): a
			// connection nginx keeps idle must not hold a worker.
			app := map[string]string{"WORKERS": "2", "REQUEST_DELAY": "20ms"}
			if tc.mode == "servers" {
				delete(app, "WORKERS")
			}
			h.image("web:v1", testenv.Image{Base: base, Healthcheck: true, Env: with(app, "VERSION", "v1")})
			h.image("web:v2", testenv.Image{Base: base, Healthcheck: true, Env: with(app, "VERSION", "v2")})
			h.start()
			h.deploy(0)
			url := "http://127.0.0.1:" + port + "/"
			httpDo(t, http.MethodGet, url, "")

			// GETs keep their connections open; POSTs open one per request
			// (see pollWith). The keep-alive POSTs are measured apart: a
			// reload may close their connection as one is sent.
			pollers := map[string]*poller{http.MethodGet: poll(t, url, 4)}
			var keptPOSTs *poller
			if tc.mode != "dns" {
				pollers[http.MethodPost] = pollWith(t, http.MethodPost, url, 4)
				keptPOSTs = pollKeepAlive(t, http.MethodPost, url, 4)
			}
			for _, p := range pollers {
				waitFor(t, func() bool { return p.ok.Load() > 50 })
			}
			out := h.deploy(0, "--image", "web="+h.reg.Ref("web:v2"))
			for method, p := range pollers {
				waitFor(t, func() bool {
					p.mu.Lock()
					defer p.mu.Unlock()
					return p.bodies["v2"] > 50
				})
				p.report(t, method+"s through nginx during a start-first rollout")
			}
			if keptPOSTs != nil {
				keptPOSTs.end()
				// Each reload closes each idle client connection once: at
				// most one POST per client and reload can meet it.
				failed, ok := keptPOSTs.failed.Load(), keptPOSTs.ok.Load()
				keptPOSTs.mu.Lock()
				lastErr := keptPOSTs.lastErr
				keptPOSTs.mu.Unlock()
				t.Logf("POSTs on kept-alive client connections: %d answered, %d failed over %d reloads (last error: %s)", ok, failed, tc.reloads, lastErr)
				if failed > int64(4*tc.reloads) || ok == 0 {
					t.Errorf("POSTs on kept-alive connections: %d failed over %d reloads by 4 clients, %d answered", failed, tc.reloads, ok)
				}
			}
			if t.Failed() {
				logs, _ := exec.Command("docker", "logs", "--timestamps", h.project+"-nginx-1").CombinedOutput()
				t.Logf("deploy:\n%s\nnginx log:\n%s", out, logs)
			}
			if want := fmt.Sprintf("[nginx] reloaded %d times in this rollout", tc.reloads); !strings.Contains(out, want) {
				t.Errorf("the deploy's output lacks %q:\n%s", want, out)
			}
			if tc.mode == "dns" {
				return
			}
			drains := drained.FindAllStringSubmatch(out, -1)
			if len(drains) != 2 {
				t.Fatalf("the two old containers were not drained:\n%s", out)
			}
			for _, m := range drains {
				d, err := time.ParseDuration(m[2])
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("drained %s in %s (proxy.drain: %s)", m[1], d, compose.DefaultDrain)
				// The drain waits 1 s after the reload, then for the
				// connections to the old container: idle keep-alive ones
				// from nginx's old workers are closed as they shut down.
				if d > 5*time.Second {
					t.Errorf("draining %s took %s, want well under proxy.drain (%s)", m[1], d, compose.DefaultDrain)
				}
			}
		})
	}
}

// drained matches the drain's progress line: container and time taken.
var drained = regexp.MustCompile(`drained (\S+) in (\S+)`)

// pollKeepAlive is pollWith whose clients keep their connections open
// whatever the method.
func pollKeepAlive(t *testing.T, method, url string, workers int) *poller {
	t.Helper()
	return pollClient(t, method, url, workers, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}})
}

// with returns a copy of env with key set to value.
func with(env map[string]string, key, value string) map[string]string {
	out := maps.Clone(env)
	out[key] = value
	return out
}

// waitFor polls cond on a ticker for up to 30 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not met within 30s")
		case <-tick.C:
		}
	}
}

func baseImage(t *testing.T) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "../../scripts/base-image.sh").Output()
	if err != nil {
		t.Fatalf("base-image.sh: %v\n%s", err, stderrOf(err))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// buildNginx builds an nginx image on the Debian base image whose config
// proxies to the web service the way a Django stack's nginx does, by mode:
// "dns", by the service's name; "upstreams", through the upstream block in
// the file Berth writes; "servers", through the user's own upstream block
// (least_conn, keepalive 16) that includes the server lines Berth writes.
// The image's own copies name the service, for a start without Berth.
func buildNginx(t *testing.T, base, ref, mode string) {
	t.Helper()
	dir := t.TempDir()
	include, pass, keepalive := "", "http://web:8080", ""
	switch mode {
	case "upstreams":
		include, pass = "include /etc/nginx/berth/upstreams.conf;", "http://web"
	case "servers":
		include = "upstream web { least_conn; keepalive 16; include /etc/nginx/berth/servers/web.conf; }"
		pass = "http://web"
		// Upstream keepalive needs HTTP/1.1 and no "Connection: close".
		keepalive = "proxy_http_version 1.1; proxy_set_header Connection \"\";"
	}
	conf := `worker_processes 2;
error_log stderr warn;
pid /run/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    ` + include + `
    server {
        listen 80;
        location / {
            proxy_pass ` + pass + `;
            ` + keepalive + `
            # The one setting Berth asks of a proxy: upstreams are on this
            # host, so a connection that is not answered in 2s is to a
            # container that has just stopped; go to the next one.
            proxy_connect_timeout 2s;
        }
    }
}
`
	files := map[string]string{
		"nginx.conf":     conf,
		"upstreams.conf": "upstream web { server web:8080; }\n",
		"web.conf":       "server web:8080;\n",
		"Dockerfile": "FROM " + base + "\nCOPY nginx.conf /etc/nginx/nginx.conf\nCOPY upstreams.conf /etc/nginx/berth/upstreams.conf\n" +
			"COPY web.conf /etc/nginx/berth/servers/web.conf\n" +
			"STOPSIGNAL SIGQUIT\nCMD [\"nginx\", \"-g\", \"daemon off;\"]\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.CommandContext(t.Context(), "docker", "build", "-q", "-t", ref, dir).CombinedOutput(); err != nil {
		t.Fatalf("build nginx image: %v\n%s", err, out)
	}
}

// freePort returns a TCP port free on 127.0.0.1 right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
