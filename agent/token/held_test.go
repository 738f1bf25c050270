package token

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestHeldMatrix is the list of token and signature attacks that issue 10
// found held, one row each, in the words. Most have finer cases in
// TestBearerRejects, TestHMACRejects and TestHMACByteFlips; this table is
// the one place that says each of them still holds.
func TestHeldMatrix(t *testing.T) {
	f := newFixture(t)
	is := f.iss
	ctx := context.Background()
	der, err := x509.MarshalPKIXPublicKey(&is.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})

	// bearer presents a token made from fresh claims, edited.
	bearer := func(edit func(c jwt.MapClaims)) error {
		c := is.claims(f.clock.now())
		edit(c)
		_, err := f.v.Bearer(ctx, is.rs256(c))
		return err
	}
	// signed is a deploy request signed by ci-hmac at now+skew with a fresh
	// nonce (or the one given), and its body.
	n := 0
	signed := func(skew time.Duration, nonce, target string, body []byte) (*http.Request, []byte) {
		n++
		if nonce == "" {
			nonce = fmt.Sprintf("held-%04d-0123456789", n)
		}
		r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
		Sign(r, "ci-hmac", []byte(testSecret), body, f.clock.now().Add(skew), nonce)
		return r, body
	}
	deploy := func() (*http.Request, []byte) {
		return signed(0, "", "/v1/deploy", []byte(`{"project":"app"}`))
	}
	hmacErr := func(r *http.Request, body []byte) error { _, err := f.v.HMAC(r, body); return err }

	rows := []struct {
		attack string
		run    func(t *testing.T) error
		want   error
	}{
		// The JWT matrix.
		{"alg none", func(t *testing.T) error {
			_, err := f.v.Bearer(ctx, sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "rsa-1", is.claims(f.clock.now())))
			return err
		}, jwt.ErrTokenSignatureInvalid},
		{"HS256 keyed with the RSA public key", func(t *testing.T) error {
			_, err := f.v.Bearer(ctx, sign(t, jwt.SigningMethodHS256, pubPEM, "rsa-1", is.claims(f.clock.now())))
			return err
		}, jwt.ErrTokenSignatureInvalid},
		{"wrong aud", func(*testing.T) error {
			return bearer(func(c jwt.MapClaims) { c["aud"] = "https://other.example.com" })
		}, jwt.ErrTokenInvalidAudience},
		{"iss with a trailing slash", func(*testing.T) error { return bearer(func(c jwt.MapClaims) { c["iss"] = testIssuer + "/" }) }, jwt.ErrTokenInvalidIssuer},
		{"expired", func(*testing.T) error {
			return bearer(func(c jwt.MapClaims) { c["exp"] = f.clock.now().Add(-leeway - time.Second).Unix() })
		}, jwt.ErrTokenExpired},
		{"nbf in the future", func(*testing.T) error {
			return bearer(func(c jwt.MapClaims) { c["nbf"] = f.clock.now().Add(leeway + time.Minute).Unix() })
		}, jwt.ErrTokenNotValidYet},
		{"iat in the future", func(*testing.T) error {
			return bearer(func(c jwt.MapClaims) { c["iat"] = f.clock.now().Add(leeway + time.Minute).Unix() })
		}, jwt.ErrTokenUsedBeforeIssued},
		{"too old (max_age)", func(*testing.T) error {
			return bearer(func(c jwt.MapClaims) { c["iat"] = f.clock.now().Add(-testMaxAge - time.Second).Unix() })
		}, errTooOld},
		{"no jti", func(*testing.T) error { return bearer(func(c jwt.MapClaims) { delete(c, "jti") }) }, errNoJTI},
		{"replayed jti", func(t *testing.T) error {
			tok := is.rs256(is.claims(f.clock.now()))
			if _, err := f.v.Bearer(ctx, tok); err != nil {
				t.Fatalf("first use: %v", err)
			}
			_, err := f.v.Bearer(ctx, tok)
			return err
		}, errReplayed},
		{"unprotected ref", func(*testing.T) error { return bearer(func(c jwt.MapClaims) { c["ref_protected"] = "false" }) }, ErrForbidden},
		{"other project", func(*testing.T) error {
			return bearer(func(c jwt.MapClaims) { c["project_id"], c["project_path"] = "43", "group/other" })
		}, ErrForbidden},
		{"other environment", func(*testing.T) error { return bearer(func(c jwt.MapClaims) { c["environment"] = "qa" }) }, ErrForbidden},
		{"200 unknown kids: at most one JWKS fetch per refresh interval", func(t *testing.T) error {
			before := is.fetches.Load()
			flood(t, f, 200)
			if d := is.fetches.Load() - before; d > 1 {
				t.Errorf("%d JWKS fetches for 200 unknown kids", d)
			}
			_, err := f.v.Bearer(ctx, sign(t, jwt.SigningMethodRS256, is.rsa, "unknown-201", is.claims(f.clock.now())))
			return err
		}, errUnknownKey},

		// The HMAC matrix.
		{"HMAC byte flip", func(*testing.T) error {
			r, body := deploy()
			sig := []byte(r.Header.Get(HeaderSignature))
			sig[len(sig)/2] ^= 0x01 // '0'<->'1', 'a'<->'`' ...
			r.Header.Set(HeaderSignature, string(sig))
			return hmacErr(r, body)
		}, errBadSignature},
		{"HMAC missing prefix (first byte of the signature cut)", func(*testing.T) error {
			r, body := deploy()
			r.Header.Set(HeaderSignature, r.Header.Get(HeaderSignature)[2:])
			return hmacErr(r, body)
		}, errBadSignature},
		{"HMAC timestamp 10 minutes old", func(*testing.T) error {
			return hmacErr(signed(-10*time.Minute, "", "/v1/deploy", []byte(`{}`)))
		}, errStale},
		{"HMAC timestamp 10 minutes ahead", func(*testing.T) error {
			return hmacErr(signed(10*time.Minute, "", "/v1/deploy", []byte(`{}`)))
		}, errStale},
		{"HMAC replay", func(t *testing.T) error {
			r, body := deploy()
			if err := hmacErr(r, body); err != nil {
				t.Fatalf("first use: %v", err)
			}
			return hmacErr(r, body)
		}, errReplayed},
		{"HMAC nonce reuse", func(t *testing.T) error {
			if err := hmacErr(signed(0, "reused-0123456789abcdef", "/v1/deploy", []byte(`{"project":"a"}`))); err != nil {
				t.Fatalf("first use: %v", err)
			}
			return hmacErr(signed(0, "reused-0123456789abcdef", "/v1/status", nil))
		}, errReplayed},
		{"HMAC signature moved to another path", func(*testing.T) error {
			r, body := deploy()
			moved := httptest.NewRequest(http.MethodPost, "/v1/rollback", bytes.NewReader(body))
			moved.Header = r.Header.Clone()
			return hmacErr(moved, body)
		}, errBadSignature},
		{"HMAC swapped body", func(*testing.T) error {
			r1, _ := signed(0, "", "/v1/deploy", []byte(`{"project":"app","message":"one"}`))
			_, b2 := signed(0, "", "/v1/deploy", []byte(`{"project":"app","message":"two"}`))
			return hmacErr(r1, b2)
		}, errBadSignature},
	}
	for _, row := range rows {
		t.Run(row.attack, func(t *testing.T) {
			err := row.run(t)
			if err == nil || !errors.Is(err, row.want) {
				t.Fatalf("%s: %v, want %v", row.attack, err, row.want)
			}
			if errors.Is(err, ErrUnauthenticated) == errors.Is(err, ErrForbidden) {
				t.Fatalf("error %q must be exactly one of ErrUnauthenticated and ErrForbidden", err)
			}
		})
	}
	// Only the first uses of the replay rows were recorded.
	if n, m := f.v.jtis.len(), f.v.nonces.len(); n != 1 || m != 2 {
		t.Errorf("%d jtis and %d nonces recorded, want 1 and 2", n, m)
	}
}
