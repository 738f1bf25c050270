package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// Reasons an ID token is refused, besides those of package jwt.
var (
	errNoOIDC     = errors.New("ID tokens are not accepted (no http.oidc)")
	errTooLong    = errors.New("token too long")
	errNoKID      = errors.New("token names no key (kid)")
	errUnknownKey = errors.New("no such key in the issuer's key set")
	errBadKey     = errors.New("key unfit for the token")
	errFetch      = errors.New("fetch the issuer's key set")
	errNoIAT      = errors.New("token has no iat")
	errTooOld     = errors.New("token issued too long ago")
	errNoJTI      = errors.New("token has no jti")
)

// claims are those of a GitLab CI ID token.
type claims struct {
	jwt.RegisteredClaims
	ProjectID      string `json:"project_id"`
	ProjectPath    string `json:"project_path"`
	Ref            string `json:"ref"`
	RefType        string `json:"ref_type"`
	RefProtected   string `json:"ref_protected"`
	Environment    string `json:"environment"`
	PipelineSource string `json:"pipeline_source"`
	PipelineID     string `json:"pipeline_id"`
	JobID          string `json:"job_id"`
	UserLogin      string `json:"user_login"`
}

// keyCache is the issuer's key set, fetched when a token names a key it
// does not hold, at most once per JWKSRefresh.
type keyCache struct {
	mu  sync.Mutex
	set jose.JSONWebKeySet // guarded by mu

	// fetching is a one-slot semaphore held while deciding on and making a
	// fetch; it guards fetched and last.
	fetching chan struct{}
	fetched  bool
	last     time.Time // of the last fetch attempt, failed or not
}

func (c *keyCache) lookup(kid string) []jose.JSONWebKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.set.Key(kid)
}

// Bearer verifies a GitLab CI ID token and returns the principal of the
// identity whose gitlab claims it matches: the first by name when several
// do. Its Detail is "project_path@ref (pipeline N, job M)", or the subject
// when the token has no project_path; Remote is left to the caller.
//
// A token is accepted once: its jti is remembered, under the identity it
// matched, for as long as the token could otherwise pass (until exp, or
// MaxAge after iat, if sooner). Only a token that verified and matched an
// identity is remembered.
func (v *Verifier) Bearer(ctx context.Context, raw string) (auth.Principal, error) {
	if v.parser == nil {
		return auth.Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, errNoOIDC)
	}
	if len(raw) > maxTokenBytes {
		return auth.Principal{}, fmt.Errorf("%w: %w (%d bytes, at most %d)", ErrUnauthenticated, errTooLong, len(raw), maxTokenBytes)
	}
	var c claims
	if _, err := v.parser.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) { return v.key(ctx, t) }); err != nil {
		return auth.Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	// The parser checked exp (required), nbf, iat (not in the future), iss,
	// aud and the signature; what it does not: iat required, its age, jti.
	now := v.now()
	if c.IssuedAt == nil {
		return auth.Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, errNoIAT)
	}
	if age := now.Sub(c.IssuedAt.Time); age > v.oidc.MaxAge {
		return auth.Principal{}, fmt.Errorf("%w: %w (%s ago, at most %s)", ErrUnauthenticated, errTooOld, age.Round(time.Second), v.oidc.MaxAge)
	}
	if c.ID == "" {
		return auth.Principal{}, fmt.Errorf("%w: %w", ErrUnauthenticated, errNoJTI)
	}
	p, err := v.match(&c)
	if err != nil {
		return auth.Principal{}, err
	}
	// The token is refused after exp (with leeway) or MaxAge after iat,
	// whichever comes first: it need not be remembered longer.
	until := c.ExpiresAt.Add(leeway)
	if old := c.IssuedAt.Add(v.oidc.MaxAge); old.Before(until) {
		until = old
	}
	sum := sha256.Sum256([]byte(c.ID))
	if err := v.jtis.add(p.Identity, string(sum[:]), now, until); err != nil {
		return auth.Principal{}, fmt.Errorf("%w: jti: %w", ErrUnauthenticated, err)
	}
	return p, nil
}

// match finds the identity whose gitlab claims the token satisfies.
func (v *Verifier) match(c *claims) (auth.Principal, error) {
	closest, diffs, score := "", []string(nil), 0
	for _, id := range v.ids.All() {
		if id.GitLab == nil {
			continue
		}
		d, otherProject := mismatches(id.GitLab, c)
		if len(d) == 0 {
			detail := c.Subject
			if c.ProjectPath != "" {
				detail = fmt.Sprintf("%s@%s (pipeline %s, job %s)", c.ProjectPath, c.Ref, c.PipelineID, c.JobID)
			}
			return auth.Principal{Identity: id.Name, Method: "oidc", Detail: detail}, nil
		}
		// Closest: one for the token's project first, then fewest differences.
		s := len(d)
		if otherProject {
			s += 100
		}
		if closest == "" || s < score {
			closest, diffs, score = id.Name, d, s
		}
	}
	if closest == "" {
		return auth.Principal{}, fmt.Errorf("%w: no identity accepts GitLab ID tokens", ErrForbidden)
	}
	return auth.Principal{}, fmt.Errorf("%w: the token's claims match no identity; closest is %s, which does not accept %s",
		ErrForbidden, closest, strings.Join(diffs, ", "))
}

// mismatches lists the token's claims that g does not accept, and reports
// whether the project is among them.
func mismatches(g *config.GitLabClaims, c *claims) (diffs []string, otherProject bool) {
	check := func(name, want, got string) {
		if want != "" && want != got {
			diffs = append(diffs, name+" "+short(got))
		}
	}
	if g.ProjectID == "" && g.ProjectPath == "" {
		// config.Validate forbids it; never let such a block match any project.
		diffs = append(diffs, "any project (the identity names none)")
	}
	check("project_id", g.ProjectID, c.ProjectID)
	check("project_path", g.ProjectPath, c.ProjectPath)
	otherProject = len(diffs) > 0
	check("ref", g.Ref, c.Ref)
	if (g.RefProtected == nil || *g.RefProtected) && c.RefProtected != "true" {
		diffs = append(diffs, "ref_protected "+short(c.RefProtected))
	}
	check("environment", g.Environment, c.Environment)
	if len(g.PipelineSource) > 0 && !slices.Contains(g.PipelineSource, c.PipelineSource) {
		diffs = append(diffs, "pipeline_source "+short(c.PipelineSource))
	}
	return diffs, otherProject
}

// key returns the public key that verifies t: the issuer's key named by
// its kid, fit for its algorithm.
func (v *Verifier) key(ctx context.Context, t *jwt.Token) (any, error) {
	kid, ok := t.Header["kid"].(string)
	if !ok || kid == "" {
		return nil, errNoKID
	}
	candidates, err := v.keysFor(ctx, kid)
	if err != nil {
		return nil, err
	}
	alg := t.Method.Alg()
	for _, k := range candidates {
		if k.Use != "" && k.Use != "sig" || k.Algorithm != "" && k.Algorithm != alg {
			continue
		}
		switch pub := k.Public().Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
			return pub, nil
		}
	}
	return nil, fmt.Errorf("%w: key %s is not a %s signing key", errBadKey, short(kid), alg)
}

// keysFor returns the keys named kid, fetching the key set when it holds
// none and the last fetch is at least JWKSRefresh old. Concurrent callers
// wait for one fetch rather than each making their own.
func (v *Verifier) keysFor(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	c := &v.keys
	if ks := c.lookup(kid); len(ks) > 0 {
		return ks, nil
	}
	select {
	case c.fetching <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the key set: %w", ctx.Err())
	}
	defer func() { <-c.fetching }()
	if ks := c.lookup(kid); len(ks) > 0 {
		return ks, nil // fetched while this call waited
	}
	now := v.now()
	if c.fetched && now.Sub(c.last) < v.oidc.JWKSRefresh {
		return nil, fmt.Errorf("%w: kid %s", errUnknownKey, short(kid))
	}
	c.fetched, c.last = true, now
	// A fetch, once started, runs to its end even if the caller goes away:
	// it costs the rate limit, and a cancelled one would leave the key set
	// stale for a whole interval.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
	defer cancel()
	set, err := v.fetchKeys(fctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errFetch, err)
	}
	c.mu.Lock()
	c.set = set
	c.mu.Unlock()
	if ks := set.Key(kid); len(ks) > 0 {
		return ks, nil
	}
	return nil, fmt.Errorf("%w: kid %s", errUnknownKey, short(kid))
}

// fetchKeys gets the issuer's JWKS.
func (v *Verifier) fetchKeys(ctx context.Context) (jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.oidc.JWKSURL, nil)
	if err != nil {
		return set, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return set, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return set, fmt.Errorf("%s: %s", v.oidc.JWKSURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return set, fmt.Errorf("%s: %w", v.oidc.JWKSURL, err)
	}
	if len(body) > maxJWKSBytes {
		return set, fmt.Errorf("%s: key set larger than %d bytes", v.oidc.JWKSURL, maxJWKSBytes)
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return set, fmt.Errorf("%s: %w", v.oidc.JWKSURL, err)
	}
	if len(set.Keys) == 0 {
		return set, fmt.Errorf("%s: the key set is empty", v.oidc.JWKSURL)
	}
	return set, nil
}
