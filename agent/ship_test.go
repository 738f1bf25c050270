package agent

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/store"
)

func newShipService(t *testing.T, pc config.Project) (*Service, *store.Store) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pc.MaxComposeFiles, pc.MaxComposeBytes = config.DefaultMaxComposeFiles, config.DefaultMaxComposeBytes
	cfg := &config.Config{StateDir: filepath.Join(dir, "state"), Projects: map[string]config.Project{"shop": pc}}
	svc, err := New(cfg, nil, st, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return svc, st
}

func shopRun(svc *Service) *releaseRun {
	r := svc.newReleaseRun("shop", "test", nil)
	r.pc = svc.cfg.Projects["shop"]
	return r
}

// TestComposeSourceDefault: a deploy without a compose file runs the
// host's; a ship-only project runs the files its live release shipped;
// with neither, it is refused with exit code 2's error.
func TestComposeSourceDefault(t *testing.T) {
	shipped := &api.ComposeBundle{Files: map[string]string{"compose.yaml": "services: {}\n", "conf/app.env": "A=1\n"}}

	svc, _ := newShipService(t, config.Project{ComposeFile: "/srv/shop/compose.yaml"})
	src, err := shopRun(svc).composeSource(api.DeployRequest{Project: "shop"}, false)
	if err != nil || src.file != "/srv/shop/compose.yaml" || src.shipped != nil {
		t.Errorf("host file: %+v, %v", src, err)
	}
	// A shipped file wins over the host's.
	src, err = shopRun(svc).composeSource(api.DeployRequest{Project: "shop", Compose: shipped}, false)
	if err != nil || src.shipped == nil || src.file != filepath.Join(svc.cfg.StateDir, "shipped", "shop", shipped.ID(), "compose.yaml") {
		t.Errorf("shipped with a host file: %+v, %v", src, err)
	}

	svc, st := newShipService(t, config.Project{AllowedImages: []string{"*"}})
	_, err = shopRun(svc).composeSource(api.DeployRequest{Project: "shop"}, false)
	if !errors.Is(err, ErrNoComposeFile) || !strings.Contains(err.Error(), "project shop has no compose_file on this host and its live release did not ship one") {
		t.Errorf("ship-only, nothing live: %v", err)
	}
	// A live release from the host's file (before the project went
	// ship-only) is no compose file either.
	rel, err := st.Begin(api.Release{Project: "shop", Outcome: api.OutcomeSucceeded})
	if err != nil {
		t.Fatal(err)
	}
	st.Save(rel, true)
	if _, err = shopRun(svc).composeSource(api.DeployRequest{Project: "shop"}, false); !errors.Is(err, ErrNoComposeFile) {
		t.Errorf("ship-only, live release without shipped files: %v", err)
	}
	rel, err = st.Begin(api.Release{Project: "shop", Outcome: api.OutcomeSucceeded, Shipped: &api.ComposeBundle{Files: shipped.Files, Main: "compose.yaml"}})
	if err != nil {
		t.Fatal(err)
	}
	st.Save(rel, true)
	src, err = shopRun(svc).composeSource(api.DeployRequest{Project: "shop"}, false)
	if err != nil || src.shipped == nil || src.shipped.ID() != shipped.ID() || filepath.Base(src.file) != "compose.yaml" {
		t.Fatalf("ship-only, live release shipped: %+v, %v", src, err)
	}
	if b, err := os.ReadFile(filepath.Join(src.dir, "conf", "app.env")); err != nil || string(b) != "A=1\n" {
		t.Errorf("conf/app.env: %q, %v", b, err)
	}
}

// TestWriteBundle: shipped files go to state_dir/shipped/PROJECT/ID, 0700,
// once; a changed copy is replaced; a dry run's go elsewhere and are
// removed; a deploy that made no release removes what it wrote; pruning
// keeps what recorded releases use.
func TestWriteBundle(t *testing.T) {
	svc, st := newShipService(t, config.Project{ComposeFile: "/srv/shop/compose.yaml"})
	b := &api.ComposeBundle{Files: map[string]string{"compose.yaml": "services: {}\n", "conf/nginx.conf": "events {}\n"}}
	dir, fresh, err := svc.writeBundle("shop", b, false)
	if err != nil || !fresh {
		t.Fatalf("first write: %v, fresh %v", err, fresh)
	}
	if want := filepath.Join(svc.cfg.StateDir, "shipped", "shop", b.ID()); dir != want {
		t.Errorf("dir = %s, want %s", dir, want)
	}
	for _, d := range []string{filepath.Join(svc.cfg.StateDir, "shipped"), filepath.Dir(dir), dir} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v, %v; want 0700", d, fi.Mode(), err)
		}
	}
	if _, fresh, err := svc.writeBundle("shop", b, false); err != nil || fresh {
		t.Errorf("the same files again: %v, fresh %v; want them left as they are", err, fresh)
	}
	// Someone edited the copy: it is written again.
	os.WriteFile(filepath.Join(dir, "conf", "nginx.conf"), []byte("edited"), 0o644)
	if _, fresh, err := svc.writeBundle("shop", b, false); err != nil || !fresh {
		t.Errorf("an edited copy: %v, fresh %v; want it replaced", err, fresh)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "conf", "nginx.conf")); string(got) != "events {}\n" {
		t.Errorf("nginx.conf = %q after the rewrite", got)
	}
	os.WriteFile(filepath.Join(dir, "extra"), []byte("x"), 0o644)
	if _, fresh, _ := svc.writeBundle("shop", b, false); !fresh {
		t.Error("a copy with an extra file was kept")
	}

	// A dry run.
	r := shopRun(svc)
	src, err := r.composeSource(api.DeployRequest{Project: "shop", Compose: b}, true)
	if err != nil || src.dir == dir || !strings.HasPrefix(filepath.Base(src.dir), ".dry-") {
		t.Fatalf("dry run: %+v, %v", src, err)
	}
	src.cleanup(false)
	if _, err := os.Stat(src.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dry run's files are still there: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("a dry run removed the deploy's files: %v", err)
	}

	// A deploy of new files that made no release (refused, or nothing to
	// change) removes them; one that made a release keeps them.
	other := &api.ComposeBundle{Files: map[string]string{"compose.yaml": "services: {}\n# 2\n"}}
	src, err = shopRun(svc).composeSource(api.DeployRequest{Project: "shop", Compose: other}, false)
	if err != nil {
		t.Fatal(err)
	}
	src.cleanup(false)
	if _, err := os.Stat(src.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("files of a deploy that made no release are kept: %v", err)
	}
	src, _ = shopRun(svc).composeSource(api.DeployRequest{Project: "shop", Compose: other}, false)
	src.cleanup(true)
	if _, err := os.Stat(src.dir); err != nil {
		t.Errorf("files of a release were removed: %v", err)
	}
	// Files that were there before a deploy that made no release stay.
	src, _ = shopRun(svc).composeSource(api.DeployRequest{Project: "shop", Compose: b}, false)
	src.cleanup(false)
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("files written before were removed: %v", err)
	}

	// Pruning: only b is recorded.
	if _, err := st.Begin(api.Release{Project: "shop", Shipped: b}); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(filepath.Dir(dir), ".tmp-123"), 0o700)
	if err := svc.pruneShipped("shop"); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 || entries[0].Name() != b.ID() {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("after pruning: %v, want only %s", names, b.ID())
	}
}

type countObserver struct{ n int }

func (o *countObserver) RunFinished(api.RunEvent) { o.n++ }

// TestDryRunTellsNoObserver: a dry run is neither a metric nor a
// notification, and still answers with its exit code.
func TestDryRunTellsNoObserver(t *testing.T) {
	svc, _ := newShipService(t, config.Project{ComposeFile: "/srv/shop/compose.yaml"})
	obs := &countObserver{}
	svc.AddObserver(obs)
	var last api.Event
	emit := func(e api.Event) { last = e }
	if code := svc.deploy(t.Context(), "test", api.DeployRequest{Project: "nope", DryRun: true}, emit); code != api.ExitBadRequest || obs.n != 0 {
		t.Errorf("dry run of an unknown project: exit %d, observers told %d times; want 2, 0", code, obs.n)
	}
	if last.Type != api.EventResult || !strings.Contains(last.Message, "unknown project") {
		t.Errorf("last event: %+v", last)
	}
	// A bad source is refused before anything is loaded.
	if code := svc.deploy(t.Context(), "test", api.DeployRequest{Project: "shop", DryRun: true, Source: "a b"}, emit); code != api.ExitBadRequest || obs.n != 0 {
		t.Errorf("dry run with a bad source: exit %d, observers told %d times; want 2, 0", code, obs.n)
	}
	if code := svc.deploy(t.Context(), "test", api.DeployRequest{Project: "nope"}, emit); code != api.ExitBadRequest || obs.n != 1 {
		t.Errorf("deploy of an unknown project: exit %d, observers told %d times; want 2, 1", code, obs.n)
	}
}
