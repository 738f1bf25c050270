package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		out  string
	}{
		{"0-1\n", []int{0, 1}, "0-1"},
		{"0", []int{0}, "0"},
		{"0-3,6,8-9", []int{0, 1, 2, 3, 6, 8, 9}, "0-3,6,8-9"},
		{"5,1-2,2", []int{1, 2, 5}, "1-2,5"},
		{"", nil, ""},
	} {
		got, err := ParseCPUList(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if s := FormatCPUList(got); s != tc.out {
			t.Errorf("FormatCPUList(%v) = %q; want %q", got, s, tc.out)
		}
	}
	for _, bad := range []string{"a", "3-1", "1-", "-1", "1,,2"} {
		if got, err := ParseCPUList(bad); err == nil {
			t.Errorf("ParseCPUList(%q) = %v; want an error", bad, got)
		}
	}
}

// fakeCPUSet lays out /proc/42/cgroup and a container's cpuset group
// under a parent with the CPUs parent, the container's cpuset.cpus own
// (absent when "-"); v2 uses the unified layout and its file names.
func fakeCPUSet(t *testing.T, v2 bool, parent, own string) (Host, string) {
	t.Helper()
	d := t.TempDir()
	h := Host{Proc: filepath.Join(d, "proc"), Root: filepath.Join(d, "cg")}
	must(t, os.MkdirAll(filepath.Join(h.Proc, "42"), 0o755))
	proc, top, eff := "3:cpuset:/docker/abc\n1:cpu:/docker/abc\n0::/\n", filepath.Join(h.Root, "cpuset", "docker"), "cpuset.effective_cpus"
	if v2 {
		proc, top, eff = "0::/system.slice/docker-abc.scope\n", filepath.Join(h.Root, "system.slice"), "cpuset.cpus.effective"
	}
	must(t, os.WriteFile(filepath.Join(h.Proc, "42", "cgroup"), []byte(proc), 0o644))
	dir := filepath.Join(top, "abc")
	if v2 {
		dir = filepath.Join(top, "docker-abc.scope")
	}
	must(t, os.MkdirAll(dir, 0o755))
	must(t, os.WriteFile(filepath.Join(top, eff), []byte(parent+"\n"), 0o644))
	if !v2 {
		must(t, os.WriteFile(filepath.Join(top, "cpuset.cpus"), []byte(parent+"\n"), 0o644))
	}
	if own != "-" {
		must(t, os.WriteFile(filepath.Join(dir, "cpuset.cpus"), []byte(own+"\n"), 0o644))
	}
	return h, filepath.Join(dir, "cpuset.cpus")
}

func read(t *testing.T, f string) string {
	t.Helper()
	b, err := os.ReadFile(f)
	must(t, err)
	return strings.TrimSpace(string(b))
}

func TestPinBootAndUnpin(t *testing.T) {
	for _, tc := range []struct {
		name        string
		v2          bool
		parent, own string
		pinned      string // what PinBoot writes; "" nothing
		after       string // cpuset.cpus after Unpin
	}{
		{"v1, two CPUs", false, "0-1", "0-1", "1", "0-1"},
		{"v1, four CPUs", false, "0-3", "0-3", "2-3", "0-3"},
		{"v1, three CPUs", false, "0-2", "0-2", "1-2", "0-2"},
		{"v1, one CPU: none to spare", false, "0", "0", "", "0"},
		{"v1, a cpuset of its own is kept", false, "0-3", "0", "", "0-3"},
		{"v2, two CPUs", true, "0-1", "", "1", ""},
		{"v2, gaps", true, "0,2,4-5", "", "4-5", ""},
		{"v2, a cpuset of its own is kept", true, "0-3", "3", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, file := fakeCPUSet(t, tc.v2, tc.parent, tc.own)
			got, err := h.PinBoot(42)
			if err != nil || got != tc.pinned {
				t.Fatalf("PinBoot = %q, %v; want %q", got, err, tc.pinned)
			}
			if want := tc.own; tc.pinned != "" {
				want = tc.pinned
				if read(t, file) != want {
					t.Fatalf("cpuset.cpus = %q after PinBoot; want %q", read(t, file), want)
				}
			}
			if tc.pinned == "" {
				return // Unpin after no pin: the executor only unpins what it pinned
			}
			must(t, h.Unpin(42))
			if s := read(t, file); s != tc.after {
				t.Fatalf("cpuset.cpus = %q after Unpin; want %q", s, tc.after)
			}
			// Again: already unpinned, nothing to do.
			must(t, h.Unpin(42))
		})
	}
}

// TestPinBootWithoutCPUSet: no cpuset.cpus is an error for PinBoot (said
// once by the executor) and nothing for Unpin; a process or cgroup that is
// not there is an error that says so (fs.ErrNotExist), for the executor to
// tell a container that exited from one it may not see.
func TestPinBootWithoutCPUSet(t *testing.T) {
	h0, _ := fakeCPUSet(t, true, "0-1", "-")
	if got, err := h0.PinBoot(42); err == nil || !strings.Contains(err.Error(), "cpuset controller is not enabled") {
		t.Fatalf("PinBoot = %q, %v; want an error about the controller", got, err)
	}
	if err := h0.Unpin(42); err != nil {
		t.Fatalf("Unpin without cpuset.cpus: %v; want nil", err)
	}
	h, file := fakeCPUSet(t, false, "0-1", "0-1")
	must(t, os.RemoveAll(filepath.Dir(file))) // the container exited, its cgroup removed
	if got, err := h.PinBoot(42); got != "" || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("PinBoot of a process whose cgroup is gone = %q, %v; want fs.ErrNotExist", got, err)
	}
	if err := h.Unpin(42); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Unpin of a process whose cgroup is gone: %v; want fs.ErrNotExist", err)
	}
	if got, err := (Host{Proc: t.TempDir()}).PinBoot(7); got != "" || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("PinBoot of a process that is not there = %q, %v; want fs.ErrNotExist", got, err)
	}
}
