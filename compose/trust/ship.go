package trust

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-deploy/berth/compose"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/distribution/reference"
	"gopkg.in/yaml.v3"
)

// ShipPolicy is what the operator lets a compose file that a deploy ships
// (from the repository, over a front door) contain. Everything it does not
// allow is refused: see CheckShipped.
type ShipPolicy struct {
	// Project is the project's name: its own volumes and networks are
	// named PROJECT_KEY (as compose names them when the file says nothing).
	Project string
	// AllowedImages are globs of image repositories
	// (projects.NAME.allowed_images): "registry.gitlab.com/group/shop/*".
	// See MatchImage.
	AllowedImages []string
	// AllowedPorts are the host ports a service may publish
	// (projects.NAME.allowed_ports): "80", "8000-8099", "127.0.0.1:8000",
	// "[::1]:8000", each optionally followed by /tcp, /udp or /sctp. See
	// ParsePortRule.
	AllowedPorts []string
	// AllowedBindPaths are host directories under which a bind mount's
	// source may be (projects.NAME.allowed_bind_paths).
	AllowedBindPaths []string
	// BundleDir is where the shipped files were written on the host. A
	// file inside it may be an env_file or label_file, and bind-mounted
	// read-only (a configuration file shipped beside the compose file).
	BundleDir string
}

// Reasons of a Violation of CheckShipped, beside the specific ones of the
// keys refused whatever their value (see refused).
const (
	// ReasonNotListed: the key is not on the list of those a shipped file
	// may use. New compose keys land here until someone decides on them.
	ReasonNotListed = "not on the list of keys a shipped compose file may use"
	// ReasonImage: the image's repository matches no allowed_images.
	ReasonImage = "the image's repository is not in the project's allowed_images"
	// ReasonPort: a published host port outside allowed_ports.
	ReasonPort = "publishes a host port outside the project's allowed_ports"
	// ReasonBind: a bind mount's source outside allowed_bind_paths.
	ReasonBind = "binds a host path outside the project's allowed_bind_paths"
	// ReasonReserved: a label Berth or docker compose reads.
	ReasonReserved = "labels under com.docker. and dev.berth. are Berth's and docker compose's own (they say which project, service and release a container belongs to)"
	// ReasonForeign: a volume or network that is not the project's own.
	ReasonForeign = "names a volume or network outside the project (only PROJECT_KEY, as compose names it, is the project's own)"
	// ReasonFile: a file read on the host at load time.
	ReasonFile = "reads a host file outside the shipped files and the project's allowed_bind_paths"
	// ReasonReference: an include or extends that may read a file outside
	// the shipped ones.
	ReasonReference = "may read a file outside the shipped files (an include or extends names a shipped file by a plain relative path: no absolute path, no .., no ${...}, no remote resource)"
)

// refused are the keys refused whatever their value, and why.
var refused = map[string]string{
	"privileged":          "gives the container every capability and every device of the host",
	"cap_add":             "adds kernel capabilities (a container with them may reach the host)",
	"security_opt":        "changes or turns off the container's confinement (seccomp, AppArmor, SELinux, no-new-privileges)",
	"devices":             "gives the container a device of the host",
	"device_cgroup_rules": "lets the container use devices of the host",
	"gpus":                "gives the container a device of the host",
	"network_mode":        "joins another network namespace (the host's, or another container's); a shipped service uses networks:",
	"net":                 "joins another network namespace (the host's, or another container's)",
	"pid":                 "shares a process namespace (the host's or another container's)",
	"ipc":                 "shares an IPC namespace (the host's or another container's)",
	"uts":                 "shares the host's UTS namespace",
	"userns_mode":         "changes the user namespace (host: no remapping)",
	"cgroup_parent":       "places the container in another cgroup of the host",
	"cgroup":              "shares the host's cgroup namespace",
	"sysctls":             "sets kernel parameters",
	"runtime":             "chooses another container runtime",
	"isolation":           "chooses another isolation technology",
	"group_add":           "adds the container's user to host groups (which open host files bound into it)",
	"oom_kill_disable":    "keeps the kernel from killing the container when memory runs out (the host's processes are killed instead)",
	"cpu_rt_runtime":      "gives the container real-time CPU time (it may starve the host)",
	"cpu_rt_period":       "gives the container real-time CPU time (it may starve the host)",
	"volumes_from":        "mounts the volumes of another container, which may be another project's",
	"links":               "links to containers, which may be another project's",
	"external_links":      "links to containers outside the project",
	"use_api_socket":      "gives the container the Docker engine's socket (root on the host)",
	"storage_opt":         "sets the storage driver's options",
	"volume_driver":       "chooses a volume driver (which may mount anything)",
	"log_driver":          "chooses a logging driver (use logging.driver)",
	"log_opt":             "sets a logging driver's options (use logging.options)",
	"credential_spec":     "reads host credentials (Windows)",
	"container_name":      "names a container outside the project's names (it may take another project's name)",
	"secrets":             "Berth does not mount compose secrets: a secret stays in the host's env file, referenced as ${VAR}",
	"configs":             "Berth does not mount compose configs: ship a file beside the compose file and bind it read-only",
	"build":               "Berth deploys images from a registry; build them in CI",
	"develop":             "is for docker compose watch on a workstation",
	"provider":            "runs a host binary",
	"models":              "needs a model runner on the host",
	"pre_start":           "runs hooks Berth does not run (use x-berth.pre_deploy)",
	"post_start":          "runs hooks Berth does not run (use x-berth.post_deploy)",
	"pre_stop":            "runs hooks Berth does not run",
	"extends":             "extends outside the shipped files",
	"external":            "uses a volume or network created outside the project",
	"driver_opts":         "sets a driver's options (a local volume's options mount any host path)",
	"ipam":                "chooses the network's addresses (which may shadow the host's)",
}

// spec is the allow-list of the keys below a key: nil allows anything
// below it, "*" stands for any key.
type spec map[string]spec

// The keys a shipped file may use, from the top of the file down.
var (
	durationsOnly = spec{"parallelism": nil, "delay": nil, "failure_action": nil, "monitor": nil, "max_failure_ratio": nil, "order": nil}
	anyKey        = spec{"*": nil}
	serviceSpec   = spec{
		"image":             nil, // checked: allowed_images
		"command":           nil,
		"entrypoint":        nil,
		"environment":       anyKey,
		"env_file":          spec{"path": nil, "required": nil, "format": nil}, // checked: a shipped file
		"label_file":        nil,                                               // checked: a shipped file
		"labels":            anyKey,                                            // checked: not Berth's own
		"working_dir":       nil,
		"user":              nil,
		"hostname":          nil,
		"domainname":        nil,
		"init":              nil,
		"read_only":         nil,
		"tty":               nil,
		"stdin_open":        nil,
		"restart":           nil,
		"stop_signal":       nil,
		"stop_grace_period": nil,
		"profiles":          nil,
		"scale":             nil,
		"expose":            nil,
		"extra_hosts":       nil,
		"dns":               nil,
		"dns_opt":           nil,
		"dns_search":        nil,
		"cap_drop":          nil,
		"shm_size":          nil,
		"tmpfs":             nil,
		"mem_limit":         nil,
		"mem_reservation":   nil,
		"memswap_limit":     nil,
		"mem_swappiness":    nil,
		"cpus":              nil,
		"cpu_shares":        nil,
		"cpu_quota":         nil,
		"cpu_period":        nil,
		"cpuset":            nil,
		"pids_limit":        nil,
		"oom_score_adj":     nil, // checked: not below 0
		"ulimits":           spec{"nofile": nil},
		"depends_on":        spec{"*": spec{"condition": nil, "required": nil, "restart": nil}},
		"healthcheck":       spec{"test": nil, "interval": nil, "timeout": nil, "retries": nil, "start_period": nil, "start_interval": nil, "disable": nil},
		"logging":           spec{"driver": nil, "options": anyKey}, // checked: driver
		"networks":          spec{"*": spec{"aliases": nil, "priority": nil}},
		"ports":             spec{"name": nil, "mode": nil, "host_ip": nil, "target": nil, "published": nil, "protocol": nil, "app_protocol": nil}, // checked
		"volumes": spec{"type": nil, "source": nil, "target": nil, "read_only": nil, "consistency": nil, // checked
			"volume": spec{"nocopy": nil, "subpath": nil},
			"bind":   spec{"create_host_path": nil, "propagation": nil}, // checked: private only
			"tmpfs":  spec{"size": nil, "mode": nil}},
		"deploy": spec{
			"mode": nil, "replicas": nil,
			// Where a Swarm runs the tasks and how they are reached: no
			// more than the nodes and the DNS answer (backend: swarm).
			"endpoint_mode":   nil,
			"placement":       spec{"constraints": nil, "preferences": spec{"spread": nil}, "max_replicas_per_node": nil},
			"update_config":   durationsOnly,
			"rollback_config": durationsOnly,
			"restart_policy":  spec{"condition": nil, "delay": nil, "max_attempts": nil, "window": nil},
			"resources": spec{
				"limits":       spec{"cpus": nil, "memory": nil, "pids": nil},
				"reservations": spec{"cpus": nil, "memory": nil},
			},
		},
		compose.ExtensionKey: nil, // Berth's own: health, hooks, proxy (all inside the service's containers)
	}
	topSpec = spec{
		"name":     nil,
		"volumes":  spec{"*": spec{"name": nil, "labels": anyKey, "driver": nil}},                                                         // checked: name, labels, driver
		"networks": spec{"*": spec{"name": nil, "labels": anyKey, "driver": nil, "internal": nil, "enable_ipv6": nil, "attachable": nil}}, // checked: name, labels, driver
	}
)

// allowedLogDrivers are the logging drivers a shipped service may use:
// those that keep the logs on the host, as docker compose does by default.
var allowedLogDrivers = []string{"json-file", "local", "none"}

// dockerSockets are where the Docker engine's socket (and containerd's,
// below it) usually are: a bind of one, or of a directory above one, is
// root on the host.
var dockerSockets = []string{"/var/run/docker.sock", "/run/docker.sock",
	"/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock"}

// CheckShipped lists what p, a project loaded from a compose file a deploy
// shipped (with the --image overrides applied), holds beyond what pol
// allows. It is deny-by-default: it walks every key of every service and
// of the top-level volumes and networks in the loaded (canonical) form,
// and a key that is not on the list of those a shipped file may use is a
// violation, as is any top-level key but name, services, volumes and
// networks. Keys on the list whose values matter are checked: a service's
// image against AllowedImages, its published ports against AllowedPorts,
// its volumes (the project's named volumes, tmpfs, binds under
// AllowedBindPaths or read-only inside BundleDir), its labels (not
// Berth's own), its env files, its logging driver; a volume or network
// must be the project's own (PROJECT_KEY, neither external nor named
// otherwise). The shipped files are also read as written: an include or
// extends may name only shipped files (checkReferences). Each violation
// names the service, the key and the value, with the values of the
// project's variables of minRedacted characters or more shown as ${NAME}.
func CheckShipped(p *types.Project, pol ShipPolicy) []Violation {
	var out []Violation
	add := func(service, field, value, reason string) {
		out = append(out, Violation{Service: service, Field: field, Value: value, Reason: reason})
	}
	m, err := canonical(p)
	if err != nil {
		return []Violation{{Reason: "cannot be read back: " + err.Error()}}
	}
	out = append(out, pol.checkReferences(p.ComposeFiles)...)
	bindRoots, rootProblems := cleanRoots(pol.AllowedBindPaths)
	for _, e := range rootProblems {
		add("", "", "", "the project's allowed_bind_paths: "+e)
	}
	ports, portProblems := parsePortRules(pol.AllowedPorts)
	for _, e := range portProblems {
		add("", "", "", "the project's allowed_ports: "+e)
	}

	for _, k := range slices.Sorted(maps.Keys(m)) {
		if k == "services" {
			continue
		}
		sub, ok := topSpec[k]
		if !ok {
			add("", k, render(m[k]), reasonFor(k))
			continue
		}
		walk([]string{k}, m[k], sub, func(path []string, v any) {
			add("", format(path), render(v), reasonFor(path[len(path)-1]))
		})
	}
	for _, kind := range []string{"volumes", "networks"} {
		objs, _ := m[kind].(map[string]any)
		for _, key := range slices.Sorted(maps.Keys(objs)) {
			obj, _ := objs[key].(map[string]any)
			if name, ok := obj["name"].(string); ok && name != pol.Project+"_"+key {
				add("", kind+"."+key+".name", name, ReasonForeign)
			}
			if d, ok := obj["driver"].(string); ok && kind == "networks" && d != "bridge" {
				add("", kind+"."+key+".driver", d, "only the bridge driver is allowed for a shipped file's network")
			}
			if d, ok := obj["driver"].(string); ok && kind == "volumes" && d != "local" {
				add("", kind+"."+key+".driver", d, "only the local driver is allowed for a shipped file's volume (another driver may mount anything)")
			}
			reservedLabels(obj["labels"], func(label string, v any) {
				add("", kind+"."+key+".labels."+label, render(v), ReasonReserved)
			})
		}
	}

	services, _ := m["services"].(map[string]any)
	for _, name := range slices.Sorted(maps.Keys(services)) {
		svc, _ := services[name].(map[string]any)
		s, ok := p.Services[name]
		if !ok {
			continue
		}
		bad := func(field, value, reason string) { add(name, field, value, reason) }
		for _, k := range slices.Sorted(maps.Keys(svc)) {
			sub, ok := serviceSpec[k]
			if !ok {
				bad(k, render(svc[k]), reasonFor(k))
				continue
			}
			walk([]string{k}, svc[k], sub, func(path []string, v any) {
				bad(format(path), render(v), reasonFor(path[len(path)-1]))
			})
		}
		// image: deleted from the canonical form, read from the project.
		if !imageAllowed(s.Image, pol.AllowedImages) {
			bad("image", s.Image, ReasonImage)
		}
		reservedLabels(svc["labels"], func(label string, v any) {
			bad("labels."+label, render(v), ReasonReserved)
		})
		if s.OomScoreAdj < 0 {
			bad("oom_score_adj", strconv.FormatInt(s.OomScoreAdj, 10), "makes the kernel kill the host's processes before the container's when memory runs out")
		}
		if s.Logging != nil && s.Logging.Driver != "" && !slices.Contains(allowedLogDrivers, s.Logging.Driver) {
			bad("logging.driver", s.Logging.Driver, "only the logging drivers "+strings.Join(allowedLogDrivers, ", ")+" are allowed (the others send the logs off the host or to a plugin)")
		}
		for i, f := range s.EnvFiles {
			if !pol.fileAllowed(f.Path, bindRoots) {
				bad(fmt.Sprintf("env_file[%d]", i), f.Path, ReasonFile)
			}
		}
		for i, f := range s.LabelFiles {
			if !pol.fileAllowed(f, bindRoots) {
				bad(fmt.Sprintf("label_file[%d]", i), f, ReasonFile)
			}
		}
		for i, port := range s.Ports {
			if !portAllowed(port, ports) {
				bad(fmt.Sprintf("ports[%d]", i), portString(port), ReasonPort)
			}
		}
		for i, v := range s.Volumes {
			field := fmt.Sprintf("volumes[%d]", i)
			switch v.Type {
			case types.VolumeTypeVolume:
				if v.Source == "" {
					continue // anonymous: the container's own
				}
				if _, ok := p.Volumes[v.Source]; !ok {
					bad(field, volumeString(v), ReasonForeign)
				}
			case types.VolumeTypeTmpfs:
			case types.VolumeTypeBind:
				if reason := pol.bindRefusal(v, bindRoots); reason != "" {
					bad(field, volumeString(v), reason)
				}
			default:
				bad(field, volumeString(v), "only volumes of the project, tmpfs and binds under allowed_bind_paths are allowed")
			}
		}
		for _, net := range slices.Sorted(maps.Keys(s.Networks)) {
			if _, ok := p.Networks[net]; !ok {
				bad("networks."+net, net, ReasonForeign)
			}
		}
	}
	hide := redactor(p.Environment)
	for i := range out {
		out[i].Value = hide(out[i].Value)
	}
	slices.SortStableFunc(out, func(a, b Violation) int {
		return strings.Compare(a.Service+"\x00"+a.Field, b.Service+"\x00"+b.Field)
	})
	return slices.CompactFunc(out, func(a, b Violation) bool {
		return a.Service == b.Service && a.Field == b.Field && a.Value == b.Value && a.Reason == b.Reason
	})
}

// reasonFor is why a key not on the allow-list is refused.
func reasonFor(key string) string {
	if r, ok := refused[key]; ok {
		return r
	}
	return ReasonNotListed
}

// walk reports, below path, every key of v that s does not list. A list is
// checked item by item against s.
func walk(path []string, v any, s spec, report func([]string, any)) {
	if s == nil {
		return
	}
	switch v := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(v)) {
			sub, ok := s[k]
			if !ok {
				sub, ok = s["*"]
			}
			p := append(slices.Clip(path), k)
			if !ok {
				report(p, v[k])
				continue
			}
			walk(p, v[k], sub, report)
		}
	case []any:
		for i, e := range v {
			walk(append(slices.Clip(path), fmt.Sprintf("[%d]", i)), e, s, report)
		}
	}
}

// reservedLabels calls f for every label under com.docker. or dev.berth.
// in labels (a canonical labels map).
func reservedLabels(labels any, f func(string, any)) {
	l, _ := labels.(map[string]any)
	for _, k := range slices.Sorted(maps.Keys(l)) {
		if strings.HasPrefix(k, "com.docker.") || strings.HasPrefix(k, "dev.berth.") {
			f(k, l[k])
		}
	}
}

// render writes a value of the canonical form on one line: scalars as
// they are, lists as [a, b], maps as {k: v}.
func render(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case map[string]any:
		parts := make([]string, 0, len(v))
		for _, k := range slices.Sorted(maps.Keys(v)) {
			if v[k] == nil {
				parts = append(parts, k)
			} else {
				parts = append(parts, k+": "+render(v[k]))
			}
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = render(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	default:
		return fmt.Sprint(v)
	}
}

// MatchImage reports whether the repository of ref (a reference with or
// without tag and digest) matches pattern: a glob in path.Match's syntax
// ("*" stays within one path element), or a prefix ending in "/**" that
// matches every repository below it. The pattern is matched against both
// the repository as written ("postgres", "registry.gitlab.com/group/web")
// and its full name ("docker.io/library/postgres").
func MatchImage(pattern, ref string) bool {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return false
	}
	for _, name := range []string{reference.FamiliarName(named), named.Name()} {
		if prefix, ok := strings.CutSuffix(pattern, "/**"); ok {
			if strings.HasPrefix(name, prefix+"/") {
				return true
			}
			continue
		}
		if ok, err := path.Match(pattern, name); err == nil && ok {
			return true
		}
	}
	return false
}

// CheckImagePattern returns what is wrong with an allowed_images entry.
func CheckImagePattern(pattern string) error {
	if pattern == "" {
		return errors.New("empty")
	}
	if strings.ContainsAny(pattern, " \t\n@") {
		return fmt.Errorf("%q: a repository glob has no spaces and no digest", pattern)
	}
	glob, _ := strings.CutSuffix(pattern, "/**")
	if strings.Contains(glob, "**") {
		return fmt.Errorf("%q: ** is allowed only as the last element (REPO/**)", pattern)
	}
	if _, err := path.Match(glob, ""); err != nil {
		return fmt.Errorf("%q: %w", pattern, err)
	}
	return nil
}

func imageAllowed(ref string, patterns []string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return MatchImage(p, ref) })
}

// A PortRule is one entry of allowed_ports: host ports From-To, on HostIP
// (any address when it is not valid), for Protocol ("" for any).
type PortRule struct {
	HostIP   netip.Addr
	From, To int
	Protocol string
}

// ParsePortRule reads an allowed_ports entry: PORT or FROM-TO, optionally
// after a host address (127.0.0.1:8000, [::1]:8000) and followed by /tcp,
// /udp or /sctp.
func ParsePortRule(s string) (PortRule, error) {
	var r PortRule
	rest := s
	if i := strings.LastIndex(rest, "/"); i >= 0 {
		r.Protocol, rest = rest[i+1:], rest[:i]
		if r.Protocol != "tcp" && r.Protocol != "udp" && r.Protocol != "sctp" {
			return r, fmt.Errorf("%q: protocol %q: want tcp, udp or sctp", s, r.Protocol)
		}
	}
	if i := strings.LastIndex(rest, ":"); i >= 0 {
		host := rest[:i]
		rest = rest[i+1:]
		if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			host = host[1 : len(host)-1]
		} else if strings.Contains(host, ":") {
			return r, fmt.Errorf("%q: write an IPv6 address in brackets: [::1]:8000", s)
		}
		a, err := netip.ParseAddr(host)
		if err != nil || a.Zone() != "" {
			return r, fmt.Errorf("%q: %q is not an IP address", s, host)
		}
		r.HostIP = a
	}
	from, to, isRange := strings.Cut(rest, "-")
	var err error
	if r.From, err = portNumber(from); err != nil {
		return r, fmt.Errorf("%q: %w", s, err)
	}
	r.To = r.From
	if isRange {
		if r.To, err = portNumber(to); err != nil {
			return r, fmt.Errorf("%q: %w", s, err)
		}
		if r.To < r.From {
			return r, fmt.Errorf("%q: the range ends before it starts", s)
		}
	}
	return r, nil
}

func portNumber(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return n, nil
}

func parsePortRules(entries []string) ([]PortRule, []string) {
	var rules []PortRule
	var problems []string
	for _, e := range entries {
		r, err := ParsePortRule(e)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		rules = append(rules, r)
	}
	return rules, problems
}

// portAllowed: every host port port publishes is in a rule for its
// address and protocol. A port Docker picks (no published port) is
// refused: it may be any port.
func portAllowed(port types.ServicePortConfig, rules []PortRule) bool {
	if port.Published == "" {
		return false
	}
	from, to, isRange := strings.Cut(port.Published, "-")
	lo, err := portNumber(from)
	if err != nil {
		return false
	}
	hi := lo
	if isRange {
		if hi, err = portNumber(to); err != nil || hi < lo {
			return false
		}
	}
	var ip netip.Addr
	if port.HostIP != "" {
		if ip, err = netip.ParseAddr(strings.Trim(port.HostIP, "[]")); err != nil {
			return false
		}
	}
	proto := port.Protocol
	if proto == "" {
		proto = "tcp"
	}
	for n := lo; n <= hi; n++ {
		if !slices.ContainsFunc(rules, func(r PortRule) bool {
			return n >= r.From && n <= r.To && (r.Protocol == "" || r.Protocol == proto) &&
				(!r.HostIP.IsValid() || (ip.IsValid() && r.HostIP == ip.Unmap()))
		}) {
			return false
		}
	}
	return true
}

func portString(p types.ServicePortConfig) string {
	var b strings.Builder
	if p.HostIP != "" {
		if strings.Contains(p.HostIP, ":") {
			b.WriteString("[" + p.HostIP + "]:")
		} else {
			b.WriteString(p.HostIP + ":")
		}
	}
	if p.Published != "" {
		b.WriteString(p.Published + ":")
	}
	b.WriteString(strconv.FormatUint(uint64(p.Target), 10))
	if p.Protocol != "" && p.Protocol != "tcp" {
		b.WriteString("/" + p.Protocol)
	}
	return b.String()
}

func volumeString(v types.ServiceVolumeConfig) string {
	s := v.Source + ":" + v.Target
	if v.Source == "" {
		s = v.Target
	}
	if v.ReadOnly {
		s += ":ro"
	}
	if v.Type != types.VolumeTypeVolume && v.Type != types.VolumeTypeBind {
		s = v.Type + " " + s
	}
	return s
}

// CheckBindPath returns what is wrong with an allowed_bind_paths entry: it
// must be an absolute, clean path, not / and not a directory holding the
// Docker engine's socket.
func CheckBindPath(p string) error {
	switch {
	case !filepath.IsAbs(p):
		return fmt.Errorf("%q is not an absolute path", p)
	case filepath.Clean(p) != p:
		return fmt.Errorf("%q is not clean (write %q)", p, filepath.Clean(p))
	case p == "/":
		return errors.New(`"/" would allow every host path`)
	}
	for _, sock := range dockerSockets {
		if under(sock, p) {
			return fmt.Errorf("%q holds the Docker engine's socket %s (root on the host)", p, sock)
		}
	}
	return nil
}

func cleanRoots(paths []string) ([]string, []string) {
	var roots, problems []string
	for _, p := range paths {
		if err := CheckBindPath(p); err != nil {
			problems = append(problems, err.Error())
			continue
		}
		roots = append(roots, p)
	}
	return roots, problems
}

// under reports whether p is root or below it (both clean and absolute).
func under(p, root string) bool {
	return p == root || root == "/" || strings.HasPrefix(p, root+"/")
}

// resolve is p with the symbolic links of its existing part followed, so a
// link under an allowed directory cannot point out of it (as far as the
// host shows now; see docs/compose.md). A path that cannot be resolved
// resolves to "".
func resolve(p string) string {
	p = filepath.Clean(p)
	var rest []string
	for {
		r, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(append([]string{r}, rest...)...)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return ""
		}
		parent := filepath.Dir(p)
		if parent == p {
			return ""
		}
		rest = append([]string{filepath.Base(p)}, rest...)
		p = parent
	}
}

// bindRefusal is why the bind v is refused, or "".
func (pol ShipPolicy) bindRefusal(v types.ServiceVolumeConfig, roots []string) string {
	src := filepath.Clean(v.Source)
	if !filepath.IsAbs(src) {
		return ReasonBind
	}
	real := resolve(src)
	if real == "" {
		return ReasonBind + " (it cannot be resolved)"
	}
	for _, sock := range dockerSockets {
		for _, p := range []string{src, real} {
			if under(sock, p) {
				return "binds the Docker engine's socket (root on the host)"
			}
		}
	}
	if v.Bind != nil && v.Bind.Propagation != "" && v.Bind.Propagation != types.PropagationRPrivate && v.Bind.Propagation != types.PropagationPrivate {
		return "shares mounts with the host (bind propagation " + v.Bind.Propagation + ")"
	}
	for _, root := range roots {
		if under(src, root) && under(real, resolveRoot(root)) {
			return ""
		}
	}
	if pol.BundleDir != "" {
		dir := filepath.Clean(pol.BundleDir)
		if under(src, dir) && under(real, resolveRoot(dir)) {
			if !v.ReadOnly {
				return "binds a shipped file writable (a shipped file may only be bound read-only, :ro)"
			}
			return ""
		}
	}
	return ReasonBind
}

// resolveRoot is an allowed directory with its own links followed (they
// are the operator's).
func resolveRoot(root string) string {
	if r := resolve(root); r != "" {
		return r
	}
	return root
}

// fileAllowed: a file read at load time (env_file, label_file) must be a
// shipped file or under an allowed bind path (which a container could read
// anyway).
func (pol ShipPolicy) fileAllowed(f string, roots []string) bool {
	f = filepath.Clean(f)
	if !filepath.IsAbs(f) {
		return false
	}
	real := resolve(f)
	if real == "" {
		return false
	}
	dirs := roots
	if pol.BundleDir != "" {
		dirs = append(slices.Clip(dirs), filepath.Clean(pol.BundleDir))
	}
	for _, d := range dirs {
		if under(f, d) && under(real, resolveRoot(d)) {
			return true
		}
	}
	return false
}

// maxIncludeDepth bounds how deep checkReferences follows includes and
// extends (compose-go refuses cycles; this bounds a long chain).
const maxIncludeDepth = 32

// checkReferences reads the shipped compose files as written (before
// interpolation) and refuses every include (its files, project_directory
// and env_file) and extends.file that is not a plain relative path inside
// the shipped files: compose-go reads those files while loading, and what
// they hold (an include's env_file above all: variables for the included
// file) never shows in the loaded project. It follows the shipped files
// that are included or extended.
func (pol ShipPolicy) checkReferences(mainFiles []string) []Violation {
	if len(mainFiles) == 0 {
		return nil
	}
	root := pol.BundleDir
	if root == "" {
		root = filepath.Dir(mainFiles[0])
	}
	root = filepath.Clean(root)
	realRoot := resolveRoot(root)
	var out []Violation
	seen := map[string]bool{}
	var visit func(file string, depth int)
	visit = func(file string, depth int) {
		if seen[file] {
			return
		}
		seen[file] = true
		// A field of an included file is named with the file.
		prefix := ""
		if depth > 0 {
			rel, err := filepath.Rel(root, file)
			if err != nil {
				rel = file
			}
			prefix = filepath.ToSlash(rel) + ": "
		}
		bad := func(service, field, value, reason string) {
			out = append(out, Violation{Service: service, Field: prefix + field, Value: value, Reason: reason})
		}
		if depth > maxIncludeDepth {
			bad("", "include", "", fmt.Sprintf("includes or extends more than %d files deep", maxIncludeDepth))
			return
		}
		data, err := os.ReadFile(file)
		if err != nil {
			bad("", "", "", "cannot be read to check its includes: "+err.Error())
			return
		}
		var doc map[string]any
		if err := yaml.Unmarshal(data, &doc); err != nil {
			bad("", "", "", "cannot be read to check its includes: "+err.Error())
			return
		}
		dir := filepath.Dir(file)
		// ref checks one reference and returns the shipped file it names,
		// or "".
		ref := func(service, field string, v any) string {
			s, ok := v.(string)
			if !ok {
				bad(service, field, render(v), ReasonReference)
				return ""
			}
			if s == "" || filepath.IsAbs(s) || strings.ContainsAny(s, "$:") || slices.Contains(strings.Split(filepath.ToSlash(s), "/"), "..") {
				bad(service, field, s, ReasonReference)
				return ""
			}
			p := filepath.Join(dir, s)
			if !under(p, root) || !under(resolve(p), realRoot) {
				bad(service, field, s, ReasonReference)
				return ""
			}
			return p
		}
		list := func(v any) []any {
			if l, ok := v.([]any); ok {
				return l
			}
			return []any{v}
		}
		if inc, ok := doc["include"]; ok {
			for i, item := range list(inc) {
				field := fmt.Sprintf("include[%d]", i)
				m, isMap := item.(map[string]any)
				if !isMap {
					if f := ref("", field, item); f != "" {
						visit(f, depth+1)
					}
					continue
				}
				for _, k := range slices.Sorted(maps.Keys(m)) {
					switch k {
					case "path":
						for j, e := range list(m[k]) {
							if f := ref("", fmt.Sprintf("%s.path[%d]", field, j), e); f != "" {
								visit(f, depth+1)
							}
						}
					case "env_file":
						for j, e := range list(m[k]) {
							ref("", fmt.Sprintf("%s.env_file[%d]", field, j), e)
						}
					case "project_directory":
						ref("", field+".project_directory", m[k])
					default:
						bad("", field+"."+k, render(m[k]), ReasonNotListed)
					}
				}
			}
		}
		services, _ := doc["services"].(map[string]any)
		for _, name := range slices.Sorted(maps.Keys(services)) {
			svc, _ := services[name].(map[string]any)
			ext, ok := svc["extends"].(map[string]any)
			if !ok {
				continue // none, or a service of the same file
			}
			if file, ok := ext["file"]; ok {
				if f := ref(name, "extends.file", file); f != "" {
					visit(f, depth+1)
				}
			}
		}
	}
	for _, f := range mainFiles {
		if abs, err := filepath.Abs(f); err == nil {
			f = abs
		}
		visit(f, 0)
	}
	return out
}

// minRedacted is the shortest value of a variable that a refusal shows by
// its name: shorter ones ("1", "true", "8080") would hide more than they
// protect.
const minRedacted = 8

// redactor returns a function that writes, in a refused value, every value
// of the project's interpolation variables (the host's env file, a
// request's variables) of minRedacted characters or more as ${NAME}, as
// the shipped file has it: a secret of the host's env file never reaches
// the caller through a refusal. COMPOSE_ variables (the project's name)
// are left as they are.
func redactor(env types.Mapping) func(string) string {
	type pair struct{ name, value string }
	var vars []pair
	for _, name := range slices.Sorted(maps.Keys(env)) {
		if v := env[name]; len(v) >= minRedacted && !strings.HasPrefix(name, "COMPOSE_") {
			vars = append(vars, pair{name, v})
		}
	}
	// The longest first, so a value inside another does not cut it up; of
	// equal values, the first name.
	slices.SortStableFunc(vars, func(a, b pair) int { return len(b.value) - len(a.value) })
	if len(vars) == 0 {
		return func(s string) string { return s }
	}
	args := make([]string, 0, 2*len(vars))
	for _, v := range vars {
		args = append(args, v.value, "${"+v.name+"}")
	}
	r := strings.NewReplacer(args...)
	return r.Replace
}
