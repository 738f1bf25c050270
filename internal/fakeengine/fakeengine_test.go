package fakeengine

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
)

func create(t *testing.T, e *Engine, name, service string, cfg container.Config) string {
	t.Helper()
	cfg.Labels = map[string]string{labelService: service, "project": "p"}
	c, err := e.ContainerCreate(t.Context(), &cfg, nil, &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{"p_default": {}}}, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	return c.ID
}

func names(list []container.Summary) []string {
	var out []string
	for _, c := range list {
		out = append(out, strings.TrimPrefix(c.Names[0], "/"))
	}
	return out
}

// TestListStopAndCrash: the list shows what the engine would (running
// ones by default, every one with All, those in a state with a status
// filter); a stubborn container's stop takes its grace period on the
// clock and ends in SIGKILL; a container of a crashing image is exited
// after its start.
func TestListStopAndCrash(t *testing.T) {
	e := New()
	web := create(t, e, "p-web-1", "web", container.Config{Image: "web:1"})
	grace := 3
	db := create(t, e, "p-db-1", "db", container.Config{Image: "db:1", StopTimeout: &grace})
	bad := create(t, e, "p-bad-1", "bad", container.Config{Image: "bad:1"})
	e.CrashOnStart("bad:1", 2)
	for _, id := range []string{web, db, bad} {
		if err := e.ContainerStart(t.Context(), id, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctx := t.Context()
	running, _ := e.ContainerList(ctx, container.ListOptions{})
	all, _ := e.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "project=p"))})
	exited, _ := e.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("status", "exited"))})
	if got := names(running); !slices.Equal(got, []string{"p-web-1", "p-db-1"}) {
		t.Errorf("running: %v", got)
	}
	if got := names(all); len(got) != 3 {
		t.Errorf("all: %v", got)
	}
	if got := names(exited); !slices.Equal(got, []string{"p-bad-1"}) {
		t.Errorf("exited: %v", got)
	}

	e.SetStubborn("db")
	if err := e.ContainerStop(ctx, db, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	if in, _ := e.Container(db); in.State.Running || in.State.ExitCode != ExitSIGKILL || e.Now().Sub(time.Time{}) < 3*time.Second {
		t.Errorf("stubborn stop: running %v, exit code %d, clock %v; want killed after its 3s", in.State.Running, in.State.ExitCode, e.Now().Sub(time.Time{}))
	}
	if err := e.ContainerRemove(ctx, web, container.RemoveOptions{}); !errdefs.IsConflict(err) {
		t.Errorf("removing a running container without force: %v, want a conflict", err)
	}
	if got := e.TakeCalls(); !slices.Contains(got, "stop p-db-1") || !slices.Contains(got, "start p-bad-1") {
		t.Errorf("calls: %v", got)
	}
}

// TestExecAndImages: scripted execs in order (the last one repeating),
// getent answered from the running containers, and images pulled only
// from what the registry serves.
func TestExecAndImages(t *testing.T) {
	e := New()
	ctx := t.Context()
	web := create(t, e, "p-web-1", "web", container.Config{})
	e.ContainerStart(ctx, web, container.StartOptions{})
	e.SetExecResults(ExecResult{Stdout: "no\n", ExitCode: 1}, ExecResult{Stdout: "yes\n"})
	run := func(cmd ...string) (string, int) {
		x, err := e.ContainerExecCreate(ctx, web, container.ExecOptions{Cmd: cmd})
		if err != nil {
			t.Fatal(err)
		}
		att, err := e.ContainerExecAttach(ctx, x.ID, container.ExecAttachOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		stdcopy.StdCopy(&out, io.Discard, att.Reader)
		att.Close()
		in, _ := e.ContainerExecInspect(ctx, x.ID)
		return out.String(), in.ExitCode
	}
	for i, want := range []string{"no\n", "yes\n", "yes\n"} {
		if out, _ := run("check"); out != want {
			t.Errorf("exec %d: %q, want %q", i, out, want)
		}
	}
	if out, _ := run("getent", "ahostsv4", "web"); out != "10.0.0.1       STREAM web\n" {
		t.Errorf("getent: %q", out)
	}

	d := "sha256:" + strings.Repeat("a", 64)
	if _, err := e.ImagePull(ctx, "r.test:5000/web:1", image.PullOptions{}); !errdefs.IsNotFound(err) {
		t.Errorf("pull of what the registry does not serve: %v", err)
	}
	e.SetRegistry("r.test:5000/web:1", d)
	if di, err := e.DistributionInspect(ctx, "r.test:5000/web:1", ""); err != nil || string(di.Descriptor.Digest) != d {
		t.Errorf("resolve: %v, %v", di.Descriptor.Digest, err)
	}
	if _, err := e.ImagePull(ctx, "r.test:5000/web:1", image.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if in, err := e.ImageInspect(ctx, "r.test:5000/web@"+d); err != nil || in.ID != d {
		t.Errorf("the pulled image: %+v, %v", in, err)
	}
}
