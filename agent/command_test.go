package agent

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
)

// newCommandService is a Service for Run's refusals, which come before
// any engine or store is asked: it has neither.
func newCommandService(t *testing.T, ssh *config.SSH) (*Service, *bytes.Buffer) {
	t.Helper()
	cfg := &config.Config{
		Projects: map[string]config.Project{"shop": {}, "zeta-internal": {}},
		Identities: []config.Identity{
			{Name: "ci-shop", LocalUsers: []string{"root"}, Projects: []string{"shop"}, Verbs: []string{"deploy", "status"}},
			{Name: "ops", LocalUsers: []string{"root"}, Projects: []string{"*"}, Verbs: []string{"*"}},
		},
		SSH: ssh,
	}
	var logs bytes.Buffer
	svc, err := New(cfg, nil, nil, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	return svc, &logs
}

func runAs(t *testing.T, svc *Service, identity string, stdin io.Reader, args ...string) (code int, out string) {
	var stdout, stderr bytes.Buffer
	p := auth.Principal{Identity: identity, Method: "ssh", Detail: "SHA256:test", Remote: "127.0.0.1:5555"}
	code = svc.Run(t.Context(), p, args, stdin, &stdout, &stderr)
	return code, stdout.String() + stderr.String()
}

// A caller is never told which projects are configured: not with an empty
// project, not with one out of its scope, not with one that does not
// exist.
func TestRunDoesNotListTheProjects(t *testing.T) {
	svc, logs := newCommandService(t, nil)
	for _, tc := range []struct {
		identity string
		args     []string
		code     int
		says     string
	}{
		{"ci-shop", []string{"deploy", ""}, api.ExitBadRequest, "is not a project name"},
		{"ops", []string{"deploy", ""}, api.ExitBadRequest, "is not a project name"},
		{"ci-shop", []string{"deploy", "zeta-internal"}, api.ExitDenied, "identity ci-shop may not deploy zeta-internal"},
		{"ci-shop", []string{"deploy", "nosuch"}, api.ExitDenied, "identity ci-shop may not deploy nosuch"},
		{"ops", []string{"deploy", "nosuch"}, api.ExitBadRequest, `deploy "nosuch": unknown project`},
		{"ops", []string{"history", "nosuch"}, api.ExitBadRequest, `history "nosuch": unknown project`},
		{"ops", []string{"rollback", "nosuch"}, api.ExitBadRequest, `rollback "nosuch": unknown project`},
	} {
		code, out := runAs(t, svc, tc.identity, strings.NewReader(""), tc.args...)
		if code != tc.code || !strings.Contains(out, tc.says) {
			t.Errorf("%s %q: exit %d, %q; want %d and %q", tc.identity, tc.args, code, out, tc.code, tc.says)
		}
		if strings.Contains(out, "zeta-internal") && !strings.Contains(strings.Join(tc.args, " "), "zeta-internal") || strings.Contains(out, "configured") {
			t.Errorf("%s %q: the answer names the configured projects: %q", tc.identity, tc.args, out)
		}
	}
	if strings.Contains(logs.String(), "zeta-internal, ") {
		t.Errorf("the list of projects was logged:\n%s", logs)
	}
}

// A command longer than ssh.max_command_bytes is refused before it is
// parsed, and no log line carries it.
func TestRunCapsTheCommand(t *testing.T) {
	svc, logs := newCommandService(t, &config.SSH{MaxCommandBytes: 4096})
	word := strings.Repeat("a", 250_000)
	for _, tc := range []struct {
		identity string
		args     []string
	}{
		{"ci-shop", []string{"status", word}},
		{"ci-shop", []string{"deploy", word}},
		{"ops", []string{"lock", "shop", "-m", word}},
		{"nobody", []string{"history", word}},
	} {
		code, out := runAs(t, svc, tc.identity, strings.NewReader(""), tc.args...)
		if code != api.ExitBadRequest || !strings.Contains(out, "agentd takes at most 4096 (ssh.max_command_bytes)") || len(out) > 1024 {
			t.Errorf("%s %.20q: exit %d, %.300q (%d bytes)", tc.identity, tc.args, code, out, len(out))
		}
	}
	// Just under the cap is not refused for its length.
	if code, out := runAs(t, svc, "ops", strings.NewReader(""), "status", strings.Repeat("b", 4096-len("status "))); strings.Contains(out, "max_command_bytes") {
		t.Errorf("a command of 4096 bytes: exit %d, %q", code, out)
	}
	// A refusal by scope logs the project, clipped.
	if code, _ := runAs(t, svc, "ci-shop", strings.NewReader(""), "deploy", strings.Repeat("c", 4000)); code != api.ExitDenied {
		t.Errorf("ci-shop deploying another project: exit %d", code)
	}
	for line := range strings.Lines(logs.String()) {
		if len(line) > 1024 {
			t.Errorf("a log line of %d bytes: %.200q", len(line), line)
		}
	}
	if !strings.Contains(logs.String(), "command_bytes=250007") {
		t.Errorf("the refusal was not logged with the command's size:\n%.2000s", logs)
	}
}

// --env-file - waits for standard input at most ssh.stdin_timeout.
func TestRunBoundsStandardInput(t *testing.T) {
	svc, _ := newCommandService(t, &config.SSH{MaxCommandBytes: 4096, StdinTimeout: 300 * time.Millisecond})
	stdin, w := io.Pipe() // never written to, never closed
	defer w.Close()
	began := time.Now()
	code, out := runAs(t, svc, "ops", stdin, "deploy", "shop", "--env-file", "-")
	took := time.Since(began)
	if code != api.ExitBadRequest || !strings.Contains(out, "standard input still open after 300ms (ssh.stdin_timeout)") {
		t.Errorf("exit %d, %q", code, out)
	}
	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("refused after %v, want about 300ms", took)
	}
}

// A malformed env file is refused with 2, and nothing of it is logged:
// its values are secrets.
func TestRunDoesNotLogABadEnvFile(t *testing.T) {
	svc, logs := newCommandService(t, nil)
	code, out := runAs(t, svc, "ops", strings.NewReader("GOOD=1\nTOKEN=\"s3cret-value\n"), "deploy", "shop", "--env-file", "-")
	// The caller is told where (its own file, quoted): the log must not be.
	if code != api.ExitBadRequest || !strings.Contains(out, "--env-file -: parse") || !strings.Contains(out, "s3cret") {
		t.Errorf("exit %d, %q", code, out)
	}
	if strings.Contains(logs.String(), "s3cret") || !strings.Contains(logs.String(), "reason=\"standard input\"") {
		t.Errorf("log:\n%s", logs)
	}
}

// TestMayShip: an identity ships a compose file only with ship_compose,
// whichever door it comes through; a local user of the socket always may.
func TestMayShip(t *testing.T) {
	cfg := &config.Config{
		Projects: map[string]config.Project{"shop": {}},
		Identities: []config.Identity{
			{Name: "ci", LocalUsers: []string{"root"}, Projects: []string{"shop"}, Verbs: []string{"deploy"}, ShipCompose: true},
			{Name: "ops", LocalUsers: []string{"root"}, Projects: []string{"*"}, Verbs: []string{"*"}},
		},
	}
	svc, err := New(cfg, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p    auth.Principal
		want bool
	}{
		{auth.Principal{Identity: "ci", Method: "ssh"}, true},
		{auth.Principal{Identity: "ci", Method: "ssh-command", Detail: "local:deploy"}, true},
		{auth.Principal{Identity: "ops", Method: "ssh"}, false},
		{auth.Principal{Identity: "ops", Method: "ssh-command", Detail: "local:root"}, false},
		{auth.Principal{Identity: "nobody", Method: "hmac"}, false},
		{auth.Principal{Method: "local", Detail: "alice"}, true},
		{auth.Principal{Identity: "ops", Method: "local", Detail: "alice"}, false},
	} {
		if got := svc.MayShip(tc.p); got != tc.want {
			t.Errorf("MayShip(%s) = %v, want %v", tc.p, got, tc.want)
		}
	}
}
