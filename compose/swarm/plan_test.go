package swarm

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
)

// observed makes the stack as the services' specs say it runs.
func observed(nets []string, svcs ...compose.ServiceSpec) *Observed {
	o := &Observed{Services: map[string]swarm.Service{}, Networks: map[string]network.Summary{}}
	for _, n := range nets {
		o.Networks[n] = network.Summary{Name: n}
	}
	for _, s := range svcs {
		o.Services[s.Swarm.Name] = swarm.Service{ID: "id-" + s.Name, Spec: *s.Swarm}
	}
	return o
}

func TestPlan(t *testing.T) {
	webV1, webV2 := svc("web", "v1"), svc("web", "v2")
	// Same image, another spec (say, an environment variable).
	webEnv := svc("web", "v1")
	setHash(&webEnv, "h-web-v1-env")
	// Same tag, another digest: the pin changed.
	webRepinned := svc("web", "v1")
	webRepinned.Image.Pinned = "reg.example/web@sha256:v1b"
	webRepinned.Swarm.TaskTemplate.ContainerSpec.Image = webRepinned.Image.Pinned
	setHash(&webRepinned, "h-web-v1b")
	// Deployed by `docker stack deploy`: no hash.
	webByStack := svc("web", "v1")
	delete(webByStack.Swarm.Labels, LabelSpecHash)

	for _, tc := range []struct {
		name     string
		desired  *compose.Desired
		observed *Observed
		rollback bool
		force    bool
		want     string
		changed  []string
		empty    bool
	}{{
		name:     "first release",
		desired:  desired(svc("db", "v1"), webV1),
		observed: observed(nil),
		want: "plan for shop:\n  network shop_default: create\n" +
			"  service db: create shop_db (new)\n  service web: create shop_web (new)\n",
		changed: []string{"db", "web"},
	}, {
		name:     "nothing changed",
		desired:  desired(svc("db", "v1"), webV1),
		observed: observed([]string{"shop_default"}, svc("db", "v1"), webV1),
		want:     "plan for shop:\n  service db: unchanged\n  service web: unchanged\n  nothing to change\n",
		empty:    true,
	}, {
		name:     "a new image",
		desired:  desired(svc("db", "v1"), webV2),
		observed: observed([]string{"shop_default"}, svc("db", "v1"), webV1),
		want:     "plan for shop:\n  service db: unchanged\n  service web: update shop_web (image reg.example/web:v1 -> reg.example/web:v2)\n",
		changed:  []string{"web"},
	}, {
		name:     "the same image, another spec",
		desired:  desired(webEnv),
		observed: observed([]string{"shop_default"}, webV1),
		want:     "plan for shop:\n  service web: update shop_web (spec changed)\n",
		changed:  []string{"web"},
	}, {
		name:     "the same tag, another digest",
		desired:  desired(webRepinned),
		observed: observed([]string{"shop_default"}, webV1),
		want:     "plan for shop:\n  service web: update shop_web (image reg.example/web@sha256:v1 -> reg.example/web@sha256:v1b)\n",
		changed:  []string{"web"},
	}, {
		name:     "a service docker stack deploy made",
		desired:  desired(webV1),
		observed: observed([]string{"shop_default"}, webByStack),
		want:     "plan for shop:\n  service web: update shop_web (spec changed)\n",
		changed:  []string{"web"},
	}, {
		name:     "a service gone from the file",
		desired:  desired(webV1),
		observed: observed([]string{"shop_default"}, svc("old", "v1"), webV1),
		want:     "plan for shop:\n  service web: unchanged\n  service old: remove shop_old (no longer in the file)\n",
	}, {
		name:     "a rollback after a crash rechecks what matches",
		desired:  desired(svc("db", "v1"), webV1),
		observed: observed([]string{"shop_default"}, svc("db", "v1"), webV2),
		rollback: true, force: true,
		want: "rollback plan for shop:\n  service db: update shop_db (recheck)\n" +
			"  service web: update shop_web (image reg.example/web:v2 -> reg.example/web:v1)\n",
		changed: []string{"db", "web"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			p := MakePlan(tc.desired, tc.observed, tc.rollback, tc.force)
			if got := p.String(); got != tc.want {
				t.Errorf("plan =\n%s\nwant\n%s", got, tc.want)
			}
			if got := p.ChangedServices(); !slices.Equal(got, tc.changed) {
				t.Errorf("changed = %q, want %q", got, tc.changed)
			}
			if p.Empty() != tc.empty {
				t.Errorf("Empty() = %v, want %v", p.Empty(), tc.empty)
			}
		})
	}
}

func TestGraph(t *testing.T) {
	// db and cache change; web depends on db and has a pre-deploy hook;
	// worker depends on web; old is gone from the file.
	d := desired(
		svc("cache", "v2", monitorFor(3*time.Second)),
		svc("db", "v2"),
		svc("web", "v2", dependsOn("db"), preDeploy("manage.py", "migrate"), monitorFor(10*time.Second)),
		svc("worker", "v2", dependsOn("web")),
	)
	o := observed(nil, svc("cache", "v1"), svc("db", "v1"), svc("web", "v1"), svc("worker", "v1"), svc("old", "v1"))
	g := MakePlan(d, o, false, false).Graph()
	want := strings.Join([]string{
		"steps for shop:",
		"    1. create-network shop_default",
		"    2. update-service [db] shop_db (after 1)",
		"    3. gate [db] shop_db (after 2)",
		"    4. hook [web] manage.py migrate (after 1,3)",
		"    5. update-service [cache] shop_cache (after 1,4)",
		"    6. gate [cache] shop_cache (after 5)",
		"    7. update-service [web] shop_web (after 1,3,4)",
		"    8. gate [web] shop_web (after 7)",
		"    9. update-service [worker] shop_worker (after 1,4,8)",
		"   10. gate [worker] shop_worker (after 9)",
		"   11. remove-service [old] shop_old (after 3,4,6,8,10)",
		"   12. monitor 10s (after 3,4,6,8,10,11)",
		"",
	}, "\n")
	if got := g.String(); got != want {
		t.Errorf("graph =\n%s\nwant\n%s", got, want)
	}

	// A rollback runs no hooks, and watches with the rollback monitor.
	rb := MakePlan(d, o, true, false)
	for i := range rb.Services {
		rb.Services[i].Spec.Policy.Rollback.Monitor = time.Second
	}
	for _, s := range rb.Graph().Steps {
		if s.Kind == compose.StepHook {
			t.Errorf("rollback graph has a hook: %+v", s)
		}
		if s.Kind == compose.StepMonitor && s.Target != "1s" {
			t.Errorf("rollback monitor = %s, want the rollback's 1s", s.Target)
		}
	}

	// Nothing changed: no steps.
	same := MakePlan(desired(svc("web", "v1")), observed([]string{"shop_default"}, svc("web", "v1")), false, false)
	if n := len(same.Graph().Steps); n != 0 {
		t.Errorf("an empty plan has %d steps:\n%s", n, same.Graph())
	}
}
