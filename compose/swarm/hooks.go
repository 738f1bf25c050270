package swarm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-deploy/berth/compose"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
)

// Hook phases, as the single engine names them.
const (
	PhasePreDeploy  = "pre-deploy"
	PhasePostDeploy = "post-deploy"
)

// DefaultHookPoll is how often a hook's task is looked at when Hooks.Poll
// is zero.
const DefaultHookPoll = 250 * time.Millisecond

// What a hook's output may cost: its last hookLogLines lines are read
// once it has ended (and shown as progress), each cut to hookLineBytes,
// and the last hookTail of them go into the error of a failed hook.
// hookRemoveWait bounds the removal of a hook's service, which is done
// even when the caller's context has ended.
const (
	hookLogLines   = 2000
	hookLineBytes  = 1024
	hookTail       = 20
	hookLogWait    = 30 * time.Second
	hookRemoveWait = 30 * time.Second
)

var _ HookRunner = (*Hooks)(nil)

// errHookTimeout ends the wait of a hook that outlived its timeout.
var errHookTimeout = errors.New("hook timed out")

// Hooks runs hooks as one-off Swarm services: each one replica, restart
// condition none (its task runs once), with the service's new container
// spec and the hook's command, removed once it has ended.
//
// Not a replicated job (mode replicated-job, API 1.41): on Engine 20.10.24
// the tasks of a removed job stay in the swarm's store (`docker stack ps`
// lists them for ever, and they keep the stack's network from being
// removed) and a job task still running when its service is removed goes
// on running (moby/moby#42789, #44312). A replicated service's tasks and
// containers go with it.
type Hooks struct {
	Engine  Engine
	Project string
	// Release names the hook services and is on their labels.
	Release string
	// Progress receives a line per thing done; may be nil.
	Progress compose.Progress
	// Auth returns the encoded registry credentials for an image ref ("" for
	// none); nil means none.
	Auth func(ctx context.Context, ref string) (string, error)
	// Poll is how often a hook's task is looked at (DefaultHookPoll when 0).
	Poll time.Duration
}

func (h *Hooks) say(service, format string, args ...any) {
	if h.Progress != nil {
		h.Progress(service, fmt.Sprintf(format, args...))
	}
}

// Run runs hooks one at a time, in order, and returns the first failure:
// a pre-deploy hook's wraps compose.ErrHook.
func (h *Hooks) Run(ctx context.Context, spec *compose.ServiceSpec, phase string, hooks []compose.Hook) error {
	for i, hook := range hooks {
		if err := h.run(ctx, spec, phase, i, hook); err != nil {
			if phase == PhasePreDeploy {
				return fmt.Errorf("service %s: %w: %w", spec.Name, compose.ErrHook, err)
			}
			return fmt.Errorf("service %s: %w", spec.Name, err)
		}
	}
	return nil
}

// HookServiceName is the name of the service that runs hook i (0-based)
// of service: PROJECT_SERVICE_hook-N-RELEASE, cut to the 63 characters a
// Swarm service name may have (with a hash of the whole name kept).
func HookServiceName(project, service, release string, i int) string {
	name := fmt.Sprintf("%s_%s_hook-%d", project, service, i+1)
	if release != "" {
		name += "-" + release
	}
	const maxName = 63
	if len(name) <= maxName {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	suffix := fmt.Sprintf("_hook-%d-%s", i+1, hex.EncodeToString(sum[:])[:8])
	return strings.TrimRight(name[:maxName-len(suffix)], "_-") + suffix
}

// hookSpec is the one-off service that runs hook i of spec's service: its
// new container spec (image, environment, mounts, user...) with the hook's
// command as the arguments of the service's entrypoint, no health check,
// on the service's networks (without its aliases) and placement, one
// replica whose task is never restarted nor replaced.
func (h *Hooks) hookSpec(spec *compose.ServiceSpec, phase string, i int, hook compose.Hook) (swarm.ServiceSpec, error) {
	if spec.Swarm == nil || spec.Swarm.TaskTemplate.ContainerSpec == nil {
		return swarm.ServiceSpec{}, fmt.Errorf("no swarm spec (convert the project first)")
	}
	src := spec.Swarm.TaskTemplate
	cs := *src.ContainerSpec
	cs.Args = slices.Clone(hook.Command)
	cs.Command = slices.Clone(cs.Command)
	cs.Healthcheck = &container.HealthConfig{Test: []string{"NONE"}}
	cs.TTY, cs.OpenStdin = false, false
	cs.Labels = maps.Clone(cs.Labels)
	if cs.Labels == nil {
		cs.Labels = map[string]string{}
	}
	delete(cs.Labels, LabelSpecHash)
	labels := map[string]string{
		LabelNamespace: h.Project,
		LabelHook:      phase + "/" + strconv.Itoa(i+1),
		LabelHookOf:    spec.Name,
	}
	if h.Release != "" {
		labels[LabelRelease] = h.Release
	}
	maps.Copy(cs.Labels, labels)
	one := uint64(1)
	// On the service's networks, but not under its aliases: a name
	// lookup of the service (dnsrr) must not answer with the hook.
	var nets []swarm.NetworkAttachmentConfig
	for _, n := range src.Networks {
		nets = append(nets, swarm.NetworkAttachmentConfig{Target: n.Target, DriverOpts: maps.Clone(n.DriverOpts)})
	}
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: HookServiceName(h.Project, spec.Name, h.Release, i), Labels: labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &cs,
			Resources:     src.Resources,
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     src.Placement,
			Networks:      nets,
			LogDriver:     src.LogDriver,
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
		// Nothing reaches a hook: no virtual IP (and none needs IPVS).
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR},
	}, nil
}

// run runs one hook: it creates its service, waits within the hook's
// timeout for its task to complete or fail, shows its output, and removes
// the service whatever happened.
func (h *Hooks) run(ctx context.Context, spec *compose.ServiceSpec, phase string, i int, hook compose.Hook) (err error) {
	what := fmt.Sprintf("%s hook %q", phase, strings.Join(hook.Command, " "))
	svc, err := h.hookSpec(spec, phase, i, hook)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	timeout := hook.Timeout
	if timeout <= 0 {
		timeout = compose.DefaultHookTimeout
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, errHookTimeout)
	defer cancel()
	auth := ""
	if h.Auth != nil {
		if auth, err = h.Auth(ctx, spec.Image.Ref); err != nil {
			return fmt.Errorf("%s: registry credentials for %s: %w", what, spec.Image.Ref, err)
		}
	}
	if err := h.removeLeftover(ctx, svc.Name); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	h.say(spec.Name, "running %s as service %s", what, svc.Name)
	start := time.Now()
	created, err := h.Engine.ServiceCreate(ctx, svc, swarm.ServiceCreateOptions{EncodedRegistryAuth: auth})
	if err != nil {
		return fmt.Errorf("%s: create service %s: %w", what, svc.Name, err)
	}
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), hookRemoveWait)
		defer rcancel()
		if rerr := h.Engine.ServiceRemove(rctx, created.ID); rerr != nil && !errdefs.IsNotFound(rerr) {
			h.say(spec.Name, "could not remove hook service %s: %v", svc.Name, rerr)
			if err == nil {
				err = fmt.Errorf("%s: remove service %s: %w", what, svc.Name, rerr)
			}
		}
	}()
	task, werr := h.wait(ctx, created.ID)
	took := time.Since(start).Round(time.Millisecond)
	tail := h.output(context.WithoutCancel(ctx), spec.Name, created.ID)
	if werr == nil && task.Status.State == swarm.TaskStateComplete {
		h.say(spec.Name, "%s done in %s", what, took)
		return nil
	}
	var why string
	switch {
	case werr != nil && context.Cause(ctx) == errHookTimeout:
		why = fmt.Sprintf("did not end within its timeout of %s", timeout)
		if task.ID != "" {
			why += fmt.Sprintf(" (its task was %s", task.Status.State)
			if msg := hookTaskMessage(task); msg != "" {
				why += ": " + msg
			}
			why += ")"
		}
	case werr != nil:
		return fmt.Errorf("%s: %w", what, werr)
	default:
		why = string(task.Status.State)
		if cs := task.Status.ContainerStatus; cs != nil && cs.ContainerID != "" {
			why = fmt.Sprintf("exited %d", cs.ExitCode)
		}
		if msg := hookTaskMessage(task); msg != "" {
			why += " (" + msg + ")"
		}
	}
	msg := fmt.Sprintf("%s %s after %s", what, why, took)
	if len(tail) > 0 {
		msg += ":\n" + strings.Join(tail, "\n")
	}
	return errors.New(msg)
}

// hookTaskMessage is what a task's status says of it: its error, else its
// message.
func hookTaskMessage(t swarm.Task) string {
	if t.Status.Err != "" {
		return t.Status.Err
	}
	return t.Status.Message
}

// wait polls the hook service's task until it has ended (complete,
// failed, rejected, shut down...) and returns it; on ctx's end, the error
// and the task as last seen.
func (h *Hooks) wait(ctx context.Context, serviceID string) (swarm.Task, error) {
	poll := h.Poll
	if poll <= 0 {
		poll = DefaultHookPoll
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	byService := filters.NewArgs(filters.Arg("service", serviceID))
	var last swarm.Task
	for {
		tasks, err := h.Engine.TaskList(ctx, swarm.TaskListOptions{Filters: byService})
		if err != nil && ctx.Err() == nil {
			return last, fmt.Errorf("list the tasks of the hook: %w", err)
		}
		if len(tasks) > 0 {
			// One completion, restart none: one task, but take the newest
			// should the orchestrator ever make another.
			last = slices.MaxFunc(tasks, func(a, b swarm.Task) int { return a.Meta.CreatedAt.Compare(b.Meta.CreatedAt) })
			if hookTaskEnded(last.Status.State) {
				return last, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-tick.C:
		}
	}
}

// hookTaskEnded reports whether a task in state s will not run any more.
func hookTaskEnded(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected,
		swarm.TaskStateShutdown, swarm.TaskStateRemove, swarm.TaskStateOrphaned:
		return true
	}
	return false
}

// output reads the last hookLogLines lines of a hook service's output
// (stdout and stderr), shows them as progress, and returns the last
// hookTail of them.
func (h *Hooks) output(ctx context.Context, service, serviceID string) []string {
	ctx, cancel := context.WithTimeout(ctx, hookLogWait)
	defer cancel()
	rc, err := h.Engine.ServiceLogs(ctx, serviceID, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(hookLogLines)})
	if err != nil {
		return []string{fmt.Sprintf("(could not read its output: %v)", err)}
	}
	defer rc.Close()
	pr, pw := io.Pipe()
	go func() {
		_, err := stdcopy.StdCopy(pw, pw, rc)
		pw.CloseWithError(err)
	}()
	defer pr.Close()
	var tail []string
	err = compose.ReadLines(pr, hookLineBytes, func(line string) {
		h.say(service, "| %s", line)
		if len(tail) == hookTail {
			tail = tail[1:]
		}
		tail = append(tail, line)
	})
	if err != nil && !errors.Is(err, io.EOF) {
		tail = append(tail, fmt.Sprintf("(its output was cut short: %v)", err))
	}
	return tail
}

// removeLeftover removes a hook service of this name that an earlier run
// left (an agentd that died while a hook ran), so that the name is free.
func (h *Hooks) removeLeftover(ctx context.Context, name string) error {
	list, err := h.Engine.ServiceList(ctx, swarm.ServiceListOptions{Filters: filters.NewArgs(
		filters.Arg("name", name), filters.Arg("label", LabelNamespace+"="+h.Project), filters.Arg("label", LabelHook))})
	if err != nil {
		return fmt.Errorf("list hook services: %w", err)
	}
	for _, s := range list {
		if s.Spec.Name != name { // the name filter matches prefixes
			continue
		}
		h.say(s.Spec.Labels[LabelHookOf], "removing hook service %s, left by an earlier run", name)
		if err := h.Engine.ServiceRemove(ctx, s.ID); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove the leftover hook service %s: %w", name, err)
		}
	}
	return nil
}

// RemoveLeftovers removes every hook service of the project: those an
// agentd that died while a hook ran left behind. It is for recovery, when
// no hook of the project runs.
func (h *Hooks) RemoveLeftovers(ctx context.Context) error {
	list, err := h.Engine.ServiceList(ctx, swarm.ServiceListOptions{Filters: filters.NewArgs(
		filters.Arg("label", LabelNamespace+"="+h.Project), filters.Arg("label", LabelHook))})
	if err != nil {
		return fmt.Errorf("remove leftover hooks of %s: list services: %w", h.Project, err)
	}
	var errs []error
	for _, s := range list {
		if s.Spec.Labels[LabelNamespace] != h.Project || s.Spec.Labels[LabelHook] == "" {
			continue
		}
		if err := h.Engine.ServiceRemove(ctx, s.ID); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove leftover hook service %s: %w", s.Spec.Name, err))
			continue
		}
		h.say(s.Spec.Labels[LabelHookOf], "removed hook service %s, left by an earlier run", s.Spec.Name)
	}
	return errors.Join(errs...)
}
