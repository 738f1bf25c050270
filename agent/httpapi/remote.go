package httpapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
)

// Verifier proves who sent a request from outside the host.
type Verifier interface {
	// Bearer verifies a GitLab CI ID token.
	Bearer(ctx context.Context, raw string) (auth.Principal, error)
	// HMAC verifies a signed request.
	HMAC(r *http.Request, body []byte) (auth.Principal, error)
}

// PathHealth answers 200 without authentication, for load balancers.
const PathHealth = "/healthz"

// maxBody bounds a request body.
const maxBody = 1 << 20

// Remote serves the verbs of the grammar over TCP to callers that prove
// an identity with a GitLab CI ID token (Authorization: Bearer) or an
// HMAC-signed request, each within its identity's scopes.
type Remote struct {
	Service    Deployer
	Verifier   Verifier
	Identities *auth.Identities
	// Forbidden tells a valid credential that matches no identity (403)
	// from one that proves nothing (401).
	Forbidden func(error) bool
	Log       *slog.Logger

	mux  *http.ServeMux
	once sync.Once
}

func (h *Remote) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.once.Do(func() {
		inner := &Handler{Service: h.Service, Log: h.Log}
		h.mux = http.NewServeMux()
		h.mux.HandleFunc("POST "+PathDeploy, inner.deploy)
		h.mux.HandleFunc("POST "+PathRollback, inner.rollback)
		h.mux.HandleFunc("POST "+PathLock, inner.lock)
		h.mux.HandleFunc("GET "+PathStatus, inner.status)
		h.mux.HandleFunc("GET "+PathHistory, inner.history)
	})
	if r.URL.Path == PathHealth && r.Method == http.MethodGet {
		w.Write([]byte("ok\n"))
		return
	}
	// The order matters: read the body (bounded) before verifying, since
	// an HMAC signature covers it; verify; only then route.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, api.ExitBadRequest, "read request: "+err.Error())
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	p, err := h.authenticate(r, body)
	if err != nil {
		status := http.StatusUnauthorized
		if h.Forbidden != nil && h.Forbidden(err) {
			status = http.StatusForbidden
		}
		h.Log.Warn("request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "status", status, "err", err)
		writeError(w, status, api.ExitDenied, err.Error())
		return
	}
	p.Remote = r.RemoteAddr
	h.Log.Info("request", "identity", p.Identity, "method", p.Method, "detail", p.Detail, "remote", p.Remote, "path", r.URL.Path)
	h.mux.ServeHTTP(w, withCaller(r, caller{
		who:     p.String(),
		allowed: func(project, verb string) bool { return h.Identities.Allowed(p.Identity, project, verb) },
	}))
}

var errNoCredentials = errors.New("not authenticated: send a GitLab CI ID token (Authorization: Bearer) or an HMAC-signed request")

func (h *Remote) authenticate(r *http.Request, body []byte) (auth.Principal, error) {
	if raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return h.Verifier.Bearer(r.Context(), strings.TrimSpace(raw))
	}
	if r.Header.Get("X-Berth-Signature") != "" {
		return h.Verifier.HMAC(r, body)
	}
	return auth.Principal{}, errNoCredentials
}
