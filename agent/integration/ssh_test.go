package integration

import (
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
	"github.com/berth-deploy/berth/agent/testenv"
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
  handshake_timeout: 5s
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

	// 200 connections that never speak (more than max_connections, 64)
	// do not keep the deploy out, and are closed by the handshake deadline.
	var idle []net.Conn
	for range 200 {
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
			c.SetReadDeadline(floodStart.Add(5*time.Second + 3*time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil {
				open.Add(1) // still open at the deadline: not closed by agentd
			}
		}()
	}
	wg.Wait()
	if n := open.Load(); n > 0 {
		t.Errorf("%d of 200 silent connections were still open 3s after the 5s handshake deadline", n)
	}
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
	if n := len(h.history()); n != 1 {
		t.Errorf("refused requests were recorded: %d releases", n)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
