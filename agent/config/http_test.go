package config

import (
	"fmt"
	"strings"
	"testing"
)

func TestCheckHTTPS(t *testing.T) {
	for _, ok := range []string{
		"https://gitlab.example.com",
		"https://gitlab.example.com/oauth/discovery/keys",
		"https://203.0.113.7:8443/",
		"http://127.0.0.1:8080/jwks",
		"http://127.3.4.5/",
		"http://[::1]:9000/keys",
		"http://localhost:9000",
		"http://LOCALHOST/",
	} {
		if err := CheckHTTPS(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"http://gitlab.example.com",
		"http://gitlab.example.com/oauth/discovery/keys",
		"http://10.0.0.5/",
		"http://0.0.0.0:8080/",
		"http://127.0.0.1.evil.example/",
		"http://localhost.evil.example/",
		"http://[::2]/",
		"https://",
		"https:///keys",
		"ftp://gitlab.example.com/",
		"gitlab.example.com",
		"//gitlab.example.com",
		"",
	} {
		if err := CheckHTTPS(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func loadHTTP(t *testing.T, http string) *Config {
	t.Helper()
	dir := t.TempDir()
	c, err := Load(write(t, dir, "agentd.yaml", "http:\n"+http))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestValidateOIDCWantsHTTPS(t *testing.T) {
	c := loadHTTP(t, `
  listen: 127.0.0.1:8420
  oidc:
    issuer: http://gitlab.example.com
    audience: berth
`)
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), `http.oidc.issuer: "http://gitlab.example.com": want https://`) {
		t.Fatalf("http issuer: %v", err)
	}
	if strings.Contains(err.Error(), "jwks_url") {
		t.Errorf("the jwks_url derived from a bad issuer is reported too:\n%v", err)
	}

	c = loadHTTP(t, `
  listen: 127.0.0.1:8420
  oidc:
    issuer: https://gitlab.example.com
    jwks_url: http://keys.example.com/jwks
    audience: berth
`)
	err = c.Validate()
	if err == nil || !strings.Contains(err.Error(), `http.oidc.jwks_url: "http://keys.example.com/jwks": want https://`) {
		t.Fatalf("http jwks_url: %v", err)
	}

	for _, base := range []string{"https://gitlab.example.com", "http://127.0.0.1:9999", "http://[::1]:9999", "http://localhost:9999"} {
		c = loadHTTP(t, fmt.Sprintf(`
  listen: 127.0.0.1:8420
  oidc:
    issuer: %s
    jwks_url: %s/jwks
    audience: berth
`, base, base))
		if err := c.Validate(); err != nil && strings.Contains(err.Error(), "http.") {
			t.Errorf("%s: %v", base, err)
		}
	}
}

func TestReplayStoreLimits(t *testing.T) {
	c := loadHTTP(t, `
  listen: 127.0.0.1:8420
  oidc:
    issuer: https://gitlab.example.com
    audience: berth
`)
	if c.HTTP.MaxNonces != DefaultMaxNonces || c.HTTP.OIDC.MaxJTIs != DefaultOIDCMaxJTIs {
		t.Errorf("defaults: max_nonces %d, max_jtis %d", c.HTTP.MaxNonces, c.HTTP.OIDC.MaxJTIs)
	}
	c = loadHTTP(t, `
  listen: 127.0.0.1:8420
  max_nonces: -1
  oidc:
    issuer: https://gitlab.example.com
    audience: berth
    max_jtis: -5
`)
	err := c.Validate()
	for _, want := range []string{"http.max_nonces must be at least 1", "http.oidc.max_jtis must be at least 1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("problems do not include %q: %v", want, err)
		}
	}
}
