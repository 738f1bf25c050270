package compose

import (
	"bytes"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/berth-deploy/berth/healthcheck"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// ExtensionKey is the compose extension, on a service, that holds what
// compose has no word for: probes, hooks, the proxy declaration.
const ExtensionKey = "x-berth"

// Rollout orders.
const (
	StartFirst = "start-first" // new containers up beside the old, then the old retired
	StopFirst  = "stop-first"  // the old container stopped before the new one starts
)

// Failure actions (deploy.update_config.failure_action).
const (
	FailRollback = "rollback" // the whole release goes back to the previous one
	FailPause    = "pause"    // stop where it failed and leave it for an operator
	FailContinue = "continue" // report the failure and go on with the release
)

// Policy is how one service is rolled out, from deploy.update_config,
// deploy.rollback_config, stop_grace_period and the x-berth extension.
type Policy struct {
	Order         string        `json:"order"`
	OrderReason   string        `json:"order_reason"`
	FailureAction string        `json:"failure_action"`
	Monitor       time.Duration `json:"monitor"`
	Parallelism   int           `json:"parallelism"` // replicas replaced at once; 0 means all
	Delay         time.Duration `json:"delay"`       // between batches
	// Rollback is how the service goes back when the release fails.
	Rollback   RollbackPolicy   `json:"rollback"`
	Health     healthcheck.Spec `json:"health"`
	Singleton  bool             `json:"singleton,omitempty"`
	PreDeploy  []Hook           `json:"pre_deploy,omitempty"`
	PostDeploy []Hook           `json:"post_deploy,omitempty"`
	Proxy      *Proxy           `json:"proxy,omitempty"`
}

// RollbackPolicy is deploy.rollback_config, with the update's values where
// it says nothing.
type RollbackPolicy struct {
	Order       string        `json:"order"`
	Parallelism int           `json:"parallelism"`
	Delay       time.Duration `json:"delay"`
	Monitor     time.Duration `json:"monitor"`
}

// Hook is a one-off container run from the service's new image with the
// service's config and another command.
type Hook struct {
	Command []string      `json:"command"`
	Timeout time.Duration `json:"timeout"`
}

// Proxy declares that a service fronts others: after their containers
// change, the proxy's config is validated and reloaded inside it.
type Proxy struct {
	Fronts   []string `json:"fronts"`
	Validate []string `json:"validate"`
	Reload   []string `json:"reload"`
	// Upstreams, when set, is the path of a file inside the proxy's
	// containers that Berth writes before every validate and reload: an
	// nginx upstream block per fronted service listing the address and
	// Ports[service] of each of its ready containers. The proxy then sends
	// nothing to a container Berth is about to stop, and Berth drains
	// those before stopping them.
	Upstreams string `json:"upstreams,omitempty"`
	// Servers, when set, is a directory inside the proxy's containers
	// where Berth writes, for each fronted service, SERVICE.conf holding
	// only the server lines of its ready containers, for the user's own
	// upstream block to include: its options (keepalive, least_conn, ...)
	// stay the user's. Otherwise as Upstreams; a proxy has one or neither.
	Servers string `json:"servers,omitempty"`
	// ServerParameters are added to every server line Berth writes (nginx
	// server parameters such as max_fails=3 fail_timeout=10s).
	ServerParameters []string       `json:"server_parameters,omitempty"`
	Ports            map[string]int `json:"ports,omitempty"`
	// Drain bounds how long a container taken out of the upstreams is
	// given to finish the requests it has before it is stopped.
	Drain time.Duration `json:"drain,omitempty"`
}

// DefaultDrain is how long, at most, a container taken out of a proxy's
// upstreams is given to finish its requests before it is stopped.
const DefaultDrain = 30 * time.Second

// Defaults where the compose file says nothing.
const (
	DefaultMonitor       = 5 * time.Second
	DefaultHookTimeout   = 10 * time.Minute
	DefaultHealthTimeout = 2 * time.Minute
)

// extension is the x-berth block as written.
type extension struct {
	Singleton  bool       `yaml:"singleton"`
	Health     *healthExt `yaml:"health"`
	PreDeploy  []hookExt  `yaml:"pre_deploy"`
	PostDeploy []hookExt  `yaml:"post_deploy"`
	Proxy      *proxyExt  `yaml:"proxy"`
}

// healthExt is x-berth.health.
type healthExt struct {
	HTTP *struct {
		Path   string `yaml:"path"`
		Port   int    `yaml:"port"`
		Status int    `yaml:"status"`
		Host   string `yaml:"host"`
	} `yaml:"http"`
	TCP *struct {
		Port int `yaml:"port"`
	} `yaml:"tcp"`
	Exec     stringOrList `yaml:"exec"`
	Interval duration     `yaml:"interval"`
	Timeout  duration     `yaml:"timeout"`
}

// proxyExt is x-berth.proxy.
type proxyExt struct {
	Fronts    []string     `yaml:"fronts"`
	Validate  stringOrList `yaml:"validate"`
	Reload    stringOrList `yaml:"reload"`
	Upstreams string       `yaml:"upstreams"`
	Servers   string       `yaml:"servers"`
	// ServerParameters is a string of nginx server parameters.
	ServerParameters string   `yaml:"server_parameters"`
	Drain            duration `yaml:"drain"`
}

type hookExt struct {
	Command stringOrList `yaml:"command"`
	Timeout duration     `yaml:"timeout"`
}

// duration reads "30s", "2m" and the like.
type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (like 30s or 2m)", n.Line, n.Value)
	}
	*d = duration(v)
	return nil
}

// stringOrList reads a command as a list, or a string split on spaces.
type stringOrList []string

func (s *stringOrList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = strings.Fields(n.Value)
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	*s = l
	return nil
}

func parseExtension(s types.ServiceConfig) (extension, error) {
	var ext extension
	raw, ok := s.Extensions[ExtensionKey]
	if !ok {
		return ext, nil
	}
	b, err := yaml.Marshal(raw)
	if err != nil {
		return ext, fmt.Errorf("%s: %w", ExtensionKey, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&ext); err != nil {
		return ext, fmt.Errorf("%s: %w", ExtensionKey, err)
	}
	return ext, nil
}

// policyOf works out a service's rollout policy and reports every problem
// with what the file asks for.
func policyOf(p *types.Project, s types.ServiceConfig) (Policy, []error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	ext, err := parseExtension(s)
	if err != nil {
		return Policy{}, []error{err}
	}
	pol := Policy{FailureAction: FailRollback, Monitor: DefaultMonitor, Parallelism: 1, Singleton: ext.Singleton}
	var uc, rc *types.UpdateConfig
	if s.Deploy != nil {
		uc, rc = s.Deploy.UpdateConfig, s.Deploy.RollbackConfig
	}
	updatePolicy(&pol, s, uc, bad)
	pol.Rollback = rollbackPolicy(pol, s, rc, bad)
	pol.Health = healthPolicy(ext.Health, pol.Monitor, bad)
	pol.PreDeploy = hooksOf(ext.PreDeploy, "pre_deploy", bad)
	pol.PostDeploy = hooksOf(ext.PostDeploy, "post_deploy", bad)
	if ext.Proxy != nil {
		pol.Proxy = proxyPolicy(p, ext.Proxy, bad)
	}
	checkDependsOn(p, s, bad)
	return pol, errs
}

// complain records a problem with a service's policy.
type complain func(format string, args ...any)

// updatePolicy sets the order (by default start-first, unless two
// containers of the service cannot or must not run at once), the failure
// action, monitor, parallelism and delay from deploy.update_config.
func updatePolicy(pol *Policy, s types.ServiceConfig, uc *types.UpdateConfig, bad complain) {
	pol.Order, pol.OrderReason = StartFirst, "default for a stateless service"
	switch {
	case pol.Singleton:
		pol.Order, pol.OrderReason = StopFirst, "singleton"
	case publishesHostPort(s):
		pol.Order, pol.OrderReason = StopFirst, "publishes a host port"
	case hasNamedVolume(s):
		pol.Order, pol.OrderReason = StopFirst, "has a named volume"
	}
	if uc != nil {
		switch uc.Order {
		case "":
		case StartFirst, StopFirst:
			pol.Order, pol.OrderReason = uc.Order, "deploy.update_config.order"
		default:
			bad("deploy.update_config.order %q: want start-first or stop-first", uc.Order)
		}
		switch uc.FailureAction {
		case "":
		case FailRollback, FailPause, FailContinue:
			pol.FailureAction = uc.FailureAction
		default:
			bad("deploy.update_config.failure_action %q: want rollback, pause or continue", uc.FailureAction)
		}
		if uc.Monitor != 0 {
			pol.Monitor = time.Duration(uc.Monitor)
		}
		if uc.Parallelism != nil {
			pol.Parallelism = int(*uc.Parallelism)
		}
		pol.Delay = time.Duration(uc.Delay)
		if uc.MaxFailureRatio != 0 {
			bad("deploy.update_config.max_failure_ratio is not supported: any failed container fails the release")
		}
	}
	if pol.Order == StartFirst && publishesHostPort(s) {
		bad("start-first is impossible: the service publishes a host port that two containers cannot share (use stop-first, or put a proxy in front)")
	}
	if pol.Order == StartFirst && pol.Singleton {
		bad("start-first contradicts x-berth.singleton: a singleton never runs twice")
	}
}

// rollbackPolicy is how the service goes back when a release fails: as it
// rolls out (pol), unless deploy.rollback_config says otherwise.
func rollbackPolicy(pol Policy, s types.ServiceConfig, rc *types.UpdateConfig, bad complain) RollbackPolicy {
	rb := RollbackPolicy{Order: pol.Order, Parallelism: pol.Parallelism, Delay: pol.Delay, Monitor: pol.Monitor}
	if rc != nil {
		switch rc.Order {
		case "":
		case StartFirst, StopFirst:
			rb.Order = rc.Order
		default:
			bad("deploy.rollback_config.order %q: want start-first or stop-first", rc.Order)
		}
		if rc.Parallelism != nil {
			rb.Parallelism = int(*rc.Parallelism)
		}
		rb.Delay = time.Duration(rc.Delay)
		if rc.Monitor != 0 {
			rb.Monitor = time.Duration(rc.Monitor)
		}
		if rc.FailureAction != "" && rc.FailureAction != "pause" && rc.FailureAction != "continue" {
			bad("deploy.rollback_config.failure_action %q: want pause or continue", rc.FailureAction)
		}
	}
	if rb.Order == StartFirst && (publishesHostPort(s) || pol.Singleton) {
		bad("deploy.rollback_config.order start-first is impossible for this service (host port or singleton)")
	}
	return rb
}

// healthPolicy is the gate of a new container: Docker's health (or up
// for monitor) by default, or the one probe of x-berth.health.
func healthPolicy(h *healthExt, monitor time.Duration, bad complain) healthcheck.Spec {
	spec := healthcheck.Spec{MinUp: monitor, Timeout: DefaultHealthTimeout}
	if h == nil {
		return spec
	}
	n := 0
	if h.HTTP != nil {
		n++
		spec.HTTP = &healthcheck.HTTPProbe{Path: h.HTTP.Path, Port: h.HTTP.Port, Status: h.HTTP.Status, Host: h.HTTP.Host}
		if h.HTTP.Port <= 0 {
			bad("%s.health.http.port is required", ExtensionKey)
		}
	}
	if h.TCP != nil {
		n++
		spec.TCP = &healthcheck.TCPProbe{Port: h.TCP.Port}
		if h.TCP.Port <= 0 {
			bad("%s.health.tcp.port is required", ExtensionKey)
		}
	}
	if len(h.Exec) > 0 {
		n++
		spec.Exec = h.Exec
	}
	if n > 1 {
		bad("%s.health: give one of http, tcp or exec", ExtensionKey)
	}
	spec.Interval = time.Duration(h.Interval)
	if h.Timeout != 0 {
		spec.Timeout = time.Duration(h.Timeout)
	}
	return spec
}

// hooksOf is the hooks of x-berth.KEY (pre_deploy or post_deploy).
func hooksOf(hs []hookExt, key string, bad complain) []Hook {
	var out []Hook
	for i, h := range hs {
		out = append(out, hookOf(h))
		if len(h.Command) == 0 {
			bad("%s.%s[%d]: command is required", ExtensionKey, key, i)
		}
	}
	return out
}

// proxyPolicy is x-berth.proxy: how to validate and reload the proxy,
// the services it fronts, and the upstreams or server lines Berth writes
// for it.
func proxyPolicy(p *types.Project, px *proxyExt, bad complain) *Proxy {
	proxy := &Proxy{Validate: px.Validate, Reload: px.Reload, Upstreams: px.Upstreams, Servers: px.Servers,
		ServerParameters: strings.Fields(px.ServerParameters), Drain: time.Duration(px.Drain)}
	if len(proxy.Validate) == 0 {
		proxy.Validate = []string{"nginx", "-t"}
	}
	if len(proxy.Reload) == 0 {
		proxy.Reload = []string{"nginx", "-s", "reload"}
	}
	if proxy.Drain == 0 {
		proxy.Drain = DefaultDrain
	}
	if len(px.Fronts) == 0 {
		bad("%s.proxy.fronts: name the services this proxy sends traffic to", ExtensionKey)
	}
	if px.Upstreams != "" && !strings.HasPrefix(px.Upstreams, "/") {
		bad("%s.proxy.upstreams: %q must be an absolute path inside the proxy's containers", ExtensionKey, px.Upstreams)
	}
	if px.Servers != "" && (!strings.HasPrefix(px.Servers, "/") || path.Clean(px.Servers) == "/") {
		bad("%s.proxy.servers: %q must be the absolute path of a directory inside the proxy's containers (not /)", ExtensionKey, px.Servers)
	}
	if px.Upstreams != "" && px.Servers != "" {
		bad("%s.proxy: upstreams and servers are two ways to write the same upstreams: choose one (servers keeps your upstream blocks' options)", ExtensionKey)
	}
	if px.Drain < 0 {
		bad("%s.proxy.drain: %s must not be negative", ExtensionKey, time.Duration(px.Drain))
	}
	lists := px.Upstreams != "" || px.Servers != ""
	if len(proxy.ServerParameters) > 0 && !lists {
		bad("%s.proxy.server_parameters: only with upstreams or servers (Berth writes no server line without them)", ExtensionKey)
	}
	for _, param := range proxy.ServerParameters {
		if err := checkServerParameter(param); err != nil {
			bad("%s.proxy.server_parameters: %v", ExtensionKey, err)
		}
	}
	for _, f := range px.Fronts {
		name, port, err := splitFront(f)
		switch {
		case err != nil:
			bad("%s.proxy.fronts: %v", ExtensionKey, err)
			continue
		case p.Services[name].Name == "":
			bad("%s.proxy.fronts: no service %s", ExtensionKey, name)
		case lists && port == 0:
			bad("%s.proxy.fronts: %s: with upstreams or servers, name the port the proxy sends to (%s:PORT)", ExtensionKey, name, name)
		}
		proxy.Fronts = append(proxy.Fronts, name)
		if port != 0 {
			if proxy.Ports == nil {
				proxy.Ports = map[string]int{}
			}
			proxy.Ports[name] = port
		}
	}
	return proxy
}

// checkDependsOn refuses the depends_on conditions Berth does not honour.
func checkDependsOn(p *types.Project, s types.ServiceConfig, bad complain) {
	for dep, d := range s.DependsOn {
		switch d.Condition {
		case "", types.ServiceConditionStarted, types.ServiceConditionHealthy:
		default:
			bad("depends_on %s: condition %s is not supported (service_started and service_healthy are)", dep, d.Condition)
		}
		if d.Restart {
			bad("depends_on %s: restart: true is not supported", dep)
		}
		if d.Condition == types.ServiceConditionHealthy {
			if other, ok := p.Services[dep]; ok && !hasCheck(other) {
				bad("depends_on %s: condition service_healthy, but %s has no healthcheck or %s.health", dep, dep, ExtensionKey)
			}
		}
	}
}

// splitFront reads a proxy.fronts entry: SERVICE or SERVICE:PORT.
func splitFront(f string) (string, int, error) {
	name, port, ok := strings.Cut(f, ":")
	if name == "" {
		return "", 0, fmt.Errorf("%q: name a service", f)
	}
	if !ok {
		return name, 0, nil
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("%q: the port must be a number from 1 to 65535", f)
	}
	return name, n, nil
}

func hookOf(h hookExt) Hook {
	t := time.Duration(h.Timeout)
	if t == 0 {
		t = DefaultHookTimeout
	}
	return Hook{Command: h.Command, Timeout: t}
}

func publishesHostPort(s types.ServiceConfig) bool {
	for _, p := range s.Ports {
		if p.Published != "" {
			return true
		}
	}
	return s.NetworkMode == "host"
}

func hasNamedVolume(s types.ServiceConfig) bool {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeVolume && v.Source != "" {
			return true
		}
	}
	return false
}

// hasCheck reports whether a service declares any health check: compose's
// healthcheck or a probe in the extension. (An image's own HEALTHCHECK is
// not known before the image is inspected.)
func hasCheck(s types.ServiceConfig) bool {
	if s.HealthCheck != nil && !s.HealthCheck.Disable {
		return true
	}
	ext, err := parseExtension(s)
	return err == nil && ext.Health != nil
}

// serverParameter matches the nginx server parameters Berth may add to the
// server lines it writes, with their values: a count, or a time.
var serverParameter = regexp.MustCompile(`^(?:(?:weight|max_fails|max_conns)=[0-9]{1,6}|fail_timeout=[0-9]{1,6}(?:ms|s|m|h)?)$`)

// checkServerParameter accepts weight=N, max_fails=N, max_conns=N and
// fail_timeout=TIME: the parameters that say how nginx treats each server.
// Others (down, backup, resolve, ...) change what a server is, which is
// Berth's to say.
func checkServerParameter(param string) error {
	if !serverParameter.MatchString(param) {
		return fmt.Errorf("%q is not one of weight=N, max_fails=N, max_conns=N, fail_timeout=TIME", param)
	}
	return nil
}
