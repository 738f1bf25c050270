package sshd

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/clip"
	"golang.org/x/crypto/ssh"
)

// request is one command request of a session (exec, shell or
// subsystem) as the middleware sees it.
type request struct {
	kind   string // exec, shell or subsystem
	line   string // the exec command line, or the subsystem name
	pty    bool   // the session asked for a terminal first
	args   []string
	caller caller
	conn   *trackedConn
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// refused says why a middleware refused the request, for the audit line.
	refused string
}

// handler serves a request and returns its exit status.
type handler func(ctx context.Context, r *request) int

// middleware wraps a handler.
type middleware func(next handler) handler

// handler is the middleware chain every command request goes through.
func (s *Server) handler() handler {
	// The order matters: each middleware wraps all those after it, and a
	// request reaches one only if every one before it let it through.
	//  1. audit: one log line per request with its outcome, refusals by
	//     the later middleware included.
	//  2. recoverPanic: a Runner that panics gives exit status 5, not a
	//     dead agentd.
	//  3. authorizeCaller: a key no identity holds, or one used from outside its
	//     from= patterns, gets 4. It reads what the verified handshake said
	//     (see authorize), so it comes before anything looks at the command.
	//  4. commandsOnly: a shell or a subsystem (sftp) gets 2.
	//  5. noTerminal: a command in a session that asked for a pty gets 2.
	//     OpenSSH's -t/-tt gives up (255) when the pty is refused but has
	//     already sent the command: running it would deploy while CI sees
	//     a failure.
	//  6. capLine: a command line longer than ssh.max_command_bytes gets 2,
	//     before anything splits it or logs a word of it.
	//  7. splitArgs: the command line is split with shell quoting; an empty
	//     or unsplittable one gets 2. Scopes (which verb, which project) are
	//     the Runner's to check.
	//  8. holdIdle: the idle timeout is suspended while the command runs, a
	//     deploy may be quiet for minutes; none starts while agentd stops.
	//     (The Runner bounds how long it waits for standard input.)
	//  9. s.runCommand: the Runner.
	return chain(s.runCommand, s.audit, s.recoverPanic, authorizeCaller, commandsOnly, noTerminal, s.capLine, splitArgs, holdIdle)
}

// chain wraps h in mws, the first outermost.
func chain(h handler, mws ...middleware) handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// refuse ends a request with code and tells the client why on stderr.
func refuse(r *request, code int, reason, detail string) int {
	r.refused = reason
	fmt.Fprintf(r.stderr, "agentd: %s\n", reason)
	if detail != "" {
		fmt.Fprintln(r.stderr, detail)
	}
	return code
}

func (s *Server) audit(next handler) handler {
	return func(ctx context.Context, r *request) int {
		start := time.Now()
		code := next(ctx, r)
		args := r.args
		tooLong := len(r.line) > s.Config.MaxCommandBytes
		if args == nil && r.kind == "exec" && !tooLong {
			// Refused before splitArgs: what was asked is still worth a line.
			args, _ = api.SplitCommand(r.line)
		}
		// Every word is the caller's: clipped, so that no request writes a
		// line longer than a few hundred bytes.
		var verb, project string
		if len(args) > 0 {
			verb = clip.F(args[0])
		}
		if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
			project = clip.F(args[1])
		}
		p := r.caller.principal
		attrs := []any{"identity", p.Identity, "fingerprint", p.Detail, "remote", p.Remote,
			"request", r.kind, "verb", verb, "project", project, "exit_status", code,
			"duration", time.Since(start).Round(time.Millisecond)}
		if tooLong {
			attrs = append(attrs, "command_bytes", len(r.line))
		}
		if r.refused != "" {
			attrs = append(attrs, "refused", clip.String(r.refused, 2*clip.Field))
		}
		s.Log.InfoContext(ctx, "ssh request", attrs...)
		return code
	}
}

func (s *Server) recoverPanic(next handler) handler {
	return func(ctx context.Context, r *request) (code int) {
		defer func() {
			if v := recover(); v != nil {
				s.Log.ErrorContext(ctx, "ssh request panicked", "panic", v, "stack", string(debug.Stack()))
				code = refuse(r, api.ExitBroken, "internal error: check agentd's log and agentctl status", "")
			}
		}()
		return next(ctx, r)
	}
}

func authorizeCaller(next handler) handler {
	return func(ctx context.Context, r *request) int {
		if r.caller.refusal != "" {
			return refuse(r, api.ExitDenied, r.caller.refusal, "")
		}
		return next(ctx, r)
	}
}

func commandsOnly(next handler) handler {
	return func(ctx context.Context, r *request) int {
		switch r.kind {
		case "exec":
			return next(ctx, r)
		case "shell":
			return refuse(r, api.ExitBadRequest,
				"agentd runs commands, not shells: ssh ... deploy PROJECT --image SERVICE=REF ...", api.Usage)
		default:
			return refuse(r, api.ExitBadRequest,
				fmt.Sprintf("no subsystem %q here: agentd runs commands, it transfers no files", clip.F(r.line)), api.Usage)
		}
	}
}

func noTerminal(next handler) handler {
	return func(ctx context.Context, r *request) int {
		if r.pty {
			return refuse(r, api.ExitBadRequest, "agentd gives no terminal: run ssh without -t or -tt", "")
		}
		return next(ctx, r)
	}
}

func (s *Server) capLine(next handler) handler {
	return func(ctx context.Context, r *request) int {
		if n := len(r.line); n > s.Config.MaxCommandBytes {
			return refuse(r, api.ExitBadRequest, fmt.Sprintf("the command is %d bytes long; agentd takes at most %d (ssh.max_command_bytes)", n, s.Config.MaxCommandBytes), "")
		}
		return next(ctx, r)
	}
}

func splitArgs(next handler) handler {
	return func(ctx context.Context, r *request) int {
		args, err := api.SplitCommand(r.line)
		if err != nil {
			return refuse(r, api.ExitBadRequest, "cannot split the command: "+err.Error(), "")
		}
		if len(args) == 0 {
			return refuse(r, api.ExitBadRequest, "empty command", api.Usage)
		}
		r.args = args
		return next(ctx, r)
	}
}

func holdIdle(next handler) handler {
	return func(ctx context.Context, r *request) int {
		if !r.conn.hold() {
			return refuse(r, api.ExitBadRequest, "agentd is stopping: try again", "")
		}
		defer r.conn.release()
		return next(ctx, r)
	}
}

func (s *Server) runCommand(ctx context.Context, r *request) int {
	return s.Runner.Run(ctx, r.caller.principal, r.args, r.stdin, r.stdout, r.stderr)
}

// serveSession runs one session channel: at most one command, whose exit
// status is sent back before the channel closes. pty, env, X11 and agent
// forwarding requests are answered no; after a refused pty the command is
// refused too, after the others it runs.
func (s *Server) serveSession(ctx context.Context, c *trackedConn, who caller, nc ssh.NewChannel, h handler) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		s.Log.InfoContext(ctx, "ssh session failed", "remote", who.principal.Remote, "err", err)
		return
	}
	defer ch.Close()
	// Requests still coming once the session is over get a no, so the
	// connection never stalls on a full request queue.
	defer func() { go ssh.DiscardRequests(reqs) }()

	// A command is not cancelled when agentd stops (a deploy in flight
	// finishes), only when its client goes away.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()

	in := reqs
	var done chan int
	pty := false
	for {
		select {
		case req, ok := <-in:
			if !ok {
				// The client closed the session or the connection is gone.
				cancel()
				if done == nil {
					return
				}
				in = nil
				continue
			}
			pty = pty || req.Type == "pty-req"
			r := s.command(ctx, req, who)
			if r == nil {
				continue
			}
			if done != nil {
				s.refused(ctx, who, "request", req.Type, "one command per session")
				req.Reply(false, nil)
				continue
			}
			r.pty, r.conn, r.stdin, r.stdout, r.stderr = pty, c, ch, ch, ch.Stderr()
			req.Reply(true, nil)
			done = make(chan int, 1)
			go func() { done <- h(runCtx, r) }()
		case code := <-done:
			ch.CloseWrite()
			ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
			return
		}
	}
}

// command returns the command request req is, or answers req (no) and
// returns nil when it is anything else.
func (s *Server) command(ctx context.Context, req *ssh.Request, who caller) *request {
	r := &request{kind: req.Type, caller: who}
	var err error
	switch req.Type {
	case "exec":
		var p struct{ Command string }
		err = ssh.Unmarshal(req.Payload, &p)
		r.line = p.Command
	case "subsystem":
		var p struct{ Name string }
		err = ssh.Unmarshal(req.Payload, &p)
		r.line = p.Name
	case "shell":
	default:
		reason := "not offered"
		switch req.Type {
		case "pty-req":
			reason = "agentd gives no terminal"
		case "env":
			reason = "agentd takes no environment"
		case "x11-req", "auth-agent-req@openssh.com":
			reason = "agentd forwards nothing"
		}
		s.refused(ctx, who, "request", req.Type, reason)
		if req.WantReply {
			req.Reply(false, nil)
		}
		return nil
	}
	if err != nil {
		s.refused(ctx, who, "request", req.Type, "malformed: "+err.Error())
		if req.WantReply {
			req.Reply(false, nil)
		}
		return nil
	}
	return r
}
