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
