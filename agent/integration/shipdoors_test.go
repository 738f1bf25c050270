package integration

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/internal/testenv"
)

// tarball is a tar archive of files (name, content, ...), as tar -cf -
// writes one.
func tarball(t *testing.T, files ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i+1 < len(files); i += 2 {
		if err := tw.WriteHeader(&tar.Header{Name: files[i], Mode: 0o644, Size: int64(len(files[i+1])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(files[i+1]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sshCommand runs line as agentctl ssh-command (OpenSSH's forced-command
// mode) as identity, with stdin, and returns the output and exit code.
func (h *harness) sshCommand(identity string, stdin []byte, line string) (string, int) {
	h.t.Helper()
	cmd := exec.Command(testenv.Binary(h.t, "./cmd/agentctl"), "--socket", h.socket, "ssh-command", "--identity", identity)
	cmd.Env = append(os.Environ(), "SSH_ORIGINAL_COMMAND="+strings.ReplaceAll(line, "$PROJECT", h.project))
	cmd.Stdin = bytes.NewReader(stdin)
	return testenv.Run(h.t, cmd)
}

// The repository's compose file, commit by commit: the second changes web
// only.
const (
	shipCommit1 = `
services:
  web:
    image: $REGISTRY/web:v1
    environment:
      GREETING: ${GREETING:-none}
    deploy: {update_config: {monitor: 1s}}
  side:
    image: $REGISTRY/web:v1
    deploy: {update_config: {monitor: 1s}}
`
	shipCommit2 = `
services:
  web:
    image: $REGISTRY/web:v1
    environment:
      GREETING: ${GREETING:-none}
      SHIPPED_BY: commit2
    deploy: {update_config: {monitor: 1s}}
  side:
    image: $REGISTRY/web:v1
    deploy: {update_config: {monitor: 1s}}
`
)

// TestShipOverSSHCommand is the CI job's way, through agentctl
// ssh-command: a tar on standard input carries the compose file and, as
// request.env, the request's variables. A new commit's file that changes
// one service recreates that service only (where the shipped files are
// written is no part of a container's config: the database and the proxy
// are not restarted by a change to web); a dry run of the live file has
// nothing to change; an identity without ship_compose is refused with 4.
func TestShipOverSSHCommand(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	reg := testenv.StartRegistry(t)
	h := newHarness(t, "services: {}\n", options{
		reg:     reg,
		project: fmt.Sprintf("    allowed_images: [%s/*]\n    request_variables: [GREETING]\n", reg.Addr),
		extra: fmt.Sprintf("identities:\n  - name: ci-ship\n    local_users: [%[1]s]\n    projects: [$PROJECT]\n    verbs: [deploy, history]\n    ship_compose: true\n"+
			"  - name: ci-noship\n    local_users: [%[1]s]\n    projects: [$PROJECT]\n    verbs: [deploy]\n", me.Username),
	})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.start()
	file := func(c string) string { return strings.ReplaceAll(c, "$REGISTRY", reg.Addr) }

	out, code := h.sshCommand("ci-ship", tarball(t, "compose.yaml", file(shipCommit1), "request.env", "GREETING=hello\n"),
		"deploy $PROJECT --compose-file - --env-file - --source commit1")
	if code != 0 {
		t.Fatalf("commit 1: exit %d\n%s\n%s", code, out, h.agentLog)
	}
	web, side := h.project+"-web-1", h.project+"-side-1"
	if got := h.env(web)["GREETING"]; got != "hello" {
		t.Errorf("commit 1: web's GREETING is %q, want the request.env's hello", got)
	}
	before := h.ids()

	out, code = h.sshCommand("ci-ship", tarball(t, "compose.yaml", file(shipCommit2), "request.env", "GREETING=hello\n"),
		"deploy $PROJECT --compose-file - --env-file - --source commit2")
	if code != 0 {
		t.Fatalf("commit 2: exit %d\n%s", code, out)
	}
	after := h.ids()
	if after[side] != before[side] || !strings.Contains(out, "service side: unchanged") {
		t.Errorf("commit 2 changes web only, and side was recreated (%.12s -> %.12s):\n%s", before[side], after[side], out)
	}
	if after[web] == before[web] || h.env(web)["SHIPPED_BY"] != "commit2" {
		t.Errorf("commit 2: web not recreated with SHIPPED_BY=commit2 (%v):\n%s", h.env(web), out)
	}
	if hist := h.history(); len(hist) != 2 || hist[0].Source != "commit2" || hist[0].Shipped == nil || hist[0].Shipped.Files["compose.yaml"] != file(shipCommit2) {
		t.Errorf("history: %+v", hist)
	}

	// The live file again, as a dry run: nothing to change.
	out, code = h.sshCommand("ci-ship", tarball(t, "compose.yaml", file(shipCommit2), "request.env", "GREETING=hello\n"),
		"deploy $PROJECT --compose-file - --env-file - --dry-run")
	if code != 0 || !strings.Contains(out, "nothing to change") {
		t.Errorf("a dry run of the live file: exit %d\n%s", code, out)
	}
	h.sameIDs(after, "the dry run")

	out, code = h.sshCommand("ci-noship", tarball(t, "compose.yaml", file(shipCommit1)), "deploy $PROJECT --compose-file -")
	if code != 4 || !strings.Contains(out, "identity ci-noship may not ship a compose file (ship_compose)") {
		t.Errorf("without ship_compose: exit %d\n%s", code, out)
	}
	h.sameIDs(after, "a refused ship")
}
