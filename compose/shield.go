package compose

import (
	"context"
	"fmt"
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

// defaultCPUShares is the engine's CPU weight for a container that sets
// none.
const defaultCPUShares = 1024

// cpuPeriod is the CFS period of a boot's CPU quota (the engine's default).
const cpuPeriod = 100000 // µs

// shield lowers the CPU weight a new container boots with, so that its
// boot (imports, forks, migrations' checks) takes the CPU the serving
// containers leave rather than theirs, and caps it at BootCPUs cores, so
// that it cannot take every core at once. A service that sets cpu_shares,
// or a CPU limit, keeps its own.
func (e *Executor) shield(host *container.HostConfig) {
	if e.BootCPUShares > 0 && host.CPUShares == 0 {
		host.CPUShares = e.BootCPUShares
	}
	if q := e.bootQuota(); q > 0 && host.NanoCPUs == 0 && host.CPUQuota == 0 && host.CPUPeriod == 0 {
		host.CPUPeriod, host.CPUQuota = cpuPeriod, q
	}
}

// bootQuota is BootCPUs as a CFS quota per cpuPeriod, or 0 for none.
func (e *Executor) bootQuota() int64 {
	if e.BootCPUs <= 0 {
		return 0
	}
	return max(int64(e.BootCPUs*cpuPeriod), 1000)
}

// unshield gives containers that passed their gate their configured CPU
// weight back, and lifts the boot's CPU cap (a live update: nothing
// restarts).
func (e *Executor) unshield(ctx context.Context, s ServicePlan, ids []string) error {
	for _, id := range ids {
		in, err := e.Engine.ContainerInspect(ctx, id)
		if err != nil {
			return fmt.Errorf("restore the CPU weight of %s: %w", id, err)
		}
		if in.HostConfig == nil {
			continue
		}
		var r container.Resources
		if e.BootCPUShares > 0 && s.Spec.Host.CPUShares == 0 && in.HostConfig.CPUShares == e.BootCPUShares {
			r.CPUShares = defaultCPUShares
		}
		if q := e.bootQuota(); q > 0 && s.Spec.Host.CPUQuota == 0 && s.Spec.Host.NanoCPUs == 0 && in.HostConfig.CPUQuota == q {
			r.CPUQuota = -1 // no quota (0 would leave it as it is)
		}
		if r.CPUShares == 0 && r.CPUQuota == 0 {
			continue // started again, not created: it never booted shielded
		}
		if _, err := e.Engine.ContainerUpdate(ctx, id, container.UpdateConfig{Resources: r}); err != nil {
			return fmt.Errorf("restore the CPU weight of %s: %w", in.Name, err)
		}
	}
	return nil
}
