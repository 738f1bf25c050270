package compose

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const requestStack = `services:
  app:
    image: registry.test/app:${TAG:-v1}
    environment:
      SECRET: ${SECRET:?set SECRET}
    network_mode: ${NET:-bridge}
    pid: ${PID:-}
    cap_add: ["${CAP:-CHOWN}"]
    volumes: ["${DATA:-/srv/app/data}:/data"]
  admin:
    image: registry.test/app:v1
    privileged: ${PRIV:-false}
`

func TestCheckRequest(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(file, []byte(requestStack), 0o600); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(dir, "app.env")
	if err := os.WriteFile(envFile, []byte("SECRET=from-the-host\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		allowed []string
		want    string // "" for allowed
	}{
		{"no request variables", nil, nil, ""},
		{"secrets and tags", map[string]string{"SECRET": "s3cret", "TAG": "v2"}, nil, ""},
		{"host network", map[string]string{"NET": "host"}, nil, `service app: network_mode "host" comes from the request's variables (NET)`},
		{"host pid", map[string]string{"PID": "host"}, nil, `service app: pid "host"`},
		{"a capability", map[string]string{"CAP": "SYS_ADMIN"}, nil, "service app: cap_add [SYS_ADMIN]"},
		{"a bind mount elsewhere", map[string]string{"DATA": "/etc"}, nil, "service app: the bind mount of /etc (outside the project's allowed_bind_paths)"},
		{"a bind mount in an allowed path", map[string]string{"DATA": "/srv/app/other"}, []string{"/srv/app"}, ""},
		{"a bind mount beside an allowed path", map[string]string{"DATA": "/srv/app2"}, []string{"/srv/app"}, "the bind mount of /srv/app2"},
		{"privileged (the placeholder cannot load)", map[string]string{"PRIV": "true"}, nil, "Berth cannot tell which settings they change"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := LoadOptions{Name: "p", ComposeFile: file, EnvFiles: []string{envFile}, Env: tc.env}
			loaded, err := Load(t.Context(), o)
			if err != nil {
				t.Fatal(err)
			}
			err = CheckRequest(t.Context(), o, loaded, tc.allowed)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
}
