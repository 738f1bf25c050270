// Package testenv is the shared harness of Berth's integration tests: it
// reaches the local Docker engine, runs a throw-away image registry, builds and
// pushes test images around examples/testapp, builds the module's binaries
// once per test process, and removes what a test project left behind.
//
// Everything here talks to real services. Where one is missing the helpers
// skip the test, except when CI or BERTH_REQUIRE_DOCKER is set: CI must never
// silently skip, so there they fail instead.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
)

// projectLabel is the label Docker Compose (and Berth) put on every object of
// a project.
const projectLabel = "com.docker.compose.project"

// Docker returns a client for the local engine, closed when the test ends. If
// the engine is unreachable the test is skipped, or fails when CI is set.
func Docker(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		unavailable(t, "docker: create client: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		cli.Close()
		unavailable(t, "docker: engine unreachable at %s: %v", cli.DaemonHost(), err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// unavailable skips the test because a service it needs is missing, or fails
// it when running in CI.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf(format+" (CI or BERTH_REQUIRE_DOCKER is set: not skipping)", args...)
	}
	t.Skipf(format+" (skipping; set BERTH_REQUIRE_DOCKER=1 to make this a failure)", args...)
}

// Required reports whether real services are required: in CI (CI set) and
// under scripts/test.sh (BERTH_REQUIRE_DOCKER set) a missing one fails.
func Required() bool {
	return os.Getenv("CI") != "" || os.Getenv("BERTH_REQUIRE_DOCKER") != ""
}

// cleanupContext returns a context for work done in t.Cleanup, where
// t.Context() is already cancelled.
func cleanupContext(t testing.TB, timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(t.Context()), timeout)
}

// RemoveProject force-removes every container, network and volume labelled
// com.docker.compose.project=name. It is meant for t.Cleanup, so that a test
// can run again on the same engine; failures are reported with t.Errorf.
func RemoveProject(t testing.TB, cli *client.Client, name string) {
	t.Helper()
	ctx, cancel := cleanupContext(t, 2*time.Minute)
	defer cancel()
	byProject := filters.NewArgs(filters.Arg("label", projectLabel+"="+name))

	containers, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: byProject})
	if err != nil {
		t.Errorf("remove project %s: list containers: %v", name, err)
	}
	for _, c := range containers {
		err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !gone(err) {
			t.Errorf("remove project %s: remove container %s: %v", name, c.ID[:12], err)
		}
	}

	networks, err := cli.NetworkList(ctx, network.ListOptions{Filters: byProject})
	if err != nil {
		t.Errorf("remove project %s: list networks: %v", name, err)
	}
	for _, n := range networks {
		if err := cli.NetworkRemove(ctx, n.ID); err != nil && !gone(err) {
			t.Errorf("remove project %s: remove network %s: %v", name, n.Name, err)
		}
	}

	volumes, err := cli.VolumeList(ctx, volume.ListOptions{Filters: byProject})
	if err != nil {
		t.Errorf("remove project %s: list volumes: %v", name, err)
	}
	for _, v := range volumes.Volumes {
		if err := cli.VolumeRemove(ctx, v.Name, true); err != nil && !gone(err) {
			t.Errorf("remove project %s: remove volume %s: %v", name, v.Name, err)
		}
	}
}

// gone reports whether err says the object is already gone or going.
func gone(err error) bool {
	return cerrdefs.IsNotFound(err) ||
		(cerrdefs.IsConflict(err) && strings.Contains(err.Error(), "already in progress"))
}

// UniqueName returns prefix + "-" + 6 random hex characters, lowercased and
// with characters outside [a-z0-9_-] replaced by '-', so that it is a valid
// Compose project (and container) name.
func UniqueName(prefix string) string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '-':
			return r
		default:
			return '-'
		}
	}, strings.ToLower(prefix))
	if clean == "" || clean[0] == '_' || clean[0] == '-' {
		clean = "t" + clean
	}
	return clean + "-" + hex.EncodeToString(b[:])
}
