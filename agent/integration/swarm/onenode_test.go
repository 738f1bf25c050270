package swarm

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// oneNodeCompose is the stack of the one-node test: web (a compose
// healthcheck, dnsrr, two replicas, each publishing 8080 on an ephemeral
// host port) and a worker. web depends on worker so that, in the broken
// release, worker has updated fine before web fails.
const oneNodeCompose = `
services:
  worker:
    image: $REGISTRY/worker:w1
    deploy:
      endpoint_mode: dnsrr
  web:
    image: $REGISTRY/web:v1
    depends_on: [worker]
    ports:
      - target: 8080
        mode: host
    healthcheck:
      test: ["CMD", "/testapp", "check"]
      interval: 1s
      timeout: 2s
      retries: 3
      start_period: 3s
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      update_config:
        order: start-first
        monitor: 2s
$HOOK`

// failingHook is web's pre-deploy hook that fails: testapp (the image's
// entrypoint) checks a port nothing listens on.
const failingHook = `    x-berth:
      pre_deploy:
        - command: ["check", "http://127.0.0.1:1/"]
          timeout: 1m
`

// TestSwarmOneNodeCycle runs the whole life of a swarm project on the test
// engine's one-node swarm: deploy, deploy v2, a broken release rolled back
// whole (the worker that updated fine too), agentctl rollback, a failing
// pre-deploy hook that switches nothing, and agentctl status.
func TestSwarmOneNodeCycle(t *testing.T) {
	docker := testenv.Docker(t)
	testenv.SwarmManager(t, docker)
	reg := testenv.StartRegistry(t)
	ctx := t.Context()

	pins := map[string]string{}
	for _, im := range []struct {
		name string
		img  testenv.Image
	}{
		{"web:v1", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "v1"}}},
		{"web:v2", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "v2"}}},
		{"web:bad", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "bad", "HEALTH": "fail"}}},
		{"worker:w1", testenv.Image{Env: map[string]string{"VERSION": "w1"}}},
		{"worker:w2", testenv.Image{Env: map[string]string{"VERSION": "w2"}}},
		{"worker:w3", testenv.Image{Env: map[string]string{"VERSION": "w3"}}},
	} {
		digest := testenv.BuildAndPush(t, docker, reg.Ref(im.name), im.img)
		repo := reg.Ref(strings.Split(im.name, ":")[0])
		pins[im.name] = repo + "@" + digest
	}
	vars := map[string]string{"$REGISTRY": reg.Addr, "$HOOK": ""}
	h := newHarness(t, docker, nil, oneNodeCompose, vars)
	h.start()

	// 1. The first release.
	_, took := h.deploy(0)
	svcs := h.services()
	t.Logf("release 1 deployed in %s: services %v", took.Round(100*time.Millisecond), keys(svcs))
	if len(svcs) != 2 {
		t.Fatalf("the stack has services %v, want web and worker", keys(svcs))
	}
	for name, s := range svcs {
		if s.Spec.Name != h.project+"_"+name {
			t.Errorf("service %s is named %s, want %s_%s", name, s.Spec.Name, h.project, name)
		}
		for _, l := range []string{stackLabel, "com.docker.stack.image", "io.berth.spec-hash", "io.berth.release"} {
			if s.Spec.Labels[l] == "" {
				t.Errorf("service %s has no label %s: %v", name, l, s.Spec.Labels)
			}
		}
		if s.Spec.Labels[stackLabel] != h.project {
			t.Errorf("service %s: %s=%q", name, stackLabel, s.Spec.Labels[stackLabel])
		}
	}
	wantImages(t, h, map[string]string{"web": pins["web:v1"], "worker": pins["worker:w1"]}, "release 1")
	if m := svcs["web"].Spec.EndpointSpec; m == nil || m.Mode != swarm.ResolutionModeDNSRR {
		t.Errorf("web's endpoint spec %+v, want dnsrr", m)
	}
	wantServing(t, h, "v1")

	// 2. Release 2: both services change; the release records their specs.
	before := h.services()
	_, took = h.deploy(0, "--image", "web="+reg.Ref("web:v2"), "--image", "worker="+reg.Ref("worker:w2"))
	t.Logf("release 2 deployed in %s", took.Round(100*time.Millisecond))
	wantImages(t, h, map[string]string{"web": pins["web:v2"], "worker": pins["worker:w2"]}, "release 2")
	after := h.services()
	for name := range before {
		if after[name].ID != before[name].ID {
			t.Errorf("%s was recreated (%s -> %s), not updated", name, before[name].ID, after[name].ID)
		}
	}
	wantServing(t, h, "v2")
	rec := h.recorded(2)
	for _, s := range rec.Services {
		if s.Swarm == nil || s.Swarm.TaskTemplate.ContainerSpec == nil {
			t.Errorf("release 2 records no Swarm spec for %s", s.Name)
			continue
		}
		want := map[string]string{"web": pins["web:v2"], "worker": pins["worker:w2"]}[s.Name]
		if got := s.Swarm.TaskTemplate.ContainerSpec.Image; got != want {
			t.Errorf("release 2 records %s's image %s, want %s", s.Name, got, want)
		}
	}
	v2 := h.services()

	// 3. A broken release: worker updates fine, web's new tasks never turn
	// healthy: exit 1, and both are back on release 2's specs.
	_, took = h.deploy(1, "--image", "web="+reg.Ref("web:bad"), "--image", "worker="+reg.Ref("worker:w3"))
	t.Logf("broken release failed and rolled back in %s", took.Round(100*time.Millisecond))
	wantImages(t, h, map[string]string{"web": pins["web:v2"], "worker": pins["worker:w2"]}, "after the broken release")
	back := h.services()
	if prev := back["worker"].PreviousSpec; prev == nil || prev.TaskTemplate.ContainerSpec == nil ||
		prev.TaskTemplate.ContainerSpec.Image != pins["worker:w3"] {
		t.Errorf("worker's previous spec is not w3's: it was not updated by the broken release, or not rolled back from it (%+v)", prev)
	}
	for name, s := range back {
		if s.Spec.Labels["io.berth.spec-hash"] != v2[name].Spec.Labels["io.berth.spec-hash"] {
			t.Errorf("%s: spec hash %s after the rollback, release 2's was %s", name,
				s.Spec.Labels["io.berth.spec-hash"], v2[name].Spec.Labels["io.berth.spec-hash"])
		}
		// Put back to release 2's spec, it says release 2, not the failed 3.
		if got := s.Spec.Labels["io.berth.release"]; got != "2" {
			t.Errorf("%s: labelled release %s after the rollback to release 2", name, got)
		}
	}
	wantServing(t, h, "v2")
	hist := h.history()
	if len(hist) == 0 || hist[0].Number != 3 || hist[0].Outcome == "live" {
		t.Errorf("history after the broken release: %+v", hist)
	}

	// 4. agentctl rollback: the previous good release (1).
	out, code := h.ctl("rollback", h.project)
	if code != 0 {
		t.Fatalf("rollback: exit %d\n%s\nagentd log:\n%s", code, out, h.agentLog)
	}
	wantImages(t, h, map[string]string{"web": pins["web:v1"], "worker": pins["worker:w1"]}, "after agentctl rollback")
	wantServing(t, h, "v1")

	// 5. A failing pre-deploy hook: exit 1, nothing switched, no hook left.
	// Only web changes: a service web depends on (worker) would be updated
	// before web's hook, which may need it.
	h.writeCompose(oneNodeCompose, map[string]string{"$REGISTRY": reg.Addr, "$HOOK": failingHook})
	versions := map[string]uint64{}
	for name, s := range h.services() {
		versions[name] = s.Version.Index
	}
	out, _ = h.deploy(1, "--image", "web="+reg.Ref("web:v2"))
	t.Logf("the release whose hook failed:\n%s", out)
	if !strings.Contains(out, "pre-deploy hook") || !strings.Contains(out, "testapp check:") {
		t.Errorf("the failed deploy does not show the hook's failure and its log:\n%s", out)
	}
	wantImages(t, h, map[string]string{"web": pins["web:v1"], "worker": pins["worker:w1"]}, "after the failing hook")
	for name, s := range h.services() {
		if s.Version.Index != versions[name] {
			t.Errorf("%s was changed by the release whose hook failed (version %d -> %d)", name, versions[name], s.Version.Index)
		}
	}
	all, err := docker.ServiceList(ctx, swarm.ServiceListOptions{Filters: filters.NewArgs(filters.Arg("label", "io.berth.hook"))})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.Spec.Labels[stackLabel] == h.project {
			t.Errorf("hook service %s left behind", s.Spec.Name)
		}
	}

	// 6. agentctl status: services, tasks per node, health.
	st := h.status()
	seen := map[string]bool{}
	for _, s := range st.Services {
		if s.Swarm == nil {
			t.Errorf("status: service %s has no swarm part", s.Name)
			continue
		}
		// The service as compose names it, or as the Swarm does.
		name := strings.TrimPrefix(s.Name, h.project+"_")
		seen[name] = true
		if s.Swarm.Running != s.Swarm.Replicas {
			t.Errorf("status: %s runs %d of %d", s.Name, s.Swarm.Running, s.Swarm.Replicas)
		}
		for _, tk := range s.Swarm.Tasks {
			if tk.DesiredState == "running" && tk.Node == "" {
				t.Errorf("status: task %s of %s names no node", tk.ID, s.Name)
			}
			if name == "web" && tk.DesiredState == "running" && tk.Health != "healthy" {
				t.Errorf("status: web task %s health %q, want healthy", tk.ID, tk.Health)
			}
		}
	}
	if !seen["web"] || !seen["worker"] {
		t.Errorf("status shows services %v, want web and worker", seen)
	}
	text, code := h.ctl("status", h.project)
	if code != 0 || !strings.Contains(text, "TASK") || !strings.Contains(text, "NODE") {
		t.Errorf("status (text): exit %d\n%s", code, text)
	}
	t.Logf("status:\n%s", text)
}

// wantImages checks that each service's spec runs the image pinned by digest.
func wantImages(t *testing.T, h *harness, want map[string]string, when string) {
	t.Helper()
	svcs := h.services()
	for name, ref := range want {
		s, ok := svcs[name]
		if !ok {
			t.Errorf("%s: no service %s", when, name)
			continue
		}
		if got := image(s); got != ref {
			t.Errorf("%s: %s runs %s, want %s", when, name, got, ref)
		}
		if !strings.Contains(image(s), "@sha256:") {
			t.Errorf("%s: %s's image %s is not pinned by digest", when, name, image(s))
		}
	}
}

// wantServing checks that every running web task answers version, on the
// host port its container publishes.
func wantServing(t *testing.T, h *harness, version string) {
	t.Helper()
	ctx := h.t.Context()
	web := h.services()["web"]
	tasks, err := runningTasks(ctx, h.manager, web.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) == 0 {
		t.Errorf("no web task runs")
	}
	for _, tk := range tasks {
		if tk.Status.ContainerStatus == nil {
			t.Errorf("web task %s has no container", tk.ID)
			continue
		}
		port := hostPort(t, h.manager, tk.Status.ContainerStatus.ContainerID)
		body, err := httpGet(ctx, "http://127.0.0.1:"+port+"/")
		if err != nil || body != version+"\n" {
			t.Errorf("web task %s on port %s: %q %v, want %s", tk.ID, port, body, err, version)
		}
	}
}

// hostPort returns the host port a container publishes for 8080.
func hostPort(t *testing.T, cli *client.Client, id string) string {
	t.Helper()
	c, err := cli.ContainerInspect(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range c.NetworkSettings.Ports["8080/tcp"] {
		if b.HostPort != "" {
			return b.HostPort
		}
	}
	t.Fatalf("container %.12s publishes no port for 8080: %+v", id, c.NetworkSettings.Ports)
	return ""
}

func httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
