package life

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/healthcheck"
	"github.com/berth-deploy/berth/internal/fakeengine"
	"github.com/docker/docker/api/types/container"
)

// passing gates every container at once and watches nothing.
type passing struct{}

func (passing) Gate(context.Context, string, healthcheck.Spec) error   { return nil }
func (passing) Monitor(context.Context, []string, time.Duration) error { return nil }

func desired(t *testing.T) *compose.Desired {
	t.Helper()
	file := filepath.Join(t.TempDir(), "compose.yaml")
	if err := os.WriteFile(file, []byte("services:\n  web:\n    image: registry.test/web@sha256:"+sha+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := compose.Load(t.Context(), compose.LoadOptions{Name: "shop", ComposeFile: file})
	if err != nil {
		t.Fatal(err)
	}
	ref := "registry.test/web@sha256:" + sha
	d, err := compose.NewDesired(p, map[string]compose.Pin{"web": {Ref: ref, Pinned: ref, Digest: "sha256:" + sha}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

const sha = "1111111111111111111111111111111111111111111111111111111111111111"

// TestRollBackAfterCrashRestoresCPUWeight: agentd died after it created a
// container at the boot CPU weight and before its gate; recovery's
// rollback finds the container matching, keeps it, gates it, and gives it
// its weight back.
func TestRollBackAfterCrashRestoresCPUWeight(t *testing.T) {
	eng := fakeengine.New()
	d := desired(t)
	lf := &Life{Engine: eng, Health: passing{}, Project: "shop", Release: "1", BootCPUShares: 2}
	plan, err := lf.Plan(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if err := lf.RollOut(t.Context(), plan, lf.Graph(plan)); err != nil {
		t.Fatal(err)
	}
	id := eng.IDs()["shop-web-1"]
	// As the crash left it: created shielded, never gated.
	eng.Update(id, func(in *container.InspectResponse) { in.HostConfig.CPUShares = 2 })

	if err := lf.RollBack(t.Context(), d, false); err != nil {
		t.Fatal(err)
	}
	if c, _ := eng.Container(id); c.HostConfig.CPUShares != 2 {
		t.Fatalf("without the recheck, the weight changed: %d", c.HostConfig.CPUShares)
	}
	if err := lf.RollBack(t.Context(), d, true); err != nil {
		t.Fatal(err)
	}
	if c, _ := eng.Container(id); c.HostConfig.CPUShares != 1024 {
		t.Errorf("after recovery's recheck, shop-web-1 has CPU weight %d, want 1024", c.HostConfig.CPUShares)
	}
	if eng.IDs()["shop-web-1"] != id {
		t.Error("the container was replaced, not kept")
	}
}
