package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
)

var t0 = time.Date(2026, 11, 30, 7, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func TestParseRequests(t *testing.T) {
	in := "2026-11-30T07:00:01.250000Z\tGET /version\t200\t3.125ms\tok\n" +
		"2026-11-30T07:00:02.000000Z\tPOST /orders/\terror\t1500.000ms\tread: connection reset by peer\n"
	got, err := parseRequests(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d requests, want 2", len(got))
	}
	if !got[0].Start.Equal(at(1.25)) || got[0].Latency != 3125*time.Microsecond || !got[0].OK || got[0].Kind != "GET /version" {
		t.Errorf("first request = %+v", got[0])
	}
	if got[1].OK || got[1].Status != "error" || got[1].Latency != 1500*time.Millisecond || got[1].Error != "read: connection reset by peer" {
		t.Errorf("second request = %+v", got[1])
	}
	for _, bad := range []string{"2026-11-30T07:00:01.250000Z\tGET /version\t200\t3.125\tok\n", "nope\n", "x\ty\tz\t1ms\tok\n"} {
		if _, err := parseRequests(strings.NewReader(bad)); err == nil {
			t.Errorf("parseRequests(%q): no error", bad)
		}
	}
}

func TestPhases(t *testing.T) {
	p, err := parsePhases(strings.NewReader("deploy_start 1796022000.500000\ndeploy_end 1796022010.250000\n"))
	if err != nil {
		t.Fatal(err)
	}
	a, b, err := p.span("deploy_start", "deploy_end")
	if err != nil || b.Sub(a) != 9750*time.Millisecond {
		t.Errorf("span = %v, %v", b.Sub(a), err)
	}
	if _, _, err := p.span("deploy_start", "noop_end"); err == nil {
		t.Error("a span to an unmarked phase: no error")
	}
}

func TestWindowAndPercentile(t *testing.T) {
	var reqs []Request
	for i := 1; i <= 100; i++ { // 1..100 ms, one every 10 ms from t0
		reqs = append(reqs, Request{Start: at(float64(i) / 100), Latency: time.Duration(i) * time.Millisecond, OK: i != 50})
	}
	reqs = append(reqs, Request{Start: at(5), Latency: 2 * time.Second, OK: true}) // outside
	w := window(reqs, at(0), at(1.005))
	if w.Sent != 100 || w.Failed != 1 || w.P50 != 50*time.Millisecond || w.P99 != 99*time.Millisecond || w.Max != 100*time.Millisecond || w.Over1s != 0 {
		t.Errorf("window = %+v", w)
	}
	w = window(reqs, at(1.005), at(10))
	if w.Sent != 1 || w.Over1s != 1 || w.P99 != 2*time.Second {
		t.Errorf("window of the last = %+v", w)
	}
	if (window(nil, at(0), at(1)) != Window{}) {
		t.Error("an empty window is not zero")
	}
}

func TestSpread(t *testing.T) {
	s := spread([]float64{3, 1, math.NaN(), 2})
	if s.Median != 2 || s.Min != 1 || s.Max != 3 || s.N != 3 {
		t.Errorf("spread = %+v", s)
	}
	if s := spread([]float64{4, 1, 2, 3}); s.Median != 2.5 {
		t.Errorf("median of four = %v, want 2.5", s.Median)
	}
	if s := spread([]float64{math.NaN()}); s.N != 0 || s.format(1, " s") != "n/a" {
		t.Errorf("spread of nothing = %+v %q", s, s.format(1, " s"))
	}
	if got := spread([]float64{1.25, 1.5, 2}).format(1, " s"); got != "1.5 s (1.2-2.0)" && got != "1.5 s (1.3-2.0)" {
		t.Errorf("format = %q", got)
	}
}

const composeYAML = `
x-app: &app
  image: web
  depends_on:
    db: {condition: service_healthy}
services:
  web:
    <<: *app
  worker:
    <<: *app
    depends_on:
      db: {condition: service_healthy}
      web: {condition: service_started}
  beat:
    <<: *app
    depends_on: [worker]
  db:
    image: postgres
  nginx:
    image: nginx
    depends_on: [web]
`

func TestComposeDepsAndLongestChain(t *testing.T) {
	deps, err := composeDeps(strings.NewReader(composeYAML))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(deps["worker"], ","); got != "db,web" {
		t.Errorf("worker depends on %q", got)
	}
	if got := strings.Join(deps["web"], ","); got != "db" {
		t.Errorf("web depends on %q (the merged x-app's depends_on)", got)
	}
	dur := map[string]time.Duration{"db": 1 * time.Second, "web": 10 * time.Second, "worker": 5 * time.Second, "beat": 2 * time.Second, "nginx": 9 * time.Second}
	total, path, err := longestChain(deps, dur)
	if err != nil || total != 20*time.Second || strings.Join(path, ">") != "db>web>nginx" {
		t.Errorf("longest chain = %v %v %v, want 20s db>web>nginx", total, path, err)
	}
	dur["beat"] = 5 * time.Second // db web worker beat = 21s
	if total, path, _ := longestChain(deps, dur); total != 21*time.Second || strings.Join(path, ">") != "db>web>worker>beat" {
		t.Errorf("longest chain = %v %v", total, path)
	}
	deps["db"] = []string{"beat"}
	if _, _, err := longestChain(deps, dur); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("a cycle: err = %v", err)
	}
	if _, err := composeDeps(strings.NewReader("services:\n  a:\n    depends_on: [b]\n")); err == nil {
		t.Error("a dependency on a service that is not there: no error")
	}
}

func ev(s float64, svc, msg string) Event {
	return Event{Time: at(s), Type: "progress", Service: svc, Message: msg}
}

// stepEv is the event of a step that began at start and took secs.
func stepEv(start, secs float64, svc, kind string) Event {
	end := start + secs
	return Event{Time: at(end), Type: "step", Service: svc, Message: "step " + kind,
		Step: &api.Step{Kind: kind, Service: svc, State: "done", Started: at(start), Seconds: secs}}
}

func events() []Event {
	one := 1
	return []Event{
		ev(0, "", "loading compose.yaml"),
		ev(0.5, "web", "pulled reg/web@sha256:aa"), // before the apply: not the rollout
		{Time: at(1), Type: "plan", Message: "plan"},
		ev(2, "", "release 2 replaces release 1: changing web, worker"),
		ev(2.5, "web", "running migrate"),
		stepEv(2.5, 5, "web", "hook"),
		ev(10, "web", "ready"),
		stepEv(7.5, 3, "web", "gate"),
		ev(12, "nginx", "reloaded nginx (for web)"),
		stepEv(10.5, 2.5, "web", "switch"),
		ev(13, "worker", "creating worker-1"),
		stepEv(13, 1, "worker", "create"),
		ev(20, "worker", "ready"),
		stepEv(14, 7, "worker", "gate"),
		{Time: at(20.5), Type: "step", Service: "worker", Step: &api.Step{Kind: "stop", Service: "worker", State: "skipped"}},
		ev(21, "", "monitoring 4 new container(s) for 5s"),
		ev(26, "", "release 2 failed: worker exited"),
		ev(27, "worker", "removing worker-1 (created by release 2)"),
		stepEv(27, 20, "worker", "remove"), // after the failure: the undo, not the rollout
		{Time: at(30), Type: "result", Message: "failed", ExitCode: &one},
	}
}

func TestRollout(t *testing.T) {
	ro, err := rollout(events())
	if err != nil {
		t.Fatal(err)
	}
	if !ro.ApplyStart.Equal(at(2)) || !ro.MonitorStart.Equal(at(21)) || !ro.Failed.Equal(at(26)) || !ro.Result.Equal(at(30)) || ro.ExitCode != 1 {
		t.Errorf("rollout = %+v", ro)
	}
	if len(ro.Reloads) != 1 || !ro.Reloads[0].Equal(at(12)) {
		t.Errorf("reloads = %v, want one at 12s", ro.Reloads)
	}
	if len(ro.Spans) != 2 {
		t.Fatalf("spans = %+v, want web and worker (nginx's reload is web's)", ro.Spans)
	}
	// web: from the start of its first step to the end of its last (the
	// pull, before the apply, is no step).
	if s := ro.Spans["web"]; !s.Start.Equal(at(2.5)) || !s.End.Equal(at(13)) {
		t.Errorf("web's span = %v-%v, want 2.5s-13s", s.Start.Sub(t0), s.End.Sub(t0))
	}
	// worker: to the end of its gate (a skipped step has no time; the undo
	// after the failure is not the rollout).
	if s := ro.Spans["worker"]; !s.Start.Equal(at(13)) || !s.End.Equal(at(21)) {
		t.Errorf("worker's span = %v-%v, want 13s-21s", s.Start.Sub(t0), s.End.Sub(t0))
	}
	if _, err := rollout(events()[:6]); err == nil {
		t.Error("a stream without a result: no error")
	}
}

func TestCritical(t *testing.T) {
	ro, _ := rollout(events())
	// Independent: the bound is head + the longer span + tail.
	c, err := critical(ro, map[string][]string{"web": nil, "worker": nil, "nginx": {"web"}}, at(0), at(30))
	if err != nil {
		t.Fatal(err)
	}
	if c.Head != 2500*time.Millisecond || c.Chain != 10500*time.Millisecond || c.Tail != 9*time.Second || c.Bound() != 22*time.Second {
		t.Errorf("independent: %+v bound %v, want head 2.5s chain 10.5s tail 9s", c, c.Bound())
	}
	// worker after web: the chain is both.
	c, _ = critical(ro, map[string][]string{"web": nil, "worker": {"web"}, "nginx": {"web"}}, at(0), at(30))
	if c.Chain != 18500*time.Millisecond || strings.Join(c.Path, ">") != "web>worker" {
		t.Errorf("dependent: %+v", c)
	}
	if _, err := critical(Rollout{Spans: map[string]Span{}}, nil, at(0), at(1)); err == nil {
		t.Error("no service rolled out: no error")
	}
}

func TestProc(t *testing.T) {
	rss, hwm, err := procStatus(strings.NewReader("Name:\tagentd\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\n"))
	if err != nil || rss != 30720 || hwm != 40960 {
		t.Errorf("procStatus = %v %v %v", rss, hwm, err)
	}
	if _, _, err := procStatus(strings.NewReader("Name:\tx\n")); err == nil {
		t.Error("no VmRSS: no error")
	}
	// Fields 14 and 15 (utime, stime) = 250 and 50 ticks; the command has a space and a ')'.
	stat := "1234 (agent d)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 1000000 5000"
	cpu, err := procCPUSeconds(stat, 100)
	if err != nil || cpu != 3 {
		t.Errorf("procCPUSeconds = %v %v, want 3", cpu, err)
	}
	if _, err := procCPUSeconds("1234 (x) S 1", 100); err == nil {
		t.Error("a short stat: no error")
	}
}

func TestTargets(t *testing.T) {
	r := &Run{}
	r.B.Ratio = 1.1
	r.Berth.Steady.P99 = 100 * time.Millisecond
	r.Berth.Deploy = Window{P99: 300 * time.Millisecond, Max: 900 * time.Millisecond}
	r.Berth.CloseFrom = Window{Sent: 10}
	for _, tg := range targets {
		if ok, fig := tg.Met(r); !ok {
			t.Errorf("%s: not met (%s), want met", tg.Name, fig)
		}
	}
	r.B.Ratio = 1.2
	r.Berth.Deploy = Window{P99: 301 * time.Millisecond, Max: 1001 * time.Millisecond, Over1s: 1}
	r.Berth.CloseFrom = Window{Sent: 10, Failed: 1}
	for _, tg := range targets {
		if ok, _ := tg.Met(r); ok {
			t.Errorf("%s: met, want not met", tg.Name)
		}
	}
	r.B.Ratio = math.NaN() // the bound could not be computed: not met
	if ok, _ := targets[0].Met(r); ok {
		t.Error("a NaN ratio meets the target")
	}
}

// TestLoadRunAndReport: a run directory as bench.sh writes it, read back,
// reported and drawn.
func TestLoadRunAndReport(t *testing.T) {
	dir := t.TempDir()
	run := filepath.Join(dir, "run1")
	write := func(name, s string) {
		t.Helper()
		if err := os.MkdirAll(run, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(run, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sec := func(s float64) string { return ftoa(float64(t0.Unix()) + s) }
	reqs := func(from, to float64, slowAt float64) string {
		var b strings.Builder
		for x := from; x < to; x += 0.1 {
			lat := "5.000ms"
			if math.Abs(x-slowAt) < 0.05 {
				lat = "1200.000ms"
			}
			b.WriteString(at(x).Format(logTime) + "\tGET /version\t200\t" + lat + "\tok\n")
		}
		return b.String()
	}
	write("compose.phases", "load_start "+sec(0)+"\ndeploy_start "+sec(10)+"\nhooks_start "+sec(11)+"\nup_start "+sec(12)+"\ndeploy_end "+sec(20)+"\n")
	// A 502 during the deploy, and one after it (the load goes on 5 s).
	write("compose.req", reqs(0, 25, 15)+at(16).Format(logTime)+"\tGET /orders/\t502\t1.000ms\t502 Bad Gateway: x\n"+
		at(22).Format(logTime)+"\tGET /orders/\t502\t1.000ms\t502 Bad Gateway: x\n")
	write("compose-close.req", reqs(0, 25, -1))
	write("berth.phases", "load_start "+sec(0)+"\ndeploy_start "+sec(10)+"\ndeploy_end "+sec(40)+"\nnoop_start "+sec(50)+"\nnoop_end "+sec(51.5)+"\nbroken_start "+sec(60)+"\nbroken_end "+sec(90)+"\n")
	write("berth.req", reqs(0, 45, -1))
	write("berth-close.req", reqs(0, 45, -1))
	write("berth-broken.req", reqs(57, 95, -1))
	write("berth-broken-close.req", reqs(57, 95, -1))
	write("berth-broken-versions.json", `{"versions": {"v2": 12}}`)
	var evs strings.Builder
	for _, e := range []string{
		`{"time":"` + at(10.5).Format(time.RFC3339Nano) + `","type":"progress","message":"loading"}`,
		`{"time":"` + at(12).Format(time.RFC3339Nano) + `","type":"progress","message":"release 2 replaces release 1: changing web"}`,
		`{"time":"` + at(13).Format(time.RFC3339Nano) + `","type":"progress","service":"web","message":"creating web-3"}`,
		`{"time":"` + at(31).Format(time.RFC3339Nano) + `","type":"step","service":"web","message":"step 1","step":{"id":1,"kind":"create","service":"web","state":"done","started":"` + at(13).Format(time.RFC3339Nano) + `","seconds":18}}`,
		`{"time":"` + at(30).Format(time.RFC3339Nano) + `","type":"progress","service":"web","message":"ready"}`,
		`{"time":"` + at(31).Format(time.RFC3339Nano) + `","type":"progress","message":"monitoring 2 new container(s) for 5s"}`,
		`{"time":"` + at(39.9).Format(time.RFC3339Nano) + `","type":"result","message":"ok","exit_code":0}`,
	} {
		evs.WriteString(e + "\n")
	}
	write("berth-deploy.jsonl", evs.String())
	write("berth-noop.jsonl", `{"time":"`+at(51).Format(time.RFC3339Nano)+`","type":"result","message":"nothing to do","exit_code":0}`+"\n")
	write("berth-broken.jsonl", `{"time":"`+at(70).Format(time.RFC3339Nano)+`","type":"progress","message":"release 3 failed: web: not healthy"}`+"\n"+
		`{"time":"`+at(80).Format(time.RFC3339Nano)+`","type":"result","message":"rolled back","exit_code":1}`+"\n")
	write("agentd.status", "VmHWM:\t 51200 kB\nVmRSS:\t 40960 kB\n")
	write("agentd.stat", "7 (agentd) S 1 1 1 0 -1 0 0 0 0 0 150 50 0 0")

	runs, err := loadRuns(dir, map[string][]string{"web": nil, "nginx": {"web"}})
	if err != nil {
		t.Fatal(err)
	}
	r := runs[0]
	if r.Compose.Wall != 10 || r.Compose.Deploy.Failed != 1 || r.Compose.Deploy.Over1s != 1 || r.Berth.Wall != 30 ||
		r.Compose.From.Failed != 2 || r.Compose.From.Sent != 151 {
		t.Errorf("compose %+v, berth %+v", r.Compose, r.Berth)
	}
	// bound: head 13-10 = 3, web 13..31 (the monitor's start) = 18, tail 40-31 = 9.
	if math.Abs(r.B.Bound-30) > 1e-6 || math.Abs(r.B.Ratio-1) > 1e-6 {
		t.Errorf("bound %v ratio %v, want 30 and 1", r.B.Bound, r.B.Ratio)
	}
	if math.Abs(r.B.Noop-1.5) > 1e-6 || r.B.Detected != 10 || r.B.Restored != 20 || r.B.BrokenExit != 1 || r.B.NoopExit != 0 {
		t.Errorf("noop %v detected %v restored %v exits %d %d", r.B.Noop, r.B.Detected, r.B.Restored, r.B.BrokenExit, r.B.NoopExit)
	}
	if r.B.RSSKB != 40960 || r.B.HWMKB != 51200 || r.B.CPUSeconds != 2 || strings.Join(r.B.BrokenVersions, ",") != "v2" {
		t.Errorf("agentd %v %v %v; versions %v", r.B.RSSKB, r.B.HWMKB, r.B.CPUSeconds, r.B.BrokenVersions)
	}
	var out strings.Builder
	if report(&out, runs) {
		t.Errorf("the ratio target is vacuous in this run (one chain), the report says every target is met:\n%s", out.String())
	}
	for _, want := range []string{"2 of 151", "30.0 s", "1.00 x", "MET:     0 failed connection-per-request requests from Berth's deploy's start to the load's end (met in 1 of 1 run(s), vacuous in 0)",
		"VACUOUS: Berth's wall time <= 1.15 x the critical-path bound (met in 1 of 1 run(s), vacuous in 1)", "head 3.0 + chain web>nginx 18.0 + tail 9.0",
		"note: every service that rolled out is on that one chain", "1.00 x, vacuous"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, out.String())
		}
	}
	svg := filepath.Join(dir, "pic", "latency.svg")
	if err := drawLatency(svg, r); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(svg); err != nil || !strings.Contains(string(b), "<svg") {
		t.Errorf("the picture is not an SVG: %v", err)
	}
}

func ftoa(f float64) string { return strings.TrimRight(strings.TrimRight(strconvF(f), "0"), ".") }

func strconvF(f float64) string { return strconv.FormatFloat(f, 'f', 6, 64) }

func TestSerialGraph(t *testing.T) {
	r := &Run{}
	r.B.Spans = []Span{{Service: "web"}, {Service: "worker"}}
	r.B.Critical.Path = []string{"db", "web", "worker"}
	if !serialGraph(r) {
		t.Error("every service on the path: not serial")
	}
	r.B.Critical.Path = []string{"db", "web"}
	if serialGraph(r) {
		t.Error("worker off the path: serial")
	}
	if ok, fig := targets[0].Met(r); !strings.Contains(fig, "x") || strings.Contains(fig, "vacuous") {
		t.Errorf("target figure %q (met %v)", fig, ok)
	}
}

func TestJudge(t *testing.T) {
	tg := Target{Name: "x", Met: func(r *Run) (bool, string) { return r.B.Ratio <= 1, "" }, Vacuous: func(r *Run) bool { return r.B.Noop == 1 }}
	run := func(ratio, noop float64) *Run { r := &Run{}; r.B.Ratio, r.B.Noop = ratio, noop; return r }
	for _, c := range []struct {
		runs []*Run
		want string
		met  int
	}{
		{[]*Run{run(1, 0), run(0.5, 0)}, "MET", 2},
		{[]*Run{run(1, 0), run(2, 0)}, "NOT MET", 1},
		{[]*Run{run(1, 1), run(1, 1)}, "VACUOUS", 2},
		{[]*Run{run(1, 1), run(1, 0)}, "MET", 2},
	} {
		if v, met, _, _ := judge(tg, c.runs); v != c.want || met != c.met {
			t.Errorf("judge = %s, met %d; want %s, %d", v, met, c.want, c.met)
		}
	}
}

func TestProbes(t *testing.T) {
	dir := t.TempDir()
	sec := func(s float64) string { return ftoa(float64(t0.Unix()) + s) }
	for i, slow := range []string{"40.000ms", "80.000ms"} {
		run := filepath.Join(dir, fmt.Sprintf("run%d", i+1))
		if err := os.MkdirAll(run, 0o755); err != nil {
			t.Fatal(err)
		}
		// 10 requests a second; steady answers in 5 ms, the create probe's
		// window (20-26 s) in slow, the boot probe's (30-36 s) in 10 ms.
		var b strings.Builder
		for x := 0.0; x < 40; x += 0.1 {
			lat := "5.000ms"
			switch {
			case x >= 20 && x < 26:
				lat = slow
			case x >= 30 && x < 36:
				lat = "10.000ms"
			}
			b.WriteString(at(x).Format(logTime) + "\tGET /version\t200\t" + lat + "\tok\n")
		}
		files := map[string]string{
			"probes.phases": "load_start " + sec(0) + "\nsteady_end " + sec(18) + "\ncreate_start " + sec(20) + "\ncreate_end " + sec(26) +
				"\nboot_start " + sec(30) + "\nboot_end " + sec(36) + "\n",
			"probes.req": b.String(),
		}
		for name, s := range files {
			if err := os.WriteFile(filepath.Join(run, name), []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !isProbes(dir) {
		t.Fatal("isProbes: false")
	}
	var runs []*ProbeRun
	for _, r := range []string{"run1", "run2"} {
		pr, err := loadProbeRun(filepath.Join(dir, r))
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, pr)
	}
	if got := strings.Join(runs[0].Names, ","); got != "steady,create,boot" {
		t.Errorf("names %s, want steady,create,boot (in the order they ran)", got)
	}
	if w := runs[0].Windows["steady"]; w.Sent < 159 || w.Sent > 161 || w.P99 != 5*time.Millisecond {
		t.Errorf("steady window (after the 2 s warm-up): %+v", w)
	}
	var out strings.Builder
	if err := probeReport(&out, runs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"create   60 ", "60 (40-80) / 60 (40-80) / 60 (40-80) ms", "12.00 x (8.00-16.00)", "boot ", "2.00 x"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	delete(runs[1].Windows, "boot")
	if err := probeReport(io.Discard, runs); err == nil {
		t.Error("a run without a window of the first run: no error")
	}
}
