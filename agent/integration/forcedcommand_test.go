package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
)

// TestOpenSSHForcedCommand drives agentd through the host's own OpenSSH
// server: the key's forced command is agentctl ssh-command, and the
// identity's scopes apply.
func TestOpenSSHForcedCommand(t *testing.T) {
	sshdBin := "/usr/sbin/sshd"
	if _, err := os.Stat(sshdBin); err != nil {
		if testenv.Required() {
			t.Fatal("no /usr/sbin/sshd (scripts/setup-host.sh installs openssh-server)")
		}
		t.Skip("no OpenSSH server")
	}
	h := newHarness(t, webStack, options{extra: `identities:
  - name: ci-shop
    local_users: [root]
    projects: [$PROJECT]
    verbs: [deploy, status]
`})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.start()

	dir := t.TempDir()
	keygen := func(name string) string {
		path := filepath.Join(dir, name)
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
		pub, _ := os.ReadFile(path + ".pub")
		return strings.TrimSpace(string(pub))
	}
	hostPub, clientPub := keygen("host"), keygen("client")
	agentctl := testenv.Binary(t, "./cmd/agentctl")
	authorized := fmt.Sprintf("command=\"%s --socket %s ssh-command --identity ci-shop\",restrict %s\n", agentctl, h.socket, clientPub)
	os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(authorized), 0o600)
	port := freePort(t)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s/host
AuthorizedKeysFile %s/authorized_keys
PermitRootLogin forced-commands-only
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile %s/sshd.pid
`, port, dir, dir, dir)), 0o600)
	os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(fmt.Sprintf("[127.0.0.1]:%s %s\n", port, hostPub)), 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	sshd := exec.Command(sshdBin, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var sshdLog strings.Builder
	sshd.Stderr = &sshdLog
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sshd.Process.Kill(); sshd.Wait() })
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	ssh := func(args ...string) (string, int) {
		base := []string{"-p", port, "-i", filepath.Join(dir, "client"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + filepath.Join(dir, "known_hosts"), "root@127.0.0.1"}
		cmd := exec.Command("ssh", append(base, args...)...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	start := time.Now()
	out, code := ssh("deploy", h.project, "--message", "'through OpenSSH'")
	if code != 0 || !strings.Contains(out, "release 1 is live") {
		t.Fatalf("deploy through the forced command: exit %d\n%s\nsshd:\n%s", code, out, sshdLog.String())
	}
	t.Logf("deployed through OpenSSH's forced command in %v", time.Since(start))
	if hist := h.history(); hist[0].Identity != "ci-shop (ssh-command local:root)" || hist[0].Message != "through OpenSSH" {
		t.Errorf("release 1: identity %q, message %q", hist[0].Identity, hist[0].Message)
	}
	if out, code := ssh("rollback", h.project); code != api.ExitDenied || !strings.Contains(out, "may not rollback") {
		t.Errorf("a verb outside the scope: exit %d\n%s", code, out)
	}
	if out, code := ssh(); code != api.ExitBadRequest || !strings.Contains(out, "Berth commands only") {
		t.Errorf("no command: exit %d\n%s", code, out)
	}
	if out, code := ssh("status", h.project, "--json"); code != 0 || !strings.Contains(out, `"project": "`+h.project) {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	// A command line of 120 KB is refused before agentd is asked; an
	// empty project does not list the configured ones.
	long := strings.Repeat("w", 60_000)
	if out, code := ssh("status", long, long); code != api.ExitBadRequest || !strings.Contains(out, "at most 4096 are taken (--max-command-bytes)") {
		t.Errorf("a 120 KB command: exit %d\n%.300s", code, out)
	}
	if out, code := ssh("deploy", "''"); code != api.ExitBadRequest || strings.Contains(out, "configured") {
		t.Errorf("deploy '': exit %d\n%s", code, out)
	}
}
