package swarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/healthcheck"
	"github.com/berth-deploy/berth/internal/testenv"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
)

// *client.Client is the Engine and the ProxyEngine of production.
var (
	_ Engine      = (*client.Client)(nil)
	_ ProxyEngine = (*client.Client)(nil)
)

// hkIT is a real-engine test's swarm: the local engine, a manager of a
// swarm (skipped, or failed when required, if it is not), with a project
// of its own whose overlay network, services and images are removed when
// the test ends.
type hkIT struct {
	t       *testing.T
	cli     *client.Client
	project string
	network string
}

func newHKIT(t *testing.T) *hkIT {
	t.Helper()
	cli := testenv.Docker(t)
	testenv.SwarmManager(t, cli)
	info, err := cli.Info(t.Context())
	if err != nil {
		t.Fatalf("docker info: %v", err)
	}
	t.Logf("engine %s, API %s, swarm manager %s", info.ServerVersion, cli.ClientVersion(), info.Swarm.NodeID)
	it := &hkIT{t: t, cli: cli, project: strings.ReplaceAll(testenv.UniqueName("hk"), "-", "")}
	it.network = it.project + "_default"
	_, err = cli.NetworkCreate(t.Context(), it.network, network.CreateOptions{Driver: "overlay", Attachable: true, Scope: "swarm",
		Labels: map[string]string{LabelNamespace: it.project}})
	if err != nil {
		t.Fatalf("create network %s: %v", it.network, err)
	}
	t.Cleanup(it.cleanup)
	return it
}

// cleanup removes the project's services, then (once their containers
// are gone) its network.
func (it *hkIT) cleanup() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(it.t.Context()), 2*time.Minute)
	defer cancel()
	byProject := filters.NewArgs(filters.Arg("label", LabelNamespace+"="+it.project))
	services, err := it.cli.ServiceList(ctx, swarm.ServiceListOptions{Filters: byProject})
	if err != nil {
		it.t.Errorf("cleanup: list services: %v", err)
	}
	for _, s := range services {
		if err := it.cli.ServiceRemove(ctx, s.ID); err != nil && !errdefs.IsNotFound(err) {
			it.t.Errorf("cleanup: remove service %s: %v", s.Spec.Name, err)
		}
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		err := it.cli.NetworkRemove(ctx, it.network)
		if err == nil || errdefs.IsNotFound(err) {
			// A network a task still holds can answer "not found" to a
			// removal and stay: look.
			left, lerr := it.cli.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", it.network))})
			if lerr == nil && len(left) == 0 {
				return
			}
			err = fmt.Errorf("still listed after its removal (%v)", err)
		}
		select {
		case <-ctx.Done():
			it.t.Errorf("cleanup: remove network %s: %v", it.network, err)
			return
		case <-tick.C:
		}
	}
}

// image builds a testapp image for the test and returns its ID, which a
// service runs without any registry; it is removed when the test ends.
func (it *hkIT) image(name string, img testenv.Image) string {
	it.t.Helper()
	ref := "berthtest/" + it.project + ":" + name
	id := testenv.Build(it.t, it.cli, ref, img)
	it.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(it.t.Context()), time.Minute)
		defer cancel()
		// After the project's services (registered later, run first).
		if _, err := it.cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !errdefs.IsNotFound(err) {
			it.t.Errorf("remove image %s: %v", ref, err)
		}
	})
	return id
}

// spec is a converted service of the project running img on its network.
func (it *hkIT) spec(name, img string, entrypoint []string, replicas uint64, labels map[string]string) *compose.ServiceSpec {
	return &compose.ServiceSpec{
		Name:     name,
		Image:    compose.Pin{Ref: img, Pinned: img},
		Replicas: int(replicas),
		Swarm: &swarm.ServiceSpec{
			Annotations: swarm.Annotations{Name: it.project + "_" + name, Labels: map[string]string{LabelNamespace: it.project}},
			TaskTemplate: swarm.TaskSpec{
				ContainerSpec: &swarm.ContainerSpec{Image: img, Command: entrypoint, Labels: labels,
					Env: []string{"VERSION=hooktest"}},
				RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny},
				Networks:      []swarm.NetworkAttachmentConfig{{Target: it.network, Aliases: []string{name}}},
			},
			Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
			EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR},
		},
	}
}

// checkHooksGone checks that no service, task or container of the
// project's hooks is left (their removal finishes in the background:
// waited for up to 30s).
func (it *hkIT) checkHooksGone() {
	it.t.Helper()
	ctx, cancel := context.WithTimeout(it.t.Context(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	hooks := filters.NewArgs(filters.Arg("label", LabelNamespace+"="+it.project), filters.Arg("label", LabelHook))
	for {
		var left []string
		services, err := it.cli.ServiceList(ctx, swarm.ServiceListOptions{Filters: hooks})
		for _, s := range services {
			left = append(left, "service "+s.Spec.Name)
		}
		tasks, terr := it.cli.TaskList(ctx, swarm.TaskListOptions{Filters: hooks})
		for _, t := range tasks {
			left = append(left, fmt.Sprintf("task %s (%s)", t.ID, t.Status.State))
		}
		containers, cerr := it.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
			filters.Arg("label", LabelNamespace+"="+it.project), filters.Arg("label", LabelHook))})
		for _, c := range containers {
			left = append(left, fmt.Sprintf("container %s (%s)", strings.TrimPrefix(c.Names[0], "/"), c.Status))
		}
		if err == nil && terr == nil && cerr == nil && len(left) == 0 {
			it.t.Logf("the hooks' services, tasks and containers gone %s after Run returned", time.Since(start).Round(time.Millisecond))
			return
		}
		select {
		case <-ctx.Done():
			it.t.Errorf("left after the hooks ran: %v (errors: %v %v %v)", left, err, terr, cerr)
			return
		case <-tick.C:
		}
	}
}

func hkBaseImage(t *testing.T) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), filepath.Join("..", "..", "scripts", "base-image.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	tag := strings.TrimSpace(lines[len(lines)-1])
	if err != nil || tag == "" {
		if testenv.Required() {
			t.Fatalf("scripts/base-image.sh: %v\n%s", err, stderr.String())
		}
		t.Skipf("scripts/base-image.sh: %v\n%s (skipping; set BERTH_REQUIRE_DOCKER=1 to make this a failure)", err, stderr.String())
	}
	return tag
}

// TestIntegrationHooksAsOneOffServices runs two hooks as one-off services
// on the engine's swarm, on an overlay network: one that exits 0 (the
// scratch testapp, sleeping a second) and one that exits 3 (a shell on
// the Debian base image, writing to stdout and stderr first). Each
// service, its task and its container are gone once its hook has ended.
func TestIntegrationHooksAsOneOffServices(t *testing.T) {
	it := newHKIT(t)
	pr := &hkProgress{}
	hooks := &Hooks{Engine: it.cli, Project: it.project, Release: "1", Progress: pr.say, Poll: 100 * time.Millisecond}

	ok := it.image("ok", testenv.Image{})
	start := time.Now()
	err := hooks.Run(t.Context(), it.spec("web", ok, nil, 2, nil), PhasePreDeploy,
		[]compose.Hook{{Command: []string{"sleep", "1s"}, Timeout: 2 * time.Minute}})
	t.Logf("exit-0 hook: %v in %s", err, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, pr.text())
	}
	for _, want := range []string{"| testapp: sleeping 1s", "| testapp: slept", "pre-deploy hook \"sleep 1s\" done in"} {
		if !strings.Contains(pr.text(), want) {
			t.Errorf("progress lacks %q:\n%s", want, pr.text())
		}
	}
	it.checkHooksGone()

	base := hkBaseImage(t)
	failing := it.image("fail", testenv.Image{Base: base})
	script := "echo applying migration 0042; echo 'relation \"shop_order\" does not exist' >&2; exit 3"
	start = time.Now()
	err = hooks.Run(t.Context(), it.spec("worker", failing, []string{"/bin/sh", "-c"}, 1, nil), PhasePreDeploy,
		[]compose.Hook{{Command: []string{script}, Timeout: 2 * time.Minute}})
	t.Logf("exit-3 hook in %s: %v", time.Since(start).Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("Run: no error for a hook that exited 3")
	}
	if !errors.Is(err, compose.ErrHook) {
		t.Errorf("error does not wrap compose.ErrHook: %v", err)
	}
	for _, want := range []string{"exited 3", "applying migration 0042", `relation "shop_order" does not exist`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	it.checkHooksGone()
}

// TestIntegrationHookTimeout: a hook that outlives its timeout is an
// error naming the timeout, and its service (and task) are removed.
func TestIntegrationHookTimeout(t *testing.T) {
	it := newHKIT(t)
	pr := &hkProgress{}
	hooks := &Hooks{Engine: it.cli, Project: it.project, Release: "2", Progress: pr.say, Poll: 100 * time.Millisecond}
	img := it.image("slow", testenv.Image{})
	err := hooks.Run(t.Context(), it.spec("web", img, nil, 1, nil), PhasePreDeploy,
		[]compose.Hook{{Command: []string{"sleep", "5m"}, Timeout: 4 * time.Second}})
	t.Logf("hook with a 4s timeout: %v", err)
	if err == nil || !strings.Contains(err.Error(), "did not end within its timeout of 4s") || !errors.Is(err, compose.ErrHook) {
		t.Errorf("error %v: want the timeout, wrapping ErrHook", err)
	}
	it.checkHooksGone()
}

// TestIntegrationProxySync runs a web service of 2 dnsrr replicas and a
// proxy service on the overlay network, and syncs the proxy: the servers
// file in the proxy's task container lists the tasks' overlay addresses,
// which answer from inside the proxy container; scaled to 3, the next sync
// lists 3.
func TestIntegrationProxySync(t *testing.T) {
	it := newHKIT(t)
	base := hkBaseImage(t)
	img := it.image("app", testenv.Image{Base: base})
	web := it.spec("web", img, nil, 2, nil)
	proxy := it.spec("proxy", img, nil, 1, nil)
	proxy.Swarm.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.role == manager"}}
	proxy.Policy.Proxy = &compose.Proxy{Fronts: []string{"web"}, Servers: "/tmp/servers", Ports: map[string]int{"web": 8080},
		Validate: []string{"/bin/sh", "-c", "grep -q 'server ' /tmp/servers/web.conf"}, Reload: []string{"/bin/true"}}
	desired := &compose.Desired{Project: it.project, Services: []compose.ServiceSpec{*web, *proxy}}
	var webID string
	for _, s := range []*compose.ServiceSpec{web, proxy} {
		created, err := it.cli.ServiceCreate(t.Context(), *s.Swarm, swarm.ServiceCreateOptions{})
		if err != nil {
			t.Fatalf("create %s: %v", s.Swarm.Name, err)
		}
		if s == web {
			webID = created.ID
		}
	}
	pr := &hkProgress{}
	px := &Proxies{Engine: it.cli, Local: it.cli, Project: it.project, Progress: pr.say}

	// syncUntil syncs until the proxy lists n servers.
	syncUntil := func(n int) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		var lastErr error
		said := ""
		for {
			lastErr = px.Sync(ctx, desired, "web")
			if lastErr != nil && lastErr.Error() != said && ctx.Err() == nil {
				said = lastErr.Error()
				t.Logf("sync: %v", lastErr)
			}
			if lastErr == nil {
				if file := it.readProxyFile(ctx, "/tmp/servers/web.conf"); strings.Count(file, "server ") == n && !strings.Contains(file, "down") {
					return file
				}
			}
			select {
			case <-ctx.Done():
				ps, _ := exec.Command("docker", "service", "ps", "--no-trunc", it.project+"_web", it.project+"_proxy").CombinedOutput()
				t.Fatalf("the proxy did not list %d servers within 90s: %v\nprogress:\n%s\n%s", n, lastErr, pr.text(), ps)
			case <-tick.C:
			}
		}
	}
	start := time.Now()
	file := syncUntil(2)
	t.Logf("2 tasks listed %s after the services were created:\n%s", time.Since(start).Round(time.Millisecond), file)
	it.checkServersAnswer(file)

	svc, _, err := it.cli.ServiceInspectWithRaw(t.Context(), webID, swarm.ServiceInspectOptions{})
	if err != nil {
		t.Fatalf("inspect web: %v", err)
	}
	three := uint64(3)
	svc.Spec.Mode.Replicated.Replicas = &three
	if _, err := it.cli.ServiceUpdate(t.Context(), webID, svc.Version, svc.Spec, swarm.ServiceUpdateOptions{}); err != nil {
		t.Fatalf("scale web: %v", err)
	}
	start = time.Now()
	file = syncUntil(3)
	t.Logf("3 tasks listed %s after the scale", time.Since(start).Round(time.Millisecond))
	it.checkServersAnswer(file)
	reloads := strings.Count(pr.text(), "reloaded ")
	if err := px.Sync(t.Context(), desired, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if n := strings.Count(pr.text(), "reloaded "); n != reloads {
		t.Errorf("a sync with nothing changed reloaded the proxy:\n%s", pr.text())
	}
}

// proxyContainer is the ID of the proxy's task container, "" while there
// is none.
func (it *hkIT) proxyContainer(ctx context.Context) string {
	it.t.Helper()
	list, err := it.cli.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(
		filters.Arg("label", labelTaskService+"="+it.project+"_proxy"), filters.Arg("status", "running"))})
	if err != nil || len(list) > 1 {
		it.t.Fatalf("the proxy's container: %d found, %v", len(list), err)
	}
	if len(list) == 0 {
		return ""
	}
	return list[0].ID
}

// readProxyFile is a file in the proxy's container, "" if it cannot be
// read (yet).
func (it *hkIT) readProxyFile(ctx context.Context, path string) string {
	it.t.Helper()
	id := it.proxyContainer(ctx)
	if id == "" {
		return ""
	}
	code, out, err := healthcheck.Exec(ctx, it.cli, id, []string{"cat", path})
	if err != nil || code != 0 {
		return ""
	}
	return out
}

// checkServersAnswer asks, from inside the proxy's container, every
// server of the file for /healthz.
func (it *hkIT) checkServersAnswer(file string) {
	it.t.Helper()
	ctx := it.t.Context()
	id := it.proxyContainer(ctx)
	if id == "" {
		it.t.Fatal("the proxy's container is gone")
	}
	for _, line := range strings.Split(file, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "server" {
			continue
		}
		addr := strings.TrimSuffix(f[1], ";")
		code, out, err := healthcheck.Exec(ctx, it.cli, id, []string{"/testapp", "check", "http://" + addr + "/healthz"})
		if err != nil || code != 0 {
			it.t.Errorf("server %s does not answer from the proxy: %d %v %s", addr, code, err, out)
		}
	}
}
