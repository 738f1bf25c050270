package compose

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

func load(t *testing.T, images map[string]string, profiles ...string) *types.Project {
	t.Helper()
	p, err := Load(t.Context(), LoadOptions{Name: "shop", ComposeFile: "testdata/stack.yaml", Images: images, Profiles: profiles})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return p
}

// pins pins every service to a fake digest derived from its image tag.
func pins(p *types.Project) map[string]Pin {
	out := map[string]Pin{}
	for name, s := range p.Services {
		repo, tag, _ := strings.Cut(s.Image, ":")
		d := "sha256:" + strings.Repeat(tag[len(tag)-1:], 64)
		out[name] = Pin{Ref: s.Image, Pinned: repo + "@" + d, Digest: d}
	}
	return out
}

func desired(t *testing.T, p *types.Project) *Desired {
	t.Helper()
	d, err := NewDesired(p, pins(p))
	if err != nil {
		t.Fatalf("desired: %v", err)
	}
	return d
}

func plan(t *testing.T, eng *fakeEngine, d *Desired) *Plan {
	t.Helper()
	o, err := Observe(t.Context(), eng, d.Project)
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	return MakePlan(d, o)
}

func apply(t *testing.T, eng *fakeEngine, p *Plan) {
	t.Helper()
	if err := (&Executor{Engine: eng, Release: "1"}).Apply(t.Context(), p); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func TestLoadProfilesAndOverrides(t *testing.T) {
	p := load(t, map[string]string{"web": "registry.test/web:v2"})
	if got := strings.Join(p.ServiceNames(), ","); got != "db,proxy,web,worker" {
		t.Errorf("services = %s, want db,proxy,web,worker (admin is behind a profile)", got)
	}
	if img := p.Services["web"].Image; img != "registry.test/web:v2" {
		t.Errorf("web image = %s, want the override", img)
	}
	if img := p.Services["worker"].Image; img != "registry.test/worker:v1" {
		t.Errorf("worker image = %s, want the file's", img)
	}
	if env := p.Services["web"].Environment["GREETING"]; env == nil || *env != "hello" {
		t.Errorf("GREETING not interpolated from its default: %v", env)
	}
	if got := strings.Join(load(t, nil, "tools").ServiceNames(), ","); got != "admin,db,proxy,web,worker" {
		t.Errorf("with profile tools: services = %s", got)
	}
}

func TestLoadEnvFile(t *testing.T) {
	dir := t.TempDir()
	env := filepath.Join(dir, "prod.env")
	if err := os.WriteFile(env, []byte("GREETING=bonjour\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Load(t.Context(), LoadOptions{Name: "shop", ComposeFile: "testdata/stack.yaml", EnvFiles: []string{env}})
	if err != nil {
		t.Fatal(err)
	}
	if v := p.Services["web"].Environment["GREETING"]; v == nil || *v != "bonjour" {
		t.Errorf("GREETING = %v, want bonjour from the env file", v)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("services:\n  web:\n    image: [oops\n"), 0o600)
	noImage := filepath.Join(dir, "noimage.yaml")
	os.WriteFile(noImage, []byte("services:\n  web:\n    build: .\n  db:\n    image: x\n    devices: ['/dev/null:/dev/null']\n"), 0o600)
	for _, tc := range []struct {
		name, file string
		images     map[string]string
		want       []string
	}{
		{"unknown service", "testdata/stack.yaml", map[string]string{"nope": "x:1"}, []string{"no service nope", "db, proxy, web, worker"}},
		{"syntax", bad, nil, []string{"bad.yaml"}},
		{"missing file", filepath.Join(dir, "absent.yaml"), nil, []string{"absent.yaml"}},
		{"every problem", noImage, nil, []string{"service web: no image", "service db: devices is not supported"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(t.Context(), LoadOptions{Name: "shop", ComposeFile: tc.file, Images: tc.images})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestPlanLifecycle(t *testing.T) {
	eng := newFakeEngine()
	d1 := desired(t, load(t, nil))
	first := plan(t, eng, d1)
	want := `plan for shop:
  network shop_default: create
  volume shop_dbdata: create
  service db (stop-first): create shop-db-1 (new replica)
  service web (start-first): create shop-web-1 (new replica)
  service web (start-first): create shop-web-2 (new replica)
  service proxy (stop-first): create shop-proxy-1 (new replica)
  service worker (start-first): create shop-worker-1 (new replica)
`
	if got := first.String(); got != want {
		t.Fatalf("first plan:\n%s\nwant:\n%s", got, want)
	}
	apply(t, eng, first)
	before := eng.ids()
	eng.takeCalls()

	// The same release again: nothing to do, nothing touched.
	again := plan(t, eng, d1)
	if !again.Empty() {
		t.Fatalf("redeploy of the same release is not empty:\n%s", again)
	}
	apply(t, eng, again)
	if calls := eng.takeCalls(); len(calls) != 0 {
		t.Fatalf("empty plan made engine calls: %v", calls)
	}
	if !strings.Contains(again.String(), "service web: unchanged (2 running)") {
		t.Errorf("empty plan text:\n%s", again)
	}

	// Only web's image changes: only web's containers are replaced.
	d2 := desired(t, load(t, map[string]string{"web": "registry.test/web:v2"}))
	second := plan(t, eng, d2)
	want = `plan for shop:
  service db: unchanged (1 running)
  service web (start-first): recreate shop-web-1 (image sha256:111111111111 -> sha256:222222222222)
  service web (start-first): recreate shop-web-2 (image sha256:111111111111 -> sha256:222222222222)
  service proxy: unchanged (1 running)
  service worker: unchanged (1 running)
`
	if got := second.String(); got != want {
		t.Fatalf("second plan:\n%s\nwant:\n%s", got, want)
	}
	if got := strings.Join(second.ChangedServices(), ","); got != "web" {
		t.Errorf("changed services = %s, want web", got)
	}
	apply(t, eng, second)
	after := eng.ids()
	for _, name := range []string{"shop-db-1", "shop-worker-1", "shop-proxy-1"} {
		if before[name] != after[name] {
			t.Errorf("%s was recreated (%s -> %s)", name, before[name], after[name])
		}
	}
	for _, name := range []string{"shop-web-1", "shop-web-2"} {
		if before[name] == after[name] {
			t.Errorf("%s kept its old container", name)
		}
	}
	if !eng.HasVolume("shop_dbdata") {
		t.Error("volume disappeared")
	}
}

// TestStartFirstRollout checks the order of a start-first rollout behind a
// proxy: the hook, the new container up and gated beside the old, the
// proxy validated and reloaded, the old one stopped (and the proxy
// reloaded again) and kept aside until the release commits.
func TestStartFirstRollout(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	one := 1
	web := p.Services["web"]
	web.Deploy.Replicas = &one
	p.Services["web"] = web
	apply(t, eng, plan(t, eng, desired(t, p)))
	old := eng.ids()["shop-web-1"]

	p.Services["web"] = withImage(web, "registry.test/web:v2")
	eng.takeCalls()
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	retired := "shop-web-1-retired-" + old[:min(8, len(old))]
	want := []string{
		"create shop-web-predeploy-2-1", "start shop-web-predeploy-2-1", "hook shop-web-predeploy-2-1 manage migrate", "remove shop-web-predeploy-2-1",
		"rename shop-web-1 " + retired,
		"create shop-web-1", "start shop-web-1", "gate shop-web-1",
		"exec shop-proxy-1 nginx -t", "exec shop-proxy-1 nginx -s reload",
		"stop " + retired,
		"exec shop-proxy-1 nginx -t", "exec shop-proxy-1 nginx -s reload",
	}
	if got := eng.takeCalls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ids := eng.ids(); ids[retired] != old {
		t.Errorf("the old container was not kept aside as %s: %v", retired, ids)
	}
	if got := exec.Started(); len(got) != 1 || got[0].Name != "shop-web-1" || got[0].Monitor != DefaultMonitor {
		t.Errorf("started = %+v", got)
	}

	// After the commit, the cleanup removes what the release retired.
	cleanup := plan(t, eng, desired(t, p)).Cleanup()
	if err := (&Executor{Engine: eng}).Apply(t.Context(), cleanup); err != nil {
		t.Fatal(err)
	}
	if got := eng.takeCalls(); strings.Join(got, ",") != "remove "+retired {
		t.Errorf("cleanup calls = %v", got)
	}
}

func withImage(s types.ServiceConfig, image string) types.ServiceConfig {
	s.Image = image
	return s
}

// TestRollbackOfAFailedGate checks that a start-first service whose new
// container fails its gate goes back to the old container, which never
// stopped, under its own name again.
func TestRollbackOfAFailedGate(t *testing.T) {
	eng := newFakeEngine()
	d1 := desired(t, load(t, nil))
	apply(t, eng, plan(t, eng, d1))
	before := eng.ids()

	p2 := load(t, map[string]string{"web": "registry.test/web:v2"})
	gater := &fakeGater{eng: eng, fail: map[string]error{"shop-web-1": errors.New("never healthy")}}
	exec := &Executor{Engine: eng, Health: gater, Release: "2", KeepRetired: true}
	err := exec.Apply(t.Context(), plan(t, eng, desired(t, p2)))
	if err == nil || !strings.Contains(err.Error(), "never healthy") {
		t.Fatalf("apply = %v, want the gate failure", err)
	}

	back := plan(t, eng, d1)
	text := back.String()
	for _, want := range []string{"service web: rename shop-web-1-retired-", "remove shop-web-1 (superseded)"} {
		if !strings.Contains(text, want) {
			t.Errorf("rollback plan lacks %q:\n%s", want, text)
		}
	}
	if err := (&Executor{Engine: eng, Health: gater, Rollback: true}).Apply(t.Context(), back); err != nil {
		t.Fatal(err)
	}
	after := eng.ids()
	if len(after) != len(before) {
		t.Errorf("containers after rollback: %v, want %v", after, before)
	}
	for name, id := range before {
		if after[name] != id {
			t.Errorf("%s is %s after the rollback, want the original %s", name, after[name], id)
		}
	}
	if p := plan(t, eng, d1); !p.Empty() {
		t.Errorf("after the rollback the plan is not empty:\n%s", p)
	}
}

func TestStopFirstRollout(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	apply(t, eng, plan(t, eng, desired(t, p)))
	old := eng.ids()["shop-db-1"]
	p.Services["db"] = withImage(p.Services["db"], "registry.test/db:v2")
	eng.takeCalls()
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	retired := "shop-db-1-retired-" + old[:min(8, len(old))]
	want := []string{"stop shop-db-1", "rename shop-db-1 " + retired, "create shop-db-1", "start shop-db-1", "gate shop-db-1"}
	if got := eng.takeCalls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestFailingHookSwitchesNothing(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	before := eng.ids()
	eng.SetWaitExit(3)
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true}
	err := exec.Apply(t.Context(), plan(t, eng, desired(t, load(t, map[string]string{"web": "registry.test/web:v2"}))))
	if !errors.Is(err, ErrHook) || !strings.Contains(err.Error(), "exited 3") {
		t.Fatalf("apply = %v, want a hook failure", err)
	}
	after := eng.ids()
	for name, id := range before {
		if after[name] != id {
			t.Errorf("%s changed after a failed hook", name)
		}
	}
	if len(after) != len(before) {
		t.Errorf("containers left by the hook: %v", after)
	}
}

func TestPolicyDefaultsAndErrors(t *testing.T) {
	d := desired(t, load(t, nil))
	for _, tc := range []struct{ svc, order, reason string }{
		{"web", StartFirst, "default for a stateless service"},
		{"db", StopFirst, "has a named volume"},
		{"proxy", StopFirst, "publishes a host port"},
	} {
		for _, s := range d.Services {
			if s.Name == tc.svc && (s.Policy.Order != tc.order || s.Policy.OrderReason != tc.reason || s.Policy.FailureAction != FailRollback) {
				t.Errorf("%s: policy %+v, want %s (%s), rollback", tc.svc, s.Policy, tc.order, tc.reason)
			}
		}
	}
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte(`services:
  beat:
    image: x
    x-berth: {singleton: true}
    deploy: {update_config: {order: start-first}}
  web:
    image: x
    ports: ["8000:8000"]
    deploy: {update_config: {order: start-first, failure_action: explode}}
  api:
    image: x
    x-berth: {health: {http: {path: /}}, bogus: 1}
  dep:
    image: x
    depends_on:
      nohealth: {condition: service_healthy}
  nohealth:
    image: x
`), 0o600)
	_, err := Load(t.Context(), LoadOptions{Name: "p", ComposeFile: file})
	for _, want := range []string{
		"service beat: start-first contradicts x-berth.singleton",
		"service web: start-first is impossible",
		`service web: deploy.update_config.failure_action "explode"`,
		"service api: x-berth:",
		"service dep: depends_on nohealth: condition service_healthy, but nohealth has no healthcheck",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("load error lacks %q:\n%v", want, err)
		}
	}
}

func TestScaleRemoveAndRestart(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	apply(t, eng, plan(t, eng, desired(t, p)))

	// web down to one replica, worker removed from the file, db stopped by hand.
	web := p.Services["web"]
	one := 1
	web.Deploy.Replicas = &one
	p.Services["web"] = web
	delete(p.Services, "worker")
	eng.Exit(eng.ids()["shop-db-1"], 0)
	got := plan(t, eng, desired(t, p)).String()
	want := `plan for shop:
  service db (stop-first): start shop-db-1 (container is exited)
  service web: remove shop-web-2 (scaled to 1)
  service proxy: unchanged (1 running)
  service worker: remove shop-worker-1 (no longer in the compose file)
`
	if got != want {
		t.Fatalf("plan:\n%s\nwant:\n%s", got, want)
	}
}

func TestConfigHash(t *testing.T) {
	p := load(t, nil)
	a := desired(t, p)
	b := desired(t, load(t, nil))
	for i := range a.Services {
		if a.Services[i].Hash != b.Services[i].Hash {
			t.Errorf("%s: hash not stable across loads", a.Services[i].Name)
		}
	}
	// How an image is named is not either: the same digest by its tag or
	// by repo@digest is the same container.
	renamed := pins(p)
	web0 := renamed["web"]
	web0.Ref = "registry.test/web@" + web0.Digest
	renamed["web"] = web0
	if d, err := NewDesired(p, renamed); err != nil || d.Services[1].Hash != a.Services[1].Hash {
		t.Errorf("the same digest by another name changed web's hash (%v)", err)
	}
	// Replicas are not part of a container's config.
	web := p.Services["web"]
	five := 5
	web.Deploy.Replicas = &five
	p.Services["web"] = web
	if h := desired(t, p).Services[1].Hash; h != a.Services[1].Hash {
		t.Error("changing replicas changed web's hash")
	}
	// An environment change is.
	v := "changed"
	web.Environment = maps.Clone(web.Environment)
	web.Environment["GREETING"] = &v
	p.Services["web"] = web
	if h := desired(t, p).Services[1].Hash; h == a.Services[1].Hash {
		t.Error("changing the environment did not change web's hash")
	}
}

func TestApplyCleansUpFailedCreate(t *testing.T) {
	eng := newFakeEngine()
	eng.FailCreate("shop-web-2")
	err := (&Executor{Engine: eng}).Apply(t.Context(), plan(t, eng, desired(t, load(t, nil))))
	if err == nil || !strings.Contains(err.Error(), "service web: create") {
		t.Fatalf("err = %v, want a web create error", err)
	}
	if _, ok := eng.ids()["shop-web-2"]; ok {
		t.Error("half-created container left behind")
	}
}
