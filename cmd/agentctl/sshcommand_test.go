package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
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

// fakeAgentd serves POST /v1/command on a unix socket: it keeps each
// request and answers exit 0.
func fakeAgentd(t *testing.T) (socket string, got chan api.CommandRequest) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "agentd.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	got = make(chan api.CommandRequest, 10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.CommandRequest
		if r.URL.Path != api.PathCommand || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, `{"error": "bad", "exit_code": 2}`, http.StatusBadRequest)
			return
		}
		got <- req
		code := 0
		json.NewEncoder(w).Encode(api.Frame{ExitCode: &code})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket, got
}

// Standard input goes to agentd byte for byte when the command reads it
// (--env-file -, --compose-file -: a tar archive, binary), and not at all
// when it does not.
func TestSSHCommandPassesStandardInput(t *testing.T) {
	socket, got := fakeAgentd(t)
	archive := []byte("compose.yaml\x00\x00\x00\xff\xfe binary \r\n tar bytes\x00")
	for _, tc := range []struct {
		command string
		want    []byte
	}{
		{"deploy shop --compose-file - --source 3f2c1a0", archive},
		{"deploy shop --compose-file=- --env-file=-", archive},
		{"deploy shop --env-file -", archive},
		{"deploy shop --image web=reg/web:2", nil},
		{"status shop", nil},
		{"deploy shop --compose-file compose.yaml", nil}, // agentd refuses it
	} {
		t.Setenv("SSH_ORIGINAL_COMMAND", tc.command)
		var stdout, stderr bytes.Buffer
		code := run(t.Context(), []string{"--socket", socket, "ssh-command", "--identity", "ci"}, bytes.NewReader(archive), &stdout, &stderr)
		if code != 0 {
			t.Fatalf("%s: exit %d, %s", tc.command, code, stderr.String())
		}
		req := <-got
		if !bytes.Equal(req.Stdin, tc.want) {
			t.Errorf("%s: agentd got standard input %q, want %q", tc.command, req.Stdin, tc.want)
		}
	}

	t.Setenv("SSH_ORIGINAL_COMMAND", "deploy shop --compose-file -")
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"--socket", socket, "ssh-command", "--identity", "ci", "--max-stdin-bytes", "1000"}, bytes.NewReader(make([]byte, 1001)), &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "more than 1000 bytes on standard input (--max-stdin-bytes)") {
		t.Errorf("1001 bytes with --max-stdin-bytes 1000: exit %d, %q", code, stderr.String())
	}
	select {
	case req := <-got:
		t.Errorf("agentd was asked: %+v", req)
	default:
	}
}
