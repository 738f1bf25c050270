package testenv

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWaitSocket: a listening socket is ready; a process that exits first
// is ErrExitedEarly with its result; a socket nobody opens is not ready
// after the wait, and the wait is about what was asked.
func TestWaitSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "ready.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := WaitSocket(sock, 5*time.Second, nil); err != nil {
		t.Errorf("listening socket: %v", err)
	}

	exited := make(chan error, 1)
	exited <- errors.New("exit status 2")
	err = WaitSocket(filepath.Join(dir, "none.sock"), 5*time.Second, exited)
	if !errors.Is(err, ErrExitedEarly) || !strings.Contains(err.Error(), "exit status 2") {
		t.Errorf("exited process: %v, want ErrExitedEarly with its exit", err)
	}

	start := time.Now()
	err = WaitSocket(filepath.Join(dir, "none.sock"), 200*time.Millisecond, make(chan error))
	took := time.Since(start)
	if err == nil || errors.Is(err, ErrExitedEarly) || !strings.Contains(err.Error(), "not ready after 200ms") {
		t.Errorf("no socket: %v, want not ready after 200ms", err)
	}
	if took < 200*time.Millisecond || took > 10*time.Second {
		t.Errorf("no socket: gave up after %s, want about 200ms", took)
	}
}

// TestRun: the combined output and the exit code, 0 or not.
func TestRun(t *testing.T) {
	out, code := Run(t, exec.Command("sh", "-c", "echo out; echo err >&2; exit 3"))
	if out != "out\nerr\n" || code != 3 {
		t.Errorf("got %q, exit %d; want out and err, exit 3", out, code)
	}
	if out, code := Run(t, exec.Command("sh", "-c", "echo ok")); out != "ok\n" || code != 0 {
		t.Errorf("got %q, exit %d; want ok, exit 0", out, code)
	}
}
