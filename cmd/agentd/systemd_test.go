package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types"
)

// notifySocket is a fake systemd notification socket: the unixgram socket
// NOTIFY_SOCKET names, recording every datagram sent to it.
type notifySocket struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	// Unix socket paths are at most 108 bytes: not under t.TempDir().
	dir, err := os.MkdirTemp("", "berth-sdn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &notifySocket{path: filepath.Join(dir, "notify"), msgs: make(chan string, 1024)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen on the notify socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// has reports whether the datagram msg holds the assignment want (e.g.
// "READY=1"); a STATUS= want matches a status line it begins (e.g.
// "STATUS=ready").
func has(msg, want string) bool {
	for line := range strings.SplitSeq(msg, "\n") {
		if line == want || (strings.HasPrefix(want, "STATUS=") && strings.HasPrefix(line, want)) {
			return true
		}
	}
	return false
}

// waitFor reads datagrams until one holds line and returns every datagram
// read, that one last. It fails the test after timeout.
func (n *notifySocket) waitFor(t *testing.T, line string, timeout time.Duration) []string {
	t.Helper()
	var seen []string
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case m := <-n.msgs:
			seen = append(seen, m)
			if has(m, line) {
				return seen
			}
		case <-deadline.C:
			t.Fatalf("no %q within %s; got %q", line, timeout, seen)
			return nil
		}
	}
}

// none reads datagrams for d and fails the test if one holds line. It
// returns what it read.
func (n *notifySocket) none(t *testing.T, line string, d time.Duration) []string {
	t.Helper()
	var seen []string
	end := time.NewTimer(d)
	defer end.Stop()
	for {
		select {
		case m := <-n.msgs:
			seen = append(seen, m)
			if has(m, line) {
				t.Errorf("%q arrived although it must not (after %q)", line, seen)
			}
		case <-end.C:
			return seen
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestWatchdogFeedsOnlyWhenTheCheckPasses(t *testing.T) {
	sock := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", sock.path)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	n := newNotifier(log)

	var broken atomic.Bool
	check := func(context.Context) error {
		if broken.Load() {
			return errors.New("engine unreachable: test")
		}
		return nil
	}
	const interval = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := startWatchdog(ctx, n, interval, check, "ready: test", log)

	sock.waitFor(t, "WATCHDOG=1", 2*time.Second)
	sock.waitFor(t, "WATCHDOG=1", 2*time.Second)

	broken.Store(true)
	sock.waitFor(t, "STATUS=engine unreachable: test", 2*time.Second)
	sock.none(t, "WATCHDOG=1", 5*interval)

	broken.Store(false)
	got := sock.waitFor(t, "WATCHDOG=1", 2*time.Second)
	if !has(got[len(got)-1], "WATCHDOG=1") {
		t.Fatalf("got %q", got)
	}
	sock.waitFor(t, "STATUS=ready: test", 2*time.Second)

	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("the watchdog did not stop with its context")
	}
	out := logs.String()
	if c := strings.Count(out, "health check failed"); c != 1 {
		t.Errorf("the failure is logged %d times, want once (rate-limited):\n%s", c, out)
	}
	if !strings.Contains(out, "health check passes again") {
		t.Errorf("the recovery is not logged:\n%s", out)
	}
}

func TestWithoutNotifySocketNothingHappens(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "1000000")
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	n := newNotifier(log)
	n.ready("ready")
	n.stopping("stopping")
	n.alive()
	called := false
	done := startWatchdog(t.Context(), n, watchdogInterval(log), func(context.Context) error { called = true; return nil }, "", log)
	select {
	case <-done:
	default:
		t.Fatal("a watchdog runs without NOTIFY_SOCKET")
	}
	if called || logs.String() != "" {
		t.Errorf("called=%v logs=%q", called, logs.String())
	}
}

func TestStoppingIsSentOnce(t *testing.T) {
	sock := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", sock.path)
	n := newNotifier(slog.New(slog.DiscardHandler))
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { n.stopping("stopping: test") })
	}
	wg.Wait()
	got := sock.waitFor(t, "STOPPING=1", time.Second)
	if !has(got[0], "STATUS=stopping: test") {
		t.Errorf("got %q", got)
	}
	sock.none(t, "STOPPING=1", 200*time.Millisecond)
}

type fakeEngine struct{ err error }

func (f fakeEngine) Ping(ctx context.Context) (types.Ping, error) {
	if f.err == context.DeadlineExceeded {
		<-ctx.Done() // a hung engine
		return types.Ping{}, ctx.Err()
	}
	return types.Ping{}, f.err
}

type fakeStore struct{ err error }

func (f fakeStore) Ping() error { return f.err }

func TestAgentHealth(t *testing.T) {
	for _, tc := range []struct {
		name   string
		engine error
		store  error
		want   string
	}{
		{"healthy", nil, nil, ""},
		{"engine down", errors.New("dial unix: no such file"), nil, "engine unreachable: dial unix"},
		{"engine hung", context.DeadlineExceeded, nil, "engine unreachable: context deadline exceeded"},
		{"store broken", nil, errors.New("database not open"), "store unreadable: database not open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := agentHealth(fakeEngine{tc.engine}, fakeStore{tc.store}, 50*time.Millisecond)(t.Context())
			if took := time.Since(start); took > time.Second {
				t.Errorf("the check took %s", took)
			}
			if tc.want == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q...", err, tc.want)
			}
		})
	}
	if got := checkTimeout(30 * time.Second); got != 5*time.Second {
		t.Errorf("checkTimeout(30s) = %s", got)
	}
	if got := checkTimeout(time.Second); got != 250*time.Millisecond {
		t.Errorf("checkTimeout(1s) = %s", got)
	}
}

func TestReadyStatus(t *testing.T) {
	doors := []door{{name: "ssh", addr: "[::]:2222"}, {name: "socket", addr: "/run/berth/agentd.sock"}}
	if got, want := readyStatus(3, doors, nil), "ready: 3 projects, ssh [::]:2222, socket /run/berth/agentd.sock"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := readyStatus(1, nil, errors.New("x")); !strings.Contains(got, "needing an operator") || !strings.HasSuffix(got, "1 project") {
		t.Errorf("got %q", got)
	}
}

// TestUnitFilesVerify runs systemd-analyze verify on the units as shipped,
// but for ExecStart's binary, which must exist: it is agentd built into a
// temp dir. systemd-analyze exits 0 on warnings (an unknown key, a value it
// cannot parse and ignores), so any output at all fails the test. verify
// does not look up User=, Group= or SupplementaryGroups=: that the berth
// user and the docker group exist is the package's business (packaging/).
func TestUnitFilesVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if testenv.Required() {
			t.Fatalf("systemd-analyze not found (CI or BERTH_REQUIRE_DOCKER is set: not skipping; apt-get install systemd)")
		}
		t.Skip("systemd-analyze not found (skipping; apt-get install systemd, or set BERTH_REQUIRE_DOCKER=1 to make this a failure)")
	}
	service, err := os.ReadFile("../../systemd/agentd.service")
	if err != nil {
		t.Fatal(err)
	}
	socket, err := os.ReadFile("../../systemd/agentd.socket")
	if err != nil {
		t.Fatal(err)
	}
	const execStart = "ExecStart=/usr/bin/agentd --config /etc/berth/agentd.yaml\n"
	if !bytes.Contains(service, []byte("\n"+execStart)) {
		t.Fatalf("agentd.service has no line %q", execStart)
	}
	for _, line := range []string{
		"Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "TimeoutStopSec=15min", "KillMode=mixed",
		"User=berth", "SupplementaryGroups=docker", "StateDirectory=berth", "RuntimeDirectory=berth",
		"CapabilityBoundingSet=", "NoNewPrivileges=yes", "ProtectSystem=strict",
	} {
		if !bytes.Contains(service, []byte("\n"+line+"\n")) {
			t.Errorf("agentd.service lacks %q", line)
		}
	}
	for _, line := range []string{"ListenStream=/run/berth/agentd.sock", "FileDescriptorName=" + controlFDName, "SocketMode=0660", "SocketGroup=berth"} {
		if !bytes.Contains(socket, []byte("\n"+line+"\n")) {
			t.Errorf("agentd.socket lacks %q", line)
		}
	}
	bin := testenv.Binary(t, "./cmd/agentd")
	built := bytes.Replace(service, []byte(execStart), []byte("ExecStart="+bin+" --config /etc/berth/agentd.yaml\n"), 1)

	for _, variant := range []struct {
		name    string
		service []byte
	}{
		{"as shipped", built},
		{"with Sockets=", bytes.Replace(built, []byte("\n#Sockets=agentd.socket\n"), []byte("\nSockets=agentd.socket\n"), 1)},
	} {
		t.Run(variant.name, func(t *testing.T) {
			if variant.name != "as shipped" && bytes.Equal(variant.service, built) {
				t.Fatal("agentd.service has no #Sockets=agentd.socket line to uncomment")
			}
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "agentd.service"), variant.service, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "agentd.socket"), socket, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.CommandContext(t.Context(), analyze, "verify", "--man=no", "./agentd.service", "./agentd.socket")
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
			}
		})
	}
}
