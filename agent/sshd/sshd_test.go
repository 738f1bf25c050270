package sshd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
	"golang.org/x/crypto/ssh"
)

// call is one Runner.Run the fake saw.
type call struct {
	principal auth.Principal
	args      []string
	stdin     string
}

// fakeRunner records its calls, writes a line to stdout and one to
// stderr, and returns the code a project named NAME-exitN asks for (0
// otherwise). It reads stdin when the command has --env-file. A project
// named NAME-block, after its lines, reports on started and blocks until
// the test sends on release (or its context ends: then it returns 1).
type fakeRunner struct {
	mu      sync.Mutex
	calls   []call
	started chan call
	release chan struct{}
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{started: make(chan call, 16), release: make(chan struct{})}
}

func (f *fakeRunner) Run(ctx context.Context, p auth.Principal, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := call{principal: p, args: args}
	if slices.Contains(args, "--env-file") {
		in, _ := io.ReadAll(stdin)
		c.stdin = string(in)
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	fmt.Fprintf(stdout, "progress: %s\n", strings.Join(args, " "))
	fmt.Fprintf(stderr, "note: running as %s\n", p.Identity)
	project := ""
	if len(args) > 1 {
		project = args[1]
	}
	if strings.HasSuffix(project, "-block") {
		f.started <- c
		select {
		case <-f.release:
		case <-ctx.Done():
			return 1
		}
	}
	if _, n, ok := strings.Cut(project, "-exit"); ok {
		code, _ := strconv.Atoi(n)
		return code
	}
	return 0
}

func (f *fakeRunner) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakeRunner) last(t *testing.T) call {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		t.Fatal("the Runner was not called")
	}
	return f.calls[len(f.calls)-1]
}

// logBuffer collects the server's log.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the log lines that contain every one of subs.
func (l *logBuffer) lines(subs ...string) []string {
	var out []string
	for line := range strings.Lines(l.String()) {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

type testServer struct {
	port       int
	addr       string
	hostKey    ssh.PublicKey
	knownHosts string
	runner     *fakeRunner
	logs       *logBuffer
	stop       context.CancelFunc
	served     chan struct{} // closed when Serve has returned
	serveErr   error
}

func testConfig() config.SSH {
	return config.SSH{MaxConnections: 16, MaxAuthTries: 6, HandshakeTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second, MaxCommandBytes: 4096}
}

// startServer serves on 127.0.0.1 with a fresh host key and a fake
// Runner until the test ends.
func startServer(t *testing.T, cfg config.SSH, ids ...config.Identity) *testServer {
	t.Helper()
	return startServerWith(t, cfg, nil, ids...)
}

// startServerWith is startServer with runner in place of the fake one
// (nil: the fake).
func startServerWith(t *testing.T, cfg config.SSH, runner Runner, ids ...config.Identity) *testServer {
	t.Helper()
	dir := t.TempDir()
	signer, err := LoadOrCreateHostKey(filepath.Join(dir, "host_key"))
	if err != nil {
		t.Fatal(err)
	}
	identities, err := auth.New(ids)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{
		port:       ln.Addr().(*net.TCPAddr).Port,
		addr:       ln.Addr().String(),
		hostKey:    signer.PublicKey(),
		knownHosts: filepath.Join(dir, "known_hosts"),
		runner:     newFakeRunner(),
		logs:       &logBuffer{},
		served:     make(chan struct{}),
	}
	line := KnownHostsLine(signer.PublicKey(), "127.0.0.1", ts.port)
	if err := os.WriteFile(ts.knownHosts, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if runner == nil {
		runner = ts.runner
	}
	srv := &Server{
		Config:     cfg,
		Identities: identities,
		Runner:     runner,
		Signer:     signer,
		Log:        slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.stop = cancel
	go func() {
		defer close(ts.served)
		ts.serveErr = srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ts.served:
			if ts.serveErr != nil {
				t.Errorf("Serve: %v", ts.serveErr)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return 10s after its context ended")
		}
		if t.Failed() {
			lines := ts.logs.lines()
			t.Logf("server log (last 60 lines):\n%s", strings.Join(lines[max(0, len(lines)-60):], ""))
		}
	})
	return ts
}

// clientKey is an ed25519 key made by ssh-keygen.
type clientKey struct {
	path        string // the private key; the public one is path.pub
	authorized  string // the authorized_keys line
	fingerprint string
}

func newKey(t *testing.T, name string) clientKey {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return clientKey{path: path, authorized: strings.TrimSpace(string(pub)), fingerprint: ssh.FingerprintSHA256(key)}
}

func identity(name string, keys ...string) config.Identity {
	return config.Identity{Name: name, SSHKeys: keys, Projects: []string{"*"}, Verbs: []string{"*"}}
}

// clientEnv is the environment of the OpenSSH client: no agent and no
// display unless a test adds them.
func clientEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "SSH_AUTH_SOCK=") || strings.HasPrefix(kv, "DISPLAY=")
	})
}

// clientOptions are the options CI uses: the host key pinned, one key,
// no prompts. key may be "" when opts name the keys.
func (ts *testServer) clientOptions(key string, opts ...string) []string {
	args := []string{"-F", "/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + ts.knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=10"}
	if key != "" {
		args = append(args, "-o", "IdentityFile="+key)
	}
	return append(args, opts...)
}

// command is `ssh -p PORT OPTIONS deploy@127.0.0.1 REMOTE...`, killed if
// it outlives the test or 30s.
func (ts *testServer) command(t *testing.T, key string, opts []string, remote ...string) *exec.Cmd {
	t.Helper()
	args := append([]string{"-p", strconv.Itoa(ts.port)}, ts.clientOptions(key, opts...)...)
	args = append(append(args, "deploy@127.0.0.1"), remote...)
	return clientCommand(t, "ssh", args...)
}

func clientCommand(t *testing.T, name string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = clientEnv()
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs cmd to its end with stdin and returns its exit status and
// output.
func run(t *testing.T, cmd *exec.Cmd, stdin string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		res.code = exit.ExitCode()
	default:
		t.Fatalf("%s: %v\nstderr: %s", cmd, err, res.stderr)
	}
	return res
}

// process is a started command.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when it has exited
	err    error         // what Wait returned
}

// start starts cmd; it is killed when the test ends.
func start(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		defer close(p.exited)
		p.err = cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// wait returns what Wait returned.
func (p *process) wait() error {
	<-p.exited
	return p.err
}

// eventually calls try every 50ms until it reports true; it fails the
// test after 10s.
func eventually(t *testing.T, what string, try func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !try() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("%s: still not after 10s", what)
		}
	}
}

// pause waits d, or fails the test if it ends first.
func pause(t *testing.T, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.Context().Done():
		t.Fatal("test ended")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestExecRunsTheCommand(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	ts := startServer(t, testConfig(), identity("ci", ci.authorized))

	for _, tc := range []struct {
		project string
		code    int
	}{{"shop", 0}, {"shop-exit2", 2}, {"shop-exit3", 3}} {
		t.Run("exit "+strconv.Itoa(tc.code), func(t *testing.T) {
			// OpenSSH joins its arguments with spaces: the client quotes.
			cmd := ts.command(t, ci.path, []string{"-o", "SetEnv=BERTH_TEST=1"},
				"deploy", tc.project, "--image", "web=registry/web@sha256:abc", "--env-file", "-", "--message", "'two words'")
			env := "DATABASE_URL=postgres://db/shop\nREGISTRY_PASSWORD=s3cret\n"
			res := run(t, cmd, env)
			if res.code != tc.code {
				t.Errorf("exit status %d, want %d; stderr:\n%s", res.code, tc.code, res.stderr)
			}
			if want := "progress: deploy " + tc.project; !strings.Contains(res.stdout, want) {
				t.Errorf("stdout %q, want %q", res.stdout, want)
			}
			if want := "note: running as ci"; !strings.Contains(res.stderr, want) {
				t.Errorf("stderr %q, want %q", res.stderr, want)
			}
			c := ts.runner.last(t)
			wantArgs := []string{"deploy", tc.project, "--image", "web=registry/web@sha256:abc", "--env-file", "-", "--message", "two words"}
			if !slices.Equal(c.args, wantArgs) {
				t.Errorf("args %q, want %q", c.args, wantArgs)
			}
			p := c.principal
			if p.Identity != "ci" || p.Method != "ssh" || p.Detail != ci.fingerprint || !strings.HasPrefix(p.Remote, "127.0.0.1:") {
				t.Errorf("principal %+v, want ci (ssh) with %s from 127.0.0.1", p, ci.fingerprint)
			}
			if c.stdin != env {
				t.Errorf("stdin %q, want %q", c.stdin, env)
			}
			audit := ts.logs.lines("msg=\"ssh request\"", "identity=ci", "verb=deploy", "project="+tc.project, "exit_status="+strconv.Itoa(tc.code))
			if len(audit) != 1 || !strings.Contains(audit[0], "fingerprint="+ci.fingerprint) || !strings.Contains(audit[0], "remote=127.0.0.1:") || !strings.Contains(audit[0], "duration=") {
				t.Errorf("audit lines %q, want one with identity, fingerprint, remote, verb, project, exit status and duration", audit)
			}
		})
	}

	t.Run("output streams live", func(t *testing.T) {
		cmd := ts.command(t, ci.path, nil, "deploy", "shop-block")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		ssh := start(t, cmd)
		line := make(chan string, 1)
		go func() {
			l, _ := bufio.NewReader(stdout).ReadString('\n')
			line <- l
		}()
		// The Runner has written its line and now waits for the test:
		// the line must reach ssh's stdout before the command ends.
		select {
		case l := <-line:
			if l != "progress: deploy shop-block\n" {
				t.Errorf("first line %q", l)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no output from a command still running: output is not streamed")
		}
		ts.runner.release <- struct{}{}
		if err := ssh.wait(); err != nil {
			t.Errorf("ssh: %v", err)
		}
	})
}

func TestKeyNotAllowed(t *testing.T) {
	t.Parallel()
	ci, stranger, office, local := newKey(t, "ci"), newKey(t, "stranger"), newKey(t, "office"), newKey(t, "local")
	ts := startServer(t, testConfig(),
		identity("ci", ci.authorized),
		identity("office", `from="10.0.0.0/8,192.168.0.0/16" `+office.authorized),
		identity("local", `from="127.0.0.0/8,!10.1.2.3" `+local.authorized))

	for _, tc := range []struct {
		name   string
		key    clientKey
		remote []string
		code   int
		stderr string
	}{
		{"unknown key", stranger, []string{"status"}, 4, "agentd: key " + stranger.fingerprint + " is not allowed here"},
		{"unknown key asking for a shell", stranger, nil, 4, "agentd: key " + stranger.fingerprint + " is not allowed here"},
		{"from= excludes 127.0.0.1", office, []string{"status"}, 4, "agentd: key " + office.fingerprint + " (identity office) is not allowed from 127.0.0.1"},
		{"from= includes 127.0.0.1", local, []string{"status"}, 0, "note: running as local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := ts.runner.count()
			res := run(t, ts.command(t, tc.key.path, nil, tc.remote...), "")
			if res.code != tc.code || !strings.Contains(res.stderr, tc.stderr) {
				t.Errorf("exit status %d, stderr %q; want %d and %q", res.code, res.stderr, tc.code, tc.stderr)
			}
			if ran := ts.runner.count() > before; ran != (tc.code == 0) {
				t.Errorf("the Runner ran: %v", ran)
			}
		})
	}
	if got := ts.logs.lines("msg=\"ssh request\"", "fingerprint="+stranger.fingerprint, "exit_status=4", "refused="); len(got) != 2 {
		t.Errorf("audit lines of the unknown key: %q, want 2 with the refusal", got)
	}
}

func TestRefusedRequests(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	ts := startServer(t, testConfig(), identity("ci", ci.authorized))

	// runs checks that a request ran nothing, or exactly one command.
	runs := func(t *testing.T, want int, do func()) {
		t.Helper()
		before := ts.runner.count()
		do()
		if got := ts.runner.count() - before; got != want {
			t.Errorf("the Runner ran %d times, want %d", got, want)
		}
	}
	// logged waits for a log line: some are written after the client
	// has given up.
	logged := func(t *testing.T, subs ...string) {
		t.Helper()
		eventually(t, fmt.Sprintf("a log line with %q", subs), func() bool { return len(ts.logs.lines(subs...)) > 0 })
	}

	// OpenSSH's -tt gives up when the pty is refused, but it has sent the
	// command already: it must not run.
	t.Run("shell with a pty", func(t *testing.T) {
		runs(t, 0, func() {
			res := run(t, ts.command(t, ci.path, []string{"-tt"}), "")
			if res.code != 255 || !strings.Contains(res.stderr, "PTY allocation request failed") {
				t.Errorf("exit status %d, output %q %q", res.code, res.stdout, res.stderr)
			}
		})
		logged(t, "type=pty-req", "reason=\"agentd gives no terminal\"")
		logged(t, "msg=\"ssh request\"", "request=shell", "exit_status=2")
	})
	t.Run("command with a pty", func(t *testing.T) {
		runs(t, 0, func() {
			res := run(t, ts.command(t, ci.path, []string{"-tt"}, "status", "shop-pty"), "")
			if res.code != 255 || !strings.Contains(res.stderr, "PTY allocation request failed") {
				t.Errorf("exit status %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
			}
			// The server has seen the command, which it refused.
			logged(t, "msg=\"ssh request\"", "request=exec", "project=shop-pty", "exit_status=2", "no terminal")
		})
	})
	t.Run("command with -t but no terminal", func(t *testing.T) {
		// Without a local terminal -t asks for no pty: the command runs.
		runs(t, 1, func() {
			res := run(t, ts.command(t, ci.path, []string{"-t"}, "status"), "")
			if res.code != 0 || !strings.Contains(res.stdout, "progress: status") {
				t.Errorf("exit status %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
			}
		})
	})
	t.Run("shell without a pty", func(t *testing.T) {
		runs(t, 0, func() {
			res := run(t, ts.command(t, ci.path, nil), "")
			if res.code != 2 || !strings.Contains(res.stderr, "agentd runs commands, not shells") {
				t.Errorf("exit status %d, stderr %q", res.code, res.stderr)
			}
		})
	})
	t.Run("empty command", func(t *testing.T) {
		runs(t, 0, func() {
			res := run(t, ts.command(t, ci.path, nil, "  "), "")
			if res.code != 2 || !strings.Contains(res.stderr, "agentd: empty command") {
				t.Errorf("exit status %d, stderr %q", res.code, res.stderr)
			}
		})
	})
	t.Run("shell syntax", func(t *testing.T) {
		runs(t, 0, func() {
			res := run(t, ts.command(t, ci.path, nil, "status; reboot"), "")
			if res.code != 2 || !strings.Contains(res.stderr, "unquoted ';'") {
				t.Errorf("exit status %d, stderr %q", res.code, res.stderr)
			}
		})
	})
	t.Run("subsystem", func(t *testing.T) {
		runs(t, 0, func() {
			res := run(t, ts.command(t, ci.path, []string{"-s"}, "sftp"), "")
			if res.code != 2 || !strings.Contains(res.stderr, `no subsystem "sftp"`) {
				t.Errorf("exit status %d, stderr %q", res.code, res.stderr)
			}
		})
	})
	t.Run("sftp", func(t *testing.T) {
		runs(t, 0, func() {
			args := append([]string{"-P", strconv.Itoa(ts.port)}, ts.clientOptions(ci.path)...)
			args = append(args, "-b", "-", "deploy@127.0.0.1")
			res := run(t, clientCommand(t, "sftp", args...), "ls\n")
			if res.code == 0 || !strings.Contains(res.stderr, `no subsystem "sftp"`) {
				t.Errorf("exit status %d, stderr %q", res.code, res.stderr)
			}
		})
	})
	t.Run("local forwarding", func(t *testing.T) {
		target, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer target.Close()
		reached := make(chan struct{}, 1)
		go func() {
			if c, err := target.Accept(); err == nil {
				c.Close()
				reached <- struct{}{}
			}
		}()
		local := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
		cmd := ts.command(t, ci.path, []string{"-N", "-o", "ExitOnForwardFailure=yes", "-L", local + ":" + target.Addr().String()})
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		ssh := start(t, cmd)
		var c net.Conn
		eventually(t, "ssh listens on "+local, func() bool {
			select {
			case <-ssh.exited:
				t.Fatalf("ssh exited: %v\n%s", ssh.err, stderr.String())
			default:
			}
			c, err = net.Dial("tcp", local)
			return err == nil
		})
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
			t.Errorf("read through the forward: %d bytes, %v; want EOF", n, err)
		}
		select {
		case <-reached:
			t.Error("the forward reached its target")
		default:
		}
		logged(t, "msg=\"ssh channel refused\"", "type=direct-tcpip", "identity=ci")
	})
	t.Run("remote forwarding", func(t *testing.T) {
		port := freePort(t)
		res := run(t, ts.command(t, ci.path, []string{"-N", "-o", "ExitOnForwardFailure=yes", "-R", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", port, freePort(t))}), "")
		if res.code == 0 || !strings.Contains(res.stderr, "remote port forwarding failed") {
			t.Errorf("exit status %d, stderr %q", res.code, res.stderr)
		}
		if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			c.Close()
			t.Errorf("something listens on the forwarded port %d", port)
		}
		logged(t, "msg=\"ssh global request refused\"", "type=tcpip-forward")
	})
	t.Run("agent forwarding", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "agent.sock")
		agent := exec.Command("ssh-agent", "-D", "-a", sock)
		start(t, agent)
		eventually(t, "ssh-agent listens", func() bool {
			c, err := net.Dial("unix", sock)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		add := exec.Command("ssh-add", ci.path)
		add.Env = append(clientEnv(), "SSH_AUTH_SOCK="+sock)
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v\n%s", err, out)
		}
		runs(t, 1, func() {
			cmd := ts.command(t, ci.path, []string{"-A"}, "status")
			cmd.Env = append(cmd.Env, "SSH_AUTH_SOCK="+sock)
			if res := run(t, cmd, ""); res.code != 0 {
				t.Errorf("exit status %d, stderr %q", res.code, res.stderr)
			}
		})
		logged(t, "msg=\"ssh request refused\"", "type=auth-agent-req@openssh.com", "identity=ci")
	})
	t.Run("X11 forwarding", func(t *testing.T) {
		runs(t, 1, func() {
			cmd := ts.command(t, ci.path, []string{"-o", "ForwardX11=yes", "-o", "XAuthLocation=/nonexistent"}, "status")
			cmd.Env = append(cmd.Env, "DISPLAY=127.0.0.1:99")
			if res := run(t, cmd, ""); res.code != 0 {
				t.Errorf("exit status %d, stderr %q", res.code, res.stderr)
			}
		})
		logged(t, "msg=\"ssh request refused\"", "type=x11-req")
	})
}

// A client may offer key A, which the callback accepts, without proving
// it has A, then authenticate with B: it is B, whatever the callback saw
// for A.
func TestOfferedKeyIsNotTheAuthenticatedOne(t *testing.T) {
	t.Parallel()
	a, b := newKey(t, "a"), newKey(t, "b")
	if err := os.Remove(a.path); err != nil { // only a.pub is left
		t.Fatal(err)
	}
	ts := startServer(t, testConfig(), identity("ci-a", a.authorized), identity("ci-b", b.authorized))

	res := run(t, ts.command(t, "", []string{"-o", "IdentityFile=" + a.path, "-o", "IdentityFile=" + b.path}, "status"), "")
	if res.code != 0 {
		t.Fatalf("exit status %d, stderr %q", res.code, res.stderr)
	}
	if len(ts.logs.lines("msg=\"ssh key offered\"", "fingerprint="+a.fingerprint, "identity=ci-a")) == 0 {
		t.Fatal("the client did not offer key A first: the test proves nothing")
	}
	if p := ts.runner.last(t).principal; p.Identity != "ci-b" || p.Detail != b.fingerprint {
		t.Errorf("principal %+v, want ci-b with %s", p, b.fingerprint)
	}
}

func TestIdleConnectionsDoNotKeepCIOut(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	cfg := testConfig()
	cfg.MaxConnections, cfg.HandshakeTimeout = 300, 2*time.Second
	ts := startServer(t, cfg, identity("ci", ci.authorized))

	began := time.Now()
	idle := make([]net.Conn, 200)
	for i := range idle {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle[i] = c
	}
	res := run(t, ts.command(t, ci.path, nil, "deploy", "shop"), "")
	if res.code != 0 {
		t.Errorf("exit status %d with 200 idle connections open; stderr %q", res.code, res.stderr)
	}
	if took := time.Since(began); took >= cfg.HandshakeTimeout {
		t.Fatalf("the command took %v, past the handshake deadline: it proves nothing", took)
	}

	// Each idle connection sees the banner, then EOF at the deadline.
	limit := began.Add(cfg.HandshakeTimeout + time.Second)
	for i, c := range idle {
		c.SetReadDeadline(limit)
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("idle connection %d: %v; want EOF by the handshake deadline", i, err)
		}
	}
	if took := time.Since(began); took < cfg.HandshakeTimeout-100*time.Millisecond {
		t.Errorf("idle connections closed after %v, before the handshake deadline", took)
	}
	eventually(t, "200 refused handshakes logged", func() bool {
		return len(ts.logs.lines("msg=\"ssh connection refused\"", "reason=\"handshake: ")) == 200
	})
}

// TestMaxConnections: at the cap, a new connection takes the place of
// the one longest in its handshake, so silent connections cannot keep CI
// out; when every slot is held by an authenticated connection, a new one is
// closed at once, before any byte.
func TestMaxConnections(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	cfg := testConfig()
	cfg.MaxConnections, cfg.HandshakeTimeout = 2, 20*time.Second
	ts := startServer(t, cfg, identity("ci", ci.authorized))

	// Two silent connections hold both slots: the server sent its banner on each.
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		banner, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(banner, "SSH-2.0-") {
			t.Fatalf("banner %q, %v", banner, err)
		}
		held = append(held, c)
	}
	began := time.Now()
	if res := run(t, ts.command(t, ci.path, nil, "status"), ""); res.code != 0 {
		t.Fatalf("a command with both slots held by silent connections: exit %d\n%s", res.code, res.stderr)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("the command waited %v for a slot", took)
	}
	if n, err := held[0].Read(make([]byte, 64)); n != 0 || err == nil {
		t.Errorf("the oldest silent connection was not closed to make room: %d bytes, %v", n, err)
	}

	// Both slots held by authenticated connections: a new one is refused.
	for _, c := range held {
		c.Close()
	}
	for range 2 {
		hold := ts.command(t, ci.path, []string{"-N"})
		if err := hold.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hold.Process.Kill(); hold.Wait() })
	}
	eventually(t, "two authenticated connections", func() bool {
		return len(ts.logs.lines("msg=\"ssh key offered\"")) >= 3
	})
	eventually(t, "a connection over the cap is closed at once", func() bool {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(make([]byte, 64))
		return n == 0 && errors.Is(err, io.EOF)
	})
	if res := run(t, ts.command(t, ci.path, nil, "status"), ""); res.code != 255 {
		t.Errorf("over the cap: ssh exit status %d, want 255", res.code)
	}
	if len(ts.logs.lines("msg=\"ssh connection refused\"", "reason=\"max_connections reached\"")) == 0 {
		t.Error("the refusal was not logged")
	}
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	cfg := testConfig()
	cfg.IdleTimeout = time.Second
	ts := startServer(t, cfg, identity("ci", ci.authorized))

	t.Run("an idle connection is closed", func(t *testing.T) {
		began := time.Now()
		res := run(t, ts.command(t, ci.path, []string{"-N"}), "")
		if took := time.Since(began); res.code != 255 || took < cfg.IdleTimeout || took > cfg.IdleTimeout+3*time.Second {
			t.Errorf("ssh -N ended after %v with %d (%q); want 255 after about %v", took, res.code, res.stderr, cfg.IdleTimeout)
		}
	})
	t.Run("a quiet command is not cut", func(t *testing.T) {
		cmd := ts.command(t, ci.path, nil, "deploy", "shop-block")
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		ssh := start(t, cmd)
		<-ts.runner.started
		pause(t, 2*cfg.IdleTimeout+500*time.Millisecond)
		ts.runner.release <- struct{}{}
		if err := ssh.wait(); err != nil {
			t.Errorf("ssh: %v", err)
		}
		if !strings.Contains(stdout.String(), "progress: deploy shop-block") {
			t.Errorf("stdout %q", stdout.String())
		}
	})
}

func TestServeWaitsForTheCommandInFlight(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	ts := startServer(t, testConfig(), identity("ci", ci.authorized))

	handshaking, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer handshaking.Close()
	cmd := ts.command(t, ci.path, nil, "deploy", "shop-block")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	ssh := start(t, cmd)
	<-ts.runner.started

	ts.stop()
	eventually(t, "the listener is closed", func() bool {
		c, err := net.Dial("tcp", ts.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	handshaking.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, handshaking); err != nil {
		t.Errorf("a connection still in its handshake: %v; want it closed at shutdown", err)
	}
	pause(t, 200*time.Millisecond)
	select {
	case <-ts.served:
		t.Fatal("Serve returned with a deploy in flight")
	default:
	}

	ts.runner.release <- struct{}{}
	if err := ssh.wait(); err != nil {
		t.Errorf("ssh: %v", err)
	}
	if !strings.Contains(stdout.String(), "progress: deploy shop-block") {
		t.Errorf("stdout %q", stdout.String())
	}
	select {
	case <-ts.served:
		if ts.serveErr != nil {
			t.Errorf("Serve: %v", ts.serveErr)
		}
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return once the deploy was done")
	}
}

// dial connects with the Go SSH client, which, unlike OpenSSH's -tt,
// carries on when a pty is refused.
func (ts *testServer) dial(t *testing.T, key clientKey) *ssh.Client {
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
		User:            "deploy",
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

func TestCommandAfterARefusedPty(t *testing.T) {
	t.Parallel()
	ci := newKey(t, "ci")
	ts := startServer(t, testConfig(), identity("ci", ci.authorized))
	client := ts.dial(t, ci)

	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err == nil {
		t.Error("a pty was granted")
	}
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	err = sess.Run("deploy shop")
	var exit *ssh.ExitError
	if !errors.As(err, &exit) || exit.ExitStatus() != 2 || !strings.Contains(stderr.String(), "agentd gives no terminal") {
		t.Errorf("after a refused pty: %v, stderr %q; want exit status 2 and a message", err, stderr.String())
	}
	if n := ts.runner.count(); n != 0 {
		t.Errorf("the Runner ran %d times", n)
	}

	// Another session on the same connection, without a pty, runs.
	sess2, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess2.Close()
	out, err := sess2.Output("status")
	if err != nil || string(out) != "progress: status\n" {
		t.Errorf("second session: %q, %v", out, err)
	}
}

func TestRefusedKeyDoesNotHoldAConnection(t *testing.T) {
	t.Parallel()
	stranger := newKey(t, "stranger")
	cfg := testConfig()
	cfg.HandshakeTimeout, cfg.IdleTimeout = time.Second, 30*time.Second
	ts := startServer(t, cfg)

	// Any key authenticates (to be refused with 4): it must not get to
	// sit on a slot for the idle timeout, nor keep it with keepalives.
	began := time.Now()
	res := run(t, ts.command(t, stranger.path, []string{"-N", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=30"}), "")
	if took := time.Since(began); res.code != 255 || took > cfg.HandshakeTimeout+3*time.Second {
		t.Errorf("ssh -N with a refused key ended after %v with %d (%q); want 255 after about %v", took, res.code, res.stderr, cfg.HandshakeTimeout)
	}
}
