package compose

import (
	"fmt"
	"slices"
	"strings"
)

// Slot is what happens to one replica number of a service.
type Slot struct {
	Number int
	// Keep is the container whose config matches, which stays or comes
	// back: started if stopped, renamed to its proper name if it was
	// retired under another.
	Keep *Container
	// Create asks for a new container; Replace is the one it takes over
	// from (nil for a new replica).
	Create  bool
	Replace *Container
	// Retire lists the other containers of this number: stopped, then
	// removed (or kept, stopped, until the release commits).
	Retire []Container
	Reason string
}

// Changed reports whether the slot changes anything.
func (s Slot) Changed(canonical string) bool {
	if s.Create || s.Replace != nil || len(s.Retire) > 0 {
		return true
	}
	return s.Keep != nil && (!s.Keep.Running() || s.Keep.Name != canonical)
}

// ServicePlan is what happens to one service.
type ServicePlan struct {
	Name  string
	Spec  *ServiceSpec // nil when the service is no longer in the file
	Slots []Slot       // by replica number; retire-only slots last
}

// canonical is the proper name of replica n ("" for removed services).
func (s ServicePlan) canonical(project string, n int) string {
	if s.Spec == nil {
		return ""
	}
	return s.Spec.containerName(project, n)
}

// changed reports whether the service is touched at all.
func (s ServicePlan) changed(project string) bool {
	for _, sl := range s.Slots {
		if sl.Changed(s.canonical(project, sl.Number)) {
			return true
		}
	}
	return false
}

// Plan takes the observed state of a project to the desired one. It is
// computed without side effects and prints as text.
type Plan struct {
	Project        string
	CreateNetworks []NetworkSpec
	CreateVolumes  []VolumeSpec
	Services       []ServicePlan // desired services, dependencies first
	RemoveServices []ServicePlan // services no longer in the file
	RemoveNetworks []string      // project networks no longer in the file
	// proxies maps a service to the proxy services fronting it.
	proxies map[string][]string
}

// Empty reports whether applying the plan would change nothing.
func (p *Plan) Empty() bool {
	if len(p.CreateNetworks)+len(p.CreateVolumes)+len(p.RemoveServices)+len(p.RemoveNetworks) > 0 {
		return false
	}
	for _, s := range p.Services {
		if s.changed(p.Project) {
			return false
		}
	}
	return true
}

// ChangedServices lists the services the plan touches, in plan order.
func (p *Plan) ChangedServices() []string {
	var out []string
	for _, s := range append(slices.Clone(p.Services), p.RemoveServices...) {
		if s.changed(p.Project) {
			out = append(out, s.Name)
		}
	}
	return out
}

// MakePlan compares desired and observed state. It is pure: the same
// inputs always give the same plan.
func MakePlan(d *Desired, o *Observed) *Plan {
	p := &Plan{Project: d.Project, proxies: map[string][]string{}}
	wantNet := map[string]bool{}
	for _, n := range d.Networks {
		wantNet[n.Name] = true
		if _, ok := o.Networks[n.Name]; !ok {
			p.CreateNetworks = append(p.CreateNetworks, n)
		}
	}
	for _, v := range d.Volumes {
		if !o.Volumes[v.Name] {
			p.CreateVolumes = append(p.CreateVolumes, v)
		}
	}
	wantSvc := map[string]bool{}
	for i := range d.Services {
		spec := &d.Services[i]
		wantSvc[spec.Name] = true
		p.Services = append(p.Services, planService(d.Project, spec, o.Service(spec.Name)))
		if px := spec.Policy.Proxy; px != nil {
			for _, f := range px.Fronts {
				p.proxies[f] = append(p.proxies[f], spec.Name)
			}
		}
	}
	var gone []string
	for _, c := range o.Containers {
		if !c.Oneoff && !wantSvc[c.Service] && !slices.Contains(gone, c.Service) {
			gone = append(gone, c.Service)
		}
	}
	slices.Sort(gone)
	slices.Reverse(gone)
	for _, name := range gone {
		sp := ServicePlan{Name: name}
		for _, c := range o.Service(name) {
			sp.Slots = append(sp.Slots, Slot{Number: c.Number, Retire: []Container{c}, Reason: "no longer in the compose file"})
		}
		p.RemoveServices = append(p.RemoveServices, sp)
	}
	for name := range o.Networks {
		if !wantNet[name] {
			p.RemoveNetworks = append(p.RemoveNetworks, name)
		}
	}
	slices.Sort(p.RemoveNetworks)
	return p
}

func planService(project string, spec *ServiceSpec, existing []Container) ServicePlan {
	sp := ServicePlan{Name: spec.Name, Spec: spec}
	byNumber := map[int][]Container{}
	var extra []Container
	for _, c := range existing {
		if c.Number < 1 || c.Number > spec.Replicas {
			extra = append(extra, c)
			continue
		}
		byNumber[c.Number] = append(byNumber[c.Number], c)
	}
	for n := 1; n <= spec.Replicas; n++ {
		sp.Slots = append(sp.Slots, planSlot(n, spec.containerName(project, n), spec, byNumber[n]))
	}
	for _, c := range extra {
		sp.Slots = append(sp.Slots, Slot{Number: c.Number, Retire: []Container{c}, Reason: fmt.Sprintf("scaled to %d", spec.Replicas)})
	}
	return sp
}

func planSlot(n int, canonical string, spec *ServiceSpec, cs []Container) Slot {
	sl := Slot{Number: n}
	// The best candidate to keep: matching config, then running, then
	// already under its proper name.
	slices.SortStableFunc(cs, func(a, b Container) int {
		return rank(b, spec.Hash, canonical) - rank(a, spec.Hash, canonical)
	})
	switch {
	case len(cs) == 0:
		sl.Create, sl.Reason = true, "new replica"
		return sl
	case cs[0].Hash == spec.Hash:
		sl.Keep = ptr(cs[0])
		switch {
		case !cs[0].Running():
			sl.Reason = "container is " + cs[0].State
		case cs[0].Name != canonical:
			sl.Reason = "restore its name"
		}
	default:
		sl.Create, sl.Replace, sl.Reason = true, ptr(cs[0]), recreateReason(cs[0], spec)
	}
	sl.Retire = cs[1:]
	if len(sl.Retire) > 0 && sl.Reason == "" {
		sl.Reason = "remove the containers it replaced"
	}
	return sl
}

func rank(c Container, hash, canonical string) int {
	r := 0
	if c.Hash == hash {
		r += 4
	}
	if c.Running() {
		r += 2
	}
	if c.Name == canonical {
		r++
	}
	return r
}

func recreateReason(c Container, spec *ServiceSpec) string {
	if c.Image != spec.Image.Pinned {
		return fmt.Sprintf("image %s -> %s", shortDigest(c.Image), shortDigest(spec.Image.Pinned))
	}
	return "config changed"
}

// shortDigest abbreviates the digest in an image reference for display.
func shortDigest(ref string) string {
	i := strings.LastIndex(ref, "sha256:")
	if i < 0 {
		return ref
	}
	d := ref[i+len("sha256:"):]
	if len(d) > 12 {
		d = d[:12]
	}
	return "sha256:" + d
}

func ptr[T any](v T) *T { return &v }

// Cleanup returns the part of the plan that only removes: containers
// retired by a committed release and networks no longer in the file.
// Nothing is started or created.
func (p *Plan) Cleanup() *Plan {
	c := &Plan{Project: p.Project, RemoveNetworks: p.RemoveNetworks, proxies: p.proxies}
	keepRetired := func(s ServicePlan) ServicePlan {
		out := ServicePlan{Name: s.Name, Spec: s.Spec}
		for _, sl := range s.Slots {
			if sl.Create || (sl.Keep != nil && !sl.Keep.Running()) {
				continue // a slot that is not done: cleanup does not mend it
			}
			if len(sl.Retire) > 0 {
				out.Slots = append(out.Slots, Slot{Number: sl.Number, Retire: sl.Retire, Reason: "retired by the release"})
			}
		}
		return out
	}
	for _, s := range p.Services {
		if s2 := keepRetired(s); len(s2.Slots) > 0 {
			c.Services = append(c.Services, s2)
		}
	}
	for _, s := range p.RemoveServices {
		c.RemoveServices = append(c.RemoveServices, keepRetired(s))
	}
	return c
}

// String prints the plan, one line per change; unchanged services say so.
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plan for %s:\n", p.Project)
	for _, n := range p.CreateNetworks {
		fmt.Fprintf(&b, "  network %s: create\n", n.Name)
	}
	for _, v := range p.CreateVolumes {
		fmt.Fprintf(&b, "  volume %s: create\n", v.Name)
	}
	for _, s := range append(slices.Clone(p.Services), p.RemoveServices...) {
		if !s.changed(p.Project) {
			fmt.Fprintf(&b, "  service %s: unchanged (%d running)\n", s.Name, len(s.Slots))
			continue
		}
		head := "service " + s.Name
		if s.Spec != nil && s.hasStarts() {
			head += " (" + s.Spec.Policy.Order + ")"
		}
		for _, sl := range s.Slots {
			name := s.canonical(p.Project, sl.Number)
			if !sl.Changed(name) {
				continue
			}
			switch {
			case sl.Create && sl.Replace != nil:
				fmt.Fprintf(&b, "  %s: recreate %s (%s)\n", head, sl.Replace.Name, sl.Reason)
			case sl.Create:
				fmt.Fprintf(&b, "  %s: create %s (%s)\n", head, name, sl.Reason)
			case sl.Keep != nil && (!sl.Keep.Running() || sl.Keep.Name != name):
				verb := "start"
				if sl.Keep.Running() {
					verb = "rename"
				}
				fmt.Fprintf(&b, "  %s: %s %s (%s)\n", head, verb, sl.Keep.Name, sl.Reason)
			}
			for _, r := range sl.Retire {
				why := sl.Reason
				if sl.Keep != nil || sl.Create {
					why = "superseded"
				}
				fmt.Fprintf(&b, "  %s: remove %s (%s)\n", head, r.Name, why)
			}
		}
	}
	for _, n := range p.RemoveNetworks {
		fmt.Fprintf(&b, "  network %s: remove\n", n)
	}
	if p.Empty() {
		b.WriteString("  nothing to change\n")
	}
	return b.String()
}

// hasStarts reports whether any slot starts a container.
func (s ServicePlan) hasStarts() bool {
	for _, sl := range s.Slots {
		if sl.Create || (sl.Keep != nil && !sl.Keep.Running()) {
			return true
		}
	}
	return false
}
