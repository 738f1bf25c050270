package agent

import (
	"slices"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/compose/life"
)

// TestStepsRecordedAndDryRun: a release records its rollout's steps, each
// ended, with what it waited for and its time, and sends a step event as
// each one ends; a dry run then prints the steps of the next deploy and
// the critical path from those times, and changes nothing.
func TestStepsRecordedAndDryRun(t *testing.T) {
	r := newRelease(t, shopCompose)
	r.mustDeploy(nil, 0)
	l := r.mustDeploy(map[string]string{"web": webV2}, 0)

	rel := r.get(2)
	if len(rel.Steps) == 0 {
		t.Fatal("release 2 recorded no steps")
	}
	var kinds []string
	for _, st := range rel.Steps {
		kinds = append(kinds, st.Kind)
		if st.State != "done" || st.Started.IsZero() || st.Seconds < 0 {
			t.Errorf("step %+v: want done, with its start and time", st)
		}
		for _, a := range st.After {
			if a >= st.ID {
				t.Errorf("step %d waits for a later step %d", st.ID, a)
			}
		}
		if st.Service != "" && st.Service != "web" {
			t.Errorf("step %d is %s's: only web changed", st.ID, st.Service)
		}
	}
	for _, want := range []string{"rename-aside", "create", "gate", "stop", "monitor"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("no %s step among %v", want, kinds)
		}
	}
	var stepEvents int
	for _, e := range l.evs {
		if e.Type == api.EventStep && e.Step != nil {
			stepEvents++
		}
	}
	if stepEvents != len(rel.Steps) {
		t.Errorf("%d step events for %d steps:\n%s", stepEvents, len(rel.Steps), l)
	}

	before, running := r.all(), r.running()
	code, dry := r.deploy(r.svc, api.DeployRequest{Images: map[string]string{"web": webV3}, DryRun: true}, nil)
	if code != api.ExitOK {
		t.Fatalf("dry run: exit %d:\n%s", code, dry)
	}
	out := dry.String()
	for _, want := range []string{"steps for shop:", "create [web]", "gate [web]", "critical path: about", "from the step times of release 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("the dry run does not say %q:\n%s", want, out)
		}
	}
	if got := r.all(); !slices.Equal(got, before) {
		t.Errorf("the dry run changed containers: %v, before %v", got, before)
	}
	wantMap(t, "running after the dry run", r.running(), running)
	if hist, _ := r.st.History("shop"); len(hist) != 2 {
		t.Errorf("the dry run recorded a release: %d in the history", len(hist))
	}
}

// TestStopDuringWords: compose/life tells when a container was killed in
// the words api records (the service passes them through as they are).
func TestStopDuringWords(t *testing.T) {
	for ours, theirs := range map[string]string{
		life.DuringRollout: api.StopDuringRollout, life.DuringRollback: api.StopDuringRollback,
		life.DuringUndo: api.StopDuringUndo, life.DuringCleanup: api.StopDuringCleanup,
	} {
		if ours != theirs {
			t.Errorf("compose/life says %q where api says %q", ours, theirs)
		}
	}
}
