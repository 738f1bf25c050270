package packaging

import (
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/config"
)

// The default config must be valid as it is: the package installs it, and
// `agentd --config /etc/berth/agentd.yaml --check` has to pass right away.
func TestDefaultConfigValidates(t *testing.T) {
	cfg, err := config.Load("agentd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ key, got, want string }{
		{"state_dir", cfg.StateDir, config.DefaultStateDir},
		{"socket.path", cfg.Socket.Path, config.DefaultSocket},
		{"socket.mode", cfg.Socket.Mode, config.DefaultSocketMode},
		{"socket.group", cfg.Socket.Group, "berth"},
		{"log.format", cfg.Log.Format, "text"},
		{"log.level", cfg.Log.Level, "info"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.key, c.got, c.want)
		}
	}
	if len(cfg.Projects) != 0 || len(cfg.Identities) != 0 || cfg.SSH != nil || cfg.HTTP != nil ||
		cfg.Metrics != nil || len(cfg.Notifications) != 0 || !reflect.ValueOf(cfg.Jobs).IsZero() {
		t.Errorf("the default config enables something; every project, identity and front door must stay commented out: %+v", cfg)
	}
	if _, err := user.LookupGroup("berth"); err != nil {
		// The package and install.sh create the group before anything
		// reads the file; packaging_test.go runs --check with it.
		t.Logf("no group berth on this host: validating without socket.group")
		cfg.Socket.Group = ""
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the default config does not validate:\n%v", err)
	}
}

// exampleLine is a commented-out line of YAML in agentd.yaml: "# key: ..." or
// "# - ...", indented after the "# " as it would be uncommented.
var exampleLine = regexp.MustCompile(`^(\s*)# ( *)([a-z_]+:(\s|$)|- )`)

// uncomment turns the commented-out examples of the default config into
// YAML, leaving prose comments as they are.
func uncomment(text string) string {
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if m := exampleLine.FindStringSubmatchIndex(l); m != nil {
			// Keep the indentation before "#" and after "# ".
			lines[i] = l[m[2]:m[3]] + l[m[4]:]
		}
	}
	return strings.Join(lines, "\n")
}

// Every commented example in the default config, uncommented, must parse as
// agentd's config (unknown keys are errors), so that an operator who
// uncomments a block gets keys agentd knows, at the right place.
func TestDefaultConfigExamplesParse(t *testing.T) {
	data, err := os.ReadFile("agentd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agentd.yaml")
	if err := os.WriteFile(path, []byte(uncomment(string(data))), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("the default config with every example uncommented does not parse: %v", err)
	}
	if len(cfg.Projects) == 0 || len(cfg.Identities) == 0 || cfg.SSH == nil || cfg.HTTP == nil ||
		cfg.HTTP.OIDC == nil || cfg.Metrics == nil || len(cfg.Notifications) == 0 ||
		cfg.Jobs.PruneImages == nil || cfg.Jobs.Watch == nil || len(cfg.Jobs.PgDump) == 0 {
		t.Errorf("an example section was lost when uncommented (check its indentation): %+v", cfg)
	}
	if cfg.DockerConfig == "" || len(cfg.Socket.AllowUsers) == 0 {
		t.Errorf("docker_config or socket.allow_users example missing: %+v", cfg)
	}
}

// Every key agentd knows appears in the default config, at least commented
// out, so that the file stays a complete reference as config.go grows.
func TestDefaultConfigMentionsEveryKey(t *testing.T) {
	data, err := os.ReadFile("agentd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, key := range yamlKeys(reflect.TypeFor[config.Config](), "") {
		leaf := key[strings.LastIndex(key, ".")+1:]
		re := regexp.MustCompile(`(?m)^[ \t]*(#[ \t]*)*(- )?` + regexp.QuoteMeta(leaf) + `:`)
		if !re.MatchString(text) {
			t.Errorf("packaging/agentd.yaml does not mention %s (add it, commented out, with its meaning)", key)
		}
	}
}

// yamlKeys lists the dotted yaml key paths of a config type; map keys (the
// project names) are "*".
func yamlKeys(typ reflect.Type, prefix string) []string {
	var keys []string
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		typ = typ.Elem()
	}
	if typ.Kind() == reflect.Map {
		return yamlKeys(typ.Elem(), prefix+"*.")
	}
	if typ.Kind() != reflect.Struct || typ == reflect.TypeFor[time.Duration]() {
		return nil
	}
	for f := range typ.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		keys = append(keys, prefix+name)
		keys = append(keys, yamlKeys(f.Type, prefix+name+".")...)
	}
	return keys
}
