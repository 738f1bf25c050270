package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
)

// commandOnly is a Deployer that serves only POST /v1/command: Run
// answers 2 for every command.
type commandOnly struct {
	Deployer
	ids *auth.Identities
}

func (c commandOnly) Identities() *auth.Identities { return c.ids }

func (c commandOnly) Run(_ context.Context, _ auth.Principal, _ []string, _ io.Reader, _, stderr io.Writer) int {
	io.WriteString(stderr, "agentd: refused\n")
	return api.ExitBadRequest
}

// What a local caller of ssh-command sends (identity, words, remote) is
// clipped in agentd's log.
func TestCommandLogIsClipped(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	ids, err := auth.New([]config.Identity{{Name: "ci", LocalUsers: []string{me.Username}, Projects: []string{"*"}, Verbs: []string{"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	h := &Handler{Service: commandOnly{ids: ids}, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	sock := filepath.Join(t.TempDir(), "agentd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ConnContext: ConnContext}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}

	long := strings.Repeat("x", 250_000)
	for _, req := range []api.CommandRequest{
		{Identity: long, Args: []string{"status"}},
		{Identity: "ci", Args: []string{"status", long}, Remote: long},
		{Identity: "ci", Args: []string{long, long}},
	} {
		body, _ := json.Marshal(req)
		resp, err := client.Post("http://agentd"+api.PathCommand, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(answer) > 2048 {
			t.Errorf("an answer of %d bytes: %.200q", len(answer), answer)
		}
	}
	if n := strings.Count(logs.String(), "\n"); n != 3 {
		t.Errorf("%d log lines, want 3:\n%.2000s", n, logs.String())
	}
	for line := range strings.Lines(logs.String()) {
		if len(line) > 1024 {
			t.Errorf("a log line of %d bytes: %.300q", len(line), line)
		}
	}
}

var _ Deployer = commandOnly{}
