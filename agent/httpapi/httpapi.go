// Package httpapi serves the deploy service over HTTP on agentd's unix
// socket, for agentctl. The caller's identity is the socket peer's user
// (SO_PEERCRED), "local:<user>"; deploys stream NDJSON events whose last
// line carries the exit code.
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/clip"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// Deployer is the part of the deploy service the API exposes. Each verb
// takes the authenticated caller and authorizes it: a refusal is an error
// that is agent.ErrDenied (403, exit code 4), returned before anything is
// emitted.
type Deployer interface {
	Deploy(ctx context.Context, p auth.Principal, req api.DeployRequest, emit agent.Emit) (int, error)
	Rollback(ctx context.Context, p auth.Principal, req api.RollbackRequest, emit agent.Emit) (int, error)
	Lock(ctx context.Context, p auth.Principal, req api.LockRequest) (*api.Holder, error)
	Run(ctx context.Context, p auth.Principal, args []string, stdin io.Reader, stdout, stderr io.Writer) int
	Identities() *auth.Identities
	Status(ctx context.Context, p auth.Principal, project string) ([]api.ProjectStatus, error)
	History(ctx context.Context, p auth.Principal, project string) ([]api.Release, error)
}

type ctxKey struct{}

// peer is who is on the other end of a unix socket connection.
type peer struct {
	uid  int
	name string
}

// ConnContext records the peer credentials of each accepted connection;
// set it as the http.Server's ConnContext.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return ctx
	}
	p := peer{uid: int(cred.Uid), name: strconv.Itoa(int(cred.Uid))}
	if u, err := user.LookupId(p.name); err == nil {
		p.name = u.Username
	}
	return context.WithValue(ctx, ctxKey{}, p)
}

// Handler serves the API.
type Handler struct {
	Service Deployer
	Log     *slog.Logger
	// HostKey is the SSH server's host key, or nil when it has none.
	HostKey ssh.PublicKey
	// SSHPort is the port the SSH server listens on.
	SSHPort int
	// MaxBodyBytes caps a request body (0: 1 MiB).
	MaxBodyBytes int64
	// BodyTimeout, when set, bounds reading a request body.
	BodyTimeout time.Duration
	// WriteTimeout, when set, bounds each write of a response: a caller
	// that stops reading a deploy's stream loses the stream, and the
	// deploy goes on.
	WriteTimeout time.Duration
	mux          *http.ServeMux
	once         sync.Once
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.once.Do(func() {
		h.mux = http.NewServeMux()
		h.mux.HandleFunc("POST "+api.PathDeploy, h.deploy)
		h.mux.HandleFunc("POST "+api.PathRollback, h.rollback)
		h.mux.HandleFunc("POST "+api.PathLock, h.lock)
		h.mux.HandleFunc("POST "+api.PathCommand, h.command)
		h.mux.HandleFunc("GET "+api.PathHostKey, h.hostKey)
		h.mux.HandleFunc("GET "+api.PathStatus, h.status)
		h.mux.HandleFunc("GET "+api.PathHistory, h.history)
	})
	p, ok := r.Context().Value(ctxKey{}).(peer)
	if !ok {
		writeError(w, http.StatusForbidden, api.ExitDenied, "no peer credentials on this connection")
		return
	}
	// The caller is the peer's user; the service decides what it may do
	// (socket.allow_users). ssh-command acts as an identity whose
	// local_users name the peer, and the host key is public.
	h.mux.ServeHTTP(w, withPrincipal(r, auth.Local(p.name)))
}

type principalKey struct{}

// withPrincipal records who the door authenticated.
func withPrincipal(r *http.Request, p auth.Principal) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), principalKey{}, p))
}

// principal is who the door authenticated; the zero Principal, which no
// scope admits, when none did.
func principal(r *http.Request) auth.Principal {
	p, _ := r.Context().Value(principalKey{}).(auth.Principal)
	return p
}

func writeError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.Error{Message: msg, ExitCode: code})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (h *Handler) deploy(w http.ResponseWriter, r *http.Request) {
	var req api.DeployRequest
	if !h.decode(w, r, &req) {
		return
	}
	h.stream(w, func(emit agent.Emit) error {
		_, err := h.Service.Deploy(r.Context(), principal(r), req, emit)
		return err
	})
}

func (h *Handler) rollback(w http.ResponseWriter, r *http.Request) {
	var req api.RollbackRequest
	if !h.decode(w, r, &req) {
		return
	}
	h.stream(w, func(emit agent.Emit) error {
		_, err := h.Service.Rollback(r.Context(), principal(r), req, emit)
		return err
	})
}

func (h *Handler) lock(w http.ResponseWriter, r *http.Request) {
	var req api.LockRequest
	if !h.decode(w, r, &req) {
		return
	}
	holder, err := h.Service.Lock(r.Context(), principal(r), req)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, holder)
}

// decode reads a JSON request body, at most MaxBodyBytes within
// BodyTimeout, answering 400 when it is not one.
func (h *Handler) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	limit := h.MaxBodyBytes
	if limit <= 0 {
		limit = 1 << 20
	}
	rc := http.NewResponseController(w)
	if h.BodyTimeout > 0 {
		rc.SetReadDeadline(time.Now().Add(h.BodyTimeout))
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusBadRequest, api.ExitBadRequest, "decode request: "+err.Error())
		return false
	}
	if h.BodyTimeout > 0 {
		rc.SetReadDeadline(time.Time{})
	}
	return true
}

// stream answers with the NDJSON events that run emits: 200 with the
// first event. Each event gets WriteTimeout to reach the caller; the
// stream as a whole lasts as long as run. A request run refuses before
// it emits anything (its error) is answered as fail does.
func (h *Handler) stream(w http.ResponseWriter, run func(agent.Emit) error) {
	rc := http.NewResponseController(w)
	extend := func() {
		if h.WriteTimeout > 0 {
			rc.SetWriteDeadline(time.Now().Add(h.WriteTimeout))
		}
	}
	// net/http writes the end of the stream after the handler returns.
	defer extend()
	extend()
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	started := false
	err := run(func(e api.Event) {
		mu.Lock()
		defer mu.Unlock()
		if !started {
			started = true
			w.Header().Set("Content-Type", api.MediaEvents)
			w.WriteHeader(http.StatusOK)
		}
		// A client that went away, or stopped reading, does not stop the
		// deploy: errors writing its stream are ignored, the release goes
		// on and is recorded.
		extend()
		if enc.Encode(e) == nil {
			rc.Flush()
		}
	})
	mu.Lock()
	defer mu.Unlock()
	if !started && err != nil {
		h.fail(w, err)
	}
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	st, err := h.Service.Status(r.Context(), principal(r), r.URL.Query().Get("project"))
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, st)
}

func (h *Handler) history(w http.ResponseWriter, r *http.Request) {
	hist, err := h.Service.History(r.Context(), principal(r), r.URL.Query().Get("project"))
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, hist)
}

// fail answers a request the service refused or could not serve: 403
// (exit code 4) for a caller that may not, 404 (2) for a project that is
// not configured, 500 (5) for anything else.
func (h *Handler) fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, agent.ErrDenied):
		// The service has logged the refusal.
		writeError(w, http.StatusForbidden, api.ExitDenied, err.Error())
		return
	case errors.Is(err, agent.ErrUnknownProject):
		writeError(w, http.StatusNotFound, api.ExitBadRequest, err.Error())
		return
	}
	h.Log.Error("request failed", "err", err)
	writeError(w, http.StatusInternalServerError, api.ExitBroken, err.Error())
}

// command runs a command for an identity the socket peer may act as: the
// host user must be in the identity's local_users.
func (h *Handler) command(w http.ResponseWriter, r *http.Request) {
	var req api.CommandRequest
	if !h.decode(w, r, &req) {
		return
	}
	p, _ := r.Context().Value(ctxKey{}).(peer)
	if !h.Service.Identities().LocalUserMay(req.Identity, p.name) {
		h.Log.Warn("ssh-command refused", "user", p.name, "identity", clip.F(req.Identity))
		writeError(w, http.StatusForbidden, api.ExitDenied, fmt.Sprintf("local user %s may not act as identity %q (its local_users)", p.name, clip.F(req.Identity)))
		return
	}
	w.Header().Set("Content-Type", api.MediaEvents)
	w.WriteHeader(http.StatusOK)
	fw := &frameWriter{w: w, enc: json.NewEncoder(w), rc: http.NewResponseController(w), timeout: h.WriteTimeout}
	defer fw.extend()
	principal := auth.Principal{Identity: req.Identity, Method: "ssh-command", Detail: "local:" + p.name, Remote: req.Remote}
	code := h.Service.Run(r.Context(), principal, req.Args, bytes.NewReader(req.Stdin), fw.stream("stdout"), fw.stream("stderr"))
	// Service.Run refuses a command longer than ssh.max_command_bytes;
	// what is logged of it is clipped either way.
	h.Log.Info("ssh-command", "identity", req.Identity, "user", p.name, "remote", clip.F(req.Remote), "args", headArgs(req.Args), "exit_code", code)
	fw.write(api.Frame{ExitCode: &code})
}

// headArgs returns the verb and project of a command, clipped, for the
// audit log.
func headArgs(args []string) string {
	head := make([]string, 0, 2)
	for _, a := range args[:min(2, len(args))] {
		head = append(head, clip.F(a))
	}
	return strings.Join(head, " ")
}

// frameWriter turns writes to stdout and stderr into frames.
type frameWriter struct {
	mu      sync.Mutex
	w       io.Writer
	enc     *json.Encoder
	rc      *http.ResponseController
	timeout time.Duration // for each frame; 0: none
}

// extend gives the next write its time.
func (f *frameWriter) extend() {
	if f.timeout > 0 {
		f.rc.SetWriteDeadline(time.Now().Add(f.timeout))
	}
}

func (f *frameWriter) write(fr api.Frame) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.extend()
	if f.enc.Encode(fr) == nil {
		f.rc.Flush()
	}
}

type streamWriter struct {
	f    *frameWriter
	name string
}

func (f *frameWriter) stream(name string) io.Writer { return streamWriter{f, name} }

func (s streamWriter) Write(b []byte) (int, error) {
	s.f.write(api.Frame{Stream: s.name, Data: string(b)})
	return len(b), nil
}

func (h *Handler) hostKey(w http.ResponseWriter, _ *http.Request) {
	if h.HostKey == nil {
		writeError(w, http.StatusNotFound, api.ExitBadRequest, "agentd runs no SSH server (no ssh section in its config)")
		return
	}
	writeJSON(w, api.HostKeyAnswer{PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(h.HostKey))), Port: h.SSHPort})
}
