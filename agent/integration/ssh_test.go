package integration

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
)

// sshClient runs the real OpenSSH client with one key against agentd's
// embedded server, pinning its host key.
type sshClient struct {
	t                *testing.T
	port, key, known string
}

func (c sshClient) run(stdin string, args ...string) (string, int) {
	c.t.Helper()
	base := []string{"-p", c.port, "-i", c.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + c.known, "deploy@127.0.0.1"}
	cmd := exec.Command("ssh", append(base, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return string(out), 0
}

func keygen(t *testing.T, dir, name string) (path, pub string) {
	t.Helper()
	path = filepath.Join(dir, name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(path + ".pub")
	return path, strings.TrimSpace(string(b))
}

// TestSSHFrontDoor deploys through the embedded SSH server with the real
// OpenSSH client: the host key pinned from agentctl host-key, secrets and a
// registry credential on standard input, exit codes as the ssh command's
// exit status, and identities held to their scopes.
func TestSSHFrontDoor(t *testing.T) {
	docker := testenv.Docker(t)
	reg := testenv.StartAuthRegistry(t, "ci", "job-token-123")
	dir := t.TempDir()
	keyA, pubA := keygen(t, dir, "ci-shop")
	keyB, pubB := keygen(t, dir, "ci-other")
	keyX, _ := keygen(t, dir, "stranger")
	port := freePort(t)
	h := newHarness(t, `
services:
  web:
    image: $REGISTRY/web:v1
    environment:
      GREETING: ${GREETING:-none}
    cap_add: ["${EXTRA_CAP:-CHOWN}"]
    deploy:
      update_config: {monitor: 1s}
`, options{reg: reg, project: "    request_variables: [GREETING, EXTRA_CAP]\n", second: "services:\n  web:\n    image: $REGISTRY/web:v1\n", extra: fmt.Sprintf(`ssh:
  listen: 127.0.0.1:%s
  stdin_timeout: 2s
identities:
  - name: ci-shop
    ssh_keys: ['%s']
    projects: [$PROJECT]
    verbs: [deploy, status, history]
  - name: ci-other
    ssh_keys: ['%s']
    projects: [$PROJECTb]
    verbs: ["*"]
`, port, pubA, pubB)})
	for _, tag := range []string{"v1", "v2"} {
		ref := reg.Ref("web:" + tag)
		testenv.Build(t, docker, ref, testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": tag}})
		reg.Push(t, docker, ref)
	}
	h.start()

	known := filepath.Join(dir, "known_hosts")
	line, code := h.ctl("host-key", "--host", "127.0.0.1")
	if code != 0 || !strings.HasPrefix(line, "[127.0.0.1]:"+port+" ssh-ed25519 ") {
		t.Fatalf("host-key: exit %d: %q", code, line)
	}
	os.WriteFile(known, []byte(line), 0o600)
	a := sshClient{t, port, keyA, known}

	// 300 connections that never speak (more than max_connections, 64)
	// do not keep the deploy out, and are closed by the handshake deadline
	// (10s by default): all of them within 14s.
	var idle []net.Conn
	for range 300 {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	floodStart := time.Now()

	// A deploy with the registry credential and a secret on stdin.
	stdin := fmt.Sprintf("BERTH_REGISTRY=%s\nBERTH_REGISTRY_USER=ci\nBERTH_REGISTRY_PASSWORD=job-token-123\nGREETING=s3cret-hello\n", reg.Addr)
	out, code := a.run(stdin, "deploy", h.project, "--image", "web="+reg.Ref("web:v2"), "--env-file", "-", "--message", "'from CI'")
	if code != 0 || !strings.Contains(out, "[web] ready") || !strings.Contains(out, "release 1 is live") {
		t.Fatalf("deploy over SSH: exit %d\n%s\nagentd:\n%s", code, out, h.agentLog)
	}
	var wg sync.WaitGroup
	var open atomic.Int64
	for _, c := range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(floodStart.Add(14 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil {
				open.Add(1) // still open at the deadline: not closed by agentd
			}
		}()
	}
	wg.Wait()
	if n := open.Load(); n > 0 {
		t.Errorf("%d of 300 silent connections were still open 14s after they connected", n)
	}
	t.Logf("300 silent connections all closed %v after they connected; the deploy succeeded meanwhile", time.Since(floodStart).Round(100*time.Millisecond))
	c, err := docker.ContainerInspect(t.Context(), h.project+"-web-1")
	if err != nil || !contains(c.Config.Env, "GREETING=s3cret-hello") {
		t.Errorf("the env from stdin did not reach the container: %v %v", c.Config.Env, err)
	}
	rel := h.history()[0]
	if !strings.HasPrefix(rel.Identity, "ci-shop (ssh SHA256:") || rel.Message != "from CI" {
		t.Errorf("release identity %q, message %q", rel.Identity, rel.Message)
	}
	if strings.Contains(rel.Compose, "s3cret-hello") || strings.Contains(h.agentLog.String(), "s3cret-hello") || strings.Contains(h.agentLog.String(), "job-token-123") {
		t.Error("a secret from stdin was recorded or logged")
	}

	// Without the credential, the private registry refuses: exit 2.
	if out, code := a.run("", "deploy", h.project, "--image", "web="+reg.Ref("web:v1")); code != api.ExitBadRequest || !strings.Contains(out, "no basic auth credentials") {
		t.Errorf("deploy without a credential: exit %d\n%s", code, out)
	}
	// A bad request: 2.
	if out, code := a.run("", "deploy", h.project, "--image", "nope=x:1"); code != api.ExitBadRequest {
		t.Errorf("unknown service: exit %d\n%s", code, out)
	}
	// A variable from the request may not give a service more power over
	// the host (here a capability): 2, nothing changed. The answer names
	// the variable and the field, not the value (more in TestRequestPolicy).
	before := h.ids()
	if out, code := a.run("EXTRA_CAP=SYS_ADMIN\n", "deploy", h.project, "--env-file", "-"); code != api.ExitBadRequest ||
		!strings.Contains(out, "service web: cap_add[0] is set by the request's variable EXTRA_CAP") || strings.Contains(out, "SYS_ADMIN") {
		t.Errorf("deploy with a capability from stdin: exit %d\n%s", code, out)
	}
	h.sameIDs(before, "after a refused request")
	// Locked: 3, naming the holder.
	h.ctl("lock", h.project, "-m", "maintenance window")
	if out, code := a.run(stdin, "deploy", h.project, "--env-file", "-"); code != api.ExitLocked || !strings.Contains(out, "maintenance window") {
		t.Errorf("deploy while locked: exit %d\n%s", code, out)
	}
	h.ctl("unlock", h.project)
	// Not allowed: 4, for a verb outside the scope, another identity's
	// project, and a key nobody configured.
	if out, code := a.run("", "rollback", h.project); code != api.ExitDenied || !strings.Contains(out, "may not rollback") {
		t.Errorf("rollback by ci-shop: exit %d\n%s", code, out)
	}
	b := sshClient{t, port, keyB, known}
	if out, code := b.run("", "deploy", h.project); code != api.ExitDenied {
		t.Errorf("ci-other deploying %s: exit %d\n%s", h.project, code, out)
	}
	if out, code := b.run("", "status", h.project+"b"); code != 0 {
		t.Errorf("ci-other status of its own project: exit %d\n%s", code, out)
	}
	x := sshClient{t, port, keyX, known}
	if out, code := x.run("", "status"); code != api.ExitDenied || !strings.Contains(out, "SHA256:") {
		t.Errorf("an unknown key: exit %d\n%s", code, out)
	}
	// A command of 250 KB: 2 for a known key, 4 for an unknown one, and
	// agentd's log does not grow with it.
	long := strings.Repeat("w", 125_000) // the client's own limit is 128 KiB a word
	if out, code := a.run("", "status", long, long); code != api.ExitBadRequest || !strings.Contains(out, "ssh.max_command_bytes") {
		t.Errorf("status with 250 KB of words: exit %d\n%.300s", code, out)
	}
	if out, code := x.run("", "status", long, long); code != api.ExitDenied {
		t.Errorf("an unknown key with 250 KB of words: exit %d\n%.300s", code, out)
	}
	// Neither an empty project nor one out of scope lists the projects.
	if out, code := a.run("", "deploy", "''"); code != api.ExitBadRequest || strings.Contains(out, h.project+"b") {
		t.Errorf("deploy '' by ci-shop: exit %d\n%s", code, out)
	}
	if out, code := b.run("", "deploy", "nosuch"); code != api.ExitDenied || strings.Contains(out, h.project) {
		t.Errorf("deploy nosuch by ci-other: exit %d\n%s", code, out)
	}
	// --env-file - with standard input never closed: refused with 2 once
	// ssh.stdin_timeout (2s) has passed, and the session ends.
	held := exec.Command("ssh", "-p", port, "-i", keyA, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile="+known, "deploy@127.0.0.1", "deploy", h.project, "--env-file", "-")
	stdinW, err := held.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdinW.Close()
	var heldOut strings.Builder
	held.Stdout, held.Stderr = &heldOut, &heldOut
	began := time.Now()
	if err := held.Start(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdinW, "GREETING=held\n") // and never closed
	heldDone := make(chan error, 1)
	go func() { heldDone <- held.Wait() }()
	select {
	case err := <-heldDone:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != api.ExitBadRequest || !strings.Contains(heldOut.String(), "standard input still open after 2s") {
			t.Errorf("deploy with standard input held open: %v\n%s", err, heldOut.String())
		}
		t.Logf("deploy with standard input held open: refused and closed after %v", time.Since(began).Round(100*time.Millisecond))
	case <-time.After(12 * time.Second):
		held.Process.Kill()
		<-heldDone
		t.Errorf("deploy with standard input held open: still running after 12s")
	}
	if n := len(h.history()); n != 1 {
		t.Errorf("refused requests were recorded: %d releases", n)
	}
	longest := 0
	for line := range strings.Lines(h.agentLog.String()) {
		longest = max(longest, len(line))
	}
	if longest > 2048 {
		t.Errorf("agentd logged a line of %d bytes", longest)
	}
	t.Logf("agentd's longest log line: %d bytes", longest)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
