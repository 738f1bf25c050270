package token

import (
	"errors"
	"sync"
	"time"
)

var (
	errReplayed = errors.New("already used")
	errSeenFull = errors.New("too many recent credentials to remember; try again later")
)

// seen remembers credentials (ID token jtis, request nonces) until they
// could no longer be accepted anyway, so each is accepted once. It holds at
// most max entries: when full it forgets the lapsed ones, and if none has
// lapsed it refuses new credentials rather than forget a live one, which
// would let that one be replayed.
type seen struct {
	mu    sync.Mutex
	max   int
	until map[string]time.Time // key → when it lapses
}

func newSeen(max int) *seen {
	return &seen{max: max, until: map[string]time.Time{}}
}

// add records key until the given time, or fails with errReplayed if it is
// already recorded and has not lapsed at now, or with errSeenFull.
func (s *seen) add(key string, now, until time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.until[key]; ok && !now.After(t) {
		return errReplayed
	}
	if len(s.until) >= s.max {
		for k, t := range s.until {
			if now.After(t) {
				delete(s.until, k)
			}
		}
		if len(s.until) >= s.max {
			return errSeenFull
		}
	}
	s.until[key] = until
	return nil
}

// len is how many entries are held.
func (s *seen) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.until)
}
