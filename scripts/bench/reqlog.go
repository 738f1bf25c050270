package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// logTime is the layout of the first field of a loadgen -log line
// (examples/django/loadgen: LogTime).
const logTime = "2006-01-02T15:04:05.000000Z07:00"

// Request is one line of a loadgen -log file.
type Request struct {
	Start   time.Time
	Kind    string // GET /version, GET /orders/, POST /orders/
	Status  string // HTTP status, or "error"
	Latency time.Duration
	OK      bool
	Error   string
}

// parseRequests reads a loadgen -log file.
func parseRequests(r io.Reader) ([]Request, error) {
	var out []Request
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		f := strings.SplitN(line, "\t", 5)
		if len(f) != 5 {
			return nil, fmt.Errorf("parse request log: line %d: %d fields, want 5", n, len(f))
		}
		start, err := time.Parse(logTime, f[0])
		if err != nil {
			return nil, fmt.Errorf("parse request log: line %d: %w", n, err)
		}
		ms, err := strconv.ParseFloat(strings.TrimSuffix(f[3], "ms"), 64)
		if err != nil || !strings.HasSuffix(f[3], "ms") {
			return nil, fmt.Errorf("parse request log: line %d: latency %q", n, f[3])
		}
		q := Request{Start: start, Kind: f[1], Status: f[2], Latency: time.Duration(ms * float64(time.Millisecond)), OK: f[4] == "ok"}
		if !q.OK {
			q.Error = f[4]
		}
		out = append(out, q)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse request log: %w", err)
	}
	return out, nil
}

func readRequests(path string) ([]Request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read requests: %w", err)
	}
	defer f.Close()
	return parseRequests(f)
}

// Phases are the instants bench.sh marked ("NAME EPOCH_SECONDS" lines).
type Phases map[string]time.Time

func parsePhases(r io.Reader) (Phases, error) {
	p := Phases{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return nil, fmt.Errorf("parse phases: line %d: want NAME SECONDS", n)
		}
		t, err := epoch(f[1])
		if err != nil {
			return nil, fmt.Errorf("parse phases: line %d: %w", n, err)
		}
		p[f[0]] = t
	}
	return p, sc.Err()
}

func readPhases(path string) (Phases, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read phases: %w", err)
	}
	defer f.Close()
	return parsePhases(f)
}

// span is from one phase mark to another.
func (p Phases) span(from, to string) (time.Time, time.Time, error) {
	a, ok := p[from]
	if !ok {
		return time.Time{}, time.Time{}, fmt.Errorf("phase %s not marked", from)
	}
	b, ok := p[to]
	if !ok {
		return time.Time{}, time.Time{}, fmt.Errorf("phase %s not marked", to)
	}
	return a, b, nil
}

// epoch parses SECONDS[.FRACTION] since 1970 (bash's $EPOCHREALTIME) exactly,
// to the nanosecond.
func epoch(s string) (time.Time, error) {
	whole, frac, _ := strings.Cut(s, ".")
	sec, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || len(frac) > 9 {
		return time.Time{}, fmt.Errorf("epoch %q: want SECONDS[.FRACTION]", s)
	}
	var ns int64
	if frac != "" {
		if ns, err = strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64); err != nil {
			return time.Time{}, fmt.Errorf("epoch %q: want SECONDS[.FRACTION]", s)
		}
	}
	return time.Unix(sec, ns).UTC(), nil
}
