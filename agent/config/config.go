// Package config loads and validates agentd's one YAML config file.
// Unknown keys are errors and Validate reports every problem at once:
// a bad entry is never silently dropped.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berth-deploy/berth/compose/trust"
	"github.com/robfig/cron/v3"
	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
)

// Defaults, used where the file says nothing.
const (
	DefaultStateDir     = "/var/lib/berth"
	DefaultSocket       = "/run/berth/agentd.sock"
	DefaultSocketMode   = "0660"
	DefaultKeepReleases = 10
	// BackendEngine and BackendSwarm are the values of projects.NAME.backend.
	BackendEngine = "engine"
	BackendSwarm  = "swarm"
	// DefaultMaxComposeFiles and DefaultMaxComposeBytes bound a shipped
	// compose file (projects.NAME.max_compose_files, max_compose_bytes).
	DefaultMaxComposeFiles = 64
	DefaultMaxComposeBytes = 1 << 20
)

// Config is agentd's configuration.
type Config struct {
	// StateDir holds the release database.
	StateDir string `yaml:"state_dir"`
	Socket   Socket `yaml:"socket"`
	// DockerConfig is the directory of the Docker config.json whose
	// credentials pull images; empty means DOCKER_CONFIG or ~/.docker.
	DockerConfig string             `yaml:"docker_config"`
	Log          Log                `yaml:"log"`
	Projects     map[string]Project `yaml:"projects"`
	// Identities are who may reach agentd from outside the host (SSH, the
	// HTTP API, or an OpenSSH forced command) and what each may do.
	Identities []Identity `yaml:"identities"`
	// SSH configures the embedded SSH server; absent means none.
	SSH *SSH `yaml:"ssh"`
	// HTTP configures the HTTP API; absent means none.
	HTTP *HTTP `yaml:"http"`
	// Metrics serves Prometheus metrics; absent means none.
	Metrics *Metrics `yaml:"metrics"`
	// Notifications are webhooks told of every release's outcome.
	Notifications []Notification `yaml:"notifications"`
	// Jobs are the scheduled jobs.
	Jobs Jobs `yaml:"jobs"`
	// Recovery tunes the crash recovery agentd runs before it serves.
	Recovery Recovery `yaml:"recovery"`
	// Rollout tunes how new containers boot beside those that serve.
	Rollout Rollout `yaml:"rollout"`

	// path is the file it was loaded from; relative paths resolve against
	// its directory.
	path string
}

// Recovery tunes how agentd, started again after it died during a
// release, waits for the engine before it puts the release back.
type Recovery struct {
	// Settle is how long a project's containers must stay unchanged (and
	// every listed one be found by its ID) before recovery acts on them:
	// the engine finishes a create the dead agentd had under way.
	Settle time.Duration `yaml:"settle"`
	// SettleLimit bounds that wait; recovery goes ahead after it.
	SettleLimit time.Duration `yaml:"settle_limit"`
}

// Rollout tunes how releases roll out.
type Rollout struct {
	// BootCPUShares is the CPU weight (docker's --cpu-shares) a new
	// container and a hook boot with; a container gets its configured
	// weight back once it passes its gate. 1024 (the engine's default)
	// turns it off; a service that sets cpu_shares keeps its own.
	BootCPUShares int64 `yaml:"boot_cpu_shares"`
	// BootCPUIdle also puts what boots at BootCPUShares in the kernel's
	// idle CPU class (cpu.idle) until its gate passes, where agentd may
	// write the container's cgroup (true when absent).
	BootCPUIdle *bool `yaml:"boot_cpu_idle"`
	// BootCPUs is where what boots at BootCPUShares may run until its
	// gate passes: "half" (when empty) keeps it to the upper half of the
	// CPUs (cpuset.cpus of the container's cgroup), so the lower half runs
	// only what serves; "all" lets it run on every CPU.
	BootCPUs string `yaml:"boot_cpus"`
}

// The values of rollout.boot_cpus.
const (
	BootCPUsHalf = "half"
	BootCPUsAll  = "all"
)

// Pin says whether new containers boot on half the CPUs.
func (r Rollout) Pin() bool { return r.BootCPUs != BootCPUsAll }

// Idle says whether new containers boot in the idle CPU class.
func (r Rollout) Idle() bool { return r.BootCPUIdle == nil || *r.BootCPUIdle }

// DefaultBootCPUShares is the weight new containers boot with: the least
// the engine accepts, so the containers that serve come first.
const DefaultBootCPUShares = 2

// Recovery defaults.
const (
	DefaultRecoverySettle      = 2 * time.Second
	DefaultRecoverySettleLimit = 30 * time.Second
)

// Socket configures the unix socket agentctl talks to.
type Socket struct {
	Path string `yaml:"path"`
	// Mode is the socket file's permission bits, in octal.
	Mode string `yaml:"mode"`
	// Group owns the socket file, so its members may use agentctl.
	Group string `yaml:"group"`
	// AllowUsers, when set, lists the only local users whose requests are
	// served; anyone else who can open the socket gets exit code 4.
	AllowUsers []string `yaml:"allow_users"`
	// BodyTimeout, IdleTimeout and WriteTimeout bound a connection as
	// the HTTP API's keys of the same names do.
	BodyTimeout  time.Duration `yaml:"body_timeout"`
	IdleTimeout  time.Duration `yaml:"idle_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxBodyBytes caps a request's body: a deploy that carries compose
	// files (agentctl deploy --compose-file), or a command whose standard
	// input is one (agentctl ssh-command, base64), must fit.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
}

// Log configures agentd's logs (to stderr, where journald takes them).
type Log struct {
	Format string `yaml:"format"` // text or json
	Level  string `yaml:"level"`  // debug, info, warn, error
}

// Project is one compose project the agent deploys.
type Project struct {
	// ComposeFile is the host's compose file, deployed when a request
	// carries none. A ship-only project has none: every deploy ships its
	// compose file, or redeploys the live release's shipped files.
	ComposeFile  string   `yaml:"compose_file"`
	EnvFile      string   `yaml:"env_file"`
	Profiles     []string `yaml:"profiles"`
	KeepReleases int      `yaml:"keep_releases"`
	// Backend is where the project's releases run: BackendEngine (the
	// default: containers on this host's Docker Engine) or BackendSwarm
	// (services of a stack on the Docker Swarm whose manager agentd talks
	// to).
	Backend string `yaml:"backend"`
	// DockerConfig overrides the registry credentials for this project.
	DockerConfig string `yaml:"docker_config"`
	// RequestVariables are the variables a deploy request may set
	// (`--env-file -`, the HTTP body's env); none by default. What they
	// may change is decided by package compose/trust.
	RequestVariables []string `yaml:"request_variables"`
	// The policy for a compose file a deploy ships (package compose/trust,
	// ShipPolicy); each allows nothing when empty. AllowedImages are
	// globs of the image repositories a shipped file's services may run
	// (after --image), AllowedPorts the host ports they may publish
	// ("80", "8000-8099", "127.0.0.1:8000", "53/udp"), AllowedBindPaths
	// the host directories under which a bind mount's source may be.
	AllowedImages    []string `yaml:"allowed_images"`
	AllowedPorts     []string `yaml:"allowed_ports"`
	AllowedBindPaths []string `yaml:"allowed_bind_paths"`
	// MaxComposeFiles and MaxComposeBytes bound a compose file shipped
	// with a request: its files (the compose file and those it includes
	// or extends) and their bytes in all.
	MaxComposeFiles int   `yaml:"max_compose_files"`
	MaxComposeBytes int64 `yaml:"max_compose_bytes"`
}

// Identity is one caller and its scopes.
type Identity struct {
	Name string `yaml:"name"`
	// SSHKeys are OpenSSH authorized_keys lines (options allowed: from=,
	// restrict, no-pty, no-port-forwarding, no-agent-forwarding,
	// no-X11-forwarding, no-user-rc).
	SSHKeys []string `yaml:"ssh_keys"`
	// GitLab lists the ID-token claims a GitLab CI job must carry to be
	// this identity (needs http.oidc).
	GitLab *GitLabClaims `yaml:"gitlab"`
	// HMACSecretFile holds the shared secret of HMAC-signed HTTP requests.
	HMACSecretFile string `yaml:"hmac_secret_file"`
	// LocalUsers are the host users who may act as this identity through
	// `agentctl ssh-command` (OpenSSH forced-command mode).
	LocalUsers []string `yaml:"local_users"`
	// Projects and Verbs scope the identity; "*" means all.
	Projects []string `yaml:"projects"`
	Verbs    []string `yaml:"verbs"`
	// ShipCompose lets the identity send a deploy's compose file with the
	// request (off by default); the project's policy decides what the
	// file may contain.
	ShipCompose bool `yaml:"ship_compose"`
}

// GitLabClaims are the claims of a GitLab CI ID token an identity accepts.
// Every field that is set must match; ProjectID or ProjectPath is required.
type GitLabClaims struct {
	ProjectID   string `yaml:"project_id"`
	ProjectPath string `yaml:"project_path"`
	Ref         string `yaml:"ref"`
	// RefProtected requires a protected ref; true unless set to false.
	RefProtected   *bool    `yaml:"ref_protected"`
	Environment    string   `yaml:"environment"`
	PipelineSource []string `yaml:"pipeline_source"`
}

// SSH configures the embedded SSH server.
type SSH struct {
	Listen           string        `yaml:"listen"`
	HostKey          string        `yaml:"host_key"`
	MaxConnections   int           `yaml:"max_connections"`
	MaxAuthTries     int           `yaml:"max_auth_tries"`
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	IdleTimeout      time.Duration `yaml:"idle_timeout"`
	// MaxCommandBytes caps a command line (an SSH exec request, or what
	// agentctl ssh-command passes on); a longer one gets exit status 2
	// before it is logged or parsed.
	MaxCommandBytes int `yaml:"max_command_bytes"`
	// StdinTimeout bounds the time a command with --env-file - waits for
	// its standard input to end (the idle timeout is suspended while a
	// command runs); past it the command gets exit status 2.
	StdinTimeout time.Duration `yaml:"stdin_timeout"`
}

// HTTP configures the HTTP API.
type HTTP struct {
	Listen string `yaml:"listen"`
	// TLSCert and TLSKey serve HTTPS; without them the API must listen on
	// a loopback address (behind a proxy that terminates TLS).
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	OIDC    *OIDC  `yaml:"oidc"`
	// MaxHeaderBytes caps request headers before any token is parsed.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxNonces bounds the unexpired HMAC nonces remembered per identity;
	// an identity holding that many is refused until the oldest lapses.
	MaxNonces int `yaml:"max_nonces"`
	// MaxConnections caps the connections open at once. When it is
	// reached, a new connection evicts the oldest one on which no request
	// has passed authentication yet.
	MaxConnections int `yaml:"max_connections"`
	// MaxBodyBytes caps a request's body.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// HeaderTimeout bounds reading a request's headers (and a TLS
	// handshake).
	HeaderTimeout time.Duration `yaml:"header_timeout"`
	// BodyTimeout bounds reading a request's body, once its headers are in.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// IdleTimeout closes a keep-alive connection that sends no new request
	// for this long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// WriteTimeout closes a connection when a write of its response (one
	// event of a deploy's stream) makes no progress for this long; a
	// stream as a whole may last as long as its deploy.
	WriteTimeout time.Duration `yaml:"write_timeout"`
}

// OIDC configures the verification of GitLab CI ID tokens.
type OIDC struct {
	Issuer     string   `yaml:"issuer"`
	JWKSURL    string   `yaml:"jwks_url"`
	Audience   string   `yaml:"audience"`
	Algorithms []string `yaml:"algorithms"`
	// MaxAge refuses tokens issued longer ago than this.
	MaxAge time.Duration `yaml:"max_age"`
	// JWKSRefresh is the least time between two fetches of the key set
	// when a token names an unknown key.
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	// MaxJTIs bounds the unexpired ID token jtis remembered per identity;
	// an identity holding that many is refused until the oldest lapses.
	MaxJTIs int `yaml:"max_jtis"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Listen is the address of GET /metrics (plain HTTP; keep it on
	// loopback or a private network).
	Listen string `yaml:"listen"`
}

// Notification is one webhook.
type Notification struct {
	URL string `yaml:"url"`
	// Format is json (Berth's own event) or slack (a Slack-compatible
	// {"text": ...} body, which Mattermost and others accept too).
	Format string `yaml:"format"`
	// Events filters what is sent: success, failure, rollback (a release
	// that failed and was rolled back) and unhealthy (the watch job); all
	// by default.
	Events []string `yaml:"events"`
	// Projects filters by project; all by default.
	Projects []string `yaml:"projects"`
	// Timeout bounds each attempt; Retries is how many more attempts a
	// failed delivery gets.
	Timeout time.Duration `yaml:"timeout"`
	Retries int           `yaml:"retries"`
}

// Jobs are agentd's scheduled jobs; each runs on a cron schedule
// (robfig/cron syntax: "0 3 * * *", "@every 15m", "@daily").
type Jobs struct {
	// PruneImages removes images no container uses and no recorded
	// release of any project needs (every image of the last KeepReleases
	// releases stays, so a rollback works without the registry).
	PruneImages *PruneJob `yaml:"prune_images"`
	// Watch checks the live releases: a service that turns unhealthy,
	// restarts or stops is logged and notified.
	Watch *WatchJob `yaml:"watch"`
	// PgDump dumps Postgres databases by exec of pg_dump in a service.
	PgDump []PgDumpJob `yaml:"pg_dump"`
}

// PruneJob configures image pruning.
type PruneJob struct {
	Schedule     string `yaml:"schedule"`
	KeepReleases int    `yaml:"keep_releases"`
}

// WatchJob configures the watch of live releases.
type WatchJob struct {
	Schedule string `yaml:"schedule"`
}

// PgDumpJob dumps one project's Postgres.
type PgDumpJob struct {
	Project  string `yaml:"project"`
	Service  string `yaml:"service"`  // the compose service running Postgres
	Database string `yaml:"database"` // default postgres
	User     string `yaml:"user"`     // default postgres
	Dir      string `yaml:"dir"`      // where dumps go (default state_dir/dumps/PROJECT)
	Keep     int    `yaml:"keep"`     // dumps kept (default 7)
	Schedule string `yaml:"schedule"` // empty: no scheduled dump
	// BeforeDeploy dumps before a release whose services run pre-deploy
	// hooks (migrations), and fails the release if the dump fails.
	BeforeDeploy bool `yaml:"before_deploy"`
}

// The most max_compose_files and max_compose_bytes may be set to: a
// shipped bundle is held in memory and written under state_dir.
const (
	MaxComposeFilesLimit = 1024
	MaxComposeBytesLimit = 16 << 20
)

// Verbs of the command grammar, as scopes name them.
var Verbs = []string{"deploy", "rollback", "status", "history", "lock", "unlock"}

// Defaults of the front doors.
const (
	DefaultSSHListen       = ":2222"
	DefaultSSHMaxConns     = 64
	DefaultSSHMaxAuthTries = 6
	DefaultSSHHandshake    = 10 * time.Second
	DefaultSSHIdle         = 10 * time.Minute
	DefaultHTTPListen      = "127.0.0.1:8420"
	DefaultMaxHeaderBytes  = 16 << 10
	DefaultHTTPMaxConns    = 64
	DefaultHTTPMaxBody     = 128 << 10
	DefaultHTTPHeader      = 10 * time.Second
	DefaultHTTPBody        = 10 * time.Second
	DefaultHTTPIdle        = 10 * time.Second
	DefaultHTTPWrite       = 30 * time.Second
	DefaultOIDCMaxAge      = time.Hour
	DefaultOIDCJWKSRefresh = time.Minute
	DefaultOIDCJWKSPath    = "/oauth/discovery/keys"
	DefaultOIDCAlgorithm   = "RS256"
	DefaultOIDCMaxJTIs     = 10000
	DefaultMaxNonces       = 10000
	DefaultSSHHostKeyName  = "ssh_host_ed25519_key"
	DefaultMaxCommandBytes = 4096
	DefaultStdinTimeout    = 30 * time.Second
	DefaultSocketMaxBody   = 4 << 20
)

// CommandLimits returns ssh.max_command_bytes and ssh.stdin_timeout, or
// their defaults when there is no ssh section: commands also come through
// agentctl ssh-command (OpenSSH forced-command mode).
func (c *Config) CommandLimits() (maxBytes int, stdinTimeout time.Duration) {
	maxBytes, stdinTimeout = DefaultMaxCommandBytes, DefaultStdinTimeout
	if c.SSH != nil {
		if c.SSH.MaxCommandBytes != 0 {
			maxBytes = c.SSH.MaxCommandBytes
		}
		if c.SSH.StdinTimeout != 0 {
			stdinTimeout = c.SSH.StdinTimeout
		}
	}
	return maxBytes, stdinTimeout
}

// ModeBits returns the socket mode as permission bits.
func (s Socket) ModeBits() os.FileMode {
	m, _ := strconv.ParseUint(s.Mode, 8, 32)
	return os.FileMode(m)
}

var projectName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// variableName is what request_variables may list.
var variableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Load reads the file, applies defaults and resolves relative paths. It
// fails on YAML errors and unknown keys; call Validate for the rest.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	c.path = path
	c.applyDefaults()
	return c, nil
}

func (c *Config) applyDefaults() {
	dir := filepath.Dir(c.path)
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.Socket.Path == "" {
		c.Socket.Path = DefaultSocket
	}
	if c.Socket.Mode == "" {
		c.Socket.Mode = DefaultSocketMode
	}
	if c.Socket.BodyTimeout == 0 {
		c.Socket.BodyTimeout = DefaultHTTPBody
	}
	if c.Socket.IdleTimeout == 0 {
		c.Socket.IdleTimeout = DefaultHTTPIdle
	}
	if c.Socket.WriteTimeout == 0 {
		c.Socket.WriteTimeout = DefaultHTTPWrite
	}
	if c.Socket.MaxBodyBytes == 0 {
		c.Socket.MaxBodyBytes = DefaultSocketMaxBody
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Recovery.Settle == 0 {
		c.Recovery.Settle = DefaultRecoverySettle
	}
	if c.Recovery.SettleLimit == 0 {
		c.Recovery.SettleLimit = DefaultRecoverySettleLimit
	}
	if c.Rollout.BootCPUShares == 0 {
		c.Rollout.BootCPUShares = DefaultBootCPUShares
	}
	c.StateDir = abs(c.StateDir)
	c.Socket.Path = abs(c.Socket.Path)
	c.DockerConfig = abs(c.DockerConfig)
	if c.SSH != nil {
		if c.SSH.Listen == "" {
			c.SSH.Listen = DefaultSSHListen
		}
		if c.SSH.HostKey == "" {
			c.SSH.HostKey = filepath.Join(c.StateDir, DefaultSSHHostKeyName)
		}
		c.SSH.HostKey = abs(c.SSH.HostKey)
		if c.SSH.MaxConnections == 0 {
			c.SSH.MaxConnections = DefaultSSHMaxConns
		}
		if c.SSH.MaxAuthTries == 0 {
			c.SSH.MaxAuthTries = DefaultSSHMaxAuthTries
		}
		if c.SSH.HandshakeTimeout == 0 {
			c.SSH.HandshakeTimeout = DefaultSSHHandshake
		}
		if c.SSH.IdleTimeout == 0 {
			c.SSH.IdleTimeout = DefaultSSHIdle
		}
		if c.SSH.MaxCommandBytes == 0 {
			c.SSH.MaxCommandBytes = DefaultMaxCommandBytes
		}
		if c.SSH.StdinTimeout == 0 {
			c.SSH.StdinTimeout = DefaultStdinTimeout
		}
	}
	if c.HTTP != nil {
		if c.HTTP.Listen == "" {
			c.HTTP.Listen = DefaultHTTPListen
		}
		c.HTTP.TLSCert, c.HTTP.TLSKey = abs(c.HTTP.TLSCert), abs(c.HTTP.TLSKey)
		if c.HTTP.MaxHeaderBytes == 0 {
			c.HTTP.MaxHeaderBytes = DefaultMaxHeaderBytes
		}
		if c.HTTP.MaxNonces == 0 {
			c.HTTP.MaxNonces = DefaultMaxNonces
		}
		if c.HTTP.MaxConnections == 0 {
			c.HTTP.MaxConnections = DefaultHTTPMaxConns
		}
		if c.HTTP.MaxBodyBytes == 0 {
			c.HTTP.MaxBodyBytes = DefaultHTTPMaxBody
		}
		if c.HTTP.HeaderTimeout == 0 {
			c.HTTP.HeaderTimeout = DefaultHTTPHeader
		}
		if c.HTTP.BodyTimeout == 0 {
			c.HTTP.BodyTimeout = DefaultHTTPBody
		}
		if c.HTTP.IdleTimeout == 0 {
			c.HTTP.IdleTimeout = DefaultHTTPIdle
		}
		if c.HTTP.WriteTimeout == 0 {
			c.HTTP.WriteTimeout = DefaultHTTPWrite
		}
		if o := c.HTTP.OIDC; o != nil {
			if o.JWKSURL == "" && o.Issuer != "" {
				o.JWKSURL = strings.TrimSuffix(o.Issuer, "/") + DefaultOIDCJWKSPath
			}
			if len(o.Algorithms) == 0 {
				o.Algorithms = []string{DefaultOIDCAlgorithm}
			}
			if o.MaxAge == 0 {
				o.MaxAge = DefaultOIDCMaxAge
			}
			if o.JWKSRefresh == 0 {
				o.JWKSRefresh = DefaultOIDCJWKSRefresh
			}
			if o.MaxJTIs == 0 {
				o.MaxJTIs = DefaultOIDCMaxJTIs
			}
		}
	}
	for i := range c.Identities {
		c.Identities[i].HMACSecretFile = abs(c.Identities[i].HMACSecretFile)
	}
	for i := range c.Notifications {
		n := &c.Notifications[i]
		if n.Format == "" {
			n.Format = "json"
		}
		if n.Timeout == 0 {
			n.Timeout = 5 * time.Second
		}
		if n.Retries == 0 {
			n.Retries = 3
		}
	}
	if j := c.Jobs.PruneImages; j != nil && j.KeepReleases == 0 {
		j.KeepReleases = 3
	}
	for i := range c.Jobs.PgDump {
		d := &c.Jobs.PgDump[i]
		if d.Database == "" {
			d.Database = "postgres"
		}
		if d.User == "" {
			d.User = "postgres"
		}
		if d.Dir == "" {
			d.Dir = filepath.Join(c.StateDir, "dumps", d.Project)
		}
		d.Dir = abs(d.Dir)
		if d.Keep == 0 {
			d.Keep = 7
		}
	}
	for name, p := range c.Projects {
		if p.KeepReleases == 0 {
			p.KeepReleases = DefaultKeepReleases
		}
		if p.MaxComposeFiles == 0 {
			p.MaxComposeFiles = DefaultMaxComposeFiles
		}
		if p.MaxComposeBytes == 0 {
			p.MaxComposeBytes = DefaultMaxComposeBytes
		}
		p.ComposeFile = abs(p.ComposeFile)
		p.EnvFile = abs(p.EnvFile)
		p.DockerConfig = abs(p.DockerConfig)
		c.Projects[name] = p
	}
}

// ProjectNames returns the configured project names, sorted.
func (c *Config) ProjectNames() []string {
	names := make([]string, 0, len(c.Projects))
	for n := range c.Projects {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Validate returns every problem in the config, joined; nil if none.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if m, err := strconv.ParseUint(c.Socket.Mode, 8, 32); err != nil || m > 0o777 {
		bad("socket.mode %q: want octal permission bits such as 0660", c.Socket.Mode)
	}
	if c.Socket.Group != "" {
		if _, err := user.LookupGroup(c.Socket.Group); err != nil {
			bad("socket.group %q: %v", c.Socket.Group, err)
		}
	}
	if c.Socket.BodyTimeout <= 0 || c.Socket.IdleTimeout <= 0 || c.Socket.WriteTimeout <= 0 {
		bad("socket: body_timeout, idle_timeout and write_timeout must be positive")
	}
	if c.Socket.MaxBodyBytes < 1 {
		bad("socket.max_body_bytes %d: must be positive", c.Socket.MaxBodyBytes)
	}
	for _, u := range c.Socket.AllowUsers {
		if _, err := user.Lookup(u); err != nil {
			bad("socket.allow_users: %q: %v", u, err)
		}
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format %q: want text or json", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level %q: want debug, info, warn or error", c.Log.Level)
	}
	if c.DockerConfig != "" {
		mustDir(&errs, "docker_config", c.DockerConfig)
	}
	for _, name := range c.ProjectNames() {
		p := c.Projects[name]
		if !projectName.MatchString(name) {
			bad("project %q: name must match %s", name, projectName)
		}
		switch {
		case p.ComposeFile != "":
			if err := readable(p.ComposeFile); err != nil {
				bad("project %s: compose_file: %v", name, err)
			}
		case len(p.AllowedImages) == 0:
			// Ship-only: every deploy ships its compose file, which
			// could run no image at all.
			bad("project %s: compose_file is required, unless every deploy ships the compose file: then allowed_images names the image repositories a shipped file may run", name)
		}
		if p.MaxComposeFiles < 1 || p.MaxComposeFiles > MaxComposeFilesLimit {
			bad("project %s: max_compose_files %d: want 1 to %d", name, p.MaxComposeFiles, MaxComposeFilesLimit)
		}
		if p.MaxComposeBytes < 1 || p.MaxComposeBytes > MaxComposeBytesLimit {
			bad("project %s: max_compose_bytes %d: want 1 to %d", name, p.MaxComposeBytes, MaxComposeBytesLimit)
		}
		if p.EnvFile != "" {
			if err := readable(p.EnvFile); err != nil {
				bad("project %s: env_file: %v", name, err)
			}
		}
		if p.KeepReleases < 0 {
			bad("project %s: keep_releases %d: must be positive", name, p.KeepReleases)
		}
		switch p.Backend {
		case "", BackendEngine, BackendSwarm:
		default:
			bad("project %s: backend %q: want %s (the default) or %s", name, p.Backend, BackendEngine, BackendSwarm)
		}
		if p.DockerConfig != "" {
			mustDir(&errs, "project "+name+": docker_config", p.DockerConfig)
		}
		for _, v := range p.AllowedImages {
			if err := trust.CheckImagePattern(v); err != nil {
				bad("project %s: allowed_images: %v", name, err)
			}
		}
		for _, v := range p.AllowedPorts {
			if _, err := trust.ParsePortRule(v); err != nil {
				bad("project %s: allowed_ports: %v", name, err)
			}
		}
		for _, v := range p.AllowedBindPaths {
			if err := trust.CheckBindPath(v); err != nil {
				bad("project %s: allowed_bind_paths: %v", name, err)
			}
		}
		for i, v := range p.RequestVariables {
			switch {
			case !variableName.MatchString(v):
				bad("project %s: request_variables: %q is not a variable name (%s)", name, v, variableName)
			case strings.HasPrefix(v, "BERTH_") || strings.HasPrefix(v, "COMPOSE_"):
				bad("project %s: request_variables: %s: names starting with BERTH_ or COMPOSE_ are reserved", name, v)
			case slices.Contains(p.RequestVariables[:i], v):
				bad("project %s: request_variables: %s is listed twice", name, v)
			}
		}
	}
	errs = append(errs, c.validateFrontDoors()...)
	errs = append(errs, c.validateOperations()...)
	return errors.Join(errs...)
}

// allowedKeyOptions are the authorized_keys options an SSH key may carry.
// Options that change what a session may do (command=, environment=,
// permitopen= and the like) are refused: the server runs only the command
// grammar, whatever the key says.
var allowedKeyOptions = map[string]bool{
	"restrict": true, "no-pty": true, "no-port-forwarding": true, "no-agent-forwarding": true,
	"no-x11-forwarding": true, "no-user-rc": true,
}

// ParseKey parses one authorized_keys line and returns the key and its
// from= patterns; an option other than from= and the harmless no-* ones
// is an error.
func ParseKey(line string) (ssh.PublicKey, string, error) {
	key, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, "", fmt.Errorf("not an authorized_keys line: %w", err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, "", errors.New("one key per entry")
	}
	from := ""
	for _, o := range options {
		name, value, hasValue := strings.Cut(o, "=")
		switch {
		case strings.EqualFold(name, "from") && hasValue:
			from = strings.Trim(value, `"`)
			if from == "" {
				return nil, "", errors.New(`from="" is empty`)
			}
		case allowedKeyOptions[strings.ToLower(name)] && !hasValue:
		default:
			return nil, "", fmt.Errorf("option %q is not supported (allowed: from=, restrict, no-pty, no-port-forwarding, no-agent-forwarding, no-X11-forwarding, no-user-rc)", o)
		}
	}
	return key, from, nil
}

func (c *Config) validateFrontDoors() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := map[string]bool{}
	keys := map[string]string{}
	for i, id := range c.Identities {
		where := fmt.Sprintf("identities[%d] %q", i, id.Name)
		if id.Name == "" {
			bad("identities[%d]: name is required", i)
		} else if names[id.Name] {
			bad("%s: the name is used twice", where)
		}
		names[id.Name] = true
		if len(id.SSHKeys) == 0 && id.GitLab == nil && id.HMACSecretFile == "" && len(id.LocalUsers) == 0 {
			bad("%s: no way to prove it (ssh_keys, gitlab, hmac_secret_file or local_users)", where)
		}
		for j, line := range id.SSHKeys {
			key, _, err := ParseKey(line)
			if err != nil {
				bad("%s: ssh_keys[%d]: %v", where, j, err)
				continue
			}
			fp := ssh.FingerprintSHA256(key)
			if other, dup := keys[fp]; dup {
				bad("%s: ssh_keys[%d]: key %s is also given to %s", where, j, fp, other)
			}
			keys[fp] = id.Name
		}
		if g := id.GitLab; g != nil {
			if g.ProjectID == "" && g.ProjectPath == "" {
				bad("%s: gitlab: project_id or project_path is required", where)
			}
			if c.HTTP == nil || c.HTTP.OIDC == nil {
				bad("%s: gitlab needs http.oidc to verify ID tokens", where)
			}
		}
		if id.HMACSecretFile != "" {
			if secret, err := os.ReadFile(id.HMACSecretFile); err != nil {
				bad("%s: hmac_secret_file: %v", where, err)
			} else if len(bytes.TrimSpace(secret)) < 32 {
				bad("%s: hmac_secret_file: the secret must be at least 32 bytes", where)
			}
			if c.HTTP == nil {
				bad("%s: hmac_secret_file needs the http API", where)
			}
		}
		for _, u := range id.LocalUsers {
			if _, err := user.Lookup(u); err != nil {
				bad("%s: local_users: %q: %v", where, u, err)
			}
		}
		if len(id.Projects) == 0 {
			bad("%s: projects: name the projects it may touch (or \"*\")", where)
		}
		for _, p := range id.Projects {
			if _, ok := c.Projects[p]; !ok && p != "*" {
				bad("%s: projects: no project %s", where, p)
			}
		}
		if len(id.Verbs) == 0 {
			bad("%s: verbs: name the verbs it may use (%s, or \"*\")", where, strings.Join(Verbs, ", "))
		}
		for _, v := range id.Verbs {
			if v != "*" && !slices.Contains(Verbs, v) {
				bad("%s: verbs: no verb %s (%s)", where, v, strings.Join(Verbs, ", "))
			}
		}
	}
	if r := c.Recovery; r.Settle <= 0 || r.SettleLimit < r.Settle {
		bad("recovery: settle (%s) must be positive and settle_limit (%s) at least settle", r.Settle, r.SettleLimit)
	}
	if w := c.Rollout.BootCPUShares; w < 2 || w > 262144 {
		bad("rollout.boot_cpu_shares %d: the engine takes 2 to 262144 (1024 is its default weight: no shielding)", w)
	}
	if b := c.Rollout.BootCPUs; b != "" && b != BootCPUsHalf && b != BootCPUsAll {
		bad("rollout.boot_cpus %q: %q or %q", b, BootCPUsHalf, BootCPUsAll)
	}
	if s := c.SSH; s != nil {
		if _, _, err := net.SplitHostPort(s.Listen); err != nil {
			bad("ssh.listen %q: %v", s.Listen, err)
		}
		if s.MaxConnections < 1 || s.MaxAuthTries < 1 || s.HandshakeTimeout <= 0 || s.IdleTimeout <= 0 {
			bad("ssh: max_connections, max_auth_tries, handshake_timeout and idle_timeout must be positive")
		}
		if s.MaxCommandBytes < 256 || s.MaxCommandBytes > 64<<10 {
			bad("ssh.max_command_bytes %d: want 256 to 65536", s.MaxCommandBytes)
		}
		if s.StdinTimeout <= 0 {
			bad("ssh.stdin_timeout %s: must be positive", s.StdinTimeout)
		}
	}
	if h := c.HTTP; h != nil {
		host, _, err := net.SplitHostPort(h.Listen)
		if err != nil {
			bad("http.listen %q: %v", h.Listen, err)
		}
		if h.MaxHeaderBytes < 1 || h.MaxConnections < 1 || h.MaxBodyBytes < 1 {
			bad("http: max_header_bytes, max_connections and max_body_bytes must be positive")
		}
		if h.HeaderTimeout <= 0 || h.BodyTimeout <= 0 || h.IdleTimeout <= 0 || h.WriteTimeout <= 0 {
			bad("http: header_timeout, body_timeout, idle_timeout and write_timeout must be positive")
		}
		if (h.TLSCert == "") != (h.TLSKey == "") {
			bad("http: tls_cert and tls_key go together")
		}
		if h.TLSCert == "" && err == nil {
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				bad("http.listen %q: without tls_cert and tls_key the API only listens on a loopback address (put a TLS proxy in front)", h.Listen)
			}
		}
		for _, f := range []string{h.TLSCert, h.TLSKey} {
			if f != "" {
				if err := readable(f); err != nil {
					bad("http: %v", err)
				}
			}
		}
		if h.MaxNonces < 1 {
			bad("http.max_nonces must be at least 1")
		}
		if o := h.OIDC; o != nil {
			if !strings.HasPrefix(o.Issuer, "https://") && !strings.HasPrefix(o.Issuer, "http://") {
				bad("http.oidc.issuer %q: want the issuer URL, e.g. https://gitlab.com", o.Issuer)
			} else if err := CheckHTTPS(o.Issuer); err != nil {
				bad("http.oidc.issuer: %v", err)
			}
			if derived := strings.TrimSuffix(o.Issuer, "/") + DefaultOIDCJWKSPath; o.JWKSURL != "" && o.JWKSURL != derived {
				if err := CheckHTTPS(o.JWKSURL); err != nil {
					bad("http.oidc.jwks_url: %v", err)
				}
			}
			if o.MaxJTIs < 1 {
				bad("http.oidc.max_jtis must be at least 1")
			}
			if o.Audience == "" {
				bad("http.oidc.audience is required (the aud of the job's id_tokens)")
			}
			for _, a := range o.Algorithms {
				if !slices.Contains([]string{"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"}, a) {
					bad("http.oidc.algorithms: %q is not an asymmetric signature algorithm", a)
				}
			}
		}
	}
	return errs
}

func (c *Config) validateOperations() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if m := c.Metrics; m != nil {
		if _, _, err := net.SplitHostPort(m.Listen); err != nil {
			bad("metrics.listen %q: %v", m.Listen, err)
		}
	}
	events := []string{"success", "failure", "rollback", "unhealthy"}
	for i, n := range c.Notifications {
		where := fmt.Sprintf("notifications[%d]", i)
		if !strings.HasPrefix(n.URL, "https://") && !strings.HasPrefix(n.URL, "http://") {
			bad("%s.url %q: want an http(s) URL", where, n.URL)
		}
		if n.Format != "json" && n.Format != "slack" {
			bad("%s.format %q: want json or slack", where, n.Format)
		}
		for _, e := range n.Events {
			if !slices.Contains(events, e) {
				bad("%s.events: %q is not one of %s", where, e, strings.Join(events, ", "))
			}
		}
		for _, p := range n.Projects {
			if _, ok := c.Projects[p]; !ok {
				bad("%s.projects: no project %s", where, p)
			}
		}
		if n.Timeout < 0 || n.Retries < 0 {
			bad("%s: timeout and retries must not be negative", where)
		}
	}
	schedule := func(what, spec string) {
		if _, err := cron.ParseStandard(spec); err != nil {
			bad("%s: schedule %q: %v", what, spec, err)
		}
	}
	if j := c.Jobs.PruneImages; j != nil {
		schedule("jobs.prune_images", j.Schedule)
		if j.KeepReleases < 1 {
			bad("jobs.prune_images.keep_releases must be at least 1")
		}
	}
	if j := c.Jobs.Watch; j != nil {
		schedule("jobs.watch", j.Schedule)
	}
	for i, d := range c.Jobs.PgDump {
		where := fmt.Sprintf("jobs.pg_dump[%d]", i)
		if p, ok := c.Projects[d.Project]; !ok {
			bad("%s.project: no project %q", where, d.Project)
		} else if p.Backend == BackendSwarm {
			// The dump runs pg_dump in the service's container on this
			// host; a Swarm task may run on any node.
			bad("%s.project: %s is deployed to a swarm (backend: swarm): pg_dump jobs run in a container on this host and are for backend: engine only", where, d.Project)
		}
		if d.Service == "" {
			bad("%s.service is required", where)
		}
		if d.Schedule != "" {
			schedule(where, d.Schedule)
		} else if !d.BeforeDeploy {
			bad("%s: give a schedule, before_deploy: true, or both", where)
		}
		if d.Keep < 1 {
			bad("%s.keep must be at least 1", where)
		}
	}
	return errs
}

// CheckHTTPS accepts an https URL with a host, or an http one whose host
// is loopback (127.0.0.0/8, ::1, localhost): an issuer or key set fetched
// over plain HTTP from elsewhere could be replaced on the way.
func CheckHTTPS(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q: %w", raw, err)
	}
	host := u.Hostname()
	switch {
	case host == "":
		return fmt.Errorf("%q: want an https:// URL with a host", raw)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && loopbackHost(host):
		return nil
	case u.Scheme == "http":
		return fmt.Errorf("%q: want https:// (plain http:// only for a loopback host: 127.0.0.0/8, ::1, localhost)", raw)
	}
	return fmt.Errorf("%q: want an https:// URL", raw)
}

func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

func mustDir(errs *[]error, what, path string) {
	st, err := os.Stat(path)
	switch {
	case err != nil:
		*errs = append(*errs, fmt.Errorf("%s: %w", what, err))
	case !st.IsDir():
		*errs = append(*errs, fmt.Errorf("%s: %s is not a directory", what, path))
	}
}
