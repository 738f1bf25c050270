package agent

import (
	"sync"

	"github.com/berth-deploy/berth/agent/api"
)

// locks holds one in-memory deploy lock per project. They live in the
// process, so no lock survives agentd.
type locks struct {
	mu   sync.Mutex
	held map[string]api.Holder
}

// tryLock takes the project's lock for h, or returns the current holder.
func (l *locks) tryLock(project string, h api.Holder) (unlock func(), holder *api.Holder) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur, busy := l.held[project]; busy {
		return nil, &cur
	}
	if l.held == nil {
		l.held = map[string]api.Holder{}
	}
	l.held[project] = h
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.held, project)
	}, nil
}

func (l *locks) holder(project string) *api.Holder {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h, ok := l.held[project]; ok {
		return &h
	}
	return nil
}
