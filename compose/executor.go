package compose

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-deploy/berth/healthcheck"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/errdefs"
)

// Progress receives one human-readable line per thing the executor does.
type Progress func(service, message string)

// ErrHook marks a pre-deploy hook that failed: nothing of its service was
// switched.
var ErrHook = errors.New("pre-deploy hook failed")

// ErrPaused marks a failure in a service whose failure_action is pause:
// the release stops where it is, for an operator.
var ErrPaused = errors.New("rollout paused by failure_action")

// Executor applies plans to one engine.
type Executor struct {
	Engine Engine
	// Health gates every container started; nil starts without waiting.
	Health Gater
	// Release labels every container created (LabelRelease); may be empty.
	Release string
	// Progress may be nil.
	Progress Progress
	// KeepRetired stops the containers a release replaces but keeps them,
	// renamed, so the release can still be rolled back; they are removed
	// by the cleanup after it commits. Project networks are not removed.
	KeepRetired bool
	// Rollback rolls out with each service's rollback policy and runs no
	// hooks.
	Rollback bool
	// Monitor, when set, watches the containers started for the longest
	// monitor window of their services, as the graph's last step.
	Monitor Monitor
	// BootCPUShares is the CPU weight a new container boots with beside
	// the containers that serve; it gets its configured weight back once
	// it passes its gate. 0 boots it at its configured weight.
	BootCPUShares int64
	// DefaultCPUShares is the CPU weight a container that sets none runs
	// at, which a shielded container gets back: 1024 (when 0) on cgroup
	// v1; on cgroup v2 the engine maps shares to cpu.weight, and a
	// container created without shares keeps the cgroup's default weight
	// 100, which is CGroupV2DefaultShares, not 1024 (weight 39).
	DefaultCPUShares int64
	// Idle, when set, also puts a container that boots at BootCPUShares
	// in the kernel's idle CPU class until its gate passes: a weight,
	// however low, still takes turns with the containers that serve, an
	// idle group runs only on what they leave.
	Idle Idler
	// Pin, when set, also keeps a container that boots at BootCPUShares
	// on the upper half of the host's CPUs until its gate passes, so the
	// lower half runs no boot at all. The idle class yields the CPU to a
	// serving task that wakes, but a boot spends long stretches in the
	// kernel (forks, exec, page faults, mounts), which a kernel built
	// without full preemption does not interrupt: a serving task that
	// wakes on that CPU waits for the stretch to end.
	Pin Pinner
	// OnStep, when set, is told of every step that ends (done, failed or
	// skipped).
	OnStep func(StepResult)

	mu       sync.Mutex
	sayMu    sync.Mutex
	createMu sync.Mutex
	started  []Started
	results  []StepResult
	// proxyMu serializes the reloads of each proxy service: services
	// rolling out at once may front the same proxy.
	proxyMu map[string]*sync.Mutex
	killed  []Killed
	// idleFailed: the host refused the idle class once; new containers
	// boot by their weight alone from then on.
	idleFailed atomic.Bool
	// pinFailed: the host refused a cpuset once; new containers boot on
	// every CPU from then on.
	pinFailed atomic.Bool
	// clock is time.Now unless a test sets it.
	clock func() time.Time
	// upstreams is what each proxy container's upstreams file holds, as
	// loaded; reloadedAt is when a proxy last reloaded.
	upstreams  map[string]string
	reloadedAt time.Time
	// reloads counts, by proxy service, the rounds in which its
	// containers were reloaded.
	reloads map[string]int
}

// Started is a container an Apply started, with its service's monitor.
type Started struct {
	ID, Name, Service string
	Monitor           time.Duration
}

// Started returns the containers started so far, for the monitor window.
func (e *Executor) Started() []Started {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Started(nil), e.started...)
}

func (e *Executor) say(service, format string, args ...any) {
	if e.Progress != nil {
		e.sayMu.Lock()
		defer e.sayMu.Unlock()
		e.Progress(service, fmt.Sprintf(format, args...))
	}
}

// Apply carries out the plan as a graph of steps (Plan.Graph): networks
// and volumes first; then every service by its policy, independent
// services at once and dependents after what they depend on; then the
// services no longer in the file. Volumes are never removed. The first
// failure stops the steps not yet begun and is returned, naming the
// service.
func (e *Executor) Apply(ctx context.Context, p *Plan) error {
	return e.Run(ctx, p, p.Graph(e.Mode()))
}

// Mode is the graph mode of this executor.
func (e *Executor) Mode() Mode {
	return Mode{Rollback: e.Rollback, KeepRetired: e.KeepRetired, Monitor: e.Monitor != nil}
}

// Run carries out a graph made from p. Each step starts once the steps it
// waits for are done. A failure in a service whose failure_action is
// continue is said and skips that service's remaining steps; any other
// failure ends the run: steps not begun are skipped and those under way
// are cancelled.
func (e *Executor) Run(ctx context.Context, p *Plan, g *Graph) error {
	defer e.sayReloads()
	return GraphRun{
		Step:   func(ctx context.Context, s *Step) error { return e.step(ctx, p, s) },
		Failed: func(ctx context.Context, s *Step, err error) (error, bool) { return e.failed(ctx, p, s, err) },
		Record: e.record,
		Say:    e.say,
		Now:    e.now,
	}.Run(ctx, g)
}

// failed is the error a run ends with when step s failed with err; goOn
// true: the run goes on without s's service (failure_action: continue).
func (e *Executor) failed(ctx context.Context, p *Plan, s *Step, err error) (end error, goOn bool) {
	spec := p.spec(s.Service)
	switch {
	case s.Service == "":
		return err, false
	case s.Kind == StepHook:
		return fmt.Errorf("service %s: %w: %w", s.Service, ErrHook, err), false
	case spec != nil && spec.Policy.FailureAction == FailContinue && ctx.Err() == nil:
		return nil, true
	case spec != nil && spec.Policy.FailureAction == FailPause && !e.Rollback:
		return fmt.Errorf("service %s: %w: %w", s.Service, ErrPaused, err), false
	default:
		return fmt.Errorf("service %s: %w", s.Service, err), false
	}
}

// step carries out one step.
func (e *Executor) step(ctx context.Context, p *Plan, s *Step) error {
	bt := s.batch
	switch s.Kind {
	case StepNetwork:
		e.say("", "creating network %s", s.net.Name)
		if _, err := e.Engine.NetworkCreate(ctx, s.net.Name, s.net.Options); err != nil && !errdefs.IsConflict(err) {
			return fmt.Errorf("create network %s: %w", s.net.Name, err)
		}
	case StepVolume:
		v := s.vol
		e.say("", "creating volume %s", v.Name)
		if _, err := e.Engine.VolumeCreate(ctx, volume.CreateOptions{Name: v.Name, Driver: v.Driver, DriverOpts: v.Options, Labels: v.Labels}); err != nil {
			return fmt.Errorf("create volume %s: %w", v.Name, err)
		}
	case StepHook:
		spec := p.spec(s.Service)
		return e.runHook(ctx, p.Project, spec, "pre-deploy", s.hook, spec.Policy.PreDeploy[s.hook])
	case StepAside:
		return e.rename(ctx, s.old, retiredName(*s.old))
	case StepCreate, StepStart:
		id, err := e.bringUp(ctx, p, bt.svc, *s.slot)
		if err != nil {
			return err
		}
		if id != "" {
			e.mu.Lock()
			bt.up = append(bt.up, id)
			e.mu.Unlock()
		}
	case StepGate:
		e.mu.Lock()
		up := slices.Clone(bt.up)
		e.mu.Unlock()
		if err := e.gate(ctx, bt.svc, up); err != nil {
			return err
		}
		return e.unshield(ctx, bt.svc, up)
	case StepSwitch:
		// Proxies with an upstreams file switch to the new containers and
		// away from the ones this batch retires (still running when
		// start-first).
		e.mu.Lock()
		up := slices.Clone(bt.up)
		e.mu.Unlock()
		return e.reloadProxies(ctx, p, s.Service, e.addresses(ctx, up), nil, idsOf(bt.old))
	case StepDrain:
		if err := e.reloadProxies(ctx, p, s.Service, nil, nil, idsOf(bt.old)); err != nil {
			return err
		}
		e.drain(ctx, s.Service, p.drainProxies(s.Service), bt.old)
	case StepStop:
		return e.stopOld(ctx, bt, s.old)
	case StepForget:
		e.mu.Lock()
		gone := bt.gone
		e.mu.Unlock()
		if len(gone) > 0 {
			return e.reloadProxies(ctx, p, s.Service, nil, gone, nil)
		}
	case StepRemove:
		c := s.old
		e.say(s.Service, "removing %s", c.Name)
		// Force: it was stopped; force only settles a race with a start
		// that was still under way.
		if err := e.Engine.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove %s: %w", c.Name, err)
		}
		c.State = stateRemoved
	case StepKeepAside:
		return e.rename(ctx, s.old, retiredName(*s.old))
	case StepRename:
		return e.rename(ctx, s.slot.Keep, bt.svc.canonical(p.Project, s.slot.Number))
	case StepDelay:
		return wait(ctx, s.wait)
	case StepRemoveNetwork:
		e.say("", "removing network %s", s.Target)
		if err := e.Engine.NetworkRemove(ctx, s.Target); err != nil && !errdefs.IsNotFound(err) {
			// A network still used by something outside the plan is left
			// in place: that is not worth failing a release for.
			e.say("", "network %s kept: %v", s.Target, err)
		}
	case StepMonitor:
		var ids []string
		for _, st := range e.Started() {
			ids = append(ids, st.ID)
		}
		if len(ids) == 0 {
			return nil
		}
		e.say("", "monitoring %d new container(s) for %s", len(ids), s.wait)
		if err := e.Monitor.Monitor(ctx, ids, s.wait); err != nil {
			return fmt.Errorf("monitor window: %w", err)
		}
	default:
		return fmt.Errorf("step %d: unknown kind %q", s.ID, s.Kind)
	}
	return nil
}

// bringUp creates (or starts again) the container of a slot and returns
// its ID, or "" when nothing had to start.
func (e *Executor) bringUp(ctx context.Context, p *Plan, s ServicePlan, sl Slot) (string, error) {
	name := s.canonical(p.Project, sl.Number)
	switch {
	case sl.Create:
		// The replaced container is off the name already: moved aside
		// (start-first), or retired (stop-first), by the steps before.
		if sl.Replace != nil {
			e.say(s.Name, "creating %s to replace %s (%s)", name, sl.Replace.Name, sl.Reason)
		} else {
			e.say(s.Name, "creating %s (%s)", name, sl.Reason)
		}
		id, err := e.createAndStart(ctx, p.Project, s.Spec, sl.Number)
		if err != nil {
			return "", err
		}
		e.track(id, name, s)
		return id, nil
	case sl.Keep != nil && !sl.Keep.Running():
		e.say(s.Name, "starting %s (%s)", sl.Keep.Name, sl.Reason)
		if err := e.Engine.ContainerStart(ctx, sl.Keep.ID, container.StartOptions{}); err != nil {
			return "", fmt.Errorf("start %s: %w", sl.Keep.Name, err)
		}
		e.track(sl.Keep.ID, sl.Keep.Name, s)
		return sl.Keep.ID, nil
	}
	return "", nil
}

func (e *Executor) track(id, name string, s ServicePlan) {
	monitor := shapeOf(s.Spec, e.Rollback).monitor
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = append(e.started, Started{ID: id, Name: name, Service: s.Name, Monitor: monitor})
}

// gate waits, in parallel, until every container is ready.
func (e *Executor) gate(ctx context.Context, s ServicePlan, ids []string) error {
	if e.Health == nil || len(ids) == 0 {
		return nil
	}
	e.say(s.Name, "waiting for %d container(s) to be ready", len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.Health.Gate(ctx, id, s.Spec.Policy.Health)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	e.say(s.Name, "ready")
	return nil
}

// stopOld stops a retired container with the service's grace period and
// signal, noting its addresses first so the proxies can forget them. A
// service no longer in the file is stopped with its containers' own grace
// period, which they carry from the file that created them. Everything
// not exited is stopped, "created" included: a start may still be on its
// way to the engine (agentd died after sending it).
func (e *Executor) stopOld(ctx context.Context, bt *batch, c *Container) error {
	var grace *time.Duration
	if bt.svc.Spec != nil {
		grace = &bt.svc.Spec.StopTimeout
	}
	gone := e.addresses(ctx, []string{c.ID})
	e.mu.Lock()
	if bt.gone == nil {
		bt.gone = addrs{}
	}
	for net, ips := range gone {
		bt.gone[net] = append(bt.gone[net], ips...)
	}
	e.mu.Unlock()
	if grace != nil {
		e.say(bt.svc.Name, "stopping %s (grace %s)", c.Name, *grace)
	} else {
		e.say(bt.svc.Name, "stopping %s (with its own grace period)", c.Name)
	}
	return e.stop(ctx, bt.svc.Name, c, grace)
}

// stateRemoved marks, in a plan being applied, a container that is gone.
const stateRemoved = "removed"

// retirees lists the containers a batch retires.
func retirees(batch []Slot) []*Container {
	var old []*Container
	for _, sl := range batch {
		if sl.Replace != nil {
			old = append(old, sl.Replace)
		}
		for i := range sl.Retire {
			old = append(old, &sl.Retire[i])
		}
	}
	return old
}

// idsOf returns the IDs of containers.
func idsOf(cs []*Container) []string {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}

// retiredMark is in the name of every container kept aside by a release.
const retiredMark = "-retired-"

func retiredName(c Container) string {
	return c.Name + retiredMark + c.ID[:min(8, len(c.ID))]
}

func (e *Executor) rename(ctx context.Context, c *Container, name string) error {
	if err := e.Engine.ContainerRename(ctx, c.ID, name); err != nil {
		return fmt.Errorf("rename %s to %s: %w", c.Name, name, err)
	}
	c.Name = name
	return nil
}

// reloadProxies validates and reloads, inside every running container of
// each proxy service that fronts service, the proxy's configuration. A
// proxy with an upstreams file gets it written first, listing the
// service's running containers except those in out (and is left alone if
// that changes nothing). Any other proxy learns its upstreams from the
// service's name when it reloads: it is reloaded once it resolves that
// name to the addresses in want and none of those in gone.
func (e *Executor) reloadProxies(ctx context.Context, p *Plan, service string, want, gone addrs, out []string) error {
	for _, proxy := range p.proxies[service] {
		unlock := e.lockProxy(proxy)
		err := e.reloadProxy(ctx, p, proxy, service, want, gone, out)
		unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// lockProxy takes the lock of a proxy service and returns its release.
func (e *Executor) lockProxy(proxy string) func() {
	e.mu.Lock()
	if e.proxyMu == nil {
		e.proxyMu = map[string]*sync.Mutex{}
	}
	m := e.proxyMu[proxy]
	if m == nil {
		m = &sync.Mutex{}
		e.proxyMu[proxy] = m
	}
	e.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// reloadProxy reloads the containers of one proxy service for service.
func (e *Executor) reloadProxy(ctx context.Context, p *Plan, proxy, service string, want, gone addrs, out []string) error {
	{
		spec := p.spec(proxy)
		px := spec.Policy.Proxy
		list, err := e.running(ctx, p.Project, proxy)
		if err != nil {
			return fmt.Errorf("reload proxy %s: %w", proxy, err)
		}
		counted := false
		for _, c := range list {
			name := strings.TrimPrefix(firstName(c.Names), "/")
			var content string
			if px.lists() {
				var nets []string
				if c.NetworkSettings != nil {
					nets = slices.Sorted(maps.Keys(c.NetworkSettings.Networks))
				}
				var wrote bool
				if content, wrote, err = e.writeUpstreams(ctx, p.Project, px, c.ID, nets, out); err != nil {
					return fmt.Errorf("reload proxy %s: %w", name, err)
				}
				if !wrote {
					continue
				}
			} else if err := e.awaitResolver(ctx, c.ID, name, service, want.on(c), gone.on(c)); err != nil {
				return fmt.Errorf("reload proxy %s: %w", name, err)
			}
			for _, step := range [][]string{px.Validate, px.Reload} {
				code, msg, err := healthcheck.Exec(ctx, e.Engine, c.ID, step)
				if err != nil {
					return fmt.Errorf("reload proxy %s: %s: %w", name, strings.Join(step, " "), err)
				}
				if code != 0 {
					return fmt.Errorf("reload proxy %s: %s exited %d: %s", name, strings.Join(step, " "), code, strings.TrimSpace(msg))
				}
			}
			e.wrote(c.ID, content)
			if !counted {
				counted = true
				e.countReload(proxy)
			}
			e.say(proxy, "reloaded %s (for %s)", name, service)
		}
	}
	return nil
}

// countReload counts a round of reloads of a proxy service.
func (e *Executor) countReload(proxy string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.reloads == nil {
		e.reloads = map[string]int{}
	}
	e.reloads[proxy]++
}

// Reloads returns, by proxy service, how many times its containers were
// reloaded so far (a round that reloads every container of the proxy
// counts once).
func (e *Executor) Reloads() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.reloads)
}

// sayReloads tells how many times each proxy was reloaded: every reload
// closes the proxy's idle keep-alive connections to its clients, and a
// client that sends a request on one at that instant may see it fail.
func (e *Executor) sayReloads() {
	reloads := e.Reloads()
	for _, proxy := range slices.Sorted(maps.Keys(reloads)) {
		n := reloads[proxy]
		times := "times"
		if n == 1 {
			times = "time"
		}
		e.say(proxy, "reloaded %d %s in this rollout", n, times)
	}
}

// resolverWait bounds how long a proxy's view of a service name may lag.
const resolverWait = 10 * time.Second

// awaitResolver polls, with getent inside the proxy container, the
// addresses the service's name resolves to there (Docker's embedded DNS
// updates them shortly after a container starts or stops) until every
// address of want is among them and none of gone. A proxy image without
// getent cannot be asked: the reload then goes ahead, and that is said. If
// a new container is still missing at the deadline, that is an error (the
// proxy would not send it traffic); an old one still listed is only
// reported.
func (e *Executor) awaitResolver(ctx context.Context, id, name, service string, want, gone []string) error {
	if len(want)+len(gone) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, resolverWait)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var got []string
	for {
		code, out, err := healthcheck.Exec(ctx, e.Engine, id, []string{"getent", "ahostsv4", service})
		switch {
		case err != nil && ctx.Err() == nil:
			e.say(service, "cannot ask %s how it resolves %s (%v): reloading it anyway", name, service, err)
			return nil
		case code == 126 || code == 127:
			e.say(service, "%s has no getent to check how it resolves %s: reloading it anyway", name, service)
			return nil
		}
		got = resolved(out)
		if containsAll(got, want) && !containsAny(got, gone) {
			return nil
		}
		select {
		case <-ctx.Done():
			if !containsAll(got, want) {
				return fmt.Errorf("after %s, %s still resolves %s to %v, without the new %v", resolverWait, name, service, got, want)
			}
			e.say(service, "after %s %s still resolves %s to %v, including the stopped %v: reloading it anyway", resolverWait, name, service, got, gone)
			return nil
		case <-tick.C:
		}
	}
}

// resolved reads the addresses out of getent ahostsv4 output.
func resolved(out string) []string {
	var ips []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && !slices.Contains(ips, f[0]) {
			ips = append(ips, f[0])
		}
	}
	return ips
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func containsAny(have, any []string) bool {
	for _, a := range any {
		if slices.Contains(have, a) {
			return true
		}
	}
	return false
}

// addrs are container addresses by network name.
type addrs map[string][]string

// on returns the addresses on the networks a container is attached to.
func (a addrs) on(c container.Summary) []string {
	var out []string
	if c.NetworkSettings == nil {
		return nil
	}
	for net := range c.NetworkSettings.Networks {
		out = append(out, a[net]...)
	}
	return out
}

// addresses returns the IPv4 addresses of containers, by network; a
// container that cannot be inspected adds none.
func (e *Executor) addresses(ctx context.Context, ids []string) addrs {
	out := addrs{}
	for _, id := range ids {
		in, err := e.Engine.ContainerInspect(ctx, id)
		if err != nil || in.NetworkSettings == nil {
			continue
		}
		for net, n := range in.NetworkSettings.Networks {
			if n != nil && n.IPAddress != "" {
				out[net] = append(out[net], n.IPAddress)
			}
		}
	}
	return out
}

// running lists the running containers of a service.
func (e *Executor) running(ctx context.Context, project, service string) ([]container.Summary, error) {
	list, err := e.Engine.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(
		filters.Arg("label", LabelProject+"="+project),
		filters.Arg("label", LabelService+"="+service),
		filters.Arg("status", "running"),
	)})
	if err != nil {
		return nil, fmt.Errorf("list containers of %s: %w", service, err)
	}
	return list, nil
}

func firstName(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// createAndStart creates replica n of a service, joins its other networks
// and starts it. On failure the half-made container is removed.
func (e *Executor) createAndStart(ctx context.Context, project string, spec *ServiceSpec, n int) (id string, err error) {
	name := spec.containerName(project, n)
	cfg := spec.Config
	cfg.Labels = maps.Clone(spec.Config.Labels)
	cfg.Labels[LabelNumber] = strconv.Itoa(n)
	cfg.Labels[LabelConfigHash] = spec.Hash
	// How the image was named is recorded but is no part of the hash: the
	// same digest by another name is the same container.
	cfg.Labels[LabelImageRef] = spec.Image.Ref
	if e.Release != "" {
		cfg.Labels[LabelRelease] = e.Release
	}
	var prepare func(id string) error
	if px := spec.Policy.Proxy; px != nil && px.lists() {
		// A new proxy container starts with the upstreams as they are,
		// not with whatever file its image holds.
		var nets []string
		for _, ep := range spec.Networks {
			nets = append(nets, ep.Network)
		}
		slices.Sort(nets)
		prepare = func(id string) error {
			content, _, err := e.writeUpstreams(ctx, project, px, id, nets, nil)
			if err == nil {
				e.wrote(id, content)
			}
			return err
		}
	}
	return e.createShielded(ctx, spec, name, &cfg, spec.Host, prepare)
}

// create creates a container, joins its other networks, runs prepare (if
// any) on it and starts it.
func (e *Executor) create(ctx context.Context, name string, cfg *container.Config, host container.HostConfig, nets []EndpointSpec, prepare func(id string) error) (id string, err error) {
	// One container is created and started at a time, whichever services
	// roll out at once: the engine's work for each (namespaces, mounts,
	// network endpoints, iptables) runs outside any container's CPU
	// weight, and four at once took the CPU from the serving containers
	// for a second on two cores.
	e.createMu.Lock()
	defer e.createMu.Unlock()
	var netCfg *network.NetworkingConfig
	if len(nets) > 0 {
		netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			nets[0].Network: {Aliases: nets[0].Aliases},
		}}
	}
	created, err := e.Engine.ContainerCreate(ctx, cfg, &host, netCfg, nil, name)
	if err != nil {
		return "", fmt.Errorf("create %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			// Use a fresh context: the request's may be what failed.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			rmErr := e.Engine.ContainerRemove(cctx, created.ID, container.RemoveOptions{Force: true})
			err = errors.Join(err, rmErr)
		}
	}()
	for _, ep := range nets[min(1, len(nets)):] {
		if err := e.Engine.NetworkConnect(ctx, ep.Network, created.ID, &network.EndpointSettings{Aliases: ep.Aliases}); err != nil {
			return "", fmt.Errorf("connect %s to %s: %w", name, ep.Network, err)
		}
	}
	if prepare != nil {
		if err := prepare(created.ID); err != nil {
			return "", fmt.Errorf("prepare %s: %w", name, err)
		}
	}
	if err := e.Engine.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	return created.ID, nil
}

// wait sleeps for d or until ctx ends: the update_config delay between
// batches, which is a wait for time itself.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
