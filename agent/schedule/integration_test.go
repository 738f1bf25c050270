package schedule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/healthcheck"
	"github.com/berth-deploy/berth/internal/testenv"
)

// TestPruneImagesEngine prunes a real engine's images after three releases
// pinned by digest, keeping two, and shows that a rollback's image still
// runs with the registry down.
func TestPruneImagesEngine(t *testing.T) {
	cli := testenv.Docker(t)
	reg := testenv.StartRegistry(t)
	project := testenv.UniqueName("prune")
	repo := reg.Ref(project + "/web")
	ctx := t.Context()
	t.Cleanup(func() { testenv.RemoveProject(t, cli, project) })

	// The label makes the images this test's own: without it the classic
	// builder's cache hands back an identical image that other tests may
	// have tagged, and the cleanup below would remove it from under them.
	own := map[string]string{"dev.berth.test": project}
	// v0 is pushed and pulled but never deployed; v1..v3 are releases 1..3.
	pinned := map[string]string{}
	ids := map[string]string{}
	for _, v := range []string{"v0", "v1", "v2", "v3"} {
		ref := repo + ":" + v
		start := time.Now()
		digest := testenv.BuildAndPush(t, cli, ref, testenv.Image{Env: map[string]string{"VERSION": v}, Labels: own})
		pinned[v] = repo + "@" + digest
		// As a deploy leaves it: pulled by digest, no tag.
		if _, err := cli.ImageRemove(ctx, ref, image.RemoveOptions{PruneChildren: true}); err != nil {
			t.Fatalf("remove tag %s: %v", ref, err)
		}
		pull(t, cli, pinned[v])
		in, err := cli.ImageInspect(ctx, pinned[v])
		if err != nil {
			t.Fatalf("inspect %s: %v", pinned[v], err)
		}
		ids[v] = in.ID
		t.Cleanup(func() { removeImage(t, cli, in.ID, project) })
		t.Logf("%s: %s (%s) in %v", v, pinned[v], shortID(in.ID), time.Since(start).Round(time.Millisecond))
	}
	foreign := "berth-foreign-" + project + ":latest"
	foreignID := testenv.Build(t, cli, foreign, testenv.Image{Env: map[string]string{"VERSION": "foreign"}, Labels: own})
	t.Cleanup(func() { removeImage(t, cli, foreignID, project) })

	hist := newFakeHistory()
	for i, v := range []string{"v1", "v2", "v3"} {
		hist.record(project, i+1, api.OutcomeSucceeded, v == "v3", map[string]string{"web": pinned[v]})
	}
	log, _ := testLogger(t)
	s, err := New(config.Jobs{PruneImages: &config.PruneJob{Schedule: "@daily", KeepReleases: 2}},
		[]string{project}, cli, hist, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	removed, err := s.PruneImages(ctx)
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	t.Logf("prune removed %v in %v", short(removed), time.Since(start).Round(time.Millisecond))
	if !slices.Equal(removed, []string{ids["v1"]}) {
		t.Errorf("removed %v, want v1 only (%s)", short(removed), shortID(ids["v1"]))
	}
	if _, err := cli.ImageInspect(ctx, pinned["v1"]); !cerrdefs.IsNotFound(err) {
		t.Errorf("v1 after prune: inspect err %v, want not found", err)
	}
	for _, ref := range []string{pinned["v0"], pinned["v2"], pinned["v3"], foreign} {
		if _, err := cli.ImageInspect(ctx, ref); err != nil {
			t.Errorf("%s after prune: %v, want it kept", ref, err)
		}
	}

	// Registry down: the kept release still runs, the pruned one cannot.
	reg.Stop(t)
	run := func(ref string) (string, error) {
		cmd := exec.CommandContext(ctx, "docker", "run", "--rm", "--pull", "never",
			"--label", compose.LabelProject+"="+project, "-e", "EXIT_AFTER=0s", "-e", "EXIT_CODE=0", ref)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	start = time.Now()
	out, err := run(pinned["v2"])
	if err != nil || !strings.Contains(out, "testapp v2:") {
		t.Errorf("docker run %s with the registry down: %v\n%s", pinned["v2"], err, out)
	} else {
		t.Logf("docker run of v2 by its pinned ref, registry down: ok in %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	}
	if out, err := run(pinned["v1"]); err == nil {
		t.Errorf("docker run of the pruned v1 succeeded:\n%s", out)
	}
}

// TestDumpEngine dumps a real Postgres in a container of the Debian base
// image labelled as a compose service.
func TestDumpEngine(t *testing.T) {
	cli := testenv.Docker(t)
	tag := baseImage(t)
	project := testenv.UniqueName("dump")
	ctx := t.Context()
	t.Cleanup(func() { testenv.RemoveProject(t, cli, project) })

	script := `set -e; pg_createcluster 15 main; pg_ctlcluster 15 main start; ` +
		`su postgres -c "psql -c 'create table t(x int); insert into t values (42);'"; ` +
		`touch /tmp/ready; exec tail -f /dev/null`
	start := time.Now()
	out, err := exec.CommandContext(ctx, "docker", "run", "-d", "--name", project+"-db-1",
		"--label", compose.LabelProject+"="+project, "--label", compose.LabelService+"=db",
		tag, "bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("docker run %s: %v\n%s", tag, err, out)
	}
	id := strings.TrimSpace(string(out))
	waitReady(t, cli, id, 2*time.Minute)
	t.Logf("postgres up in %v", time.Since(start).Round(time.Millisecond))

	dir := filepath.Join(t.TempDir(), "dumps", project)
	job := config.PgDumpJob{Project: project, Service: "db", Database: "postgres", User: "postgres", Dir: dir, Keep: 1}
	log, _ := testLogger(t)
	s, err := New(config.Jobs{PgDump: []config.PgDumpJob{job}}, []string{project}, cli, newFakeHistory(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Now().UTC(), step: time.Minute}
	s.now = c.now

	var paths []string
	for range 2 {
		start := time.Now()
		path, err := s.Dump(ctx, job)
		if err != nil {
			t.Fatalf("dump: %v", err)
		}
		t.Logf("dumped to %s in %v", filepath.Base(path), time.Since(start).Round(time.Millisecond))
		paths = append(paths, path)
	}
	if got, want := files(t, dir), []string{filepath.Base(paths[1])}; !slices.Equal(got, want) {
		t.Fatalf("files %q, want only the newest dump %q", got, want)
	}
	data, err := os.ReadFile(paths[1])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("PGDMP")) {
		t.Errorf("the dump does not start with PGDMP: %q", data[:min(len(data), 16)])
	}
	if st, _ := os.Stat(paths[1]); st.Mode().Perm() != 0o600 {
		t.Errorf("dump mode %v, want 0600", st.Mode().Perm())
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", st.Mode().Perm())
	}
	// pg_restore reads it back: the table and its row are in it.
	restore := exec.CommandContext(ctx, "docker", "exec", "-i", "-u", "postgres", id, "pg_restore", "-f", "-")
	restore.Stdin = bytes.NewReader(data)
	sql, err := restore.CombinedOutput()
	if err != nil || !strings.Contains(string(sql), "CREATE TABLE public.t") || !strings.Contains(string(sql), "\n42\n") {
		t.Errorf("pg_restore of the dump: %v\n%s", err, sql)
	}

	bad := job
	bad.Database = "nosuchdb"
	path, err := s.Dump(ctx, bad)
	if err == nil {
		t.Fatalf("dump of a missing database wrote %s", path)
	}
	t.Logf("dump of a missing database: %v", err)
	if !strings.Contains(err.Error(), `database "nosuchdb" does not exist`) {
		t.Errorf("error %q does not quote pg_dump's stderr", err)
	}
	if got, want := files(t, dir), []string{filepath.Base(paths[1])}; !slices.Equal(got, want) {
		t.Errorf("after the failed dump: files %q, want %q", got, want)
	}
}

// baseImage returns the tag of the Debian base image (with Postgres),
// built by scripts/base-image.sh if it is not cached.
func baseImage(t *testing.T) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), filepath.Join("..", "..", "scripts", "base-image.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	tag := strings.TrimSpace(lines[len(lines)-1])
	if err != nil || tag == "" {
		msg := "scripts/base-image.sh: %v\n%s"
		if testenv.Required() {
			t.Fatalf(msg, err, stderr.String())
		}
		t.Skipf(msg+" (skipping; set BERTH_REQUIRE_DOCKER=1 to make this a failure)", err, stderr.String())
	}
	return tag
}

// waitReady waits until the container has touched /tmp/ready; it fails if
// the container stops or at the deadline.
func waitReady(t *testing.T, cli *client.Client, id string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		in, err := cli.ContainerInspect(ctx, id)
		if err != nil {
			t.Fatalf("wait ready: %v", err)
		}
		if !in.State.Running {
			logs, _ := exec.Command("docker", "logs", id).CombinedOutput()
			t.Fatalf("container %s is %s (exit code %d):\n%s", shortID(id), in.State.Status, in.State.ExitCode, logs)
		}
		if code, _, err := healthcheck.Exec(ctx, cli, id, []string{"test", "-e", "/tmp/ready"}); err == nil && code == 0 {
			return
		}
		select {
		case <-ctx.Done():
			logs, _ := exec.Command("docker", "logs", id).CombinedOutput()
			t.Fatalf("container %s not ready after %v:\n%s", shortID(id), timeout, logs)
		case <-ticker.C:
		}
	}
}

// pull pulls ref and fails the test on any error, from the request or the
// progress stream.
func pull(t *testing.T, cli *client.Client, ref string) {
	t.Helper()
	body, err := cli.ImagePull(t.Context(), ref, image.PullOptions{RegistryAuth: "e30="}) // base64 "{}"
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	for {
		var m struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		if m.Error != "" {
			t.Fatalf("pull %s: %s", ref, m.Error)
		}
	}
}

// removeImage removes an image the test made, in cleanup: by force if
// every name it has is the test's (has mine in it), else only those names,
// so that an image someone else tagged too is left to them.
func removeImage(t *testing.T, cli *client.Client, id, mine string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), time.Minute)
	defer cancel()
	in, err := cli.ImageInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Errorf("remove image %s: %v", shortID(id), err)
		return
	}
	var ours, theirs []string
	for _, name := range append(in.RepoTags, in.RepoDigests...) {
		if strings.Contains(name, mine) {
			ours = append(ours, name)
		} else {
			theirs = append(theirs, name)
		}
	}
	if len(theirs) > 0 {
		for _, name := range ours {
			if _, err := cli.ImageRemove(ctx, name, image.RemoveOptions{PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
				t.Errorf("untag %s: %v", name, err)
			}
		}
		return
	}
	_, err = cli.ImageRemove(ctx, id, image.RemoveOptions{Force: true, PruneChildren: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		t.Errorf("remove image %s: %v", shortID(id), err)
	}
}
