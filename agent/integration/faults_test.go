package integration

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
)

// faultStack is the compose file of most fault rows: one web replica,
// start-first.
const faultStack = `
services:
  web:
    image: $REGISTRY/web:v1
    deploy:
      update_config: {monitor: 1s}
`

// TestFaults is the fault injection of the trust suite: agentd is killed
// with SIGKILL at each phase of a release and started again on the same
// config and state directory. The phase is known from the deploy's own
// event stream (agentctl deploy --json): agentd is killed as soon as the
// event that opens the phase is read, and each phase is held open by the
// test app (a slow health check, a hook that sleeps, a long monitor
// window), so the kill lands inside it. After the restart:
//
//   - one consistent release runs: the one before (its very containers),
//     none when the release killed was the project's first, or the new one
//     when it had committed; a deploy of the live release's images finds
//     nothing to change;
//   - no lock is held: that deploy is accepted, and status shows no deploy
//     in progress;
//   - history says what happened: an interrupted release is recorded as
//     interrupted and recovered to the release before it, never left in
//     progress;
//   - no container is left renamed aside (NAME-retired-ID), no hook's
//     one-off container is left, and every service has its replicas,
//     running and healthy, with the compose labels.
//
// One row also kills the agentd started after the first kill, during its
// recovery.
func TestFaults(t *testing.T) {
	docker := testenv.Docker(t)
	reg := testenv.StartRegistry(t)
	digests := map[string]string{}
	for tag, img := range map[string]testenv.Image{
		"v1": {Healthcheck: true, Env: map[string]string{"VERSION": "v1"}},
		// Release 1 of the mid-rollback row: its health check passes only
		// after 4s, so the rollback's gate on it is still waiting when
		// agentd is killed.
		"v1slow": {Healthcheck: true, Env: map[string]string{"VERSION": "v1", "HEALTHY_AFTER": "4s"}},
		"v2":     {Healthcheck: true, Env: map[string]string{"VERSION": "v2"}},
		"slow":   {Healthcheck: true, Env: map[string]string{"VERSION": "slow", "HEALTHY_AFTER": "10m"}},
		// Healthy at once, dead 8s later: in the monitor window.
		"crash": {Healthcheck: true, Env: map[string]string{"VERSION": "crash", "EXIT_AFTER": "8s", "EXIT_CODE": "3"}},
	} {
		digests[tag] = testenv.BuildAndPush(t, docker, reg.Ref("web:"+tag), img)
	}
	withWeb := func(extra string) string { return faultStack + extra }

	for _, tc := range []struct {
		name string
		// base is the web tag of release 1, first its compose file
		// (default faultStack). With no base, the release killed is the
		// project's first.
		base, first string
		// compose is the compose file of the release killed (default
		// first), next its web tag.
		compose, next string
		replicas      int // of web (default 1)
		// at reports, from the events read so far, the last one newest,
		// that the phase is open; then, if set, is polled on the engine
		// after that until it holds. agentd is killed then.
		at   func(seen []api.Event) bool
		then func(h *harness) bool
		// again, if set, is the phase of the recovery in which the
		// restarted agentd is killed too (polled on the engine).
		again func(h *harness) bool
		// committed: release 2 was live before the kill, so it stays.
		committed bool
	}{
		{
			// The release is on record (in progress) and the first change
			// is being made: agentd dies within a few milliseconds of
			// recording it, before or at the first rename.
			name: "journalled", base: "v1", compose: faultStack, next: "v2",
			at: lastSays("", "release 2 replaces release 1"),
		},
		{
			// The hook's container is running (a migration, say).
			name: "in a pre-deploy hook", base: "v1", next: "v2",
			compose: withWeb(`    x-berth:
      pre_deploy:
        - command: ["sleep", "10m"]
`),
			at:   lastSays("web", "running pre-deploy hook"),
			then: running("-web-predeploy-2-1"),
		},
		{
			// The old container is renamed aside and agentd has just asked
			// the engine to create the new one under the old one's name:
			// the engine completes the create after agentd is gone, while
			// the new agentd recovers (without waiting for the engine to
			// settle, recovery failed 2 runs in 10 here).
			name: "new container being created", base: "v1", compose: faultStack, next: "slow",
			at: lastSays("web", "creating"),
		},
		{
			// The new container is up beside the old one, which was
			// renamed aside, and is being gated.
			name: "mid-switch", base: "v1", compose: faultStack, next: "slow",
			at: lastSays("web", "waiting for 1 container(s) to be ready"),
		},
		{
			// Two replicas, one at a time: the first is switched (the old
			// one stopped and kept aside), the second's new container is
			// up beside its old one and being gated.
			name: "mid-switch, second of two replicas", base: "v1", next: "v2", replicas: 2,
			first: strings.Replace(faultStack, "    deploy:\n", "    deploy:\n      replicas: 2\n", 1),
			at: func(seen []api.Event) bool {
				n := 0
				for _, e := range seen {
					if e.Service == "web" && strings.Contains(e.Message, "waiting for 1 container(s) to be ready") {
						n++
					}
				}
				return n == 2 && lastSays("web", "waiting for 1 container(s)")(seen)
			},
		},
		{
			// The project's first release, mid-switch: there is no release
			// to go back to, so it is undone, leaving nothing.
			name: "first release, mid-switch", next: "slow",
			at: lastSays("web", "waiting for 1 container(s) to be ready"),
		},
		{
			// Switched: the old container is stopped and kept aside.
			name: "in the monitor window", base: "v1", next: "v2",
			compose: strings.Replace(faultStack, "monitor: 1s", "monitor: 10m", 1),
			at:      lastSays("", "monitoring 1 new container(s)"),
		},
		{
			// The new container died in the monitor window; the old one
			// is started again and gated.
			name: "mid-rollback", base: "v1slow", next: "crash",
			compose: strings.Replace(faultStack, "monitor: 1s", "monitor: 10m", 1),
			at: func(seen []api.Event) bool {
				return lastSays("web", "waiting for 1 container(s) to be ready")(seen) &&
					said(seen, "", "rolling back to release 1")
			},
		},
		{
			// As in the monitor window, and the agentd started after it
			// is killed too, while its recovery gates the old container
			// it started again (still renamed aside; its health check
			// passes only after 4s). The next recovery finishes the job.
			name: "in the monitor window, then during recovery", base: "v1slow", next: "v2",
			compose: strings.Replace(faultStack, "monitor: 1s", "monitor: 10m", 1),
			at:      lastSays("", "monitoring 1 new container(s)"),
			again: func(h *harness) bool {
				for name, c := range h.containers() {
					if strings.HasPrefix(name, h.project+"-web-1-retired-") && c.State == "running" {
						return true
					}
				}
				return false
			},
		},
		{
			// Committed: the release is live and agentd is removing the
			// old container it had kept aside. Recovery finishes that.
			name: "committed, removing the old container", base: "v1", next: "v2", committed: true,
			at: func(seen []api.Event) bool {
				e := seen[len(seen)-1]
				return lastSays("web", "removing")(seen) && strings.Contains(e.Message, "-retired-")
			},
		},
		{
			// Committed, and running a post-deploy hook: the new release
			// stays.
			name: "committed, in a post-deploy hook", base: "v1", next: "v2", committed: true,
			compose: withWeb(`    x-berth:
      post_deploy:
        - command: ["sleep", "10m"]
`),
			at:   lastSays("web", "running post-deploy hook"),
			then: running("-web-postdeploy-2-1"),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			replicas := max(tc.replicas, 1)
			first := cmp.Or(tc.first, faultStack)
			h := newHarness(t, first, options{reg: reg})
			h.start()
			// The interrupted release, and the one live after recovery
			// (0: none).
			interrupted, live, liveTag := 1, 0, ""
			if tc.base != "" {
				h.deploy(0, "--image", "web="+reg.Ref("web:"+tc.base))
				interrupted, live, liveTag = 2, 1, tc.base
			}
			if tc.committed {
				live, liveTag = interrupted, tc.next
			}
			before := h.ids()

			h.writeCompose(cmp.Or(tc.compose, first))
			seen, code := h.deployKilledAt(tc.at, tc.then, "--image", "web="+reg.Ref("web:"+tc.next))
			if code != api.ExitBroken {
				t.Errorf("the client of the killed deploy exited %d, want %d", code, api.ExitBroken)
			}
			killed, killedLog := time.Now(), h.agentLog.String()
			if tc.again != nil {
				h.launch()
				h.pollUntil(tc.again)
				h.kill()
				killedLog += "\n(restarted, and killed again during recovery)\n" + h.agentLog.String()
				t.Logf("killed again %v later, during recovery", time.Since(killed).Round(time.Millisecond))
			}
			h.start()
			t.Logf("killed %v into the row, after %q; ready again %v later", killed.Sub(start).Round(time.Millisecond),
				seen[len(seen)-1].Message, time.Since(killed).Round(time.Millisecond))
			defer func() {
				if t.Failed() {
					t.Logf("the killed agentd's log:\n%s\nthe new agentd's log:\n%s", killedLog, h.agentLog)
				}
			}()

			if live == 0 {
				// Undone over nothing: nothing is left, networks included.
				h.checkConsistent(nil)
				nets, err := h.docker.NetworkList(t.Context(), network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+h.project))})
				if err != nil || len(nets) != 0 {
					t.Errorf("networks left after the first release was undone: %d (%v)", len(nets), err)
				}
			} else {
				h.checkConsistent(map[string]int{"web": replicas})
			}
			for name, c := range h.containers() {
				if !strings.Contains(c.Image, digests[liveTag]) {
					t.Errorf("%s runs %s, want %s (%s)", name, c.Image, liveTag, digests[liveTag])
				}
			}
			if !tc.committed {
				h.sameIDs(before, "after recovery")
			}

			st := h.status()
			if (live == 0) != (st.Current == nil) || (st.Current != nil && st.Current.Number != live) || st.Deploying != nil || st.Locked != nil {
				t.Errorf("status after recovery: %+v, want release %d live (0: none) and no lock", st, live)
			}
			var rec *api.Release
			hist := h.history()
			for i := range hist {
				if hist[i].Number == interrupted {
					rec = &hist[i]
				}
			}
			switch {
			case rec == nil:
				t.Errorf("release %d is not in the history: %+v", interrupted, hist)
			case tc.committed:
				if rec.Outcome != api.OutcomeSucceeded || rec.Interrupted {
					t.Errorf("release %d (committed) after recovery: %+v", interrupted, *rec)
				}
			default:
				if rec.Outcome != api.OutcomeRolledBack || !rec.Interrupted || rec.RestoredTo != live || !strings.Contains(rec.Error, "agentd stopped") {
					t.Errorf("release %d after recovery: outcome %s, interrupted %v, restored to %d, error %q; want rolled-back, interrupted, %d",
						interrupted, rec.Outcome, rec.Interrupted, rec.RestoredTo, rec.Error, live)
				}
				want := fmt.Sprintf("interrupted (agentd stopped during it), recovered to release %d", live)
				if live == 0 {
					want = "interrupted (agentd stopped during it), recovered to no release: undone"
				}
				if out, code := h.ctl("history", h.project); code != 0 || !strings.Contains(out, want) {
					t.Errorf("agentctl history (exit %d) does not say %q:\n%s", code, want, out)
				}
			}

			// The lock is free, and what runs is exactly the live release.
			if live == 0 {
				h.deploy(0, "--image", "web="+reg.Ref("web:v1"))
			} else if out := h.deploy(0, "--image", "web="+reg.Ref("web:"+liveTag)); !strings.Contains(out, "nothing to change") {
				t.Errorf("a deploy of the live release after recovery changed something:\n%s", out)
			}
			t.Logf("row took %v", time.Since(start).Round(time.Millisecond))
		})
	}
}

// lastSays matches when the newest event is progress of service (""
// for the project) whose message contains text.
func lastSays(service, text string) func([]api.Event) bool {
	return func(seen []api.Event) bool {
		return len(seen) > 0 && said(seen[len(seen)-1:], service, text)
	}
}

// running matches when the project's container named PROJECT+suffix runs.
func running(suffix string) func(*harness) bool {
	return func(h *harness) bool {
		c, ok := h.containers()[h.project+suffix]
		return ok && c.State == "running"
	}
}

// said reports whether any of the events is progress of service whose
// message contains text.
func said(seen []api.Event, service, text string) bool {
	for _, e := range seen {
		if e.Type == api.EventProgress && e.Service == service && strings.Contains(e.Message, text) {
			return true
		}
	}
	return false
}

// deployKilledAt runs agentctl deploy --json, reads its events as they
// come, and kills agentd with SIGKILL as soon as at says the phase is
// open (and then, if set, holds on the engine). It returns the events
// read up to the kill and the client's exit code. A deploy that ends
// without reaching the phase fails the test.
func (h *harness) deployKilledAt(at func([]api.Event) bool, then func(*harness) bool, args ...string) ([]api.Event, int) {
	h.t.Helper()
	bin := testenv.Binary(h.t, "./cmd/agentctl")
	cmd := exec.CommandContext(h.t.Context(), bin, append([]string{"--socket", h.socket, "deploy", h.project, "--json"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	var seen, all []api.Event
	reached := false
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var e api.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			h.t.Fatalf("event %q: %v", sc.Text(), err)
		}
		all = append(all, e)
		if !reached && at(all) {
			if then != nil {
				h.pollUntil(then)
			}
			reached = true
			seen = all
			h.kill()
		}
	}
	err = cmd.Wait()
	if !reached {
		h.t.Fatalf("the deploy ended before the phase (%v, %s); its events:\n%s\nagentd log:\n%s", err, stderr.String(), eventLines(all), h.agentLog)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return seen, 0
	case errors.As(err, &ee):
		return seen, ee.ExitCode()
	default:
		h.t.Fatalf("agentctl deploy: %v", err)
		return nil, -1
	}
}

// pollUntil polls cond every 10ms (a phase may last little longer than
// that) until it holds; it fails the test after 30s.
func (h *harness) pollUntil(cond func(*harness) bool) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 30*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond(h) {
		select {
		case <-ctx.Done():
			h.t.Fatal("the phase was not reached on the engine within 30s")
		case <-tick.C:
		}
	}
}

func eventLines(evs []api.Event) string {
	var b strings.Builder
	for _, e := range evs {
		api.PrintEvent(&b, e)
	}
	return b.String()
}

// checkConsistent checks the project's containers on the engine: none
// renamed aside, no one-off (a hook's) left, and for each service of
// replicas exactly that many, running and healthy, with the compose
// labels.
func (h *harness) checkConsistent(replicas map[string]int) {
	h.t.Helper()
	count := map[string]int{}
	for name, c := range h.containers() {
		if strings.Contains(name, "-retired-") {
			h.t.Errorf("container %s (%s) is still renamed aside", name, c.State)
		}
		if !strings.EqualFold(c.Labels["com.docker.compose.oneoff"], "false") {
			h.t.Errorf("one-off container %s (%s) is left: %s", name, c.State, c.Command)
			continue
		}
		for _, l := range []string{"com.docker.compose.project", "com.docker.compose.service", "com.docker.compose.container-number", "com.docker.compose.config-hash"} {
			if c.Labels[l] == "" {
				h.t.Errorf("container %s has no %s label", name, l)
			}
		}
		if c.State != "running" {
			h.t.Errorf("container %s is %s", name, c.State)
		}
		// Every test image has a health check: a release put back is
		// ready, not merely running.
		if in, err := h.docker.ContainerInspect(h.t.Context(), c.ID); err != nil {
			h.t.Errorf("inspect %s: %v", name, err)
		} else if in.State.Health == nil || in.State.Health.Status != "healthy" {
			h.t.Errorf("container %s is not healthy: %s", name, c.Status)
		}
		count[c.Labels["com.docker.compose.service"]]++
	}
	for svc, n := range replicas {
		if count[svc] != n {
			h.t.Errorf("service %s has %d container(s), want %d", svc, count[svc], n)
		}
	}
	for svc, n := range count {
		if _, ok := replicas[svc]; !ok {
			h.t.Errorf("service %s has %d container(s), want none", svc, n)
		}
	}
}
