package integration

import (
	"bufio"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/testenv"
)

// What an nginx reload does to the connections Berth's drain counts and to
// the clients, measured with the real nginx of the Debian base image in the
// servers mode with upstream keepalive (the user's upstream block keeps 16
// idle connections per worker):
//
//  1. nginx keeps idle connections open to web; a reload's old workers
//     close them as they start shutting down, so the drain of a container
//     taken out of the upstreams is not held by them: the test measures
//     the time from the reload to no connection left.
//  2. A reload also closes nginx's idle keep-alive connections to its
//     clients, and a POST sent on one at that instant fails (Go's client
//     retries only idempotent requests): the test counts the failed POSTs
//     per reload of 4 clients that keep their connections open and POST
//     every 10 ms. BERTH_RELOADS sets the number of reloads (default 20).
func TestNginxReloadWithKeepAlive(t *testing.T) {
	if !testenv.Required() {
		t.Skip("needs the Debian base image (scripts/base-image.sh): runs under scripts/test.sh and in CI")
	}
	reloads := 20
	if v := os.Getenv("BERTH_RELOADS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("BERTH_RELOADS=%q: want a positive number", v)
		}
		reloads = n
	}
	docker := testenv.Docker(t)
	base := baseImage(t)
	reg := testenv.StartRegistry(t)
	nginxRef := reg.Ref("nginx:servers")
	buildNginx(t, base, nginxRef, "servers")
	reg.Push(t, docker, nginxRef)
	port := freePort(t)
	h := newHarness(t, `
services:
  web:
    image: $REGISTRY/web:v1
  nginx:
    image: $REGISTRY/nginx:servers
    ports: ["127.0.0.1:`+port+`:80"]
    depends_on: [web]
    x-berth:
      proxy: {fronts: ["web:8080"], servers: /etc/nginx/berth/servers}
`, options{reg: reg})
	h.image("web:v1", testenv.Image{Base: base, Healthcheck: true, Env: map[string]string{"VERSION": "v1", "REQUEST_DELAY": "20ms"}})
	h.start()
	h.deploy(0)
	url := "http://127.0.0.1:" + port + "/"
	httpDo(t, http.MethodGet, url, "")
	web, nginx := h.project+"-web-1", h.project+"-nginx-1"

	// 1. Idle upstream connections, and what a reload does to them.
	load := poll(t, url, 8)
	waitFor(t, func() bool { return load.ok.Load() > 100 })
	load.report(t, "GETs to open upstream connections")
	idle := established(t, web, 8080)
	if idle == 0 {
		t.Fatalf("no connection from nginx to %s is kept open: is upstream keepalive on?", web)
	}
	reloadNginx(t, nginx)
	reloaded := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	n := idle
	for n > 0 && time.Since(reloaded) < 10*time.Second {
		<-tick.C
		n = established(t, web, 8080)
	}
	gone := time.Since(reloaded)
	t.Logf("%d idle upstream connections to %s before the reload; none %s after it", idle, web, gone.Round(time.Millisecond))
	// The drain's first count comes 1 s after the reload (drainSettle);
	// each count here is a docker exec, which takes a while on a busy host.
	if n > 0 || gone > 3*time.Second {
		t.Errorf("%d idle upstream connections still open %s after the reload", n, gone)
	}

	// 2. POSTs on kept-alive client connections across reloads.
	posts := pollKeepAlive(t, http.MethodPost, url, 4)
	gets := poll(t, url, 4)
	waitFor(t, func() bool { return posts.ok.Load() > 50 })
	pause := time.NewTicker(300 * time.Millisecond)
	defer pause.Stop()
	for range reloads {
		<-pause.C
		reloadNginx(t, nginx)
	}
	<-pause.C
	posts.end()
	gets.report(t, "GETs on kept-alive connections across reloads")
	failed, ok := posts.failed.Load(), posts.ok.Load()
	posts.mu.Lock()
	lastErr := posts.lastErr
	posts.mu.Unlock()
	t.Logf("POSTs on kept-alive connections (4 clients, one every 10 ms each): %d answered, %d failed over %d reloads: %.3f failed POSTs per reload (last error: %s)",
		ok, failed, reloads, float64(failed)/float64(reloads), lastErr)
	// Each reload closes each client's idle connection at most once.
	if failed > int64(4*reloads) || ok == 0 {
		t.Errorf("%d POSTs failed over %d reloads of 4 clients, %d answered", failed, reloads, ok)
	}
}

// reloadNginx reloads the nginx in a container, as Berth does.
func reloadNginx(t *testing.T, name string) {
	t.Helper()
	if out, err := exec.CommandContext(t.Context(), "docker", "exec", name, "nginx", "-s", "reload").CombinedOutput(); err != nil {
		t.Fatalf("reload %s: %v\n%s", name, err, out)
	}
}

// established counts, inside a container, the established TCP connections
// to a local port, from /proc/net/tcp and tcp6.
func established(t *testing.T, name string, port int) int {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "docker", "exec", name, "cat", "/proc/net/tcp", "/proc/net/tcp6").Output()
	if err != nil {
		t.Fatalf("count the connections of %s: %v", name, err)
	}
	suffix := ":" + strings.ToUpper(strconv.FormatInt(int64(port), 16))
	n := 0
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 3 && strings.HasSuffix(f[1], suffix) && f[3] == "01" {
			n++
		}
	}
	return n
}
