package sshd

import (
	"net"
	"sync"
	"time"
)

// drainGrace is how long a connection that has run a command may stay
// open once agentd is stopping, so its client reads the exit status and
// hangs up first rather than seeing the connection cut.
const drainGrace = 5 * time.Second

// trackedConn is a server connection with an idle timeout: every read or
// write pushes its deadline forward, except while a command runs (a
// deploy may be quiet for minutes). At shutdown it is drained: closed as
// soon as no command runs on it.
type trackedConn struct {
	net.Conn
	idle time.Duration

	mu       sync.Mutex
	armed    bool // the handshake is done: the idle deadline applies
	running  int  // commands in flight
	ran      bool // a command has run: its output may still be in flight
	draining bool
}

func (c *trackedConn) Read(b []byte) (int, error) {
	c.touch()
	return c.Conn.Read(b)
}

func (c *trackedConn) Write(b []byte) (int, error) {
	c.touch()
	return c.Conn.Write(b)
}

// touch pushes the idle deadline forward.
func (c *trackedConn) touch() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.armed && c.running == 0 && !c.draining {
		c.Conn.SetDeadline(time.Now().Add(c.idle))
	}
}

// arm ends the handshake deadline and starts the idle timeout.
func (c *trackedConn) arm() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed = true
	if c.running == 0 && !c.draining {
		c.Conn.SetDeadline(time.Now().Add(c.idle))
	}
}

// hold suspends the idle timeout while a command runs. It reports false
// when the connection is draining: no command starts then.
func (c *trackedConn) hold() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining {
		return false
	}
	c.running++
	c.ran = true
	c.Conn.SetDeadline(time.Time{})
	return true
}

// release ends a hold; the idle timeout starts again from now, or the
// drain grace when agentd is stopping.
func (c *trackedConn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running--
	if c.running > 0 {
		return
	}
	if c.draining {
		c.Conn.SetDeadline(time.Now().Add(drainGrace))
		return
	}
	c.Conn.SetDeadline(time.Now().Add(c.idle))
}

// drain closes the connection now if it never ran a command, soon if it
// did, or once the commands in flight are done.
func (c *trackedConn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.draining = true
	switch {
	case c.running > 0:
	case c.ran:
		c.Conn.SetDeadline(time.Now().Add(drainGrace))
	default:
		c.Conn.Close()
	}
}

// isDraining reports whether agentd is stopping.
func (c *trackedConn) isDraining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.draining
}
