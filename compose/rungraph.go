package compose

import (
	"context"
	"sync"
	"time"
)

// GraphRun is how a backend carries out a graph of steps (the engine's
// Executor, compose/swarm's Life): each step starts once the steps it
// waits for are done. A failure in a service whose failure_action is
// continue is said and skips that service's remaining steps; any other
// failure ends the run: steps not begun are skipped, those under way
// cancelled.
type GraphRun struct {
	// Step carries out one step.
	Step func(ctx context.Context, s *Step) error
	// Failed turns the first failed step's error into the error the run
	// ends with; goOn true: the run goes on without the step's service
	// (its failure_action is continue). It is called under the run's
	// lock, with the run's context.
	Failed func(ctx context.Context, s *Step, err error) (end error, goOn bool)
	// Record, when set, is told of every step that ends: skipped (began
	// is zero), done or failed.
	Record func(s *Step, began time.Time, state StepState, err error)
	// Say, when set, is told once of each service the run goes on without.
	Say func(service, format string, args ...any)
	// Now reads the clock when a step begins (nil: time.Now).
	Now func() time.Time
}

// Run carries out g and returns the error that ended it (nil when every
// step ran or only failure_action: continue services failed).
func (r GraphRun) Run(ctx context.Context, g *Graph) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	now := r.Now
	if now == nil {
		now = time.Now
	}
	record := func(s *Step, began time.Time, state StepState, err error) {
		if r.Record != nil {
			r.Record(s, began, state, err)
		}
	}
	done := make(map[int]chan struct{}, len(g.Steps))
	for _, s := range g.Steps {
		done[s.ID] = make(chan struct{})
	}
	var (
		mu       sync.Mutex
		firstErr error
		gaveUp   = map[string]bool{} // services failed under failure_action: continue
		wg       sync.WaitGroup
	)
	for _, s := range g.Steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[s.ID])
			for _, a := range s.After {
				select {
				case <-done[a]:
				case <-ctx.Done():
					record(s, time.Time{}, StepSkipped, nil)
					return
				}
			}
			mu.Lock()
			skip := ctx.Err() != nil || gaveUp[s.Service]
			mu.Unlock()
			if skip {
				record(s, time.Time{}, StepSkipped, nil)
				return
			}
			began := now()
			err := r.Step(ctx, s)
			if err == nil {
				record(s, began, StepDone, nil)
				return
			}
			record(s, began, StepFailed, err)
			mu.Lock()
			defer mu.Unlock()
			if firstErr != nil {
				return // cancelled by the failure already reported
			}
			end, goOn := r.Failed(ctx, s, err)
			if goOn {
				if !gaveUp[s.Service] {
					gaveUp[s.Service] = true
					if r.Say != nil {
						r.Say(s.Service, "failed, going on (failure_action: continue): %v", err)
					}
				}
				return
			}
			firstErr = end
			cancel()
		}()
	}
	wg.Wait()
	return firstErr
}
