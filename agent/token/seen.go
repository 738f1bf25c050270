package token

import (
	"container/heap"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

var (
	errReplayed = errors.New("already used")
	errSeenFull = errors.New("too many unexpired credentials remembered for this identity; try again later")
)

// sweepEvery is how often one add also forgets the lapsed entries of every
// identity, not only its own: an identity that goes quiet does not keep
// its entries past their time for long.
const sweepEvery = time.Minute

// seen remembers credentials (ID token jtis, request nonces) per identity,
// each until the credential could no longer be accepted anyway, so each is
// accepted once. Each identity holds at most max unexpired entries: when
// one is full it refuses that identity's new credentials rather than
// forget a live one (which would let it be replayed); other identities are
// not affected. Only verified credentials reach it, so only an identity's
// own holder can fill its store.
type seen struct {
	what    string // "nonce" or "jti", for messages
	setting string // the config key of max, for messages
	log     *slog.Logger

	mu        sync.Mutex
	max       int // per identity
	by        map[string]*bucket
	lastSweep time.Time
}

// bucket is one identity's entries: a map for lookups and a min-heap by
// lapse time for expiry. Both hold the same keys, one entry each.
type bucket struct {
	until map[string]time.Time
	order expiries
	full  bool // refusing, and said so in the log
}

type expiry struct {
	key   string
	until time.Time
}

// expiries is a min-heap of entries by lapse time.
type expiries []expiry

func (h expiries) Len() int           { return len(h) }
func (h expiries) Less(i, j int) bool { return h[i].until.Before(h[j].until) }
func (h expiries) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiries) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiries) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func newSeen(what, setting string, max int, log *slog.Logger) *seen {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &seen{what: what, setting: setting, log: log, max: max, by: map[string]*bucket{}}
}

// add records key for identity until the given time, or fails with
// errReplayed if the identity has it recorded and it has not lapsed at
// now, or with errSeenFull if the identity holds max unexpired entries.
func (s *seen) add(identity, key string, now, until time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSweep) >= sweepEvery || now.Before(s.lastSweep) {
		s.lastSweep = now
		for id, b := range s.by {
			if b.expire(now); len(b.until) == 0 && id != identity {
				delete(s.by, id)
			}
		}
	}
	b := s.by[identity]
	if b == nil {
		b = &bucket{until: map[string]time.Time{}}
		s.by[identity] = b
	}
	b.expire(now)
	if _, ok := b.until[key]; ok {
		return errReplayed
	}
	if len(b.until) >= s.max {
		next := b.order[0].until.Sub(now).Round(time.Second)
		if !b.full {
			b.full = true
			s.log.Warn("identity refused: its "+s.what+" store is full of unexpired entries",
				"identity", identity, "entries", len(b.until), "max", s.max, "setting", s.setting, "next_expiry_in", next.String())
		}
		return fmt.Errorf("%w (%s holds %d unexpired %ss, at most %d (%s); the oldest lapses in %s)",
			errSeenFull, identity, len(b.until), s.what, s.max, s.setting, next)
	}
	if b.full {
		b.full = false
		s.log.Info("identity accepted again: its "+s.what+" store has room", "identity", identity, "entries", len(b.until), "max", s.max)
	}
	b.until[key] = until
	heap.Push(&b.order, expiry{key, until})
	return nil
}

// expire forgets the entries that have lapsed at now.
func (b *bucket) expire(now time.Time) {
	for len(b.order) > 0 && now.After(b.order[0].until) {
		e := heap.Pop(&b.order).(expiry)
		delete(b.until, e.key)
	}
}

// len is how many entries are held, over all identities.
func (s *seen) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, b := range s.by {
		n += len(b.until)
	}
	return n
}

// lenOf is how many entries identity holds, lapsed or not.
func (s *seen) lenOf(identity string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.by[identity]; b != nil {
		return len(b.until)
	}
	return 0
}
