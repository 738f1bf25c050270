package testenv

import (
	"errors"
	"net"
	"os"
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

// TestStartAndTerminate: the output lands in the buffer; a process that
// stops on SIGTERM is stopped without an error; one that ignores it is
// killed after the wait, with an error saying so.
func TestStartAndTerminate(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", `echo started; touch "$1"; exec sleep 30`, "sh", filepath.Join(dir, "sleep"))
	out, waited := Start(t, cmd)
	waitFile(t, filepath.Join(dir, "sleep"))
	start := time.Now()
	if err := Terminate(cmd.Process, waited, 10*time.Second); err != nil {
		t.Errorf("sleep on SIGTERM: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("sleep took %s to stop on SIGTERM", took)
	}
	if got := out.String(); got != "started\n" {
		t.Errorf("output %q, want started", got)
	}

	stubborn := exec.Command("sh", "-c", `trap "" TERM; touch "$1"; while :; do sleep 0.05; done`, "sh", filepath.Join(dir, "stubborn"))
	_, waited = Start(t, stubborn)
	waitFile(t, filepath.Join(dir, "stubborn"))
	err := Terminate(stubborn.Process, waited, 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not stop within 200ms of SIGTERM") {
		t.Errorf("a process that ignores SIGTERM: %v, want did not stop within 200ms", err)
	}
	if stubborn.ProcessState == nil || stubborn.ProcessState.Exited() {
		t.Errorf("state %v, want killed", stubborn.ProcessState)
	}
}

// waitFile waits until path exists (a started process's sign that it is
// ready).
func waitFile(t *testing.T, path string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s did not appear within 10s", path)
		}
	}
}
