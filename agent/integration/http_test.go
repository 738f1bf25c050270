package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/token"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// gitlab plays a GitLab instance's ID-token issuer: a key and its JWKS.
type gitlab struct {
	key *rsa.PrivateKey
	srv *httptest.Server
	n   int
}

func newGitLab(t *testing.T) *gitlab {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	g := &gitlab{key: key}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(jwks)
	}))
	t.Cleanup(g.srv.Close)
	return g
}

// token mints an ID token like a GitLab CI job's, with claims overridden.
func (g *gitlab) token(t *testing.T, over map[string]any) string {
	t.Helper()
	g.n++
	now := time.Now()
	claims := jwt.MapClaims{
		"iss": g.srv.URL, "aud": "berth", "sub": "project_path:group/shop:ref_type:branch:ref:main",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "jti": fmt.Sprintf("jti-%d-%d", now.UnixNano(), g.n),
		"project_id": "42", "project_path": "group/shop", "ref": "main", "ref_type": "branch", "ref_protected": "true",
		"environment": "production", "pipeline_source": "push", "pipeline_id": "1001", "job_id": "2002",
	}
	for k, v := range over {
		claims[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString(g.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// call sends a request to the HTTP API and returns its status and, for an
// event stream, the exit code of its last event (-1 otherwise).
func call(t *testing.T, req *http.Request) (int, int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var all bytes.Buffer
	code := -1
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		all.Write(sc.Bytes())
		all.WriteByte('\n')
		var e struct {
			ExitCode *int `json:"exit_code"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.ExitCode != nil {
			code = *e.ExitCode
		}
	}
	return resp.StatusCode, code, all.String()
}

func TestHTTPAPIWithTokens(t *testing.T) {
	gl := newGitLab(t)
	secret := hex.EncodeToString(bytes.Repeat([]byte{7}, 32))
	secretFile := filepath.Join(t.TempDir(), "hmac")
	os.WriteFile(secretFile, []byte(secret+"\n"), 0o600)
	port := freePort(t)
	h := newHarness(t, webStack, options{extra: fmt.Sprintf(`identities:
  - name: ci-shop
    gitlab: {project_path: group/shop, ref: main, environment: production}
    projects: [$PROJECT]
    verbs: [deploy, status, history]
  - name: signer
    hmac_secret_file: %s
    projects: [$PROJECT]
    verbs: [deploy]
http:
  listen: 127.0.0.1:%s
  oidc:
    issuer: %s
    audience: berth
    jwks_url: %s/jwks
`, secretFile, port, gl.srv.URL, gl.srv.URL)})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.start()
	base := "http://127.0.0.1:" + port

	deploy := func(project string) *http.Request {
		body, _ := json.Marshal(api.DeployRequest{Project: project, Message: "from CI"})
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/deploy", bytes.NewReader(body))
		return req
	}
	if resp, err := http.Get(base + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}

	// A valid token from the local JWKS deploys.
	tok := gl.token(t, nil)
	req := deploy(h.project)
	req.Header.Set("Authorization", "Bearer "+tok)
	status, code, out := call(t, req)
	if status != 200 || code != 0 {
		t.Fatalf("deploy with a valid token: HTTP %d, exit %d\n%s", status, code, out)
	}
	if id := h.history()[0].Identity; !strings.HasPrefix(id, "ci-shop (oidc group/shop@main") {
		t.Errorf("release identity = %q", id)
	}

	for _, tc := range []struct {
		name   string
		bearer string
		status int
		req    *http.Request
	}{
		{"replayed jti", tok, 401, deploy(h.project)},
		{"other environment", gl.token(t, map[string]any{"environment": "staging"}), 403, deploy(h.project)},
		{"unprotected ref", gl.token(t, map[string]any{"ref_protected": "false"}), 403, deploy(h.project)},
		{"expired", gl.token(t, map[string]any{"exp": time.Now().Add(-time.Hour).Unix()}), 401, deploy(h.project)},
		{"wrong audience", gl.token(t, map[string]any{"aud": "someone-else"}), 401, deploy(h.project)},
		{"project outside the scope", gl.token(t, nil), 403, deploy(h.project + "b")},
		{"no credentials", "", 401, deploy(h.project)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.bearer != "" {
				tc.req.Header.Set("Authorization", "Bearer "+tc.bearer)
			}
			status, _, out := call(t, tc.req)
			if status != tc.status || !strings.Contains(out, `"exit_code":4`) {
				t.Errorf("HTTP %d, want %d with exit code 4\n%s", status, tc.status, out)
			}
		})
	}
	// A 1 MB header is cut off before any token is parsed.
	req = deploy(h.project)
	req.Header.Set("Authorization", "Bearer "+strings.Repeat("a", 1<<20))
	if status, _, _ := call(t, req); status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 1 MB header: HTTP %d, want 431", status)
	}

	// An HMAC-signed request deploys (nothing to change: exit 0).
	body, _ := json.Marshal(api.DeployRequest{Project: h.project})
	req, _ = http.NewRequest(http.MethodPost, base+"/v1/deploy", bytes.NewReader(body))
	token.Sign(req, "signer", []byte(secret), body, time.Now(), "nonce-0123456789abcdef")
	if status, code, out := call(t, req); status != 200 || code != 0 {
		t.Errorf("HMAC deploy: HTTP %d, exit %d\n%s", status, code, out)
	}
	// The same signed request again is a replay.
	req, _ = http.NewRequest(http.MethodPost, base+"/v1/deploy", bytes.NewReader(body))
	token.Sign(req, "signer", []byte(secret), body, time.Now(), "nonce-0123456789abcdef")
	if status, _, _ := call(t, req); status != 401 {
		t.Errorf("replayed HMAC request: HTTP %d, want 401", status)
	}
	// The shell recipe of docs/ci-gitlab.md, with openssl and curl.
	recipe := `set -e
body='{"project": "` + h.project + `"}'
ts=$(date +%s)
nonce=$(openssl rand -hex 16)
sig=$(printf '%s\n%s\n%s\n%s\n%s' "$ts" "$nonce" POST /v1/deploy "$body" |
  openssl dgst -sha256 -hmac "$BERTH_HMAC_SECRET" | sed 's/^.*= //')
curl -sS -N ` + base + `/v1/deploy \
  -H "X-Berth-Identity: signer" -H "X-Berth-Timestamp: $ts" \
  -H "X-Berth-Nonce: $nonce" -H "X-Berth-Signature: $sig" -d "$body"
`
	sh := exec.Command("bash", "-c", recipe)
	sh.Env = append(os.Environ(), "BERTH_HMAC_SECRET="+secret)
	if out, err := sh.CombinedOutput(); err != nil || !strings.Contains(string(out), `"exit_code":0`) {
		t.Errorf("the documented HMAC recipe: %v\n%s", err, out)
	}

	// A verb outside the signer's scope.
	req, _ = http.NewRequest(http.MethodGet, base+"/v1/history?project="+h.project, nil)
	token.Sign(req, "signer", []byte(secret), nil, time.Now(), "nonce-abcdef0123456789")
	if status, _, _ := call(t, req); status != 403 {
		t.Errorf("history by an identity without it: HTTP %d, want 403", status)
	}
}
