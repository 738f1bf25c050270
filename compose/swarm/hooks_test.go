package swarm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/swarm"
)

// hkSpec is a converted service as Convert would leave it (the fields a
// hook takes).
func hkSpec() *compose.ServiceSpec {
	replicas := uint64(2)
	return &compose.ServiceSpec{
		Name:  "web",
		Image: compose.Pin{Ref: "registry.example/web:v2", Pinned: "registry.example/web@sha256:abc"},
		Swarm: &swarm.ServiceSpec{
			Annotations: swarm.Annotations{Name: "shop_web", Labels: map[string]string{LabelNamespace: "shop", LabelSpecHash: "h1"}},
			TaskTemplate: swarm.TaskSpec{
				ContainerSpec: &swarm.ContainerSpec{
					Image:       "registry.example/web@sha256:abc",
					Command:     []string{"/entry.sh"},
					Args:        []string{"gunicorn", "app"},
					Env:         []string{"A=1", "DATABASE_URL=postgres://db/shop"},
					Labels:      map[string]string{LabelNamespace: "shop", LabelSpecHash: "h1", "team": "web"},
					Mounts:      []mount.Mount{{Type: mount.TypeVolume, Source: "shop_media", Target: "/media"}},
					Healthcheck: &container.HealthConfig{Test: []string{"CMD", "/testapp", "check"}},
					User:        "app",
				},
				RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny},
				Placement:     &swarm.Placement{Constraints: []string{"node.labels.web == true"}},
				Networks:      []swarm.NetworkAttachmentConfig{{Target: "shop_default", Aliases: []string{"web"}}},
			},
			Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
			EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR},
		},
	}
}

// hkProgress collects progress lines.
type hkProgress struct {
	mu    sync.Mutex
	lines []string
}

func (p *hkProgress) say(service, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, service+": "+msg)
}

func (p *hkProgress) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

func hkHooks(f *fakeSwarm, pr *hkProgress) *Hooks {
	return &Hooks{Engine: f, Project: "shop", Release: "7", Progress: pr.say, Poll: 5 * time.Millisecond,
		Auth: func(_ context.Context, ref string) (string, error) { return "auth-for-" + ref, nil }}
}

func hkComplete(swarm.ServiceSpec) swarm.TaskStatus {
	return swarm.TaskStatus{State: swarm.TaskStateComplete, Message: "finished",
		ContainerStatus: &swarm.ContainerStatus{ContainerID: "c1", ExitCode: 0}}
}

func TestHookRunsAsAOneOffService(t *testing.T) {
	f := newFakeSwarm()
	f.hookPending = 3
	f.hookEnd = hkComplete
	f.logs["shop_web_hook-1-7"] = [2]string{"Applying migrations... OK\n", ""}
	pr := &hkProgress{}
	spec := hkSpec()
	before := *spec.Swarm.TaskTemplate.ContainerSpec
	err := hkHooks(f, pr).Run(t.Context(), spec, PhasePreDeploy, []compose.Hook{{Command: []string{"manage.py", "migrate"}, Timeout: time.Minute}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(f.created) != 1 {
		t.Fatalf("created %d services, want 1", len(f.created))
	}
	got, opts := f.created[0].spec, f.created[0].opts
	if got.Name != "shop_web_hook-1-7" {
		t.Errorf("name %q, want shop_web_hook-1-7", got.Name)
	}
	if r := got.Mode.Replicated; r == nil || r.Replicas == nil || *r.Replicas != 1 || got.Mode.ReplicatedJob != nil || got.Mode.Global != nil {
		t.Errorf("mode %+v, want one replica (not a job: Engine 20.10 leaves a removed job's tasks)", got.Mode)
	}
	if rp := got.TaskTemplate.RestartPolicy; rp == nil || rp.Condition != swarm.RestartPolicyConditionNone {
		t.Errorf("restart policy %+v, want none", rp)
	}
	cs := got.TaskTemplate.ContainerSpec
	if cs.Image != "registry.example/web@sha256:abc" || strings.Join(cs.Args, " ") != "manage.py migrate" ||
		strings.Join(cs.Command, " ") != "/entry.sh" || strings.Join(cs.Env, ",") != "A=1,DATABASE_URL=postgres://db/shop" ||
		cs.User != "app" || len(cs.Mounts) != 1 || cs.Mounts[0].Source != "shop_media" {
		t.Errorf("container spec %+v: want the service's image, entrypoint, env, user and mounts with the hook's command as args", cs)
	}
	if cs.Healthcheck == nil || strings.Join(cs.Healthcheck.Test, " ") != "NONE" {
		t.Errorf("healthcheck %+v, want NONE", cs.Healthcheck)
	}
	if n := got.TaskTemplate.Networks; len(n) != 1 || n[0].Target != "shop_default" || len(n[0].Aliases) != 0 {
		t.Errorf("networks %+v, want the service's without its aliases (a lookup of web must not find the hook)", n)
	}
	if p := got.TaskTemplate.Placement; p == nil || !slices.Equal(p.Constraints, []string{"node.labels.web == true"}) {
		t.Errorf("placement %+v, want the service's", p)
	}
	wantLabels := map[string]string{LabelNamespace: "shop", LabelHook: "pre-deploy/1", LabelHookOf: "web", LabelRelease: "7"}
	for k, v := range wantLabels {
		if got.Labels[k] != v {
			t.Errorf("service label %s = %q, want %q", k, got.Labels[k], v)
		}
		if cs.Labels[k] != v {
			t.Errorf("container label %s = %q, want %q", k, cs.Labels[k], v)
		}
	}
	if _, ok := got.Labels[LabelSpecHash]; ok {
		t.Errorf("service labels %v: a hook has no spec hash", got.Labels)
	}
	if _, ok := cs.Labels[LabelSpecHash]; ok || cs.Labels["team"] != "web" {
		t.Errorf("container labels %v: want the service's but its spec hash", cs.Labels)
	}
	if got.EndpointSpec == nil || got.EndpointSpec.Mode != swarm.ResolutionModeDNSRR {
		t.Errorf("endpoint spec %+v, want dnsrr (no virtual IP)", got.EndpointSpec)
	}
	if opts.EncodedRegistryAuth != "auth-for-registry.example/web:v2" {
		t.Errorf("registry auth %q, want Auth's for the image ref", opts.EncodedRegistryAuth)
	}
	if !slices.Equal(f.removed(), []string{"shop_web_hook-1-7"}) {
		t.Errorf("removed %v, want the hook service", f.removed())
	}
	if f.looks["shop_web_hook-1-7"] < 4 {
		t.Errorf("looked at the task %d times: it ended at the 4th look", f.looks["shop_web_hook-1-7"])
	}
	// The spec the release deploys is untouched.
	after := spec.Swarm.TaskTemplate.ContainerSpec
	if strings.Join(after.Args, " ") != "gunicorn app" || after.Labels[LabelSpecHash] != "h1" || after.Labels[LabelHook] != "" ||
		strings.Join(after.Healthcheck.Test, " ") != strings.Join(before.Healthcheck.Test, " ") {
		t.Errorf("the service's own spec was changed: %+v", after)
	}
	for _, want := range []string{"running pre-deploy hook \"manage.py migrate\"", "| Applying migrations... OK", "done in"} {
		if !strings.Contains(pr.text(), want) {
			t.Errorf("progress lacks %q:\n%s", want, pr.text())
		}
	}
}

func TestFailingHookErrorHasExitCodeAndLogTail(t *testing.T) {
	f := newFakeSwarm()
	f.hookEnd = func(swarm.ServiceSpec) swarm.TaskStatus {
		return swarm.TaskStatus{State: swarm.TaskStateFailed, Err: "task: non-zero exit (3)",
			ContainerStatus: &swarm.ContainerStatus{ContainerID: "c1", ExitCode: 3}}
	}
	var out, errOut strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&out, "line %d\n", i)
	}
	errOut.WriteString("django.db.utils.OperationalError: no such table\n")
	f.logs["shop_web_hook-1-7"] = [2]string{out.String(), errOut.String()}
	pr := &hkProgress{}
	err := hkHooks(f, pr).Run(t.Context(), hkSpec(), PhasePreDeploy, []compose.Hook{
		{Command: []string{"manage.py", "migrate"}, Timeout: time.Minute},
		{Command: []string{"manage.py", "collectstatic"}, Timeout: time.Minute},
	})
	if err == nil {
		t.Fatal("Run: no error for a hook that exited 3")
	}
	if !errors.Is(err, compose.ErrHook) {
		t.Errorf("error %q does not wrap compose.ErrHook", err)
	}
	msg := err.Error()
	for _, want := range []string{"service web", "exited 3", "non-zero exit (3)", "line 30", "line 12", "no such table"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "line 11\n") {
		t.Errorf("error has more than the last %d lines:\n%s", hookTail, msg)
	}
	if len(f.created) != 1 {
		t.Errorf("created %d services: the hook after a failed one must not run", len(f.created))
	}
	if !slices.Equal(f.removed(), []string{"shop_web_hook-1-7"}) {
		t.Errorf("removed %v, want the failed hook's service", f.removed())
	}
}

func TestPostDeployHookFailureIsNoErrHook(t *testing.T) {
	f := newFakeSwarm()
	f.hookEnd = func(swarm.ServiceSpec) swarm.TaskStatus {
		return swarm.TaskStatus{State: swarm.TaskStateFailed, ContainerStatus: &swarm.ContainerStatus{ContainerID: "c1", ExitCode: 1}}
	}
	err := hkHooks(f, &hkProgress{}).Run(t.Context(), hkSpec(), PhasePostDeploy, []compose.Hook{{Command: []string{"notify"}, Timeout: time.Minute}})
	if err == nil || errors.Is(err, compose.ErrHook) || !strings.Contains(err.Error(), "post-deploy hook \"notify\" exited 1") {
		t.Errorf("error %v: want the post-deploy hook's exit, not ErrHook (nothing is switched after it)", err)
	}
	if f.created[0].spec.Labels[LabelHook] != "post-deploy/1" {
		t.Errorf("hook label %q, want post-deploy/1", f.created[0].spec.Labels[LabelHook])
	}
}

func TestHookRejectedTaskSaysWhy(t *testing.T) {
	f := newFakeSwarm()
	f.hookEnd = func(swarm.ServiceSpec) swarm.TaskStatus {
		return swarm.TaskStatus{State: swarm.TaskStateRejected, Err: "No such image: registry.example/web@sha256:abc"}
	}
	err := hkHooks(f, &hkProgress{}).Run(t.Context(), hkSpec(), PhasePreDeploy, []compose.Hook{{Command: []string{"true"}, Timeout: time.Minute}})
	if err == nil || !errors.Is(err, compose.ErrHook) || !strings.Contains(err.Error(), "rejected (No such image") {
		t.Errorf("error %v: want the task's rejection, wrapping ErrHook", err)
	}
	if len(f.removed()) != 1 {
		t.Errorf("removed %v, want the hook service", f.removed())
	}
}

func TestHookTimeoutRemovesTheService(t *testing.T) {
	f := newFakeSwarm() // the task stays pending
	f.logs["shop_web_hook-1-7"] = [2]string{"waiting for the database\n", ""}
	start := time.Now()
	err := hkHooks(f, &hkProgress{}).Run(t.Context(), hkSpec(), PhasePreDeploy, []compose.Hook{{Command: []string{"manage.py", "migrate"}, Timeout: 200 * time.Millisecond}})
	took := time.Since(start)
	if err == nil {
		t.Fatal("Run: no error for a hook that never ended")
	}
	for _, want := range []string{"did not end within its timeout of 200ms", "pending", "waiting for the database"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if !errors.Is(err, compose.ErrHook) {
		t.Errorf("error %q does not wrap compose.ErrHook", err)
	}
	if took > 10*time.Second {
		t.Errorf("Run took %s for a 200ms timeout", took)
	}
	if !slices.Equal(f.removed(), []string{"shop_web_hook-1-7"}) {
		t.Fatalf("removed %v, want the hook service", f.removed())
	}
	if f.removeCtxErr[0] != nil {
		t.Errorf("the removal was asked with a context already done (%v): it cannot have happened", f.removeCtxErr[0])
	}
}

func TestHookCancelledByTheCallerStillRemovesTheService(t *testing.T) {
	f := newFakeSwarm()
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := hkHooks(f, &hkProgress{}).Run(ctx, hkSpec(), PhasePreDeploy, []compose.Hook{{Command: []string{"sleep"}, Timeout: time.Minute}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want the caller's cancellation", err)
	}
	if len(f.removed()) != 1 || f.removeCtxErr[0] != nil {
		t.Errorf("removed %v with context errors %v: want the hook service removed with a live context", f.removed(), f.removeCtxErr)
	}
}

func TestHookAuthFailureCreatesNothing(t *testing.T) {
	f := newFakeSwarm()
	h := hkHooks(f, &hkProgress{})
	h.Auth = func(context.Context, string) (string, error) { return "", errors.New("no credentials helper") }
	err := h.Run(t.Context(), hkSpec(), PhasePreDeploy, []compose.Hook{{Command: []string{"true"}, Timeout: time.Minute}})
	if err == nil || !strings.Contains(err.Error(), "no credentials helper") || len(f.created) != 0 {
		t.Errorf("error %v, created %d: want the auth error and nothing created", err, len(f.created))
	}
}

func TestHookWithoutSwarmSpecIsAnError(t *testing.T) {
	f := newFakeSwarm()
	spec := hkSpec()
	spec.Swarm = nil
	err := hkHooks(f, &hkProgress{}).Run(t.Context(), spec, PhasePreDeploy, []compose.Hook{{Command: []string{"true"}, Timeout: time.Minute}})
	if err == nil || !strings.Contains(err.Error(), "no swarm spec") || len(f.created) != 0 {
		t.Errorf("error %v: want a clear error and nothing created", err)
	}
}

func TestHookRemovesALeftoverOfTheSameName(t *testing.T) {
	f := newFakeSwarm()
	f.hookEnd = hkComplete
	f.put(swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "shop_web_hook-1-7",
		Labels: map[string]string{LabelNamespace: "shop", LabelHook: "pre-deploy/1", LabelHookOf: "web"}}})
	// Another project's service of a longer name, which the engine's name
	// filter also matches, is not touched.
	f.put(swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "shop_web_hook-1-70",
		Labels: map[string]string{LabelNamespace: "shop", LabelHook: "pre-deploy/1", LabelHookOf: "web"}}})
	err := hkHooks(f, &hkProgress{}).Run(t.Context(), hkSpec(), PhasePreDeploy, []compose.Hook{{Command: []string{"true"}, Timeout: time.Minute}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !slices.Equal(f.removed(), []string{"shop_web_hook-1-7", "shop_web_hook-1-7"}) {
		t.Errorf("removed %v: want the leftover, then the hook's own service", f.removed())
	}
	if f.service("shop_web_hook-1-70") == nil {
		t.Error("a service whose name only starts with the hook's was removed")
	}
}

func TestRemoveLeftovers(t *testing.T) {
	f := newFakeSwarm()
	hookLabels := func(project string) map[string]string {
		return map[string]string{LabelNamespace: project, LabelHook: "pre-deploy/1", LabelHookOf: "web"}
	}
	f.put(swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "shop_web_hook-1-3", Labels: hookLabels("shop")}})
	f.put(swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "shop_worker_hook-2-3", Labels: hookLabels("shop")}})
	f.put(swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "shop_web", Labels: map[string]string{LabelNamespace: "shop"}}})
	f.put(swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "blog_web_hook-1-3", Labels: hookLabels("blog")}})
	pr := &hkProgress{}
	if err := hkHooks(f, pr).RemoveLeftovers(t.Context()); err != nil {
		t.Fatalf("RemoveLeftovers: %v", err)
	}
	removed := f.removed()
	slices.Sort(removed)
	if !slices.Equal(removed, []string{"shop_web_hook-1-3", "shop_worker_hook-2-3"}) {
		t.Errorf("removed %v, want the project's two hook services only", removed)
	}
	if !strings.Contains(pr.text(), "removed hook service shop_web_hook-1-3") {
		t.Errorf("progress does not say what was removed:\n%s", pr.text())
	}
}

func TestHookServiceName(t *testing.T) {
	if got := HookServiceName("shop", "web", "12", 0); got != "shop_web_hook-1-12" {
		t.Errorf("name %q, want shop_web_hook-1-12", got)
	}
	if got := HookServiceName("shop", "web", "", 1); got != "shop_web_hook-2" {
		t.Errorf("name %q, want shop_web_hook-2", got)
	}
	long := strings.Repeat("p", 40)
	a, b := HookServiceName(long, "a-very-long-service-name", "1234", 0), HookServiceName(long, "a-very-long-service-name", "1234", 1)
	c := HookServiceName(long, "a-very-long-service-name", "1235", 0)
	if len(a) > 63 || len(b) > 63 || a == b || a == c {
		t.Errorf("long names %q %q %q: want at most 63 characters, distinct", a, b, c)
	}
	if !strings.HasPrefix(a, long+"_") || !strings.Contains(a, "_hook-1-") || !strings.Contains(b, "_hook-2-") {
		t.Errorf("long names %q %q: want the project and hook number kept", a, b)
	}
}

func TestHookLongLineIsCut(t *testing.T) {
	f := newFakeSwarm()
	f.hookEnd = func(swarm.ServiceSpec) swarm.TaskStatus {
		return swarm.TaskStatus{State: swarm.TaskStateFailed, ContainerStatus: &swarm.ContainerStatus{ContainerID: "c1", ExitCode: 2}}
	}
	f.logs["shop_web_hook-1-7"] = [2]string{strings.Repeat("x", 5000) + "\nlast\n", ""}
	err := hkHooks(f, &hkProgress{}).Run(t.Context(), hkSpec(), PhasePreDeploy, []compose.Hook{{Command: []string{"x"}, Timeout: time.Minute}})
	if err == nil || !strings.Contains(err.Error(), "…(+") || strings.Contains(err.Error(), strings.Repeat("x", hookLineBytes+1)) ||
		!strings.HasSuffix(err.Error(), "\nlast") {
		t.Errorf("error %v: want the long line cut at %d bytes and the next line kept", err, hookLineBytes)
	}
}
