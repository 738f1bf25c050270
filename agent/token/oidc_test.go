package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/golang-jwt/jwt/v5"
)

func TestBearerAccepts(t *testing.T) {
	f := newFixture(t, "RS256", "ES256")
	is := f.iss
	prod := auth.Principal{Identity: "deploy-prod", Method: "oidc", Detail: "group/app@main (pipeline 1001, job 2002)"}
	cases := []struct {
		name  string
		token func(c jwt.MapClaims) string
		want  auth.Principal
	}{
		{"RS256", is.rs256, prod},
		{"ES256", func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodES256, is.ec, "ec-1", c) }, prod},
		{"aud is a list holding ours", func(c jwt.MapClaims) string {
			c["aud"] = []string{"https://other.example.com", testAudience}
			return is.rs256(c)
		}, prod},
		{"pipeline_source web", func(c jwt.MapClaims) string { c["pipeline_source"] = "web"; return is.rs256(c) }, prod},
		{"no nbf", func(c jwt.MapClaims) string { delete(c, "nbf"); return is.rs256(c) }, prod},
		{"exp just past, within leeway", func(c jwt.MapClaims) string {
			c["exp"] = f.clock.now().Add(-leeway / 2).Unix()
			return is.rs256(c)
		}, prod},
		{"iat just inside max age", func(c jwt.MapClaims) string {
			c["iat"] = f.clock.now().Add(-testMaxAge).Unix()
			return is.rs256(c)
		}, prod},
		{"staging environment, any ref", func(c jwt.MapClaims) string {
			c["environment"], c["ref"], c["pipeline_source"] = "staging", "release-1", "schedule"
			return is.rs256(c)
		}, auth.Principal{Identity: "deploy-staging", Method: "oidc", Detail: "group/app@release-1 (pipeline 1001, job 2002)"}},
		{"unprotected ref where ref_protected: false", func(c jwt.MapClaims) string {
			c["project_id"], c["project_path"], c["ref"], c["ref_protected"] = "77", "group/tools", "feature", "false"
			return is.rs256(c)
		}, auth.Principal{Identity: "tools", Method: "oidc", Detail: "group/tools@feature (pipeline 1001, job 2002)"}},
		{"no project_path: detail is the subject", func(c jwt.MapClaims) string {
			c["project_id"], c["sub"] = "77", "project_path:group/tools:ref_type:branch:ref:main"
			delete(c, "project_path")
			return is.rs256(c)
		}, auth.Principal{Identity: "tools", Method: "oidc", Detail: "project_path:group/tools:ref_type:branch:ref:main"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := f.v.Bearer(context.Background(), tc.token(is.claims(f.clock.now())))
			if err != nil {
				t.Fatalf("Bearer: %v", err)
			}
			if got != tc.want {
				t.Errorf("principal = %+v, want %+v", got, tc.want)
			}
		})
	}
	if n := is.fetches.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1", n)
	}
}

func TestBearerFirstIdentityByName(t *testing.T) {
	c, is := newClock(), newIssuer(t)
	ids, err := auth.New([]config.Identity{
		{Name: "b-second", GitLab: &config.GitLabClaims{ProjectPath: "group/app"}},
		{Name: "a-first", GitLab: &config.GitLabClaims{ProjectID: "42"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(is.config(), ids, is.srv.Client(), c.now)
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Bearer(context.Background(), is.rs256(is.claims(c.now())))
	if err != nil || p.Identity != "a-first" {
		t.Fatalf("Bearer = %+v, %v; want a-first", p, err)
	}
}

func TestBearerRejects(t *testing.T) {
	f := newFixture(t, "RS256", "ES256")
	is := f.iss
	now := f.clock.now()

	pub, err := x509.MarshalPKIXPublicKey(&is.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	pkcs1 := x509.MarshalPKCS1PublicKey(&is.rsa.PublicKey)
	foreign := rsaKey(t)
	foreignEC, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	valid := is.rs256(is.claims(now))
	parts := strings.Split(valid, ".")
	b64 := base64.RawURLEncoding.EncodeToString

	// with edits c, the valid claims as the RSA key signs them
	rs := func(edit func(c jwt.MapClaims)) string {
		c := is.claims(now)
		edit(c)
		return is.rs256(c)
	}
	unauth := func(reason error) []error { return []error{ErrUnauthenticated, reason} }
	cases := []struct {
		name  string
		token string
		want  []error // all must match
	}{
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "rsa-1", is.claims(now)), unauth(jwt.ErrTokenSignatureInvalid)},
		{"alg none, empty signature by hand", b64([]byte(`{"alg":"none","kid":"rsa-1"}`)) + "." + parts[1] + ".", unauth(jwt.ErrTokenSignatureInvalid)},
		{"HS256 keyed with the RSA public key as PEM", sign(t, jwt.SigningMethodHS256, pubPEM, "rsa-1", is.claims(now)), unauth(jwt.ErrTokenSignatureInvalid)},
		{"HS256 keyed with the RSA public key as PKIX DER", sign(t, jwt.SigningMethodHS256, pub, "rsa-1", is.claims(now)), unauth(jwt.ErrTokenSignatureInvalid)},
		{"HS256 keyed with the RSA public key as PKCS1 DER", sign(t, jwt.SigningMethodHS256, pkcs1, "rsa-1", is.claims(now)), unauth(jwt.ErrTokenSignatureInvalid)},
		{"wrong aud", rs(func(c jwt.MapClaims) { c["aud"] = "https://other.example.com" }), unauth(jwt.ErrTokenInvalidAudience)},
		{"aud is ours plus a suffix", rs(func(c jwt.MapClaims) { c["aud"] = testAudience + "/" }), unauth(jwt.ErrTokenInvalidAudience)},
		{"no aud", rs(func(c jwt.MapClaims) { delete(c, "aud") }), unauth(jwt.ErrTokenRequiredClaimMissing)},
		{"wrong iss", rs(func(c jwt.MapClaims) { c["iss"] = "https://evil.example.com" }), unauth(jwt.ErrTokenInvalidIssuer)},
		{"iss with a trailing slash", rs(func(c jwt.MapClaims) { c["iss"] = testIssuer + "/" }), unauth(jwt.ErrTokenInvalidIssuer)},
		{"iss a prefix of ours", rs(func(c jwt.MapClaims) { c["iss"] = strings.TrimSuffix(testIssuer, ".com") }), unauth(jwt.ErrTokenInvalidIssuer)},
		{"iss ours as a prefix", rs(func(c jwt.MapClaims) { c["iss"] = testIssuer + ".evil.example" }), unauth(jwt.ErrTokenInvalidIssuer)},
		{"iss in other case", rs(func(c jwt.MapClaims) { c["iss"] = strings.ToUpper(testIssuer) }), unauth(jwt.ErrTokenInvalidIssuer)},
		{"no iss", rs(func(c jwt.MapClaims) { delete(c, "iss") }), unauth(jwt.ErrTokenRequiredClaimMissing)},
		{"expired", rs(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() }), unauth(jwt.ErrTokenExpired)},
		{"nbf in the future", rs(func(c jwt.MapClaims) { c["nbf"] = now.Add(2 * time.Minute).Unix() }), unauth(jwt.ErrTokenNotValidYet)},
		{"no exp", rs(func(c jwt.MapClaims) { delete(c, "exp") }), unauth(jwt.ErrTokenRequiredClaimMissing)},
		{"no iat", rs(func(c jwt.MapClaims) { delete(c, "iat") }), unauth(errNoIAT)},
		{"iat in the future", rs(func(c jwt.MapClaims) { c["iat"] = now.Add(5 * time.Minute).Unix() }), unauth(jwt.ErrTokenUsedBeforeIssued)},
		{"older than max age", rs(func(c jwt.MapClaims) { c["iat"] = now.Add(-testMaxAge - time.Second).Unix() }), unauth(errTooOld)},
		{"no jti", rs(func(c jwt.MapClaims) { delete(c, "jti") }), unauth(errNoJTI)},
		{"empty jti", rs(func(c jwt.MapClaims) { c["jti"] = "" }), unauth(errNoJTI)},
		{"exp of the wrong type", rs(func(c jwt.MapClaims) { c["exp"] = "tomorrow" }), unauth(jwt.ErrTokenMalformed)},
		{"project_id of the wrong type", rs(func(c jwt.MapClaims) { c["project_id"] = 42 }), unauth(jwt.ErrTokenMalformed)},
		{"1 MB token", strings.Repeat("a", 1<<20), unauth(errTooLong)},
		{"8 KiB + 1 token", valid + "." + strings.Repeat("a", maxTokenBytes-len(valid)), unauth(errTooLong)},
		{"empty", "", unauth(jwt.ErrTokenMalformed)},
		{"garbage", "garbage", unauth(jwt.ErrTokenMalformed)},
		{"three dots", "...", unauth(jwt.ErrTokenMalformed)},
		{"three junk segments", "a.b.c", unauth(jwt.ErrTokenMalformed)},
		{"binary junk", "\x00\xff.\xfe\x01.\n", unauth(jwt.ErrTokenMalformed)},
		{"header not JSON", b64([]byte("{not json")) + "." + parts[1] + "." + parts[2], unauth(jwt.ErrTokenMalformed)},
		{"claims not JSON", parts[0] + "." + b64([]byte("[1,2")) + "." + parts[2], unauth(jwt.ErrTokenMalformed)},
		{"claims a JSON array", parts[0] + "." + b64([]byte("[]")) + "." + parts[2], unauth(jwt.ErrTokenMalformed)},
		{"Bearer prefix left on", "Bearer " + valid, unauth(jwt.ErrTokenMalformed)},
		{"payload tampered", parts[0] + "." + b64([]byte(strings.Replace(mustDecode(t, parts[1]), "group/app", "group/evil", 1))) + "." + parts[2], unauth(jwt.ErrTokenSignatureInvalid)},
		{"signature stripped", parts[0] + "." + parts[1] + ".", unauth(jwt.ErrTokenSignatureInvalid)},
		{"no kid", sign(t, jwt.SigningMethodRS256, is.rsa, "", is.claims(now)), unauth(errNoKID)},
		{"kid not a string", b64([]byte(`{"alg":"RS256","kid":7}`)) + "." + parts[1] + "." + parts[2], unauth(errNoKID)},
		{"unknown kid", sign(t, jwt.SigningMethodRS256, is.rsa, "rsa-9", is.claims(now)), unauth(errUnknownKey)},
		{"foreign RSA key with a known kid", sign(t, jwt.SigningMethodRS256, foreign, "rsa-1", is.claims(now)), unauth(jwt.ErrTokenSignatureInvalid)},
		{"foreign EC key with a known kid", sign(t, jwt.SigningMethodES256, foreignEC, "ec-1", is.claims(now)), unauth(jwt.ErrTokenSignatureInvalid)},
		{"ES256 naming the RSA key", sign(t, jwt.SigningMethodES256, is.ec, "rsa-1", is.claims(now)), unauth(errBadKey)},
		{"RS384 (not allowed) with the RSA key", sign(t, jwt.SigningMethodRS384, is.rsa, "rsa-1", is.claims(now)), unauth(jwt.ErrTokenSignatureInvalid)},
		// Valid tokens whose claims no identity accepts.
		{"unprotected ref", rs(func(c jwt.MapClaims) { c["ref_protected"] = "false" }), []error{ErrForbidden}},
		{"no ref_protected", rs(func(c jwt.MapClaims) { delete(c, "ref_protected") }), []error{ErrForbidden}},
		{"other environment", rs(func(c jwt.MapClaims) { c["environment"] = "qa" }), []error{ErrForbidden}},
		{"other project_path", rs(func(c jwt.MapClaims) { c["project_path"] = "group/other" }), []error{ErrForbidden}},
		{"other ref to production", rs(func(c jwt.MapClaims) { c["ref"] = "feature" }), []error{ErrForbidden}},
		{"other pipeline_source to production", rs(func(c jwt.MapClaims) { c["pipeline_source"] = "schedule" }), []error{ErrForbidden}},
		{"project 77 on another path is still project 77, but not 78", rs(func(c jwt.MapClaims) { c["project_id"], c["project_path"] = "78", "group/tools" }), []error{ErrForbidden}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := f.v.Bearer(context.Background(), tc.token)
			if err == nil {
				t.Fatalf("accepted as %+v", p)
			}
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Errorf("error %q is not %q", err, w)
				}
			}
			if errors.Is(err, ErrUnauthenticated) == errors.Is(err, ErrForbidden) {
				t.Errorf("error %q must be exactly one of ErrUnauthenticated and ErrForbidden", err)
			}
			if p != (auth.Principal{}) {
				t.Errorf("principal %+v returned with an error", p)
			}
			if len(tc.token) > 20 && strings.Contains(err.Error(), tc.token) {
				t.Errorf("error echoes the token")
			}
		})
	}
	if n := f.v.jtis.len(); n != 0 {
		t.Errorf("%d jtis recorded for refused tokens", n)
	}
	// Only the first token fetched the key set; the unknown kid found it
	// fetched less than JWKSRefresh ago.
	if n := is.fetches.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1", n)
	}
	// The refused tokens did not spoil the valid one.
	if _, err := f.v.Bearer(context.Background(), valid); err != nil {
		t.Errorf("valid token after the refusals: %v", err)
	}
}

func mustDecode(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBearerForbiddenSaysWhichClaims(t *testing.T) {
	f := newFixture(t)
	c := f.iss.claims(f.clock.now())
	c["ref_protected"], c["environment"] = "false", "qa"
	_, err := f.v.Bearer(context.Background(), f.iss.rs256(c))
	if !errors.Is(err, ErrForbidden) {
		t.Fatalf("error %v, want ErrForbidden", err)
	}
	for _, s := range []string{"deploy-prod", `ref_protected "false"`, `environment "qa"`} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %s", err, s)
		}
	}
	if strings.Contains(err.Error(), "project_path") {
		t.Errorf("error %q names a claim that matched", err)
	}
}

func TestBearerES256NotAllowed(t *testing.T) {
	f := newFixture(t) // RS256 only
	tok := sign(t, jwt.SigningMethodES256, f.iss.ec, "ec-1", f.iss.claims(f.clock.now()))
	if _, err := f.v.Bearer(context.Background(), tok); !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
		t.Fatalf("ES256 with only RS256 allowed: %v", err)
	}
}

func TestBearerReplay(t *testing.T) {
	f := newFixture(t)
	tok := f.iss.rs256(f.iss.claims(f.clock.now()))
	if _, err := f.v.Bearer(context.Background(), tok); err != nil {
		t.Fatalf("first use: %v", err)
	}
	_, err := f.v.Bearer(context.Background(), tok)
	if !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, errReplayed) {
		t.Fatalf("second use: %v, want replayed", err)
	}
	// Later the token is refused as expired, not accepted again.
	f.clock.advance(10 * time.Minute)
	if _, err := f.v.Bearer(context.Background(), tok); !errors.Is(err, jwt.ErrTokenExpired) {
		t.Fatalf("after exp: %v, want expired", err)
	}
}

func TestBearerReplayConcurrent(t *testing.T) {
	f := newFixture(t)
	tok := f.iss.rs256(f.iss.claims(f.clock.now()))
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		ok     int
		others []error
	)
	for range 20 {
		wg.Go(func() {
			_, err := f.v.Bearer(context.Background(), tok)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			} else if !errors.Is(err, errReplayed) {
				others = append(others, err)
			}
		})
	}
	wg.Wait()
	if ok != 1 || len(others) > 0 {
		t.Fatalf("%d of 20 uses accepted (want 1); other errors: %v", ok, others)
	}
}

func TestBearerReplayCacheBounded(t *testing.T) {
	f := newFixture(t)
	f.v.jtis.max = 3
	use := func() error {
		_, err := f.v.Bearer(context.Background(), f.iss.rs256(f.iss.claims(f.clock.now())))
		return err
	}
	for i := range 3 {
		if err := use(); err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
	}
	// Full of live jtis: refuse rather than forget one.
	if err := use(); !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, errSeenFull) {
		t.Fatalf("token 4 with the cache full: %v", err)
	}
	// Once those tokens expired their jtis are evicted.
	f.clock.advance(6 * time.Minute)
	if err := use(); err != nil {
		t.Fatalf("token after the others expired: %v", err)
	}
	if n := f.v.jtis.len(); n != 1 {
		t.Errorf("%d jtis held, want 1", n)
	}
}

// flood sends n tokens with unknown kids at once; each must be refused.
func flood(t *testing.T, f *fixture, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		tok := sign(t, jwt.SigningMethodRS256, f.iss.rsa, fmt.Sprintf("unknown-%d", i), f.iss.claims(f.clock.now()))
		wg.Go(func() {
			_, err := f.v.Bearer(context.Background(), tok)
			if !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, errUnknownKey) {
				errs <- fmt.Errorf("unknown kid: %v", err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// 200 unknown kids at once (issue 10's figure) make at most one JWKS fetch
// per jwks_refresh.
func TestUnknownKidFloodFetchesOncePerInterval(t *testing.T) {
	f := newFixture(t)
	flood(t, f, 200)
	if n := f.iss.fetches.Load(); n != 1 {
		t.Fatalf("200 unknown kids: %d fetches, want 1", n)
	}
	f.clock.advance(testRefresh - time.Second)
	flood(t, f, 200)
	if n := f.iss.fetches.Load(); n != 1 {
		t.Fatalf("200 more within the interval: %d fetches, want 1", n)
	}
	f.clock.advance(time.Second)
	flood(t, f, 200)
	if n := f.iss.fetches.Load(); n != 2 {
		t.Fatalf("200 more after the interval: %d fetches, want 2", n)
	}
	// Known keys need no fetch.
	if _, err := f.v.Bearer(context.Background(), f.iss.rs256(f.iss.claims(f.clock.now()))); err != nil {
		t.Fatal(err)
	}
	if n := f.iss.fetches.Load(); n != 2 {
		t.Fatalf("valid token: %d fetches, want 2", n)
	}
}

func TestKeyRotation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.v.Bearer(ctx, f.iss.rs256(f.iss.claims(f.clock.now()))); err != nil {
		t.Fatal(err)
	}
	// GitLab publishes a new key and retires the old one.
	next := rsaKey(t)
	f.iss.publish("rsa-2", "RS256", &next.PublicKey)
	f.iss.retire("rsa-1")
	rs2 := func() string {
		return sign(t, jwt.SigningMethodRS256, next, "rsa-2", f.iss.claims(f.clock.now()))
	}
	// Within JWKSRefresh of the last fetch the new kid is not fetched yet.
	if _, err := f.v.Bearer(ctx, rs2()); !errors.Is(err, errUnknownKey) {
		t.Fatalf("new kid within the interval: %v, want unknown key", err)
	}
	if n := f.iss.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
	f.clock.advance(testRefresh)
	for i := range 3 {
		p, err := f.v.Bearer(ctx, rs2())
		if err != nil || p.Identity != "deploy-prod" {
			t.Fatalf("new key, token %d: %+v, %v", i, p, err)
		}
	}
	if n := f.iss.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches after rotation, want 2", n)
	}
	// The retired key went with the old key set.
	if _, err := f.v.Bearer(ctx, f.iss.rs256(f.iss.claims(f.clock.now()))); !errors.Is(err, errUnknownKey) {
		t.Fatalf("retired key: %v, want unknown key", err)
	}
}

func TestJWKSFetchFailure(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.iss.setFail(true)
	if _, err := f.v.Bearer(ctx, f.iss.rs256(f.iss.claims(f.clock.now()))); !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, errFetch) {
		t.Fatalf("issuer down: %v", err)
	}
	f.iss.setFail(false)
	// A failed fetch counts: no new one within the interval.
	if _, err := f.v.Bearer(ctx, f.iss.rs256(f.iss.claims(f.clock.now()))); !errors.Is(err, errUnknownKey) {
		t.Fatalf("within the interval: %v", err)
	}
	f.clock.advance(testRefresh)
	if _, err := f.v.Bearer(ctx, f.iss.rs256(f.iss.claims(f.clock.now()))); err != nil {
		t.Fatalf("issuer back: %v", err)
	}
	if n := f.iss.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestJWKSCancelledWait(t *testing.T) {
	f := newFixture(t)
	// Another caller holds the fetch slot; a caller whose context ends
	// stops waiting for it.
	f.v.keys.fetching <- struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := f.v.Bearer(ctx, f.iss.rs256(f.iss.claims(f.clock.now())))
	if !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	<-f.v.keys.fetching
}

func TestBearerWithoutOIDC(t *testing.T) {
	is := newIssuer(t)
	ids, err := auth.New(testIdentities(t))
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(nil, ids, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Bearer(context.Background(), is.rs256(is.claims(time.Now()))); !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, errNoOIDC) {
		t.Fatalf("no oidc: %v", err)
	}
	if n := is.fetches.Load(); n != 0 {
		t.Fatalf("%d fetches without oidc", n)
	}
}

func TestNewRefuses(t *testing.T) {
	ids, err := auth.New(testIdentities(t))
	if err != nil {
		t.Fatal(err)
	}
	ok := config.OIDC{Issuer: testIssuer, Audience: testAudience}
	with := func(edit func(o *config.OIDC)) *config.OIDC { o := ok; edit(&o); return &o }
	cases := map[string]*config.OIDC{
		"HS256":          with(func(o *config.OIDC) { o.Algorithms = []string{"RS256", "HS256"} }),
		"none":           with(func(o *config.OIDC) { o.Algorithms = []string{"none"} }),
		"lower case":     with(func(o *config.OIDC) { o.Algorithms = []string{"rs256"} }),
		"no issuer":      with(func(o *config.OIDC) { o.Issuer = "" }),
		"no audience":    with(func(o *config.OIDC) { o.Audience = "" }),
		"negative age":   with(func(o *config.OIDC) { o.MaxAge = -time.Second }),
		"negative fetch": with(func(o *config.OIDC) { o.JWKSRefresh = -time.Second }),
		"negative jtis":  with(func(o *config.OIDC) { o.MaxJTIs = -1 }),
		"http issuer":    with(func(o *config.OIDC) { o.Issuer = "http://gitlab.example.com" }),
		"http jwks_url":  with(func(o *config.OIDC) { o.JWKSURL = "http://gitlab.example.com/oauth/discovery/keys" }),
		"http jwks_url on a loopback-looking name": with(func(o *config.OIDC) { o.JWKSURL = "http://127.0.0.1.example.com/keys" }),
	}
	for name, o := range cases {
		if _, err := New(o, ids, nil, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(&ok, ids, nil, nil); err != nil {
		t.Errorf("defaults: %v", err)
	}
	// Plain http only to a loopback host, as the tests' own issuer is.
	for _, u := range []string{"http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost:8080"} {
		if _, err := New(with(func(o *config.OIDC) { o.Issuer = u }), ids, nil, nil); err != nil {
			t.Errorf("loopback issuer %s: %v", u, err)
		}
	}
	if _, err := New(&ok, ids, nil, nil, WithMaxNonces(-1)); err == nil {
		t.Errorf("negative max nonces: accepted")
	}
	if _, err := New(&ok, nil, nil, nil); err == nil {
		t.Errorf("nil identities: accepted")
	}
}
