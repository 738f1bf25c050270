package schedule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/healthcheck"
)

const (
	// dumpTimeFormat stamps a dump's file name (UTC); names sort by time.
	dumpTimeFormat = "20060102T150405Z"
	// dumpStderrMax is how much of pg_dump's stderr an error quotes (its end).
	dumpStderrMax = 4 << 10
)

// checkDumpJob returns what is wrong with a dump job, nil if nothing.
func checkDumpJob(j config.PgDumpJob) error {
	var errs []error
	if j.Project == "" || j.Service == "" {
		errs = append(errs, errors.New("project and service are required"))
	}
	if j.Database == "" || j.User == "" {
		errs = append(errs, errors.New("database and user are required"))
	}
	// Project and database name the dump files.
	for _, name := range []string{j.Project, j.Database} {
		if name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			errs = append(errs, fmt.Errorf("%q cannot be part of a file name", name))
		}
	}
	if j.Dir == "" {
		errs = append(errs, errors.New("dir is required"))
	}
	if j.Keep < 1 {
		errs = append(errs, fmt.Errorf("keep %d: must be at least 1", j.Keep))
	}
	return errors.Join(errs...)
}

// Dump runs pg_dump (custom format) in the first running container of the
// job's service and writes its output to
// DIR/PROJECT-DATABASE-YYYYMMDDTHHMMSSZ.dump (mode 0600, DIR created 0700).
// The output goes to a hidden temporary file first, renamed only when
// pg_dump exited 0, so a failed dump never leaves a file that looks like a
// good one. Then only the newest Keep dumps of the project's database are
// kept. A failure returns pg_dump's stderr (its end) in the error.
func (s *Scheduler) Dump(ctx context.Context, job config.PgDumpJob) (path string, err error) {
	op := fmt.Sprintf("pg_dump of %s/%s", job.Project, job.Database)
	if err := checkDumpJob(job); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	// One dump of a database into a directory at a time: the scheduled one
	// and the one before a deploy wait for each other.
	sem := s.dumpToken(filepath.Clean(job.Dir) + "\x00" + job.Project + "\x00" + job.Database)
	if err := acquire(ctx, sem); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	defer func() { sem <- struct{}{} }()

	id, name, err := s.dbContainer(ctx, job)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	op += " in " + name
	if err := os.MkdirAll(job.Dir, 0o700); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	s.removeStaleTemps(job)

	start := time.Now()
	prefix := dumpPrefix(job)
	path = filepath.Join(job.Dir, prefix+s.now().UTC().Format(dumpTimeFormat)+".dump")
	// CreateTemp makes the file 0600, and under a name Keep never counts.
	tmp, err := os.CreateTemp(job.Dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	renamed := false
	defer func() {
		if !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	size, err := s.execDump(ctx, id, job, tmp)
	if err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("%s: sync: %w", op, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("%s: close: %w", op, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	renamed = true
	if err := syncDir(job.Dir); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	s.log.Info("database dumped", "project", job.Project, "database", job.Database, "container", name,
		"file", path, "bytes", size, "duration", time.Since(start).Round(time.Millisecond))

	// The dump is good whatever happens to the old ones.
	if err := s.keepDumps(job); err != nil {
		s.log.Warn("old dumps not removed", "project", job.Project, "database", job.Database, "err", err)
	}
	return path, nil
}

// dumpToken returns the semaphore of one dump key.
func (s *Scheduler) dumpToken(key string) chan struct{} {
	s.dumpMu.Lock()
	defer s.dumpMu.Unlock()
	sem, ok := s.dumping[key]
	if !ok {
		sem = token()
		s.dumping[key] = sem
	}
	return sem
}

// dbContainer returns the ID and name of the first running container of
// the job's service, by name (so replica 1 when there are several).
func (s *Scheduler) dbContainer(ctx context.Context, job config.PgDumpJob) (id, name string, err error) {
	list, err := s.eng.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(
		filters.Arg("label", compose.LabelProject+"="+job.Project),
		filters.Arg("label", compose.LabelService+"="+job.Service),
		filters.Arg("status", container.StateRunning),
	)})
	if err != nil {
		return "", "", fmt.Errorf("list containers: %w", err)
	}
	var running []string
	ids := map[string]string{}
	for _, c := range list {
		if c.State != container.StateRunning || oneoff(c.Labels) {
			continue
		}
		n := shortID(c.ID)
		if len(c.Names) > 0 {
			n = strings.TrimPrefix(c.Names[0], "/")
		}
		running = append(running, n)
		ids[n] = c.ID
	}
	if len(running) == 0 {
		return "", "", fmt.Errorf("no running container of service %s", job.Service)
	}
	slices.Sort(running)
	return ids[running[0]], running[0], nil
}

// execDump runs pg_dump in the container, streams its stdout to out and
// returns the bytes written; a non-zero exit is an error quoting stderr.
func (s *Scheduler) execDump(ctx context.Context, containerID string, job config.PgDumpJob, out io.Writer) (int64, error) {
	cmd := []string{"pg_dump", "-U", job.User, "-d", job.Database, "--no-password", "-Fc"}
	stdout := &countingWriter{w: out}
	stderr := &tailBuffer{max: dumpStderrMax}
	// As the OS user postgres, not the container's default (often root):
	// Debian-packaged Postgres admits local socket connections by peer
	// authentication, which lets in only the OS user of the same name, and
	// the official image runs the server as postgres too. --no-password
	// makes a server that wants one fail at once rather than wait for a
	// prompt nobody answers.
	code, err := healthcheck.ExecTo(ctx, s.eng, containerID, "postgres", cmd, stdout, stderr)
	if err != nil {
		if msg := stderr.text(); msg != "" {
			err = fmt.Errorf("%w (stderr: %s)", err, msg)
		}
		return stdout.n, err
	}
	if code != 0 {
		msg := stderr.text()
		if msg == "" {
			msg = "no message"
		}
		return stdout.n, fmt.Errorf("pg_dump exited with code %d: %s", code, msg)
	}
	return stdout.n, nil
}

// dumpPrefix is how the names of a job's dump files begin.
func dumpPrefix(job config.PgDumpJob) string {
	return job.Project + "-" + job.Database + "-"
}

// isDump reports whether name is a dump file of the job:
// PREFIX + timestamp + ".dump", exactly.
func isDump(name, prefix string) bool {
	stamp, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return false
	}
	stamp, ok = strings.CutSuffix(stamp, ".dump")
	if !ok {
		return false
	}
	_, err := time.Parse(dumpTimeFormat, stamp)
	return err == nil
}

// keepDumps removes all but the newest Keep dumps of the job.
func (s *Scheduler) keepDumps(job config.PgDumpJob) error {
	entries, err := os.ReadDir(job.Dir)
	if err != nil {
		return err
	}
	prefix := dumpPrefix(job)
	var dumps []string
	for _, e := range entries {
		if e.Type().IsRegular() && isDump(e.Name(), prefix) {
			dumps = append(dumps, e.Name())
		}
	}
	// The names differ only by their timestamps, which sort as text.
	slices.Sort(dumps)
	slices.Reverse(dumps)
	var errs []error
	for _, old := range dumps[min(job.Keep, len(dumps)):] {
		if err := os.Remove(filepath.Join(job.Dir, old)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		s.log.Info("old dump removed", "file", filepath.Join(job.Dir, old))
	}
	return errors.Join(errs...)
}

// removeStaleTemps removes the temporary files of the job's dumps that an
// agent which died mid-dump left behind. The caller holds the job's dump
// token, so none of them is being written.
func (s *Scheduler) removeStaleTemps(job config.PgDumpJob) {
	entries, err := os.ReadDir(job.Dir)
	if err != nil {
		return
	}
	prefix := dumpPrefix(job)
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), ".")
		if !ok || !strings.HasSuffix(name, ".tmp") {
			continue
		}
		i := strings.LastIndex(name, ".dump.")
		if i < 0 || !isDump(name[:i+len(".dump")], prefix) {
			continue
		}
		if err := os.Remove(filepath.Join(job.Dir, e.Name())); err == nil {
			s.log.Info("unfinished dump removed", "file", filepath.Join(job.Dir, e.Name()))
		}
	}
}

// syncDir flushes a directory, so a rename in it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// countingWriter counts what it passes on.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// tailBuffer is an io.Writer that keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if len(b.buf) > 2*b.max {
		b.buf = b.buf[:copy(b.buf, b.buf[len(b.buf)-b.max:])]
	}
	return len(p), nil
}

// text returns the last max bytes written, trimmed.
func (b *tailBuffer) text() string {
	out := b.buf
	if len(out) > b.max {
		out = out[len(out)-b.max:]
	}
	return strings.TrimSpace(string(out))
}

// BeforeRelease is agent.Preparer: before a release that runs pre-deploy
// hooks (migrations), it dumps every database of the project whose job
// says before_deploy. A failed dump fails the release, with nothing
// changed yet.
func (s *Scheduler) BeforeRelease(ctx context.Context, project string, hooks bool) error {
	if !hooks {
		return nil
	}
	for _, job := range s.jobs.PgDump {
		if job.Project != project || !job.BeforeDeploy {
			continue
		}
		s.log.Info("dumping before a release with pre-deploy hooks", "project", project, "database", job.Database)
		if _, err := s.Dump(ctx, job); err != nil {
			return fmt.Errorf("dump before the release: %w", err)
		}
	}
	return nil
}
