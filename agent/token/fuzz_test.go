package token

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/golang-jwt/jwt/v5"
)

// The fuzz targets run their seeds under plain go test; docs/testing.md
// has the go test -fuzz commands that search further.

var fuzzSecrets = map[string]string{"ci-hmac": testSecret, "ci-other": testSecret2}

// refMAC is the signature of a request as docs/agentd.md defines it,
// written again here so the fuzz check does not trust the code it checks.
func refMAC(secret []byte, ts, nonce, method, uri string, body []byte) []byte {
	if method == "" {
		method = http.MethodGet
	}
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts + "\n" + nonce + "\n" + method + "\n" + uri + "\n"))
	h.Write(body)
	return h.Sum(nil)
}

// FuzzHMAC feeds Verifier.HMAC arbitrary header values, methods, targets
// and bodies. When key is set and sig empty, the request is signed with
// key. HMAC must never panic, never accept a request whose signature is
// not that of the identity's real secret over exactly this request, never
// accept one twice, and never record a refused one's nonce.
func FuzzHMAC(f *testing.F) {
	fx := newFixture(f)
	now := fx.clock.now()
	ts := strconv.FormatInt(now.Unix(), 10)
	body := []byte(`{"project":"app","image":"registry.example.com/app:1"}`)
	good := hex.EncodeToString(refMAC([]byte(testSecret), ts, testNonce, "POST", "/v1/deploy", body))
	flipped := []byte(good)
	flipped[10] ^= 1
	for _, s := range []struct {
		identity, ts, nonce, sig, method, target string
		body, key                                []byte
	}{
		{"ci-hmac", ts, testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret)},                 // accepted
		{"ci-other", ts, testNonce, "", "GET", "/v1/status?project=a", nil, []byte(testSecret2)},       // accepted
		{"ci-hmac", ts, testNonce, good, "POST", "/v1/deploy", body, nil},                              // accepted, signature given
		{"ci-hmac", ts, testNonce, strings.ToUpper(good), "POST", "/v1/deploy", body, nil},             // upper-case hex
		{"ci-hmac", ts, testNonce, string(flipped), "POST", "/v1/deploy", body, nil},                   // byte flip
		{"ci-hmac", ts, testNonce, good, "POST", "/v1/rollback", body, nil},                            // moved to another path
		{"ci-hmac", ts, testNonce, good, "POST", "/v1/deploy", []byte(`{"project":"evil"}`), nil},      // body swapped
		{"ci-hmac", ts, testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret2)},                // another secret
		{"ci-hmac", ts, testNonce, "", "POST", "/v1/deploy", body, []byte("\n " + testSecret + " \n")}, // untrimmed secret
		{"ci-hmac", ts, testNonce, "", "POST", "/v1/deploy", body, []byte{}},                           // empty key, no signature
		{"ci-other", ts, testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret)},                // another identity's secret
		{"ssh-only", ts, testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10), testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", strconv.FormatInt(now.Add(10*time.Minute).Unix(), 10), testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", "+" + ts, testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", ts + "\n", testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", "99999999999999999999", testNonce, "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", ts, "short", "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", ts, testNonce + "\n", "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", ts, strings.Repeat("é", 20), "", "POST", "/v1/deploy", body, []byte(testSecret)},
		{"ci-hmac", ts, testNonce, "", "POST", "/v1/a%2Fb?x=%20y", body, []byte(testSecret)},
		{"ci-hmac", ts, testNonce, "", "", "*", nil, []byte(testSecret)},
		{"", "", "", "", "", "", nil, nil},
		{"ci-hmac\x00", ts, testNonce, "zz", "\n", "not a target", []byte{0xff}, nil},
	} {
		f.Add(s.identity, s.ts, s.nonce, s.sig, s.method, s.target, s.body, s.key)
	}
	f.Fuzz(func(t *testing.T, identity, ts, nonce, sig, method, target string, body, key []byte) {
		fx.v.nonces = newSeen("nonce", "http.max_nonces", 16, nil) // each input on its own
		u, err := url.ParseRequestURI(target)
		if err != nil {
			u = &url.URL{Path: "/"}
		}
		r := &http.Request{Method: method, URL: u, Header: http.Header{}, RemoteAddr: "192.0.2.1:4242"}
		if sig == "" && len(key) > 0 {
			sig = hex.EncodeToString(refMAC(key, ts, nonce, method, u.RequestURI(), body))
		}
		r.Header.Set(HeaderIdentity, identity)
		r.Header.Set(HeaderTimestamp, ts)
		r.Header.Set(HeaderNonce, nonce)
		r.Header.Set(HeaderSignature, sig)
		p, err := fx.v.HMAC(r, body)
		if err != nil {
			if !errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrForbidden) {
				t.Fatalf("error %v is not only ErrUnauthenticated", err)
			}
			if p != (auth.Principal{}) {
				t.Fatalf("principal %+v with an error", p)
			}
			if n := fx.v.nonces.len(); n != 0 {
				t.Fatalf("refused request recorded %d nonces", n)
			}
			return
		}
		// Accepted: it must be exactly what the identity's secret signs.
		h := r.Header
		secret, ok := fuzzSecrets[h.Get(HeaderIdentity)]
		if !ok || p.Identity != h.Get(HeaderIdentity) || p.Method != "hmac" {
			t.Fatalf("accepted as %+v for identity header %q", p, h.Get(HeaderIdentity))
		}
		got, err := hex.DecodeString(h.Get(HeaderSignature))
		want := refMAC([]byte(secret), h.Get(HeaderTimestamp), h.Get(HeaderNonce), method, u.RequestURI(), body)
		if err != nil || !hmac.Equal(got, want) {
			t.Fatalf("accepted a signature that is not the secret's: %q", h.Get(HeaderSignature))
		}
		when, err := strconv.ParseInt(h.Get(HeaderTimestamp), 10, 64)
		if err != nil || now.Sub(time.Unix(when, 0)).Abs() > maxClockSkew {
			t.Fatalf("accepted timestamp %q", h.Get(HeaderTimestamp))
		}
		if !validNonce(h.Get(HeaderNonce)) {
			t.Fatalf("accepted nonce %q", h.Get(HeaderNonce))
		}
		if _, err := fx.v.HMAC(r, body); !errors.Is(err, errReplayed) {
			t.Fatalf("replay: %v", err)
		}
	})
}

// FuzzBearer feeds Verifier.Bearer arbitrary strings. It must never panic,
// and never accept a token that is not signed by the issuer's key for its
// algorithm (checked here with crypto/rsa and crypto/ecdsa directly), nor
// one with another issuer or audience, nor the same token twice, and never
// record a refused token's jti.
func FuzzBearer(f *testing.F) {
	fx := newFixture(f, "RS256", "ES256")
	is, now := fx.iss, fx.clock.now()
	valid := is.rs256(is.claims(now))
	parts := strings.Split(valid, ".")
	der, err := x509.MarshalPKIXPublicKey(&is.rsa.PublicKey)
	if err != nil {
		f.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	b64 := base64.RawURLEncoding.EncodeToString
	for _, s := range []string{
		valid,
		sign(f, jwt.SigningMethodES256, is.ec, "ec-1", is.claims(now)),
		sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "rsa-1", is.claims(now)),
		b64([]byte(`{"alg":"none","kid":"rsa-1"}`)) + "." + parts[1] + ".",
		sign(f, jwt.SigningMethodHS256, pubPEM, "rsa-1", is.claims(now)),
		sign(f, jwt.SigningMethodHS256, der, "rsa-1", is.claims(now)),
		sign(f, jwt.SigningMethodRS256, rsaKey(f), "rsa-1", is.claims(now)),
		sign(f, jwt.SigningMethodRS256, is.rsa, "unknown", is.claims(now)),
		sign(f, jwt.SigningMethodES256, is.ec, "rsa-1", is.claims(now)),
		parts[0] + "." + parts[1] + ".",
		parts[0] + "." + b64([]byte(`{"iss":"`+testIssuer+`","aud":"`+testAudience+`"}`)) + "." + parts[2],
		b64([]byte(`{"alg":"RS256","kid":7}`)) + "." + parts[1] + "." + parts[2],
		"Bearer " + valid,
		valid + ".",
		"", ".", "..", "a.b.c", "\x00\xff.\xfe.\n", strings.Repeat("a", maxTokenBytes+1),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		fx.v.jtis = newSeen("jti", "http.oidc.max_jtis", 16, nil) // each input on its own
		p, err := fx.v.Bearer(context.Background(), raw)
		if err != nil {
			if errors.Is(err, ErrUnauthenticated) == errors.Is(err, ErrForbidden) {
				t.Fatalf("error %v is not exactly one of ErrUnauthenticated and ErrForbidden", err)
			}
			if p != (auth.Principal{}) {
				t.Fatalf("principal %+v with an error", p)
			}
			if n := fx.v.jtis.len(); n != 0 {
				t.Fatalf("refused token recorded %d jtis", n)
			}
			return
		}
		if reason := signedByIssuer(is, raw); reason != "" {
			t.Fatalf("accepted %q: %s", raw, reason)
		}
		if _, err := fx.v.Bearer(context.Background(), raw); !errors.Is(err, errReplayed) {
			t.Fatalf("replay: %v", err)
		}
	})
}

// signedByIssuer checks, without package jwt, that raw is a compact JWS
// signed with the issuer's RSA key (RS256) or EC key (ES256) and made out
// to this issuer and audience; it says what is wrong, or "".
func signedByIssuer(is *issuer, raw string) string {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "not three segments"
	}
	dec := base64.RawURLEncoding.DecodeString
	hdr, err1 := dec(parts[0])
	payload, err2 := dec(parts[1])
	sig, err3 := dec(parts[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return "not base64url: " + err.Error()
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil {
		return "header: " + err.Error()
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	switch h.Alg {
	case "RS256":
		if err := rsa.VerifyPKCS1v15(&is.rsa.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
			return "RS256 signature: " + err.Error()
		}
	case "ES256":
		if len(sig) != 64 || !ecdsa.Verify(&is.ec.PublicKey, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
			return "ES256 signature does not verify"
		}
	default:
		return "alg " + h.Alg
	}
	var c struct {
		Iss string `json:"iss"`
		Aud any    `json:"aud"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return "claims: " + err.Error()
	}
	if c.Iss != testIssuer {
		return "iss " + c.Iss
	}
	switch aud := c.Aud.(type) {
	case string:
		if aud == testAudience {
			return ""
		}
	case []any:
		if slices.Contains(aud, any(testAudience)) {
			return ""
		}
	}
	return "aud does not hold ours"
}
