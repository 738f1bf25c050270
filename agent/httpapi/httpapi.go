// Package httpapi serves the deploy service over HTTP on agentd's unix
// socket, for agentctl. The caller's identity is the socket peer's user
// (SO_PEERCRED), "local:<user>"; deploys stream NDJSON events whose last
// line carries the exit code.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/user"
	"slices"
	"strconv"
	"sync"

	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/api"
	"golang.org/x/sys/unix"
)

// Deployer is the part of the deploy service the API exposes.
type Deployer interface {
	Deploy(ctx context.Context, identity string, req api.DeployRequest, emit agent.Emit) int
	Rollback(ctx context.Context, identity string, req api.RollbackRequest, emit agent.Emit) int
	Lock(ctx context.Context, identity string, req api.LockRequest) (*api.Holder, error)
	Status(ctx context.Context, project string) ([]api.ProjectStatus, error)
	History(ctx context.Context, project string) ([]api.Release, error)
}

// Paths of the API.
const (
	PathDeploy   = "/v1/deploy"
	PathRollback = "/v1/rollback"
	PathLock     = "/v1/lock"
	PathStatus   = "/v1/status"
	PathHistory  = "/v1/history"
)

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
	// AllowUsers, when set, is the only local users served.
	AllowUsers []string
	mux        *http.ServeMux
	once       sync.Once
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.once.Do(func() {
		h.mux = http.NewServeMux()
		h.mux.HandleFunc("POST "+PathDeploy, h.deploy)
		h.mux.HandleFunc("POST "+PathRollback, h.rollback)
		h.mux.HandleFunc("POST "+PathLock, h.lock)
		h.mux.HandleFunc("GET "+PathStatus, h.status)
		h.mux.HandleFunc("GET "+PathHistory, h.history)
	})
	p, ok := r.Context().Value(ctxKey{}).(peer)
	if !ok {
		writeError(w, http.StatusForbidden, api.ExitDenied, "no peer credentials on this connection")
		return
	}
	if len(h.AllowUsers) > 0 && !slices.Contains(h.AllowUsers, p.name) {
		h.Log.Warn("request refused", "identity", "local:"+p.name, "path", r.URL.Path)
		writeError(w, http.StatusForbidden, api.ExitDenied, fmt.Sprintf("local user %s is not allowed to use agentd (socket.allow_users)", p.name))
		return
	}
	h.mux.ServeHTTP(w, r)
}

func identity(r *http.Request) string {
	p, _ := r.Context().Value(ctxKey{}).(peer)
	return "local:" + p.name
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
	if !decode(w, r, &req) {
		return
	}
	stream(w, func(emit agent.Emit) { h.Service.Deploy(r.Context(), identity(r), req, emit) })
}

func (h *Handler) rollback(w http.ResponseWriter, r *http.Request) {
	var req api.RollbackRequest
	if !decode(w, r, &req) {
		return
	}
	stream(w, func(emit agent.Emit) { h.Service.Rollback(r.Context(), identity(r), req, emit) })
}

func (h *Handler) lock(w http.ResponseWriter, r *http.Request) {
	var req api.LockRequest
	if !decode(w, r, &req) {
		return
	}
	holder, err := h.Service.Lock(r.Context(), identity(r), req)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, holder)
}

// decode reads a JSON request body, answering 400 when it is not one.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, api.ExitBadRequest, "decode request: "+err.Error())
		return false
	}
	return true
}

// stream answers with the NDJSON events that run emits.
func stream(w http.ResponseWriter, run func(agent.Emit)) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	run(func(e api.Event) {
		mu.Lock()
		defer mu.Unlock()
		// A client that went away does not stop the deploy: errors writing
		// its stream are ignored, the release goes on and is recorded.
		if enc.Encode(e) == nil && flusher != nil {
			flusher.Flush()
		}
	})
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	st, err := h.Service.Status(r.Context(), r.URL.Query().Get("project"))
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, st)
}

func (h *Handler) history(w http.ResponseWriter, r *http.Request) {
	hist, err := h.Service.History(r.Context(), r.URL.Query().Get("project"))
	if err != nil {
		h.fail(w, err)
		return
	}
	if hist == nil {
		hist = []api.Release{}
	}
	writeJSON(w, hist)
}

func (h *Handler) fail(w http.ResponseWriter, err error) {
	if errors.Is(err, agent.ErrUnknownProject) {
		writeError(w, http.StatusNotFound, api.ExitBadRequest, err.Error())
		return
	}
	h.Log.Error("request failed", "err", err)
	writeError(w, http.StatusInternalServerError, api.ExitBroken, err.Error())
}
