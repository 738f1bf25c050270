package testenv

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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
