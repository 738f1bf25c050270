// Command agentd is Berth's deploy agent: it loads its config, opens the
// release store, connects to the Docker engine and serves deploys on a
// unix socket until it is told to stop.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/store"
	"github.com/docker/docker/client"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// errReported means the problem was already printed.
var errReported = errors.New("reported")

// errUsage is a command line agentd does not take; the problem and the
// usage were printed.
var errUsage = errors.New("usage")

// exitCode prints err unless it was, and returns agentd's exit code for
// it: 0 with none, 2 for a command line it does not take, 1 otherwise.
func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		return 2
	case !errors.Is(err, errReported):
		fmt.Fprintln(stderr, "agentd:", err)
	}
	return 1
}

// usage prints how agentd is run, its flags spelled as agentctl's are
// (--flag; Go's flag package takes -flag too).
func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `Usage: agentd [--config FILE] [--check] [--version]

agentd is Berth's deploy agent: it serves deploys of the configured compose
projects on a unix socket (agentctl), and over SSH and HTTP when its config
asks for them. See docs/agentd.md.

Flags:
`)
	fs.VisitAll(func(f *flag.Flag) {
		arg, help := flag.UnquoteUsage(f)
		if arg != "" && f.Name == "config" {
			arg = "FILE"
		}
		name := "--" + f.Name
		if arg != "" {
			name += " " + arg
		}
		if f.DefValue != "" && f.DefValue != "false" {
			help += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(w, "  %-15s %s\n", name, help)
	})
	fmt.Fprintf(w, "  %-15s %s\n", "-h, --help", "print this and exit")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agentd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, where it belongs
	cfgPath := fs.String("config", "/etc/berth/agentd.yaml", "the config file")
	check := fs.Bool("check", false, "validate the config and every project's compose file, print every problem, and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout, fs)
			return nil
		}
		// The flag package has said what is wrong.
		usage(stderr, fs)
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "agentd: unexpected argument %q: agentd takes flags only\n", fs.Arg(0))
		usage(stderr, fs)
		return errUsage
	}
	if *showVersion {
		fmt.Fprintln(stdout, "agentd", version)
		return nil
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	if *check {
		return runCheck(ctx, cfg, *cfgPath, stdout)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config %s:\n%w", *cfgPath, err)
	}
	log := newLogger(cfg.Log, stderr)
	notify := newNotifier(log)
	// STOPPING=1 as soon as a stop signal arrives, whatever agentd is
	// doing (recovery, deploys in flight).
	const stoppingStatus = "stopping: finishing what is in flight (deploys, recovery)"
	stopNotifying := context.AfterFunc(ctx, func() { notify.stopping(stoppingStatus) })
	defer stopNotifying()

	if err := prepareStateDir(cfg.StateDir, log); err != nil {
		return err
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, "berth.db"))
	if err != nil {
		return err
	}
	defer st.Close()
	docker, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	defer docker.Close()
	if _, err := docker.Ping(ctx); err != nil {
		return fmt.Errorf("docker engine: %w", err)
	}
	info, err := docker.Info(ctx)
	if err != nil {
		return fmt.Errorf("docker engine: %w", err)
	}

	svc, err := agent.New(cfg, docker, st, log)
	if err != nil {
		return err
	}
	svc.SetEngineInfo(info)
	// One consistent release per project before any request is taken. A
	// stop signal does not cut a rollback short (like a deploy in flight,
	// it finishes first): agentd stops once recovery is over.
	notify.status("recovering: bringing every project to one consistent release")
	recoverErr := svc.Recover(context.WithoutCancel(ctx))
	if recoverErr != nil {
		log.Error("recovery left a project needing an operator", "err", recoverErr)
	}
	if ctx.Err() != nil {
		notify.stopping(stoppingStatus)
		log.Info("agentd stopped after recovery: told to stop during it")
		return nil
	}
	activated, err := activatedSocket(log)
	if err != nil {
		return err
	}
	ops, err := setupOperations(cfg, svc, docker, st, log)
	if err != nil {
		return err
	}
	doors, err := openDoors(cfg, svc, log, activated)
	if err != nil {
		return err
	}
	doors = append(doors, ops.doors...)
	errc := make(chan error, len(doors))
	for _, d := range doors {
		go func() { errc <- d.serve(ctx) }()
	}
	socket := cfg.Socket.Path
	if activated != nil {
		socket = activated.Addr().String()
	}
	log.Info("agentd ready", "version", version, "socket", socket, "projects", cfg.ProjectNames(), "docker_api", docker.ClientVersion())
	// Recovery is over and every door listens: tell systemd, then keep
	// its watchdog fed while the engine and the store answer.
	status := readyStatus(len(cfg.Projects), doors, recoverErr)
	notify.ready(status)
	wdCtx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	interval := watchdogInterval(log)
	watchdogDone := startWatchdog(wdCtx, notify, interval, agentHealth(docker, st, checkTimeout(interval)), status, log)
	ops.start()
	// The proxies of swarm projects follow their services' tasks between
	// deploys; stopped with the watchdog, before the doors shut.
	following := make(chan struct{})
	go func() { defer close(following); svc.FollowProxies(wdCtx) }()

	var serveErr error
	select {
	case serveErr = <-errc:
		log.Error("a front door failed; stopping", "err", serveErr)
	case <-ctx.Done():
	}
	notify.stopping(stoppingStatus)
	stopWatchdog()
	<-watchdogDone
	<-following
	log.Info("agentd stopping: waiting for deploys in flight")
	// Every door stops taking requests and waits for those running,
	// deploys included, to finish or roll back.
	for _, d := range doors {
		if err := d.shutdown(); err != nil {
			log.Error("shutdown", "door", d.name, "err", err)
		}
	}
	ops.stop(log)
	// An activated socket is systemd's: it stays for the next start.
	if activated == nil {
		os.Remove(cfg.Socket.Path)
	}
	log.Info("agentd stopped")
	return serveErr
}

func runCheck(ctx context.Context, cfg *config.Config, path string, stdout io.Writer) error {
	err := errors.Join(cfg.Validate(), agent.CheckProjects(ctx, cfg))
	if err == nil {
		fmt.Fprintf(stdout, "%s: ok (%d projects)\n", path, len(cfg.Projects))
		return nil
	}
	fmt.Fprintf(stdout, "%s: problems found:\n", path)
	for _, e := range flatten(err) {
		fmt.Fprintf(stdout, "  - %v\n", e)
	}
	return errReported
}

// flatten lists the problems inside errors.Join results, one each. Only
// joins are split (their text is their parts' text, a line each): an error
// wrapping several causes with fmt.Errorf is one problem.
func flatten(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	parts := j.Unwrap()
	msgs := make([]string, len(parts))
	for i, e := range parts {
		msgs[i] = e.Error()
	}
	if strings.Join(msgs, "\n") != err.Error() {
		return []error{err}
	}
	var out []error
	for _, e := range parts {
		out = append(out, flatten(e)...)
	}
	return out
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
