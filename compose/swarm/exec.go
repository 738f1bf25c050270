package swarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/healthcheck"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/errdefs"
)

// DefaultPoll is how often a gate and the monitor look at a service's
// update and tasks.
const DefaultPoll = 250 * time.Millisecond

// run carries out a graph made from p: each step starts once the steps it
// waits for are done. A failure in a service whose failure_action is
// continue is said and skips that service's remaining steps; any other
// failure ends the run: steps not begun are skipped, those under way
// cancelled. onStep, when set, is told of every step that ends.
func (l *Life) run(ctx context.Context, p *Plan, g *compose.Graph, onStep func(compose.StepResult)) error {
	var recMu sync.Mutex
	record := func(s *compose.Step, began time.Time, state compose.StepState, err error) {
		if onStep == nil {
			return
		}
		r := compose.StepResult{Step: *s, State: state, Started: began}
		if !began.IsZero() {
			r.Took = time.Since(began)
		}
		if err != nil {
			r.Error = err.Error()
		}
		recMu.Lock()
		defer recMu.Unlock()
		onStep(r)
	}
	r := &runner{l: l, p: p, started: map[string]time.Time{}}
	return compose.GraphRun{
		Step:   r.step,
		Failed: func(ctx context.Context, s *compose.Step, err error) (error, bool) { return l.failed(ctx, p, s, err) },
		Record: record,
		Say:    l.say,
	}.Run(ctx, g)
}

// failed is the error a run ends with when step s failed with err; goOn
// true: the run goes on without s's service (failure_action: continue).
func (l *Life) failed(ctx context.Context, p *Plan, s *compose.Step, err error) (end error, goOn bool) {
	var spec *compose.ServiceSpec
	if sp := p.service(s.Service); sp != nil {
		spec = sp.Spec
	}
	switch {
	case s.Service == "":
		return err, false
	case s.Kind == compose.StepHook:
		// The hook runner's error may say both already (Hooks.Run's
		// does).
		switch prefix := "service " + s.Service + ": "; {
		case errors.Is(err, compose.ErrHook) && strings.HasPrefix(err.Error(), prefix):
			return err, false
		case errors.Is(err, compose.ErrHook):
			return fmt.Errorf("service %s: %w", s.Service, err), false
		default:
			return fmt.Errorf("service %s: %w: %w", s.Service, compose.ErrHook, err), false
		}
	case spec != nil && spec.Policy.FailureAction == compose.FailContinue && ctx.Err() == nil:
		return nil, true
	case spec != nil && spec.Policy.FailureAction == compose.FailPause && !p.Rollback:
		return fmt.Errorf("service %s: %w: %w", s.Service, compose.ErrPaused, err), false
	default:
		return fmt.Errorf("service %s: %w", s.Service, err), false
	}
}

// runner is the state of one run.
type runner struct {
	l *Life
	p *Plan
	// started is when each changed service's gate passed: the monitor
	// watches its new tasks from then.
	mu      sync.Mutex
	started map[string]time.Time
}

func (r *runner) step(ctx context.Context, s *compose.Step) error {
	l, p := r.l, r.p
	switch s.Kind {
	case compose.StepNetwork:
		for _, n := range p.CreateNetworks {
			if n.Name == s.Target {
				return l.createNetwork(ctx, n)
			}
		}
		return fmt.Errorf("step %d: no network %s in the plan", s.ID, s.Target)
	case compose.StepHook:
		sp := p.service(s.Service)
		if sp == nil {
			return fmt.Errorf("step %d: no service %s in the plan", s.ID, s.Service)
		}
		if l.Hooks == nil {
			return errors.New("run pre-deploy hooks: no hook runner")
		}
		l.say(s.Service, "running %d pre-deploy hook(s)", len(sp.Spec.Policy.PreDeploy))
		return l.Hooks.Run(ctx, sp.Spec, "pre-deploy", sp.Spec.Policy.PreDeploy)
	case StepUpdateService:
		sp := p.service(s.Service)
		if sp == nil {
			return fmt.Errorf("step %d: no service %s in the plan", s.ID, s.Service)
		}
		return l.deploy(ctx, *sp, p.Rollback)
	case compose.StepGate:
		sp := p.service(s.Service)
		if sp == nil {
			return fmt.Errorf("step %d: no service %s in the plan", s.ID, s.Service)
		}
		if err := l.gate(ctx, p.Desired, *sp); err != nil {
			return err
		}
		r.mu.Lock()
		r.started[sp.Name] = time.Now()
		r.mu.Unlock()
		return nil
	case StepRemoveService:
		for _, sp := range p.RemoveServices {
			if sp.Service == s.Target {
				return l.removeService(ctx, sp.Name, sp.Service, sp.ID)
			}
		}
		return fmt.Errorf("step %d: no service %s to remove in the plan", s.ID, s.Target)
	case compose.StepMonitor:
		r.mu.Lock()
		started := maps.Clone(r.started)
		r.mu.Unlock()
		return l.monitor(ctx, p, started, p.Window())
	default:
		return fmt.Errorf("step %d: unknown kind %q", s.ID, s.Kind)
	}
}

// createNetwork creates a stack network; one already there is fine.
func (l *Life) createNetwork(ctx context.Context, n compose.NetworkSpec) error {
	l.say("", "creating network %s", n.Name)
	if _, err := l.Engine.NetworkCreate(ctx, n.Name, n.Options); err != nil && !errdefs.IsConflict(err) {
		return fmt.Errorf("create network %s: %w", n.Name, err)
	}
	return nil
}

// auth returns the registry credentials for a service's image.
func (l *Life) auth(ctx context.Context, spec *compose.ServiceSpec) (string, error) {
	if l.Auth == nil {
		return "", nil
	}
	ref := spec.Image.Ref
	if ref == "" {
		ref = spec.Image.Pinned
	}
	a, err := l.Auth(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("registry credentials for %s: %w", ref, err)
	}
	return a, nil
}

// serviceSpec is what a service is created or updated with: the desired
// spec with the release's label; in a rollback, its rollback_config as
// the update's.
func (l *Life) serviceSpec(spec *compose.ServiceSpec, rollback bool) (swarm.ServiceSpec, error) {
	if spec.Swarm == nil {
		return swarm.ServiceSpec{}, errors.New("no Swarm spec (the release was not converted for a Swarm)")
	}
	out := *spec.Swarm
	out.Labels = maps.Clone(spec.Swarm.Labels)
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	if l.Release != "" {
		out.Labels[LabelRelease] = l.Release
	}
	if rollback && spec.Swarm.RollbackConfig != nil {
		rc := *spec.Swarm.RollbackConfig
		out.UpdateConfig = &rc
	}
	return out, nil
}

// deploy creates a service, or updates it to its new spec (Swarm then
// replaces its tasks with the spec's update_config).
func (l *Life) deploy(ctx context.Context, sp ServicePlan, rollback bool) error {
	spec, err := l.serviceSpec(sp.Spec, rollback)
	if err != nil {
		return err
	}
	auth, err := l.auth(ctx, sp.Spec)
	if err != nil {
		return err
	}
	if sp.Action == Create {
		l.say(sp.Name, "creating service %s (%s)", sp.Service, sp.Reason)
		if _, err := l.Engine.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{EncodedRegistryAuth: auth}); err != nil {
			return fmt.Errorf("create service %s: %w", sp.Service, err)
		}
		return nil
	}
	l.say(sp.Name, "updating service %s (%s)", sp.Service, sp.Reason)
	// The version moves as Swarm records the progress of an update: read
	// it just before, and again if another write came in between.
	for attempt := 0; ; attempt++ {
		cur, _, err := l.Engine.ServiceInspectWithRaw(ctx, sp.Service, swarm.ServiceInspectOptions{})
		if err != nil {
			return fmt.Errorf("update service %s: %w", sp.Service, err)
		}
		resp, err := l.Engine.ServiceUpdate(ctx, cur.ID, cur.Version, spec, swarm.ServiceUpdateOptions{EncodedRegistryAuth: auth})
		if err != nil {
			if attempt < 3 && strings.Contains(err.Error(), "out of sequence") {
				continue
			}
			return fmt.Errorf("update service %s: %w", sp.Service, err)
		}
		for _, w := range resp.Warnings {
			l.say(sp.Name, "warning: %s", w)
		}
		return nil
	}
}

// removeService removes a service of the stack.
func (l *Life) removeService(ctx context.Context, name, service, id string) error {
	l.say(name, "removing service %s", service)
	if id == "" {
		id = service
	}
	if err := l.Engine.ServiceRemove(ctx, id); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove service %s: %w", service, err)
	}
	return nil
}

func (l *Life) poll() time.Duration {
	if l.Poll > 0 {
		return l.Poll
	}
	return DefaultPoll
}

// tasks lists a service's tasks.
func (l *Life) tasks(ctx context.Context, service string) ([]swarm.Task, error) {
	ts, err := l.Engine.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", service))})
	if err != nil {
		return nil, fmt.Errorf("list the tasks of %s: %w", service, err)
	}
	return ts, nil
}

// taskHash is the spec hash a task runs.
func taskHash(t swarm.Task) string {
	if t.Spec.ContainerSpec == nil {
		return ""
	}
	return t.Spec.ContainerSpec.Labels[LabelSpecHash]
}

// taskFailed reports whether a task ended in failure: failed, rejected,
// or shut down with an error.
func taskFailed(t swarm.Task) bool {
	switch t.Status.State {
	case swarm.TaskStateFailed, swarm.TaskStateRejected:
		return true
	case swarm.TaskStateShutdown, swarm.TaskStateOrphaned:
		return t.Status.Err != ""
	}
	return false
}

// describeTask names a task and how it ended, for an error.
func describeTask(t swarm.Task, nodes map[string]swarm.Node) string {
	s := fmt.Sprintf("task %s (slot %d", shortID(t.ID), t.Slot)
	if n, ok := nodes[t.NodeID]; ok && n.Description.Hostname != "" {
		s += " on " + n.Description.Hostname
	}
	s += ") " + string(t.Status.State)
	if t.Status.Err != "" {
		s += ": " + t.Status.Err
	} else if t.Status.Message != "" {
		s += ": " + t.Status.Message
	}
	if cs := t.Status.ContainerStatus; cs != nil && cs.ExitCode != 0 {
		s += " (exit code " + strconv.Itoa(cs.ExitCode) + ")"
	}
	return s
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// allowedFailures is how many times a slot's task may fail before the
// release does: the restart policy's max_attempts; none with condition
// none; -1 (no bound but the gate's limit) otherwise.
func allowedFailures(spec *swarm.ServiceSpec) int {
	rp := spec.TaskTemplate.RestartPolicy
	switch {
	case rp == nil:
		return -1
	case rp.Condition == swarm.RestartPolicyConditionNone:
		return 0
	case rp.MaxAttempts != nil && *rp.MaxAttempts > 0:
		return int(*rp.MaxAttempts)
	}
	return -1
}

// nodes returns the swarm's nodes by ID.
func (l *Life) nodes(ctx context.Context) (map[string]swarm.Node, error) {
	ns, err := l.Engine.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := make(map[string]swarm.Node, len(ns))
	for _, n := range ns {
		out[n.ID] = n
	}
	return out, nil
}

// gate waits until a service's update is complete and every one of its
// tasks runs the new spec (healthy: Swarm reports a task with a Docker
// healthcheck running only once it is) and passes the x-berth.health
// probe, within the service's gate limit. It fails at once on a paused
// or rolled back update, or a new task failing more often than its
// restart policy allows.
func (l *Life) gate(ctx context.Context, desired *compose.Desired, sp ServicePlan) error {
	spec := sp.Spec
	limit := spec.Policy.Health.Timeout
	if limit <= 0 {
		limit = compose.DefaultHealthTimeout
	}
	g := &gating{l: l, desired: desired, sp: sp, hash: specHash(spec), probes: map[string]*probeState{}}
	if err := g.prepareProbes(ctx); err != nil {
		return err
	}
	l.say(sp.Name, "waiting for the tasks of %s to run %s", sp.Service, shortHash(g.hash))
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	ticker := time.NewTicker(l.poll())
	defer ticker.Stop()
	for {
		ready, err := g.check(ctx)
		if err != nil {
			return err
		}
		if ready {
			l.say(sp.Name, "%s is ready", sp.Service)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("not ready within %s: %s", limit, g.waiting)
		case <-ticker.C:
		}
	}
}

func shortHash(h string) string {
	if h == "" {
		return "the new spec"
	}
	return "spec " + h
}

// gating is the state of one service's gate.
type gating struct {
	l       *Life
	desired *compose.Desired
	sp      ServicePlan
	hash    string
	// waiting says what the gate last waited for.
	waiting string
	running []string // IDs of the running tasks, last seen
	synced  bool
	nodes   map[string]swarm.Node
	probes  map[string]*probeState // by task ID
	prober  *probe
}

// probe is a service's x-berth.health http or tcp probe, reached on a
// task's node at the service's host-mode published port.
type probe struct {
	http      *healthcheck.HTTPProbe
	port      uint32 // published on the node
	interval  time.Duration
	perAttemp time.Duration
	client    *http.Client
}

type probeState struct {
	ok   bool
	last time.Time
	res  string
}

// prepareProbes finds where a service's http/tcp probe reaches its tasks.
func (g *gating) prepareProbes(ctx context.Context) error {
	h := g.sp.Spec.Policy.Health
	if h.HTTP == nil && h.TCP == nil {
		return nil
	}
	target := 0
	if h.HTTP != nil {
		target = h.HTTP.Port
	} else {
		target = h.TCP.Port
	}
	pr := &probe{http: h.HTTP, interval: h.Interval}
	if pr.interval <= 0 {
		pr.interval = time.Second
	}
	pr.perAttemp = min(max(pr.interval, 500*time.Millisecond), 2*time.Second)
	if sw := g.sp.Spec.Swarm; sw != nil && sw.EndpointSpec != nil {
		for _, p := range sw.EndpointSpec.Ports {
			if p.PublishMode == swarm.PortConfigPublishModeHost && int(p.TargetPort) == target && p.PublishedPort != 0 &&
				(p.Protocol == "" || p.Protocol == swarm.PortConfigProtocolTCP) {
				pr.port = p.PublishedPort
			}
		}
	}
	if pr.port == 0 {
		return fmt.Errorf("x-berth.health probes port %d, which the service does not publish in host mode", target)
	}
	pr.client = &http.Client{
		Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	g.prober = pr
	nodes, err := g.l.nodes(ctx)
	if err != nil {
		return err
	}
	g.nodes = nodes
	return nil
}

// check looks once at the service's update and tasks.
func (g *gating) check(ctx context.Context) (bool, error) {
	l, sp := g.l, g.sp
	svc, _, err := l.Engine.ServiceInspectWithRaw(ctx, sp.Service, swarm.ServiceInspectOptions{})
	if err != nil {
		return false, fmt.Errorf("inspect service %s: %w", sp.Service, err)
	}
	if us := svc.UpdateStatus; us != nil {
		switch us.State {
		case swarm.UpdateStatePaused:
			return false, fmt.Errorf("Swarm paused the update of %s: %s", sp.Service, us.Message)
		case swarm.UpdateStateRollbackStarted, swarm.UpdateStateRollbackPaused, swarm.UpdateStateRollbackCompleted:
			return false, fmt.Errorf("Swarm rolled the update of %s back (%s): %s", sp.Service, us.State, us.Message)
		}
	}
	tasks, err := l.tasks(ctx, sp.Service)
	if err != nil {
		return false, err
	}
	slices.SortFunc(tasks, func(a, b swarm.Task) int { return a.Status.Timestamp.Compare(b.Status.Timestamp) })
	allowed := allowedFailures(&svc.Spec)
	failures := map[string]int{} // by slot (or node, for a global service)
	var lastFailure *swarm.Task
	for i, t := range tasks {
		if taskHash(t) != g.hash || !taskFailed(t) {
			continue
		}
		key := "node " + t.NodeID
		if t.Slot != 0 {
			key = "slot " + strconv.Itoa(t.Slot)
		}
		failures[key]++
		lastFailure = &tasks[i]
		if allowed >= 0 && failures[key] > allowed {
			return false, fmt.Errorf("%s of the new spec failed (%d time(s), the restart policy allows %d)", describeTask(t, g.nodes), failures[key], allowed)
		}
	}
	var want, current, running int
	var runningIDs []string
	notReady := ""
	for _, t := range tasks {
		if t.DesiredState != swarm.TaskStateRunning {
			continue
		}
		current++
		if t.Status.State == swarm.TaskStateRunning {
			runningIDs = append(runningIDs, t.ID)
		}
		if taskHash(t) == g.hash && t.Status.State == swarm.TaskStateRunning {
			running++
		} else if notReady == "" {
			notReady = fmt.Sprintf("task %s (slot %d) is %s", shortID(t.ID), t.Slot, t.Status.State)
			if taskHash(t) != g.hash {
				notReady += " on the old spec"
			}
		}
	}
	if m := svc.Spec.Mode.Replicated; m != nil && m.Replicas != nil {
		want = int(*m.Replicas)
	} else {
		want = max(current, 1)
	}
	slices.Sort(runningIDs)
	if !g.synced || !slices.Equal(runningIDs, g.running) {
		g.running, g.synced = runningIDs, true
		if l.Proxies != nil {
			if err := l.Proxies.Sync(ctx, g.desired, sp.Name); err != nil {
				return false, fmt.Errorf("sync the proxies in front of %s: %w", sp.Name, err)
			}
		}
	}
	g.waiting = fmt.Sprintf("%d of %d task(s) running the new spec", running, want)
	if notReady != "" {
		g.waiting += "; " + notReady
	}
	if lastFailure != nil {
		g.waiting += "; last failure: " + describeTask(*lastFailure, g.nodes)
	}
	if us := svc.UpdateStatus; us != nil && us.State != swarm.UpdateStateCompleted {
		g.waiting += fmt.Sprintf("; update %s", us.State)
		if us.Message != "" {
			g.waiting += ": " + us.Message
		}
		return false, nil
	}
	if running != want || current != want {
		return false, nil
	}
	if g.prober == nil {
		return true, nil
	}
	return g.probeAll(ctx, tasks), nil
}

// probeAll attempts the probe of every running task of the new spec that
// has not passed it, each once its interval has passed; it reports
// whether all have.
func (g *gating) probeAll(ctx context.Context, tasks []swarm.Task) bool {
	all := true
	for _, t := range tasks {
		if t.DesiredState != swarm.TaskStateRunning || taskHash(t) != g.hash {
			continue
		}
		st := g.probes[t.ID]
		if st == nil {
			st = &probeState{}
			g.probes[t.ID] = st
		}
		if st.ok {
			continue
		}
		all = false
		if time.Since(st.last) < g.prober.interval {
			continue
		}
		st.last = time.Now()
		addr, err := g.nodeAddr(ctx, t.NodeID)
		if err != nil {
			st.res = err.Error()
			continue
		}
		st.ok, st.res = g.prober.attempt(ctx, net.JoinHostPort(addr, strconv.Itoa(int(g.prober.port))))
	}
	if all {
		return true
	}
	for _, t := range tasks {
		if st := g.probes[t.ID]; st != nil && !st.ok && t.DesiredState == swarm.TaskStateRunning && taskHash(t) == g.hash {
			if st.res == "" {
				st.res = "no answer yet"
			}
			g.waiting += "; probe of task " + shortID(t.ID) + ": " + st.res
			return false
		}
	}
	return true
}

// nodeAddr is the address of a node, as the swarm knows it.
func (g *gating) nodeAddr(ctx context.Context, id string) (string, error) {
	n, ok := g.nodes[id]
	if !ok {
		nodes, err := g.l.nodes(ctx)
		if err != nil {
			return "", err
		}
		g.nodes = nodes
		if n, ok = nodes[id]; !ok {
			return "", fmt.Errorf("node %s is not in the swarm", shortID(id))
		}
	}
	if n.Status.Addr == "" {
		return "", fmt.Errorf("node %s has no address", n.Description.Hostname)
	}
	return n.Status.Addr, nil
}

// attempt tries the probe once against addr.
func (p *probe) attempt(ctx context.Context, addr string) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, p.perAttemp)
	defer cancel()
	if p.http == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return false, "TCP connect to " + addr + ": " + err.Error()
		}
		conn.Close()
		return true, "connected"
	}
	path := p.http.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	url := "http://" + addr + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	if p.http.Host != "" {
		req.Host = p.http.Host
	}
	req.Header.Set("User-Agent", "berth-healthcheck")
	resp, err := p.client.Do(req)
	if err != nil {
		return false, "GET " + url + ": " + err.Error()
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	ok := resp.StatusCode >= 200 && resp.StatusCode < 400
	if p.http.Status != 0 {
		ok = resp.StatusCode == p.http.Status
	}
	return ok, "GET " + url + " answered " + resp.Status
}

// monitor watches the new tasks of the services a run changed for the
// window: a task of a new spec that fails, or stops without Swarm asking
// it to, fails the release. started is when each service's gate passed.
func (l *Life) monitor(ctx context.Context, p *Plan, started map[string]time.Time, window time.Duration) error {
	if window <= 0 || len(started) == 0 {
		return nil
	}
	l.say("", "monitoring %d service(s) for %s", len(started), window)
	end := time.NewTimer(window)
	defer end.Stop()
	ticker := time.NewTicker(l.poll())
	defer ticker.Stop()
	for {
		for _, sp := range p.Services {
			since, ok := started[sp.Name]
			if !ok {
				continue
			}
			tasks, err := l.tasks(ctx, sp.Service)
			if err != nil {
				return err
			}
			for _, t := range tasks {
				if taskHash(t) != specHash(sp.Spec) || t.Status.Timestamp.Before(since) {
					continue
				}
				stopped := t.Status.State == swarm.TaskStateComplete || t.Status.State == swarm.TaskStateShutdown
				if taskFailed(t) || (stopped && t.DesiredState == swarm.TaskStateRunning) {
					return fmt.Errorf("service %s: monitor window: %s", sp.Name, describeTask(t, nil))
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-end.C:
			return nil
		case <-ticker.C:
		}
	}
}
