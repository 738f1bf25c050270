package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
)

func TestUniqueName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	seen := map[string]bool{}
	for _, prefix := range []string{"web", "My App!", "", "-x"} {
		for range 20 {
			name := UniqueName(prefix)
			if !valid.MatchString(name) {
				t.Errorf("UniqueName(%q) = %q: not a valid project name", prefix, name)
			}
			if seen[name] {
				t.Errorf("UniqueName(%q) repeated %q", prefix, name)
			}
			seen[name] = true
		}
	}
	if got := UniqueName("web"); !strings.HasPrefix(got, "web-") || len(got) != len("web-")+6 {
		t.Errorf("UniqueName(web) = %q, want web-XXXXXX", got)
	}
}

func TestDockerfile(t *testing.T) {
	img := Image{
		Env:         map[string]string{"VERSION": "v1", "B": `a "q" $HOME \ x`},
		Labels:      map[string]string{"org.example.k": "v"},
		Healthcheck: true,
	}
	got, err := img.dockerfile(true)
	if err != nil {
		t.Fatal(err)
	}
	want := `FROM scratch
COPY testapp /testapp
ENV B="a \"q\" \$HOME \\ x"
ENV VERSION="v1"
LABEL org.example.k="v"
HEALTHCHECK --interval=1s --timeout=2s --retries=3 --start-period=5s CMD ["/testapp","check"]
EXPOSE 8080
ENTRYPOINT ["/testapp"]
`
	if got != want {
		t.Errorf("dockerfile:\n%s\nwant:\n%s", got, want)
	}
	if _, err := (Image{Env: map[string]string{"A": "x\ny"}}).dockerfile(true); err == nil {
		t.Error("newline in a value: want error")
	}
}

func TestBinary(t *testing.T) {
	bin := Binary(t, "./examples/testapp")
	if again := Binary(t, "./examples/testapp"); again != bin {
		t.Errorf("second Binary call = %s, want the cached %s", again, bin)
	}
	// testapp check against a port nobody listens on must exit 1.
	out, err := exec.CommandContext(t.Context(), bin, "check", "http://127.0.0.1:1/healthz").CombinedOutput()
	var xe *exec.ExitError
	if !errors.As(err, &xe) || xe.ExitCode() != 1 {
		t.Errorf("%s check: %v (%s), want exit code 1", bin, err, out)
	}
}

// TestHarness exercises the whole harness against the real engine and
// registry: build and push, run by digest with a health check, reach the app
// through a published port, and take the registry down and up again.
func TestHarness(t *testing.T) {
	cli := Docker(t)
	reg := StartRegistry(t)
	project := UniqueName("testenv")

	ref := reg.Ref(project + "/web:v1")
	start := time.Now()
	digest := BuildAndPush(t, cli, ref, Image{
		Env:         map[string]string{"VERSION": "v1"},
		Healthcheck: true,
		Labels:      map[string]string{"org.berth-deploy.test": project},
	})
	t.Logf("built and pushed %s@%s in %v", ref, digest, time.Since(start).Round(time.Millisecond))
	if !strings.HasPrefix(digest, "sha256:") || len(digest) != len("sha256:")+64 {
		t.Fatalf("digest = %q, want sha256:<64 hex>", digest)
	}

	// Drop the local tag (and with it the image and its build chain) so that
	// the container's image has to come from the registry.
	ctx := t.Context()
	if _, err := cli.ImageRemove(ctx, ref, image.RemoveOptions{PruneChildren: true}); err != nil {
		t.Fatalf("remove local tag %s: %v", ref, err)
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		t.Fatalf("parse %s: %v", ref, err)
	}
	byDigest := reference.TrimNamed(named).String() + "@" + digest
	if _, err := cli.ImageInspect(ctx, byDigest); err == nil {
		t.Fatalf("%s is still present locally after removing its tag", byDigest)
	}
	start = time.Now()
	if err := pull(ctx, cli, byDigest); err != nil {
		t.Fatal(err)
	}
	t.Logf("pulled %s in %v", byDigest, time.Since(start).Round(time.Millisecond))
	pulled, err := cli.ImageInspect(ctx, byDigest)
	if err != nil {
		t.Fatalf("inspect pulled image: %v", err)
	}
	t.Cleanup(func() { removeImage(t, cli, pulled.ID) })
	// Registered later, so it runs first and frees the image for removeImage.
	t.Cleanup(func() { RemoveProject(t, cli, project) })

	id := runContainer(t, cli, project, byDigest)
	start = time.Now()
	waitHealthy(t, cli, id, 60*time.Second)
	t.Logf("container healthy after %v", time.Since(start).Round(time.Millisecond))

	inspect, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		t.Fatalf("inspect container: %v", err)
	}
	bindings := inspect.NetworkSettings.Ports["8080/tcp"]
	if len(bindings) == 0 {
		t.Fatalf("port 8080/tcp not published: %+v", inspect.NetworkSettings.Ports)
	}
	url := fmt.Sprintf("http://127.0.0.1:%s/", bindings[0].HostPort)
	if body := httpGet(t, url); body != "v1\n" {
		t.Errorf("GET %s = %q, want %q", url, body, "v1\n")
	}

	// Registry down: a pull fails. Up again: it answers and kept its storage.
	reg.Stop(t)
	if err := probe(ctx, "http://"+reg.Addr+"/v2/", "", ""); err == nil {
		t.Error("registry answers after Stop")
	}
	if err := pull(ctx, cli, ref); err == nil {
		t.Errorf("pull %s with the registry stopped: want an error", ref)
	} else {
		t.Logf("pull with the registry stopped failed as expected: %v", err)
	}
	reg.Start(t)
	if err := probe(ctx, "http://"+reg.Addr+"/v2/", "", ""); err != nil {
		t.Errorf("registry after Start: %v", err)
	}
	if err := pull(ctx, cli, ref); err != nil {
		t.Errorf("pull after Start (storage kept): %v", err)
	}
}

// removeImage force-removes the image id with all its tags.
func removeImage(t *testing.T, cli *client.Client, id string) {
	ctx, cancel := cleanupContext(t, time.Minute)
	defer cancel()
	_, err := cli.ImageRemove(ctx, id, image.RemoveOptions{Force: true, PruneChildren: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		t.Errorf("remove image %s: %v", id, err)
	}
}

// runContainer creates and starts a container of project from ref, with port
// 8080 published on an ephemeral 127.0.0.1 port.
func runContainer(t *testing.T, cli *client.Client, project, ref string) string {
	t.Helper()
	ctx := t.Context()
	created, err := cli.ContainerCreate(ctx,
		&container.Config{
			Image:        ref,
			ExposedPorts: nat.PortSet{"8080/tcp": {}},
			Labels:       map[string]string{projectLabel: project, "com.docker.compose.service": "web"},
		},
		&container.HostConfig{
			PortBindings: nat.PortMap{"8080/tcp": {{HostIP: "127.0.0.1", HostPort: ""}}},
		},
		nil, nil, project+"-web-1")
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start container: %v", err)
	}
	return created.ID
}

// waitHealthy inspects the container on a ticker until its health is
// "healthy"; it fails on "unhealthy", on exit, or at the deadline.
func waitHealthy(t *testing.T, cli *client.Client, id string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	status := "unknown"
	for {
		inspect, err := cli.ContainerInspect(ctx, id)
		if err != nil {
			t.Fatalf("wait healthy: inspect: %v", err)
		}
		if !inspect.State.Running {
			t.Fatalf("wait healthy: container is %s (exit code %d)", inspect.State.Status, inspect.State.ExitCode)
		}
		if inspect.State.Health != nil {
			status = inspect.State.Health.Status
		}
		switch status {
		case container.Healthy:
			return
		case container.Unhealthy:
			t.Fatalf("wait healthy: container unhealthy: %+v", inspect.State.Health.Log)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("wait healthy: %v (health %s)", ctx.Err(), status)
		case <-ticker.C:
		}
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatalf("build request: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("get %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("get %s: status %s: %s", url, resp.Status, b)
	}
	return string(b)
}
