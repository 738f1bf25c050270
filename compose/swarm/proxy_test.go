package swarm

import (
	"context"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/internal/fakeengine"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
)

const pxServersFile = "shop_nginx.1.tnginx:/etc/nginx/berth/servers/web.conf"

// pxDesired is a stack of web (replicas) behind nginx, which lists web's
// servers in /etc/nginx/berth/servers (or, with upstreams, one file).
func pxDesired(replicas uint64, upstreams bool) *compose.Desired {
	px := &compose.Proxy{Fronts: []string{"web"}, Servers: "/etc/nginx/berth/servers", Ports: map[string]int{"web": 8000},
		Validate: []string{"nginx", "-t"}, Reload: []string{"nginx", "-s", "reload"}}
	if upstreams {
		px.Servers, px.Upstreams = "", "/etc/nginx/conf.d/upstreams.conf"
	}
	return &compose.Desired{Project: "shop", Services: []compose.ServiceSpec{
		{Name: "web", Replicas: int(replicas), Swarm: &swarm.ServiceSpec{Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}}}},
		{Name: "worker", Replicas: 1},
		{Name: "nginx", Replicas: 1, Policy: compose.Policy{Proxy: px}},
	}}
}

// pxTask is a task of a service, on shop_default at addr (and on ingress).
func pxTask(id string, slot int, state, desired swarm.TaskState, addr string) swarm.Task {
	return swarm.Task{ID: id, Slot: slot, NodeID: "node1", DesiredState: desired, Status: swarm.TaskStatus{State: state},
		NetworksAttachments: []swarm.NetworkAttachment{
			{Network: swarm.Network{Spec: swarm.NetworkSpec{Annotations: swarm.Annotations{Name: "ingress"}, Ingress: true}}, Addresses: []string{"10.255.0.9/16"}},
			{Network: swarm.Network{Spec: swarm.NetworkSpec{Annotations: swarm.Annotations{Name: "shop_default"}}}, Addresses: []string{addr + "/24"}},
		}}
}

// pxLocal is the local engine with nginx's task container on it; it
// notes when two writers work on a proxy container at once (from the copy
// of its files to the end of its reload).
type pxLocal struct {
	*fakeengine.Engine
	active  atomic.Int32
	overlap atomic.Bool
}

func (l *pxLocal) CopyToContainer(ctx context.Context, id, dir string, content io.Reader, o container.CopyToContainerOptions) error {
	if l.active.Add(1) > 1 {
		l.overlap.Store(true)
	}
	time.Sleep(2 * time.Millisecond) // a real copy takes a while: let another writer in, if it can
	return l.Engine.CopyToContainer(ctx, id, dir, content, o)
}

func (l *pxLocal) ContainerExecCreate(ctx context.Context, id string, o container.ExecOptions) (container.ExecCreateResponse, error) {
	if slices.Contains(o.Cmd, "reload") {
		defer l.active.Add(-1)
	}
	return l.Engine.ContainerExecCreate(ctx, id, o)
}

type pxWorld struct {
	sw    *fakeSwarm
	local *pxLocal
	pr    *hkProgress
	p     *Proxies
}

func newPXWorld(t *testing.T) *pxWorld {
	t.Helper()
	w := &pxWorld{sw: newFakeSwarm(), local: &pxLocal{Engine: fakeengine.New()}, pr: &hkProgress{}}
	w.sw.put(swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "shop_web"}})
	w.sw.put(swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "shop_nginx"}})
	w.sw.setTasks("shop_nginx", pxTask("tnginx", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.2"))
	w.putNginx("cnginx", "shop_nginx.1.tnginx", "tnginx")
	w.p = &Proxies{Engine: w.sw, Local: w.local, Project: "shop", Progress: w.pr.say}
	return w
}

func (w *pxWorld) putNginx(id, name, task string) {
	w.local.Put(container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: id, Name: "/" + name, State: &container.State{Running: true, Status: "running"}},
		Config:            &container.Config{Labels: map[string]string{labelTaskService: "shop_nginx", labelTaskID: task}},
		NetworkSettings: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
			"shop_default": {IPAddress: "10.0.1.2"}, "ingress": {IPAddress: "10.255.0.2"}}},
	})
}

// writes returns the copies, validates and reloads since the last look.
func (w *pxWorld) writes() []string {
	var out []string
	for _, c := range w.local.TakeCalls() {
		if strings.HasPrefix(c, "copy ") || strings.HasPrefix(c, "exec ") {
			out = append(out, c)
		}
	}
	return out
}

var pxReload = []string{
	"copy shop_nginx.1.tnginx /etc/nginx/berth/servers/web.conf",
	"exec shop_nginx.1.tnginx nginx -t",
	"exec shop_nginx.1.tnginx nginx -s reload",
}

func TestSyncWritesTheRunningTasksOnly(t *testing.T) {
	w := newPXWorld(t)
	w.sw.setTasks("shop_web",
		pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"),
		pxTask("tb", 2, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.6"),
		pxTask("tc", 3, swarm.TaskStateRunning, swarm.TaskStateShutdown, "10.0.1.7"), // being shut down
		pxTask("td", 3, swarm.TaskStateStarting, swarm.TaskStateRunning, "10.0.1.8"), // not running yet
		pxTask("te", 1, swarm.TaskStateFailed, swarm.TaskStateShutdown, "10.0.1.9"),
	)
	if err := w.p.Sync(t.Context(), pxDesired(3, false), "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := w.writes(); !slices.Equal(got, pxReload) {
		t.Errorf("did %q, want %q", got, pxReload)
	}
	file := w.local.Files()[pxServersFile]
	for _, want := range []string{"server 10.0.1.5:8000;  # shop_web.1.ta\n", "server 10.0.1.6:8000;  # shop_web.2.tb\n", "Do not edit"} {
		if !strings.Contains(file, want) {
			t.Errorf("servers file lacks %q:\n%s", want, file)
		}
	}
	for _, not := range []string{"10.0.1.7", "10.0.1.8", "10.0.1.9", "10.255.", "down"} {
		if strings.Contains(file, not) {
			t.Errorf("servers file has %q:\n%s", not, file)
		}
	}
}

func TestSyncWritesWhatTheSingleEngineWrites(t *testing.T) {
	w := newPXWorld(t)
	w.sw.setTasks("shop_web", pxTask("tb", 2, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.6"),
		pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	d := pxDesired(2, true)
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	want := "# Written by Berth before every reload of this proxy: the ready containers\n" +
		"# of each service it fronts (x-berth proxy.upstreams). Do not edit.\n" +
		"upstream web {\n" +
		"    server 10.0.1.5:8000;  # shop_web.1.ta\n" +
		"    server 10.0.1.6:8000;  # shop_web.2.tb\n" +
		"}\n"
	_, content, _, err := compose.ProxyFiles(d.Services[2].Policy.Proxy, map[string][]compose.ProxyServer{
		"web": {{Name: "shop_web.1.ta", Addr: "10.0.1.5"}, {Name: "shop_web.2.tb", Addr: "10.0.1.6"}}})
	if err != nil || content != want {
		t.Fatalf("ProxyFiles: %q, %v; want %q", content, err, want)
	}
	if got := w.local.Files()["shop_nginx.1.tnginx:/etc/nginx/conf.d/upstreams.conf"]; got != want {
		t.Errorf("upstreams file:\n%s\nwant:\n%s", got, want)
	}
}

func TestSyncSkipsUnchangedContentAndReloadsOncePerChange(t *testing.T) {
	w := newPXWorld(t)
	d := pxDesired(2, false)
	ta := pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5")
	w.sw.setTasks("shop_web", ta)
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	w.writes()
	for range 3 {
		if err := w.p.Sync(t.Context(), d, "web"); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
	if got := w.writes(); len(got) != 0 {
		t.Errorf("unchanged tasks: did %q, want nothing", got)
	}
	w.sw.setTasks("shop_web", ta, pxTask("tb", 2, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.6"))
	for range 2 {
		if err := w.p.Sync(t.Context(), d, "web"); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
	if got := w.writes(); !slices.Equal(got, pxReload) {
		t.Errorf("a task more: did %q, want one reload %q", got, pxReload)
	}
	// A new proxy container (Swarm restarted the proxy's task) is written
	// although the content is the same.
	w.local.Exit("cnginx", 137)
	w.sw.setTasks("shop_nginx", pxTask("tnginx2", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.3"))
	w.putNginx("cnginx2", "shop_nginx.1.tnginx2", "tnginx2")
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := w.writes(); len(got) != 3 || !strings.Contains(got[0], "shop_nginx.1.tnginx2") {
		t.Errorf("new proxy container: did %q, want it written and reloaded", got)
	}
	w.p.mu.Lock()
	_, kept := w.p.loaded["nginx"]["cnginx"]
	w.p.mu.Unlock()
	if kept {
		t.Error("what a stopped proxy container had loaded is still kept")
	}
}

func TestSyncRefusesAnEmptySet(t *testing.T) {
	w := newPXWorld(t)
	d := pxDesired(2, false)
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateStarting, swarm.TaskStateRunning, "10.0.1.5"))
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := w.writes(); len(got) != 0 {
		t.Errorf("no running task: did %q, want nothing", got)
	}
	if !strings.Contains(w.pr.text(), "no running task of web") {
		t.Errorf("progress does not say why nothing was written:\n%s", w.pr.text())
	}
	// Once written, a service whose tasks are all gone keeps its servers.
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	w.writes()
	w.sw.setTasks("shop_web")
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := w.writes(); len(got) != 0 {
		t.Errorf("tasks gone: did %q, want nothing", got)
	}
	if file := w.local.Files()[pxServersFile]; !strings.Contains(file, "10.0.1.5:8000") || strings.Contains(file, "down") {
		t.Errorf("servers file:\n%s\nwant the last running task kept", file)
	}
}

func TestSyncScaledToZeroWritesADownServer(t *testing.T) {
	w := newPXWorld(t)
	if err := w.p.Sync(t.Context(), pxDesired(0, false), "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if file := w.local.Files()[pxServersFile]; !strings.Contains(file, "server 127.0.0.1:8000 down;") {
		t.Errorf("servers file:\n%s\nwant the single engine's down server for a service scaled to zero", file)
	}
}

func TestSyncWithoutALocalProxyContainer(t *testing.T) {
	w := newPXWorld(t)
	w.local.Exit("cnginx", 0)
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	err := w.p.Sync(t.Context(), pxDesired(1, false), "web")
	if err == nil {
		t.Fatal("Sync: no error without a proxy container on the local engine")
	}
	for _, want := range []string{"sync proxy nginx", "no running task of shop_nginx on this engine", "shop_nginx.1.tnginx on node node1", "node.role == manager"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestSyncOfAProxyWithNoRunningTask(t *testing.T) {
	w := newPXWorld(t)
	w.local.Exit("cnginx", 1)
	w.sw.setTasks("shop_nginx", pxTask("tnginx", 1, swarm.TaskStateFailed, swarm.TaskStateShutdown, "10.0.1.2"))
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	for range 3 {
		if err := w.p.Sync(t.Context(), pxDesired(1, false), "web"); err != nil {
			t.Fatalf("Sync: %v (a proxy with no running task anywhere is not misplaced)", err)
		}
	}
	if got := w.writes(); len(got) != 0 {
		t.Errorf("did %q, want nothing", got)
	}
	if n := strings.Count(w.pr.text(), "no running task of shop_nginx"); n != 1 {
		t.Errorf("said %d times, want once:\n%s", n, w.pr.text())
	}
	// It runs, then stops again: said again.
	w.sw.setTasks("shop_nginx", pxTask("tnginx2", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.3"))
	w.putNginx("cnginx2", "shop_nginx.1.tnginx2", "tnginx2")
	if err := w.p.Sync(t.Context(), pxDesired(1, false), "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	w.local.Exit("cnginx2", 1)
	w.sw.setTasks("shop_nginx")
	if err := w.p.Sync(t.Context(), pxDesired(1, false), "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if n := strings.Count(w.pr.text(), "no running task of shop_nginx"); n != 2 {
		t.Errorf("said %d times, want twice (once per time it stopped):\n%s", n, w.pr.text())
	}
}

func TestSyncNamesProxyTasksOnOtherNodes(t *testing.T) {
	w := newPXWorld(t)
	w.sw.setTasks("shop_nginx", pxTask("tnginx", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.2"),
		swarm.Task{ID: "tfar", Slot: 2, NodeID: "node2", DesiredState: swarm.TaskStateRunning, Status: swarm.TaskStatus{State: swarm.TaskStateRunning}})
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	err := w.p.Sync(t.Context(), pxDesired(1, false), "web")
	if err == nil || !strings.Contains(err.Error(), "shop_nginx.2.tfar on node node2") || !strings.Contains(err.Error(), "node.role == manager") {
		t.Errorf("error %v: want the task out of reach named", err)
	}
	if got := w.writes(); !slices.Equal(got, pxReload) {
		t.Errorf("did %q: the local proxy container is written all the same", got)
	}
}

func TestSyncValidateFailureIsAnErrorAndRetried(t *testing.T) {
	w := newPXWorld(t)
	d := pxDesired(1, false)
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	w.local.SetExecResults(fakeengine.ExecResult{ExitCode: 1, Stderr: "nginx: [emerg] unknown directive"})
	err := w.p.Sync(t.Context(), d, "web")
	if err == nil || !strings.Contains(err.Error(), "nginx -t exited 1: nginx: [emerg] unknown directive") {
		t.Errorf("error %v: want nginx -t's failure", err)
	}
	if got := w.writes(); len(got) != 2 {
		t.Errorf("did %q: want the copy and nginx -t, no reload", got)
	}
	w.local.SetExecResults()
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := w.writes(); !slices.Equal(got, pxReload) {
		t.Errorf("after a failed validate: did %q, want the proxy written again %q", got, pxReload)
	}
}

func TestSyncOfOtherServices(t *testing.T) {
	w := newPXWorld(t)
	d := pxDesired(1, false)
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	if err := w.p.Sync(t.Context(), d, "worker"); err != nil {
		t.Fatalf("Sync worker: %v", err)
	}
	if got := w.writes(); len(got) != 0 {
		t.Errorf("a service no proxy fronts: did %q", got)
	}
	// The proxy itself: its new tasks get the upstreams.
	if err := w.p.Sync(t.Context(), d, "nginx"); err != nil {
		t.Fatalf("Sync nginx: %v", err)
	}
	if got := w.writes(); !slices.Equal(got, pxReload) {
		t.Errorf("the proxy's own sync: did %q, want %q", got, pxReload)
	}
	// A proxy without upstreams or servers reaches its services by name.
	d.Services[2].Policy.Proxy.Servers = ""
	w.sw.setTasks("shop_web", pxTask("tb", 2, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.6"))
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if got := w.writes(); len(got) != 0 {
		t.Errorf("a proxy that resolves names: did %q, want nothing", got)
	}
}

func TestSyncOfAServiceNotCreatedYet(t *testing.T) {
	w := newPXWorld(t)
	d := pxDesired(1, false)
	d.Services[2].Policy.Proxy.Fronts = []string{"web", "api"}
	d.Services[2].Policy.Proxy.Ports["api"] = 9000
	d.Services = append(d.Services, compose.ServiceSpec{Name: "api", Replicas: 0})
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	if err := w.p.Sync(t.Context(), d, "web"); err != nil {
		t.Fatalf("Sync: %v (a fronted service not created yet has no task)", err)
	}
	if got := w.local.Files()["shop_nginx.1.tnginx:/etc/nginx/berth/servers/api.conf"]; !strings.Contains(got, "down") {
		t.Errorf("api.conf:\n%s\nwant a down server", got)
	}
}

func TestFollowKeepsTheProxyInStepAndSaysErrorsOnce(t *testing.T) {
	w := newPXWorld(t)
	w.local.Exit("cnginx", 0)
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1.5"))
	var mu sync.Mutex
	var d *compose.Desired // none yet
	current := func() *compose.Desired { mu.Lock(); defer mu.Unlock(); return d }
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); w.p.Follow(ctx, current, 10*time.Millisecond) }()

	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s; progress:\n%s", what, w.pr.text())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if got := w.writes(); len(got) != 0 {
		t.Errorf("no desired state: did %q", got)
	}
	mu.Lock()
	d = pxDesired(2, false)
	mu.Unlock()
	waitFor("the error said", func() bool { return strings.Contains(w.pr.text(), "node.role == manager") })
	time.Sleep(100 * time.Millisecond) // ten looks more
	if n := strings.Count(w.pr.text(), "node.role == manager"); n != 1 {
		t.Errorf("the same error said %d times, want once:\n%s", n, w.pr.text())
	}
	// The proxy's task comes up (on the manager): the follower writes it.
	w.putNginx("cnginx", "shop_nginx.1.tnginx", "tnginx")
	waitFor("the proxy written", func() bool { return strings.Contains(w.local.Files()[pxServersFile], "10.0.1.5:8000") })
	waitFor("in step said", func() bool { return strings.Contains(w.pr.text(), "in step again") })
	// A node drained: Swarm moves the task; the follower follows.
	w.sw.setTasks("shop_web", pxTask("ta", 1, swarm.TaskStateRunning, swarm.TaskStateShutdown, "10.0.1.5"),
		pxTask("tz", 1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.2.7"))
	waitFor("the moved task written", func() bool {
		f := w.local.Files()[pxServersFile]
		return strings.Contains(f, "10.0.2.7:8000") && !strings.Contains(f, "10.0.1.5")
	})
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not return when its context ended")
	}
}

func TestSyncAndFollowNeverWriteAProxyAtOnce(t *testing.T) {
	w := newPXWorld(t)
	d := pxDesired(8, false)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); w.p.Follow(ctx, func() *compose.Desired { return d }, time.Millisecond) }()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				var tasks []swarm.Task
				for k := range (i+j)%4 + 1 {
					tasks = append(tasks, pxTask("t"+string(rune('a'+k)), k+1, swarm.TaskStateRunning, swarm.TaskStateRunning, "10.0.1."+string(rune('1'+k))))
				}
				w.sw.setTasks("shop_web", tasks...)
				if err := w.p.Sync(ctx, d, "web"); err != nil {
					t.Errorf("Sync: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	<-done
	if w.local.overlap.Load() {
		t.Error("two writers worked on the proxy container at once")
	}
	if n := strings.Count(strings.Join(w.writes(), "\n"), "nginx -s reload"); n < 2 {
		t.Errorf("%d reloads: the test did not exercise concurrent writes", n)
	}
}
