package compose

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// StepKind says what one step of a rollout does.
type StepKind string

// The kinds of step, in the order a start-first batch runs them.
const (
	StepNetwork       StepKind = "create-network" // create a project network
	StepVolume        StepKind = "create-volume"  // create a named volume
	StepHook          StepKind = "hook"           // run a pre-deploy hook on the new image
	StepAside         StepKind = "rename-aside"   // move a container off its proper name
	StepCreate        StepKind = "create"         // create and start a new container
	StepStart         StepKind = "start"          // start a kept container again
	StepGate          StepKind = "gate"           // wait until a batch's containers are ready
	StepSwitch        StepKind = "switch"         // write upstreams, validate, reload the proxies
	StepDrain         StepKind = "drain"          // switch the proxies away, wait for open connections
	StepStop          StepKind = "stop"           // stop with the grace period and signal
	StepForget        StepKind = "forget"         // reload the proxies without the stopped addresses
	StepRemove        StepKind = "remove"         // remove a stopped container
	StepKeepAside     StepKind = "keep-aside"     // rename a stopped container aside, kept for rollback
	StepRename        StepKind = "rename"         // give a kept container its proper name back
	StepDelay         StepKind = "delay"          // update_config.delay between batches
	StepRemoveNetwork StepKind = "remove-network" // remove a network no longer in the file
	StepMonitor       StepKind = "monitor"        // watch the new containers for the monitor window
)

// Step is one node of a rollout's graph. It runs once every step in After
// has finished.
type Step struct {
	ID      int      `json:"id"`
	Kind    StepKind `json:"kind"`
	Service string   `json:"service,omitempty"`
	// Target names what the step acts on: a container, a network, a batch.
	Target string `json:"target,omitempty"`
	After  []int  `json:"after,omitempty"`

	batch *batch
	slot  *Slot
	old   *Container
	hook  int
	wait  time.Duration
	net   *NetworkSpec
	vol   *VolumeSpec
}

// batch is the runtime state several steps of one batch share.
type batch struct {
	svc ServicePlan
	old []*Container
	// up and gone are filled as the batch runs: the containers its create
	// and start steps brought up, and the addresses its stops took away.
	up   []string
	gone addrs
	// retired is set once the batch's retire steps are in the graph (a
	// stop-first batch); aside holds the containers an aside step moves
	// off their names (start-first), which are then kept aside already.
	retired bool
	aside   map[*Container]bool
}

// Mode is how a graph rolls out: an update or a rollback, and what
// happens to retired containers.
type Mode struct {
	// Rollback uses each service's rollback_config and runs no hooks.
	Rollback bool
	// KeepRetired renames retired containers aside instead of removing
	// them, and leaves networks in place.
	KeepRetired bool
	// Monitor ends the graph with the monitor window.
	Monitor bool
}

// Graph is a plan as the steps that carry it out.
type Graph struct {
	Project string
	Steps   []*Step
}

// graphBuilder accumulates steps.
type graphBuilder struct {
	g    *Graph
	mode Mode
	p    *Plan
}

func (b *graphBuilder) add(s *Step, after ...int) *Step {
	s.ID = len(b.g.Steps) + 1
	for _, a := range after {
		if a != 0 && !slices.Contains(s.After, a) {
			s.After = append(s.After, a)
		}
	}
	slices.Sort(s.After)
	b.g.Steps = append(b.g.Steps, s)
	return s
}

// ids returns the IDs of steps.
func ids(steps []*Step) []int {
	out := make([]int, len(steps))
	for i, s := range steps {
		out[i] = s.ID
	}
	return out
}

// Graph compiles the plan into steps. Services run in parallel unless one
// depends on another (depends_on): a dependent starts once what it
// depends on has rolled out. Pre-deploy hooks run one at a time, after the
// services they depend on and before any other service changes, so a
// failing hook leaves every other service as it was. It is pure.
func (p *Plan) Graph(mode Mode) *Graph {
	b := &graphBuilder{g: &Graph{Project: p.Project}, mode: mode, p: p}
	var base []int
	for i := range p.CreateNetworks {
		base = append(base, b.add(&Step{Kind: StepNetwork, Target: p.CreateNetworks[i].Name, net: &p.CreateNetworks[i]}).ID)
	}
	for i := range p.CreateVolumes {
		base = append(base, b.add(&Step{Kind: StepVolume, Target: p.CreateVolumes[i].Name, vol: &p.CreateVolumes[i]}).ID)
	}

	// Which services run hooks, and which services those hooks need.
	specs := map[string]*ServiceSpec{}
	for _, s := range p.Services {
		specs[s.Name] = s.Spec
	}
	hooked := map[string]bool{}
	needed := map[string]bool{} // dependencies (transitive) of hooked services
	for _, s := range p.Services {
		if b.runsHooks(s) {
			hooked[s.Name] = true
			for d := range DependsOnAll(s.Name, specs) {
				needed[d] = true
			}
		}
	}

	last := map[string][]int{} // a service's final steps
	var lastHook int
	var all []int
	// First the services the hooks need, then the hooks, then the rest:
	// p.Services is in dependency order, so one pass of each suffices.
	roll := func(s ServicePlan) {
		after := slices.Clone(base)
		for _, d := range s.Spec.DependsOn {
			after = append(after, last[d]...)
		}
		if !needed[s.Name] {
			after = append(after, lastHook)
		}
		if s.changed(p.Project) {
			last[s.Name] = b.service(s, after)
			all = append(all, last[s.Name]...)
		} else {
			// An unchanged service passes its dependencies' order on.
			last[s.Name] = after
		}
	}
	for _, s := range p.Services {
		if needed[s.Name] {
			roll(s)
		}
	}
	for _, s := range p.Services {
		if !hooked[s.Name] {
			continue
		}
		for i := range s.Spec.Policy.PreDeploy {
			after := append(slices.Clone(base), lastHook)
			for d := range DependsOnAll(s.Name, specs) {
				after = append(after, last[d]...)
			}
			lastHook = b.add(&Step{Kind: StepHook, Service: s.Name, Target: strings.Join(s.Spec.Policy.PreDeploy[i].Command, " "), hook: i}, after...).ID
		}
	}
	for _, s := range p.Services {
		if !needed[s.Name] {
			roll(s)
		}
	}
	all = append(all, lastHook)
	// Services no longer in the file go once the rest is done.
	var gone []int
	for _, s := range p.RemoveServices {
		var old []*Container
		for _, sl := range s.Slots {
			for i := range sl.Retire {
				old = append(old, &sl.Retire[i])
			}
		}
		if len(old) == 0 {
			continue
		}
		gone = append(gone, b.retire(&batch{svc: s, old: old}, all)...)
	}
	all = append(all, gone...)
	if mode.Monitor {
		if window := b.window(); window > 0 {
			all = []int{b.add(&Step{Kind: StepMonitor, Target: window.String(), wait: window}, all...).ID}
		}
	}
	if !mode.KeepRetired {
		for _, n := range p.RemoveNetworks {
			b.add(&Step{Kind: StepRemoveNetwork, Target: n}, all...)
		}
	}
	return b.g
}

// window is the longest monitor of the services that start containers.
func (b *graphBuilder) window() time.Duration {
	var w time.Duration
	for _, s := range b.p.Services {
		if s.Spec != nil && s.hasStarts() {
			w = max(w, shapeOf(s.Spec, b.mode.Rollback).monitor)
		}
	}
	return w
}

// runsHooks reports whether a service's pre-deploy hooks run: on an
// update that creates containers.
func (b *graphBuilder) runsHooks(s ServicePlan) bool {
	if b.mode.Rollback || s.Spec == nil || len(s.Spec.Policy.PreDeploy) == 0 {
		return false
	}
	for _, sl := range s.Slots {
		if sl.Create {
			return true
		}
	}
	return false
}

// DependsOnAll returns the transitive dependencies of the service name
// among specs: what it depends on, what those depend on, and so on. A
// name missing from specs adds nothing; a cycle ends where it returns.
func DependsOnAll(name string, specs map[string]*ServiceSpec) map[string]bool {
	out := map[string]bool{}
	var walk func(string)
	walk = func(n string) {
		spec := specs[n]
		if spec == nil {
			return
		}
		for _, d := range spec.DependsOn {
			if !out[d] {
				out[d] = true
				walk(d)
			}
		}
	}
	walk(name)
	return out
}

// shape is the rollout shape of a service in this mode.
type shape struct {
	order       string
	parallelism int
	delay       time.Duration
	monitor     time.Duration
}

// shapeOf is a service's rollout shape: its update's, or its rollback's.
func shapeOf(spec *ServiceSpec, rollback bool) shape {
	pol := spec.Policy
	if rollback {
		return shape{pol.Rollback.Order, pol.Rollback.Parallelism, pol.Rollback.Delay, pol.Rollback.Monitor}
	}
	return shape{pol.Order, pol.Parallelism, pol.Delay, pol.Monitor}
}

// service adds the steps of one service after the given steps, batch by
// batch, and returns its final steps.
func (b *graphBuilder) service(s ServicePlan, after []int) []int {
	sh := shapeOf(s.Spec, b.mode.Rollback)
	var work, retireOnly []Slot
	for _, sl := range s.Slots {
		switch {
		case !sl.Changed(s.canonical(b.p.Project, sl.Number)):
		case sl.Create || sl.Keep != nil:
			work = append(work, sl)
		default:
			retireOnly = append(retireOnly, sl)
		}
	}
	par := sh.parallelism
	if par <= 0 || par > len(work) {
		par = max(len(work), 1)
	}
	prev := after
	for i := 0; i < len(work); i += par {
		if i > 0 && sh.delay > 0 {
			prev = []int{b.add(&Step{Kind: StepDelay, Service: s.Name, Target: sh.delay.String(), wait: sh.delay}, prev...).ID}
		}
		bt := &batch{svc: s, old: retirees(work[i:min(i+par, len(work))])}
		slots := work[i:min(i+par, len(work))]
		if sh.order == StopFirst {
			prev = b.retire(bt, prev)
			prev = b.restoreNames(bt, slots, prev)
			prev = b.up(bt, slots, prev)
		} else {
			prev = b.up(bt, slots, prev)
			prev = b.retire(bt, prev)
			prev = b.restoreNames(bt, slots, prev)
		}
	}
	if len(retireOnly) > 0 {
		prev = b.retire(&batch{svc: s, old: retirees(retireOnly)}, prev)
	}
	return prev
}

// up adds the steps that bring a batch up: creates and starts, the gate,
// and the switch of the proxies in front of the service.
func (b *graphBuilder) up(bt *batch, slots []Slot, after []int) []int {
	s := bt.svc
	var ups []*Step
	for i := range slots {
		sl := &slots[i]
		name := s.canonical(b.p.Project, sl.Number)
		switch {
		case sl.Create:
			prev := after
			if holder := nameHolder(sl, name); holder != nil && !bt.retired {
				if bt.aside == nil {
					bt.aside = map[*Container]bool{}
				}
				bt.aside[holder] = true
				prev = []int{b.add(&Step{Kind: StepAside, Service: s.Name, Target: holder.Name, batch: bt, slot: sl, old: holder}, after...).ID}
			}
			ups = append(ups, b.add(&Step{Kind: StepCreate, Service: s.Name, Target: name, batch: bt, slot: sl}, prev...))
		case sl.Keep != nil && !sl.Keep.Running():
			ups = append(ups, b.add(&Step{Kind: StepStart, Service: s.Name, Target: sl.Keep.Name, batch: bt, slot: sl}, after...))
		}
	}
	if len(ups) == 0 {
		return after
	}
	names := make([]string, len(ups))
	for i, u := range ups {
		names[i] = u.Target
	}
	gate := b.add(&Step{Kind: StepGate, Service: s.Name, Target: strings.Join(names, ", "), batch: bt}, ids(ups)...)
	if len(b.p.proxies[s.Name]) == 0 {
		return []int{gate.ID}
	}
	sw := b.add(&Step{Kind: StepSwitch, Service: s.Name, Target: strings.Join(b.p.proxies[s.Name], ", ") + " to " + strings.Join(names, ", "), batch: bt}, gate.ID)
	return []int{sw.ID}
}

// nameHolder is the container of a slot that holds its proper name (the
// one it replaces, or one it retires), or nil.
func nameHolder(sl *Slot, name string) *Container {
	if sl.Replace != nil && sl.Replace.Name == name {
		return sl.Replace
	}
	for i := range sl.Retire {
		if sl.Retire[i].Name == name {
			return &sl.Retire[i]
		}
	}
	return nil
}

// retire adds the steps that take a batch's old containers away: the
// drain, their stops, the proxies' reload without them, and their removal
// (or renaming aside).
func (b *graphBuilder) retire(bt *batch, after []int) []int {
	bt.retired = true
	if len(bt.old) == 0 {
		return after
	}
	s := bt.svc
	names := make([]string, len(bt.old))
	for i, c := range bt.old {
		names[i] = c.Name
	}
	if len(b.p.drainProxies(s.Name)) > 0 {
		after = []int{b.add(&Step{Kind: StepDrain, Service: s.Name, Target: strings.Join(names, ", "), batch: bt}, after...).ID}
	}
	var stops []*Step
	for _, c := range bt.old {
		if c.State == "exited" || c.State == "dead" {
			continue
		}
		stops = append(stops, b.add(&Step{Kind: StepStop, Service: s.Name, Target: c.Name, batch: bt, old: c}, after...))
	}
	if len(stops) > 0 {
		after = ids(stops)
		if len(b.p.proxies[s.Name]) > 0 {
			after = []int{b.add(&Step{Kind: StepForget, Service: s.Name, Target: strings.Join(b.p.proxies[s.Name], ", "), batch: bt}, after...).ID}
		}
	}
	var ends []*Step
	for _, c := range bt.old {
		kind := StepRemove
		if b.mode.KeepRetired {
			if strings.Contains(c.Name, retiredMark) || bt.aside[c] {
				continue
			}
			kind = StepKeepAside
		}
		ends = append(ends, b.add(&Step{Kind: kind, Service: s.Name, Target: c.Name, batch: bt, old: c}, after...))
	}
	if len(ends) == 0 {
		return after
	}
	return ids(ends)
}

// restoreNames adds the renames that give kept containers their proper
// names back.
func (b *graphBuilder) restoreNames(bt *batch, slots []Slot, after []int) []int {
	var out []*Step
	for i := range slots {
		sl := &slots[i]
		name := bt.svc.canonical(b.p.Project, sl.Number)
		if sl.Keep != nil && sl.Keep.Name != name {
			out = append(out, b.add(&Step{Kind: StepRename, Service: bt.svc.Name, Target: sl.Keep.Name + " to " + name, batch: bt, slot: sl}, after...))
		}
	}
	if len(out) == 0 {
		return after
	}
	return ids(out)
}

// Wait is how long a delay or monitor step waits (0 for other steps).
func (s *Step) Wait() time.Duration { return s.wait }

// WithWait sets how long a delay or monitor step waits (another backend's
// graph), and returns the step.
func (s *Step) WithWait(d time.Duration) *Step {
	s.wait = d
	return s
}

// String prints the graph, one step per line with what it waits for.
func (g *Graph) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "steps for %s:\n", g.Project)
	for _, s := range g.Steps {
		fmt.Fprintf(&b, "  %3d. %s", s.ID, s.Kind)
		if s.Service != "" {
			fmt.Fprintf(&b, " [%s]", s.Service)
		}
		if s.Target != "" {
			fmt.Fprintf(&b, " %s", s.Target)
		}
		if len(s.After) > 0 {
			parts := make([]string, len(s.After))
			for i, a := range s.After {
				parts[i] = fmt.Sprint(a)
			}
			fmt.Fprintf(&b, " (after %s)", strings.Join(parts, ","))
		}
		b.WriteByte('\n')
	}
	if len(g.Steps) == 0 {
		b.WriteString("  nothing to do\n")
	}
	return b.String()
}

// Estimate says how long a step is expected to take.
type Estimate func(*Step) time.Duration

// CriticalPath returns the longest chain of steps through the graph, each
// weighing what est says, and its length: the least time the graph can
// take when every independent step runs at once.
func (g *Graph) CriticalPath(est Estimate) (time.Duration, []*Step) {
	finish := map[int]time.Duration{}
	from := map[int]int{} // the step on the longest chain to each step
	var end *Step
	for _, s := range g.Steps { // steps only wait for earlier ones
		var start time.Duration
		for _, a := range s.After {
			if finish[a] >= start {
				start, from[s.ID] = finish[a], a
			}
		}
		finish[s.ID] = start + est(s)
		if end == nil || finish[s.ID] > finish[end.ID] {
			end = s
		}
	}
	if end == nil {
		return 0, nil
	}
	byID := map[int]*Step{}
	for _, s := range g.Steps {
		byID[s.ID] = s
	}
	var path []*Step
	for id := end.ID; id != 0; id = from[id] {
		path = append(path, byID[id])
	}
	slices.Reverse(path)
	return finish[end.ID], path
}
