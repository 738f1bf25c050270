package token

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/golang-jwt/jwt/v5"
)

// hmacAs sends a request signed by identity with secret at the fixture's
// now, with nonce.
func (f *fixture) hmacAs(identity, secret, nonce string) error {
	body := []byte(`{"project":"app"}`)
	r := httptest.NewRequest(http.MethodPost, "/v1/deploy", bytes.NewReader(body))
	Sign(r, identity, []byte(secret), body, f.clock.now(), nonce)
	_, err := f.v.HMAC(r, body)
	return err
}

func nonceN(i int) string { return fmt.Sprintf("nonce-%06d-0123456789", i) }

// One HMAC identity filling its nonce store locks out only itself.
func TestNonceStoreIsPerIdentity(t *testing.T) {
	f := newFixture(t)
	f.v.nonces.max = 50
	for i := range 50 {
		if err := f.hmacAs("ci-hmac", testSecret, nonceN(i)); err != nil {
			t.Fatalf("nonce %d: %v", i, err)
		}
	}
	if err := f.hmacAs("ci-hmac", testSecret, nonceN(50)); !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, errSeenFull) {
		t.Fatalf("ci-hmac past its limit: %v, want its store full", err)
	}
	// ci-other still works, up to its own limit.
	for i := range 50 {
		if err := f.hmacAs("ci-other", testSecret2, nonceN(100+i)); err != nil {
			t.Fatalf("ci-other, nonce %d, with ci-hmac's store full: %v", i, err)
		}
	}
	if n := f.v.nonces.len(); n != 100 {
		t.Errorf("%d nonces held, want 100", n)
	}
}

// One GitLab identity filling its jti store locks out only itself.
func TestJTIStoreIsPerIdentity(t *testing.T) {
	f := newFixture(t)
	f.v.jtis.max = 20
	prod := func() error {
		_, err := f.v.Bearer(context.Background(), f.iss.rs256(f.iss.claims(f.clock.now())))
		return err
	}
	staging := func() error {
		c := f.iss.claims(f.clock.now())
		c["environment"] = "staging"
		p, err := f.v.Bearer(context.Background(), f.iss.rs256(c))
		if err == nil && p.Identity != "deploy-staging" {
			return fmt.Errorf("matched %s", p.Identity)
		}
		return err
	}
	for i := range 20 {
		if err := prod(); err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
	}
	if err := prod(); !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, errSeenFull) {
		t.Fatalf("deploy-prod past its limit: %v, want its store full", err)
	}
	for i := range 20 {
		if err := staging(); err != nil {
			t.Fatalf("deploy-staging token %d with deploy-prod's store full: %v", i, err)
		}
	}
}

// A full store is logged once, with the identity and the setting to
// raise, and said again when the identity is accepted again.
func TestFullStoreIsLogged(t *testing.T) {
	var logged bytes.Buffer
	c, is := newClock(), newIssuer(t)
	ids, err := auth.New(testIdentities(t))
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(is.config(), ids, is.srv.Client(), c.now, WithMaxNonces(2), WithLog(slog.New(slog.NewTextHandler(&logged, nil))))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{clock: c, iss: is, v: v}
	for i := range 5 {
		err := f.hmacAs("ci-hmac", testSecret, nonceN(i))
		if (i < 2) != (err == nil) {
			t.Fatalf("nonce %d: %v", i, err)
		}
		if i == 2 {
			for _, s := range []string{"ci-hmac", "http.max_nonces", "2 unexpired nonces"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		}
	}
	if n := strings.Count(logged.String(), "store is full"); n != 1 {
		t.Errorf("full store logged %d times, want once:\n%s", n, logged.String())
	}
	for _, s := range []string{"identity=ci-hmac", "max=2", "setting=http.max_nonces", "level=WARN"} {
		if !strings.Contains(logged.String(), s) {
			t.Errorf("log lacks %q:\n%s", s, logged.String())
		}
	}
	c.advance(maxClockSkew + time.Second)
	if err := f.hmacAs("ci-hmac", testSecret, nonceN(9)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "accepted again") {
		t.Errorf("recovery not logged:\n%s", logged.String())
	}
}

// A nonce lives until its timestamp leaves the window, no longer: an
// identity that filled its store is refused for at most that long.
func TestNonceExpiresWithTheWindow(t *testing.T) {
	f := newFixture(t)
	f.v.nonces.max = 3
	for i := range 3 {
		if err := f.hmacAs("ci-hmac", testSecret, nonceN(i)); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.advance(maxClockSkew + time.Second)
	if err := f.hmacAs("ci-hmac", testSecret, nonceN(3)); err != nil {
		t.Fatalf("%s after the nonces' window closed: %v", maxClockSkew+time.Second, err)
	}
	if n := f.v.nonces.len(); n != 1 {
		t.Errorf("%d nonces held, want the one live", n)
	}
	// A timestamp ahead of the clock keeps its nonce until it is as far
	// behind: until then a replay must still be refused.
	body := []byte("{}")
	r := httptest.NewRequest(http.MethodPost, "/v1/deploy", bytes.NewReader(body))
	Sign(r, "ci-hmac", []byte(testSecret), body, f.clock.now().Add(4*time.Minute), nonceN(4))
	if _, err := f.v.HMAC(r, body); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(9 * time.Minute)
	if _, err := f.v.HMAC(r, body); !errors.Is(err, errReplayed) {
		t.Fatalf("replay of a request signed 4 minutes ahead, 9 minutes later: %v", err)
	}
	f.clock.advance(time.Second)
	if _, err := f.v.HMAC(r, body); !errors.Is(err, errStale) {
		t.Fatalf("replay after its window: %v", err)
	}
}

// Lapsed entries are forgotten by time, not only when a store is full,
// and whichever identity next presents a credential: a quiet identity's
// entries do not stay.
func TestEntriesExpireByTime(t *testing.T) {
	f := newFixture(t)
	for i := range 10 {
		if err := f.hmacAs("ci-other", testSecret2, nonceN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.v.Bearer(context.Background(), f.iss.rs256(f.iss.claims(f.clock.now()))); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(maxClockSkew + time.Second)
	if err := f.hmacAs("ci-hmac", testSecret, nonceN(100)); err != nil {
		t.Fatal(err)
	}
	if n := f.v.nonces.len(); n != 1 {
		t.Errorf("%d nonces held after ci-other's lapsed, want 1", n)
	}
	// The token (exp in 5 minutes) lapses at exp plus the leeway.
	f.clock.advance(leeway)
	if _, err := f.v.Bearer(context.Background(), f.iss.rs256(f.iss.claims(f.clock.now()))); err != nil {
		t.Fatal(err)
	}
	if n := f.v.jtis.len(); n != 1 {
		t.Errorf("%d jtis held after the first token lapsed, want 1", n)
	}
}

// A jti is remembered until the token's exp (plus leeway) or max_age
// after its iat, whichever is sooner, and replays are refused until then.
func TestJTIExpiresWithTheToken(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.iss.claims(f.clock.now())
	c["exp"] = f.clock.now().Add(3 * time.Hour).Unix() // max_age (1h) comes first
	tok := f.iss.rs256(c)
	if _, err := f.v.Bearer(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// iat is 10 s before the first use: max_age ends 59m50s after it.
	f.clock.advance(testMaxAge - 10*time.Second)
	if _, err := f.v.Bearer(ctx, tok); !errors.Is(err, errReplayed) {
		t.Fatalf("replay at the end of max_age: %v, want replayed", err)
	}
	f.clock.advance(time.Second)
	if _, err := f.v.Bearer(ctx, tok); !errors.Is(err, errTooOld) {
		t.Fatalf("replay after max_age: %v, want too old", err)
	}
	if _, err := f.v.Bearer(ctx, f.iss.rs256(f.iss.claims(f.clock.now()))); err != nil {
		t.Fatal(err)
	}
	if n := f.v.jtis.len(); n != 1 {
		t.Errorf("%d jtis held, want 1", n)
	}
}

// Only a credential that verified is recorded: failed signatures, stale
// timestamps and refused claims leave nothing behind, so a forger cannot
// burn an identity's nonces or jtis, nor fill its store.
func TestFailedCredentialsRecordNothing(t *testing.T) {
	f := newFixture(t)
	f.v.nonces.max, f.v.jtis.max = 1, 1
	body := []byte(`{"project":"app"}`)
	for i := range 100 {
		r := httptest.NewRequest(http.MethodPost, "/v1/deploy", bytes.NewReader(body))
		switch i % 4 {
		case 0: // wrong secret
			Sign(r, "ci-hmac", []byte(testSecret2), body, f.clock.now(), nonceN(i%8))
		case 1: // signature flipped
			Sign(r, "ci-hmac", []byte(testSecret), body, f.clock.now(), nonceN(i%8))
			sig := []byte(r.Header.Get(HeaderSignature))
			sig[0] ^= 1
			r.Header.Set(HeaderSignature, string(sig))
		case 2: // stale
			Sign(r, "ci-hmac", []byte(testSecret), body, f.clock.now().Add(-time.Hour), nonceN(i%8))
		case 3: // body swapped
			Sign(r, "ci-hmac", []byte(testSecret), []byte("{}"), f.clock.now(), nonceN(i%8))
		}
		if _, err := f.v.HMAC(r, body); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("case %d accepted: %v", i, err)
		}
	}
	if n := f.v.nonces.len(); n != 0 {
		t.Fatalf("%d nonces recorded by refused requests", n)
	}
	// The nonces the forgeries carried are still the identity's to use.
	if err := f.hmacAs("ci-hmac", testSecret, nonceN(0)); err != nil {
		t.Fatalf("the real holder, with a nonce a forgery used: %v", err)
	}

	ctx := context.Background()
	c := f.iss.claims(f.clock.now())
	forged := sign(t, jwt.SigningMethodRS256, rsaKey(t), "rsa-1", c)
	wrongClaims := jwt.MapClaims{}
	for k, v := range c {
		wrongClaims[k] = v
	}
	wrongClaims["environment"] = "qa"
	for _, tok := range []string{forged, f.iss.rs256(wrongClaims)} {
		if _, err := f.v.Bearer(ctx, tok); err == nil {
			t.Fatal("refused token accepted")
		}
	}
	if n := f.v.jtis.len(); n != 0 {
		t.Fatalf("%d jtis recorded by refused tokens", n)
	}
	if _, err := f.v.Bearer(ctx, f.iss.rs256(c)); err != nil {
		t.Fatalf("the real token, whose jti a forgery and a refused token carried: %v", err)
	}
}
