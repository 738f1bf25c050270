package api

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// The text forms of events, statuses and histories, shared by agentctl and
// the SSH front door so a CI log reads the same whichever door was used.

// PrintEvent writes one event as a readable line (a plan as several).
func PrintEvent(w io.Writer, e Event) {
	ts := e.Time.Local().Format("15:04:05")
	switch e.Type {
	case EventPlan:
		for _, line := range strings.Split(strings.TrimRight(e.Message, "\n"), "\n") {
			fmt.Fprintf(w, "%s %s\n", ts, line)
		}
	case EventStep:
		// A CI log shows the steps that took a second or more, and those
		// that failed; --json carries every one.
		if st := e.Step; st != nil && (st.State == "failed" || (st.State == "done" && st.Seconds >= 1)) {
			fmt.Fprintf(w, "%s [%s] %s\n", ts, dash(e.Service), e.Message)
		}
	case EventResult:
		word := "ok"
		if e.ExitCode != nil && *e.ExitCode != 0 {
			word = fmt.Sprintf("FAILED (exit %d)", *e.ExitCode)
		}
		fmt.Fprintf(w, "%s %s: %s\n", ts, word, e.Message)
	default:
		if e.Service != "" {
			fmt.Fprintf(w, "%s [%s] %s\n", ts, e.Service, e.Message)
		} else {
			fmt.Fprintf(w, "%s %s\n", ts, e.Message)
		}
	}
}

// PrintStatus writes project statuses as text tables.
func PrintStatus(w io.Writer, all []ProjectStatus) {
	for i, st := range all {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if st.Current == nil {
			fmt.Fprintf(w, "project %s: no release deployed yet\n", st.Project)
		} else {
			r := st.Current
			fmt.Fprintf(w, "project %s: release %d live since %s (by %s%s)\n", st.Project, r.Number, r.Finished.Local().Format(time.DateTime), r.Identity, MsgSuffix(r.Message))
		}
		if st.Locked != nil {
			fmt.Fprintf(w, "  LOCKED by %s since %s%s\n", st.Locked.Identity, st.Locked.Since.Local().Format(time.DateTime), MsgSuffix(st.Locked.Message))
		}
		if st.Deploying != nil {
			fmt.Fprintf(w, "  %s in progress: %s since %s\n", st.Deploying.Verb, st.Deploying.Identity, st.Deploying.Since.Local().Format(time.DateTime))
		}
		if len(st.Services) == 0 {
			fmt.Fprintln(w, "  no containers")
			continue
		}
		if st.Services[0].Swarm != nil {
			printSwarm(w, st.Services)
			continue
		}
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  SERVICE\tCONTAINER\tSTATE\tSTATUS\tRELEASE\tIMAGE")
		for _, s := range st.Services {
			for _, ct := range s.Containers {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", s.Name, ct.Name, ct.State, ct.Status, dash(ct.Release), ct.Image)
			}
		}
		tw.Flush()
	}
}

// printSwarm writes a Swarm project's services, then their tasks: where
// each runs, its state and health.
func printSwarm(w io.Writer, svcs []ServiceStatus) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SERVICE\tMODE\tRUNNING\tUPDATE\tRELEASE\tIMAGE")
	for _, s := range svcs {
		sw := s.Swarm
		if sw == nil {
			continue
		}
		update := dash(sw.UpdateState)
		if sw.UpdateMessage != "" {
			update += ": " + sw.UpdateMessage
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d/%d\t%s\t%s\t%s\n", s.Name, sw.Mode, sw.Running, sw.Replicas, update, dash(sw.Release), sw.Image)
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TASK\tSERVICE\tNODE\tSTATE\tDESIRED\tHEALTH\tRELEASE\tERROR")
	for _, s := range svcs {
		if s.Swarm == nil {
			continue
		}
		for _, t := range s.Swarm.Tasks {
			name := t.ID
			if t.Slot > 0 {
				name = fmt.Sprintf("%s.%d", s.Name, t.Slot)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, s.Name, t.Node, t.State, t.DesiredState, dash(t.Health), dash(t.Release), dash(t.Error))
		}
	}
	tw.Flush()
}

// PrintHistory writes a project's releases, newest first; live is marked.
func PrintHistory(w io.Writer, project string, hist []Release, live int) {
	if len(hist) == 0 {
		fmt.Fprintf(w, "project %s: no releases yet\n", project)
		return
	}
	for _, r := range hist {
		mark := " "
		if r.Number == live {
			mark = "*"
		}
		fmt.Fprintf(w, "%s release %d  %s  %s %s  by %s%s\n", mark, r.Number, r.Started.Local().Format(time.DateTime), r.Kind, r.Outcome, r.Identity, MsgSuffix(r.Message))
		if r.Error != "" {
			fmt.Fprintf(w, "    error: %s\n", r.Error)
		}
		if r.Source != "" {
			fmt.Fprintf(w, "    source: %s\n", r.Source)
		}
		if r.Shipped != nil {
			fmt.Fprintf(w, "    compose file: shipped %s\n", r.Shipped.Describe())
		}
		switch {
		case r.Interrupted && r.Outcome == OutcomeRolledBack && r.RestoredTo == 0:
			fmt.Fprintf(w, "    interrupted (agentd stopped during it), recovered to no release: undone\n")
		case r.Interrupted && r.Outcome == OutcomeRolledBack:
			fmt.Fprintf(w, "    interrupted (agentd stopped during it), recovered to release %d\n", r.RestoredTo)
		case r.Interrupted:
			fmt.Fprintf(w, "    interrupted (agentd stopped during it), and recovery failed: an operator is needed\n")
		case r.Outcome == OutcomeRolledBack:
			fmt.Fprintf(w, "    restored release %d\n", r.RestoredTo)
		}
		for _, k := range r.KilledOnStop {
			fmt.Fprintf(w, "    killed on stop: %s %s, still running %gs after %s (stop_grace_period), stopped after %gs, during the %s\n",
				k.Service, k.Container, k.GracePeriod, k.Signal, k.StoppedAfter, k.During)
		}
		svcs := make([]string, 0, len(r.Services))
		for s := range r.Services {
			svcs = append(svcs, s)
		}
		sort.Strings(svcs)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		for _, s := range svcs {
			fmt.Fprintf(tw, "    %s\t%s\n", s, r.Services[s].Pinned)
		}
		tw.Flush()
	}
	if live != 0 {
		fmt.Fprintln(w, "(* = live)")
	}
}

// MsgSuffix renders an optional message as `: "message"`.
func MsgSuffix(m string) string {
	if m == "" {
		return ""
	}
	return fmt.Sprintf(": %q", m)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
