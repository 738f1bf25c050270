package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/berth-deploy/berth/agent/api"
)

// locks holds one in-memory deploy lock per project. They live in the
// process, so no deploy lock survives agentd; an operator's hold (agentctl
// lock) lives in the store and is checked here too.
type locks struct {
	mu      sync.Mutex
	held    map[string]api.Holder
	changed chan struct{} // closed and replaced whenever a lock is released
}

// HoldStore is where operator holds are kept.
type HoldStore interface {
	Hold(project string) (*api.Holder, error)
}

// acquire takes the project's deploy lock for h. When the project is
// busy (another deploy, or an operator's hold) it waits up to wait for it
// to free up, and then returns the holder that refused it.
func (l *locks) acquire(ctx context.Context, holds HoldStore, project string, h api.Holder, wait time.Duration) (unlock func(), holder *api.Holder, err error) {
	var deadline <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		deadline = t.C
	}
	for {
		unlock, holder, changed, err := l.try(holds, project, h)
		if err != nil || holder == nil {
			return unlock, nil, err
		}
		if wait <= 0 {
			return nil, holder, nil
		}
		select {
		case <-changed:
		case <-deadline:
			return nil, holder, nil
		case <-ctx.Done():
			return nil, holder, ctx.Err()
		}
	}
}

func (l *locks) try(holds HoldStore, project string, h api.Holder) (func(), *api.Holder, <-chan struct{}, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	if cur, busy := l.held[project]; busy {
		return nil, &cur, l.changed, nil
	}
	hold, err := holds.Hold(project)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("lock %s: %w", project, err)
	}
	if hold != nil {
		return nil, hold, l.changed, nil
	}
	if l.held == nil {
		l.held = map[string]api.Holder{}
	}
	l.held[project] = h
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.held, project)
		l.notify()
	}, nil, nil, nil
}

// notify wakes everyone waiting for a lock; call with mu held.
func (l *locks) notify() {
	if l.changed != nil {
		close(l.changed)
	}
	l.changed = make(chan struct{})
}

// released tells waiters that an operator's hold was lifted.
func (l *locks) released() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.notify()
}

func (l *locks) holder(project string) *api.Holder {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h, ok := l.held[project]; ok {
		return &h
	}
	return nil
}

// refusal says who holds a lock, since when and why.
func refusal(project string, h *api.Holder) string {
	what := "is running " + h.Verb
	if h.Verb == "lock" {
		what = "locked it"
	}
	msg := fmt.Sprintf("project %s is locked: %s %s since %s", project, h.Identity, what, h.Since.Format(time.RFC3339))
	if h.Message != "" {
		msg += fmt.Sprintf(" (%q)", h.Message)
	}
	return msg
}
