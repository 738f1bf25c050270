package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// warmup is left out of the steady window after the load starts (the
// clients open their connections; Python warms its caches).
const warmup = 2 * time.Second

// SystemRun is what one run measured of one system (docker-compose or Berth).
type SystemRun struct {
	Steady, Deploy Window // kept-alive clients
	// From the deploy's start to the end of the load (--settle after the
	// deploy's end): a request can fail after the deploy command returned.
	From, CloseFrom Window // kept-alive, connection per request
	Wall            float64
}

// BerthRun is what only Berth's half of a run measures. Seconds; NaN when
// the run could not measure it.
type BerthRun struct {
	Critical                 Critical
	Bound, Ratio             float64
	Noop                     float64
	Detected, Restored       float64 // the broken release: from its start
	BrokenExit               int
	Broken, BrokenClose      Window
	BrokenVersions           []string // what /version answered during the broken release's run of the load
	RSSKB, HWMKB             float64
	CPUSeconds               float64
	Spans                    []Span
	DeployExit, NoopExit     int
	DeployStart, BrokenStart time.Time
}

// Run is one run of the benchmark: its directory holds what bench.sh wrote.
type Run struct {
	Dir            string
	Compose, Berth SystemRun
	B              BerthRun
	ComposeReqs    []Request
	BerthReqs      []Request
	ComposePhases  Phases
	BerthPhases    Phases
	Deploy         Rollout
}

// loadRun reads one run's directory (see bench.sh for its files).
func loadRun(dir string, deps map[string][]string) (*Run, error) {
	r := &Run{Dir: dir}
	var err error
	in := func(name string) string { return filepath.Join(dir, name) }
	if r.ComposePhases, err = readPhases(in("compose.phases")); err != nil {
		return nil, err
	}
	if r.BerthPhases, err = readPhases(in("berth.phases")); err != nil {
		return nil, err
	}
	if r.ComposeReqs, err = readRequests(in("compose.req")); err != nil {
		return nil, err
	}
	if r.BerthReqs, err = readRequests(in("berth.req")); err != nil {
		return nil, err
	}
	composeClose, err := readRequests(in("compose-close.req"))
	if err != nil {
		return nil, err
	}
	berthClose, err := readRequests(in("berth-close.req"))
	if err != nil {
		return nil, err
	}
	if r.Compose, err = system(r.ComposePhases, r.ComposeReqs, composeClose); err != nil {
		return nil, fmt.Errorf("%s: docker-compose: %w", dir, err)
	}
	if r.Berth, err = system(r.BerthPhases, r.BerthReqs, berthClose); err != nil {
		return nil, fmt.Errorf("%s: berth: %w", dir, err)
	}

	b := &r.B
	ds, de, _ := r.BerthPhases.span("deploy_start", "deploy_end")
	b.DeployStart = ds
	evs, err := readEvents(in("berth-deploy.jsonl"))
	if err != nil {
		return nil, err
	}
	if r.Deploy, err = rollout(evs); err != nil {
		return nil, fmt.Errorf("%s: the deploy: %w", dir, err)
	}
	b.DeployExit = r.Deploy.ExitCode
	b.Spans = r.Deploy.sortedSpans()
	b.Bound, b.Ratio = math.NaN(), math.NaN()
	if b.Critical, err = critical(r.Deploy, deps, ds, de); err == nil {
		b.Bound = b.Critical.Bound().Seconds()
		b.Ratio = r.Berth.Wall / b.Bound
	} else {
		fmt.Fprintf(os.Stderr, "bench: %s: %v\n", dir, err)
	}

	b.Noop = math.NaN()
	if a, z, err := r.BerthPhases.span("noop_start", "noop_end"); err == nil {
		b.Noop = z.Sub(a).Seconds()
	}
	b.NoopExit = -1
	if evs, err := readEvents(in("berth-noop.jsonl")); err == nil {
		if ro, err := rollout(evs); err == nil {
			b.NoopExit = ro.ExitCode
		}
	}

	b.Detected, b.Restored, b.BrokenExit = math.NaN(), math.NaN(), -1
	if a, z, err := r.BerthPhases.span("broken_start", "broken_end"); err == nil {
		b.BrokenStart = a
		keep, err := readRequests(in("berth-broken.req"))
		if err != nil {
			return nil, err
		}
		closeReqs, err := readRequests(in("berth-broken-close.req"))
		if err != nil {
			return nil, err
		}
		b.Broken = window(keep, a, z)
		b.BrokenClose = window(closeReqs, a, z)
		if evs, err := readEvents(in("berth-broken.jsonl")); err == nil {
			if ro, err := rollout(evs); err == nil {
				b.BrokenExit = ro.ExitCode
				if !ro.Failed.IsZero() {
					b.Detected = ro.Failed.Sub(a).Seconds()
				}
				b.Restored = ro.Result.Sub(a).Seconds()
			}
		}
	}
	if v, err := summaryVersions(in("berth-broken-versions.json")); err == nil {
		b.BrokenVersions = v
	}

	b.RSSKB, b.HWMKB, b.CPUSeconds = math.NaN(), math.NaN(), math.NaN()
	if f, err := os.Open(in("agentd.status")); err == nil {
		b.RSSKB, b.HWMKB, err = procStatus(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	if raw, err := os.ReadFile(in("agentd.stat")); err == nil {
		if b.CPUSeconds, err = procCPUSeconds(string(raw), 100); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// forever is later than any request.
var forever = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// system reads one system's windows from its phases and requests.
func system(p Phases, keep, closeReqs []Request) (SystemRun, error) {
	ls, ds, err := p.span("load_start", "deploy_start")
	if err != nil {
		return SystemRun{}, err
	}
	_, de, err := p.span("deploy_start", "deploy_end")
	if err != nil {
		return SystemRun{}, err
	}
	return SystemRun{
		Steady:    window(keep, ls.Add(warmup), ds),
		Deploy:    window(keep, ds, de),
		From:      window(keep, ds, forever),
		CloseFrom: window(closeReqs, ds, forever),
		Wall:      de.Sub(ds).Seconds(),
	}, nil
}

// procStatus reads VmRSS and VmHWM (kB) from /proc/PID/status.
func procStatus(r io.Reader) (rss, hwm float64, err error) {
	rss, hwm = math.NaN(), math.NaN()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, perr := strconv.ParseFloat(f[1], 64)
		if perr != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	if math.IsNaN(rss) || math.IsNaN(hwm) {
		return rss, hwm, fmt.Errorf("proc status: no VmRSS or VmHWM")
	}
	return rss, hwm, sc.Err()
}

// procCPUSeconds is utime + stime of /proc/PID/stat, in seconds (hz: clock
// ticks per second, USER_HZ, 100 on Linux).
func procCPUSeconds(stat string, hz float64) (float64, error) {
	// The command (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat: no command field")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields after the command", len(f))
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	s, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("proc stat: utime %q stime %q", f[11], f[12])
	}
	return (u + s) / hz, nil
}

// summaryVersions: the versions GET /version answered, from a loadgen summary.
func summaryVersions(path string) ([]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s struct {
		Versions map[string]int `json:"versions"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("loadgen summary %s: %w", path, err)
	}
	var out []string
	for v := range s.Versions {
		out = append(out, v)
	}
	return out, nil
}
