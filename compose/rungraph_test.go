package compose

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// graphLog records what a GraphRun did.
type graphLog struct {
	mu     sync.Mutex
	ran    []string
	states map[int]StepState
	said   []string
}

func (l *graphLog) run(fail map[int]error, block int) GraphRun {
	l.states = map[int]StepState{}
	return GraphRun{
		Step: func(ctx context.Context, s *Step) error {
			l.mu.Lock()
			l.ran = append(l.ran, s.Target)
			l.mu.Unlock()
			if s.ID == block {
				<-ctx.Done()
				return ctx.Err()
			}
			return fail[s.ID]
		},
		Failed: func(_ context.Context, s *Step, err error) (error, bool) {
			if s.Service == "cont" {
				return nil, true
			}
			return fmt.Errorf("service %s: %w", s.Service, err), false
		},
		Record: func(s *Step, began time.Time, state StepState, _ error) {
			l.mu.Lock()
			defer l.mu.Unlock()
			if began.IsZero() != (state == StepSkipped) {
				panic(fmt.Sprintf("step %d %s: began %v", s.ID, state, began))
			}
			l.states[s.ID] = state
		},
		Say: func(service, format string, args ...any) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.said = append(l.said, service+": "+fmt.Sprintf(format, args...))
		},
	}
}

// TestGraphRunOrder: a step begins after the steps it waits for.
func TestGraphRunOrder(t *testing.T) {
	g := &Graph{Steps: []*Step{
		{ID: 1, Service: "db", Target: "db"},
		{ID: 2, Service: "web", Target: "web", After: []int{1}},
		{ID: 3, Service: "worker", Target: "worker", After: []int{2}},
	}}
	var l graphLog
	if err := l.run(nil, 0).Run(t.Context(), g); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if want := []string{"db", "web", "worker"}; !slices.Equal(l.ran, want) {
		t.Errorf("ran %v, want %v", l.ran, want)
	}
	for id := 1; id <= 3; id++ {
		if l.states[id] != StepDone {
			t.Errorf("step %d %s, want done", id, l.states[id])
		}
	}
}

// TestGraphRunContinue: a service the run goes on without is said once
// and its later steps are skipped; the other services' steps run.
func TestGraphRunContinue(t *testing.T) {
	g := &Graph{Steps: []*Step{
		{ID: 1, Service: "cont", Target: "cont-1"},
		{ID: 2, Service: "cont", Target: "cont-2", After: []int{1}},
		{ID: 3, Service: "web", Target: "web", After: []int{1}},
	}}
	var l graphLog
	if err := l.run(map[int]error{1: errors.New("unhealthy")}, 0).Run(t.Context(), g); err != nil {
		t.Fatalf("Run: %v, want none (failure_action continue)", err)
	}
	if l.states[1] != StepFailed || l.states[2] != StepSkipped || l.states[3] != StepDone {
		t.Errorf("states %v, want 1 failed, 2 skipped, 3 done", l.states)
	}
	if len(l.said) != 1 || !strings.HasPrefix(l.said[0], "cont: failed, going on (failure_action: continue): unhealthy") {
		t.Errorf("said %q", l.said)
	}
}

// TestGraphRunFailureEndsTheRun: the first failure is the run's error;
// a step under way is cancelled and steps not begun are skipped.
func TestGraphRunFailureEndsTheRun(t *testing.T) {
	g := &Graph{Steps: []*Step{
		{ID: 1, Service: "slow", Target: "slow"},
		{ID: 2, Service: "web", Target: "web"},
		{ID: 3, Service: "worker", Target: "worker", After: []int{2}},
	}}
	var l graphLog
	boom := errors.New("boom")
	err := l.run(map[int]error{2: boom}, 1).Run(t.Context(), g)
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "service web: ") {
		t.Fatalf("Run: %v, want web's failure", err)
	}
	if l.states[1] != StepFailed || l.states[2] != StepFailed || l.states[3] != StepSkipped {
		t.Errorf("states %v, want 1 failed (cancelled), 2 failed, 3 skipped", l.states)
	}
	if slices.Contains(l.ran, "worker") {
		t.Errorf("ran %v: worker began after the failure", l.ran)
	}
}
