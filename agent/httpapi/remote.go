package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/clip"
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

// Defaults of Remote's limits, where its fields are zero.
const (
	defaultMaxBody      = 128 << 10
	defaultBodyTimeout  = 10 * time.Second
	defaultWriteTimeout = 30 * time.Second
)

// What a refused caller is told. The reason, which may name identities
// and the claims they did not accept, goes to agentd's log only.
const (
	msgUnauthenticated = "not authenticated"
	msgForbidden       = "forbidden: no identity accepts this token"
)

// Remote serves the verbs of the grammar over TCP to callers that prove
// an identity with a GitLab CI ID token (Authorization: Bearer) or an
// HMAC-signed request; the service holds each to its identity's scopes.
type Remote struct {
	Service  Deployer
	Verifier Verifier
	// Forbidden tells a valid credential that matches no identity (403)
	// from one that proves nothing (401).
	Forbidden func(error) bool
	Log       *slog.Logger
	// MaxBodyBytes caps a request body.
	MaxBodyBytes int64
	// BodyTimeout bounds reading a request body.
	BodyTimeout time.Duration
	// WriteTimeout bounds each write of a response.
	WriteTimeout time.Duration

	mux    *http.ServeMux
	routes map[string]bool // the mux's patterns: "METHOD /path"
	once   sync.Once
}

func (h *Remote) init() {
	if h.MaxBodyBytes <= 0 {
		h.MaxBodyBytes = defaultMaxBody
	}
	if h.BodyTimeout <= 0 {
		h.BodyTimeout = defaultBodyTimeout
	}
	if h.WriteTimeout <= 0 {
		h.WriteTimeout = defaultWriteTimeout
	}
	inner := &Handler{Service: h.Service, Log: h.Log, MaxBodyBytes: h.MaxBodyBytes, WriteTimeout: h.WriteTimeout}
	h.mux = http.NewServeMux()
	h.routes = map[string]bool{}
	for pattern, f := range map[string]http.HandlerFunc{
		"POST " + api.PathDeploy:   inner.deploy,
		"POST " + api.PathRollback: inner.rollback,
		"POST " + api.PathLock:     inner.lock,
		"GET " + api.PathStatus:    inner.status,
		"GET " + api.PathHistory:   inner.history,
	} {
		h.mux.HandleFunc(pattern, f)
		h.routes[pattern] = true
	}
}

// ServeHTTP answers one request. The order matters:
//
//  1. A request for no endpoint is answered 404 before any credential is
//     looked at, so it never spends a nonce or a token's jti.
//  2. A bearer token is verified from the headers, before a byte of the
//     body is read.
//  3. The body is read, at most MaxBodyBytes within BodyTimeout; an
//     HMAC signature covers it, so a signed request is verified only then.
//  4. The connection is marked authenticated (no longer evicted for room)
//     and the request is routed.
//
// A refused request closes its connection.
func (h *Remote) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.once.Do(h.init)
	if r.URL.Path == PathHealth && r.Method == http.MethodGet {
		w.Write([]byte("ok\n"))
		return
	}
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Now().Add(h.WriteTimeout))
	hasBody := r.Body != nil && r.Body != http.NoBody
	if hasBody {
		// Cleared once the body is read; a refusal leaves it in place, so
		// that net/http's drain of an unread body is bounded too.
		rc.SetReadDeadline(time.Now().Add(h.BodyTimeout))
	}
	// Exactly a route: not one the mux would redirect to, say.
	if !h.routes[r.Method+" "+r.URL.Path] {
		refuse(w, http.StatusNotFound, api.ExitBadRequest, "no such endpoint")
		return
	}
	var p auth.Principal
	var body []byte
	var err error
	if raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if p, err = h.Verifier.Bearer(r.Context(), strings.TrimSpace(raw)); err != nil {
			h.refuseCredential(w, r, err)
			return
		}
		Authenticated(r.Context())
		if body, err = h.readBody(w, r, rc, hasBody); err != nil {
			h.refuseBody(w, r, err)
			return
		}
	} else if r.Header.Get("X-Berth-Signature") != "" {
		if body, err = h.readBody(w, r, rc, hasBody); err != nil {
			h.refuseBody(w, r, err)
			return
		}
		if p, err = h.Verifier.HMAC(r, body); err != nil {
			h.refuseCredential(w, r, err)
			return
		}
		Authenticated(r.Context())
	} else {
		h.refuseCredential(w, r, errNoCredentials)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	p.Remote = r.RemoteAddr
	h.Log.Info("request", "identity", p.Identity, "method", p.Method, "detail", clipped(p.Detail), "remote", p.Remote, "path", clipped(r.URL.Path))
	// The service decides what p may do.
	h.mux.ServeHTTP(w, withPrincipal(r, p))
}

var errNoCredentials = errors.New("not authenticated: send a GitLab CI ID token (Authorization: Bearer) or an HMAC-signed request")

// errBodyTooLarge is a body over MaxBodyBytes.
var errBodyTooLarge = errors.New("request body too large")

// readBody reads the whole body, at most MaxBodyBytes, and clears the
// read deadline once it is in. A body whose declared length is over the
// limit is refused unread; one of known length is read into a buffer of
// that size.
func (h *Remote) readBody(w http.ResponseWriter, r *http.Request, rc *http.ResponseController, hasBody bool) ([]byte, error) {
	if !hasBody {
		return nil, nil
	}
	if r.ContentLength > h.MaxBodyBytes {
		return nil, errBodyTooLarge
	}
	src := http.MaxBytesReader(w, r.Body, h.MaxBodyBytes)
	var body []byte
	var err error
	if r.ContentLength >= 0 {
		// One byte more than declared, to see the body end.
		body = make([]byte, r.ContentLength+1)
		var n int
		n, err = io.ReadFull(src, body)
		body = body[:n]
		if n == int(r.ContentLength) && errors.Is(err, io.ErrUnexpectedEOF) {
			err = nil
		}
	} else {
		body, err = io.ReadAll(src)
	}
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, errBodyTooLarge
		}
		return nil, err
	}
	rc.SetReadDeadline(time.Time{})
	return body, nil
}

func (h *Remote) refuseBody(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := http.StatusBadRequest, "read request body: "+err.Error()
	if errors.Is(err, errBodyTooLarge) {
		status, msg = http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes (http.max_body_bytes)", h.MaxBodyBytes)
	} else if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		status, msg = http.StatusRequestTimeout, fmt.Sprintf("request body not received within %s (http.body_timeout)", h.BodyTimeout)
	}
	h.Log.Info("request refused", "remote", r.RemoteAddr, "method", clipped(r.Method), "path", clipped(r.URL.Path), "status", status, "err", clipped(err.Error()))
	refuse(w, status, api.ExitBadRequest, msg)
}

// refuseCredential answers a credential that proves nothing 401, and a
// valid one no identity accepts 403, with a generic reason; the reason
// itself is logged.
func (h *Remote) refuseCredential(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := http.StatusUnauthorized, msgUnauthenticated
	switch {
	case errors.Is(err, errNoCredentials):
		msg = err.Error()
	case h.Forbidden != nil && h.Forbidden(err):
		status, msg = http.StatusForbidden, msgForbidden
	}
	h.Log.Warn("request refused", "remote", r.RemoteAddr, "method", clipped(r.Method), "path", clipped(r.URL.Path), "status", status,
		"err", clip.String(err.Error(), maxLoggedErr))
	refuse(w, status, api.ExitDenied, msg)
}

// refuse answers an error and closes the connection after it.
func refuse(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Connection", "close")
	writeError(w, status, code, msg)
}

// Caps of what a caller controls in a log line.
const (
	maxLoggedField = 256
	maxLoggedErr   = 1024 // an error quotes a few fields, each cut short
)

// clipped cuts a caller-controlled string for a log line.
func clipped(s string) string { return clip.String(s, maxLoggedField) }
