package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
)

// harness runs one agentd with one project against the real engine.
type harness struct {
	t        *testing.T
	docker   *client.Client
	reg      *testenv.Registry
	dir      string
	project  string
	config   string
	socket   string
	agentd   *exec.Cmd
	agentLog *bytes.Buffer
	waited   <-chan error
}

// options adjust a harness.
type options struct {
	socket  string            // added to the config's socket section
	project string            // added to the project's section
	reg     *testenv.Registry // the registry to use instead of a fresh one
	// second, when set, is the compose file of a second project, named
	// h.project+"b", served by the same agentd.
	second string
	// extra is added to the config's top level (identities, ssh, http),
	// with $PROJECT replaced by the project's name.
	extra string
}

// newHarness writes compose (with $REGISTRY replaced by the registry's
// address) and an agentd config for it.
func newHarness(t *testing.T, compose string, opt options) *harness {
	t.Helper()
	h := &harness{
		t:       t,
		docker:  testenv.Docker(t),
		dir:     t.TempDir(),
		project: testenv.UniqueName("berthit"),
		reg:     opt.reg,
	}
	if h.reg == nil {
		h.reg = testenv.StartRegistry(t)
	}
	t.Cleanup(func() { testenv.RemoveProject(t, h.docker, h.project) })
	h.writeCompose(compose)
	// Unix socket paths are short (108 bytes): keep it out of TempDir.
	h.socket = filepath.Join(os.TempDir(), h.project+".sock")
	h.config = filepath.Join(h.dir, "agentd.yaml")
	cfg := fmt.Sprintf("state_dir: %s\nsocket:\n  path: %s\n%sprojects:\n  %s:\n    compose_file: compose.yaml\n    keep_releases: 5\n%s",
		filepath.Join(h.dir, "state"), h.socket, opt.socket, h.project, opt.project)
	if opt.second != "" {
		second := strings.ReplaceAll(opt.second, "$REGISTRY", h.reg.Addr)
		if err := os.WriteFile(filepath.Join(h.dir, "second.yaml"), []byte(second), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf("  %sb:\n    compose_file: second.yaml\n", h.project)
		t.Cleanup(func() { testenv.RemoveProject(t, h.docker, h.project+"b") })
	}
	cfg += strings.ReplaceAll(opt.extra, "$PROJECT", h.project)
	if err := os.WriteFile(h.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) writeCompose(compose string) {
	h.t.Helper()
	compose = strings.ReplaceAll(compose, "$REGISTRY", h.reg.Addr)
	if err := os.WriteFile(filepath.Join(h.dir, "compose.yaml"), []byte(compose), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

// image builds and pushes a test image and returns its registry digest.
func (h *harness) image(name string, img testenv.Image) string {
	h.t.Helper()
	return testenv.BuildAndPush(h.t, h.docker, h.reg.Ref(name), img)
}

func (h *harness) start() {
	h.t.Helper()
	h.launch()
	h.waitReady()
}

// launch starts agentd without waiting for it to be ready.
func (h *harness) launch() {
	h.t.Helper()
	bin := testenv.Binary(h.t, "./cmd/agentd")
	h.agentd = exec.Command(bin, "--config", h.config)
	h.agentLog, h.waited = testenv.Start(h.t, h.agentd)
	h.t.Cleanup(h.stop)
}

// waitReady waits until agentd's socket accepts connections.
func (h *harness) waitReady() {
	h.t.Helper()
	if err := testenv.WaitSocket(h.socket, 15*time.Second, h.waited); err != nil {
		h.t.Fatalf("agentd %v\n%s", err, h.agentLog)
	}
}

// stop sends SIGTERM and waits for agentd to exit.
func (h *harness) stop() {
	if h.agentd == nil {
		return
	}
	if err := testenv.Terminate(h.agentd.Process, h.waited, 30*time.Second); err != nil {
		h.t.Errorf("agentd %v", err)
	}
	h.agentd = nil
}

// kill stops agentd with SIGKILL, as a crash or the OOM killer would:
// nothing of it runs after this returns. start brings up a new agentd on
// the same config and state directory (recovery runs before it is ready).
func (h *harness) kill() {
	h.t.Helper()
	if h.agentd == nil {
		h.t.Fatal("kill: agentd is not running")
	}
	if err := h.agentd.Process.Kill(); err != nil {
		h.t.Fatalf("kill agentd: %v", err)
	}
	<-h.waited
	h.agentd = nil
}

// ctl runs agentctl against this harness's agentd and returns its combined
// output and exit code.
func (h *harness) ctl(args ...string) (string, int) {
	h.t.Helper()
	return testenv.RunCtl(h.t, h.socket, args...)
}

// deploy runs agentctl deploy and checks its exit code.
func (h *harness) deploy(want int, args ...string) string {
	h.t.Helper()
	out, code := h.ctl(append([]string{"deploy", h.project}, args...)...)
	if code != want {
		h.t.Fatalf("deploy %v: exit %d, want %d\n%s\nagentd log:\n%s", args, code, want, out, h.agentLog)
	}
	return out
}

// deployEvents runs a deploy with --json and returns its events.
func (h *harness) deployEvents(want int, args ...string) []api.Event {
	h.t.Helper()
	out := h.deploy(want, append([]string{"--json"}, args...)...)
	var evs []api.Event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e api.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			h.t.Fatalf("event %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

func (h *harness) history() []api.Release {
	h.t.Helper()
	var rs []api.Release
	testenv.RunCtlJSON(h.t, h.socket, &rs, "history", h.project, "--json")
	return rs
}

func (h *harness) status() api.ProjectStatus {
	h.t.Helper()
	var st []api.ProjectStatus
	if out := testenv.RunCtlJSON(h.t, h.socket, &st, "status", h.project, "--json"); len(st) != 1 {
		h.t.Fatalf("status: %d projects, want 1\n%s", len(st), out)
	}
	return st[0]
}

// containers returns the project's containers as docker ps sees them,
// name -> summary.
func (h *harness) containers() map[string]container.Summary {
	h.t.Helper()
	list, err := h.docker.ContainerList(h.t.Context(), container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+h.project))})
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]container.Summary{}
	for _, c := range list {
		out[strings.TrimPrefix(c.Names[0], "/")] = c
	}
	return out
}

// ids returns container name -> ID.
func (h *harness) ids() map[string]string {
	out := map[string]string{}
	for name, c := range h.containers() {
		out[name] = c.ID
	}
	return out
}

func names(m map[string]string) string {
	var n []string
	for k := range m {
		n = append(n, k)
	}
	sort.Strings(n)
	return strings.Join(n, " ")
}

// sameIDs fails unless every container in before still has its ID.
func (h *harness) sameIDs(before map[string]string, why string) {
	h.t.Helper()
	after := h.ids()
	for name, id := range before {
		if after[name] != id {
			h.t.Errorf("%s: container %s changed: %.12s -> %.12s", why, name, id, after[name])
		}
	}
	if len(after) != len(before) {
		h.t.Errorf("%s: containers were %s, now %s", why, names(before), names(after))
	}
}

// hostPort returns the 127.0.0.1 port published for a container's 8080.
func (h *harness) hostPort(name string) string {
	h.t.Helper()
	c, err := h.docker.ContainerInspect(h.t.Context(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	b := c.NetworkSettings.Ports["8080/tcp"]
	if len(b) == 0 {
		h.t.Fatalf("%s publishes no port 8080", name)
	}
	return b[0].HostPort
}
