package testenv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Start starts cmd with its stdout and stderr in the returned buffer, and
// returns with it the channel that gets cmd's Wait result when it exits.
// A command that does not start fails the test.
func Start(t testing.TB, cmd *exec.Cmd) (*bytes.Buffer, <-chan error) {
	t.Helper()
	out := &bytes.Buffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	return out, waited
}

// Terminate sends p SIGTERM and waits for waited (its Wait result); if p
// has not exited within, it kills p, waits for it and says so.
func Terminate(p *os.Process, waited <-chan error, within time.Duration) error {
	p.Signal(syscall.SIGTERM)
	select {
	case <-waited:
		return nil
	case <-time.After(within):
		p.Kill()
		<-waited
		return fmt.Errorf("did not stop within %s of SIGTERM", within)
	}
}

// ErrExitedEarly is WaitSocket's error when the process exited before its
// socket accepted a connection.
var ErrExitedEarly = errors.New("exited before it was ready")

// WaitSocket waits until the unix socket at path accepts connections,
// trying every 50ms for at most within. exited carries the Wait result of
// the process that serves it: when that comes first, WaitSocket returns
// ErrExitedEarly (with the result), the value taken from exited.
func WaitSocket(path string, within time.Duration, exited <-chan error) error {
	deadline := time.Now().Add(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("%w: %v", ErrExitedEarly, err)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", within)
		}
	}
}

// Run runs cmd and returns its combined output and exit code. A command
// that could not run at all fails the test.
func Run(t testing.TB, cmd *exec.Cmd) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("%s %s: %v", filepath.Base(cmd.Path), strings.Join(cmd.Args[1:], " "), err)
	return "", -1
}

// RunCtl runs agentctl (./cmd/agentctl, built once per test process)
// against the agentd listening on socket and returns its combined output
// and exit code.
func RunCtl(t testing.TB, socket string, args ...string) (string, int) {
	t.Helper()
	return Run(t, exec.Command(Binary(t, "./cmd/agentctl"), append([]string{"--socket", socket}, args...)...))
}

// RunCtlJSON runs agentctl as RunCtl does and decodes its output into v;
// a non-zero exit or output that is not v's JSON fails the test. It
// returns the output.
func RunCtlJSON(t testing.TB, socket string, v any, args ...string) string {
	t.Helper()
	out, code := RunCtl(t, socket, args...)
	if code != 0 {
		t.Fatalf("agentctl %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("agentctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}
