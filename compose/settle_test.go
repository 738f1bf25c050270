package compose

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

// TestSettle: a container that is listed but cannot be inspected yet (a
// create still under way in the engine) and one that appears late keep
// the project unsettled until they are done and nothing has changed for
// the quiet period; a project that never settles is given up on at the
// limit, and a cancelled context ends the wait.
func TestSettle(t *testing.T) {
	eng := newFakeEngine()
	labels := map[string]string{LabelProject: "shop", LabelService: "web"}
	if _, err := eng.ContainerCreate(t.Context(), &container.Config{Labels: labels}, nil, nil, nil, "shop-web-1"); err != nil {
		t.Fatal(err)
	}
	const quiet = 300 * time.Millisecond

	start := time.Now()
	if ok, err := Settle(t.Context(), eng, "shop", quiet, 10*time.Second); !ok || err != nil {
		t.Fatalf("a quiet project: settled %v, %v", ok, err)
	}
	if took := time.Since(start); took < quiet || took > 5*time.Second {
		t.Errorf("a quiet project settled after %v, want about %v", took, quiet)
	}

	// A create under way: listed, not found by ID for 500ms; and another
	// container that appears 700ms in.
	ghost, _ := eng.ContainerCreate(t.Context(), &container.Config{Labels: labels}, nil, nil, nil, "shop-web-2")
	eng.SetUnfound(ghost.ID, true)
	time.AfterFunc(500*time.Millisecond, func() { eng.SetUnfound(ghost.ID, false) })
	time.AfterFunc(700*time.Millisecond, func() {
		eng.ContainerCreate(context.Background(), &container.Config{Labels: labels}, nil, nil, nil, "shop-web-3")
	})
	start = time.Now()
	if ok, err := Settle(t.Context(), eng, "shop", quiet, 10*time.Second); !ok || err != nil {
		t.Fatalf("settled %v, %v", ok, err)
	}
	if took := time.Since(start); took < 700*time.Millisecond+quiet {
		t.Errorf("settled after %v, before the late container had been quiet for %v", took, quiet)
	}
	if _, ok := eng.ids()["shop-web-3"]; !ok {
		t.Error("the late container was not created: the test shows nothing")
	}

	// Never settles: given up at the limit.
	eng.SetUnfound(ghost.ID, true)
	start = time.Now()
	if ok, err := Settle(t.Context(), eng, "shop", quiet, time.Second); ok || err != nil {
		t.Errorf("never settling: settled %v, %v; want false, nil", ok, err)
	}
	if took := time.Since(start); took < time.Second || took > 5*time.Second {
		t.Errorf("gave up after %v, want the limit (1s)", took)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if ok, err := Settle(ctx, eng, "shop", quiet, 10*time.Second); ok || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: settled %v, %v", ok, err)
	}
}
