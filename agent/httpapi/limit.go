package httpapi

import (
	"container/list"
	"context"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Limiter caps the connections a listener hands out. When the cap is
// reached, a new connection evicts the one that has been open longest
// without a request on it passing authentication (see Authenticated), as
// the SSH server does with handshakes: a flood of connections that never
// authenticate cannot keep CI out, since a real client authenticates in
// its first request, after which its connection is no longer the one
// evicted. When every connection has authenticated, the new one is closed
// before a byte is read.
//
// Serve it with ConnContext as the http.Server's ConnContext. TLS goes on
// top of it (tls.NewListener(limiter, ...)), so an eviction closes the
// TCP connection under the TLS one.
type Limiter struct {
	net.Listener
	max int
	log *slog.Logger

	mu      sync.Mutex
	open    int
	waiting list.List // of *limitedConn not yet authenticated, oldest first
	evicted floodLog
	refused floodLog
}

// LimitConns wraps ln so that at most max of its connections are open at
// once.
func LimitConns(ln net.Listener, max int, log *slog.Logger) *Limiter {
	return &Limiter{Listener: ln, max: max, log: log}
}

// Accept returns the next connection admitted under the cap.
func (l *Limiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
	}
}

// admit counts c in, evicting the oldest unauthenticated connection when
// the cap is reached; nil means c was refused (and closed).
func (l *Limiter) admit(c net.Conn) *limitedConn {
	l.mu.Lock()
	var evict *limitedConn
	if l.open >= l.max {
		front := l.waiting.Front()
		if front == nil {
			l.mu.Unlock()
			c.Close()
			l.refused.note(l.log, "http connection refused", c.RemoteAddr(), l.max)
			return nil
		}
		evict = front.Value.(*limitedConn)
		l.forgetLocked(evict)
	}
	lc := &limitedConn{Conn: c, l: l}
	lc.elem = l.waiting.PushBack(lc)
	l.open++
	l.mu.Unlock()
	if evict != nil {
		evict.Conn.Close()
		l.evicted.note(l.log, "http connection evicted", evict.RemoteAddr(), l.max)
	}
	return lc
}

// forgetLocked stops counting c; l.mu is held.
func (l *Limiter) forgetLocked(c *limitedConn) {
	if c.gone {
		return
	}
	c.gone = true
	l.open--
	if c.elem != nil {
		l.waiting.Remove(c.elem)
		c.elem = nil
	}
}

// Open returns how many connections are open and how many of them have
// not authenticated.
func (l *Limiter) Open() (open, unauthenticated int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.waiting.Len()
}

type connKey struct{}

// ConnContext remembers a request's connection, so that Authenticated
// can find it; set it as the http.Server's ConnContext.
func (l *Limiter) ConnContext(ctx context.Context, c net.Conn) context.Context {
	for {
		if lc, ok := c.(*limitedConn); ok {
			return context.WithValue(ctx, connKey{}, lc)
		}
		inner, ok := c.(interface{ NetConn() net.Conn }) // *tls.Conn
		if !ok {
			return ctx
		}
		c = inner.NetConn()
	}
}

// Authenticated marks the connection of a request's context as one on
// which a request passed authentication: it is no longer evicted for
// room. Outside a Limiter it does nothing.
func Authenticated(ctx context.Context) {
	lc, ok := ctx.Value(connKey{}).(*limitedConn)
	if !ok {
		return
	}
	l := lc.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if lc.elem != nil {
		l.waiting.Remove(lc.elem)
		lc.elem = nil
	}
}

// limitedConn is a connection counted by a Limiter.
type limitedConn struct {
	net.Conn
	l *Limiter
	// Guarded by l.mu.
	elem *list.Element // in l.waiting until authenticated
	gone bool          // closed or evicted: no longer counted
}

func (c *limitedConn) Close() error {
	c.l.mu.Lock()
	c.l.forgetLocked(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// floodLog logs one kind of event that a flood repeats: the first at
// once, then at most one line a second with how many there were.
type floodLog struct {
	mu      sync.Mutex
	last    time.Time
	pending int
}

func (f *floodLog) note(log *slog.Logger, msg string, remote net.Addr, limit int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending++
	if time.Since(f.last) < time.Second {
		return
	}
	log.Warn(msg, "remote", remote.String(), "reason", "max_connections reached", "max_connections", limit, "count", f.pending)
	f.last, f.pending = time.Now(), 0
}
