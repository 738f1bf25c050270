package compose

import (
	"fmt"
	"slices"
	"strings"
)

// Op is one thing to do to one container.
type Op string

// The container operations a plan is made of.
const (
	OpCreate   Op = "create"   // a new container for a replica number
	OpRecreate Op = "recreate" // replace Old by a new container with the same number
	OpStart    Op = "start"    // Old is up to date but not running
	OpRemove   Op = "remove"   // Old is no longer wanted
)

// Step is one container operation of a service.
type Step struct {
	Op     Op
	Number int        // replica number of the new container (create, recreate)
	Old    *Container // the existing container (recreate, start, remove)
	Reason string
}

// ServicePlan is what happens to one service.
type ServicePlan struct {
	Name  string
	Spec  *ServiceSpec // nil when the service is being removed
	Keep  []Container  // containers left as they are
	Steps []Step
}

// Changed reports whether the service is touched at all.
func (s ServicePlan) Changed() bool { return len(s.Steps) > 0 }

// Plan takes the observed state of a project to the desired one. It is
// computed without side effects and prints as text.
type Plan struct {
	Project        string
	CreateNetworks []NetworkSpec
	CreateVolumes  []VolumeSpec
	Services       []ServicePlan // desired services, dependencies first
	RemoveServices []ServicePlan // services no longer in the file, dependents first
	RemoveNetworks []string      // project networks no longer in the file
}

// Empty reports whether applying the plan would change nothing.
func (p *Plan) Empty() bool {
	if len(p.CreateNetworks)+len(p.CreateVolumes)+len(p.RemoveServices)+len(p.RemoveNetworks) > 0 {
		return false
	}
	for _, s := range p.Services {
		if s.Changed() {
			return false
		}
	}
	return true
}

// ChangedServices lists the services the plan touches, in plan order.
func (p *Plan) ChangedServices() []string {
	var out []string
	for _, s := range p.Services {
		if s.Changed() {
			out = append(out, s.Name)
		}
	}
	for _, s := range p.RemoveServices {
		out = append(out, s.Name)
	}
	return out
}

// MakePlan compares desired and observed state. It is pure: the same
// inputs always give the same plan.
func MakePlan(d *Desired, o *Observed) *Plan {
	p := &Plan{Project: d.Project}
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
		p.Services = append(p.Services, planService(spec, o.Service(spec.Name)))
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
			sp.Steps = append(sp.Steps, Step{Op: OpRemove, Old: ptr(c), Reason: "no longer in the compose file"})
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

func planService(spec *ServiceSpec, existing []Container) ServicePlan {
	sp := ServicePlan{Name: spec.Name, Spec: spec}
	byNumber := map[int]Container{}
	for _, c := range existing {
		prev, dup := byNumber[c.Number]
		switch {
		case c.Number < 1 || c.Number > spec.Replicas:
			sp.Steps = append(sp.Steps, Step{Op: OpRemove, Old: ptr(c), Reason: fmt.Sprintf("scaled to %d", spec.Replicas)})
		case dup:
			// Two containers claim one number: keep the better one.
			keep, drop := prev, c
			if better(c, prev, spec.Hash) {
				keep, drop = c, prev
			}
			byNumber[c.Number] = keep
			sp.Steps = append(sp.Steps, Step{Op: OpRemove, Old: ptr(drop), Reason: "duplicate replica number"})
		default:
			byNumber[c.Number] = c
		}
	}
	for n := 1; n <= spec.Replicas; n++ {
		c, ok := byNumber[n]
		switch {
		case !ok:
			sp.Steps = append(sp.Steps, Step{Op: OpCreate, Number: n, Reason: "new replica"})
		case c.Hash != spec.Hash:
			sp.Steps = append(sp.Steps, Step{Op: OpRecreate, Number: n, Old: ptr(c), Reason: recreateReason(c, spec)})
		case !c.Running():
			sp.Steps = append(sp.Steps, Step{Op: OpStart, Number: n, Old: ptr(c), Reason: "container is " + c.State})
		default:
			sp.Keep = append(sp.Keep, c)
		}
	}
	return sp
}

// better prefers a container with the wanted hash, then a running one.
func better(a, b Container, hash string) bool {
	if (a.Hash == hash) != (b.Hash == hash) {
		return a.Hash == hash
	}
	return a.Running() && !b.Running()
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
		if !s.Changed() {
			fmt.Fprintf(&b, "  service %s: unchanged (%d running)\n", s.Name, len(s.Keep))
			continue
		}
		for _, st := range s.Steps {
			switch st.Op {
			case OpCreate:
				fmt.Fprintf(&b, "  service %s: create %s (%s)\n", s.Name, s.Spec.containerName(p.Project, st.Number), st.Reason)
			default:
				fmt.Fprintf(&b, "  service %s: %s %s (%s)\n", s.Name, st.Op, st.Old.Name, st.Reason)
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
