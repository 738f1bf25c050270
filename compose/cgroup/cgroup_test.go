package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCPUDir(t *testing.T) {
	for _, tc := range []struct {
		name, proc, want, err string
	}{
		{"v1 cpu alone", "9:name=systemd:/\n4:memory:/docker/abc\n1:cpu:/docker/abc\n0::/\n", "/cg/cpu/docker/abc", ""},
		{"v1 cpu,cpuacct", "12:pids:/x\n3:cpu,cpuacct:/system.slice/docker-abc.scope\n", "/cg/cpu,cpuacct/system.slice/docker-abc.scope", ""},
		{"v2", "0::/system.slice/docker-abc.scope\n", "/cg/system.slice/docker-abc.scope", ""},
		{"hybrid, cpu on v1", "0::/user.slice\n2:cpuacct,cpu:/docker/abc\n", "/cg/cpuacct,cpu/docker/abc", ""},
		{"no cpu", "4:memory:/docker/abc\n", "", "no CPU cgroup"},
		{"garbage", "nonsense\n", "", "no CPU cgroup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CPUDir([]byte(tc.proc), "/cg")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("CPUDir = %q, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("CPUDir = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// fakeHost lays out /proc/42/cgroup and the container's cgroup with its
// cpu.idle (absent when idle is "").
func fakeHost(t *testing.T, idle string) (Host, string) {
	t.Helper()
	d := t.TempDir()
	h := Host{Proc: filepath.Join(d, "proc"), Root: filepath.Join(d, "cg")}
	must(t, os.MkdirAll(filepath.Join(h.Proc, "42"), 0o755))
	must(t, os.WriteFile(filepath.Join(h.Proc, "42", "cgroup"), []byte("1:cpu:/docker/abc\n0::/\n"), 0o644))
	dir := filepath.Join(h.Root, "cpu", "docker", "abc")
	must(t, os.MkdirAll(dir, 0o755))
	if idle != "" {
		must(t, os.WriteFile(filepath.Join(dir, "cpu.idle"), []byte(idle+"\n"), 0o644))
	}
	return h, filepath.Join(dir, "cpu.idle")
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestSetIdle(t *testing.T) {
	h, file := fakeHost(t, "0")
	must(t, h.SetIdle(42, true))
	if b, _ := os.ReadFile(file); string(b) != "1" {
		t.Errorf("cpu.idle holds %q after SetIdle(true), want 1", b)
	}
	must(t, h.SetIdle(42, false))
	if b, _ := os.ReadFile(file); string(b) != "0" {
		t.Errorf("cpu.idle holds %q after SetIdle(false), want 0", b)
	}
	if err := h.SetIdle(7, true); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "process 7") {
		t.Errorf("SetIdle of a process that is not there: %v; want an error naming it, fs.ErrNotExist", err)
	}
	must(t, os.WriteFile(filepath.Join(h.Proc, "42", "cgroup"), []byte("4:memory:/docker/abc\n"), 0o644))
	if err := h.SetIdle(42, true); err == nil || !strings.Contains(err.Error(), "process 42") {
		t.Errorf("SetIdle of a process in no CPU cgroup: %v; want an error naming it", err)
	}
}

// TestSetIdleUnchanged: a group already in the wanted class is not
// written (so a file this process may not write is no error then).
func TestSetIdleUnchanged(t *testing.T) {
	h, file := fakeHost(t, "0")
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	must(t, os.Chtimes(file, old, old))
	must(t, h.SetIdle(42, false))
	if st, err := os.Stat(file); err != nil || !st.ModTime().Equal(old) {
		t.Errorf("cpu.idle was written though the group was not idle (%v)", err)
	}
}

// TestSetIdleOldKernel: without cpu.idle, nothing is idle (no error) and
// nothing can be made so (an error that says why).
func TestSetIdleOldKernel(t *testing.T) {
	h, _ := fakeHost(t, "")
	if err := h.SetIdle(42, false); err != nil {
		t.Errorf("SetIdle(false) without cpu.idle: %v", err)
	}
	if err := h.SetIdle(42, true); err == nil || !strings.Contains(err.Error(), "5.15") {
		t.Errorf("SetIdle(true) without cpu.idle: %v, want an error naming Linux 5.15", err)
	}
}
