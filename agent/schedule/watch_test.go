package schedule

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/internal/fakeengine"
)

// watchRun runs the watch job and returns the names of the containers it
// reported, sorted, checking that the alerter heard the same.
func watchRun(t *testing.T, s *Scheduler, a *alerts) ([]string, []api.UnhealthyEvent) {
	t.Helper()
	a.mu.Lock()
	a.events = nil
	a.mu.Unlock()
	events, err := s.Watch(t.Context())
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.events) != len(events) {
		t.Errorf("alerter heard %d events, watch returned %d", len(a.events), len(events))
	}
	var names []string
	for _, ev := range events {
		names = append(names, ev.Container)
	}
	slices.Sort(names)
	return names, events
}

func TestWatch(t *testing.T) {
	eng, hist := fakeengine.New(), newFakeHistory()
	hist.record("app", 7, api.OutcomeSucceeded, true, map[string]string{"web": digest("1")})
	hist.record("idle", 1, api.OutcomeFailed, false, nil) // no live release: not watched

	web := service(eng, "app", "web", 1, 7, container.StateRunning)
	eng.Update(web, func(in *container.InspectResponse) { setHealth(in, container.Healthy, "") })
	worker := service(eng, "app", "worker", 1, 6, container.StateExited)
	eng.Update(worker, func(in *container.InspectResponse) { in.State.ExitCode = 137 })
	api1 := service(eng, "app", "api", 1, 7, container.StateRunning)
	eng.Update(api1, func(in *container.InspectResponse) { setHealth(in, container.Unhealthy, "GET /healthz: 500\n") })
	db := service(eng, "app", "db", 1, 7, container.StateRunning)
	eng.Update(db, func(in *container.InspectResponse) { in.RestartCount = 3 }) // before the first run: not news
	hook := service(eng, "app", "migrate", 1, 7, container.StateExited)
	eng.Update(hook, func(in *container.InspectResponse) {
		in.Config.Labels[compose.LabelOneoff] = "True"
		in.State.ExitCode = 1
	})
	service(eng, "idle", "web", 1, 1, container.StateExited)

	a := &alerts{}
	log, logs := testLogger(t)
	s, err := New(config.Jobs{Watch: &config.WatchJob{Schedule: "@every 1m"}}, []string{"app", "idle"}, eng, hist, a, log)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return at }

	names, events := watchRun(t, s, a)
	if want := []string{"app-api-1", "app-worker-1"}; !slices.Equal(names, want) {
		t.Fatalf("first run reported %v, want %v", names, want)
	}
	for _, ev := range events {
		switch ev.Container {
		case "app-worker-1":
			want := api.UnhealthyEvent{Project: "app", Release: 6, Service: "worker", Container: "app-worker-1",
				State: "exited", Restarts: 0, Detail: "exited with code 137", Time: at}
			if ev != want {
				t.Errorf("worker event:\n got %+v\nwant %+v", ev, want)
			}
		case "app-api-1":
			if ev.Release != 7 || ev.Service != "api" || ev.State != "running" || ev.Health != "unhealthy" ||
				ev.Detail != "health check failing: GET /healthz: 500" {
				t.Errorf("api event: %+v", ev)
			}
		}
	}
	if !strings.Contains(logs.String(), "level=WARN msg=\"container unhealthy\" project=app release=6 service=worker") {
		t.Errorf("the worker's event is not logged at warn")
	}

	// Same states: nothing new.
	if names, _ := watchRun(t, s, a); len(names) != 0 {
		t.Errorf("second run reported %v again", names)
	}

	// db restarts; the worker is restarted by hand and runs.
	eng.Update(db, func(in *container.InspectResponse) { in.RestartCount = 5 })
	eng.Update(worker, func(in *container.InspectResponse) { setStatus(in, container.StateRunning); in.State.ExitCode = 0 })
	names, events = watchRun(t, s, a)
	if want := []string{"app-db-1"}; !slices.Equal(names, want) {
		t.Fatalf("after db restarts: reported %v, want %v", names, want)
	}
	if ev := events[0]; ev.Restarts != 5 || ev.Detail != "restarted 2 time(s) since the last check" || ev.State != "running" {
		t.Errorf("db event: %+v", ev)
	}

	// db settles (no restart since); the worker fails again: reported again.
	eng.Update(worker, func(in *container.InspectResponse) { setStatus(in, container.StateRestarting); in.State.ExitCode = 2 })
	names, events = watchRun(t, s, a)
	if want := []string{"app-worker-1"}; !slices.Equal(names, want) {
		t.Fatalf("after the worker failed again: reported %v, want %v", names, want)
	}
	if d := events[0].Detail; d != "restarting (last exit code 2)" {
		t.Errorf("worker detail %q", d)
	}
	// db restarts again after a quiet run: news again.
	eng.Update(db, func(in *container.InspectResponse) { in.RestartCount = 6 })
	if names, _ := watchRun(t, s, a); !slices.Equal(names, []string{"app-db-1"}) {
		t.Errorf("db restarted after recovering: reported %v, want it", names)
	}
	// The worker's state changes from restarting to exited: a new state.
	eng.Update(worker, func(in *container.InspectResponse) { setStatus(in, container.StateExited) })
	if names, _ := watchRun(t, s, a); !slices.Equal(names, []string{"app-worker-1"}) {
		t.Errorf("worker restarting -> exited: reported %v, want it", names)
	}

	// A removed container is forgotten.
	if err := eng.ContainerRemove(t.Context(), api1, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	watchRun(t, s, a)
	if _, ok := s.watch[api1]; ok {
		t.Error("the removed container is still remembered")
	}
	for id, w := range s.watch {
		if w.project != "app" {
			t.Errorf("container %s of project %s remembered", id, w.project)
		}
	}
}

func TestWatchSkipsDeployInProgress(t *testing.T) {
	eng, hist := fakeengine.New(), newFakeHistory()
	hist.record("app", 1, api.OutcomeSucceeded, true, map[string]string{"web": digest("1")})
	service(eng, "app", "web", 1, 1, container.StateExited)
	hist.record("app", 2, api.OutcomeInProgress, false, map[string]string{"web": digest("2")})

	a := &alerts{}
	log, _ := testLogger(t)
	s, err := New(config.Jobs{}, []string{"app"}, eng, hist, a, log)
	if err != nil {
		t.Fatal(err)
	}
	if names, _ := watchRun(t, s, a); len(names) != 0 {
		t.Errorf("during a deploy: reported %v", names)
	}
	// The deploy ends; the container is still down.
	hist.record("app", 3, api.OutcomeSucceeded, true, nil)
	if names, _ := watchRun(t, s, a); !slices.Equal(names, []string{"app-web-1"}) {
		t.Errorf("after the deploy: reported %v, want app-web-1", names)
	}
}

func TestWatchWithoutAlerter(t *testing.T) {
	eng, hist := fakeengine.New(), newFakeHistory()
	hist.record("app", 1, api.OutcomeSucceeded, true, nil)
	service(eng, "app", "web", 1, 1, container.StateDead)
	log, _ := testLogger(t)
	s, err := New(config.Jobs{}, []string{"app"}, eng, hist, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	events, err := s.Watch(t.Context())
	if err != nil || len(events) != 1 || events[0].Detail != "dead" {
		t.Errorf("events %+v, err %v; want one for the dead container", events, err)
	}
}
