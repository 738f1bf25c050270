package agent

import (
	"fmt"
	"strings"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/compose/swarm"
)

// StepPending is the state of a step that has not ended (in the journal
// before the rollout, and in a release agentd died during).
const StepPending = "pending"

// StepInterrupted is the state recovery gives a step still pending when
// agentd died.
const StepInterrupted = "interrupted"

// pendingSteps is a graph as the journal records it before the rollout.
func pendingSteps(g *compose.Graph) []api.Step {
	out := make([]api.Step, len(g.Steps))
	for i, s := range g.Steps {
		out[i] = api.Step{ID: s.ID, Kind: string(s.Kind), Service: s.Service, Target: s.Target, After: s.After, State: StepPending}
	}
	return out
}

// stepEnded records on the release how a step of its rollout ended, and
// tells the caller (a step event).
func (r *releaseRun) stepEnded(res compose.StepResult) {
	r.stepMu.Lock()
	i := res.ID - 1
	if i < 0 || i >= len(r.release.Steps) || r.release.Steps[i].ID != res.ID {
		r.stepMu.Unlock()
		return
	}
	st := &r.release.Steps[i]
	st.State, st.Started, st.Error = string(res.State), res.Started, res.Error
	st.Seconds = res.Took.Round(time.Millisecond).Seconds()
	step := *st
	r.stepMu.Unlock()
	msg := fmt.Sprintf("step %d %s %s: %s", step.ID, step.Kind, step.Target, step.State)
	if step.State != string(compose.StepSkipped) {
		msg += fmt.Sprintf(" in %.1fs", step.Seconds)
	}
	r.event(api.Event{Type: api.EventStep, Service: step.Service, Message: msg, Step: &step})
}

// defaultStepTime is what a step is expected to take when no earlier
// release of the project recorded one of its kind for its service.
var defaultStepTime = map[compose.StepKind]time.Duration{
	compose.StepHook:   10 * time.Second,
	compose.StepCreate: time.Second,
	compose.StepStart:  time.Second,
	compose.StepGate:   10 * time.Second,
	compose.StepSwitch: time.Second,
	compose.StepDrain:  2 * time.Second,
	compose.StepStop:   5 * time.Second,
	compose.StepForget: time.Second,
	// A Swarm service's create or update is one call; Swarm replaces
	// its tasks during the gate that follows.
	swarm.StepUpdateService: time.Second,
	swarm.StepRemoveService: 2 * time.Second,
}

// estimate says how long the graph should take at least: its critical
// path, each step weighing what it took in the newest release that
// recorded it (by kind and service), or a default.
func (r *releaseRun) estimate(g *compose.Graph) string {
	took := map[string]time.Duration{}
	from := 0
	if hist, err := r.svc.store.History(r.project); err == nil {
		for _, rel := range hist { // newest first
			for _, st := range rel.Steps {
				key := st.Kind + "/" + st.Service
				if _, ok := took[key]; !ok && st.State == string(compose.StepDone) {
					took[key] = time.Duration(st.Seconds * float64(time.Second))
					if from == 0 {
						from = rel.Number
					}
				}
			}
		}
	}
	measured := 0
	total, path := g.CriticalPath(func(s *compose.Step) time.Duration {
		if d, ok := took[string(s.Kind)+"/"+s.Service]; ok {
			measured++
			return d
		}
		if w := s.Wait(); w > 0 {
			return w
		}
		return defaultStepTime[s.Kind]
	})
	var names []string
	for _, s := range path {
		name := string(s.Kind)
		if s.Service != "" {
			name += " " + s.Service
		}
		names = append(names, fmt.Sprintf("%d. %s", s.ID, name))
	}
	basis := "default step times (no earlier release recorded its steps)"
	if from != 0 {
		basis = fmt.Sprintf("the step times of release %d and older where recorded, defaults for %d other step(s)", from, len(g.Steps)-measured)
	}
	return fmt.Sprintf("critical path: about %s, from %s: %s", total.Round(100*time.Millisecond), basis, strings.Join(names, " -> "))
}
