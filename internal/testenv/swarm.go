package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// SwarmManager makes sure the engine is a Swarm manager for the test: an
// engine in no swarm becomes a one-node swarm on 127.0.0.1, which it
// leaves when the test ends; one that already is a manager is used as it
// is. A worker, or an engine in a swarm state in between, cannot serve:
// the test is skipped, or fails in CI.
func SwarmManager(t testing.TB, cli *client.Client) {
	t.Helper()
	info, err := cli.Info(t.Context())
	if err != nil {
		t.Fatalf("docker info: %v", err)
	}
	switch st := info.Swarm.LocalNodeState; {
	case st == swarm.LocalNodeStateActive && info.Swarm.ControlAvailable:
		return
	case st != swarm.LocalNodeStateInactive:
		unavailable(t, "the engine is in a swarm as %q but not its manager", st)
	}
	if _, err := cli.SwarmInit(t.Context(), swarm.InitRequest{ListenAddr: "127.0.0.1:2377", AdvertiseAddr: "127.0.0.1"}); err != nil {
		t.Fatalf("swarm init: %v", err)
	}
	t.Logf("initialised a one-node swarm on 127.0.0.1; it is left when the test ends")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), time.Minute)
		defer cancel()
		if err := cli.SwarmLeave(ctx, true); err != nil {
			t.Errorf("swarm leave: %v", err)
		}
	})
}
