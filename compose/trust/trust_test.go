package trust

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/compose"
	"github.com/compose-spec/compose-go/v2/types"
)

// stack interpolates a request's variables into harmless fields (image,
// environment values, labels) and into many that are not.
const stack = `x-app: &app
  image: registry.test/app:v1
  environment:
    FROM_ANCHOR: ${NAME:-world}
  user: ${RUNAS:-app}
services:
  anchored:
    <<: *app
  app:
    image: registry.test/app:${TAG:-v1}
    environment:
      SECRET: ${SECRET:?set SECRET}
      GREETING: hello ${NAME:-world}
    labels:
      version: ${TAG:-v1}
      dev.berth.release: ${REL:-}
    uts: ${UTS:-}
    pid: ${PID:-}
    ipc: ${IPCX:+host}
    user: ${RUNAS:-app}
    cap_add: ["${CAP:-CHOWN}"]
    command: ["serve", "--flag=${FLAG:-x}"]
    volumes: ["${DATA:-/srv/app/data}:/data", "shared:/shared"]
    networks: [front]
  admin:
    image: registry.test/app:v1
    privileged: ${PRIV:-false}
    volumes:
      - type: bind
        source: ${SOCK:-/srv/app/sock}
        target: /run/app.sock
  hostnet:
    image: registry.test/app:v1
    network_mode: ${NET:-bridge}
  files:
    image: registry.test/app:v1
    volumes: ["${HOSTDIR}/${SUB:-x}:/sub"]
    env_file: ["${ENVF:-app.env}"]
    environment: ["${KEY:-FIXED}=1"]
volumes:
  shared:
    name: ${VOLNAME:-}
networks:
  front:
    name: ${NETNAME:-}
x-berth:
  a: ${XT:-}
`

// load writes stack and its env file into a new directory and loads it
// with env as a request's variables.
func load(t testing.TB, dir string, env map[string]string) compose.LoadOptions {
	t.Helper()
	file := filepath.Join(dir, "compose.yaml")
	if _, err := os.Stat(file); err != nil {
		if err := os.WriteFile(file, []byte(stack), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "app.env"), []byte("SECRET=from-the-host\nHOSTDIR=/srv/host-secret-dir\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return compose.LoadOptions{Name: "p", ComposeFile: file, EnvFiles: []string{filepath.Join(dir, "app.env")}, Env: env}
}

func TestCheckRequest(t *testing.T) {
	dir := t.TempDir()
	// want lists the violations as Violation.String() prints them.
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"no request variables", nil, nil},
		{"harmless: secrets, tags, labels", map[string]string{"SECRET": "s3cret", "TAG": "v2", "NAME": "you"}, nil},
		{"uts host", map[string]string{"UTS": "host"}, []string{"service app: uts: set by the request (UTS)"}},
		{"another project's volume", map[string]string{"VOLNAME": "other_data"}, []string{"volumes.shared.name: set by the request (VOLNAME)"}},
		{"another project's network", map[string]string{"NETNAME": "other_default"}, []string{"networks.front.name: set by the request (NETNAME)"}},
		{"user 0, also through an anchor", map[string]string{"RUNAS": "0"}, []string{
			"service anchored: user: set by the request (RUNAS)", "service app: user: set by the request (RUNAS)"}},
		{"pid host", map[string]string{"PID": "host"}, []string{"service app: pid: set by the request (PID)"}},
		{"a capability", map[string]string{"CAP": "SYS_ADMIN"}, []string{"service app: cap_add[0]: set by the request (CAP)"}},
		{"privileged", map[string]string{"PRIV": "true"}, []string{"service admin: privileged: " + ReasonUnchecked + " (PRIV)"}},
		{"bind of /", map[string]string{"DATA": "/"}, []string{"service app: volumes[0]: set by the request (DATA)"}},
		{"bind of /etc", map[string]string{"DATA": "/etc"}, []string{"service app: volumes[0]: set by the request (DATA)"}},
		{"a bind below a host path from the env file", map[string]string{"SUB": "y"}, []string{"service files: volumes[0]: set by the request (SUB)"}},
		{"an env_file to read", map[string]string{"ENVF": filepath.Join(dir, "app.env")}, []string{"the compose file: " + ReasonUnchecked + " (ENVF)"}},
		{"an environment key", map[string]string{"KEY": "SECRET_KEY_NAME"}, []string{"service files: environment: set by the request (KEY)"}},
		{"the docker socket", map[string]string{"SOCK": "/var/run/docker.sock"}, []string{"service admin: volumes[0]: set by the request (SOCK)"}},
		{"network_mode host", map[string]string{"NET": "host"}, []string{"service hostnet: network_mode: set by the request (NET)"}},
		// Deny by default: settings no list names.
		{"a command argument", map[string]string{"FLAG": "evil"}, []string{"service app: command[1]: set by the request (FLAG)"}},
		{"a project-level extension", map[string]string{"XT": "y"}, []string{"x-berth.a: set by the request (XT)"}},
		{"a label Berth reads", map[string]string{"REL": "7"}, []string{"service app: labels.dev.berth.release: set by the request (REL)"}},
		// The presence of a variable, whatever its value: ${IPCX:+host}.
		{"presence switches ipc to host", map[string]string{"IPCX": "anything"}, []string{"service app: ipc: set by the request (IPCX)"}},
		// The old placeholder is just a value.
		{"a value equal to the old placeholder", map[string]string{"UTS": "/berth-request-placeholder"}, []string{"service app: uts: set by the request (UTS)"}},
		{"several at once", map[string]string{"UTS": "host", "RUNAS": "0", "TAG": "v3"}, []string{
			"service anchored: user: set by the request (RUNAS)", "service app: user: set by the request (RUNAS)", "service app: uts: set by the request (UTS)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := load(t, dir, tc.env)
			loaded, err := compose.Load(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			vs, err := CheckRequest(t.Context(), o, loaded)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, v := range vs {
				got = append(got, v.String())
				shown := strings.Replace(v.String(), "service "+v.Service, "", 1)
				for name := range tc.env {
					shown = strings.ReplaceAll(shown, name, "")
				}
				for name, value := range tc.env {
					if len(value) >= 3 && strings.Contains(shown, value) {
						t.Errorf("%q shows the value of %s", v, name)
					}
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("violations:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestDjangoExample: the variables the example's ci/deploy.sh sends (and
// the web tag) pass; one that reaches a port does not (the marker is no
// port, so the file does not load with it, and compose-go's error does not
// name the field).
func TestDjangoExample(t *testing.T) {
	o := compose.LoadOptions{Name: "shop", ComposeFile: "../../examples/django/compose.yaml", EnvFiles: []string{"../../examples/django/example.env"}}
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"DJANGO_SECRET_KEY": "k", "POSTGRES_PASSWORD": "p", "RABBITMQ_PASSWORD": "r", "WEB_TAG": "v9"}, nil},
		{map[string]string{"DJANGO_SECRET_KEY": "k", "HTTP_PORT": "0.0.0.0:80"}, []string{"the compose file: " + ReasonUnchecked + " (HTTP_PORT)"}},
	} {
		o.Env = tc.env
		loaded, err := compose.Load(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		vs, err := CheckRequest(t.Context(), o, loaded)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, v := range vs {
			got = append(got, v.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%v: violations %q, want %q", slices.Sorted(maps.Keys(tc.env)), got, tc.want)
		}
	}
}

// TestCheckRequestRedacts: a refusal names the variable and the field,
// never the value, which may be a secret or a host path.
func TestCheckRequestRedacts(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"DATA": "/srv/secret-host-path", "PRIV": "true", "UTS": "host-s3cret", "SUB": "sub-s3cret"}
	o := load(t, dir, env)
	loaded, err := compose.Load(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := CheckRequest(t.Context(), o, loaded)
	if err != nil || len(vs) != 4 {
		t.Fatalf("violations %v, %v", vs, err)
	}
	for _, v := range vs {
		// The old refusal showed "/srv/host-secret-dir/y": a path from the
		// host's env file.
		for _, value := range append(slicesValues(env), "from-the-host", "/srv/app", "/srv/host-secret-dir") {
			if strings.Contains(v.String(), value) {
				t.Errorf("%q shows %q", v, value)
			}
		}
	}
}

func slicesValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestUndeclared(t *testing.T) {
	env := map[string]string{"WEB_TAG": "v2", "UTS": "host", "GIT_SHA": "abc", "A": ""}
	if got := Undeclared(env, []string{"WEB_TAG", "GIT_SHA"}); !slices.Equal(got, []string{"A", "UTS"}) {
		t.Errorf("Undeclared = %q", got)
	}
	if got := Undeclared(env, nil); len(got) != 4 {
		t.Errorf("nothing declared: Undeclared = %q", got)
	}
	if got := Undeclared(nil, nil); got != nil {
		t.Errorf("no variables: Undeclared = %q", got)
	}
}

// FuzzRequestPolicy sends arbitrary values for the variables of stack. It
// checks that nothing panics and that whenever CheckRequest lets a request
// through, the host-level settings (listed here by hand, independently of
// the policy's own comparison) are exactly those of the file loaded
// without the request's variables.
func FuzzRequestPolicy(f *testing.F) {
	vars := []string{"TAG", "SECRET", "NAME", "REL", "UTS", "PID", "IPCX", "RUNAS", "CAP", "FLAG", "DATA", "PRIV", "SOCK", "NET", "VOLNAME", "NETNAME", "XT", "SUB"}
	for i, v := range []string{"host", "0", "/", "/etc", "/var/run/docker.sock", "true", "", "container:x",
		"${UTS}", "$$", "a\nb", "/berth-request-placeholder", "SYS_ADMIN", "other_data", "v2", "root", "private", "/srv/app/data"} {
		f.Add(uint8(i), v, uint8(i*7), v+"x")
	}
	f.Add(uint8(6), "x", uint8(6), "x") // IPCX present: ${IPCX:+host}
	f.Add(uint8(4), "host", uint8(0), "v2")
	dir := f.TempDir()
	base := load(f, dir, nil)
	without, err := compose.Load(f.Context(), base)
	if err != nil {
		f.Fatal(err)
	}
	want := hostLevel(without)
	f.Fuzz(func(t *testing.T, i uint8, v string, j uint8, w string) {
		env := map[string]string{vars[int(i)%len(vars)]: v, vars[int(j)%len(vars)]: w}
		o := base
		o.Env = env
		loaded, err := compose.Load(t.Context(), o)
		if err != nil {
			return // refused by the loader: exit 2 as well
		}
		vs, err := CheckRequest(t.Context(), o, loaded)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if len(v.Variables) == 0 || v.Reason == "" {
				t.Errorf("violation without a variable or a reason: %+v", v)
			}
		}
		if len(vs) == 0 {
			if got := hostLevel(loaded); got != want {
				t.Errorf("accepted %q, which changes the host-level settings:\n got %s\nwant %s", env, got, want)
			}
		}
	})
}

// hostLevel prints the settings of stack that a request may not change.
func hostLevel(p *types.Project) string {
	var b strings.Builder
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		fmt.Fprintf(&b, "%s: privileged=%v uts=%q pid=%q ipc=%q user=%q network_mode=%q cap_add=%q command=%q labels.release=%q volumes=",
			name, s.Privileged, s.Uts, s.Pid, s.Ipc, s.User, s.NetworkMode, s.CapAdd, s.Command, s.Labels["dev.berth.release"])
		for _, v := range s.Volumes {
			fmt.Fprintf(&b, "%s:%s:%s,", v.Type, v.Source, v.Target)
		}
		b.WriteString("\n")
	}
	for _, k := range slices.Sorted(maps.Keys(p.Volumes)) {
		fmt.Fprintf(&b, "volume %s name=%q\n", k, p.Volumes[k].Name)
	}
	for _, k := range slices.Sorted(maps.Keys(p.Networks)) {
		fmt.Fprintf(&b, "network %s name=%q\n", k, p.Networks[k].Name)
	}
	fmt.Fprintf(&b, "x-berth=%v\n", p.Extensions["x-berth"])
	return b.String()
}
