package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
)

// The headers of an HMAC-signed request. The signature is the hex of
// HMAC-SHA256(secret, timestamp "\n" nonce "\n" METHOD "\n" path?query "\n" body).
const (
	HeaderIdentity  = "X-Berth-Identity"  // the identity's name
	HeaderTimestamp = "X-Berth-Timestamp" // unix seconds
	HeaderNonce     = "X-Berth-Nonce"     // 16 to 64 of [A-Za-z0-9_-], never reused
	HeaderSignature = "X-Berth-Signature"
)

// maxClockSkew is the most a request's timestamp may be off from now. A
// nonce is remembered until its timestamp leaves that window: after that
// the request it came with is refused as stale anyway.
const maxClockSkew = 5 * time.Minute

// Reasons a signed request is refused.
var (
	errNoHeaders    = errors.New("not a signed request: missing " + HeaderIdentity + ", " + HeaderTimestamp + ", " + HeaderNonce + " or " + HeaderSignature)
	errNoSecret     = errors.New("unknown identity, or one without an hmac secret")
	errBadTimestamp = errors.New("bad timestamp")
	errStale        = errors.New("timestamp too far from now")
	errBadNonce     = errors.New("bad nonce: want 16 to 64 of A-Z a-z 0-9 _ -")
	errBadSignature = errors.New("bad signature")
)

// HMAC verifies a request signed with an identity's secret; body is the
// request's body, already read. A nonce is accepted once per identity:
// it is recorded only once the signature is good, and remembered until its
// timestamp is maxClockSkew old. The principal's Detail is the nonce, its
// Remote the request's peer.
func (v *Verifier) HMAC(r *http.Request, body []byte) (auth.Principal, error) {
	name, ts, nonce, sig := r.Header.Get(HeaderIdentity), r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderNonce), r.Header.Get(HeaderSignature)
	if name == "" || ts == "" || nonce == "" || sig == "" {
		return auth.Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, errNoHeaders)
	}
	secret, ok := v.secrets[name]
	if !ok {
		return auth.Principal{}, fmt.Errorf("%w: %w: %s", ErrUnauthenticated, errNoSecret, short(name))
	}
	now := v.now()
	when, err := parseUnix(ts)
	if err != nil {
		return auth.Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	if skew := now.Sub(when); skew > maxClockSkew || skew < -maxClockSkew {
		return auth.Principal{}, fmt.Errorf("%w: %w (%s off, at most %s)", ErrUnauthenticated, errStale, skew.Round(time.Second), maxClockSkew)
	}
	if !validNonce(nonce) {
		return auth.Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, errBadNonce)
	}
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(secret, ts, nonce, r, body)) {
		return auth.Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, errBadSignature)
	}
	if err := v.nonces.add(name, nonce, now, when.Add(maxClockSkew)); err != nil {
		return auth.Principal{}, fmt.Errorf("%w: nonce: %w", ErrUnauthenticated, err)
	}
	return auth.Principal{Identity: name, Method: "hmac", Detail: "nonce " + nonce, Remote: r.RemoteAddr}, nil
}

// Sign sets the four headers that make r a request signed by identity with
// secret, at now, with nonce (16 to 64 of [A-Za-z0-9_-], fresh each time).
// body must be the body r will send.
func Sign(r *http.Request, identity string, secret, body []byte, now time.Time, nonce string) {
	ts := strconv.FormatInt(now.Unix(), 10)
	r.Header.Set(HeaderIdentity, identity)
	r.Header.Set(HeaderTimestamp, ts)
	r.Header.Set(HeaderNonce, nonce)
	r.Header.Set(HeaderSignature, hex.EncodeToString(mac(secret, ts, nonce, r, body)))
}

// mac is the signature of a request.
func mac(secret []byte, ts, nonce string, r *http.Request, body []byte) []byte {
	method := r.Method
	if method == "" {
		method = http.MethodGet // as net/http sends it
	}
	uri := ""
	if r.URL != nil {
		uri = r.URL.RequestURI()
	}
	h := hmac.New(sha256.New, secret)
	for _, s := range []string{ts, nonce, method, uri} {
		h.Write([]byte(s))
		h.Write([]byte{'\n'})
	}
	h.Write(body)
	return h.Sum(nil)
}

// parseUnix reads a timestamp of decimal unix seconds.
func parseUnix(s string) (time.Time, error) {
	if len(s) > 12 {
		return time.Time{}, errBadTimestamp
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return time.Time{}, errBadTimestamp
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %w", errBadTimestamp, err)
	}
	return time.Unix(n, 0), nil
}

func validNonce(s string) bool {
	if len(s) < 16 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
