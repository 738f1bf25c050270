package swarm

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/dindswarm"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/swarm"
)

//go:embed testdata/shop-swarm.yaml
var shopSwarm string

// Load during the phases: about 100 requests a second from 8 kept-alive
// clients, a tenth of them POSTs.
const (
	loadRate    = 100
	loadClients = 8
)

// TestSwarmThreeNodesShop deploys the reference Django shop to a swarm of
// three engines in containers, agentd on the host talking to the manager:
// web's three replicas spread over the nodes; web updated under load with no
// failed request; a broken release rolled back whole; a worker node drained
// under load while the stack keeps serving, and agentctl status saying
// where the tasks went.
func TestSwarmThreeNodesShop(t *testing.T) {
	c := dindswarm.Start(t, 3)
	t.Logf("phase 0: 3 nodes up and joined in %s (node image build excluded)", c.BringUp.Round(100*time.Millisecond))
	ctx := t.Context()
	mgr := c.Manager()

	began := time.Now()
	web := buildShop(t, c)
	t.Logf("phase 1: shop images built and pushed in %s", time.Since(began).Round(time.Second))

	h := newHarness(t, mgr.Client, []string{"DOCKER_HOST=" + mgr.Host()}, shopSwarm,
		map[string]string{"__REGISTRY__": c.RegistryAddr(), "__WEB__": c.Ref("shop/web:v1")})
	h.start()

	// The first release: web spread over the three nodes.
	_, took := h.deploy(0)
	svcs := h.services()
	nodesOf := func() map[string]int {
		tasks, err := runningTasks(ctx, mgr.Client, h.services()["web"].ID)
		if err != nil {
			t.Fatal(err)
		}
		on := map[string]int{}
		for _, tk := range tasks {
			on[c.NodeByID(tk.NodeID).Name]++
		}
		return on
	}
	spread := nodesOf()
	t.Logf("phase 2: release 1 deployed in %s; services %v; web's tasks per node %v", took.Round(100*time.Millisecond), keys(svcs), spread)
	if len(spread) != 3 {
		t.Errorf("web's running tasks are on %d nodes (%v), want one on each of 3", len(spread), spread)
	}
	if got := image(svcs["web"]); got != web["v1"] {
		t.Errorf("web runs %s, want %s", got, web["v1"])
	}
	shop := "http://" + c.ManagerAddr() + ":8080"
	if err := waitServing(ctx, shop, "v1"); err != nil {
		t.Fatalf("the shop through nginx on the manager: %v\nagentd log:\n%s", err, h.agentLog)
	}

	// Web updated under load: no request fails.
	loadBegan := time.Now()
	l := startLoad(ctx, shop, loadRate, loadClients, "update")
	time.Sleep(3 * time.Second) // a steady baseline before the deploy
	_, took = h.deploy(0, "--image", "web="+c.Ref("shop/web:v2"))
	time.Sleep(3 * time.Second) // and after it
	r := l.stop(loadBegan)
	t.Logf("phase 3: web updated v1 -> v2 in %s under load: %s", took.Round(100*time.Millisecond), r)
	if f := r.failures(); f != "" {
		t.Errorf("web's update: %s", f)
	}
	if r.Versions["v2"] == 0 {
		t.Errorf("no request saw v2 during the update: %v", r.Versions)
	}
	if got := image(h.services()["web"]); got != web["v2"] {
		t.Errorf("web runs %s after release 2, want %s", got, web["v2"])
	}

	// A broken release (web's /healthz fails): exit 1, release 2's specs
	// back and serving.
	hashes := map[string]string{}
	for name, s := range h.services() {
		hashes[name] = s.Spec.Labels["io.berth.spec-hash"]
	}
	loadBegan = time.Now()
	l = startLoad(ctx, shop, loadRate, loadClients, "broken")
	_, took = h.deploy(1, "--image", "web="+c.Ref("shop/web:v3"))
	r = l.stop(loadBegan)
	t.Logf("phase 4: broken release failed and rolled back in %s; load meanwhile: %s", took.Round(100*time.Millisecond), r)
	if got := image(h.services()["web"]); got != web["v2"] {
		t.Errorf("web runs %s after the broken release, want release 2's %s", got, web["v2"])
	}
	for name, s := range h.services() {
		if got := s.Spec.Labels["io.berth.spec-hash"]; got != hashes[name] {
			t.Errorf("%s's spec hash is %s after the broken release, release 2's was %s", name, got, hashes[name])
		}
	}
	if err := waitServing(ctx, shop, "v2"); err != nil {
		t.Errorf("after the broken release: %v", err)
	}

	// Drain a worker node that runs a web task, under load.
	var drained *dindswarm.Node
	on := nodesOf()
	for _, n := range c.Nodes[1:] {
		if on[n.Name] > 0 {
			drained = n
			break
		}
	}
	if drained == nil {
		t.Fatalf("no worker node runs a web task: %v", on)
	}
	loadBegan = time.Now()
	l = startLoad(ctx, shop, loadRate, loadClients, "drain")
	time.Sleep(2 * time.Second)
	drainBegan := time.Now()
	if err := c.Drain(ctx, drained); err != nil {
		t.Fatal(err)
	}
	// Until no task of the stack runs on the drained node and web runs its
	// three replicas elsewhere.
	err := waitTick(ctx, 3*time.Minute, func() error {
		for name, s := range h.services() {
			tasks, err := runningTasks(ctx, mgr.Client, s.ID)
			if err != nil {
				return err
			}
			for _, tk := range tasks {
				if tk.NodeID == drained.ID {
					return fmt.Errorf("%s still runs on %s", name, drained.Name)
				}
			}
			if name == "web" && len(tasks) < 3 {
				return fmt.Errorf("web runs %d of 3", len(tasks))
			}
		}
		return nil
	})
	moved := time.Since(drainBegan)
	time.Sleep(5 * time.Second) // the proxy follows the new tasks; load goes on
	r = l.stop(loadBegan)
	if err != nil {
		t.Fatalf("drain %s: %v", drained.Name, err)
	}
	after := nodesOf()
	t.Logf("phase 5: %s drained; its tasks moved in %s; web's tasks per node %v; load: %s", drained.Name, moved.Round(100*time.Millisecond), after, r)
	if f := r.failures(); f != "" {
		t.Errorf("draining %s: %s", drained.Name, f)
	}
	if after[drained.Name] != 0 {
		t.Errorf("web still runs on the drained node: %v", after)
	}

	// agentctl status says where the tasks went.
	st := h.status()
	for _, s := range st.Services {
		if s.Swarm == nil {
			t.Errorf("status: %s has no swarm part", s.Name)
			continue
		}
		running := 0
		for _, tk := range s.Swarm.Tasks {
			if tk.DesiredState != string(swarm.TaskStateRunning) {
				continue
			}
			running++
			if tk.Node == drained.Name {
				t.Errorf("status: %s's task %s is meant to run on the drained node %s", s.Name, tk.ID, drained.Name)
			}
			if tk.Node == "" {
				t.Errorf("status: %s's task %s names no node", s.Name, tk.ID)
			}
		}
		if strings.TrimPrefix(s.Name, h.project+"_") == "web" && running != 3 {
			t.Errorf("status: web has %d tasks meant to run, want 3", running)
		}
	}
	text, _ := h.ctl("status", h.project)
	t.Logf("status after the drain:\n%s", text)
	for _, n := range c.Nodes {
		if n != drained && !strings.Contains(text, n.Name) {
			t.Errorf("status does not name node %s", n.Name)
		}
	}
}

// buildShop builds the shop's images as scripts/lib/shop-stack.sh does (on
// the Debian base image), pushes them to the cluster's registry and returns
// web's references as the nodes pull them, by version (v1, v2 and v3, whose
// /healthz fails).
func buildShop(t *testing.T, c *dindswarm.Cluster) map[string]string {
	t.Helper()
	base, err := dindswarm.BaseImage(t.Context(), t, c.Host)
	if err != nil {
		t.Fatal(err)
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	here := filepath.Join(root, "examples", "django")
	build := func(name, dir string, args ...string) string {
		ref := c.Registry.Ref("shop/" + name)
		cmd := exec.CommandContext(t.Context(), "docker", append(append([]string{"build", "-q", "--build-arg", "BASE=" + base}, args...), "-t", ref, dir)...)
		cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker build %s: %v\n%s", ref, err, out)
		}
		digest := testenv.Push(t, c.Host, ref)
		t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", ref).Run() })
		return c.RegistryAddr() + "/shop/" + strings.Split(name, ":")[0] + "@" + digest
	}
	web := map[string]string{
		"v1": build("web:v1", here, "--build-arg", "APP_VERSION=v1"),
		"v2": build("web:v2", here, "--build-arg", "APP_VERSION=v2"),
	}
	v3 := t.TempDir()
	dockerfile := fmt.Sprintf("FROM %s\nENV APP_VERSION=v3 HEALTHZ_FAIL=\"v3 is broken on purpose\"\n", c.Registry.Ref("shop/web:v2"))
	if err := os.WriteFile(filepath.Join(v3, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	web["v3"] = build("web:v3", v3)
	for _, s := range []string{"nginx", "postgres", "rabbitmq"} {
		build(s+":v1", filepath.Join(here, s))
	}
	return web
}

// waitServing waits until GET /version through url answers version.
func waitServing(ctx context.Context, url, version string) error {
	return waitTick(ctx, 3*time.Minute, func() error {
		body, err := httpGet(ctx, url+"/version")
		if err != nil {
			return err
		}
		if !strings.Contains(body, `"`+version+`"`) {
			return fmt.Errorf("/version answers %s", body)
		}
		return nil
	})
}

// waitTick calls try every half second until it succeeds or timeout passes.
func waitTick(ctx context.Context, timeout time.Duration, try func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		err := try()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", timeout, err)
		case <-tick.C:
		}
	}
}
