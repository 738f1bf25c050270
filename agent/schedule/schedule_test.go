package schedule

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/internal/fakeengine"
)

func TestNewChecksJobs(t *testing.T) {
	log, _ := testLogger(t)
	good := config.Jobs{
		PruneImages: &config.PruneJob{Schedule: "0 3 * * *", KeepReleases: 3},
		Watch:       &config.WatchJob{Schedule: "@every 15m"},
		PgDump: []config.PgDumpJob{
			{Project: "app", Service: "db", Database: "app", User: "app", Dir: "/var/lib/berth/dumps/app", Keep: 7, Schedule: "@daily"},
			{Project: "app", Service: "db", Database: "app", User: "app", Dir: "/var/lib/berth/dumps/app", Keep: 7, BeforeDeploy: true},
		},
	}
	s, err := New(good, []string{"app"}, fakeengine.New(), newFakeHistory(), nil, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if n := len(s.entries); n != 3 {
		t.Errorf("%d jobs scheduled, want 3 (the before_deploy-only dump has no schedule)", n)
	}

	bad := config.Jobs{
		PruneImages: &config.PruneJob{Schedule: "0 3 * *", KeepReleases: 0},
		Watch:       &config.WatchJob{Schedule: "every 15 minutes"},
		PgDump: []config.PgDumpJob{
			{Project: "nope", Service: "db", Database: "app", User: "app", Dir: "/tmp", Keep: 7, Schedule: "@fortnightly"},
		},
	}
	_, err = New(bad, []string{"app"}, fakeengine.New(), newFakeHistory(), nil, log)
	if err == nil {
		t.Fatal("New with bad jobs: want an error")
	}
	for _, want := range []string{`prune_images: schedule "0 3 * *"`, "keep_releases 0", `watch: schedule "every 15 minutes"`,
		`pg_dump[0] nope/app: schedule "@fortnightly"`, `no project "nope"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

// blockingPrune returns a scheduler whose prune job runs every second and
// blocks in ImageList until block returns; entered receives the run's
// context.
func blockingPrune(t *testing.T, block func(ctx context.Context) error) (*Scheduler, chan context.Context, *logBuffer) {
	t.Helper()
	eng := fakeengine.New()
	entered := make(chan context.Context, 10)
	eng.OnImageList(func(ctx context.Context) error {
		entered <- ctx
		return block(ctx)
	})
	log, logs := testLogger(t)
	s, err := New(config.Jobs{PruneImages: &config.PruneJob{Schedule: "@every 1s", KeepReleases: 1}},
		[]string{"app"}, eng, newFakeHistory(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	return s, entered, logs
}

func waitEntered(t *testing.T, entered chan context.Context) context.Context {
	t.Helper()
	select {
	case ctx := <-entered:
		return ctx
	case <-time.After(10 * time.Second):
		t.Fatal("the scheduled job did not run within 10s")
		return nil
	}
}

func TestStartStopCancelsAndWaits(t *testing.T) {
	returned := make(chan struct{})
	s, entered, logs := blockingPrune(t, func(ctx context.Context) error {
		<-ctx.Done()
		// Slow to wind down: Stop must wait for it.
		timer := time.NewTimer(100 * time.Millisecond)
		defer timer.Stop()
		<-timer.C
		close(returned)
		return ctx.Err()
	})
	s.Start()
	s.Start() // twice: no second cron
	jobCtx := waitEntered(t, entered)
	if jobCtx.Err() != nil {
		t.Fatal("the job's context is done before Stop")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-returned:
	default:
		t.Error("Stop returned before the running job")
	}
	if !errors.Is(jobCtx.Err(), context.Canceled) {
		t.Errorf("job context: %v, want cancelled", jobCtx.Err())
	}
	out := logs.String()
	for _, want := range []string{`msg="job scheduled" job=prune_images schedule="@every 1s"`, `msg="job started" job=prune_images`,
		`msg="job failed" job=prune_images`, "context canceled", `msg="scheduler stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log does not say %s", want)
		}
	}
	// Started after Stop: nothing runs.
	s.Start()
	select {
	case <-entered:
		t.Error("a job ran after Stop")
	case <-time.After(1500 * time.Millisecond):
	}
}

func TestStopGivesUpAtDeadline(t *testing.T) {
	release := make(chan struct{})
	done := make(chan struct{})
	s, entered, _ := blockingPrune(t, func(context.Context) error {
		defer close(done)
		<-release // deaf to its context
		return nil
	})
	s.Start()
	waitEntered(t, entered)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := s.Stop(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop = %v, want the deadline", err)
	}
	close(release)
	<-done
}

func TestStopBeforeStart(t *testing.T) {
	log, _ := testLogger(t)
	s, err := New(config.Jobs{Watch: &config.WatchJob{Schedule: "@hourly"}}, nil, fakeengine.New(), newFakeHistory(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(t.Context()); err != nil {
		t.Errorf("Stop before Start: %v", err)
	}
}
