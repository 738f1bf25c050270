// Package sshd is agentd's SSH front door. CI runs one command of the
// grammar per session, e.g.
//
//	ssh -p 2222 deploy@host deploy shop --image web=registry/web@sha256:...
//
// and the SSH exit status is the command's exit code. Clients prove a
// public key (nothing else is offered); a key no identity holds, or one
// used from outside its from= patterns, gets a session whose every
// command exits 4. No shell runs, no pty is given, and nothing is
// forwarded or opened: not ports, not agents, not X11, not sftp.
package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/clip"
	"github.com/berth-deploy/berth/agent/config"
	"golang.org/x/crypto/ssh"
)

// Runner runs one command of the grammar for an authenticated principal;
// its result is the exit status. stdin carries the env file and
// per-request registry credentials; progress goes to stdout, errors to
// stderr.
type Runner interface {
	Run(ctx context.Context, p auth.Principal, args []string, stdin io.Reader, stdout, stderr io.Writer) int
}

// Server is the SSH front door.
type Server struct {
	Config     config.SSH
	Identities *auth.Identities
	Runner     Runner
	Signer     ssh.Signer // the host key
	Log        *slog.Logger
}

// Permissions extensions the public key callback fills in. They are read
// back only from the verified ssh.ServerConn.Permissions.
const (
	extIdentity    = "berth-identity"
	extFrom        = "berth-from"
	extFingerprint = "berth-fingerprint"
	extUnknown     = "berth-unknown"
)

// maxSessions caps the sessions open at once on one connection, as
// OpenSSH's MaxSessions does by default.
const maxSessions = 10

// Serve accepts connections on ln until ctx ends, then closes the
// listener and waits for sessions in flight (a deploy in flight
// finishes). Connections with no command running are closed at once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.check(); err != nil {
		ln.Close()
		return err
	}
	cfg := s.serverConfig()
	h := s.handler()
	slots := make(chan struct{}, s.Config.MaxConnections)
	// On the way out, whatever the reason: close the listener, drain the
	// connections (see serveConn), then wait for them.
	var conns sync.WaitGroup
	defer conns.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	context.AfterFunc(ctx, func() { ln.Close() })

	var backoff time.Duration
	var full overCap
	var waiting handshakes
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !retryable(err) {
				return fmt.Errorf("accept ssh connection: %w", err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.Log.WarnContext(ctx, "ssh accept failed; retrying", "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			continue
		}
		backoff = 0
		if !s.admit(ctx, slots, &waiting) {
			// Over the cap, with no handshake to make room: closed
			// before a byte is read or written.
			full.refused(ctx, s.Log, c.RemoteAddr(), s.Config.MaxConnections)
			c.Close()
			continue
		}
		p := waiting.add(c)
		conns.Go(func() {
			defer func() { <-slots }()
			defer waiting.done(p)
			s.serveConn(ctx, c, cfg, h, func() { waiting.done(p) })
		})
	}
}

// admit takes a connection slot. At the cap it closes the connection that
// has been waiting longest in its handshake, and takes the slot that frees:
// so a flood of connections that never speak cannot keep CI out, since a
// real client authenticates in milliseconds, after which it is no longer
// the one evicted.
func (s *Server) admit(ctx context.Context, slots chan struct{}, waiting *handshakes) bool {
	select {
	case slots <- struct{}{}:
		return true
	default:
	}
	if !waiting.evictOldest() {
		return false
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// handshakes are the connections still in their handshake, oldest first.
type handshakes struct {
	mu   sync.Mutex
	list []*pending
}

type pending struct{ c net.Conn }

func (hs *handshakes) add(c net.Conn) *pending {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	p := &pending{c: c}
	hs.list = append(hs.list, p)
	return p
}

// done takes p off the list: its handshake is over (or it is gone).
func (hs *handshakes) done(p *pending) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	for i, q := range hs.list {
		if q == p {
			hs.list = append(hs.list[:i], hs.list[i+1:]...)
			return
		}
	}
}

// evictOldest closes the connection longest in its handshake.
func (hs *handshakes) evictOldest() bool {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if len(hs.list) == 0 {
		return false
	}
	p := hs.list[0]
	hs.list = hs.list[1:]
	p.c.Close()
	return true
}

// check refuses a Server that cannot serve.
func (s *Server) check() error {
	switch {
	case s.Signer == nil:
		return errors.New("serve ssh: no host key")
	case s.Runner == nil:
		return errors.New("serve ssh: no runner")
	case s.Log == nil:
		return errors.New("serve ssh: no logger")
	case s.Config.MaxConnections < 1 || s.Config.HandshakeTimeout <= 0 || s.Config.IdleTimeout <= 0 || s.Config.MaxCommandBytes < 1:
		return errors.New("serve ssh: max_connections, handshake_timeout, idle_timeout and max_command_bytes must be positive")
	}
	return nil
}

// retryable reports whether an accept error passes: out of file
// descriptors (a connection flood) or a connection reset before accept.
func retryable(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// overCap logs connections refused over MaxConnections: the first at
// once, then at most one line a second with how many were refused, so a
// flood does not flood the log too.
type overCap struct {
	last    time.Time
	pending int
}

func (o *overCap) refused(ctx context.Context, log *slog.Logger, remote net.Addr, limit int) {
	o.pending++
	if time.Since(o.last) < time.Second {
		return
	}
	log.WarnContext(ctx, "ssh connection refused", "remote", remote.String(), "reason", "max_connections reached",
		"max_connections", limit, "refused", o.pending)
	o.last, o.pending = time.Now(), 0
}

// serverConfig offers public key authentication and nothing else.
func (s *Server) serverConfig() *ssh.ServerConfig {
	cfg := &ssh.ServerConfig{
		MaxAuthTries:      s.Config.MaxAuthTries,
		PublicKeyCallback: s.publicKey,
		AuthLogCallback: func(meta ssh.ConnMetadata, method string, err error) {
			if err != nil && !errors.Is(err, ssh.ErrNoAuth) {
				s.Log.Debug("ssh authentication attempt failed", "remote", meta.RemoteAddr().String(),
					"user", clip.F(meta.User()), "method", clip.F(method), "err", clip.String(err.Error(), 2*clip.Field))
			}
		},
		ServerVersion: "SSH-2.0-berth-agentd",
	}
	cfg.AddHostKey(s.Signer)
	return cfg
}

// publicKey accepts every key: x/crypto calls it for keys the client
// merely offers, and completes the authentication only once the client
// has signed with the key. It decides nothing; it records what the key is
// in the Permissions, which x/crypto keeps for the key that was verified.
// An unknown key is accepted too, so that it gets exit status 4 and a
// message rather than SSH's 255.
func (s *Server) publicKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	fp := ssh.FingerprintSHA256(key)
	ext := map[string]string{extFingerprint: fp}
	var name, from string
	ok := false
	if s.Identities != nil {
		name, from, ok = s.Identities.ByKey(key)
	}
	if ok {
		ext[extIdentity], ext[extFrom] = name, from
	} else {
		ext[extUnknown] = "1"
	}
	s.Log.Debug("ssh key offered", "remote", meta.RemoteAddr().String(), "user", clip.F(meta.User()), "fingerprint", fp, "identity", name)
	return &ssh.Permissions{Extensions: ext}, nil
}

// caller is who the verified handshake says the client is.
type caller struct {
	principal auth.Principal
	// refusal says why the caller may run nothing; "" when it may.
	refusal string
}

// authorize decides who the client is and whether it may run commands.
//
// SECURITY: the decision is made only from sc.Permissions, which x/crypto
// sets from the key whose signature it verified, never from anything the
// public key callback saw: the callback also runs for keys the client only
// offers, so a client may offer key A without signing and then
// authenticate with key B (the CVE-2024-45337 class of bug). It is B.
func authorize(sc *ssh.ServerConn) caller {
	var ext map[string]string
	if sc.Permissions != nil {
		ext = sc.Permissions.Extensions
	}
	fp := ext[extFingerprint]
	if fp == "" {
		fp = "(none)"
	}
	p := auth.Principal{Identity: ext[extIdentity], Method: "ssh", Detail: fp, Remote: sc.RemoteAddr().String()}
	if ext[extUnknown] != "" || p.Identity == "" {
		p.Identity = ""
		return caller{principal: p, refusal: fmt.Sprintf("key %s is not allowed here", fp)}
	}
	if from := ext[extFrom]; from != "" && !auth.MatchFrom(from, sc.RemoteAddr()) {
		host, _, err := net.SplitHostPort(p.Remote)
		if err != nil {
			host = p.Remote
		}
		return caller{principal: p, refusal: fmt.Sprintf("key %s (identity %s) is not allowed from %s", fp, p.Identity, host)}
	}
	return caller{principal: p}
}

// serveConn runs one connection: handshake, then its sessions.
func (s *Server) serveConn(ctx context.Context, raw net.Conn, cfg *ssh.ServerConfig, h handler, handshakeDone func()) {
	remote := raw.RemoteAddr().String()
	c := &trackedConn{Conn: raw, idle: s.Config.IdleTimeout}
	defer c.Close()
	// At shutdown a connection with no command running closes at once;
	// one running a command closes once the command is done.
	stop := context.AfterFunc(ctx, c.drain)
	defer stop()

	// The handshake deadline covers key exchange and authentication, so a
	// connection that never completes them gives its slot back.
	if err := raw.SetDeadline(time.Now().Add(s.Config.HandshakeTimeout)); err != nil {
		s.Log.InfoContext(ctx, "ssh connection refused", "remote", remote, "reason", err.Error())
		return
	}
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		// The error may quote what the client sent (the algorithms it
		// offers): clipped, like every field a caller controls.
		s.Log.InfoContext(ctx, "ssh connection refused", "remote", remote, "reason", clip.String("handshake: "+err.Error(), 2*clip.Field))
		return
	}
	defer sc.Close()
	who := authorize(sc)
	if who.refusal == "" {
		// Only a connection let in can no longer be evicted for room.
		handshakeDone()
	}
	if who.refusal == "" {
		c.arm()
	} else {
		// A refused key is accepted only to be told so with exit status
		// 4; since any key gets this far, its connection may not hold a
		// slot longer than a handshake could, however busy it keeps it.
		raw.SetDeadline(time.Now().Add(s.Config.HandshakeTimeout))
	}
	go s.refuseGlobal(ctx, reqs, who)

	open := make(chan struct{}, maxSessions)
	var sessions sync.WaitGroup
	defer sessions.Wait()
	for nc := range chans {
		kind := nc.ChannelType()
		reason, why := "", ssh.Prohibited
		switch {
		case kind != "session":
			reason = "agentd opens and forwards nothing: it runs commands"
		case c.isDraining():
			reason, why = "agentd is stopping", ssh.ResourceShortage
		default:
			select {
			case open <- struct{}{}:
			default:
				reason, why = fmt.Sprintf("at most %d sessions at once", maxSessions), ssh.ResourceShortage
			}
		}
		if reason != "" {
			s.refused(ctx, who, "channel", kind, reason)
			nc.Reject(why, reason)
			continue
		}
		sessions.Go(func() {
			defer func() { <-open }()
			s.serveSession(ctx, c, who, nc, h)
		})
	}
}

// refuseGlobal answers every global request of a connection with a no:
// port forwarding (tcpip-forward, streamlocal-forward@openssh.com) and
// all else.
func (s *Server) refuseGlobal(ctx context.Context, reqs <-chan *ssh.Request, who caller) {
	for req := range reqs {
		if req.Type != "keepalive@openssh.com" && req.Type != "no-more-sessions@openssh.com" {
			s.refused(ctx, who, "global request", req.Type, "agentd forwards nothing")
		}
		if req.WantReply {
			req.Reply(false, nil)
		}
	}
}

// refused logs one refused channel or request.
func (s *Server) refused(ctx context.Context, who caller, what, kind, reason string) {
	level := slog.LevelInfo
	switch kind {
	case "env", "window-change", "keepalive@openssh.com":
		// Clients send these unasked (Debian's ssh_config has SendEnv).
		level = slog.LevelDebug
	}
	s.Log.Log(ctx, level, "ssh "+what+" refused", "type", clip.F(kind), "reason", clip.String(reason, 2*clip.Field),
		"identity", who.principal.Identity, "fingerprint", who.principal.Detail, "remote", who.principal.Remote)
}
