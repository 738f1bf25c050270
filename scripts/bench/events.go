package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/berth-deploy/berth/agent/api"
)

// Event is one line of `agentctl deploy --json` (agent/api.Event).
type Event struct {
	Time     time.Time `json:"time"`
	Type     string    `json:"type"`
	Service  string    `json:"service"`
	Message  string    `json:"message"`
	ExitCode *int      `json:"exit_code"`
	Step     *api.Step `json:"step"` // on step events
}

func parseEvents(r io.Reader) ([]Event, error) {
	var out []Event
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") {
			continue // not an event (agentctl prints nothing else with --json; be lenient)
		}
		var e Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			return nil, fmt.Errorf("parse events: line %d: %w", n, err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse events: %w", err)
	}
	return out, nil
}

func readEvents(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	defer f.Close()
	return parseEvents(f)
}

var (
	applyRe    = regexp.MustCompile(`^release \d+ (is the first of|replaces release)`)
	reloadedRe = regexp.MustCompile(`^reloaded \S+ \(for (\S+)\)$`)
	failedRe   = regexp.MustCompile(`^release \d+ failed: `)
)

// Span is one service's rollout: from the start of its first step to the
// end of its last, as the deploy's step events say (agentd sends one as
// each step ends, with when it began and how long it took). Steps without
// a service (networks, the monitor window) are no service's. A proxy
// reload done for a service is in that service's switch step.
type Span struct {
	Service    string
	Start, End time.Time
}

func (s Span) Duration() time.Duration { return s.End.Sub(s.Start) }

// Rollout is what a deploy's event stream says about its steps.
type Rollout struct {
	ApplyStart   time.Time // "release N ... changing ..."; zero if the stream has none (a no-op)
	MonitorStart time.Time // "monitoring N new container(s)"; zero if none
	Failed       time.Time // "release N failed: ..."; zero if none
	Result       time.Time // the result event
	ExitCode     int
	Spans        map[string]Span
	Reloads      []time.Time // proxy reloads during the apply
}

func rollout(events []Event) (Rollout, error) {
	ro := Rollout{Spans: map[string]Span{}, ExitCode: -1}
	for _, e := range events {
		switch {
		case e.Type == "result":
			ro.Result = e.Time
			if e.ExitCode != nil {
				ro.ExitCode = *e.ExitCode
			}
		case ro.ApplyStart.IsZero() && applyRe.MatchString(e.Message):
			ro.ApplyStart = e.Time
		case strings.HasPrefix(e.Message, "monitoring ") && ro.MonitorStart.IsZero():
			ro.MonitorStart = e.Time
		case failedRe.MatchString(e.Message) && ro.Failed.IsZero():
			ro.Failed = e.Time
		}
		if ro.ApplyStart.IsZero() || !ro.Failed.IsZero() {
			continue
		}
		if e.Type == "progress" && reloadedRe.MatchString(e.Message) {
			ro.Reloads = append(ro.Reloads, e.Time)
		}
		st := e.Step
		if e.Type != "step" || st == nil || st.Service == "" || st.State != "done" || st.Started.IsZero() {
			continue
		}
		end := st.Started.Add(time.Duration(st.Seconds * float64(time.Second)))
		sp, ok := ro.Spans[st.Service]
		if !ok {
			sp = Span{Service: st.Service, Start: st.Started, End: end}
		}
		if st.Started.Before(sp.Start) {
			sp.Start = st.Started
		}
		if end.After(sp.End) {
			sp.End = end
		}
		ro.Spans[st.Service] = sp
	}
	if ro.Result.IsZero() {
		return ro, fmt.Errorf("rollout: the event stream has no result event")
	}
	return ro, nil
}

// sortedSpans by start.
func (ro Rollout) sortedSpans() []Span {
	var out []Span
	for _, s := range ro.Spans {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Critical is the critical-path bound of a deploy: what it would take if
// every service rolled out as soon as what it depends on had rolled out, each
// taking as long as it took this time. The head (lock, load, resolve, pull:
// from the deploy's start to the first service event) and the tail (from the
// last service event to the deploy's end: the monitor window, cleanup) are
// serial and count whole.
type Critical struct {
	Head, Chain, Tail time.Duration
	Path              []string // the longest chain, dependencies first
}

func (c Critical) Bound() time.Duration { return c.Head + c.Chain + c.Tail }

func critical(ro Rollout, deps map[string][]string, start, end time.Time) (Critical, error) {
	spans := ro.sortedSpans()
	if len(spans) == 0 {
		return Critical{}, fmt.Errorf("critical path: the deploy rolled out no service")
	}
	first, last := spans[0].Start, spans[0].End
	dur := map[string]time.Duration{}
	for _, s := range spans {
		if s.End.After(last) {
			last = s.End
		}
		dur[s.Service] = s.Duration()
	}
	chain, path, err := longestChain(deps, dur)
	if err != nil {
		return Critical{}, err
	}
	return Critical{Head: first.Sub(start), Chain: chain, Tail: end.Sub(last), Path: path}, nil
}
