// Package config loads and validates agentd's one YAML config file.
// Unknown keys are errors and Validate reports every problem at once:
// a bad entry is never silently dropped.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"

	"gopkg.in/yaml.v3"
)

// Defaults, used where the file says nothing.
const (
	DefaultStateDir     = "/var/lib/berth"
	DefaultSocket       = "/run/berth/agentd.sock"
	DefaultSocketMode   = "0660"
	DefaultKeepReleases = 10
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

	// path is the file it was loaded from; relative paths resolve against
	// its directory.
	path string
}

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
}

// Log configures agentd's logs (to stderr, where journald takes them).
type Log struct {
	Format string `yaml:"format"` // text or json
	Level  string `yaml:"level"`  // debug, info, warn, error
}

// Project is one compose project the agent deploys.
type Project struct {
	ComposeFile  string   `yaml:"compose_file"`
	EnvFile      string   `yaml:"env_file"`
	Profiles     []string `yaml:"profiles"`
	KeepReleases int      `yaml:"keep_releases"`
	// DockerConfig overrides the registry credentials for this project.
	DockerConfig string `yaml:"docker_config"`
}

// ModeBits returns the socket mode as permission bits.
func (s Socket) ModeBits() os.FileMode {
	m, _ := strconv.ParseUint(s.Mode, 8, 32)
	return os.FileMode(m)
}

var projectName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

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
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	c.StateDir = abs(c.StateDir)
	c.Socket.Path = abs(c.Socket.Path)
	c.DockerConfig = abs(c.DockerConfig)
	for name, p := range c.Projects {
		if p.KeepReleases == 0 {
			p.KeepReleases = DefaultKeepReleases
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
	if len(c.Projects) == 0 {
		bad("projects: none configured")
	}
	for _, name := range c.ProjectNames() {
		p := c.Projects[name]
		if !projectName.MatchString(name) {
			bad("project %q: name must match %s", name, projectName)
		}
		if p.ComposeFile == "" {
			bad("project %s: compose_file is required", name)
		} else if err := readable(p.ComposeFile); err != nil {
			bad("project %s: compose_file: %v", name, err)
		}
		if p.EnvFile != "" {
			if err := readable(p.EnvFile); err != nil {
				bad("project %s: env_file: %v", name, err)
			}
		}
		if p.KeepReleases < 0 {
			bad("project %s: keep_releases %d: must be positive", name, p.KeepReleases)
		}
		if p.DockerConfig != "" {
			mustDir(&errs, "project "+name+": docker_config", p.DockerConfig)
		}
	}
	return errors.Join(errs...)
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
