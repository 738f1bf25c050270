package compose

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
)

// TestUndoFirstReleaseOverComposeStack: a stack that `docker compose`
// started (containers without a release label), a first Berth release that
// replaces db (stop-first) and fails at web's gate. Undo removes what the
// release created and brings every original container back, by ID, under
// its name, running, and reloads the proxy.
func TestUndoFirstReleaseOverComposeStack(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	if err := (&Executor{Engine: eng}).Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	before := eng.ids()

	p2 := load(t, map[string]string{"web": "registry.test/web:v2", "db": "registry.test/db:v2"})
	d2 := desired(t, p2)
	gateErr := errors.New("fake: never healthy")
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng, fail: map[string]error{"shop-web-1": gateErr}}, Release: "1", KeepRetired: true}
	if err := exec.Apply(t.Context(), plan(t, eng, d2)); !errors.Is(err, gateErr) {
		t.Fatalf("apply = %v, want the gate's failure", err)
	}
	mid := eng.ids()
	if mid["shop-db-1"] == before["shop-db-1"] {
		t.Fatal("the release did not replace db before failing: the test sets up nothing to undo")
	}

	eng.takeCalls()
	if err := (&Executor{Engine: eng}).Undo(t.Context(), d2, "1"); err != nil {
		t.Fatal(err)
	}
	after := eng.ids()
	if !maps.Equal(after, before) {
		t.Errorf("containers after the undo:\n%v\nwant those before the release:\n%v", after, before)
	}
	for name, id := range after {
		if c, _ := eng.Container(id); !c.State.Running || c.Config.Labels[LabelRelease] != "" {
			t.Errorf("%s: running %v, release label %q", name, c.State.Running, c.Config.Labels[LabelRelease])
		}
	}
	calls := eng.takeCalls()
	if i, j := slices.Index(calls, "start shop-db-1"), slices.Index(calls, "start shop-web-1"); i < 0 || (j >= 0 && j < i) {
		t.Errorf("db must start again before web:\n%s", strings.Join(calls, "\n"))
	}
	if !slices.Contains(calls, "exec shop-proxy-1 nginx -s reload") {
		t.Errorf("the proxy was not reloaded:\n%s", strings.Join(calls, "\n"))
	}
	if len(eng.Networks()) == 0 {
		t.Error("the project's network was removed though its containers remain")
	}
}

// TestUndoFirstReleaseOverNothing: with nothing before it, undoing the
// release leaves nothing, networks included.
func TestUndoFirstReleaseOverNothing(t *testing.T) {
	eng := newFakeEngine()
	d := desired(t, load(t, nil))
	if err := (&Executor{Engine: eng, Release: "1"}).Apply(t.Context(), plan(t, eng, d)); err != nil {
		t.Fatal(err)
	}
	if err := (&Executor{Engine: eng}).Undo(t.Context(), d, "1"); err != nil {
		t.Fatal(err)
	}
	if ids := eng.ids(); len(ids) != 0 || len(eng.Networks()) != 0 {
		t.Errorf("left after the undo: containers %v, networks %v", ids, eng.Networks())
	}
}

// TestRemoveHooks: the one-off containers of Berth's hooks that agentd
// left (one running, one never started) are stopped and removed; the
// service's containers and a `docker compose run` one-off stay.
func TestRemoveHooks(t *testing.T) {
	eng := newFakeEngine()
	d := desired(t, load(t, nil))
	if err := (&Executor{Engine: eng, Release: "1"}).Apply(t.Context(), plan(t, eng, d)); err != nil {
		t.Fatal(err)
	}
	services := eng.ids()
	oneoff := func(name, release string, start bool) {
		labels := map[string]string{LabelProject: "shop", LabelService: "web", LabelOneoff: "True"}
		if release != "" {
			labels[LabelRelease] = release
		}
		c, err := eng.ContainerCreate(t.Context(), &container.Config{Labels: labels}, nil, nil, nil, name)
		if err != nil {
			t.Fatal(err)
		}
		if start {
			eng.ContainerStart(t.Context(), c.ID, container.StartOptions{})
		}
	}
	oneoff("shop-web-predeploy-2-1", "2", true)
	oneoff("shop-web-postdeploy-1-1", "1", false)
	oneoff("shop-web-run-1a2b", "", true)
	eng.takeCalls()

	if err := (&Executor{Engine: eng}).RemoveHooks(t.Context(), "shop"); err != nil {
		t.Fatal(err)
	}
	want := maps.Clone(services)
	for name, id := range eng.ids() {
		if name == "shop-web-run-1a2b" {
			want[name] = id
		}
	}
	if got := eng.ids(); !maps.Equal(got, want) {
		t.Errorf("left: %v\nwant the services' containers and the compose run one: %v", got, want)
	}
	calls := eng.takeCalls()
	if i, j := slices.Index(calls, "stop shop-web-predeploy-2-1"), slices.Index(calls, "remove shop-web-predeploy-2-1"); i < 0 || j < i {
		t.Errorf("the running hook must be stopped, then removed:\n%s", strings.Join(calls, "\n"))
	}
	if !slices.Contains(calls, "remove shop-web-postdeploy-1-1") {
		t.Errorf("the hook that never started was not removed:\n%s", strings.Join(calls, "\n"))
	}
}
