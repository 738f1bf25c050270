package healthcheck

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"
)

const (
	// logLines is how many of its last log lines a failure shows.
	logLines = 20
	// logTimeout bounds the fetch of those lines.
	logTimeout = 5 * time.Second
)

// watched is what the gate and the monitor remember of a container when they
// start watching it, to tell later that it died or restarted.
type watched struct {
	id, name  string
	restarts  int    // RestartCount
	startedAt string // State.StartedAt: changes on any restart
	tty       bool   // its logs are not multiplexed
	hasHealth bool   // it has a Docker HEALTHCHECK
}

func newWatched(in container.InspectResponse) watched {
	w := watched{}
	if b := in.ContainerJSONBase; b != nil {
		w.id = b.ID
		w.name = strings.TrimPrefix(b.Name, "/")
		w.restarts = b.RestartCount
		if b.State != nil {
			w.startedAt = b.State.StartedAt
			w.hasHealth = b.State.Health != nil
		}
	}
	if w.name == "" {
		w.name = shortID(w.id)
	}
	if cfg := in.Config; cfg != nil {
		w.tty = cfg.Tty
		if hc := cfg.Healthcheck; hc != nil && len(hc.Test) > 0 && hc.Test[0] != "NONE" {
			w.hasHealth = true
		}
	}
	return w
}

// shortID shortens a container ID the way the docker CLI does; names are
// left alone.
func shortID(id string) string {
	if len(id) == 64 {
		return id[:12]
	}
	return id
}

// problem is what went wrong with a watched container.
type problem struct {
	err    error  // ErrExited, ErrRestarted or ErrUnhealthy
	detail string // e.g. "exit code 3", "restart count 0 -> 1"
	logs   bool   // the detail should end with the container's last log lines
}

// check compares a fresh inspect of w with what w was at the start, and
// returns what is wrong or nil.
func (w watched) check(in container.InspectResponse) *problem {
	if in.ContainerJSONBase == nil || in.State == nil {
		return &problem{err: ErrExited, detail: "the engine reports no state"}
	}
	st := in.State
	switch {
	case st.Restarting:
		return &problem{err: ErrExited, detail: exitDetail(st.ExitCode, st.OOMKilled) + ", restarting", logs: true}
	case !st.Running:
		if st.Status != container.StateExited && st.Status != container.StateDead {
			return &problem{err: ErrExited, detail: fmt.Sprintf("status %s, not running", st.Status), logs: true}
		}
		return &problem{err: ErrExited, detail: exitDetail(st.ExitCode, st.OOMKilled), logs: true}
	case in.RestartCount != w.restarts:
		return &problem{err: ErrRestarted, detail: fmt.Sprintf("restart count %d -> %d", w.restarts, in.RestartCount), logs: true}
	case st.StartedAt != w.startedAt:
		return &problem{err: ErrRestarted, detail: fmt.Sprintf("started again at %s", st.StartedAt), logs: true}
	case st.Health != nil && st.Health.Status == container.Unhealthy:
		return &problem{err: ErrUnhealthy, detail: healthOutput(st.Health)}
	}
	return nil
}

func exitDetail(code int, oom bool) string {
	s := "exit code " + strconv.Itoa(code)
	if oom {
		s += " (OOM-killed)"
	}
	return s
}

// healthOutput describes the last Docker health check of h.
func healthOutput(h *container.Health) string {
	if h == nil || len(h.Log) == 0 || h.Log[len(h.Log)-1] == nil {
		return "no health check has finished yet"
	}
	last := h.Log[len(h.Log)-1]
	out := oneLine(last.Output, 300)
	if out == "" {
		return fmt.Sprintf("last health check exited %d with no output", last.ExitCode)
	}
	return fmt.Sprintf("last health check exited %d: %s", last.ExitCode, out)
}

// oneLine squeezes s onto one line of at most max bytes, keeping its end.
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = "…" + s[len(s)-max:]
	}
	return s
}

// subscribe asks for the events that end a wait: die, restart, oom and
// health_status of the given containers. The engine matches "health_status"
// against "health_status: healthy" and the like.
func subscribe(ctx context.Context, eng Engine, ids []string) (<-chan events.Message, <-chan error) {
	f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)))
	for _, id := range ids {
		f.Add("container", id)
	}
	for _, a := range []events.Action{events.ActionDie, events.ActionRestart, events.ActionOOM, events.ActionHealthStatus} {
		f.Add("event", string(a))
	}
	return eng.Events(ctx, events.ListOptions{Filters: f})
}

// healthEvent returns the status of a health_status event ("healthy",
// "unhealthy", ...) and whether m is one.
func healthEvent(m events.Message) (string, bool) {
	rest, ok := strings.CutPrefix(string(m.Action), string(events.ActionHealthStatus))
	if !ok {
		return "", false
	}
	return strings.TrimSpace(strings.TrimPrefix(rest, ":")), true
}

// fromEvent turns an event about w into a problem. It returns nil for events
// that are no failure, and healthy is true for a health_status: healthy.
// Inspect errors only make the detail poorer: the event says enough.
func (c *Checker) fromEvent(ctx context.Context, w watched, m events.Message) (p *problem, healthy bool) {
	if status, ok := healthEvent(m); ok {
		switch status {
		case container.Healthy:
			return nil, true
		case container.Unhealthy:
			p := &problem{err: ErrUnhealthy, detail: "health_status event: unhealthy"}
			if in, err := c.Engine.ContainerInspect(ctx, w.id); err == nil && in.ContainerJSONBase != nil && in.State != nil {
				p.detail = healthOutput(in.State.Health)
			}
			return p, false
		}
		return nil, false
	}
	switch m.Action {
	case events.ActionDie:
		in, err := c.Engine.ContainerInspect(ctx, w.id)
		oom := err == nil && in.ContainerJSONBase != nil && in.State != nil && in.State.OOMKilled
		code, convErr := strconv.Atoi(m.Actor.Attributes["exitCode"])
		if convErr != nil {
			if err != nil || in.ContainerJSONBase == nil || in.State == nil {
				return &problem{err: ErrExited, detail: "die event", logs: true}, false
			}
			code = in.State.ExitCode
		}
		return &problem{err: ErrExited, detail: exitDetail(code, oom), logs: true}, false
	case events.ActionRestart:
		return &problem{err: ErrRestarted, detail: "restart event", logs: true}, false
	case events.ActionOOM:
		// A process of the container was OOM-killed; a failure only if that
		// stopped the container (then a die event follows too).
		if in, err := c.Engine.ContainerInspect(ctx, w.id); err == nil {
			return w.check(in), false
		}
	}
	return nil, false
}

// explain renders p's detail, with the container's last log lines if p asks
// for them.
func (c *Checker) explain(ctx context.Context, w watched, p *problem) string {
	if !p.logs {
		return p.detail
	}
	return p.detail + "; " + c.logTail(ctx, w)
}

// logTail returns the last lines of w's stdout and stderr, or says why it
// cannot.
func (c *Checker) logTail(ctx context.Context, w watched) string {
	ctx, cancel := context.WithTimeout(ctx, logTimeout)
	defer cancel()
	rc, err := c.Engine.ContainerLogs(ctx, w.id, container.LogsOptions{
		ShowStdout: true,
		ShowStderr: true,
		Tail:       strconv.Itoa(logLines),
	})
	if err != nil {
		return fmt.Sprintf("logs unavailable: %v", err)
	}
	defer rc.Close()
	buf := &tailBuffer{max: 64 << 10}
	if w.tty {
		_, err = io.Copy(buf, rc)
	} else {
		_, err = stdcopy.StdCopy(buf, buf, rc)
	}
	var b strings.Builder
	if text := strings.TrimRight(buf.String(), "\r\n"); strings.TrimSpace(text) == "" {
		b.WriteString("no log output")
	} else {
		lines := strings.Split(text, "\n")
		if len(lines) > logLines {
			lines = lines[len(lines)-logLines:]
		}
		if len(lines) == 1 {
			b.WriteString("last log line:")
		} else {
			fmt.Fprintf(&b, "last %d log lines:", len(lines))
		}
		for _, l := range lines {
			b.WriteString("\n\t" + strings.TrimRight(l, "\r"))
		}
	}
	if err != nil {
		fmt.Fprintf(&b, "\n(reading the logs failed: %v)", err)
	}
	return b.String()
}
