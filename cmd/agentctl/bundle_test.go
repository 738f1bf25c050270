package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
)

// agentdDeploys serves POST /v1/deploy on a unix socket: it keeps each
// request and answers a result event with exit 0.
func agentdDeploys(t *testing.T) (socket string, got chan api.DeployRequest) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "agentd.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	got = make(chan api.DeployRequest, 10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.DeployRequest
		if r.URL.Path != api.PathDeploy || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, `{"error": "bad", "exit_code": 2}`, http.StatusBadRequest)
			return
		}
		got <- req
		code := 0
		json.NewEncoder(w).Encode(api.Event{Type: api.EventResult, Message: "ok", ExitCode: &code})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket, got
}

// agentctl deploy --compose-file sends the files given, the first as the
// main file, the others under their paths relative to its directory; and
// --source and --dry-run.
func TestDeploySendsComposeFiles(t *testing.T) {
	socket, got := agentdDeploys(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "shop", "common"), 0o755)
	os.WriteFile(filepath.Join(dir, "shop", "compose.prod.yaml"), []byte("include: [common/base.yaml]\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "shop", "common", "base.yaml"), []byte("services: {}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "outside.yaml"), []byte("services: {}\n"), 0o644)
	t.Chdir(dir)

	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"--socket", socket, "deploy", "shop", "--compose-file", "shop/compose.prod.yaml",
		"--compose-file", filepath.Join(dir, "shop", "common", "base.yaml"), "--source", "3f2c1a0", "--dry-run"}, nil, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	req := <-got
	want := map[string]string{"compose.prod.yaml": "include: [common/base.yaml]\n", "common/base.yaml": "services: {}\n"}
	if req.Compose == nil || req.Compose.Main != "compose.prod.yaml" || !maps.Equal(req.Compose.Files, want) || req.Source != "3f2c1a0" || !req.DryRun {
		t.Errorf("agentd got %+v (bundle %+v)", req, req.Compose)
	}

	// Without --compose-file, no bundle: the host's file.
	run(t.Context(), []string{"--socket", socket, "deploy", "shop"}, nil, &stdout, &stderr)
	if req := <-got; req.Compose != nil || req.DryRun || req.Source != "" {
		t.Errorf("a plain deploy sent %+v", req)
	}

	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--compose-file", "shop/compose.prod.yaml", "--compose-file", "outside.yaml"}, "outside.yaml is not under"},
		{[]string{"--compose-file", "shop/compose.prod.yaml", "--compose-file", "shop/../shop/compose.prod.yaml"}, "is given twice"},
		{[]string{"--compose-file", "shop"}, "shop is not a regular file"},
		{[]string{"--compose-file", "nosuch.yaml"}, "no such file"},
		{[]string{"--source", "main branch"}, `--source "main branch": want a commit or ref`},
		{[]string{"--source", ""}, `--source "": want a commit or ref`},
	} {
		stderr.Reset()
		code := run(t.Context(), append([]string{"--socket", socket, "deploy", "shop"}, tc.args...), nil, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.says) {
			t.Errorf("%q: exit %d, %q; want 2 and %q", tc.args, code, stderr.String(), tc.says)
		}
	}
	select {
	case req := <-got:
		t.Errorf("agentd was asked: %+v", req)
	default:
	}
}
