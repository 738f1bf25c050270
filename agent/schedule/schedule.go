// Package schedule runs agentd's scheduled jobs on robfig/cron schedules:
// pruning the images no recorded release needs any more (always keeping
// what a rollback needs, so it works with the registry down), watching the
// live releases for containers that stop, restart or turn unhealthy, and
// dumping Postgres databases by exec of pg_dump in their service (also
// before a release that runs pre-deploy hooks, as an agent.Preparer).
//
// Every job is also a method, so agentd and the tests can run it on demand.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/robfig/cron/v3"
)

// Engine is the part of the Docker API the jobs use (*client.Client
// satisfies it).
type Engine interface {
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerInspect(ctx context.Context, containerID string) (container.InspectResponse, error)
	ImageList(ctx context.Context, options image.ListOptions) ([]image.Summary, error)
	ImageRemove(ctx context.Context, imageID string, options image.RemoveOptions) ([]image.DeleteResponse, error)
	ContainerExecCreate(ctx context.Context, containerID string, options container.ExecOptions) (container.ExecCreateResponse, error)
	ContainerExecAttach(ctx context.Context, execID string, config container.ExecAttachOptions) (types.HijackedResponse, error)
	ContainerExecInspect(ctx context.Context, execID string) (container.ExecInspect, error)
}

// History is the part of the release store the jobs read (*store.Store
// satisfies it).
type History interface {
	// History returns a project's recorded releases, newest first.
	History(project string) ([]api.Release, error)
	// Current returns the live release; ok is false before the first.
	Current(project string) (r api.Release, ok bool, err error)
}

// Alerter is told of what the watch job finds (the notifier).
type Alerter interface {
	Unhealthy(api.UnhealthyEvent)
}

// Scheduler runs the configured jobs. Its methods are safe for concurrent
// use; a job never runs twice at once (the cron skips a run while the
// previous one is still going, and an on-demand run waits for it).
type Scheduler struct {
	jobs     config.Jobs
	projects []string
	eng      Engine
	hist     History
	alert    Alerter // nil: log only
	log      *slog.Logger
	now      func() time.Time

	cron    *cron.Cron
	entries []entry
	// ctx is the context of scheduled runs; cancel ends it on Stop.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	started bool
	stopped bool

	// pruning and watching hold one token each: one run at a time.
	pruning  chan struct{}
	watching chan struct{}
	// watch is what the watch job remembers between runs, guarded by
	// watching.
	watch map[string]*watched

	dumpMu sync.Mutex
	// dumping holds a token per dir+project+database: one dump of a
	// database into a directory at a time.
	dumping map[string]chan struct{}
}

// New checks the jobs (their schedules again, and what each dump needs)
// and returns a scheduler for them; nothing runs before Start. projects
// are the configured project names; alert may be nil.
func New(jobs config.Jobs, projects []string, eng Engine, hist History, alert Alerter, log *slog.Logger) (*Scheduler, error) {
	if eng == nil || hist == nil || log == nil {
		return nil, errors.New("schedule: engine, history and logger are required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Scheduler{
		jobs:     jobs,
		projects: slices.Clone(projects),
		eng:      eng,
		hist:     hist,
		alert:    alert,
		log:      log,
		now:      time.Now,
		ctx:      ctx,
		cancel:   cancel,
		pruning:  token(),
		watching: token(),
		watch:    map[string]*watched{},
		dumping:  map[string]chan struct{}{},
	}
	// The parser is config's (cron.ParseStandard): five fields or a
	// descriptor such as @daily or "@every 15m".
	s.cron = cron.New(
		cron.WithParser(cron.NewParser(cron.Minute|cron.Hour|cron.Dom|cron.Month|cron.Dow|cron.Descriptor)),
		cron.WithLogger(cronLogger{log}),
	)
	var errs []error
	add := func(name, spec string, run func(context.Context) ([]any, error)) {
		l := cronLogger{log.With("job", name)}
		// Skip outside Recover: a run that panics still gives back its
		// token, so the next one is not skipped for ever.
		job := cron.NewChain(cron.SkipIfStillRunning(l), cron.Recover(l)).Then(cron.FuncJob(func() { s.run(name, run) }))
		id, err := s.cron.AddJob(spec, job)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: schedule %q: %w", name, spec, err))
			return
		}
		s.entries = append(s.entries, entry{id: id, name: name, spec: spec})
	}
	if j := jobs.PruneImages; j != nil {
		if j.KeepReleases < 1 {
			errs = append(errs, fmt.Errorf("prune_images: keep_releases %d: must be at least 1", j.KeepReleases))
		}
		add("prune_images", j.Schedule, func(ctx context.Context) ([]any, error) {
			removed, freed, err := s.prune(ctx)
			return []any{"removed", len(removed), "bytes", freed}, err
		})
	}
	if j := jobs.Watch; j != nil {
		add("watch", j.Schedule, func(ctx context.Context) ([]any, error) {
			events, err := s.Watch(ctx)
			return []any{"alerts", len(events)}, err
		})
	}
	for i, d := range jobs.PgDump {
		name := fmt.Sprintf("pg_dump[%d] %s/%s", i, d.Project, d.Database)
		if err := checkDumpJob(d); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		if !slices.Contains(projects, d.Project) {
			errs = append(errs, fmt.Errorf("%s: no project %q", name, d.Project))
		}
		if d.Schedule == "" {
			continue // before_deploy only
		}
		add(name, d.Schedule, func(ctx context.Context) ([]any, error) {
			path, err := s.Dump(ctx, d)
			return []any{"file", path}, err
		})
	}
	if err := errors.Join(errs...); err != nil {
		cancel()
		return nil, fmt.Errorf("schedule: %w", err)
	}
	return s, nil
}

// Start runs the jobs on their schedules. Starting twice, or after Stop,
// does nothing.
func (s *Scheduler) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.stopped {
		return
	}
	s.started = true
	s.cron.Start()
	for _, e := range s.entries {
		s.log.Info("job scheduled", "job", e.name, "schedule", e.spec, "next", s.cron.Entry(e.id).Next)
	}
}

// Stop stops scheduling, cancels the context of the runs under way and
// waits for them to return, or for ctx to end (then it returns ctx's
// error and the runs finish on their own).
func (s *Scheduler) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	done := s.cron.Stop()
	s.cancel()
	select {
	case <-done.Done():
		s.log.Info("scheduler stopped")
		return nil
	case <-ctx.Done():
		return fmt.Errorf("schedule: stop: running jobs did not return: %w", ctx.Err())
	}
}

// run is one scheduled run of a job: logged when it starts and ends, with
// what it did.
func (s *Scheduler) run(name string, job func(context.Context) ([]any, error)) {
	if s.ctx.Err() != nil {
		return // stopping: a run that starts now would be cancelled at once
	}
	start := time.Now()
	s.log.Info("job started", "job", name)
	attrs, err := job(s.ctx)
	attrs = append([]any{"job", name, "duration", time.Since(start).Round(time.Millisecond)}, attrs...)
	if err != nil {
		s.log.Error("job failed", append(attrs, "err", err)...)
		return
	}
	s.log.Info("job finished", attrs...)
}

// entry is one scheduled job.
type entry struct {
	id   cron.EntryID
	name string
	spec string
}

// token returns a one-token semaphore, the token in it.
func token() chan struct{} {
	ch := make(chan struct{}, 1)
	ch <- struct{}{}
	return ch
}

// acquire takes the token of sem, or fails when ctx ends first.
func acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case <-sem:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cronLogger passes robfig/cron's messages to slog: its chatter (wake,
// schedule, run) at debug, a skipped run at warn, errors (a recovered
// panic) at error.
type cronLogger struct{ log *slog.Logger }

func (l cronLogger) Info(msg string, kv ...any) {
	if msg == "skip" {
		l.log.Warn("job still running from its previous schedule: this run is skipped")
		return
	}
	l.log.Debug("cron: "+msg, kv...)
}

func (l cronLogger) Error(err error, msg string, kv ...any) {
	l.log.Error("cron: "+msg, append(kv, "err", err)...)
}
