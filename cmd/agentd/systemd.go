package main

// agentd under systemd (systemd/agentd.service, Type=notify): readiness,
// stopping, the watchdog and status lines through sd_notify, and the control
// socket passed by socket activation (systemd/agentd.socket). Outside
// systemd (no NOTIFY_SOCKET, no LISTEN_FDS) all of it does nothing.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/docker/docker/api/types"
)

// notifier speaks the sd_notify protocol. Without NOTIFY_SOCKET every
// method is a no-op.
type notifier struct {
	log     *slog.Logger
	enabled bool
	warned  atomic.Bool // a failed send was logged at warning level
	stop    sync.Once   // STOPPING=1 is sent once
}

func newNotifier(log *slog.Logger) *notifier {
	return &notifier{log: log, enabled: os.Getenv("NOTIFY_SOCKET") != ""}
}

// send sends one datagram of newline-separated assignments. A failure is
// logged (the first at warning level, later ones at debug) and otherwise
// ignored: systemd's own timeouts deal with a notification that is lost.
func (n *notifier) send(lines ...string) {
	if !n.enabled {
		return
	}
	if _, err := daemon.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		level := slog.LevelDebug
		if n.warned.CompareAndSwap(false, true) {
			level = slog.LevelWarn
		}
		n.log.Log(context.Background(), level, "sd_notify failed", "message", lines[0], "err", err)
	}
}

// status sets the one-line status `systemctl status agentd` shows.
func (n *notifier) status(s string) { n.send(statusLine(s)) }

// ready tells systemd that start-up is done; call it only once crash
// recovery is over and every front door listens.
func (n *notifier) ready(status string) { n.send(daemon.SdNotifyReady, statusLine(status)) }

// stopping tells systemd that agentd is shutting down. Only the first
// call sends; any call returns once it has been sent.
func (n *notifier) stopping(status string) {
	n.stop.Do(func() { n.send(daemon.SdNotifyStopping, statusLine(status)) })
}

// alive pets the watchdog.
func (n *notifier) alive() { n.send(daemon.SdNotifyWatchdog) }

func statusLine(s string) string {
	return "STATUS=" + strings.Join(strings.Fields(s), " ")
}

// healthCheck is what must pass before agentd tells the watchdog it is
// alive.
type healthCheck func(ctx context.Context) error

// enginePinger is the part of the Docker client the health check uses.
type enginePinger interface {
	Ping(ctx context.Context) (types.Ping, error)
}

// storePinger is the part of the release store the health check uses.
type storePinger interface {
	Ping() error
}

// agentHealth checks that the Docker engine answers a ping within timeout
// and that the release store answers a read.
func agentHealth(engine enginePinger, st storePinger, timeout time.Duration) healthCheck {
	return func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if _, err := engine.Ping(pctx); err != nil {
			return fmt.Errorf("engine unreachable: %w", err)
		}
		if err := st.Ping(); err != nil {
			return fmt.Errorf("store unreadable: %w", err)
		}
		return nil
	}
}

// watchdogInterval is systemd's watchdog interval for this process
// (WatchdogSec=, passed as WATCHDOG_USEC), or 0 when there is none.
func watchdogInterval(log *slog.Logger) time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog: bad environment; not sending keep-alives", "err", err)
		return 0
	}
	return d
}

// checkTimeout is how long one health check may take: a ping that takes
// longer counts as a failure. A quarter of the watchdog interval, so that a
// slow pass still reaches systemd in time, and at most 5s.
func checkTimeout(interval time.Duration) time.Duration {
	return min(interval/4, 5*time.Second)
}

// failureLogEvery is how often a health check that keeps failing is logged
// again.
const failureLogEvery = time.Minute

// runWatchdog pets systemd's watchdog every interval/2, but only after
// check passed: while it fails nothing is sent, so that systemd restarts
// agentd if it stays broken for the whole interval. Failures are logged
// (the first at once, then at most every failureLogEvery) and shown in the
// status; healthy is the status to go back to. It returns when ctx is done.
func runWatchdog(ctx context.Context, n *notifier, interval time.Duration, check healthCheck, healthy string, log *slog.Logger) {
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	var failingSince, lastLogged time.Time
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := check(ctx)
		if ctx.Err() != nil {
			return // stopping: a check cut short says nothing
		}
		now := time.Now()
		if err == nil {
			n.alive()
			if failures > 0 {
				log.Info("health check passes again; systemd watchdog fed", "failed_for", now.Sub(failingSince).Round(time.Second), "failed_checks", failures)
				n.status(healthy)
				failures = 0
			}
			continue
		}
		failures++
		if failures == 1 {
			failingSince, lastLogged = now, now
			log.Error("health check failed; not feeding the systemd watchdog (systemd restarts agentd if this lasts)", "err", err, "watchdog", interval)
			n.status(err.Error())
			continue
		}
		if now.Sub(lastLogged) >= failureLogEvery {
			lastLogged = now
			log.Error("health check still failing; not feeding the systemd watchdog", "err", err, "failing_for", now.Sub(failingSince).Round(time.Second), "failed_checks", failures)
			n.status(err.Error())
		}
	}
}

// startWatchdog runs runWatchdog in a goroutine when systemd asked for a
// watchdog (interval > 0, from watchdogInterval); the returned channel is
// closed when it has returned (at once when there is no watchdog).
func startWatchdog(ctx context.Context, n *notifier, interval time.Duration, check healthCheck, healthy string, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	if !n.enabled || interval <= 0 {
		close(done)
		return done
	}
	log.Info("systemd watchdog enabled", "interval", interval, "check_every", interval/2)
	go func() {
		defer close(done)
		runWatchdog(ctx, n, interval, check, healthy, log)
	}()
	return done
}

// controlFDName is the FileDescriptorName= of agentd.socket.
const controlFDName = "control"

// activatedSocket returns the control socket systemd passed to agentd
// (socket activation), or nil when it passed none. It is the listener
// named "control", or else the only unix stream socket passed; any other
// socket passed is closed. The socket file belongs to systemd: closing the
// listener leaves it in place.
func activatedSocket(log *slog.Logger) (net.Listener, error) {
	byName, err := activation.ListenersWithNames()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	if len(byName) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	sort.Strings(names)
	var control net.Listener
	var unixOnes []net.Listener
	for _, name := range names {
		for _, ln := range byName[name] {
			if ln.Addr().Network() == "unix" {
				unixOnes = append(unixOnes, ln)
			}
		}
	}
	switch ctl := byName[controlFDName]; {
	case len(ctl) > 1:
		err = fmt.Errorf("socket activation: %d sockets are named %q; want one", len(ctl), controlFDName)
	case len(ctl) == 1 && ctl[0].Addr().Network() != "unix":
		err = fmt.Errorf("socket activation: the %q socket is %s %s; want a unix stream socket (ListenStream=/run/berth/agentd.sock)", controlFDName, ctl[0].Addr().Network(), ctl[0].Addr())
	case len(ctl) == 1:
		control = ctl[0]
	case len(unixOnes) == 1:
		control = unixOnes[0]
	default:
		err = fmt.Errorf("socket activation: systemd passed %d sockets (%s) and none is named %q", countListeners(byName), strings.Join(names, ", "), controlFDName)
	}
	for _, name := range names {
		for _, ln := range byName[name] {
			if ln == control {
				continue
			}
			if err == nil {
				log.Warn("socket activation: ignoring a socket systemd passed", "name", name, "addr", ln.Addr().String())
			}
			ln.Close()
		}
	}
	if err != nil {
		return nil, err
	}
	if ul, ok := control.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	return control, nil
}

func countListeners(m map[string][]net.Listener) int {
	n := 0
	for _, l := range m {
		n += len(l)
	}
	return n
}

// readyStatus is the status line once agentd serves: what it serves and
// where.
func readyStatus(projects int, doors []door, recoverErr error) string {
	var b strings.Builder
	b.WriteString("ready: ")
	if recoverErr != nil {
		b.WriteString("recovery left a project needing an operator (see the log); ")
	}
	if projects == 1 {
		b.WriteString("1 project")
	} else {
		fmt.Fprintf(&b, "%d projects", projects)
	}
	for _, d := range doors {
		fmt.Fprintf(&b, ", %s %s", d.name, d.addr)
	}
	return b.String()
}
