package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// collect: one figure of every run (a deploy's Run, a probes' ProbeRun).
func collect[R any](runs []R, f func(R) float64) Spread {
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	return spread(v)
}

// format a spread: "median (min-max)", or just the value of one run.
func (s Spread) format(prec int, unit string) string {
	if s.N == 0 {
		return "n/a"
	}
	f := func(x float64) string { return strings.TrimSuffix(fmt.Sprintf("%.*f", prec, x), ".") }
	if s.N == 1 || s.Min == s.Max {
		return f(s.Median) + unit
	}
	return fmt.Sprintf("%s%s (%s-%s)", f(s.Median), unit, f(s.Min), f(s.Max))
}

// latencies: "p50 / p99 / max" ms, each a spread.
func latencies(runs []*Run, w func(*Run) Window) string {
	p50 := collect(runs, func(r *Run) float64 { return ms(w(r).P50) })
	p99 := collect(runs, func(r *Run) float64 { return ms(w(r).P99) })
	mx := collect(runs, func(r *Run) float64 { return ms(w(r).Max) })
	return fmt.Sprintf("%s / %s / %s ms", p50.format(1, ""), p99.format(0, ""), mx.format(0, ""))
}

func failed(runs []*Run, w func(*Run) Window) string {
	f := collect(runs, func(r *Run) float64 { return float64(w(r).Failed) })
	n := collect(runs, func(r *Run) float64 { return float64(w(r).Sent) })
	return fmt.Sprintf("%s of %s", f.format(0, ""), n.format(0, ""))
}

// Target is one of issue 13's targets, judged in each run.
type Target struct {
	Name    string
	Met     func(*Run) (bool, string) // met, and the figures that say so
	Vacuous func(*Run) bool           // the run cannot tell (nil: it always can)
}

var targets = []Target{
	{"Berth's wall time <= 1.15 x the critical-path bound", func(r *Run) (bool, string) {
		if serialGraph(r) {
			return r.B.Ratio <= 1.15, fmt.Sprintf("%.2f x, vacuous: the services are one chain", r.B.Ratio)
		}
		return r.B.Ratio <= 1.15, fmt.Sprintf("%.2f x", r.B.Ratio)
	}, serialGraph},
	{"Berth's p99 during the deploy <= 3 x steady p99 (kept-alive)", func(r *Run) (bool, string) {
		d, s := ms(r.Berth.Deploy.P99), ms(r.Berth.Steady.P99)
		return d <= 3*s, fmt.Sprintf("%.0f vs 3 x %.0f ms", d, s)
	}, nil},
	{"no request over 1 s during Berth's deploy (kept-alive)", func(r *Run) (bool, string) {
		return r.Berth.Deploy.Over1s == 0, fmt.Sprintf("%d over 1 s, max %.0f ms", r.Berth.Deploy.Over1s, ms(r.Berth.Deploy.Max))
	}, nil},
	{"0 failed connection-per-request requests from Berth's deploy's start to the load's end", func(r *Run) (bool, string) {
		return r.Berth.CloseFrom.Failed == 0 && r.Berth.CloseFrom.Sent > 0,
			fmt.Sprintf("%d of %d failed", r.Berth.CloseFrom.Failed, r.Berth.CloseFrom.Sent)
	}, nil},
}

// report prints the table and the targets; it returns whether every target
// was met in every run.
func report(w io.Writer, runs []*Run) bool {
	n := len(runs)
	fmt.Fprintf(w, "Every figure: the median of %d run(s), (min-max) when they differ.\n\n", n)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t") }
	row("", "docker-compose pull && up -d", "Berth (agentctl deploy)")
	row("failed, kept-alive clients (deploy's start to load's end)",
		failed(runs, func(r *Run) Window { return r.Compose.From }), failed(runs, func(r *Run) Window { return r.Berth.From }))
	row("failed, connection per request (deploy's start to load's end)",
		failed(runs, func(r *Run) Window { return r.Compose.CloseFrom }), failed(runs, func(r *Run) Window { return r.Berth.CloseFrom }))
	row("p50 / p99 / max, steady (kept-alive)",
		latencies(runs, func(r *Run) Window { return r.Compose.Steady }), latencies(runs, func(r *Run) Window { return r.Berth.Steady }))
	row("p50 / p99 / max, during the deploy (kept-alive)",
		latencies(runs, func(r *Run) Window { return r.Compose.Deploy }), latencies(runs, func(r *Run) Window { return r.Berth.Deploy }))
	row("requests over 1 s during the deploy (kept-alive)",
		collect(runs, func(r *Run) float64 { return float64(r.Compose.Deploy.Over1s) }).format(0, ""),
		collect(runs, func(r *Run) float64 { return float64(r.Berth.Deploy.Over1s) }).format(0, ""))
	row("wall time of the deploy",
		collect(runs, func(r *Run) float64 { return r.Compose.Wall }).format(1, " s"),
		collect(runs, func(r *Run) float64 { return r.Berth.Wall }).format(1, " s"))
	row("critical-path bound; wall / bound", "-",
		collect(runs, func(r *Run) float64 { return r.B.Bound }).format(1, " s")+"; "+
			collect(runs, func(r *Run) float64 { return r.B.Ratio }).format(2, " x"))
	row("no-op redeploy", "-", collect(runs, func(r *Run) float64 { return r.B.Noop }).format(1, " s"))
	row("broken release: failure detected after", "-", collect(runs, func(r *Run) float64 { return r.B.Detected }).format(1, " s"))
	row("broken release: old release serving (deploy returned) after", "-", collect(runs, func(r *Run) float64 { return r.B.Restored }).format(1, " s"))
	row("broken release: failed kept-alive / connection per request", "-",
		failed(runs, func(r *Run) Window { return r.B.Broken })+" / "+failed(runs, func(r *Run) Window { return r.B.BrokenClose }))
	row("agentd RSS now / peak (VmHWM)", "-",
		collect(runs, func(r *Run) float64 { return r.B.RSSKB / 1024 }).format(1, " MiB")+" / "+
			collect(runs, func(r *Run) float64 { return r.B.HWMKB / 1024 }).format(1, " MiB"))
	row("agentd CPU seconds (user+system, whole run)", "-", collect(runs, func(r *Run) float64 { return r.B.CPUSeconds }).format(2, " s"))
	tw.Flush()

	fmt.Fprintln(w, "\nBerth's deploy, per run: exit code; each service's rollout from its steps (s); the critical path")
	for i, r := range runs {
		var spans []string
		for _, s := range r.B.Spans {
			spans = append(spans, fmt.Sprintf("%s %.1f", s.Service, s.Duration().Seconds()))
		}
		c := r.B.Critical
		fmt.Fprintf(w, "  run %d: exit %d; %s; bound %.1f s = head %.1f + chain %s %.1f + tail %.1f; no-op exit %d; broken exit %d, /version answered %s\n",
			i+1, r.B.DeployExit, strings.Join(spans, ", "), c.Bound().Seconds(), c.Head.Seconds(),
			strings.Join(c.Path, ">"), c.Chain.Seconds(), c.Tail.Seconds(), r.B.NoopExit, r.B.BrokenExit, strings.Join(r.B.BrokenVersions, " "))
		if serialGraph(r) {
			fmt.Fprintf(w, "    note: every service that rolled out is on that one chain of depends_on: the bound is the serial rollout, and the ratio says nothing about running services in parallel\n")
		}
	}

	fmt.Fprintln(w, "\nTargets (issue 13), judged in each run:")
	all := true
	for _, t := range targets {
		verdict, met, vacuous, figs := judge(t, runs)
		if verdict != "MET" {
			all = false
		}
		fmt.Fprintf(w, "  %-8s %s (met in %d of %d run(s), vacuous in %d) [%s]\n", verdict+":", t.Name, met, n, vacuous, strings.Join(figs, "; "))
	}
	return all
}

// serialGraph: every service that rolled out is on the critical path, so
// no order of the executor could beat the serial rollout.
func serialGraph(r *Run) bool {
	on := map[string]bool{}
	for _, s := range r.B.Critical.Path {
		on[s] = true
	}
	for _, s := range r.B.Spans {
		if !on[s.Service] {
			return false
		}
	}
	return len(r.B.Spans) > 0
}

// judge a target over the runs: MET when met in every run and not vacuous in
// all of them, VACUOUS when no run could tell, else NOT MET.
func judge(t Target, runs []*Run) (verdict string, met, vacuous int, figs []string) {
	for _, r := range runs {
		ok, fig := t.Met(r)
		if ok {
			met++
		}
		if t.Vacuous != nil && t.Vacuous(r) {
			vacuous++
		}
		figs = append(figs, fig)
	}
	switch {
	case vacuous == len(runs):
		return "VACUOUS", met, vacuous, figs
	case met == len(runs):
		return "MET", met, vacuous, figs
	}
	return "NOT MET", met, vacuous, figs
}
