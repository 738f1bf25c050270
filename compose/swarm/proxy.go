package swarm

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/healthcheck"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/errdefs"
)

// Labels Docker puts on the container of a Swarm task.
const (
	labelTaskService = "com.docker.swarm.service.name"
	labelTaskID      = "com.docker.swarm.task.id"
)

// ProxyEngine is the part of the local Docker engine (the manager agentd
// runs on) that Proxies uses: it finds the containers of a proxy's tasks,
// copies the upstreams into them and runs the proxy's validate and reload
// commands in them. *client.Client satisfies it.
type ProxyEngine interface {
	healthcheck.ExecEngine
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	CopyToContainer(ctx context.Context, containerID, dstPath string, content io.Reader, options container.CopyToContainerOptions) error
}

var _ ProxySyncer = (*Proxies)(nil)

// Proxies keeps the proxies of a stack that list their upstreams
// (x-berth.proxy upstreams or servers, for services with endpoint_mode
// dnsrr) in step with the running tasks of the services they front: it
// writes the tasks' addresses into the proxies' task containers, which
// must run on the local engine, in the files the single engine writes,
// and validates and reloads a proxy whose files changed. A proxy without
// upstreams or servers reaches its services by name (their virtual IP)
// and is left alone.
type Proxies struct {
	// Engine is the Swarm manager's API: the tasks of the fronted
	// services.
	Engine Engine
	// Local is the engine of the manager agentd runs on, where the proxy's
	// tasks run.
	Local   ProxyEngine
	Project string
	// Progress receives a line per thing done; may be nil.
	Progress compose.Progress

	mu     sync.Mutex
	locks  map[string]*sync.Mutex                      // by proxy service: one writer at a time
	loaded map[string]map[string]string                // by proxy service, container ID: the content it has loaded
	last   map[string]map[string][]compose.ProxyServer // by proxy service, fronted service: the servers last written
	said   map[string]string                           // what sayOnce said last, by key
}

func (p *Proxies) say(service, format string, args ...any) {
	if p.Progress != nil {
		p.Progress(service, fmt.Sprintf(format, args...))
	}
}

// sayOnce says a message unless it is what was said last under key: the
// follower would repeat it at every look.
func (p *Proxies) sayOnce(key, service, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.mu.Lock()
	if p.said == nil {
		p.said = map[string]string{}
	}
	repeat := p.said[key] == msg
	p.said[key] = msg
	p.mu.Unlock()
	if !repeat {
		p.say(service, "%s", msg)
	}
}

// unsay forgets what sayOnce said under key, or under any key starting
// with a key ending in "/": it is said again if it happens again.
func (p *Proxies) unsay(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.said {
		if k == key || strings.HasSuffix(key, "/") && strings.HasPrefix(k, key) {
			delete(p.said, k)
		}
	}
}

// serviceName is the Swarm name of a stack service.
func (p *Proxies) serviceName(service string) string { return p.Project + "_" + service }

// Sync brings every proxy of desired that fronts service, and service
// itself if it is a proxy (its new tasks need the upstreams too), in step
// with the running tasks of the services it fronts.
func (p *Proxies) Sync(ctx context.Context, desired *compose.Desired, service string) error {
	var errs []error
	for _, proxy := range proxiesFor(desired, service) {
		errs = append(errs, p.syncProxy(ctx, desired, proxy))
	}
	return errors.Join(errs...)
}

// proxiesFor lists the services of desired that list the upstreams of
// service (or that are service and list upstreams).
func proxiesFor(desired *compose.Desired, service string) []*compose.ServiceSpec {
	var out []*compose.ServiceSpec
	if desired == nil {
		return nil
	}
	for i := range desired.Services {
		s := &desired.Services[i]
		px := s.Policy.Proxy
		if px == nil || (px.Upstreams == "" && px.Servers == "") {
			continue
		}
		if s.Name == service || slices.Contains(px.Fronts, service) {
			out = append(out, s)
		}
	}
	return out
}

// lockProxy takes the lock of a proxy service and returns its release.
func (p *Proxies) lockProxy(proxy string) func() {
	p.mu.Lock()
	if p.locks == nil {
		p.locks = map[string]*sync.Mutex{}
	}
	m := p.locks[proxy]
	if m == nil {
		m = &sync.Mutex{}
		p.locks[proxy] = m
	}
	p.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// proxyTask is a running task container of a proxy on the local engine.
type proxyTask struct {
	id, name, task string
	nets           []string // the networks it is on, by name, sorted
}

// syncProxy writes, into every local task container of a proxy service,
// the running tasks of the services it fronts, and validates and reloads
// each container whose files changed.
func (p *Proxies) syncProxy(ctx context.Context, desired *compose.Desired, spec *compose.ServiceSpec) error {
	unlock := p.lockProxy(spec.Name)
	defer unlock()
	px := spec.Policy.Proxy
	name := p.serviceName(spec.Name)
	// The tasks first: the container of a task the manager says runs is
	// on its node by then.
	running, err := p.runningTasks(ctx, name)
	if err != nil {
		return fmt.Errorf("sync proxy %s: %w", spec.Name, err)
	}
	local, err := p.localTasks(ctx, name)
	if err != nil {
		return fmt.Errorf("sync proxy %s: %w", spec.Name, err)
	}
	var remote []string
	for _, t := range running {
		if !slices.ContainsFunc(local, func(c proxyTask) bool { return c.task == t.ID }) {
			remote = append(remote, taskName(name, t)+" on node "+t.NodeID)
		}
	}
	switch {
	case len(local) == 0 && len(remote) == 0:
		p.sayOnce(spec.Name, spec.Name, "no running task of %s: nothing to write into yet (its tasks get the upstreams once they run)", name)
		return nil
	case len(local) == 0:
		return fmt.Errorf("sync proxy %s: no running task of %s on this engine (agentd's) but %s: Berth writes the upstreams of a proxy only into its tasks on the manager agentd runs on: place it there (deploy.placement.constraints: [node.role == manager] on a one-manager swarm, or node.hostname == that manager)",
			spec.Name, name, strings.Join(remote, ", "))
	}
	p.unsay(spec.Name)
	p.forgetGone(spec.Name, local)
	tasks := map[string][]swarm.Task{}
	for _, svc := range px.Fronts {
		if tasks[svc], err = p.runningTasks(ctx, p.serviceName(svc)); err != nil {
			return fmt.Errorf("sync proxy %s: %w", spec.Name, err)
		}
	}
	var errs []error
	for _, c := range local {
		if err := p.syncContainer(ctx, desired, spec, c, tasks); err != nil {
			errs = append(errs, fmt.Errorf("sync proxy %s: %s: %w", spec.Name, c.name, err))
		}
	}
	if len(remote) > 0 {
		errs = append(errs, fmt.Errorf("sync proxy %s: %d running task(s) of %s on other nodes (%s) cannot be written from here and keep the upstreams their image has: place the proxy on the manager agentd runs on (deploy.placement.constraints: [node.role == manager])",
			spec.Name, len(remote), name, strings.Join(remote, ", ")))
	}
	return errors.Join(errs...)
}

// syncContainer writes a proxy container's files and reloads it, unless
// they hold what it has loaded already. A fronted service with no running
// task keeps the servers last written for it; if none were, nothing is
// written: an upstream is never left without a server while its service
// should have some.
func (p *Proxies) syncContainer(ctx context.Context, desired *compose.Desired, spec *compose.ServiceSpec, c proxyTask, tasks map[string][]swarm.Task) error {
	px := spec.Policy.Proxy
	servers := map[string][]compose.ProxyServer{}
	var kept []string
	for _, svc := range px.Fronts {
		list := serversOf(p.serviceName(svc), tasks[svc], c.nets)
		if len(list) == 0 && wantsTasks(desired, svc) {
			last, ok := p.lastServers(spec.Name, svc)
			if !ok {
				p.sayOnce(c.id+"/"+svc, spec.Name, "no running task of %s on a network of %s: nothing written to it (an upstream is never left empty)", svc, c.name)
				return nil
			}
			kept = append(kept, svc)
			list = last
		}
		servers[svc] = list
	}
	dir, content, archive, err := compose.ProxyFiles(px, servers)
	if err != nil {
		return err
	}
	p.mu.Lock()
	same := p.loaded[spec.Name][c.id] == content
	p.mu.Unlock()
	if same {
		return nil
	}
	for _, svc := range kept {
		p.say(spec.Name, "no running task of %s: %s keeps the servers last written for it", svc, c.name)
	}
	p.unsay(c.id + "/")
	what := cmp.Or(px.Servers, px.Upstreams)
	if err := p.Local.CopyToContainer(ctx, c.id, dir, bytes.NewReader(archive), container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("write %s: %w", what, err)
	}
	for _, step := range [][]string{px.Validate, px.Reload} {
		code, msg, err := healthcheck.Exec(ctx, p.Local, c.id, step)
		if err != nil {
			return fmt.Errorf("%s: %w", strings.Join(step, " "), err)
		}
		if code != 0 {
			return fmt.Errorf("%s exited %d: %s", strings.Join(step, " "), code, strings.TrimSpace(msg))
		}
	}
	p.mu.Lock()
	if p.loaded == nil {
		p.loaded = map[string]map[string]string{}
	}
	if p.loaded[spec.Name] == nil {
		p.loaded[spec.Name] = map[string]string{}
	}
	p.loaded[spec.Name][c.id] = content
	if p.last == nil {
		p.last = map[string]map[string][]compose.ProxyServer{}
	}
	p.last[spec.Name] = maps.Clone(servers)
	p.mu.Unlock()
	var counts []string
	for _, svc := range px.Fronts {
		counts = append(counts, fmt.Sprintf("%s: %d", svc, len(servers[svc])))
	}
	p.say(spec.Name, "reloaded %s with the running tasks (%s)", c.name, strings.Join(counts, ", "))
	return nil
}

// forgetGone forgets what the containers of a proxy that are no longer
// running had loaded.
func (p *Proxies) forgetGone(proxy string, local []proxyTask) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.loaded[proxy] {
		if !slices.ContainsFunc(local, func(c proxyTask) bool { return c.id == id }) {
			delete(p.loaded[proxy], id)
		}
	}
}

// lastServers returns the servers last written for svc into proxy.
func (p *Proxies) lastServers(proxy, svc string) ([]compose.ProxyServer, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	list, ok := p.last[proxy][svc]
	return list, ok && len(list) > 0
}

// wantsTasks reports whether desired wants service to run tasks: a
// service scaled to zero gets, as on the single engine, a server that is
// down.
func wantsTasks(desired *compose.Desired, service string) bool {
	for _, s := range desired.Services {
		if s.Name != service {
			continue
		}
		if s.Swarm != nil && s.Swarm.Mode.Replicated != nil && s.Swarm.Mode.Replicated.Replicas != nil {
			return *s.Swarm.Mode.Replicated.Replicas > 0
		}
		if s.Swarm != nil && s.Swarm.Mode.Global != nil {
			return true
		}
		return s.Replicas > 0
	}
	return true
}

// localTasks lists the running containers of a proxy service's tasks on
// the local engine, with the networks each is on (but ingress).
func (p *Proxies) localTasks(ctx context.Context, name string) ([]proxyTask, error) {
	list, err := p.Local.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(
		filters.Arg("label", labelTaskService+"="+name), filters.Arg("status", "running"))})
	if err != nil {
		return nil, fmt.Errorf("list the containers of %s: %w", name, err)
	}
	var out []proxyTask
	for _, c := range list {
		t := proxyTask{id: c.ID, name: name, task: c.Labels[labelTaskID]}
		if len(c.Names) > 0 {
			t.name = strings.TrimPrefix(c.Names[0], "/")
		}
		if c.NetworkSettings != nil {
			for n := range c.NetworkSettings.Networks {
				if n != "ingress" {
					t.nets = append(t.nets, n)
				}
			}
		}
		slices.Sort(t.nets)
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b proxyTask) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// runningTasks lists the tasks of a Swarm service that run and are meant
// to: a task Swarm is shutting down has desired state shutdown and is
// left out at once. A service that does not exist (yet) has none.
func (p *Proxies) runningTasks(ctx context.Context, name string) ([]swarm.Task, error) {
	list, err := p.Engine.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(
		filters.Arg("service", name), filters.Arg("desired-state", string(swarm.TaskStateRunning)))})
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the tasks of %s: %w", name, err)
	}
	var out []swarm.Task
	for _, t := range list {
		if t.DesiredState == swarm.TaskStateRunning && t.Status.State == swarm.TaskStateRunning {
			out = append(out, t)
		}
	}
	return out, nil
}

// taskName is the name Docker gives a task's container, but its task ID:
// SERVICE.SLOT.TASK (SERVICE.NODE.TASK for a global service).
func taskName(service string, t swarm.Task) string {
	if t.Slot > 0 {
		return fmt.Sprintf("%s.%d.%s", service, t.Slot, t.ID)
	}
	return fmt.Sprintf("%s.%s.%s", service, t.NodeID, t.ID)
}

// serversOf is the address of each task on the first of nets it is
// attached to (CIDR suffix cut), sorted by name; a task on none of them
// is out of the proxy's reach and left out.
func serversOf(service string, tasks []swarm.Task, nets []string) []compose.ProxyServer {
	var out []compose.ProxyServer
	for _, t := range tasks {
		addr := ""
		for _, n := range nets {
			for _, a := range t.NetworksAttachments {
				if a.Network.Spec.Name == n && !a.Network.Spec.Ingress && len(a.Addresses) > 0 {
					addr, _, _ = strings.Cut(a.Addresses[0], "/")
					break
				}
			}
			if addr != "" {
				break
			}
		}
		if addr != "" {
			out = append(out, compose.ProxyServer{Name: taskName(service, t), Addr: addr})
		}
	}
	slices.SortFunc(out, func(a, b compose.ProxyServer) int { return strings.Compare(a.Name, b.Name) })
	return out
}
