package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDefaultsAndRelativePaths(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "compose.yaml", "services: {}\n")
	path := write(t, dir, "agentd.yaml", "state_dir: state\nprojects:\n  shop:\n    compose_file: compose.yaml\n")
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if c.StateDir != filepath.Join(dir, "state") {
		t.Errorf("state_dir = %s, want it relative to the config file", c.StateDir)
	}
	if p := c.Projects["shop"]; p.ComposeFile != filepath.Join(dir, "compose.yaml") || p.KeepReleases != DefaultKeepReleases {
		t.Errorf("project = %+v", p)
	}
	if c.Socket.Path != DefaultSocket || c.Socket.ModeBits() != 0o660 {
		t.Errorf("socket = %+v", c.Socket)
	}
}

func TestUnknownKeyIsAnError(t *testing.T) {
	dir := t.TempDir()
	path := write(t, dir, "agentd.yaml", "projects:\n  shop:\n    compose_fil: x.yaml\n")
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "compose_fil") {
		t.Fatalf("err = %v, want the unknown key named", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	path := write(t, dir, "agentd.yaml", `
socket:
  mode: "999"
  allow_users: [no-such-user-berth]
log:
  format: xml
projects:
  Shop:
    compose_file: missing.yaml
  blog:
    compose_file: ""
    keep_releases: -1
    env_file: absent.env
    allowed_bind_paths: [/srv/blog/uploads, srv/relative, /, /var/run, /srv/x/../etc]
    allowed_images: [registry.gitlab.com/group/blog/*, "reg/[", "a/**/b", "web@sha256:abc"]
    allowed_ports: ["80", "127.0.0.1:8000-8099", "70000", "80-70", "::1:80", "80/icmp"]
    max_compose_files: 5000
    max_compose_bytes: -1
    request_variables: [WEB_TAG, 1BAD, "A-B", BERTH_REGISTRY, COMPOSE_PROFILES, WEB_TAG]
  news:
    keep_releases: 3
    backend: kubernetes
  cluster:
    compose_file: missing.yaml
    backend: swarm
jobs:
  pg_dump:
    - {project: cluster, service: db, database: shop, user: shop, before_deploy: true, keep: 3}
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("no problems found")
	}
	for _, want := range []string{
		`socket.mode "999"`,
		"no-such-user-berth",
		`log.format "xml"`,
		`project "Shop": name must match`,
		"project Shop: compose_file: open",
		"project news: compose_file is required, unless every deploy ships the compose file",
		"project blog: env_file: open",
		"project blog: keep_releases -1",
		`project blog: allowed_bind_paths: "srv/relative" is not an absolute path`,
		`project blog: allowed_bind_paths: "/" would allow every host path`,
		`project blog: allowed_bind_paths: "/var/run" holds the Docker engine's socket`,
		`project blog: allowed_bind_paths: "/srv/x/../etc" is not clean`,
		`project blog: allowed_images: "reg/[": syntax error in pattern`,
		`project blog: allowed_images: "a/**/b": ** is allowed only as the last element`,
		`project blog: allowed_images: "web@sha256:abc": a repository glob has no spaces and no digest`,
		`project blog: allowed_ports: "70000": "70000" is not a port`,
		`project blog: allowed_ports: "80-70": the range ends before it starts`,
		`project blog: allowed_ports: "::1:80": write an IPv6 address in brackets`,
		`project blog: allowed_ports: "80/icmp": protocol "icmp"`,
		"project blog: max_compose_files 5000: want 1 to 1024",
		"project blog: max_compose_bytes -1: want 1 to 16777216",
		`project blog: request_variables: "1BAD" is not a variable name`,
		`project blog: request_variables: "A-B" is not a variable name`,
		"project blog: request_variables: BERTH_REGISTRY: names starting with BERTH_ or COMPOSE_ are reserved",
		"project blog: request_variables: COMPOSE_PROFILES: names starting",
		"project blog: request_variables: WEB_TAG is listed twice",
		`project news: backend "kubernetes": want engine (the default) or swarm`,
		"jobs.pg_dump[0].project: cluster is deployed to a swarm (backend: swarm)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems do not include %q:\n%v", want, err)
		}
	}
	for _, good := range []string{"/srv/blog/uploads", "registry.gitlab.com/group/blog/*", `"80"`, "127.0.0.1:8000-8099"} {
		if strings.Contains(err.Error(), good) {
			t.Errorf("a good value is refused: %s:\n%v", good, err)
		}
	}
}

func TestShipPolicyKeys(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "compose.yaml", "services: {}\n")
	path := write(t, dir, "agentd.yaml", `projects:
  shop:
    compose_file: compose.yaml
    allowed_images: [registry.gitlab.com/group/shop/*, postgres, "registry.test:5000/vendor/**"]
    allowed_ports: ["80", "443", "8000-8099", "127.0.0.1:9000", "[::1]:9001", "53/udp"]
    allowed_bind_paths: [/srv/shop/media]
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	p := c.Projects["shop"]
	if len(p.AllowedImages) != 3 || len(p.AllowedPorts) != 6 || len(p.AllowedBindPaths) != 1 || p.AllowedBindPaths[0] != "/srv/shop/media" {
		t.Errorf("project = %+v", p)
	}
}

func TestHTTPAndSocketLimits(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "compose.yaml", "services: {}\n")
	path := write(t, dir, "agentd.yaml", "projects:\n  shop:\n    compose_file: compose.yaml\nhttp: {}\n")
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	h := c.HTTP
	if h.MaxConnections != DefaultHTTPMaxConns || h.MaxBodyBytes != DefaultHTTPMaxBody || h.HeaderTimeout != DefaultHTTPHeader ||
		h.BodyTimeout != DefaultHTTPBody || h.IdleTimeout != DefaultHTTPIdle || h.WriteTimeout != DefaultHTTPWrite {
		t.Errorf("http defaults = %+v", h)
	}
	if s := c.Socket; s.BodyTimeout != DefaultHTTPBody || s.IdleTimeout != DefaultHTTPIdle || s.WriteTimeout != DefaultHTTPWrite || s.MaxBodyBytes != DefaultSocketMaxBody {
		t.Errorf("socket defaults = %+v", s)
	}

	path = write(t, dir, "bad.yaml", `projects:
  shop:
    compose_file: compose.yaml
socket:
  idle_timeout: -1s
  max_body_bytes: -1
http:
  max_connections: -1
  body_timeout: -5s
`)
	c, err = Load(path)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	for _, want := range []string{
		"socket: body_timeout, idle_timeout and write_timeout must be positive",
		"socket.max_body_bytes -1: must be positive",
		"http: max_header_bytes, max_connections and max_body_bytes must be positive",
		"http: header_timeout, body_timeout, idle_timeout and write_timeout must be positive",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("problems do not include %q:\n%v", want, err)
		}
	}
}

// TestRecoverySettle: the defaults, and a settle that is not positive or
// a limit below it refused with every other problem.
func TestRecoverySettle(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "compose.yaml", "services: {}\n")
	c, err := Load(write(t, dir, "agentd.yaml", "projects:\n  shop:\n    compose_file: compose.yaml\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Recovery.Settle != DefaultRecoverySettle || c.Recovery.SettleLimit != DefaultRecoverySettleLimit {
		t.Errorf("recovery = %+v, want the defaults", c.Recovery)
	}
	for _, body := range []string{"recovery:\n  settle: -1s\n", "recovery:\n  settle: 10s\n  settle_limit: 5s\n"} {
		c, err := Load(write(t, dir, "agentd.yaml", body+"log:\n  format: xml\nprojects:\n  shop:\n    compose_file: compose.yaml\n"))
		if err != nil {
			t.Fatal(err)
		}
		err = c.Validate()
		if err == nil || !strings.Contains(err.Error(), "recovery: settle") || !strings.Contains(err.Error(), `log.format "xml"`) {
			t.Errorf("%q: %v, want the recovery problem among the others", body, err)
		}
	}
}

// TestRolloutBoot: new containers boot at the default boot weight, in the
// idle CPU class unless rollout.boot_cpu_idle says false, and on half the
// CPUs unless rollout.boot_cpus says all; any other boot_cpus is refused.
func TestRolloutBoot(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "compose.yaml", "services: {}\n")
	for _, tc := range []struct {
		body      string
		idle, pin bool
	}{
		{"", true, true},
		{"rollout:\n  boot_cpu_idle: true\n", true, true},
		{"rollout:\n  boot_cpu_idle: false\n", false, true},
		{"rollout:\n  boot_cpus: half\n", true, true},
		{"rollout:\n  boot_cpus: all\n  boot_cpu_idle: false\n", false, false},
	} {
		c, err := Load(write(t, dir, "agentd.yaml", tc.body+"projects:\n  shop:\n    compose_file: compose.yaml\n"))
		if err != nil {
			t.Fatal(err)
		}
		if idle, pin := c.Rollout.Idle(), c.Rollout.Pin(); idle != tc.idle || pin != tc.pin || c.Rollout.BootCPUShares != DefaultBootCPUShares {
			t.Errorf("%q: idle %v, pin %v, shares %d; want %v, %v, %d", tc.body, idle, pin, c.Rollout.BootCPUShares, tc.idle, tc.pin, DefaultBootCPUShares)
		}
	}
	c, err := Load(write(t, dir, "agentd.yaml", "rollout:\n  boot_cpus: \"1\"\nprojects:\n  shop:\n    compose_file: compose.yaml\n"))
	if err == nil {
		err = c.Validate()
	}
	if err == nil || !strings.Contains(err.Error(), `rollout.boot_cpus "1"`) {
		t.Fatalf("boot_cpus 1: %v; want it refused", err)
	}
}

// TestShipOnlyProject: a project may go without a compose file on the host
// when every deploy ships one, and then names the images a shipped file may
// run; ship_compose is off unless an identity says so, and the limits of a
// shipped file have defaults.
func TestShipOnlyProject(t *testing.T) {
	dir := t.TempDir()
	path := write(t, dir, "agentd.yaml", `
projects:
  shop:
    allowed_images: [registry.gitlab.com/group/shop/*]
    allowed_ports: ["8000-8099"]
    allowed_bind_paths: [/srv/shop]
identities:
  - name: ci
    local_users: [root]
    projects: [shop]
    verbs: [deploy]
    ship_compose: true
  - name: ops
    local_users: [root]
    projects: [shop]
    verbs: ["*"]
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	p := c.Projects["shop"]
	if p.ComposeFile != "" || p.MaxComposeFiles != DefaultMaxComposeFiles || p.MaxComposeBytes != DefaultMaxComposeBytes {
		t.Errorf("project = %+v", p)
	}
	if !c.Identities[0].ShipCompose || c.Identities[1].ShipCompose {
		t.Errorf("ship_compose: ci %v, ops %v; want true, false", c.Identities[0].ShipCompose, c.Identities[1].ShipCompose)
	}
}
