package swarm

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/internal/testenv"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// TestIntegrationLifeOnAOneNodeSwarm runs a release life on the test
// engine's swarm: a first release whose tasks become healthy after 2s, an
// update whose tasks never do (Swarm pauses it), the rollback, and the
// cleanup. The end-to-end cycle through agentd is helper D's; this one
// checks the engine does what the gate expects of it.
func TestIntegrationLifeOnAOneNodeSwarm(t *testing.T) {
	cli := testenv.Docker(t)
	ctx := t.Context()
	testenv.SwarmManager(t, cli)
	proj := fmt.Sprintf("berthlife%d", os.Getpid())
	t.Cleanup(func() { cleanStack(t, cli, proj) })

	build := func(tag string, env map[string]string) string {
		ref := "berth-swarm-life/web:" + proj + "-" + tag
		testenv.Build(t, cli, ref, testenv.Image{Healthcheck: true, Env: env})
		t.Cleanup(func() {
			cli.ImageRemove(context.WithoutCancel(ctx), ref, image.RemoveOptions{Force: true})
		})
		return ref
	}
	v1 := build("v1", map[string]string{"VERSION": "v1", "HEALTHY_AFTER": "2s"})
	v2 := build("v2", map[string]string{"VERSION": "v2", "HEALTH": "fail"})

	spec := func(ref, hash string) compose.ServiceSpec {
		s := svc("web", "x", replicas(2), monitorFor(time.Second), gateLimit(90*time.Second))
		s.Image = compose.Pin{Ref: ref, Pinned: ref}
		s.Swarm.Name = proj + "_web"
		s.Swarm.Labels = map[string]string{LabelNamespace: proj, LabelImage: ref}
		s.Swarm.TaskTemplate.ContainerSpec.Image = ref
		s.Swarm.TaskTemplate.ContainerSpec.Labels = map[string]string{LabelNamespace: proj}
		s.Swarm.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: proj + "_default", Aliases: []string{"web"}}}
		s.Swarm.EndpointSpec = &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR}
		grace := time.Second
		s.Swarm.TaskTemplate.ContainerSpec.StopGracePeriod = &grace
		s.Swarm.UpdateConfig = &swarm.UpdateConfig{Parallelism: 1, Order: swarm.UpdateOrderStartFirst, FailureAction: swarm.UpdateFailureActionPause, Monitor: time.Second}
		s.Swarm.RollbackConfig = &swarm.UpdateConfig{Parallelism: 2, Order: swarm.UpdateOrderStopFirst, FailureAction: swarm.UpdateFailureActionPause, Monitor: time.Second}
		setHash(&s, hash)
		return s
	}
	desiredOf := func(s ...compose.ServiceSpec) *compose.Desired {
		return &compose.Desired{
			Project: proj,
			Networks: []compose.NetworkSpec{{Key: "default", Name: proj + "_default", Options: network.CreateOptions{
				Driver: "overlay", Attachable: true, Labels: map[string]string{LabelNamespace: proj},
			}}},
			Services: s,
		}
	}
	// The states the gate saw web's tasks of each spec in.
	var seenMu sync.Mutex
	seen := map[string]bool{}
	watch := &watchEngine{Engine: cli, seen: func(ts []swarm.Task) {
		seenMu.Lock()
		defer seenMu.Unlock()
		for _, t := range ts {
			seen[taskHash(t)+" "+string(t.Status.State)] = true
		}
	}}
	newL := func(release string) *Life {
		var lines []string
		return &Life{Engine: watch, Project: proj, Release: release, Poll: 100 * time.Millisecond,
			Progress: func(service, msg string) {
				lines = append(lines, service+": "+msg)
				t.Logf("release %s: %s: %s", release, service, msg)
			}}
	}

	prev := desiredOf(spec(v1, "hash-v1"))
	l := newL("1")
	began := time.Now()
	p, err := l.Plan(ctx, prev)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.RollOut(ctx, p, l.Graph(p)); err != nil {
		t.Fatalf("first release: %v", err)
	}
	took := time.Since(began)
	t.Logf("first release (2 tasks healthy after 2s, monitor 1s) took %s", took)
	if took < 2*time.Second {
		t.Errorf("the first release took %s: its tasks are healthy only after 2s", took)
	}
	seenMu.Lock()
	t.Logf("task states seen: %v", mapsKeys(seen))
	if !seen["hash-v1 starting"] {
		t.Errorf("never saw a task starting while its healthcheck had not passed: %v", seen)
	}
	seenMu.Unlock()

	l2 := newL("2")
	p2, err := l2.Plan(ctx, desiredOf(spec(v2, "hash-v2")))
	if err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	err = l2.RollOut(ctx, p2, l2.Graph(p2))
	t.Logf("the failing release failed after %s: %v", time.Since(began), err)
	if err == nil || !strings.Contains(err.Error(), "service web") || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("failing release: err = %v, want Swarm's pause", err)
	}

	began = time.Now()
	if err := newL("1").RollBack(ctx, prev, false); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	t.Logf("rollback took %s", time.Since(began))
	svc, _, err := cli.ServiceInspectWithRaw(ctx, proj+"_web", swarm.ServiceInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.Labels[LabelSpecHash] != "hash-v1" || svc.Spec.Labels[LabelRelease] != "1" {
		t.Errorf("web after the rollback: labels %v", svc.Spec.Labels)
	}
	tasks, err := cli.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", proj+"_web"), filters.Arg("desired-state", "running"))})
	if err != nil {
		t.Fatal(err)
	}
	var running []string
	for _, tk := range tasks {
		running = append(running, taskHash(tk)+" "+string(tk.Status.State))
	}
	if !slices.Equal(running, []string{"hash-v1 running", "hash-v1 running"}) {
		t.Errorf("web's tasks after the rollback: %q", running)
	}

	st, err := Status(ctx, cli, proj)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		t.Logf("status: %s %s %d/%d update %s release %s", s.Name, s.Mode, s.Running, s.Replicas, s.UpdateState, s.Release)
		for _, tk := range s.Tasks {
			t.Logf("status:   slot %d on %s %s/%s health %q release %q %s", tk.Slot, tk.Node, tk.State, tk.DesiredState, tk.Health, tk.Release, tk.Error)
		}
	}

	began = time.Now()
	if err := newL("3").Cleanup(ctx, &compose.Desired{Project: proj}); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	t.Logf("cleanup (the service and its network) took %s", time.Since(began))
	// The manager removes a network's node copies after the call returns:
	// it is gone from the list shortly after.
	deadline := time.Now().Add(30 * time.Second)
	for {
		o, err := Observe(ctx, cli, proj)
		if err != nil {
			t.Fatal(err)
		}
		if len(o.Services)+len(o.Networks) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after the cleanup the stack still has %v and %v", sortedNames(o.Services), sortedNames(o.Networks))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mapsKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// watchEngine shows every task list the life makes to seen.
type watchEngine struct {
	Engine
	seen func([]swarm.Task)
}

func (w *watchEngine) TaskList(ctx context.Context, o swarm.TaskListOptions) ([]swarm.Task, error) {
	ts, err := w.Engine.TaskList(ctx, o)
	if err == nil {
		w.seen(ts)
	}
	return ts, err
}

// cleanStack removes what the test's stack left.
func cleanStack(t *testing.T, cli *client.Client, proj string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), time.Minute)
	defer cancel()
	o, err := Observe(ctx, cli, proj)
	if err != nil {
		t.Logf("clean %s: %v", proj, err)
		return
	}
	for _, s := range o.Services {
		cli.ServiceRemove(ctx, s.ID)
	}
	l := &Life{Engine: cli, Project: proj, Poll: 200 * time.Millisecond}
	if err := l.removeNetworks(ctx, sortedNames(o.Networks)); err != nil {
		t.Logf("clean %s: %v", proj, err)
	}
}
