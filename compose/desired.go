package compose

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/go-connections/nat"
	"github.com/docker/go-units"
)

// Pin is an image resolved to exactly one content digest.
type Pin struct {
	Ref    string // as written in the compose file or the request, e.g. registry/web:v2
	Pinned string // what containers run, e.g. registry/web@sha256:…, or an image ID
	Digest string // sha256:… (the manifest digest, or the image ID for local-only images)
}

// Desired is the state a release wants on the engine.
type Desired struct {
	Project  string
	Networks []NetworkSpec
	Volumes  []VolumeSpec
	Services []ServiceSpec // in dependency order: dependencies first
}

// NetworkSpec is a network the project owns.
type NetworkSpec struct {
	Key     string // the key in the compose file
	Name    string // the engine name
	Options network.CreateOptions
}

// VolumeSpec is a named volume the project owns.
type VolumeSpec struct {
	Key     string
	Name    string
	Driver  string
	Options map[string]string
	Labels  map[string]string
}

// ServiceSpec is what every container of one service should look like.
type ServiceSpec struct {
	Name      string
	Image     Pin
	Hash      string // config hash: changes whenever a container must be recreated
	Replicas  int
	DependsOn []string
	// StopTimeout is the grace period between the stop signal and SIGKILL.
	StopTimeout time.Duration
	// ContainerName is set when the compose file fixes it (one replica).
	ContainerName string

	Config   container.Config
	Host     container.HostConfig
	Networks []EndpointSpec // the first one is attached at create time
	// Policy is how the service rolls out; it is not part of the hash.
	Policy Policy
	// Swarm is the service as a Swarm runs it, set only for a project
	// deployed to a Swarm (package compose/swarm converts it from the
	// compose file): what a release records and a rollback redeploys.
	Swarm *swarm.ServiceSpec `json:",omitempty"`
}

// EndpointSpec is the attachment of a service to one network.
type EndpointSpec struct {
	Network string // engine name
	Aliases []string
}

// containerName returns the name of replica n (1-based).
func (s ServiceSpec) containerName(project string, n int) string {
	if s.ContainerName != "" {
		return s.ContainerName
	}
	return fmt.Sprintf("%s-%s-%d", project, s.Name, n)
}

// NewDesired computes the desired state of project p with the images in
// pins (service name -> pin). Every service must have a pin.
func NewDesired(p *types.Project, pins map[string]Pin) (*Desired, error) {
	d := &Desired{Project: p.Name}
	for _, key := range sortedKeys(p.Networks) {
		n := p.Networks[key]
		if n.External {
			continue
		}
		d.Networks = append(d.Networks, NetworkSpec{Key: key, Name: n.Name, Options: networkOptions(p.Name, key, n)})
	}
	for _, key := range sortedKeys(p.Volumes) {
		v := p.Volumes[key]
		if v.External {
			continue
		}
		labels := maps.Clone(v.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		labels[LabelProject] = p.Name
		labels[LabelVolume] = key
		labels[LabelVersion] = composeVersion
		d.Volumes = append(d.Volumes, VolumeSpec{Key: key, Name: v.Name, Driver: v.Driver, Options: v.DriverOpts, Labels: labels})
	}
	order, err := dependencyOrder(p)
	if err != nil {
		return nil, err
	}
	for _, name := range order {
		s := p.Services[name]
		pin, ok := pins[name]
		if !ok {
			return nil, fmt.Errorf("desired state of %s: no resolved image", name)
		}
		spec, err := serviceSpec(p, s, pin)
		if err != nil {
			return nil, fmt.Errorf("desired state of %s: %w", name, err)
		}
		d.Services = append(d.Services, spec)
	}
	return d, nil
}

func networkOptions(project, key string, n types.NetworkConfig) network.CreateOptions {
	labels := maps.Clone(map[string]string(n.Labels))
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelProject] = project
	labels[LabelNetwork] = key
	labels[LabelVersion] = composeVersion
	o := network.CreateOptions{
		Driver:     n.Driver,
		Options:    n.DriverOpts,
		Internal:   n.Internal,
		Attachable: n.Attachable,
		EnableIPv6: n.EnableIPv6,
		Labels:     labels,
	}
	if n.Ipam.Driver != "" || len(n.Ipam.Config) > 0 {
		o.IPAM = &network.IPAM{Driver: n.Ipam.Driver, Options: n.Ipam.Options}
		for _, c := range n.Ipam.Config {
			o.IPAM.Config = append(o.IPAM.Config, network.IPAMConfig{Subnet: c.Subnet, Gateway: c.Gateway, IPRange: c.IPRange, AuxAddress: c.AuxiliaryAddresses})
		}
	}
	return o
}

// dependencyOrder sorts services so that every service comes after the
// services it depends on; ties are broken by name, so the order is stable.
func dependencyOrder(p *types.Project) ([]string, error) {
	var order []string
	state := map[string]int{} // 0 new, 1 visiting, 2 done
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("order services: %w: dependency cycle %s", ErrInvalid, strings.Join(append(path, name), " -> "))
		case 2:
			return nil
		}
		state[name] = 1
		s := p.Services[name]
		for _, dep := range sortedKeys(s.DependsOn) {
			if _, ok := p.Services[dep]; !ok {
				continue // an optional dependency on a disabled service
			}
			if err := visit(dep, append(path, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, name)
		return nil
	}
	for _, name := range p.ServiceNames() {
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func serviceSpec(p *types.Project, s types.ServiceConfig, pin Pin) (ServiceSpec, error) {
	spec := ServiceSpec{
		Name:          s.Name,
		Image:         pin,
		Replicas:      replicas(s),
		DependsOn:     sortedKeys(s.DependsOn),
		StopTimeout:   10 * time.Second,
		ContainerName: s.ContainerName,
	}
	pol, errs := policyOf(p, s)
	if len(errs) > 0 {
		return spec, fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	spec.Policy = pol
	if s.StopGracePeriod != nil {
		spec.StopTimeout = time.Duration(*s.StopGracePeriod)
	}
	stopSeconds := int(spec.StopTimeout / time.Second)

	labels := map[string]string{}
	maps.Copy(labels, s.Labels)
	labels[LabelProject] = p.Name
	labels[LabelService] = s.Name
	labels[LabelOneoff] = "False"
	labels[LabelVersion] = composeVersion
	labels[LabelWorkingDir] = p.WorkingDir
	labels[LabelConfigFile] = strings.Join(p.ComposeFiles, ",")

	spec.Config = container.Config{
		Image:       pin.Pinned,
		Env:         environment(s.Environment),
		Cmd:         []string(s.Command),
		Entrypoint:  []string(s.Entrypoint),
		User:        s.User,
		WorkingDir:  s.WorkingDir,
		Hostname:    s.Hostname,
		Domainname:  s.DomainName,
		Tty:         s.Tty,
		OpenStdin:   s.StdinOpen,
		StopSignal:  s.StopSignal,
		StopTimeout: &stopSeconds,
		Labels:      labels,
		Healthcheck: healthConfig(s.HealthCheck),
	}
	exposed, bindings, err := ports(s)
	if err != nil {
		return spec, err
	}
	spec.Config.ExposedPorts = exposed

	mounts, err := mountsOf(p, s)
	if err != nil {
		return spec, err
	}
	spec.Host = container.HostConfig{
		Mounts:         mounts,
		PortBindings:   bindings,
		RestartPolicy:  restartPolicy(s),
		CapAdd:         s.CapAdd,
		CapDrop:        s.CapDrop,
		DNS:            s.DNS,
		DNSOptions:     s.DNSOpts,
		DNSSearch:      s.DNSSearch,
		ExtraHosts:     sortedStrings(s.ExtraHosts.AsList(":")),
		GroupAdd:       s.GroupAdd,
		Init:           s.Init,
		ReadonlyRootfs: s.ReadOnly,
		Privileged:     s.Privileged,
		SecurityOpt:    s.SecurityOpt,
		Sysctls:        map[string]string(s.Sysctls),
		ShmSize:        int64(s.ShmSize),
		PidMode:        container.PidMode(s.Pid),
		IpcMode:        container.IpcMode(s.Ipc),
		UTSMode:        container.UTSMode(s.Uts),
		UsernsMode:     container.UsernsMode(s.UserNSMode),
		Runtime:        s.Runtime,
		OomScoreAdj:    int(s.OomScoreAdj),
		Resources:      resources(s),
	}
	if len(s.Tmpfs) > 0 {
		spec.Host.Tmpfs = map[string]string{}
		for _, t := range s.Tmpfs {
			path, opts, _ := strings.Cut(t, ":")
			spec.Host.Tmpfs[path] = opts
		}
	}
	if s.Logging != nil {
		spec.Host.LogConfig = container.LogConfig{Type: s.Logging.Driver, Config: s.Logging.Options}
	}
	if s.NetworkMode != "" {
		spec.Host.NetworkMode = container.NetworkMode(s.NetworkMode)
	} else {
		spec.Networks = endpoints(p, s)
		if len(spec.Networks) > 0 {
			spec.Host.NetworkMode = container.NetworkMode(spec.Networks[0].Network)
		}
	}
	spec.Hash, err = configHash(spec)
	if err != nil {
		return spec, err
	}
	return spec, nil
}

func environment(env types.MappingWithEquals) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		if v == nil {
			continue // declared without a value and not set: compose leaves it out
		}
		out = append(out, k+"="+*v)
	}
	sort.Strings(out)
	return out
}

func healthConfig(h *types.HealthCheckConfig) *container.HealthConfig {
	if h == nil {
		return nil
	}
	if h.Disable {
		return &container.HealthConfig{Test: []string{"NONE"}}
	}
	c := &container.HealthConfig{Test: h.Test}
	if h.Interval != nil {
		c.Interval = time.Duration(*h.Interval)
	}
	if h.Timeout != nil {
		c.Timeout = time.Duration(*h.Timeout)
	}
	if h.StartPeriod != nil {
		c.StartPeriod = time.Duration(*h.StartPeriod)
	}
	if h.StartInterval != nil {
		c.StartInterval = time.Duration(*h.StartInterval)
	}
	if h.Retries != nil {
		c.Retries = int(*h.Retries)
	}
	return c
}

func ports(s types.ServiceConfig) (nat.PortSet, nat.PortMap, error) {
	exposed := nat.PortSet{}
	bindings := nat.PortMap{}
	for _, e := range s.Expose {
		proto, port := "tcp", e
		if p, pr, ok := strings.Cut(e, "/"); ok {
			port, proto = p, pr
		}
		np, err := nat.NewPort(proto, port)
		if err != nil {
			return nil, nil, fmt.Errorf("expose %q: %w", e, err)
		}
		exposed[np] = struct{}{}
	}
	for _, p := range s.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		np, err := nat.NewPort(proto, strconv.FormatUint(uint64(p.Target), 10))
		if err != nil {
			return nil, nil, fmt.Errorf("port %d: %w", p.Target, err)
		}
		exposed[np] = struct{}{}
		if p.Published != "" || p.HostIP != "" {
			bindings[np] = append(bindings[np], nat.PortBinding{HostIP: p.HostIP, HostPort: p.Published})
		}
	}
	if len(exposed) == 0 {
		exposed = nil
	}
	if len(bindings) == 0 {
		bindings = nil
	}
	return exposed, bindings, nil
}

func mountsOf(p *types.Project, s types.ServiceConfig) ([]mount.Mount, error) {
	var out []mount.Mount
	for _, v := range s.Volumes {
		m := mount.Mount{Target: v.Target, ReadOnly: v.ReadOnly}
		switch v.Type {
		case types.VolumeTypeVolume:
			m.Type = mount.TypeVolume
			if v.Source != "" {
				vol, ok := p.Volumes[v.Source]
				if !ok {
					return nil, fmt.Errorf("volume %q is not declared in the top-level volumes", v.Source)
				}
				m.Source = vol.Name
			}
			if v.Volume != nil {
				m.VolumeOptions = &mount.VolumeOptions{NoCopy: v.Volume.NoCopy, Subpath: v.Volume.Subpath}
			}
		case types.VolumeTypeBind:
			m.Type = mount.TypeBind
			m.Source = v.Source
			if v.Bind != nil && v.Bind.Propagation != "" {
				m.BindOptions = &mount.BindOptions{Propagation: mount.Propagation(v.Bind.Propagation)}
			}
		case types.VolumeTypeTmpfs:
			m.Type = mount.TypeTmpfs
			if v.Tmpfs != nil {
				m.TmpfsOptions = &mount.TmpfsOptions{SizeBytes: int64(v.Tmpfs.Size)}
			}
		default:
			return nil, fmt.Errorf("volume %s: type %q is not supported", v.Target, v.Type)
		}
		out = append(out, m)
	}
	return out, nil
}

func restartPolicy(s types.ServiceConfig) container.RestartPolicy {
	if s.Restart != "" {
		name, count, _ := strings.Cut(s.Restart, ":")
		n, _ := strconv.Atoi(count)
		return container.RestartPolicy{Name: container.RestartPolicyMode(name), MaximumRetryCount: n}
	}
	if s.Deploy != nil && s.Deploy.RestartPolicy != nil {
		rp := s.Deploy.RestartPolicy
		p := container.RestartPolicy{}
		switch rp.Condition {
		case "none":
			p.Name = container.RestartPolicyDisabled
		case "on-failure":
			p.Name = container.RestartPolicyOnFailure
		default:
			p.Name = container.RestartPolicyUnlessStopped
		}
		if rp.MaxAttempts != nil && p.Name == container.RestartPolicyOnFailure {
			p.MaximumRetryCount = int(*rp.MaxAttempts)
		}
		return p
	}
	return container.RestartPolicy{}
}

func resources(s types.ServiceConfig) container.Resources {
	r := container.Resources{
		Memory:             int64(s.MemLimit),
		MemoryReservation:  int64(s.MemReservation),
		MemorySwap:         int64(s.MemSwapLimit),
		NanoCPUs:           int64(s.CPUS * 1e9),
		CPUShares:          s.CPUShares,
		CPUPeriod:          s.CPUPeriod,
		CPUQuota:           s.CPUQuota,
		CPURealtimePeriod:  s.CPURTPeriod,
		CPURealtimeRuntime: s.CPURTRuntime,
		CpusetCpus:         s.CPUSet,
		CgroupParent:       s.CgroupParent,
	}
	if s.OomKillDisable {
		t := true
		r.OomKillDisable = &t
	}
	if s.MemSwappiness != 0 {
		v := int64(s.MemSwappiness)
		r.MemorySwappiness = &v
	}
	if s.PidsLimit != 0 {
		pl := s.PidsLimit
		r.PidsLimit = &pl
	}
	if s.Deploy != nil && s.Deploy.Resources.Limits != nil {
		l := s.Deploy.Resources.Limits
		if l.MemoryBytes != 0 {
			r.Memory = int64(l.MemoryBytes)
		}
		if l.NanoCPUs != 0 {
			r.NanoCPUs = int64(float64(l.NanoCPUs) * 1e9)
		}
		if l.Pids != 0 {
			pl := l.Pids
			r.PidsLimit = &pl
		}
	}
	if s.Deploy != nil && s.Deploy.Resources.Reservations != nil && s.Deploy.Resources.Reservations.MemoryBytes != 0 {
		r.MemoryReservation = int64(s.Deploy.Resources.Reservations.MemoryBytes)
	}
	r.Ulimits = Ulimits(s.Ulimits)
	return r
}

// Ulimits is a service's ulimits as the engine takes them, sorted by name:
// a single value is both the soft and the hard limit; an empty entry is
// left out.
func Ulimits(u map[string]*types.UlimitsConfig) []*container.Ulimit {
	var out []*container.Ulimit
	for _, name := range sortedKeys(u) {
		l := u[name]
		if l == nil {
			continue
		}
		soft, hard := int64(l.Soft), int64(l.Hard)
		if l.Single != 0 {
			soft, hard = int64(l.Single), int64(l.Single)
		}
		out = append(out, &units.Ulimit{Name: name, Soft: soft, Hard: hard})
	}
	return out
}

// endpoints lists the networks of a service, sorted by priority then name
// like compose does; a service with no networks joins the default network.
func endpoints(p *types.Project, s types.ServiceConfig) []EndpointSpec {
	type ep struct {
		key      string
		priority int
		aliases  []string
	}
	var eps []ep
	for key, cfg := range s.Networks {
		e := ep{key: key}
		if cfg == nil || cfg.ServiceNameAliasEnabled() {
			e.aliases = append(e.aliases, s.Name)
		}
		if cfg != nil {
			e.priority = cfg.Priority
			e.aliases = append(e.aliases, cfg.Aliases...)
		}
		eps = append(eps, e)
	}
	sort.Slice(eps, func(i, j int) bool {
		if eps[i].priority != eps[j].priority {
			return eps[i].priority > eps[j].priority
		}
		return eps[i].key < eps[j].key
	})
	out := make([]EndpointSpec, 0, len(eps))
	for _, e := range eps {
		name := e.key
		if n, ok := p.Networks[e.key]; ok {
			name = n.Name
		}
		out = append(out, EndpointSpec{Network: name, Aliases: e.aliases})
	}
	return out
}

// configHash digests everything that is sent to the engine for a container
// of this service (its config, host config and networks), so that any
// change that needs a new container changes the hash and nothing else does:
// replicas, for instance, are not part of it.
func configHash(s ServiceSpec) (string, error) {
	b, err := json.Marshal(struct {
		Config   container.Config
		Host     container.HostConfig
		Networks []EndpointSpec
	}{s.Config, s.Host, s.Networks})
	if err != nil {
		return "", fmt.Errorf("hash config: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

func sortedStrings(s []string) []string {
	sort.Strings(s)
	return s
}
