package schedule

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/internal/fakeengine"
)

// dumpScheduler returns a scheduler with job, a running db container of
// project app (two replicas) and a clock that moves on a minute a reading.
func dumpScheduler(t *testing.T, jobs ...config.PgDumpJob) (*Scheduler, *fakeengine.Engine) {
	t.Helper()
	eng := fakeengine.New()
	service(eng, "app", "db", 2, 1, container.StateRunning)
	service(eng, "app", "db", 1, 1, container.StateRunning)
	service(eng, "app", "web", 1, 1, container.StateRunning)
	log, _ := testLogger(t)
	s, err := New(config.Jobs{PgDump: jobs}, []string{"app"}, eng, newFakeHistory(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Date(2025, 3, 1, 3, 0, 0, 0, time.UTC), step: time.Minute}
	s.now = c.now
	return s, eng
}

func dumpJob(dir string) config.PgDumpJob {
	return config.PgDumpJob{Project: "app", Service: "db", Database: "shop", User: "shop", Dir: dir, Keep: 2, Schedule: "@daily"}
}

// files lists the names in dir.
func files(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestDump(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dumps", "app")
	job := dumpJob(dir)
	s, eng := dumpScheduler(t, job)
	content := "PGDMP" + strings.Repeat("\x01data", 1000)
	eng.SetExecResults(fakeengine.ExecResult{Stdout: content, Stderr: "pg_dump: warning: something harmless\n"})

	path, err := s.Dump(t.Context(), job)
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	if want := filepath.Join(dir, "app-shop-20250301T030000Z.dump"); path != want {
		t.Errorf("path %s, want %s", path, want)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != content {
		t.Fatalf("dump file: %d bytes, err %v; want the exec's %d bytes of stdout", len(got), err, len(content))
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", st.Mode().Perm())
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", st.Mode().Perm())
	}
	call := eng.Execs()[0]
	if call.ContainerID != "c-app-db-1" {
		t.Errorf("exec in %s, want the first replica c-app-db-1", call.ContainerID)
	}
	if want := []string{"pg_dump", "-U", "shop", "-d", "shop", "--no-password", "-Fc"}; !slices.Equal(call.Opts.Cmd, want) {
		t.Errorf("cmd %q, want %q", call.Opts.Cmd, want)
	}
	if call.Opts.User != "postgres" || !call.Opts.AttachStdout || !call.Opts.AttachStderr || call.Opts.Tty {
		t.Errorf("exec options %+v", call.Opts)
	}

	// Keep 2: after three more dumps the two newest remain; files that are
	// not this job's dumps stay.
	for _, name := range []string{"notes.txt", "app-shop-latest.dump", "app-shop-extra-20200101T000000Z.dump"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if _, err := s.Dump(t.Context(), job); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"app-shop-20250301T030200Z.dump", "app-shop-20250301T030300Z.dump",
		"app-shop-extra-20200101T000000Z.dump", "app-shop-latest.dump", "notes.txt"}
	if got := files(t, dir); !slices.Equal(got, want) {
		t.Errorf("files %q\nwant %q", got, want)
	}
}

func TestDumpFails(t *testing.T) {
	dir := t.TempDir()
	job := dumpJob(dir)
	s, eng := dumpScheduler(t, job)
	eng.SetExecResults(fakeengine.ExecResult{Stdout: "PGDMP half a dump", Stderr: `pg_dump: error: connection to server failed: FATAL:  database "shop" does not exist` + "\n", ExitCode: 1})
	// A temp file of a dump cut short by a crash, and someone else's.
	stale := filepath.Join(dir, ".app-shop-20250101T000000Z.dump.123456.tmp")
	other := filepath.Join(dir, ".app-other-20250101T000000Z.dump.123456.tmp")
	for _, f := range []string{stale, other} {
		if err := os.WriteFile(f, []byte("PGDMP"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	path, err := s.Dump(t.Context(), job)
	if err == nil {
		t.Fatalf("dump wrote %s; want an error", path)
	}
	for _, want := range []string{"pg_dump of app/shop in app-db-1", "exited with code 1", `database "shop" does not exist`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if got := files(t, dir); !slices.Equal(got, []string{filepath.Base(other)}) {
		t.Errorf("files left: %q, want only the other job's temp file", got)
	}
}

func TestDumpNoContainer(t *testing.T) {
	job := dumpJob(t.TempDir())
	job.Service = "postgres"
	s, _ := dumpScheduler(t, job)
	if _, err := s.Dump(t.Context(), job); err == nil || !strings.Contains(err.Error(), "no running container of service postgres") {
		t.Errorf("err = %v, want no running container", err)
	}
}

func TestDumpBadJob(t *testing.T) {
	s, _ := dumpScheduler(t)
	for _, job := range []config.PgDumpJob{
		{Project: "app", Service: "db", Database: "../x", User: "u", Dir: t.TempDir(), Keep: 1},
		{Project: "app", Service: "db", Database: "d", User: "u", Dir: "", Keep: 1},
		{Project: "app", Service: "db", Database: "d", User: "u", Dir: t.TempDir(), Keep: 0},
	} {
		if _, err := s.Dump(t.Context(), job); err == nil {
			t.Errorf("Dump(%+v): want an error", job)
		}
	}
}

func TestBeforeRelease(t *testing.T) {
	dir := t.TempDir()
	before := dumpJob(dir)
	before.BeforeDeploy = true
	scheduledOnly := dumpJob(dir)
	scheduledOnly.Database = "stats"
	s, eng := dumpScheduler(t, before, scheduledOnly)
	eng.SetExecResults(fakeengine.ExecResult{Stdout: "PGDMP"})

	if err := s.BeforeRelease(t.Context(), "app", false); err != nil || len(eng.Execs()) != 0 {
		t.Errorf("release without hooks: err %v, %d dumps; want none", err, len(eng.Execs()))
	}
	if err := s.BeforeRelease(t.Context(), "other", true); err != nil || len(eng.Execs()) != 0 {
		t.Errorf("other project: err %v, %d dumps; want none", err, len(eng.Execs()))
	}
	if err := s.BeforeRelease(t.Context(), "app", true); err != nil {
		t.Fatalf("release with hooks: %v", err)
	}
	if len(eng.Execs()) != 1 || !slices.Contains(eng.Execs()[0].Opts.Cmd, "shop") {
		t.Errorf("dumps %+v, want one of shop", eng.Execs())
	}

	eng.SetExecResults(fakeengine.ExecResult{Stderr: "pg_dump: error: no", ExitCode: 1})
	if err := s.BeforeRelease(t.Context(), "app", true); err == nil || !strings.Contains(err.Error(), "pg_dump: error: no") {
		t.Errorf("failed dump: err %v, want it to fail the release", err)
	}
}
