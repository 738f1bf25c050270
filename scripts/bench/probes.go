package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
)

// A probes run (scripts/bench.sh --probes) holds probes.phases (load_start,
// steady_end, then NAME_start and NAME_end of each probe in the order they
// ran) and probes.req, the kept-alive clients' requests.

// ProbeRun is one run's windows: the steady one first, then each probe's.
type ProbeRun struct {
	Names   []string // "steady", then the probes
	Windows map[string]Window
}

// isProbes tells whether the runs in dir are probes runs.
func isProbes(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "run1", "probes.phases"))
	return err == nil
}

// loadProbeRun reads one probes run.
func loadProbeRun(dir string) (*ProbeRun, error) {
	path := filepath.Join(dir, "probes.phases")
	p, err := readPhases(path)
	if err != nil {
		return nil, err
	}
	names, err := probeNames(path)
	if err != nil {
		return nil, err
	}
	reqs, err := readRequests(filepath.Join(dir, "probes.req"))
	if err != nil {
		return nil, err
	}
	ls, se, err := p.span("load_start", "steady_end")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	r := &ProbeRun{Names: []string{"steady"}, Windows: map[string]Window{"steady": window(reqs, ls.Add(warmup), se)}}
	for _, n := range names {
		a, b, err := p.span(n+"_start", n+"_end")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		r.Names = append(r.Names, n)
		r.Windows[n] = window(reqs, a, b)
	}
	return r, nil
}

// probeNames lists the probes of a probes.phases file in the order they ran.
func probeNames(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, _, _ := strings.Cut(sc.Text(), " ")
		if n, ok := strings.CutSuffix(name, "_start"); ok && n != "load" {
			names = append(names, n)
		}
	}
	return names, sc.Err()
}

// probeReport prints each window's latencies, median of the runs (min-max),
// and its p99 against the same run's steady p99. The names are the first
// run's; a run without one of them fails the report.
func probeReport(w io.Writer, runs []*ProbeRun) error {
	for i, r := range runs {
		for _, n := range runs[0].Names {
			if _, ok := r.Windows[n]; !ok {
				return fmt.Errorf("run %d has no window %s", i+1, n)
			}
		}
	}
	fmt.Fprintf(w, "Every figure: the median of %d run(s), (min-max) when they differ.\n\n", len(runs))
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "window\trequests\tp50 / p90 / p99 / max (kept-alive)\tp99 / steady p99\t")
	for _, n := range runs[0].Names {
		pr := func(f func(Window) float64) Spread {
			v := make([]float64, len(runs))
			for i, r := range runs {
				v[i] = f(r.Windows[n])
			}
			return spread(v)
		}
		sent := pr(func(x Window) float64 { return float64(x.Sent) })
		p50 := pr(func(x Window) float64 { return ms(x.P50) })
		p90 := pr(func(x Window) float64 { return ms(x.P90) })
		p99 := pr(func(x Window) float64 { return ms(x.P99) })
		mx := pr(func(x Window) float64 { return ms(x.Max) })
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = ms(r.Windows[n].P99) / ms(r.Windows["steady"].P99)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s / %s / %s / %s ms\t%s\t\n", n, sent.format(0, ""),
			p50.format(1, ""), p90.format(0, ""), p99.format(0, ""), mx.format(0, ""), spread(v).format(2, " x"))
	}
	return tw.Flush()
}
