package swarm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/store"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// stackLabel names a stack's services and networks (as docker stack deploy).
const stackLabel = "com.docker.stack.namespace"

// harness runs one agentd with one swarm project.
type harness struct {
	t        *testing.T
	manager  *client.Client // the swarm manager agentd deploys to
	env      []string       // added to agentd's environment (DOCKER_HOST)
	dir      string
	project  string
	config   string
	socket   string
	agentd   *exec.Cmd
	agentLog *bytes.Buffer
	waited   <-chan error
}

// newHarness writes compose (with every key of vars replaced by its value)
// and an agentd config with the project on backend swarm. The stack's
// services and networks are removed from manager when the test ends.
func newHarness(t *testing.T, manager *client.Client, env []string, compose string, vars map[string]string) *harness {
	t.Helper()
	h := &harness{t: t, manager: manager, env: env, dir: t.TempDir(), project: testenv.UniqueName("berthsw")}
	t.Cleanup(func() { removeStack(t, manager, h.project) })
	h.writeCompose(compose, vars)
	h.socket = filepath.Join(os.TempDir(), h.project+".sock")
	h.config = filepath.Join(h.dir, "agentd.yaml")
	cfg := fmt.Sprintf("state_dir: %s\nsocket:\n  path: %s\nprojects:\n  %s:\n    compose_file: compose.yaml\n    backend: swarm\n    keep_releases: 10\n",
		filepath.Join(h.dir, "state"), h.socket, h.project)
	if err := os.WriteFile(h.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) writeCompose(compose string, vars map[string]string) {
	h.t.Helper()
	for k, v := range vars {
		compose = strings.ReplaceAll(compose, k, v)
	}
	if err := os.WriteFile(filepath.Join(h.dir, "compose.yaml"), []byte(compose), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) start() {
	h.t.Helper()
	bin := testenv.Binary(h.t, "./cmd/agentd")
	h.agentd = exec.Command(bin, "--config", h.config)
	h.agentd.Env = append(os.Environ(), h.env...)
	h.agentLog, h.waited = testenv.Start(h.t, h.agentd)
	h.t.Cleanup(h.stop)

	if err := testenv.WaitSocket(h.socket, 30*time.Second, h.waited); err != nil {
		if errors.Is(err, testenv.ErrExitedEarly) {
			h.agentd = nil
		}
		h.t.Fatalf("agentd %v\n%s", err, h.agentLog)
	}
}

// stop sends SIGTERM and waits for agentd to exit.
func (h *harness) stop() {
	if h.agentd == nil {
		return
	}
	if err := testenv.Terminate(h.agentd.Process, h.waited, 60*time.Second); err != nil {
		h.t.Errorf("agentd %v", err)
	}
	h.agentd = nil
}

// ctl runs agentctl and returns its combined output and exit code.
func (h *harness) ctl(args ...string) (string, int) {
	h.t.Helper()
	return testenv.RunCtl(h.t, h.socket, args...)
}

// deploy runs agentctl deploy, checks its exit code and returns its output
// and how long it took.
func (h *harness) deploy(want int, args ...string) (string, time.Duration) {
	h.t.Helper()
	began := time.Now()
	out, code := h.ctl(append([]string{"deploy", h.project}, args...)...)
	took := time.Since(began)
	if code != want {
		h.t.Fatalf("deploy %v: exit %d, want %d (%s)\n%s\nagentd log:\n%s", args, code, want, took, out, h.agentLog)
	}
	return out, took
}

func (h *harness) status() api.ProjectStatus {
	h.t.Helper()
	var st []api.ProjectStatus
	if out := testenv.RunCtlJSON(h.t, h.socket, &st, "status", h.project, "--json"); len(st) != 1 {
		h.t.Fatalf("status: %d projects, want 1\n%s", len(st), out)
	}
	return st[0]
}

func (h *harness) history() []api.Release {
	h.t.Helper()
	var rs []api.Release
	testenv.RunCtlJSON(h.t, h.socket, &rs, "history", h.project, "--json")
	return rs
}

// recorded stops agentd, reads release n's recorded desired state from its
// store, and starts agentd again.
func (h *harness) recorded(n int) compose.Desired {
	h.t.Helper()
	h.stop()
	st, err := store.Open(filepath.Join(h.dir, "state", "berth.db"))
	if err != nil {
		h.t.Fatal(err)
	}
	r, err := st.Get(h.project, n)
	st.Close()
	if err != nil {
		h.t.Fatalf("release %d: %v", n, err)
	}
	var d compose.Desired
	if err := json.Unmarshal(r.State, &d); err != nil {
		h.t.Fatalf("release %d: its state: %v\n%s", n, err, r.State)
	}
	h.start()
	return d
}

// services returns the stack's services by name (PROJECT_SERVICE -> SERVICE).
func (h *harness) services() map[string]swarm.Service {
	h.t.Helper()
	list, err := h.manager.ServiceList(h.t.Context(), swarm.ServiceListOptions{
		Filters: filters.NewArgs(filters.Arg("label", stackLabel+"="+h.project))})
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]swarm.Service{}
	for _, s := range list {
		out[strings.TrimPrefix(s.Spec.Name, h.project+"_")] = s
	}
	return out
}

// image returns the image of a service's current spec.
func image(s swarm.Service) string {
	if s.Spec.TaskTemplate.ContainerSpec == nil {
		return ""
	}
	return s.Spec.TaskTemplate.ContainerSpec.Image
}

// runningTasks returns a service's tasks that run and are meant to.
func runningTasks(ctx context.Context, cli *client.Client, serviceID string) ([]swarm.Task, error) {
	tasks, err := cli.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(
		filters.Arg("service", serviceID), filters.Arg("desired-state", "running"))})
	if err != nil {
		return nil, err
	}
	var out []swarm.Task
	for _, t := range tasks {
		if t.Status.State == swarm.TaskStateRunning {
			out = append(out, t)
		}
	}
	return out, nil
}

// removeStack removes the services and networks of stack name from cli, as
// `docker stack rm` does, and waits until the networks are gone.
func removeStack(t *testing.T, cli *client.Client, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 2*time.Minute)
	defer cancel()
	byStack := filters.NewArgs(filters.Arg("label", stackLabel+"="+name))
	svcs, err := cli.ServiceList(ctx, swarm.ServiceListOptions{Filters: byStack})
	if err != nil {
		t.Errorf("remove stack %s: %v", name, err)
		return
	}
	for _, s := range svcs {
		if err := cli.ServiceRemove(ctx, s.ID); err != nil {
			t.Errorf("remove stack %s: service %s: %v", name, s.Spec.Name, err)
		}
	}
	// A network can be removed once the tasks attached to it are gone.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		nets, err := cli.NetworkList(ctx, network.ListOptions{Filters: byStack})
		if err != nil {
			t.Errorf("remove stack %s: networks: %v", name, err)
			return
		}
		var last error
		for _, n := range nets {
			if err := cli.NetworkRemove(ctx, n.ID); err != nil {
				last = err
			}
		}
		if len(nets) == 0 || last == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Errorf("remove stack %s: networks left: %v", name, last)
			return
		case <-tick.C:
		}
	}
}
