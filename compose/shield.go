package compose

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/docker/docker/api/types/container"
)

// Monitor watches started containers for a window (healthcheck.Checker).
type Monitor interface {
	Monitor(ctx context.Context, ids []string, window time.Duration) error
}

// StepState is how a step ended.
type StepState string

// How steps end.
const (
	StepDone    StepState = "done"
	StepFailed  StepState = "failed"
	StepSkipped StepState = "skipped"
)

// StepResult is a step of a graph as it ran.
type StepResult struct {
	Step
	State   StepState     `json:"state"`
	Started time.Time     `json:"started,omitzero"`
	Took    time.Duration `json:"took,omitempty"`
	Error   string        `json:"error,omitempty"`
}

// record notes how a step ended.
func (e *Executor) record(s *Step, began time.Time, state StepState, err error) {
	r := StepResult{Step: *s, State: state, Started: began}
	if !began.IsZero() {
		r.Took = e.now().Sub(began)
	}
	if err != nil {
		r.Error = err.Error()
	}
	e.mu.Lock()
	e.results = append(e.results, r)
	e.mu.Unlock()
	if e.OnStep != nil {
		e.OnStep(r)
	}
}

// Steps returns the steps that ended so far, in the order they ended.
func (e *Executor) Steps() []StepResult {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]StepResult(nil), e.results...)
}

// CPU shares of a container that sets none: what cgroup v1 gives it, and,
// on cgroup v2, the least shares the engine maps to cpu.weight 100, the
// default weight (weight = 1 + (shares-2)*9999/262142).
const (
	CGroupV1DefaultShares = 1024
	CGroupV2DefaultShares = 2598
)

// DefaultShares returns the CPU shares that give a container the default
// weight under the engine's cgroup version ("1" or "2", as its info says).
func DefaultShares(cgroupVersion string) int64 {
	if cgroupVersion == "2" {
		return CGroupV2DefaultShares
	}
	return CGroupV1DefaultShares
}

func (e *Executor) defaultShares() int64 {
	if e.DefaultCPUShares > 0 {
		return e.DefaultCPUShares
	}
	return CGroupV1DefaultShares
}

// Idler puts the CPU cgroup of a container's process in the kernel's idle
// class or takes it out (cgroup.Host).
type Idler interface {
	SetIdle(pid int, idle bool) error
}

// Pinner keeps the cpuset cgroup of a container's process off part of the
// host's CPUs and gives them back (cgroup.Host).
type Pinner interface {
	// PinBoot keeps pid's group to the upper half of the CPUs and returns
	// them; "" when there are none to spare or the group has a cpuset of
	// its own.
	PinBoot(pid int) (string, error)
	// Unpin gives pid's group every CPU back.
	Unpin(pid int) error
}

// shield lowers the CPU weight a new container boots with, so that its
// boot (imports, forks, migrations' checks) takes the CPU the serving
// containers leave rather than theirs, and says whether it did. A service
// that sets cpu_shares itself keeps it.
func (e *Executor) shield(host *container.HostConfig) bool {
	if e.BootCPUShares > 0 && host.CPUShares == 0 {
		host.CPUShares = e.BootCPUShares
		return true
	}
	return false
}

// createShielded creates and starts a container of spec's service (a
// replica or a hook) with host, shielded as it boots: at the boot CPU
// weight (shield), in the idle CPU class and on half the CPUs (boot).
func (e *Executor) createShielded(ctx context.Context, spec *ServiceSpec, name string, cfg *container.Config, host container.HostConfig, prepare func(id string) error) (string, error) {
	shielded := e.shield(&host)
	id, err := e.create(ctx, name, cfg, host, spec.Networks, prepare)
	if err == nil && shielded {
		e.boot(ctx, spec, name, id)
	}
	return id, err
}

// boot puts a container just started shielded in the idle CPU class
// (Executor.Idle) and on the upper half of the CPUs (Executor.Pin). A host
// that refuses either (a kernel before 5.15, a cgroup agentd may not
// write, no cpuset controller) is said once; containers then boot without
// it, as they would without Idle or Pin. A service that sets a cpuset
// keeps it. A container that is no longer running has nothing to put
// anywhere.
func (e *Executor) boot(ctx context.Context, spec *ServiceSpec, name string, id string) {
	idle := e.Idle != nil && !e.idleFailed.Load()
	pin := e.Pin != nil && !e.pinFailed.Load() && spec.Host.CpusetCpus == ""
	if !idle && !pin {
		return
	}
	in, err := e.Engine.ContainerInspect(ctx, id)
	if err != nil || in.State == nil || in.State.Pid == 0 {
		return
	}
	if idle {
		if err := e.Idle.SetIdle(in.State.Pid, true); err != nil && !e.exited(ctx, id, err) && e.idleFailed.CompareAndSwap(false, true) {
			e.say(spec.Name, "%s boots by its CPU weight alone, not in the idle CPU class (agentd's rollout.boot_cpu_idle): %v", name, err)
		}
	}
	if pin {
		if _, err := e.Pin.PinBoot(in.State.Pid); err != nil && !e.exited(ctx, id, err) && e.pinFailed.CompareAndSwap(false, true) {
			e.say(spec.Name, "%s boots on every CPU, not on half of them (agentd's rollout.boot_cpus): %v", name, err)
		}
	}
}

// exited says whether err, from the host's cgroup files, is only that the
// container's process is no longer there: it exited (a short hook, a crash),
// which is no refusal. A process that runs but cannot be seen (systemd's
// ProtectProc=invisible) is one.
func (e *Executor) exited(ctx context.Context, id string, err error) bool {
	if !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	in, ierr := e.Engine.ContainerInspect(ctx, id)
	return ierr != nil || in.State == nil || !in.State.Running
}

// Unshield gives running containers of a service that were created at the
// boot CPU weight their configured weight back: after a crash, recovery
// gates containers a rollout started but never gated.
func (e *Executor) Unshield(ctx context.Context, spec *ServiceSpec, ids []string) error {
	return e.unshield(ctx, ServicePlan{Name: spec.Name, Spec: spec}, ids)
}

// unshield gives containers that passed their gate their configured CPU
// weight back (a live update: nothing restarts).
func (e *Executor) unshield(ctx context.Context, s ServicePlan, ids []string) error {
	if e.BootCPUShares <= 0 || s.Spec.Host.CPUShares != 0 {
		return nil
	}
	for _, id := range ids {
		in, err := e.Engine.ContainerInspect(ctx, id)
		if err != nil {
			return fmt.Errorf("restore the CPU weight of %s: %w", id, err)
		}
		if in.HostConfig == nil || in.HostConfig.CPUShares != e.BootCPUShares {
			continue // started again, not created: it never booted shielded
		}
		// Every CPU back (a cpuset of the service's own was never
		// pinned). Then out of the idle class: the kernel takes no weight
		// for an idle group.
		// A process that is not there (fs.ErrNotExist) has nothing to give
		// back: it exited, or agentd cannot see it (ProtectProc=invisible)
		// and so never put it anywhere.
		if e.Pin != nil && in.State != nil && in.State.Pid > 0 && in.HostConfig.CpusetCpus == "" {
			if err := e.Pin.Unpin(in.State.Pid); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("give %s every CPU back: %w", in.Name, err)
			}
		}
		if e.Idle != nil && in.State != nil && in.State.Pid > 0 {
			if err := e.Idle.SetIdle(in.State.Pid, false); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("take %s out of the idle CPU class: %w", in.Name, err)
			}
		}
		if _, err := e.Engine.ContainerUpdate(ctx, id, container.UpdateConfig{Resources: container.Resources{CPUShares: e.defaultShares()}}); err != nil {
			return fmt.Errorf("restore the CPU weight of %s: %w", in.Name, err)
		}
	}
	return nil
}
