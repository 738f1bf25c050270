package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// CPUSetDir returns the directory of a process's cpuset cgroup, as CPUDir
// does for its CPU cgroup.
func CPUSetDir(procCgroup []byte, root string) (string, error) {
	return controllerDir(procCgroup, root, "cpuset")
}

// PinBoot keeps pid's cpuset cgroup to the upper half of the CPUs its
// parent group may use (of 2: the second; of 3: the last two; of 4: the
// last two), so that the lower half runs no task of that group, and
// returns the CPUs it wrote. It writes nothing and returns "" when the
// parent has fewer than two CPUs (none to spare) or when the group already
// has a cpuset of its own (set by its owner: it is left as it is). Its
// error wraps fs.ErrNotExist when the process or its group is not there.
func (h Host) PinBoot(pid int) (string, error) {
	dir, err := h.groupDir(pid, CPUSetDir)
	if err != nil {
		return "", err
	}
	cur, err := os.ReadFile(filepath.Join(dir, "cpuset.cpus"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%s: no cpuset.cpus (the cpuset controller is not enabled for the group)", dir)
	}
	if err != nil {
		return "", err
	}
	parent, err := EffectiveCPUs(filepath.Dir(dir))
	if err != nil {
		return "", err
	}
	own := strings.TrimSpace(string(cur))
	if own != "" && own != FormatCPUList(parent) {
		return "", nil
	}
	if len(parent) < 2 {
		return "", nil
	}
	want := FormatCPUList(parent[len(parent)/2:])
	if err := os.WriteFile(filepath.Join(dir, "cpuset.cpus"), []byte(want), 0o644); err != nil {
		return "", fmt.Errorf("write %s to %s: %w", want, filepath.Join(dir, "cpuset.cpus"), err)
	}
	return want, nil
}

// Unpin gives pid's cpuset cgroup every CPU its parent group may use: on
// cgroup v2 it empties cpuset.cpus (the group then follows its parent), on
// v1, where a group with tasks must name its CPUs, it writes the parent's.
// A group that has them already is left alone; so is one without a
// cpuset.cpus file (nothing can have been pinned there).
func (h Host) Unpin(pid int) error {
	dir, err := h.groupDir(pid, CPUSetDir)
	if err != nil {
		return err
	}
	file := filepath.Join(dir, "cpuset.cpus")
	cur, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	want := ""
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "cpuset.effective_cpus")); err == nil {
		// cgroup v1.
		b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "cpuset.cpus"))
		if err != nil {
			return err
		}
		want = strings.TrimSpace(string(b))
	}
	if strings.TrimSpace(string(cur)) == want {
		return nil
	}
	if err := os.WriteFile(file, []byte(want+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %q to %s: %w", want, file, err)
	}
	return nil
}

// EffectiveCPUs reads the CPUs the cpuset group in dir may use:
// cpuset.effective_cpus on cgroup v1, cpuset.cpus.effective on v2.
func EffectiveCPUs(dir string) ([]int, error) {
	var last error
	for _, f := range []string{"cpuset.effective_cpus", "cpuset.cpus.effective"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			last = err
			continue
		}
		return ParseCPUList(string(b))
	}
	return nil, fmt.Errorf("the CPUs of %s: %w", dir, last)
}

// ParseCPUList reads the kernel's list format ("0-3,6,8-9") into CPU
// numbers, sorted, each once.
func ParseCPUList(s string) ([]int, error) {
	var cpus []int
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("CPU list %q: %q is not a CPU number", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("CPU list %q: %q is not a range", s, part)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	slices.Sort(cpus)
	return slices.Compact(cpus), nil
}

// FormatCPUList writes sorted CPU numbers in the kernel's list format.
func FormatCPUList(cpus []int) string {
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(cpus[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(cpus[j]))
		}
		i = j + 1
	}
	return b.String()
}
