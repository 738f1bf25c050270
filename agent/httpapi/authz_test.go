package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
)

// newService is the real deploy service, without engine or store: enough
// for what is refused before either is asked.
func newService(t *testing.T, cfg *config.Config) *agent.Service {
	t.Helper()
	svc, err := agent.New(cfg, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// answer reads an HTTP answer: its status, and the exit code and message
// of a refusal or of a stream's result.
func answer(t *testing.T, status int, body io.Reader) (int, int, string) {
	t.Helper()
	var last map[string]any
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		last = nil
		json.Unmarshal(sc.Bytes(), &last)
	}
	code, _ := last["exit_code"].(float64)
	msg, _ := last["error"].(string)
	if m, ok := last["message"].(string); ok {
		msg = m
	}
	return status, int(code), msg
}

// The HTTP API leaves authorization to the service: what an identity may
// not do is answered 403 with exit code 4 and the service's words, before
// a stream starts; what it may do streams as before.
func TestRemoteRefusalsComeFromTheService(t *testing.T) {
	svc := newService(t, &config.Config{
		Projects:   map[string]config.Project{"other": {}},
		Identities: []config.Identity{{Name: "ci", Projects: []string{"shop"}, Verbs: []string{"deploy"}}},
	})
	h, _, _ := newRemote(t, nil)
	h.Service = svc
	do := func(method, path string, body any) (int, int, string) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req := httptest.NewRequest(method, path, rd)
		req.Header.Set("Authorization", "Bearer good")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return answer(t, rec.Code, rec.Body)
	}
	bundle := &api.ComposeBundle{Files: map[string]string{"compose.yaml": "services: {}\n"}}
	for _, tc := range []struct {
		method, path string
		body         any
		status, code int
		says         string
	}{
		{"POST", api.PathDeploy, api.DeployRequest{Project: "other"}, 403, 4, "ci (oidc) may not deploy other"},
		{"POST", api.PathDeploy, api.DeployRequest{Project: "shop", Compose: bundle}, 403, 4, "ci (oidc) may not ship a compose file (ship_compose)"},
		{"POST", api.PathRollback, api.RollbackRequest{Project: "shop"}, 403, 4, "ci (oidc) may not rollback shop"},
		{"POST", api.PathLock, api.LockRequest{Project: "shop", Message: "x"}, 403, 4, "ci (oidc) may not lock shop"},
		{"GET", api.PathStatus, nil, 403, 4, "ci (oidc) may not status"},
		{"GET", api.PathHistory + "?project=shop", nil, 403, 4, "ci (oidc) may not history shop"},
		// Let in: shop is in its scope, and not configured here.
		{"POST", api.PathDeploy, api.DeployRequest{Project: "shop"}, 200, 2, `deploy "shop": unknown project`},
	} {
		status, code, msg := do(tc.method, tc.path, tc.body)
		if status != tc.status || code != tc.code || msg != tc.says {
			t.Errorf("%s %s: HTTP %d, exit %d, %q; want %d, %d, %q", tc.method, tc.path, status, code, msg, tc.status, tc.code, tc.says)
		}
	}
}

// The socket's caller is its peer's user: the service serves it only when
// socket.allow_users names it; the host key is public.
func TestSocketUserIsAuthorizedByTheService(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		allow []string
		code  int
		says  string
	}{
		{[]string{"nobody-else"}, 4, "local user " + me.Username + " is not allowed to use agentd (socket.allow_users)"},
		{[]string{"nobody-else", me.Username}, 2, `history "shop": unknown project`},
		{nil, 2, `history "shop": unknown project`},
	} {
		svc := newService(t, &config.Config{Projects: map[string]config.Project{}, Socket: config.Socket{AllowUsers: tc.allow}})
		h := &Handler{Service: svc, Log: slog.New(slog.DiscardHandler)}
		sock := filepath.Join(t.TempDir(), "agentd.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h, ConnContext: ConnContext}
		go srv.Serve(ln)
		client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
		get := func(path string) (int, int, string) {
			resp, err := client.Get("http://agentd" + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			return answer(t, resp.StatusCode, resp.Body)
		}
		if _, code, msg := get(api.PathHistory + "?project=shop"); code != tc.code || msg != tc.says {
			t.Errorf("allow_users %v: exit %d, %q; want %d, %q", tc.allow, code, msg, tc.code, tc.says)
		}
		if status, _, msg := get(api.PathHostKey); status != http.StatusNotFound || !strings.Contains(msg, "runs no SSH server") {
			t.Errorf("allow_users %v: host key: HTTP %d, %q", tc.allow, status, msg)
		}
		srv.Close()
	}
}
