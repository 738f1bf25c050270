package swarm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berth-deploy/berth/compose"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/go-units"
)

// ServiceName is the name of a stack service, as `docker stack deploy`
// names it: PROJECT_SERVICE.
func ServiceName(project, service string) string {
	return project + "_" + service
}

// Convert fills d.Services[i].Swarm, for every service of d, with the Swarm
// service spec of the compose service p.Services[name], and makes
// d.Networks the stack's overlay networks. p must have passed Check, and d
// be compose.NewDesired(p, pins): the image is the pin's digest reference,
// the rollout is the service's compose.Policy. Convert is pure and
// deterministic: the same p and d give the same specs, byte for byte in
// JSON, with their LabelSpecHash (SpecHash) set.
func Convert(p *types.Project, d *compose.Desired) error {
	for i := range d.Networks {
		n := &d.Networks[i]
		if n.Options.Driver == "" {
			n.Options.Driver = "overlay"
		}
		n.Options.Attachable = true
		n.Options.Scope = "swarm"
		labels := maps.Clone(n.Options.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		labels[LabelNamespace] = p.Name
		n.Options.Labels = labels
	}
	var errs []error
	for i := range d.Services {
		ds := &d.Services[i]
		s, ok := p.Services[ds.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("convert %s: not in project %s", ds.Name, p.Name))
			continue
		}
		spec, err := serviceSpec(p, s, ds)
		if err != nil {
			errs = append(errs, fmt.Errorf("convert %s: %w", ds.Name, err))
			continue
		}
		ds.Swarm = spec
	}
	return errors.Join(errs...)
}

// SpecHash is the hash of a service spec that LabelSpecHash carries: the
// first 16 hex digits of the sha256 of its JSON, leaving out the labels
// LabelSpecHash and LabelRelease (of the service and of its containers),
// so setting them does not change it. A service whose LabelSpecHash
// differs from the desired spec's is updated. Compare the labels: do not
// recompute SpecHash from a spec read back from the engine, which rewrites
// it (network names become IDs, Isolation "default" and Runtime "container"
// are filled in: seen on Engine 20.10).
func SpecHash(s swarm.ServiceSpec) string {
	s.Annotations.Labels = withoutHashLabels(s.Annotations.Labels)
	if s.TaskTemplate.ContainerSpec != nil {
		c := *s.TaskTemplate.ContainerSpec
		c.Labels = withoutHashLabels(c.Labels)
		s.TaskTemplate.ContainerSpec = &c
	}
	b, err := json.Marshal(s)
	if err != nil {
		// A ServiceSpec is plain data: strings, numbers, maps and slices
		// of them. Marshal fails only for a type that cannot be encoded.
		panic(fmt.Sprintf("swarm: hash service spec: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16]
}

func withoutHashLabels(labels map[string]string) map[string]string {
	_, h := labels[LabelSpecHash]
	_, r := labels[LabelRelease]
	if !h && !r {
		return labels
	}
	out := maps.Clone(labels)
	delete(out, LabelSpecHash)
	delete(out, LabelRelease)
	if len(out) == 0 {
		return nil
	}
	return out
}

func serviceSpec(p *types.Project, s types.ServiceConfig, ds *compose.ServiceSpec) (*swarm.ServiceSpec, error) {
	serviceLabels := map[string]string{}
	if s.Deploy != nil {
		maps.Copy(serviceLabels, s.Deploy.Labels)
	}
	serviceLabels[LabelNamespace] = p.Name
	serviceLabels[LabelImage] = ds.Image.Ref
	containerLabels := map[string]string{}
	maps.Copy(containerLabels, s.Labels)
	containerLabels[LabelNamespace] = p.Name

	grace := ds.StopTimeout
	c := &swarm.ContainerSpec{
		Image:           ds.Image.Pinned,
		Labels:          containerLabels,
		Command:         nonEmpty([]string(s.Entrypoint)),
		Args:            nonEmpty([]string(s.Command)),
		Hostname:        s.Hostname,
		Env:             nonEmpty(ds.Config.Env), // compose's environment, sorted (unset names left out)
		Dir:             s.WorkingDir,
		User:            s.User,
		Groups:          nonEmpty(s.GroupAdd),
		Init:            s.Init,
		StopSignal:      s.StopSignal,
		TTY:             s.Tty,
		OpenStdin:       s.StdinOpen,
		ReadOnly:        s.ReadOnly,
		StopGracePeriod: &grace,
		Healthcheck:     ds.Config.Healthcheck, // compose's healthcheck, as the engine backend sends it
		Hosts:           hosts(s.ExtraHosts),
		Sysctls:         nonEmptyMap(map[string]string(s.Sysctls)),
		CapabilityAdd:   nonEmpty(s.CapAdd),
		CapabilityDrop:  nonEmpty(s.CapDrop),
		Ulimits:         compose.Ulimits(s.Ulimits),
	}
	if len(s.DNS) > 0 || len(s.DNSSearch) > 0 || len(s.DNSOpts) > 0 {
		c.DNSConfig = &swarm.DNSConfig{Nameservers: nonEmpty([]string(s.DNS)), Search: nonEmpty([]string(s.DNSSearch)), Options: nonEmpty(s.DNSOpts)}
	}
	mounts, err := mountsOf(p, s)
	if err != nil {
		return nil, err
	}
	c.Mounts = mounts

	spec := &swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: ServiceName(p.Name, s.Name), Labels: serviceLabels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: c,
			Resources:     resourcesOf(s),
			RestartPolicy: restartPolicy(s),
			Placement:     placement(s),
			Networks:      attachments(p, s),
		},
		Mode:           mode(s, ds),
		UpdateConfig:   updateConfig(ds.Policy),
		RollbackConfig: rollbackConfig(s, ds.Policy),
	}
	if s.Logging != nil && s.Logging.Driver != "" {
		spec.TaskTemplate.LogDriver = &swarm.Driver{Name: s.Logging.Driver, Options: nonEmptyMap(map[string]string(s.Logging.Options))}
	}
	spec.EndpointSpec, err = endpointSpec(s)
	if err != nil {
		return nil, err
	}
	hash := SpecHash(*spec)
	spec.Annotations.Labels[LabelSpecHash] = hash
	c.Labels[LabelSpecHash] = hash
	return spec, nil
}

// mode is replicated with the service's replicas (one for a singleton), or
// global.
func mode(s types.ServiceConfig, ds *compose.ServiceSpec) swarm.ServiceMode {
	if s.Deploy != nil && s.Deploy.Mode == "global" {
		return swarm.ServiceMode{Global: &swarm.GlobalService{}}
	}
	n := uint64(max(ds.Replicas, 0))
	if ds.Policy.Singleton {
		n = 1
	}
	return swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &n}}
}

// updateConfig is the Swarm update of the service as Berth rolls it out
// (compose.Policy): the order Berth chose (stop-first for a singleton or a
// published port, unless the file says), parallelism, delay, monitor and
// failure action of deploy.update_config.
func updateConfig(pol compose.Policy) *swarm.UpdateConfig {
	return &swarm.UpdateConfig{
		Parallelism:   uint64(max(pol.Parallelism, 0)),
		Delay:         pol.Delay,
		FailureAction: pol.FailureAction,
		Monitor:       pol.Monitor,
		Order:         pol.Order,
	}
}

// rollbackConfig is the Swarm rollback of the service: compose.Policy's
// rollback (deploy.rollback_config over the update's values), and
// rollback_config's failure_action (pause unless the file says continue)
// and max_failure_ratio, which compose.Policy does not keep.
func rollbackConfig(s types.ServiceConfig, pol compose.Policy) *swarm.UpdateConfig {
	c := &swarm.UpdateConfig{
		Parallelism:   uint64(max(pol.Rollback.Parallelism, 0)),
		Delay:         pol.Rollback.Delay,
		FailureAction: swarm.UpdateFailureActionPause,
		Monitor:       pol.Rollback.Monitor,
		Order:         pol.Rollback.Order,
	}
	if s.Deploy != nil && s.Deploy.RollbackConfig != nil {
		if rc := s.Deploy.RollbackConfig; rc.FailureAction != "" {
			c.FailureAction = rc.FailureAction
		}
		c.MaxFailureRatio = s.Deploy.RollbackConfig.MaxFailureRatio
	}
	return c
}

// restartPolicy is deploy.restart_policy, or else the restart key: no ->
// none, always and unless-stopped -> any, on-failure[:N] -> on-failure
// with N attempts at most. Neither leaves the Swarm's default (any).
func restartPolicy(s types.ServiceConfig) *swarm.RestartPolicy {
	if s.Deploy != nil && s.Deploy.RestartPolicy != nil {
		rp := s.Deploy.RestartPolicy
		out := &swarm.RestartPolicy{Condition: swarm.RestartPolicyCondition(rp.Condition)}
		if rp.Delay != nil {
			d := time.Duration(*rp.Delay)
			out.Delay = &d
		}
		if rp.MaxAttempts != nil {
			n := *rp.MaxAttempts
			out.MaxAttempts = &n
		}
		if rp.Window != nil {
			w := time.Duration(*rp.Window)
			out.Window = &w
		}
		return out
	}
	name, count, _ := strings.Cut(s.Restart, ":")
	switch name {
	case "":
		return nil
	case "no":
		return &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone}
	case "on-failure":
		out := &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure}
		if n, err := strconv.ParseUint(count, 10, 64); err == nil && n > 0 {
			out.MaxAttempts = &n
		}
		return out
	default: // always, unless-stopped
		return &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny}
	}
}

// placement is deploy.placement: constraints, spread preferences and
// max_replicas_per_node.
func placement(s types.ServiceConfig) *swarm.Placement {
	if s.Deploy == nil {
		return nil
	}
	pl := s.Deploy.Placement
	if len(pl.Constraints) == 0 && len(pl.Preferences) == 0 && pl.MaxReplicas == 0 {
		return nil
	}
	out := &swarm.Placement{Constraints: nonEmpty(pl.Constraints), MaxReplicas: pl.MaxReplicas}
	for _, pref := range pl.Preferences {
		out.Preferences = append(out.Preferences, swarm.PlacementPreference{Spread: &swarm.SpreadOver{SpreadDescriptor: pref.Spread}})
	}
	return out
}

// resourcesOf is deploy.resources (limits: cpus, memory, pids;
// reservations: cpus, memory, discrete generic resources), with the
// service's cpus, mem_limit and pids_limit where deploy says nothing, as
// the engine backend does.
func resourcesOf(s types.ServiceConfig) *swarm.ResourceRequirements {
	limits := &swarm.Limit{MemoryBytes: int64(s.MemLimit), NanoCPUs: nanoCPUs(s.CPUS), Pids: s.PidsLimit}
	var reservations *swarm.Resources
	if s.Deploy != nil {
		if l := s.Deploy.Resources.Limits; l != nil {
			if l.MemoryBytes != 0 {
				limits.MemoryBytes = int64(l.MemoryBytes)
			}
			if l.NanoCPUs != 0 {
				limits.NanoCPUs = nanoCPUs(float32(l.NanoCPUs))
			}
			if l.Pids != 0 {
				limits.Pids = l.Pids
			}
		}
		if r := s.Deploy.Resources.Reservations; r != nil {
			reservations = &swarm.Resources{MemoryBytes: int64(r.MemoryBytes), NanoCPUs: nanoCPUs(float32(r.NanoCPUs))}
			for _, g := range r.GenericResources {
				if g.DiscreteResourceSpec != nil {
					reservations.GenericResources = append(reservations.GenericResources, swarm.GenericResource{
						DiscreteResourceSpec: &swarm.DiscreteGenericResource{Kind: g.DiscreteResourceSpec.Kind, Value: g.DiscreteResourceSpec.Value}})
				}
			}
			if reservations.MemoryBytes == 0 && reservations.NanoCPUs == 0 && len(reservations.GenericResources) == 0 {
				reservations = nil
			}
		}
	}
	if *limits == (swarm.Limit{}) {
		limits = nil
	}
	if limits == nil && reservations == nil {
		return nil
	}
	return &swarm.ResourceRequirements{Limits: limits, Reservations: reservations}
}

// nanoCPUs turns a number of CPUs as written (0.1, 1.5) into billionths,
// reading the float32 compose-go holds as its shortest decimal, so 0.1 is
// 100000000 and not 100000001.
func nanoCPUs(cpus float32) int64 {
	if cpus == 0 {
		return 0
	}
	f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(cpus), 'f', -1, 32), 64)
	return int64(math.Round(f * 1e9))
}

// hosts is extra_hosts as a Swarm writes them into /etc/hosts: "IP NAME",
// sorted.
func hosts(h types.HostsList) []string {
	var out []string
	for name, ips := range h {
		for _, ip := range ips {
			out = append(out, ip+" "+name)
		}
	}
	sort.Strings(out)
	return out
}

// mountsOf is the service's volumes then its tmpfs, as Swarm mounts. A
// named volume is the project's (PROJECT_KEY, or its external name), with
// the top-level volume's labels, driver and driver_opts, so that each node
// creates it the same way.
func mountsOf(p *types.Project, s types.ServiceConfig) ([]mount.Mount, error) {
	var out []mount.Mount
	for _, v := range s.Volumes {
		m := mount.Mount{Target: v.Target, ReadOnly: v.ReadOnly}
		switch v.Type {
		case types.VolumeTypeVolume:
			m.Type = mount.TypeVolume
			labels := map[string]string{}
			var driver *mount.Driver
			if v.Source != "" {
				vol, ok := p.Volumes[v.Source]
				if !ok {
					return nil, fmt.Errorf("volume %q is not declared in the top-level volumes", v.Source)
				}
				m.Source = vol.Name
				if !bool(vol.External) {
					maps.Copy(labels, vol.Labels)
					labels[LabelNamespace] = p.Name
					if vol.Driver != "" || len(vol.DriverOpts) > 0 {
						driver = &mount.Driver{Name: vol.Driver, Options: nonEmptyMap(map[string]string(vol.DriverOpts))}
					}
				}
			}
			noCopy := false
			if v.Volume != nil {
				maps.Copy(labels, v.Volume.Labels)
				noCopy = v.Volume.NoCopy
			}
			if len(labels) > 0 || driver != nil || noCopy {
				m.VolumeOptions = &mount.VolumeOptions{NoCopy: noCopy, Labels: nonEmptyMap(labels), DriverConfig: driver}
			}
		case types.VolumeTypeBind:
			m.Type = mount.TypeBind
			m.Source = v.Source
			if v.Bind != nil && v.Bind.Propagation != "" {
				m.BindOptions = &mount.BindOptions{Propagation: mount.Propagation(v.Bind.Propagation)}
			}
		case types.VolumeTypeTmpfs:
			m.Type = mount.TypeTmpfs
			if v.Tmpfs != nil && (v.Tmpfs.Size != 0 || v.Tmpfs.Mode != 0) {
				m.TmpfsOptions = &mount.TmpfsOptions{SizeBytes: int64(v.Tmpfs.Size), Mode: fileMode(v.Tmpfs.Mode)}
			}
		default:
			return nil, fmt.Errorf("volume %s: type %q is not supported", v.Target, v.Type)
		}
		out = append(out, m)
	}
	for _, t := range s.Tmpfs {
		m, err := tmpfsMount(t)
		if err != nil {
			return nil, fmt.Errorf("tmpfs: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

// tmpfsMount reads an entry of the tmpfs key, PATH[:size=N,mode=M], as a
// tmpfs mount: a Swarm has no other tmpfs options.
func tmpfsMount(t string) (mount.Mount, error) {
	target, opts, _ := strings.Cut(t, ":")
	m := mount.Mount{Type: mount.TypeTmpfs, Target: target}
	if !strings.HasPrefix(target, "/") {
		return m, fmt.Errorf("%q: the target must be an absolute path", t)
	}
	if opts == "" {
		return m, nil
	}
	o := &mount.TmpfsOptions{}
	for _, opt := range strings.Split(opts, ",") {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "size":
			n, err := units.RAMInBytes(v)
			if err != nil || n <= 0 {
				return m, fmt.Errorf("%q: size %q is not a size (like 64m)", t, v)
			}
			o.SizeBytes = n
		case "mode":
			n, err := strconv.ParseUint(v, 8, 32)
			if err != nil {
				return m, fmt.Errorf("%q: mode %q is not an octal mode (like 1777)", t, v)
			}
			o.Mode = fileMode(uint32(n))
		default:
			return m, fmt.Errorf("%q: option %q: a Swarm tmpfs has only size and mode", t, k)
		}
	}
	m.TmpfsOptions = o
	return m, nil
}

// attachments are the service's networks, by priority then name as compose
// orders them: the network's engine name, and the aliases (the service's
// name unless use_service_name_alias is false, then the file's).
func attachments(p *types.Project, s types.ServiceConfig) []swarm.NetworkAttachmentConfig {
	keys := slices.Sorted(maps.Keys(s.Networks))
	priority := func(k string) int {
		if n := s.Networks[k]; n != nil {
			return n.Priority
		}
		return 0
	}
	sort.SliceStable(keys, func(i, j int) bool { return priority(keys[i]) > priority(keys[j]) })
	var out []swarm.NetworkAttachmentConfig
	for _, k := range keys {
		cfg := s.Networks[k]
		target := k
		if n, ok := p.Networks[k]; ok {
			target = n.Name
		}
		var aliases []string
		if cfg.ServiceNameAliasEnabled() {
			aliases = append(aliases, s.Name)
		}
		if cfg != nil {
			aliases = append(aliases, cfg.Aliases...)
		}
		out = append(out, swarm.NetworkAttachmentConfig{Target: target, Aliases: aliases})
	}
	return out
}

// endpointSpec is deploy.endpoint_mode (vip unless dnsrr) and the ports:
// published in host mode where the file says mode: host, else through
// the routing mesh (ingress).
func endpointSpec(s types.ServiceConfig) (*swarm.EndpointSpec, error) {
	e := &swarm.EndpointSpec{Mode: swarm.ResolutionModeVIP}
	if s.Deploy != nil && s.Deploy.EndpointMode == string(swarm.ResolutionModeDNSRR) {
		e.Mode = swarm.ResolutionModeDNSRR
	}
	for _, port := range s.Ports {
		pc := swarm.PortConfig{
			Name:        port.Name,
			Protocol:    swarm.PortConfigProtocolTCP,
			TargetPort:  port.Target,
			PublishMode: swarm.PortConfigPublishModeIngress,
		}
		if port.Protocol != "" {
			pc.Protocol = swarm.PortConfigProtocol(port.Protocol)
		}
		if port.Mode == "host" {
			pc.PublishMode = swarm.PortConfigPublishModeHost
		}
		if port.Published != "" {
			n, err := strconv.ParseUint(port.Published, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("port %d: published %q: %w", port.Target, port.Published, err)
			}
			pc.PublishedPort = uint32(n)
		}
		e.Ports = append(e.Ports, pc)
	}
	return e, nil
}

// nonEmpty is a copy of s, nil when empty: the spec shares nothing with
// the project.
func nonEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}

// nonEmptyMap is a copy of m, nil when empty.
func nonEmptyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func fileMode(m uint32) os.FileMode { return os.FileMode(m) }
