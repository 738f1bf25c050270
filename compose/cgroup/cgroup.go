// Package cgroup puts a process's CPU cgroup on this host in or out of
// the kernel's idle class (cpu.idle, Linux 5.15 and later, cgroup v1 and
// v2): the tasks of an idle group run on CPU time no other task wants, and
// any other task that wakes takes the CPU from them at once. It also keeps
// a process's cpuset cgroup to part of the host's CPUs and gives them all
// back (cpuset.go). The Docker Engine has no setting for the idle class,
// and changing a container's cpuset through it would be recorded as the
// container's own, so the group's files are written directly.
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Host reads /proc and writes cgroup files under its roots.
type Host struct {
	// Proc is where the processes are (/proc when empty).
	Proc string
	// Root is where the cgroup file systems are mounted (/sys/fs/cgroup
	// when empty).
	Root string
}

// dirs returns where the processes and the cgroup file systems are.
func (h Host) dirs() (proc, root string) {
	proc, root = h.Proc, h.Root
	if proc == "" {
		proc = "/proc"
	}
	if root == "" {
		root = "/sys/fs/cgroup"
	}
	return proc, root
}

// groupDir returns the directory of pid's cgroup that dirOf finds in its
// /proc/PID/cgroup. The error wraps fs.ErrNotExist when the process or
// that directory is not there: a container that exited, or a process this
// one may not see (systemd's ProtectProc=invisible hides other users').
func (h Host) groupDir(pid int, dirOf func(procCgroup []byte, root string) (string, error)) (string, error) {
	proc, root := h.dirs()
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", fmt.Errorf("the cgroups of process %d: %w", pid, err)
	}
	dir, err := dirOf(b, root)
	if err != nil {
		return "", fmt.Errorf("process %d: %w", pid, err)
	}
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("process %d: %w", pid, err)
	}
	return dir, nil
}

// CPUDir returns the directory of a process's CPU cgroup, from its
// /proc/PID/cgroup and the cgroup root: the cgroup v1 hierarchy that holds
// the cpu controller (mounted under its controllers' names, as Docker and
// systemd mount them), else the cgroup v2 unified hierarchy.
func CPUDir(procCgroup []byte, root string) (string, error) {
	return controllerDir(procCgroup, root, "cpu")
}

// controllerDir returns the directory of a process's cgroup in the cgroup
// v1 hierarchy that holds controller, else in the v2 unified hierarchy.
func controllerDir(procCgroup []byte, root, controller string) (string, error) {
	unified, found := "", false
	sc := bufio.NewScanner(bytes.NewReader(procCgroup))
	for sc.Scan() {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		ctrls, path, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if id == "0" && ctrls == "" {
			unified, found = path, true
			continue
		}
		for c := range strings.SplitSeq(ctrls, ",") {
			if c == controller {
				return filepath.Join(root, ctrls, path), nil
			}
		}
	}
	if !found {
		name := controller
		if name == "cpu" {
			name = "CPU"
		}
		return "", fmt.Errorf("the process is in no %s cgroup", name)
	}
	return filepath.Join(root, unified), nil
}

// SetIdle puts pid's CPU cgroup in the idle class (idle) or takes it out.
// A group already so is left alone (nothing is written, so a group this
// process may not write is no error then). Taking a group out of the idle
// class on a kernel without it is no error: nothing is idle there. The
// kernel sets the weight of a group it takes out of the idle class to the
// default (1024 shares, cpu.weight 100).
func (h Host) SetIdle(pid int, idle bool) error {
	dir, err := h.groupDir(pid, CPUDir)
	if err != nil {
		return err
	}
	file := filepath.Join(dir, "cpu.idle")
	cur, err := os.ReadFile(file)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !idle:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: no such file (the kernel's idle class needs Linux 5.15 or later)", file)
	case err != nil:
		return err
	}
	want := "0"
	if idle {
		want = "1"
	}
	if strings.TrimSpace(string(cur)) == want {
		return nil
	}
	if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
		return fmt.Errorf("write %s to %s: %w", want, file, err)
	}
	return nil
}
