package swarm

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/compose/life"

	"github.com/docker/docker/api/types/swarm"
)

// Action is what a release does to one service of the stack.
type Action string

// The actions of a plan.
const (
	Create    Action = "create"
	Update    Action = "update"
	Unchanged Action = "unchanged"
	Remove    Action = "remove"
)

// ServicePlan is one service of a plan.
type ServicePlan struct {
	// Name is the compose service; Service the Swarm service
	// (PROJECT_SERVICE).
	Name    string
	Service string
	Action  Action
	// Reason says why it changes (the image, or the spec).
	Reason string
	// Spec is the desired service (nil for a removal).
	Spec *compose.ServiceSpec
	// ID is the Swarm service's ID when it exists.
	ID string
}

// Changed reports whether the plan creates or updates the service.
func (s ServicePlan) Changed() bool { return s.Action == Create || s.Action == Update }

// Plan is what a release changes on the Swarm: a pure comparison of the
// desired state with the observed stack.
type Plan struct {
	Project string
	Desired *compose.Desired
	// Services follow desired's (dependency) order.
	Services []ServicePlan
	// RemoveServices are the stack's services no longer in the file.
	RemoveServices []ServicePlan
	CreateNetworks []compose.NetworkSpec
	// Rollback: each update uses the service's rollback_config and no
	// hooks run.
	Rollback bool
}

var _ life.Plan = (*Plan)(nil)

// SwarmName is the name of service spec's Swarm service: the converted
// spec's, or PROJECT_SERVICE.
func SwarmName(project string, spec *compose.ServiceSpec) string {
	if spec.Swarm != nil && spec.Swarm.Name != "" {
		return spec.Swarm.Name
	}
	return project + "_" + spec.Name
}

// specHash is the hash desired carries for a service ("" when none).
func specHash(spec *compose.ServiceSpec) string {
	if spec.Swarm == nil {
		return ""
	}
	return spec.Swarm.Labels[LabelSpecHash]
}

// MakePlan compares desired with the observed stack. A rollback plan
// (rollback) updates with each service's rollback_config; force updates
// (and so gates) the services whose hash already matches too.
func MakePlan(desired *compose.Desired, observed *Observed, rollback, force bool) *Plan {
	p := &Plan{Project: desired.Project, Desired: desired, Rollback: rollback}
	for _, n := range desired.Networks {
		if _, ok := observed.Networks[n.Name]; !ok {
			p.CreateNetworks = append(p.CreateNetworks, n)
		}
	}
	want := map[string]bool{}
	for i := range desired.Services {
		spec := &desired.Services[i]
		name := SwarmName(desired.Project, spec)
		want[name] = true
		sp := ServicePlan{Name: spec.Name, Service: name, Spec: spec}
		cur, ok := observed.Services[name]
		switch {
		case !ok:
			sp.Action, sp.Reason = Create, "new"
		case cur.Spec.Labels[LabelSpecHash] != specHash(spec) || specHash(spec) == "":
			sp.Action, sp.ID, sp.Reason = Update, cur.ID, updateReason(cur.Spec, spec)
		case force:
			sp.Action, sp.ID, sp.Reason = Update, cur.ID, "recheck"
		default:
			sp.Action, sp.ID = Unchanged, cur.ID
		}
		p.Services = append(p.Services, sp)
	}
	for _, name := range sortedNames(observed.Services) {
		if want[name] {
			continue
		}
		cur := observed.Services[name]
		p.RemoveServices = append(p.RemoveServices, ServicePlan{
			Name:    strings.TrimPrefix(name, desired.Project+"_"),
			Service: name, Action: Remove, Reason: "no longer in the file", ID: cur.ID,
		})
	}
	return p
}

// updateReason says why a service is updated: its image, or its spec.
func updateReason(cur swarm.ServiceSpec, spec *compose.ServiceSpec) string {
	curImage, curRef := "", cur.Labels[LabelImage]
	if cur.TaskTemplate.ContainerSpec != nil {
		curImage = cur.TaskTemplate.ContainerSpec.Image
	}
	switch {
	case curImage == "" || curImage == spec.Image.Pinned:
		return "spec changed"
	case curRef != "" && curRef != spec.Image.Ref:
		return fmt.Sprintf("image %s -> %s", curRef, spec.Image.Ref)
	default:
		return fmt.Sprintf("image %s -> %s", curImage, spec.Image.Pinned)
	}
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return len(p.CreateNetworks) == 0 && len(p.RemoveServices) == 0 && len(p.ChangedServices()) == 0
}

// ChangedServices names the services the plan creates or updates.
func (p *Plan) ChangedServices() []string {
	var out []string
	for _, s := range p.Services {
		if s.Changed() {
			out = append(out, s.Name)
		}
	}
	return out
}

// service returns the plan of the compose service name, or nil.
func (p *Plan) service(name string) *ServicePlan {
	for i := range p.Services {
		if p.Services[i].Name == name {
			return &p.Services[i]
		}
	}
	return nil
}

// Window is the monitor window after the rollout: the longest monitor of
// the services it changes (their rollback's in a rollback).
func (p *Plan) Window() time.Duration {
	var w time.Duration
	for _, s := range p.Services {
		if !s.Changed() {
			continue
		}
		if p.Rollback {
			w = max(w, s.Spec.Policy.Rollback.Monitor)
		} else {
			w = max(w, s.Spec.Policy.Monitor)
		}
	}
	return w
}

// String prints the plan, one line per change.
func (p *Plan) String() string {
	var b strings.Builder
	verb := "plan"
	if p.Rollback {
		verb = "rollback plan"
	}
	fmt.Fprintf(&b, "%s for %s:\n", verb, p.Project)
	for _, n := range p.CreateNetworks {
		fmt.Fprintf(&b, "  network %s: create\n", n.Name)
	}
	for _, s := range append(slices.Clone(p.Services), p.RemoveServices...) {
		switch s.Action {
		case Unchanged:
			fmt.Fprintf(&b, "  service %s: unchanged\n", s.Name)
		default:
			fmt.Fprintf(&b, "  service %s: %s %s (%s)\n", s.Name, s.Action, s.Service, s.Reason)
		}
	}
	if p.Empty() {
		b.WriteString("  nothing to change\n")
	}
	return b.String()
}

// Step kinds of a Swarm graph that compose has no word for.
const (
	// StepUpdateService creates or updates a Swarm service with its new
	// spec: Swarm then rolls its tasks with the service's update_config.
	StepUpdateService compose.StepKind = "update-service"
	// StepRemoveService removes a service no longer in the file.
	StepRemoveService compose.StepKind = "remove-service"
)

// Graph compiles the plan into steps: the networks first; then the
// pre-deploy hooks of the changed services, one at a time, after the
// services they depend on and before any other service changes; per
// changed service an update-service step and its gate, a service's update
// waiting for the gates of the services it depends on; then the services
// no longer in the file; the monitor window last. It is pure.
func (p *Plan) Graph() *compose.Graph {
	g := &compose.Graph{Project: p.Project}
	add := func(s *compose.Step, after ...int) *compose.Step {
		s.ID = len(g.Steps) + 1
		for _, a := range after {
			if a != 0 && !slices.Contains(s.After, a) {
				s.After = append(s.After, a)
			}
		}
		slices.Sort(s.After)
		g.Steps = append(g.Steps, s)
		return s
	}
	var base []int
	for _, n := range p.CreateNetworks {
		base = append(base, add(&compose.Step{Kind: compose.StepNetwork, Target: n.Name}).ID)
	}

	specs := map[string]*compose.ServiceSpec{}
	for _, s := range p.Services {
		specs[s.Name] = s.Spec
	}
	hooked := map[string]bool{}
	needed := map[string]bool{} // what the hooked services depend on
	for _, s := range p.Services {
		if p.runsHooks(s) {
			hooked[s.Name] = true
			for d := range compose.DependsOnAll(s.Name, specs) {
				needed[d] = true
			}
		}
	}
	last := map[string][]int{} // the steps a dependent of a service waits for
	var lastHook int
	var all []int
	roll := func(s ServicePlan) {
		after := slices.Clone(base)
		for _, d := range s.Spec.DependsOn {
			after = append(after, last[d]...)
		}
		if !needed[s.Name] {
			after = append(after, lastHook)
		}
		if !s.Changed() {
			last[s.Name] = after // passes its dependencies' order on
			return
		}
		up := add(&compose.Step{Kind: StepUpdateService, Service: s.Name, Target: s.Service}, after...)
		gate := add(&compose.Step{Kind: compose.StepGate, Service: s.Name, Target: s.Service}, up.ID)
		last[s.Name] = []int{gate.ID}
		all = append(all, gate.ID)
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
		after := append(slices.Clone(base), lastHook)
		for d := range compose.DependsOnAll(s.Name, specs) {
			after = append(after, last[d]...)
		}
		lastHook = add(&compose.Step{Kind: compose.StepHook, Service: s.Name, Target: hookTarget(s.Spec.Policy.PreDeploy)}, after...).ID
	}
	for _, s := range p.Services {
		if !needed[s.Name] {
			roll(s)
		}
	}
	all = append(all, lastHook)
	var gone []int
	for _, s := range p.RemoveServices {
		gone = append(gone, add(&compose.Step{Kind: StepRemoveService, Service: s.Name, Target: s.Service}, all...).ID)
	}
	all = append(all, gone...)
	if w := p.Window(); w > 0 && len(p.ChangedServices()) > 0 {
		add((&compose.Step{Kind: compose.StepMonitor, Target: w.String()}).WithWait(w), all...)
	}
	return g
}

// runsHooks reports whether a service's pre-deploy hooks run: on an
// update or create, not in a rollback.
func (p *Plan) runsHooks(s ServicePlan) bool {
	return !p.Rollback && s.Changed() && len(s.Spec.Policy.PreDeploy) > 0
}

// hookTarget names a service's pre-deploy hooks in its step.
func hookTarget(hooks []compose.Hook) string {
	cmds := make([]string, len(hooks))
	for i, h := range hooks {
		cmds[i] = strings.Join(h.Command, " ")
	}
	return strings.Join(cmds, "; ")
}
