package integration

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/testenv"
)

// latencies are request latencies taken by a paced load.
type latencies struct {
	mu     sync.Mutex
	at     []time.Time
	took   []time.Duration
	failed int
}

// load sends GETs to url from clients that keep their connections open,
// each every interval (a request that takes longer delays the next), until
// ctx ends.
func load(ctx context.Context, url string, clients int, interval time.Duration) *latencies {
	l := &latencies{}
	for range clients {
		go func() {
			c := &http.Client{Timeout: 5 * time.Second}
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				start := time.Now()
				resp, err := c.Get(url)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				l.mu.Lock()
				if err != nil || resp.StatusCode != http.StatusOK {
					l.failed++
				} else {
					l.at = append(l.at, start)
					l.took = append(l.took, time.Since(start))
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// between returns the p99 and the maximum of the requests sent in [from, to).
func (l *latencies) between(from, to time.Time) (n int, p99, most time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var in []time.Duration
	for i, at := range l.at {
		if !at.Before(from) && at.Before(to) {
			in = append(in, l.took[i])
		}
	}
	if len(in) == 0 {
		return 0, 0, 0
	}
	slices.Sort(in)
	return len(in), in[(len(in)*99-1)/100], in[len(in)-1]
}

// TestBootLoadLeavesServingFast reproduces what raised p99 tenfold during a
// rollout of the Django stack: new containers booting (imports, forks: CPU
// on every core) beside the containers that serve, on two cores. web
// computes 4 ms per request under 100 requests/s; the deploy replaces two
// workers whose boot computes on 3 threads each for 4 s. With the boot
// shield (new containers at CPU weight 2 until their gate), web's p99
// during the deploy stays within 3x its steady p99 (+10 ms for timer
// noise) and no request takes a second. The same deploy without the shield
// (rollout.boot_cpu_shares: 1024) is measured too and reported, so the
// log shows what the shield is worth on the machine that ran it.
func TestBootLoadLeavesServingFast(t *testing.T) {
	reg := testenv.StartRegistry(t)
	for _, tc := range []struct {
		name   string
		shares string
		assert bool
	}{
		{"shielded", "", true},
		{"unshielded", "rollout:\n  boot_cpu_shares: 1024\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			h := newHarness(t, `
services:
  web:
    image: $REGISTRY/bootweb:v1
    ports: ["127.0.0.1:`+port+`:8080"]
  worker:
    image: $REGISTRY/bootworker:v1
    healthcheck:
      test: ["CMD", "/testapp", "check"]
      interval: 500ms
      timeout: 2s
      retries: 3
      start_period: 60s
    deploy:
      replicas: 2
      update_config: {order: start-first, monitor: 1s}
`, options{reg: reg, extra: tc.shares})
			h.image("bootweb:v1", testenv.Image{Env: map[string]string{"VERSION": "v1", "REQUEST_CPU": "4ms"}})
			for _, v := range []string{"v1", "v2"} {
				h.image("bootworker:"+v, testenv.Image{Env: map[string]string{"VERSION": v, "BOOT_CPU": "3x4s"}})
			}
			h.start()
			h.deploy(0)
			url := "http://127.0.0.1:" + port + "/"
			httpDo(t, http.MethodGet, url, "")

			ctx, stop := context.WithCancel(t.Context())
			defer stop()
			l := load(ctx, url, 4, 40*time.Millisecond)
			steadyFrom := time.Now().Add(time.Second) // connections opened, caches warm
			time.Sleep(6 * time.Second)               // deliberate: the steady phase is time itself
			deployFrom := time.Now()
			h.deploy(0, "--image", "worker="+h.reg.Ref("bootworker:v2"))
			deployTo := time.Now()
			stop()

			n0, p99Steady, maxSteady := l.between(steadyFrom, deployFrom)
			n1, p99During, maxDuring := l.between(deployFrom, deployTo)
			l.mu.Lock()
			failed := l.failed
			l.mu.Unlock()
			t.Logf("%s: steady: %d requests, p99 %s, max %s; during the deploy (%s): %d requests, p99 %s (%.1fx steady), max %s; %d failed",
				tc.name, n0, p99Steady.Round(100*time.Microsecond), maxSteady.Round(100*time.Microsecond),
				deployTo.Sub(deployFrom).Round(100*time.Millisecond), n1, p99During.Round(100*time.Microsecond),
				float64(p99During)/float64(max(p99Steady, 1)), maxDuring.Round(100*time.Microsecond), failed)
			if n0 < 100 || n1 < 100 {
				t.Fatalf("too few requests to measure: %d steady, %d during", n0, n1)
			}
			if failed > 0 {
				t.Errorf("%d requests failed", failed)
			}
			if !tc.assert {
				return
			}
			if bound := 3*p99Steady + 10*time.Millisecond; p99During > bound {
				t.Errorf("p99 during the deploy %s > 3 x steady p99 %s + 10ms: booting containers starve the one that serves", p99During, p99Steady)
			}
			if maxDuring > time.Second {
				t.Errorf("a request took %s during the deploy", maxDuring)
			}
		})
	}
}
