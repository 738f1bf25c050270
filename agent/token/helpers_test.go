package token

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

const (
	testIssuer   = "https://gitlab.example.com"
	testAudience = "https://berth.example.com"
	testRefresh  = time.Minute
	testMaxAge   = time.Hour
)

// clock is the injected time: it moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// issuer plays GitLab: it holds signing keys and serves their JWKS on a
// loopback httptest server, counting fetches.
type issuer struct {
	t       testing.TB
	srv     *httptest.Server
	rsa     *rsa.PrivateKey // kid rsa-1, RS256
	ec      *ecdsa.PrivateKey
	fetches atomic.Int64
	jti     atomic.Int64

	mu   sync.Mutex
	keys []jose.JSONWebKey
	fail bool // serve 500 instead of the key set
}

func newIssuer(t testing.TB) *issuer {
	t.Helper()
	is := &issuer{t: t, rsa: rsaKey(t)}
	var err error
	if is.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	is.publish("rsa-1", "RS256", &is.rsa.PublicKey)
	is.publish("ec-1", "ES256", &is.ec.PublicKey)
	is.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/oauth/discovery/keys" {
			http.NotFound(w, r)
			return
		}
		is.fetches.Add(1)
		is.mu.Lock()
		defer is.mu.Unlock()
		if is.fail {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: is.keys}); err != nil {
			t.Error(err)
		}
	}))
	t.Cleanup(is.srv.Close)
	return is
}

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (is *issuer) publish(kid, alg string, pub any) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = append(is.keys, jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: alg, Use: "sig"})
}

func (is *issuer) retire(kid string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	var keep []jose.JSONWebKey
	for _, k := range is.keys {
		if k.KeyID != kid {
			keep = append(keep, k)
		}
	}
	is.keys = keep
}

func (is *issuer) setFail(fail bool) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.fail = fail
}

func (is *issuer) config(algs ...string) *config.OIDC {
	if len(algs) == 0 {
		algs = []string{"RS256"}
	}
	return &config.OIDC{
		Issuer:      testIssuer,
		JWKSURL:     is.srv.URL + "/oauth/discovery/keys",
		Audience:    testAudience,
		Algorithms:  algs,
		MaxAge:      testMaxAge,
		JWKSRefresh: testRefresh,
	}
}

// claims are those of a GitLab CI job on the protected main branch of
// group/app deploying to production, issued just now, with a fresh jti.
func (is *issuer) claims(now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"iss":             testIssuer,
		"aud":             testAudience,
		"sub":             "project_path:group/app:ref_type:branch:ref:main",
		"iat":             now.Add(-10 * time.Second).Unix(),
		"nbf":             now.Add(-10 * time.Second).Unix(),
		"exp":             now.Add(5 * time.Minute).Unix(),
		"jti":             fmt.Sprintf("jti-%d", is.jti.Add(1)),
		"project_id":      "42",
		"project_path":    "group/app",
		"ref":             "main",
		"ref_type":        "branch",
		"ref_protected":   "true",
		"environment":     "production",
		"pipeline_source": "push",
		"pipeline_id":     "1001",
		"job_id":          "2002",
		"user_login":      "alice",
	}
}

// sign makes a token; kid "" leaves the header without one.
func sign(t testing.TB, method jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rs256 signs c with the published RSA key.
func (is *issuer) rs256(c jwt.MapClaims) string {
	return sign(is.t, jwt.SigningMethodRS256, is.rsa, "rsa-1", c)
}

func no() *bool { f := false; return &f }

// testIdentities: two GitLab identities for group/app (production from
// push or web on protected main, staging from anywhere protected), one for
// project 77 on any ref, an HMAC one and an SSH-only one.
func testIdentities(t testing.TB) []config.Identity {
	t.Helper()
	dir := t.TempDir()
	write := func(name, secret string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(secret), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return []config.Identity{
		{Name: "deploy-prod", GitLab: &config.GitLabClaims{ProjectPath: "group/app", Ref: "main", Environment: "production", PipelineSource: []string{"push", "web"}}},
		{Name: "deploy-staging", GitLab: &config.GitLabClaims{ProjectPath: "group/app", Environment: "staging"}},
		{Name: "tools", GitLab: &config.GitLabClaims{ProjectID: "77", RefProtected: no()}},
		{Name: "ci-hmac", HMACSecretFile: write("ci", "\n  "+testSecret+"  \n")},
		{Name: "ci-other", HMACSecretFile: write("other", testSecret2)},
		{Name: "ssh-only"},
	}
}

const (
	testSecret  = "0123456789abcdef0123456789abcdef-ci"
	testSecret2 = "fedcba9876543210fedcba9876543210-other"
)

type fixture struct {
	clock *clock
	iss   *issuer
	v     *Verifier
}

// newFixture builds a verifier over testIdentities and a fresh issuer,
// accepting algs (RS256 when none are given).
func newFixture(t testing.TB, algs ...string) *fixture {
	t.Helper()
	f := &fixture{clock: newClock(), iss: newIssuer(t)}
	ids, err := auth.New(testIdentities(t))
	if err != nil {
		t.Fatal(err)
	}
	f.v, err = New(f.iss.config(algs...), ids, f.iss.srv.Client(), f.clock.now)
	if err != nil {
		t.Fatal(err)
	}
	return f
}
