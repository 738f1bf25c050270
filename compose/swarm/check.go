package swarm

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-deploy/berth/compose"

	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// Check lists every key of the compose project that a Swarm service (Docker
// Engine 20.10, API 1.41) cannot honour, or that Berth does not carry over
// to one, so a deploy never silently runs something other than what the
// file says. It is LoadOptions.Check for a project deployed to a Swarm: it
// keeps what compose.Check asks of any backend (an image, a sound rollout
// policy, volumes of type volume, bind or tmpfs, network attachments with
// only aliases) and refuses, naming the key, what only one engine can do.
// docs/swarm-keys.md lists every key: carried over, refused or ignored.
func Check(p *types.Project) []error {
	var problems []error
	for _, key := range slices.Sorted(maps.Keys(p.Networks)) {
		n := p.Networks[key]
		if !bool(n.External) && n.Driver != "" && n.Driver != "overlay" {
			problems = append(problems, fmt.Errorf("network %s: driver %q: a Swarm stack's networks are overlay networks (leave driver out, or say overlay)", key, n.Driver))
		}
	}
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		bad := func(format string, args ...any) {
			problems = append(problems, fmt.Errorf("service %s: "+format, append([]any{name}, args...)...))
		}
		if s.Image == "" {
			if s.Build != nil {
				bad("build without image: a Swarm's nodes pull images from a registry (build them in CI and name the image)")
			} else {
				bad("no image (berth deploys images from a registry; build them in CI)")
			}
		}
		for _, e := range compose.PolicyProblems(p, s) {
			bad("%v", e)
		}
		checkMode(s, bad)
		checkNetworks(s, bad)
		checkVolumes(s, bad)
		checkPorts(s, bad)
		checkTmpfs(s, bad)
		checkResources(s, bad)
		checkHealth(s, bad)
		if s.PullPolicy == types.PullPolicyNever || s.PullPolicy == types.PullPolicyBuild {
			bad("pull_policy %s: every node of a Swarm pulls the image from a registry, so a local-only image cannot be deployed", s.PullPolicy)
		}
		if s.Logging != nil && s.Logging.Driver == "" && len(s.Logging.Options) > 0 {
			bad("logging.options without logging.driver: name the driver (a Swarm's nodes may each default to another)")
		}
		for _, k := range refusedKeys(s) {
			bad("%s", k)
		}
	}
	return problems
}

// refusedKeys names, with the reason, every key that is set and that a
// Swarm service cannot honour, sorted by key.
func refusedKeys(s types.ServiceConfig) []string {
	const (
		noSwarm = "a Swarm service has no such option (Engine 20.10, API 1.41)"
		noBerth = "is not supported by berth yet"
	)
	refused := []struct {
		key    string
		set    bool
		reason string
	}{
		{"annotations", len(s.Annotations) > 0, noBerth},
		{"blkio_config", s.BlkioConfig != nil, noSwarm},
		{"cgroup", s.Cgroup != "", noSwarm},
		{"cgroup_parent", s.CgroupParent != "", noSwarm},
		{"configs", len(s.Configs) > 0, "is not supported on a Swarm by berth yet (Swarm configs are not created from the compose file)"},
		{"container_name", s.ContainerName != "", "a Swarm names a service's tasks itself"},
		{"cpu_count", s.CPUCount != 0, noSwarm},
		{"cpu_percent", s.CPUPercent != 0, noSwarm},
		{"cpu_period", s.CPUPeriod != 0, noSwarm + "; use deploy.resources.limits.cpus"},
		{"cpu_quota", s.CPUQuota != 0, noSwarm + "; use deploy.resources.limits.cpus"},
		{"cpu_rt_period", s.CPURTPeriod != 0, noSwarm},
		{"cpu_rt_runtime", s.CPURTRuntime != 0, noSwarm},
		{"cpu_shares", s.CPUShares != 0, noSwarm + "; use deploy.resources.reservations.cpus"},
		{"cpuset", s.CPUSet != "", noSwarm},
		{"credential_spec", s.CredentialSpec != nil, "is for Windows containers, which berth does not run"},
		{"device_cgroup_rules", len(s.DeviceCgroupRules) > 0, noSwarm},
		{"devices", len(s.Devices) > 0, noSwarm},
		{"domainname", s.DomainName != "", noSwarm},
		{"external_links", len(s.ExternalLinks) > 0, noSwarm + "; reach other services by name on a shared network"},
		{"gpus", len(s.Gpus) > 0, noSwarm},
		{"ipc", s.Ipc != "", noSwarm},
		{"isolation", s.Isolation != "", "is for Windows containers, which berth does not run"},
		{"links", len(s.Links) > 0, noSwarm + "; reach other services by name on a shared network"},
		{"log_driver", s.LogDriver != "", "is the old form of logging.driver: use logging"},
		{"log_opt", len(s.LogOpt) > 0, "is the old form of logging.options: use logging"},
		{"mac_address", s.MacAddress != "", noSwarm},
		{"mem_reservation", s.MemReservation != 0, noSwarm + "; use deploy.resources.reservations.memory (which the Swarm also reserves when it places the task)"},
		{"mem_swappiness", s.MemSwappiness != 0, noSwarm},
		{"memswap_limit", s.MemSwapLimit != 0, noSwarm},
		{"models", len(s.Models) > 0, noBerth},
		{"net", s.Net != "", noSwarm},
		{"network_mode", s.NetworkMode != "", noSwarm + "; a service's tasks join the networks under networks:"},
		{"oom_kill_disable", s.OomKillDisable, noSwarm},
		{"oom_score_adj", s.OomScoreAdj != 0, "a Swarm service has it only from API 1.46 (Engine 27); Engine 20.10 would drop it"},
		{"pid", s.Pid != "", noSwarm},
		{"platform", s.Platform != "", "berth pins the image by digest; a Swarm places tasks by the image's platforms itself"},
		{"post_start", len(s.PostStart) > 0, noBerth},
		{"pre_start", len(s.PreStart) > 0, noBerth},
		{"pre_stop", len(s.PreStop) > 0, noBerth},
		{"privileged", s.Privileged, noSwarm + "; add the capabilities it needs with cap_add"},
		{"provider", s.Provider != nil, noBerth},
		{"pull_refresh_after", s.PullRefreshAfter != "", noBerth},
		{"runtime", s.Runtime != "", noSwarm},
		{"secrets", len(s.Secrets) > 0, "is not supported on a Swarm by berth yet (Swarm secrets are not created from the compose file)"},
		{"security_opt", len(s.SecurityOpt) > 0, noSwarm},
		{"shm_size", s.ShmSize != 0, noSwarm + "; mount a tmpfs at /dev/shm (volumes: type tmpfs, tmpfs.size)"},
		{"storage_opt", len(s.StorageOpt) > 0, noSwarm},
		{"umask", s.Umask != nil, noBerth},
		{"use_api_socket", s.UseAPISocket, noBerth},
		{"userns_mode", s.UserNSMode != "", noSwarm},
		{"uts", s.Uts != "", noSwarm},
		{"volume_driver", s.VolumeDriver != "", noSwarm + "; set the driver on the top-level volume"},
		{"volumes_from", len(s.VolumesFrom) > 0, noSwarm + "; share a named volume instead"},
	}
	var out []string
	for _, r := range refused {
		if r.set {
			out = append(out, r.key+": "+r.reason)
		}
	}
	return out
}

// checkMode refuses the deploy modes Berth does not run as a service.
func checkMode(s types.ServiceConfig, bad func(string, ...any)) {
	if s.Deploy == nil {
		return
	}
	switch s.Deploy.Mode {
	case "", "replicated", "global":
	case "replicated-job", "global-job":
		bad("deploy.mode %q: jobs are not deployed as services (berth runs one-off tasks as x-berth.pre_deploy / post_deploy hooks)", s.Deploy.Mode)
	default:
		bad("deploy.mode %q: want replicated or global", s.Deploy.Mode)
	}
	if s.Deploy.Mode == "global" && s.Deploy.Replicas != nil {
		bad("deploy.replicas with deploy.mode global: a global service runs one task on every node")
	}
	switch s.Deploy.EndpointMode {
	case "", "vip", "dnsrr":
	default:
		bad("deploy.endpoint_mode %q: want vip or dnsrr", s.Deploy.EndpointMode)
	}
	if rp := s.Deploy.RestartPolicy; rp != nil {
		switch rp.Condition {
		case "", "none", "on-failure", "any":
		default:
			bad("deploy.restart_policy.condition %q: want none, on-failure or any", rp.Condition)
		}
	}
	ext := extensionOf(s)
	if ext.Singleton && s.Deploy.Mode == "global" {
		bad("deploy.mode global contradicts x-berth.singleton: a singleton runs one task")
	}
	if ext.Singleton && s.Deploy.Replicas != nil && *s.Deploy.Replicas != 1 {
		bad("deploy.replicas %d contradicts x-berth.singleton: a singleton runs one task", *s.Deploy.Replicas)
	}
}

// checkNetworks keeps compose.Check's rule: an attachment is a network and
// aliases, nothing the engine would have to fix per container.
func checkNetworks(s types.ServiceConfig, bad func(string, ...any)) {
	for _, key := range slices.Sorted(maps.Keys(s.Networks)) {
		n := s.Networks[key]
		if n != nil && (n.Ipv4Address != "" || n.Ipv6Address != "" || len(n.LinkLocalIPs) > 0 || n.MacAddress != "" ||
			len(n.DriverOpts) > 0 || n.InterfaceName != "" || n.GatewayPriority != 0) {
			bad("networks.%s: only aliases and priority are supported (no fixed addresses, driver_opts, interface_name or gw_priority)", key)
		}
	}
}

// checkVolumes allows the mount types and options a Swarm mount has.
func checkVolumes(s types.ServiceConfig, bad func(string, ...any)) {
	for _, v := range s.Volumes {
		switch v.Type {
		case types.VolumeTypeVolume, types.VolumeTypeBind, types.VolumeTypeTmpfs:
		default:
			bad("volumes: %s of type %q is not supported", v.Target, v.Type)
			continue
		}
		if v.Volume != nil && v.Volume.Subpath != "" {
			bad("volumes: %s: volume.subpath: a Swarm mount has it only from API 1.45 (Engine 26)", v.Target)
		}
		if v.Bind != nil && v.Bind.SELinux != "" {
			bad("volumes: %s: bind.selinux: a Swarm mount has no SELinux relabelling", v.Target)
		}
		if v.Bind != nil && v.Bind.Recursive != "" {
			bad("volumes: %s: bind.recursive: a Swarm mount has it only from API 1.44 (Engine 25)", v.Target)
		}
	}
}

// checkPorts refuses what a Swarm cannot publish.
func checkPorts(s types.ServiceConfig, bad func(string, ...any)) {
	dnsrr := s.Deploy != nil && s.Deploy.EndpointMode == "dnsrr"
	for _, port := range s.Ports {
		if port.HostIP != "" {
			bad("ports: %d: host_ip %s: a Swarm publishes a port on every address of its nodes", port.Target, port.HostIP)
		}
		switch port.Mode {
		case "", "ingress", "host":
		default:
			bad("ports: %d: mode %q: want ingress or host", port.Target, port.Mode)
		}
		if port.Published != "" {
			if _, err := strconv.ParseUint(port.Published, 10, 16); err != nil {
				bad("ports: %d: published %q: a Swarm publishes one port per entry (a number from 1 to 65535)", port.Target, port.Published)
			}
		}
		switch port.Protocol {
		case "", "tcp", "udp", "sctp":
		default:
			bad("ports: %d: protocol %q: want tcp, udp or sctp", port.Target, port.Protocol)
		}
		if dnsrr && port.Mode != "host" {
			bad("ports: %d: deploy.endpoint_mode dnsrr publishes only in mode host (the routing mesh needs a virtual IP)", port.Target)
		}
	}
}

// checkTmpfs allows the tmpfs options a Swarm tmpfs mount has: size and
// mode.
func checkTmpfs(s types.ServiceConfig, bad func(string, ...any)) {
	for _, t := range s.Tmpfs {
		if _, err := tmpfsMount(t); err != nil {
			bad("tmpfs: %v", err)
		}
	}
}

// checkResources refuses the deploy.resources a Swarm task has no room for
// (the compose schema already refuses devices and generic_resources under
// limits, and pids under reservations).
func checkResources(s types.ServiceConfig, bad func(string, ...any)) {
	if s.Deploy == nil {
		return
	}
	if r := s.Deploy.Resources.Reservations; r != nil {
		if len(r.Devices) > 0 {
			bad("deploy.resources.reservations.devices: a Swarm service has no devices (use generic_resources)")
		}
		for _, g := range r.GenericResources {
			if g.DiscreteResourceSpec == nil || g.DiscreteResourceSpec.Kind == "" {
				bad("deploy.resources.reservations.generic_resources: each needs a discrete_resource_spec with a kind")
			}
		}
	}
}

// checkHealth refuses the x-berth.health probes Berth cannot run against a
// Swarm task: an exec probe, and an http or tcp probe whose port is not
// published in host mode (agentd reaches a task through its node's
// address, not through the task's overlay address).
func checkHealth(s types.ServiceConfig, bad func(string, ...any)) {
	h := extensionOf(s).Health
	if h == nil {
		return
	}
	const instead = "use a compose `healthcheck:` so Swarm reports the task running only once healthy"
	if h.Exec != nil {
		bad("%s.health.exec: berth does not run exec probes in a Swarm's tasks; %s", compose.ExtensionKey, instead)
	}
	probe := func(kind string, port int) {
		if port <= 0 {
			return // PolicyProblems says the port is required
		}
		for _, p := range s.Ports {
			if p.Mode == "host" && int(p.Target) == port {
				return
			}
		}
		bad("%s.health.%s: port %d is not published in mode host, and berth reaches a task only through its node's host-mode published port; publish it (ports: target %d, mode host) or %s",
			compose.ExtensionKey, kind, port, port, instead)
	}
	if h.HTTP != nil {
		probe("http", h.HTTP.Port)
	}
	if h.TCP != nil {
		probe("tcp", h.TCP.Port)
	}
}

// berthExt is the part of x-berth that Check and Convert read on their
// own; compose.PolicyProblems checks the whole block.
type berthExt struct {
	Singleton bool `yaml:"singleton"`
	Health    *struct {
		HTTP *struct {
			Port int `yaml:"port"`
		} `yaml:"http"`
		TCP *struct {
			Port int `yaml:"port"`
		} `yaml:"tcp"`
		Exec any `yaml:"exec"`
	} `yaml:"health"`
}

// extensionOf reads x-berth's singleton and health; a block that does not
// decode reads as empty (PolicyProblems reports it).
func extensionOf(s types.ServiceConfig) berthExt {
	var ext berthExt
	raw, ok := s.Extensions[compose.ExtensionKey]
	if !ok {
		return ext
	}
	b, err := yaml.Marshal(raw)
	if err != nil {
		return berthExt{}
	}
	if err := yaml.Unmarshal(b, &ext); err != nil {
		return berthExt{}
	}
	if ext.Health != nil {
		switch e := ext.Health.Exec.(type) {
		case string:
			if strings.TrimSpace(e) == "" {
				ext.Health.Exec = nil
			}
		case []any:
			if len(e) == 0 {
				ext.Health.Exec = nil
			}
		}
	}
	return ext
}
