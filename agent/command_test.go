package agent

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"maps"
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
			{Name: "ops", LocalUsers: []string{"root"}, Projects: []string{"*"}, Verbs: []string{"*"}, ShipCompose: true},
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

// tarOf is a tar archive of files (name, content, name, content...), as
// `tar -cf -` writes one.
func tarOf(t *testing.T, files ...string) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i+1 < len(files); i += 2 {
		if err := tw.WriteHeader(&tar.Header{Name: files[i], Mode: 0o644, Size: int64(len(files[i+1])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(files[i+1]))
	}
	tw.Close()
	return bytes.NewReader(buf.Bytes())
}

// With --compose-file -, standard input is a tar archive of the compose
// files: they become the request's bundle; with --env-file - too, the
// archive's request.env is the env file (variables and registry
// credential), and not one of the bundle's files.
func TestReadCommandStdinCompose(t *testing.T) {
	svc, _ := newCommandService(t, nil)
	const compose = "services:\n  web:\n    image: ${REGISTRY}/shop/web\n"
	for _, tc := range []struct {
		args  string
		stdin *bytes.Reader
		env   map[string]string
		reg   bool
	}{
		{"deploy shop --compose-file - --source 3f2c1a0", tarOf(t, "compose.yaml", compose, "common/base.yaml", "services: {}\n"), nil, false},
		{"deploy shop --compose-file - --env-file -", tarOf(t, "./compose.yaml", compose, "./common/base.yaml", "services: {}\n", "./request.env",
			"DJANGO_SECRET_KEY=s3cret\nBERTH_REGISTRY=reg.example.com\nBERTH_REGISTRY_USER=ci\nBERTH_REGISTRY_PASSWORD=tok\n"),
			map[string]string{"DJANGO_SECRET_KEY": "s3cret"}, true},
	} {
		cmd, err := api.ParseCommand(strings.Fields(tc.args))
		if err != nil {
			t.Fatal(err)
		}
		if err := svc.readCommandStdin(t.Context(), &cmd, tc.stdin, time.Minute); err != nil {
			t.Fatalf("%s: %v", tc.args, err)
		}
		b := cmd.Deploy.Compose
		if b == nil || len(b.Files) != 2 || b.Files["compose.yaml"] != compose || b.Files["common/base.yaml"] != "services: {}\n" || b.Main != "" {
			t.Errorf("%s: bundle %+v", tc.args, b)
		}
		if !maps.Equal(cmd.Deploy.Env, tc.env) || (cmd.Deploy.Registry != nil) != tc.reg {
			t.Errorf("%s: env %v, registry %+v", tc.args, cmd.Deploy.Env, cmd.Deploy.Registry)
		}
		if tc.reg && (cmd.Deploy.Registry.Server != "reg.example.com" || cmd.Deploy.Registry.Password != "tok") {
			t.Errorf("%s: registry %+v", tc.args, cmd.Deploy.Registry)
		}
	}
}

// What comes on standard input for --compose-file - is bounded in time
// and bytes, must be a tar archive of plain files, and is refused with 2
// before the deploy starts; a secret in it reaches neither the answer
// (when it is not the caller's own env file) nor the log.
func TestRunRefusesABadComposeArchive(t *testing.T) {
	svc, logs := newCommandService(t, &config.SSH{MaxCommandBytes: 4096, StdinTimeout: 300 * time.Millisecond})
	lim := svc.bundleLimits("shop")
	for _, tc := range []struct {
		name  string
		stdin io.Reader
		args  string
		says  string
	}{
		{"an env file, not a tar", strings.NewReader("DJANGO_SECRET_KEY=s3cret\n" + strings.Repeat("#\n", 300)), "deploy shop --compose-file - --env-file -", "standard input is not a tar archive"},
		{"a symbolic link", func() io.Reader {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			tw.WriteHeader(&tar.Header{Name: "compose.yaml", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"})
			tw.Close()
			return &buf
		}(), "deploy shop --compose-file -", "compose.yaml: a symbolic link"},
		{"request.env without --env-file -", tarOf(t, "compose.yaml", "services: {}\n", "request.env", "DJANGO_SECRET_KEY=s3cret\n"), "deploy shop --compose-file -", "request.env is in the archive, but the command has no --env-file -"},
		{"a bad request.env", tarOf(t, "compose.yaml", "services: {}\n", "request.env", "GOOD=1\nTOKEN=\"s3cret\n"), "deploy shop --compose-file - --env-file -", "--env-file - (request.env in the archive): parse"},
		{"endless", io.MultiReader(tarOf(t, "compose.yaml", "services: {}\n"), zeros{}), "deploy shop --compose-file -", fmt.Sprintf("more than %d bytes on standard input", lim.TarBytes())},
	} {
		code, out := runAs(t, svc, "ops", tc.stdin, strings.Fields(tc.args)...)
		if code != api.ExitBadRequest || !strings.Contains(out, tc.says) {
			t.Errorf("%s: exit %d, %q; want 2 and %q", tc.name, code, out, tc.says)
		}
		if strings.Contains(out, "s3cret") && tc.name != "a bad request.env" {
			t.Errorf("%s: the answer quotes a secret: %q", tc.name, out)
		}
	}
	if strings.Contains(logs.String(), "s3cret") || !strings.Contains(logs.String(), "reason=\"standard input\"") {
		t.Errorf("log:\n%s", logs)
	}

	// Standard input never closed: refused after ssh.stdin_timeout.
	stdin, w := io.Pipe()
	defer w.Close()
	began := time.Now()
	code, out := runAs(t, svc, "ops", stdin, "deploy", "shop", "--compose-file", "-", "--env-file", "-")
	took := time.Since(began)
	if code != api.ExitBadRequest || !strings.Contains(out, "standard input still open after 300ms (ssh.stdin_timeout): send the tar archive") {
		t.Errorf("never closed: exit %d, %q", code, out)
	}
	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("refused after %v, want about 300ms", took)
	}
}

// zeros is an endless standard input.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// An identity without ship_compose that asks to ship a compose file is
// refused with 4 before standard input is read: no archive is taken from
// it, however large or slow.
func TestRunRefusesShippingBeforeReading(t *testing.T) {
	svc, _ := newCommandService(t, &config.SSH{MaxCommandBytes: 4096, StdinTimeout: 10 * time.Second})
	stdin, w := io.Pipe() // never written to, never closed
	defer w.Close()
	began := time.Now()
	code, out := runAs(t, svc, "ci-shop", stdin, "deploy", "shop", "--compose-file", "-", "--env-file", "-")
	if took := time.Since(began); code != api.ExitDenied || !strings.Contains(out, "identity ci-shop may not ship a compose file (ship_compose)") || took > 5*time.Second {
		t.Errorf("exit %d after %v, %q; want 4 at once", code, took, out)
	}
}
