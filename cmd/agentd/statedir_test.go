package main

import (
	"bytes"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStateDirTightened(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mode   fs.FileMode // of the existing dir; 0: none exists
		logged string      // "": nothing logged
	}{
		{"created", 0, ""},
		{"0700 left alone", 0o700, ""},
		{"0755", 0o755, "old_mode=0755"},
		{"0777", 0o777, "old_mode=0777"},
		{"0500", 0o500, "old_mode=0500"},
		{"setgid 2770", 0o770 | fs.ModeSetgid, "old_mode=2770"},
		{"sticky 1777", 0o777 | fs.ModeSticky, "old_mode=1777"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if tc.mode != 0 {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				// Mkdir is subject to the umask and ignores the special bits.
				if err := os.Chmod(dir, tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			var logged bytes.Buffer
			if err := prepareStateDir(dir, slog.New(slog.NewTextHandler(&logged, nil))); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky); got != 0o700 {
				t.Errorf("mode %s, want 0700", octal(got))
			}
			if tc.logged == "" && logged.Len() > 0 {
				t.Errorf("logged: %s", logged.String())
			}
			if tc.logged != "" && !(strings.Contains(logged.String(), "state dir tightened") && strings.Contains(logged.String(), tc.logged) && strings.Contains(logged.String(), "dir="+dir)) {
				t.Errorf("log lacks the tightening with %s: %q", tc.logged, logged.String())
			}
		})
	}
}

func TestStateDirRefused(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := prepareStateDir(file, log); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a file: %v", err)
	}

	// A directory owned by another user: refused, and left as it was.
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	} else {
		dir = "/" // owned by root, not by this user
	}
	before, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = prepareStateDir(dir, log)
	if err == nil || !strings.Contains(err.Error(), "owned by uid") {
		t.Fatalf("directory of another user: %v", err)
	}
	after, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if after.Mode() != before.Mode() {
		t.Errorf("mode changed from %s to %s", before.Mode(), after.Mode())
	}
}

// agentd itself tightens state_dir at start, before it opens the store
// (here it then stops: no Docker engine answers).
func TestRunTightensStateDir(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(state, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agentd.yaml")
	if err := os.WriteFile(cfg, []byte("state_dir: state\nsocket:\n  path: agentd.sock\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(dir, "no-docker.sock"))
	var out bytes.Buffer
	err := run(t.Context(), []string{"--config", cfg}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "docker engine") {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	st, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("state_dir mode %s, want 0700", octal(st.Mode().Perm()))
	}
	if !strings.Contains(out.String(), "state dir tightened") || !strings.Contains(out.String(), "old_mode=0755") {
		t.Errorf("not logged:\n%s", out.String())
	}
}
