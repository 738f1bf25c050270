package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPrintsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "good.yaml"), []byte("services:\n  web:\n    image: registry.test/web:v1\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("services:\n  web:\n    build: .\n"), 0o600)
	cfg := filepath.Join(dir, "agentd.yaml")
	os.WriteFile(cfg, []byte(`
log:
  format: xml
projects:
  shop:
    compose_file: good.yaml
  blog:
    compose_file: bad.yaml
  wiki:
    compose_file: missing.yaml
`), 0o600)
	var out bytes.Buffer
	err := run(t.Context(), []string{"--config", cfg, "--check"}, &out, &out)
	if !errors.Is(err, errReported) {
		t.Fatalf("err = %v, want a reported failure", err)
	}
	for _, want := range []string{
		"problems found",
		`log.format "xml"`,
		"project wiki: compose_file: open",
		"project blog (",
		"service web: no image",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--check output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "project shop") {
		t.Errorf("the good project is reported:\n%s", out.String())
	}
}

func TestCheckPassesAGoodConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte("services:\n  web:\n    image: registry.test/web:v1\n"), 0o600)
	cfg := filepath.Join(dir, "agentd.yaml")
	os.WriteFile(cfg, []byte("projects:\n  shop:\n    compose_file: compose.yaml\n"), 0o600)
	var out bytes.Buffer
	if err := run(t.Context(), []string{"--config", cfg, "--check"}, &out, &out); err != nil {
		t.Fatalf("check of a good config: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "ok (1 projects)") {
		t.Errorf("output: %s", out.String())
	}
}

// Options an authorized_keys line may not carry, misspelled or not, are
// each reported by --check, which then fails.
func TestCheckRefusesBadKeyOptions(t *testing.T) {
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILtjzoBBff9vS9ZnYo3WjC5RXuSufoPZPhFeJBL54yex"
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte("services:\n  web:\n    image: registry.test/web:v1\n"), 0o600)
	cfg := filepath.Join(dir, "agentd.yaml")
	options := []string{
		"no-port-forwardin",
		"no-agent-fowarding",
		`command="/bin/sh"`,
		`permitopen="127.0.0.1:22"`,
		`permitlisten="0.0.0.0:80"`,
		`environment="LD_PRELOAD=/tmp/x.so"`,
		`from=""`,
		"restrict=yes",
		"pty",
		"X11-forwarding",
		"cert-authority",
	}
	body := "projects:\n  shop:\n    compose_file: compose.yaml\nidentities:\n  - name: ci\n    projects: [shop]\n    verbs: [deploy]\n    ssh_keys:\n"
	for _, o := range options {
		body += "      - '" + strings.ReplaceAll(o, "'", "''") + " " + key + "'\n"
	}
	os.WriteFile(cfg, []byte(body), 0o600)
	var out bytes.Buffer
	err := run(t.Context(), []string{"--config", cfg, "--check"}, &out, &out)
	if !errors.Is(err, errReported) {
		t.Fatalf("err = %v, want a reported failure\n%s", err, out.String())
	}
	for i, o := range options {
		want := fmt.Sprintf("ssh_keys[%d]: option %q is not supported", i, o)
		if o == `from=""` {
			want = fmt.Sprintf(`ssh_keys[%d]: from="" is empty`, i)
		}
		if !strings.Contains(out.String(), want) {
			t.Errorf("--check output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out.String())
	}
}

// TestHelp: --help (and -h) prints the usage, flags spelled --flag as
// agentctl's are, on standard output, and exits 0; a flag agentd does not
// take, or an argument, exits 2 with the usage on standard error; both
// spellings of a flag still work.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"-help"}} {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), args, &stdout, &stderr)
		if code := exitCode(err, &stderr); code != 0 || stderr.Len() != 0 {
			t.Errorf("%v: exit %d, stderr %q", args, code, stderr.String())
		}
		for _, want := range []string{"Usage: agentd [--config FILE] [--check] [--version]", "  --config FILE ", "(default /etc/berth/agentd.yaml)", "  --check ", "  --version ", "-h, --help"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("%v: the usage lacks %q:\n%s", args, want, stdout.String())
			}
		}
		if strings.Contains(stdout.String(), "\n  -config") {
			t.Errorf("%v: a flag spelled -flag:\n%s", args, stdout.String())
		}
	}
	for _, args := range [][]string{{"--bogus"}, {"--config"}, {"extra"}, {"--check", "extra"}} {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), args, &stdout, &stderr)
		if code := exitCode(err, &stderr); code != 2 || stdout.Len() != 0 || !strings.Contains(stderr.String(), "Usage: agentd") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and the usage on stderr", args, code, stdout.String(), stderr.String())
		}
	}
	for _, args := range [][]string{{"--version"}, {"-version"}} {
		var stdout bytes.Buffer
		if err := run(t.Context(), args, &stdout, &stdout); err != nil || !strings.HasPrefix(stdout.String(), "agentd ") {
			t.Errorf("%v: %v, %q", args, err, stdout.String())
		}
	}
}
