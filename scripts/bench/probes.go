package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
)

// A probes run (scripts/bench.sh --probes) holds probes.phases (load_start,
// steady_end, then NAME_start and NAME_end of each probe) and probes.req,
// the kept-alive clients' requests.

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

// loadProbeRun reads one probes run. Its probes are the phases marked
// NAME_start but load_start, in the order they began.
func loadProbeRun(dir string) (*ProbeRun, error) {
	p, err := readPhases(filepath.Join(dir, "probes.phases"))
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
	var names []string
	for mark := range p {
		if n, ok := strings.CutSuffix(mark, "_start"); ok && n != "load" {
			names = append(names, n)
		}
	}
	sort.Slice(names, func(i, j int) bool { return p[names[i]+"_start"].Before(p[names[j]+"_start"]) })
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
		fig := func(f func(Window) float64) Spread {
			return collect(runs, func(r *ProbeRun) float64 { return f(r.Windows[n]) })
		}
		ratio := collect(runs, func(r *ProbeRun) float64 { return ms(r.Windows[n].P99) / ms(r.Windows["steady"].P99) })
		fmt.Fprintf(tw, "%s\t%s\t%s / %s / %s / %s ms\t%s\t\n", n, fig(func(x Window) float64 { return float64(x.Sent) }).format(0, ""),
			fig(func(x Window) float64 { return ms(x.P50) }).format(1, ""), fig(func(x Window) float64 { return ms(x.P90) }).format(0, ""),
			fig(func(x Window) float64 { return ms(x.P99) }).format(0, ""), fig(func(x Window) float64 { return ms(x.Max) }).format(0, ""),
			ratio.format(2, " x"))
	}
	return tw.Flush()
}
