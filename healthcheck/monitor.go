package healthcheck

import (
	"context"
	"fmt"
	"time"
)

// Monitor watches containers for window after a rollout and fails at the
// first one that dies (ErrExited), restarts (ErrRestarted) or turns unhealthy
// (ErrUnhealthy) within it. It watches Docker events, inspects every container
// every second in case an event is missed, and at the end of the window
// confirms that each is running with the RestartCount it had at the start.
// It returns nil when the window passes (at once when there is no
// container). If ctx ends first, the error wraps ctx.Err().
func (c *Checker) Monitor(ctx context.Context, containerIDs []string, window time.Duration) error {
	if len(containerIDs) == 0 {
		return nil
	}
	start := time.Now()
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()

	msgs, errs := subscribe(mctx, c.Engine, containerIDs)
	ws := make([]watched, 0, len(containerIDs))
	byID := make(map[string]int, len(containerIDs))
	for _, id := range containerIDs {
		in, err := c.Engine.ContainerInspect(mctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("monitor: %w", ctx.Err())
			}
			return fmt.Errorf("monitor %s: inspect: %w", shortID(id), err)
		}
		w := newWatched(in)
		if p := w.check(in); p != nil {
			return c.monitorFail(ctx, w, p, time.Since(start), window)
		}
		byID[w.id] = len(ws)
		ws = append(ws, w)
	}

	// inspectAll inspects every container and reports the first problem.
	inspectAll := func(final bool) error {
		for _, w := range ws {
			in, err := c.Engine.ContainerInspect(mctx, w.id)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("monitor: %w", ctx.Err())
				}
				return fmt.Errorf("monitor %s: inspect: %w", w.name, err)
			}
			if p := w.check(in); p != nil {
				if final {
					return c.monitorFail(ctx, w, p, window, window)
				}
				return c.monitorFail(ctx, w, p, time.Since(start), window)
			}
		}
		return nil
	}

	end := time.NewTimer(window)
	defer end.Stop()
	ticker := time.NewTicker(c.pollEvery())
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("monitor: %s into the %s window: %w", time.Since(start).Round(time.Millisecond), window, ctx.Err())
		case <-end.C:
			return inspectAll(true)
		case <-ticker.C:
			if err := inspectAll(false); err != nil {
				return err
			}
		case m := <-msgs:
			i, ok := byID[m.Actor.ID]
			if !ok {
				continue
			}
			if p, _ := c.fromEvent(mctx, ws[i], m); p != nil {
				return c.monitorFail(ctx, ws[i], p, time.Since(start), window)
			}
		case <-errs:
			// The stream is over; the ticker carries on alone.
			msgs, errs = nil, nil
			if ctx.Err() != nil {
				return fmt.Errorf("monitor: %w", ctx.Err())
			}
		}
	}
}

// monitorFail reports problem p of w, found after elapsed of window.
func (c *Checker) monitorFail(ctx context.Context, w watched, p *problem, elapsed, window time.Duration) error {
	when := fmt.Sprintf("%s into the %s window", elapsed.Round(time.Millisecond), window)
	if elapsed >= window {
		when = fmt.Sprintf("by the end of the %s window", window)
	}
	return fmt.Errorf("monitor %s: %w %s: %s", w.name, p.err, when, c.explain(ctx, w, p))
}
