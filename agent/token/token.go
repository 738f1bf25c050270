// Package token verifies the credentials that CI jobs present to the HTTP
// API: GitLab CI ID tokens (OIDC JWTs from a job's id_tokens:), matched
// against the gitlab claims of the identities, and HMAC-signed requests,
// made with an identity's shared secret. Both refuse replays.
package token

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/golang-jwt/jwt/v5"
)

// The two ways a credential fails. Each error returned by the Verifier
// wraps exactly one of them, with the reason.
var (
	// ErrUnauthenticated is a missing, malformed, forged, expired or
	// replayed credential (HTTP 401).
	ErrUnauthenticated = errors.New("not authenticated")
	// ErrForbidden is a valid ID token whose claims match no identity
	// (HTTP 403).
	ErrForbidden = errors.New("not allowed")
)

// Limits.
const (
	maxTokenBytes = 8 << 10 // longer ID tokens are refused unparsed
	maxJWKSBytes  = 1 << 20
	fetchTimeout  = 10 * time.Second
	leeway        = 30 * time.Second // clock skew allowed on exp, nbf and iat
	minSecret     = 32               // bytes, as config.Validate demands
)

// asymmetric reports whether alg is a JWS algorithm an ID token may use:
// an asymmetric one. "none" and the HS* family never are.
func asymmetric(alg string) bool {
	switch alg {
	case "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA":
		return true
	}
	return false
}

// Verifier checks ID tokens and signed requests. It is safe for
// concurrent use.
type Verifier struct {
	ids    *auth.Identities
	client *http.Client
	now    func() time.Time

	// ID tokens; parser is nil when none are accepted.
	oidc   config.OIDC
	parser *jwt.Parser
	keys   keyCache
	jtis   *seen

	// HMAC secrets by identity name.
	secrets map[string][]byte
	nonces  *seen

	log *slog.Logger
}

// Option tunes a Verifier.
type Option func(*options)

type options struct {
	maxNonces int
	log       *slog.Logger
}

// WithMaxNonces bounds the unexpired nonces remembered per HMAC identity
// (http.max_nonces); 0 means config.DefaultMaxNonces. An identity whose
// store is full is refused until its oldest nonce lapses; others are not.
func WithMaxNonces(n int) Option { return func(o *options) { o.maxNonces = n } }

// WithLog is where the verifier says that an identity's nonce or jti
// store is full (nil: nowhere).
func WithLog(log *slog.Logger) Option { return func(o *options) { o.log = log } }

// New builds a verifier. oidc may be nil: no ID tokens are then accepted.
// The HMAC secret of each identity is read from its HMACSecretFile, less
// surrounding whitespace. client fetches the issuer's key set (nil means a
// client with a timeout); now is the clock (nil means time.Now).
func New(oidc *config.OIDC, ids *auth.Identities, client *http.Client, now func() time.Time, opts ...Option) (*Verifier, error) {
	if ids == nil {
		return nil, errors.New("token: no identities")
	}
	if client == nil {
		client = &http.Client{Timeout: fetchTimeout}
	}
	if now == nil {
		now = time.Now
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxNonces == 0 {
		o.maxNonces = config.DefaultMaxNonces
	}
	if o.maxNonces < 0 {
		return nil, errors.New("token: max nonces must be positive")
	}
	v := &Verifier{
		ids:     ids,
		client:  client,
		now:     now,
		keys:    keyCache{fetching: make(chan struct{}, 1)},
		secrets: map[string][]byte{},
		nonces:  newSeen("nonce", "http.max_nonces", o.maxNonces, o.log),
		log:     o.log,
	}
	if oidc != nil {
		if err := v.setOIDC(*oidc); err != nil {
			return nil, err
		}
	}
	for _, id := range ids.All() {
		if id.HMACSecretFile == "" {
			continue
		}
		data, err := os.ReadFile(id.HMACSecretFile)
		if err != nil {
			return nil, fmt.Errorf("identity %s: hmac secret: %w", id.Name, err)
		}
		secret := bytes.TrimSpace(data)
		if len(secret) < minSecret {
			return nil, fmt.Errorf("identity %s: hmac secret in %s: want at least %d bytes", id.Name, id.HMACSecretFile, minSecret)
		}
		v.secrets[id.Name] = secret
	}
	return v, nil
}

// setOIDC checks the OIDC settings, fills in config's defaults where they
// are zero, and builds the token parser.
func (v *Verifier) setOIDC(o config.OIDC) error {
	if o.Issuer == "" || o.Audience == "" {
		return errors.New("token: oidc needs an issuer and an audience")
	}
	if o.JWKSURL == "" {
		o.JWKSURL = strings.TrimSuffix(o.Issuer, "/") + config.DefaultOIDCJWKSPath
	}
	for what, u := range map[string]string{"issuer": o.Issuer, "jwks_url": o.JWKSURL} {
		if err := config.CheckHTTPS(u); err != nil {
			return fmt.Errorf("token: oidc %s: %w", what, err)
		}
	}
	if len(o.Algorithms) == 0 {
		o.Algorithms = []string{config.DefaultOIDCAlgorithm}
	}
	for _, a := range o.Algorithms {
		if !asymmetric(a) {
			return fmt.Errorf("token: oidc algorithm %q is not an asymmetric signature algorithm", a)
		}
	}
	if o.MaxAge == 0 {
		o.MaxAge = config.DefaultOIDCMaxAge
	}
	if o.JWKSRefresh == 0 {
		o.JWKSRefresh = config.DefaultOIDCJWKSRefresh
	}
	if o.MaxJTIs == 0 {
		o.MaxJTIs = config.DefaultOIDCMaxJTIs
	}
	if o.MaxAge < 0 || o.JWKSRefresh < 0 || o.MaxJTIs < 0 {
		return errors.New("token: oidc max_age, jwks_refresh and max_jtis must be positive")
	}
	o.Algorithms = slices.Clone(o.Algorithms)
	v.oidc = o
	v.jtis = newSeen("jti", "http.oidc.max_jtis", o.MaxJTIs, v.log)
	v.parser = jwt.NewParser(
		jwt.WithValidMethods(o.Algorithms),
		jwt.WithIssuer(o.Issuer),
		jwt.WithAudience(o.Audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(v.now),
	)
	return nil
}

// short quotes a caller-supplied string for an error message, cut to a
// length that cannot flood a log.
func short(s string) string {
	const max = 48
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}
