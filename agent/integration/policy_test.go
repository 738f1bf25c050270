package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/network"
)

// policyStack reads a request's variables in a harmless field
// (environment) and in host-level ones; $PROJECT and $DIR are replaced by
// the test.
const policyStack = `
services:
  web:
    image: $REGISTRY/web:v1
    environment:
      GREETING: ${GREETING:-none}
    uts: ${UTS:-}
    user: ${RUNAS:-}
    privileged: ${PRIV:-false}
    volumes: ["${DATA:-data}:/data", "shared:/shared"]
    networks: [front]
  side:
    image: $REGISTRY/web:v1
    network_mode: ${NET:-bridge}
    volumes:
      - type: bind
        source: ${SOCK:-$DIR/side}
        target: /run/side
volumes:
  data:
  shared:
    name: ${VOLNAME:-$PROJECT_shared}
networks:
  front:
    name: ${NETNAME:-$PROJECT_front}
`

// forced runs line as agentctl ssh-command (OpenSSH's forced-command mode,
// the way a CI job's command and stdin reach agentd) as identity ci-policy,
// and returns the output and exit code.
func (h *harness) forced(stdin, line string) (string, int) {
	h.t.Helper()
	cmd := exec.Command(testenv.Binary(h.t, "./cmd/agentctl"), "--socket", h.socket, "ssh-command", "--identity", "ci-policy")
	cmd.Env = append(os.Environ(), "SSH_ORIGINAL_COMMAND="+line)
	cmd.Stdin = strings.NewReader(stdin)
	return testenv.Run(h.t, cmd)
}

// TestRequestPolicy holds a request's variables to the project's
// request_variables, and what they change to images, environment values and
// labels: every other change is refused with exit 2 before any image is
// resolved or pulled, naming the variable and the field, never the value,
// and nothing changes. One agentd, one project, many requests.
func TestRequestPolicy(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, "services: {}\n", options{
		project: "    request_variables: [GREETING, UTS, RUNAS, PRIV, DATA, NET, SOCK, VOLNAME, NETNAME]\n",
		extra:   fmt.Sprintf("identities:\n  - name: ci-policy\n    local_users: [%s]\n    projects: [$PROJECT]\n    verbs: [deploy]\n", me.Username),
	})
	if err := os.Mkdir(filepath.Join(h.dir, "side"), 0o755); err != nil {
		t.Fatal(err)
	}
	h.writeCompose(strings.NewReplacer("$PROJECT", h.project, "$DIR", h.dir).Replace(policyStack))
	h.image("web:v1", testenv.Image{})
	h.start()
	h.deploy(0)
	before := h.ids()
	foreignVolume, foreignNetwork := h.project+"-foreign_data", h.project+"-foreign_net"
	t.Cleanup(func() {
		h.docker.VolumeRemove(t.Context(), foreignVolume, true)
		h.docker.NetworkRemove(t.Context(), foreignNetwork)
	})

	// Every refused request also asks for an image on a registry that
	// does not answer: a resolve or a pull would fail naming it.
	const unpullable = "127.0.0.1:1/never/pulled:v1"
	for _, tc := range []struct {
		name, stdin string
		want        string // in the answer
	}{
		{"a variable not in request_variables", "FOO=bar\n",
			"the request sets FOO, and project $PROJECT lets a request set only GREETING, UTS, RUNAS, PRIV, DATA, NET, SOCK, VOLNAME, NETNAME: an operator lists the variables a request may set under projects.$PROJECT.request_variables"},
		{"privileged", "PRIV=true\n", "service web: privileged: reads the request's variables where Berth cannot tell what they change"},
		{"a bind of /", "DATA=/\n", "service web: volumes[0] is set by the request's variable DATA"},
		{"a bind of /etc", "DATA=/etc\n", "service web: volumes[0] is set by the request's variable DATA"},
		{"the docker socket", "SOCK=/var/run/docker.sock\n", "service side: volumes[0] is set by the request's variable SOCK"},
		{"network_mode host", "NET=host\n", "service side: network_mode is set by the request's variable NET"},
		// container: is refused by the loader (not supported) before the policy.
		{"network_mode container:", "NET=container:" + h.project + "-web-1\n", `network_mode "[redacted]" is not supported`},
		{"uts host", "UTS=host\n", "service web: uts is set by the request's variable UTS"},
		{"a foreign volume", "VOLNAME=" + foreignVolume + "\n", "volumes.shared.name is set by the request's variable VOLNAME"},
		{"a foreign network", "NETNAME=" + foreignNetwork + "\n", "networks.front.name is set by the request's variable NETNAME"},
		{"user 0", "RUNAS=0\n", "service web: user is set by the request's variable RUNAS"},
		{"several, with a harmless one", "GREETING=hi\nUTS=host\nRUNAS=0\n", "service web: user is set by the request's variable RUNAS\n  service web: uts is set by the request's variable UTS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := h.forced(tc.stdin, "deploy "+h.project+" --env-file - --image web="+unpullable)
			want := strings.ReplaceAll(tc.want, "$PROJECT", h.project)
			if code != api.ExitBadRequest || !strings.Contains(out, want) {
				t.Errorf("exit %d, want %d saying %q:\n%s", code, api.ExitBadRequest, want, out)
			}
			if strings.Contains(out, "127.0.0.1:1") || strings.Contains(out, "resolving") {
				t.Errorf("an image was resolved or pulled before the refusal:\n%s", out)
			}
			// The values are not shown (the 1-character "0" aside).
			for _, line := range strings.Split(strings.TrimSpace(tc.stdin), "\n") {
				if _, v, _ := strings.Cut(line, "="); len(v) > 2 && strings.Contains(out, v) {
					t.Errorf("the answer shows the value %q:\n%s", v, out)
				}
			}
			h.sameIDs(before, tc.name)
		})
	}
	if _, err := h.docker.VolumeInspect(t.Context(), foreignVolume); err == nil {
		t.Errorf("volume %s was created by a refused request", foreignVolume)
	}
	if _, err := h.docker.NetworkInspect(t.Context(), foreignNetwork, network.InspectOptions{}); err == nil {
		t.Errorf("network %s was created by a refused request", foreignNetwork)
	}
	if n := len(h.history()); n != 1 {
		t.Errorf("refused requests were recorded: %d releases", n)
	}
	if bytes.Contains(h.agentLog.Bytes(), []byte("/var/run/docker.sock")) {
		t.Error("agentd logged a value a request sent")
	}

	// A listed variable in a harmless field goes through, and reaches the
	// container.
	out, code := h.forced("GREETING=hello-policy\n", "deploy "+h.project+" --env-file -")
	if code != 0 {
		t.Fatalf("deploy with GREETING: exit %d\n%s", code, out)
	}
	c, err := h.docker.ContainerInspect(t.Context(), h.project+"-web-1")
	if err != nil || !contains(c.Config.Env, "GREETING=hello-policy") {
		t.Errorf("GREETING did not reach the container: %v %v", c.Config.Env, err)
	}
}
