package integration

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/image"
)

// TestProjectCredentials deploys from a registry that requires a password,
// with the credentials in the project's own docker_config, and checks that
// without them the deploy is refused with the registry's reason.
func TestProjectCredentials(t *testing.T) {
	docker := testenv.Docker(t)
	reg := testenv.StartAuthRegistry(t, "ci", "s3cret")
	ref := reg.Ref("private/web:v1")
	testenv.Build(t, docker, ref, testenv.Image{})
	digest := reg.Push(t, docker, ref)
	// Not on the engine any more: agentd must authenticate to get it.
	if _, err := docker.ImageRemove(t.Context(), ref, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
		t.Fatal(err)
	}

	creds := filepath.Join(t.TempDir(), "docker")
	os.MkdirAll(creds, 0o700)
	auth := base64.StdEncoding.EncodeToString([]byte("ci:s3cret"))
	if err := os.WriteFile(filepath.Join(creds, "config.json"), fmt.Appendf(nil, `{"auths": {%q: {"auth": %q}}}`, reg.Addr, auth), 0o600); err != nil {
		t.Fatal(err)
	}
	compose := "services:\n  web:\n    image: $REGISTRY/private/web:v1\n"

	// An empty docker config for the agent: no credentials at all.
	empty := t.TempDir()
	without := newHarness(t, compose, options{reg: reg, project: "    docker_config: " + empty + "\n"})
	without.start()
	out := without.deploy(api.ExitBadRequest)
	t.Logf("without credentials:\n%s", out)
	if !strings.Contains(out, "unauthorized") && !strings.Contains(out, "no basic auth credentials") {
		t.Errorf("deploy without credentials does not give the registry's reason:\n%s", out)
	}

	with := newHarness(t, compose, options{reg: reg, project: "    docker_config: " + creds + "\n"})
	with.start()
	with.deploy(api.ExitOK)
	if got := with.history()[0].Services["web"].Digest; got != digest {
		t.Errorf("recorded digest %s, want %s", got, digest)
	}
}
