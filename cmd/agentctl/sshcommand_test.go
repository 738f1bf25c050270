package main

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Both refusals come before agentd is asked: the socket does not exist.
func TestSSHCommandRefusesBeforeAskingAgentd(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "none.sock")

	t.Run("a command line too long", func(t *testing.T) {
		t.Setenv("SSH_ORIGINAL_COMMAND", "status "+strings.Repeat("x", 250_000))
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), []string{"--socket", socket, "ssh-command", "--identity", "ci"}, strings.NewReader(""), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "the command is 250007 bytes long; at most 4096") || stderr.Len() > 512 {
			t.Errorf("exit %d, stderr (%d bytes) %.300q", code, stderr.Len(), stderr.String())
		}
	})
	t.Run("standard input never closed", func(t *testing.T) {
		t.Setenv("SSH_ORIGINAL_COMMAND", "deploy shop --env-file -")
		stdin, w := io.Pipe() // never written to, never closed
		defer w.Close()
		var stdout, stderr bytes.Buffer
		began := time.Now()
		code := run(t.Context(), []string{"--socket", socket, "ssh-command", "--identity", "ci", "--stdin-timeout", "300ms"}, stdin, &stdout, &stderr)
		took := time.Since(began)
		if code != 2 || !strings.Contains(stderr.String(), "standard input still open after 300ms") {
			t.Errorf("exit %d, stderr %q", code, stderr.String())
		}
		if took > 5*time.Second {
			t.Errorf("refused after %v, want about 300ms", took)
		}
	})
}
