package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDefaultsAndRelativePaths(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "compose.yaml", "services: {}\n")
	path := write(t, dir, "agentd.yaml", "state_dir: state\nprojects:\n  shop:\n    compose_file: compose.yaml\n")
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if c.StateDir != filepath.Join(dir, "state") {
		t.Errorf("state_dir = %s, want it relative to the config file", c.StateDir)
	}
	if p := c.Projects["shop"]; p.ComposeFile != filepath.Join(dir, "compose.yaml") || p.KeepReleases != DefaultKeepReleases {
		t.Errorf("project = %+v", p)
	}
	if c.Socket.Path != DefaultSocket || c.Socket.ModeBits() != 0o660 {
		t.Errorf("socket = %+v", c.Socket)
	}
}

func TestUnknownKeyIsAnError(t *testing.T) {
	dir := t.TempDir()
	path := write(t, dir, "agentd.yaml", "projects:\n  shop:\n    compose_fil: x.yaml\n")
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "compose_fil") {
		t.Fatalf("err = %v, want the unknown key named", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	path := write(t, dir, "agentd.yaml", `
socket:
  mode: "999"
  allow_users: [no-such-user-berth]
log:
  format: xml
projects:
  Shop:
    compose_file: missing.yaml
  blog:
    compose_file: ""
    keep_releases: -1
    env_file: absent.env
    allowed_bind_paths: [uploads, /]
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("no problems found")
	}
	for _, want := range []string{
		`socket.mode "999"`,
		"no-such-user-berth",
		`log.format "xml"`,
		`project "Shop": name must match`,
		"project Shop: compose_file: open",
		"project blog: compose_file is required",
		"project blog: env_file: open",
		"project blog: keep_releases -1",
		`project blog: allowed_bind_paths: "uploads" must be an absolute path`,
		`project blog: allowed_bind_paths: "/" must be an absolute path other than /`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems do not include %q:\n%v", want, err)
		}
	}
}

// TestRecoverySettle: the defaults, and a settle that is not positive or
// a limit below it refused with every other problem.
func TestRecoverySettle(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "compose.yaml", "services: {}\n")
	c, err := Load(write(t, dir, "agentd.yaml", "projects:\n  shop:\n    compose_file: compose.yaml\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Recovery.Settle != DefaultRecoverySettle || c.Recovery.SettleLimit != DefaultRecoverySettleLimit {
		t.Errorf("recovery = %+v, want the defaults", c.Recovery)
	}
	for _, body := range []string{"recovery:\n  settle: -1s\n", "recovery:\n  settle: 10s\n  settle_limit: 5s\n"} {
		c, err := Load(write(t, dir, "agentd.yaml", body+"log:\n  format: xml\nprojects:\n  shop:\n    compose_file: compose.yaml\n"))
		if err != nil {
			t.Fatal(err)
		}
		err = c.Validate()
		if err == nil || !strings.Contains(err.Error(), "recovery: settle") || !strings.Contains(err.Error(), `log.format "xml"`) {
			t.Errorf("%q: %v, want the recovery problem among the others", body, err)
		}
	}
}
