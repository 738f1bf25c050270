// Command bench reads what scripts/bench.sh measured (one directory per
// run: run1, run2, ...), prints the side-by-side table (docker-compose
// against Berth) with issue 13's targets and whether each was met, and draws
// latency over time with the deploy's steps marked (the first run). Runs of
// bench.sh --probes get the probes' table instead (probes.go).
//
//	go run ./scripts/bench -dir /tmp/bench -compose examples/django/compose.yaml -picture docs/bench/latency.png
//
// Exit 0 when the report is printed (whatever the targets), 1 when the
// measurements cannot be read, 2 on bad flags.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

func main() {
	dir := flag.String("dir", "", "the benchmark's work directory (holds run1, run2, ...)")
	composeFile := flag.String("compose", "examples/django/compose.yaml", "the compose file deployed (for its dependency graph)")
	picture := flag.String("picture", "docs/bench/latency.png", "write the latency picture here, .png or .svg (empty: none)")
	flag.Parse()
	if *dir == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: bench -dir DIR [-compose FILE] [-picture PATH]")
		os.Exit(2)
	}
	if err := run(*dir, *composeFile, *picture); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(dir, composeFile, picture string) error {
	if isProbes(dir) {
		return probes(dir)
	}
	deps, err := readComposeDeps(composeFile)
	if err != nil {
		return err
	}
	runs, err := loadRuns(dir, deps)
	if err != nil {
		return err
	}
	report(os.Stdout, runs)
	if picture != "" {
		if err := drawLatency(picture, runs[0]); err != nil {
			return err
		}
		fmt.Printf("\nlatency over time (run 1): %s\n", picture)
	}
	return nil
}

// probes prints the report of probes runs (bench.sh --probes).
func probes(dir string) error {
	dirs, err := runDirs(dir)
	if err != nil {
		return err
	}
	var runs []*ProbeRun
	for _, d := range dirs {
		r, err := loadProbeRun(d)
		if err != nil {
			return err
		}
		runs = append(runs, r)
	}
	return probeReport(os.Stdout, runs)
}

// runDirs lists DIR/run*/ in order.
func runDirs(dir string) ([]string, error) {
	dirs, err := filepath.Glob(filepath.Join(dir, "run[0-9]*"))
	if err != nil {
		return nil, err
	}
	sort.Slice(dirs, func(i, j int) bool {
		var a, b int
		fmt.Sscanf(filepath.Base(dirs[i]), "run%d", &a)
		fmt.Sscanf(filepath.Base(dirs[j]), "run%d", &b)
		return a < b
	})
	if len(dirs) == 0 {
		return nil, fmt.Errorf("no run directories in %s", dir)
	}
	return dirs, nil
}

// loadRuns reads DIR/run*/ in order.
func loadRuns(dir string, deps map[string][]string) ([]*Run, error) {
	dirs, err := runDirs(dir)
	if err != nil {
		return nil, err
	}
	var runs []*Run
	for _, d := range dirs {
		r, err := loadRun(d, deps)
		if err != nil {
			return nil, err
		}
		runs = append(runs, r)
	}
	return runs, nil
}
