package swarm

import (
	"context"
	"slices"
	"testing"

	"github.com/berth-deploy/berth/compose"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/swarm"
)

func TestStatus(t *testing.T) {
	f := newFakeSwarm()
	if err := deploy(t, newLife(f, "1"), desired(svc("web", "v1", replicas(2)))); err != nil {
		t.Fatal(err)
	}
	checked := func(s *compose.ServiceSpec) {
		s.Swarm.TaskTemplate.ContainerSpec.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/testapp", "check"}}
	}
	if err := deploy(t, newLife(f, "2"), desired(svc("web", "v2", replicas(2), checked))); err != nil {
		t.Fatal(err)
	}
	// A task of slot 1 failed after the running one started (a restart
	// of a failing update): three tasks in the slot, the oldest (v1's)
	// left out.
	f.mu.Lock()
	web := f.byName("shop_web")
	f.addTask(web, 1, swarm.TaskStateFailed, "task: non-zero exit (1)")
	f.mu.Unlock()
	st, err := Status(context.Background(), f, project)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 {
		t.Fatalf("status = %+v", st)
	}
	s := st[0]
	if s.Name != "web" || s.Mode != "replicated" || s.Replicas != 2 || s.Running != 2 || s.Release != "2" ||
		s.Image != "reg.example/web@sha256:v2" || s.UpdateState != "completed" {
		t.Errorf("service status = %+v", s)
	}
	var got []string
	for _, tk := range s.Tasks {
		got = append(got, tk.Node+" "+string(rune('0'+tk.Slot))+" "+tk.State+"/"+tk.DesiredState+" "+tk.Health+" "+tk.Release+" "+tk.Error)
	}
	// The running task is the slot's current one, though the failed one
	// is newer.
	want := []string{
		"manager-1 1 running/running healthy 2 ",
		"manager-1 1 failed/shutdown  2 task: non-zero exit (1)",
		"manager-1 2 running/running healthy 2 ",
		"manager-1 2 shutdown/shutdown  1 ",
	}
	if !slices.Equal(got, want) {
		t.Errorf("tasks =\n%q\nwant\n%q", got, want)
	}
}
