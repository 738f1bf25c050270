package api

import (
	"strings"
	"testing"
	"time"
)

// TestPrintHistoryKilledOnStop: history names, under the release, each
// container the engine killed at the end of its grace period.
func TestPrintHistoryKilledOnStop(t *testing.T) {
	var b strings.Builder
	PrintHistory(&b, "shop", []Release{{
		Number: 4, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Kind: KindRollback, Outcome: OutcomeSucceeded, Identity: "ci",
		KilledOnStop: []StopKilled{{Service: "worker", Container: "shop-worker-1", Signal: "SIGTERM", GracePeriod: 40, StoppedAfter: 44.2, During: StopDuringRollout}},
	}}, 4)
	want := "    killed on stop: worker shop-worker-1, still running 40s after SIGTERM (stop_grace_period), stopped after 44.2s, during the rollout\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("history:\n%s\nlacks:\n%s", b.String(), want)
	}
}

// TestPrintHistoryInterrupted: a release agentd did not finish says so,
// and what recovery made of it; it is never shown as in progress.
func TestPrintHistoryInterrupted(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Release
		want string
	}{
		{"recovered", Release{Number: 4, Outcome: OutcomeRolledBack, RestoredTo: 3, Interrupted: true},
			"interrupted (agentd stopped during it), recovered to release 3"},
		{"first release undone", Release{Number: 1, Outcome: OutcomeRolledBack, Interrupted: true},
			"interrupted (agentd stopped during it), recovered to no release: undone"},
		{"recovery failed", Release{Number: 4, Outcome: OutcomeFailed, Interrupted: true},
			"interrupted (agentd stopped during it), and recovery failed: an operator is needed"},
		{"rolled back, not interrupted", Release{Number: 4, Outcome: OutcomeRolledBack, RestoredTo: 3},
			"restored release 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.r.Kind, tc.r.Identity = KindDeploy, "ci"
			var b strings.Builder
			PrintHistory(&b, "shop", []Release{tc.r}, 3)
			if !strings.Contains(b.String(), tc.want) {
				t.Errorf("history lacks %q:\n%s", tc.want, b.String())
			}
			if !tc.r.Interrupted && strings.Contains(b.String(), "interrupted") {
				t.Errorf("a release that was not interrupted is shown as interrupted:\n%s", b.String())
			}
		})
	}
}

// TestPrintHistoryShipped: history names the source and the shipped
// compose file of a release.
func TestPrintHistoryShipped(t *testing.T) {
	var b strings.Builder
	PrintHistory(&b, "shop", []Release{
		{Number: 2, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Kind: KindDeploy, Outcome: OutcomeSucceeded, Identity: "ci", Source: "3f2c1a0",
			Shipped: &ComposeBundle{Files: map[string]string{"compose.yaml": "x", "nginx.conf": "y", "sub/a.yaml": "z"}}},
		{Number: 1, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Kind: KindDeploy, Outcome: OutcomeSucceeded, Identity: "ci"},
	}, 2)
	want := "by ci\n    source: 3f2c1a0\n    compose file: shipped compose.yaml (+2 files)\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("history:\n%s\nlacks:\n%s", b.String(), want)
	}
	if strings.Count(b.String(), "source:") != 1 || strings.Count(b.String(), "compose file:") != 1 {
		t.Errorf("release 1 (host file, no source) shows either:\n%s", b.String())
	}
}

func TestPrintStatusSwarm(t *testing.T) {
	var b strings.Builder
	PrintStatus(&b, []ProjectStatus{{Project: "shop", Services: []ServiceStatus{
		{Name: "web", Swarm: &SwarmService{Image: "reg/web@sha256:ab", Mode: "replicated", Replicas: 3, Running: 2,
			UpdateState: "paused", UpdateMessage: "update paused due to failure", Release: "4",
			Tasks: []TaskStatus{
				{ID: "t1", Node: "node-1", Slot: 1, State: "running", DesiredState: "running", Health: "healthy", Release: "4"},
				{ID: "t2", Node: "node-3", Slot: 2, State: "failed", DesiredState: "shutdown", Error: "task: non-zero exit (1)", Release: "4"},
			}}},
	}}})
	out := b.String()
	for _, want := range []string{
		"web", "replicated", "2/3", "paused: update paused due to failure", "reg/web@sha256:ab",
		"web.1", "node-1", "healthy", "web.2", "node-3", "failed", "shutdown", "task: non-zero exit (1)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status does not show %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "CONTAINER") {
		t.Errorf("a Swarm project's status shows the container table:\n%s", out)
	}
}
