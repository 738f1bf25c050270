package compose

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"
)

// Killed is a container Berth stopped that had not exited when its grace
// period ended, so the engine killed it with SIGKILL: whatever it was
// doing (a request, a task) was cut short.
type Killed struct {
	Service   string
	Container string
	// Signal is the stop signal it was sent first and did not exit on.
	Signal string
	// Grace is how long the engine waited after Signal before SIGKILL.
	Grace time.Duration
	// Took is how long the stop took, from Berth's request to the engine's
	// answer.
	Took time.Duration
}

// engineStopTimeout is the grace period the engine gives a container that
// sets none (Docker's default).
const engineStopTimeout = 10 * time.Second

// exitSIGKILL is the exit code of a process killed by SIGKILL (128+9).
const exitSIGKILL = 137

// Killed returns the containers this executor stopped that the engine
// killed at the end of their grace period.
func (e *Executor) Killed() []Killed {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Killed(nil), e.killed...)
}

func (e *Executor) now() time.Time {
	if e.clock != nil {
		return e.clock()
	}
	return time.Now()
}

// stop asks the engine to stop a container of service with grace (nil:
// the container's own stop timeout), then looks at how it ended: a
// container the engine had to kill at the end of the grace period is said
// (a warning in the progress) and kept for Killed.
func (e *Executor) stop(ctx context.Context, service string, c *Container, grace *time.Duration) error {
	var opts container.StopOptions
	if grace != nil {
		secs := int(*grace / time.Second)
		opts.Timeout = &secs
	}
	start := e.now()
	if err := e.Engine.ContainerStop(ctx, c.ID, opts); err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("stop %s: %w", c.Name, err)
	}
	took := e.now().Sub(start)
	in, err := e.Engine.ContainerInspect(ctx, c.ID)
	if err != nil {
		// The stop itself worked: not knowing how it ended fails nothing.
		if !errdefs.IsNotFound(err) && ctx.Err() == nil {
			e.say(service, "warning: cannot tell whether %s exited within its grace period: %v", c.Name, err)
		}
		return nil
	}
	k, ok := killedAtGrace(in, opts.Timeout, took)
	if !ok {
		return nil
	}
	k.Service, k.Container = service, c.Name
	e.mu.Lock()
	e.killed = append(e.killed, k)
	e.mu.Unlock()
	e.say(service, "warning: %s was killed at the end of its grace period: it had not exited %s after %s, so the engine sent SIGKILL (exit code 137; the stop took %s). What it was doing was cut short: raise stop_grace_period (%s) if %s needs longer to stop",
		k.Container, k.Grace, k.Signal, k.Took.Round(100*time.Millisecond), k.Grace, service)
	return nil
}

// killedAtGrace decides, from a container's state after a stop with
// timeout (seconds; nil: the container's own) that took took, whether the
// engine killed it because it outlived its grace period. All of these
// must hold:
//
//   - it is not running, and exited with 137 (128 + SIGKILL);
//   - the kernel's OOM killer did not kill it (that is also 137);
//   - its stop signal is not SIGKILL itself (then 137 is how every stop
//     ends, at once, and no grace period was cut short);
//   - the grace period was finite, and the stop took at least that long:
//     the engine waits the whole grace period before it sends SIGKILL, so
//     an exit with 137 sooner was not the engine's kill (the app's own
//     exit code, or a kill from elsewhere).
func killedAtGrace(in container.InspectResponse, timeout *int, took time.Duration) (Killed, bool) {
	if in.ContainerJSONBase == nil || in.State == nil || in.State.Running || in.State.ExitCode != exitSIGKILL || in.State.OOMKilled {
		return Killed{}, false
	}
	signal := "SIGTERM"
	grace := engineStopTimeout
	if in.Config != nil {
		if in.Config.StopSignal != "" {
			signal = in.Config.StopSignal
		}
		if in.Config.StopTimeout != nil {
			grace = time.Duration(*in.Config.StopTimeout) * time.Second
		}
	}
	if timeout != nil {
		grace = time.Duration(*timeout) * time.Second
	}
	if grace < 0 || took < grace || isSIGKILL(signal) {
		return Killed{}, false
	}
	return Killed{Signal: signalName(signal), Grace: grace, Took: took}, true
}

// isSIGKILL reports whether a stop signal, as Docker accepts it ("SIGKILL",
// "KILL", "kill", "9"), is SIGKILL.
func isSIGKILL(signal string) bool {
	if n, err := strconv.Atoi(signal); err == nil {
		return n == 9
	}
	return strings.TrimPrefix(strings.ToUpper(signal), "SIG") == "KILL"
}

// signalName writes a stop signal the way people read it: SIGTERM,
// SIGQUIT, or "signal 15" when it was given as a number.
func signalName(signal string) string {
	if _, err := strconv.Atoi(signal); err == nil {
		return "signal " + signal
	}
	return "SIG" + strings.TrimPrefix(strings.ToUpper(signal), "SIG")
}
