// Command testapp is the small static HTTP server that every Berth test image
// is built around. Its behaviour is chosen entirely by environment variables so
// that one binary can play a healthy service, a failing one, a slow starter, a
// crasher or a stateful one:
//
//	PORT=8080            listen on 0.0.0.0:PORT
//	VERSION=dev          GET / and POST / answer "VERSION\n"
//	HEALTH=fail          GET /healthz answers 500
//	HEALTHY_AFTER=5s     GET /healthz answers 500 until 5s after start
//	START_DELAY=2s       wait before listening
//	EXIT_AFTER=3s        exit with EXIT_CODE (default 1) 3s after start
//	DATA_DIR=/data       PUT/GET /data/{key} store and read files in DATA_DIR
//	STOP_DELAY=2s        on SIGTERM/SIGINT, wait before draining requests
//	WORKERS=2            hold at most 2 connections at once, like gunicorn's
//	                     sync workers: others wait in the listen queue (and
//	                     are reset when the listener closes at SIGTERM)
//	REQUEST_DELAY=20ms   GET / and POST / take this long to answer
//	REQUEST_CPU=3ms      GET / and POST / compute for this long (CPU time,
//	                     not a sleep), so their latency shows CPU starvation
//	BOOT_CPU=4x6s        before listening, compute on 4 threads for 6s, as a
//	                     Django or Celery boot does (imports, forks)
//
// "testapp check [URL]" performs a single HTTP GET (default
// http://127.0.0.1:$PORT/healthz) and exits 0 on 200 and 1 otherwise; scratch
// images use it as their HEALTHCHECK since they have no shell or curl.
//
// "testapp sleep D" waits for D (or until SIGTERM/SIGINT) and exits 0: a
// one-off that takes its time, like a long migration run as a hook.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	var ee exitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code) // run has already said why on stderr
	case err != nil:
		fmt.Fprintln(os.Stderr, "testapp:", err)
		os.Exit(1)
	}
}

// exitError asks main to exit with code; run has already explained why on
// stderr.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// config is the behaviour selected by the environment.
type config struct {
	port         string
	version      string
	healthFail   bool
	healthyAfter time.Duration
	startDelay   time.Duration
	exitAfter    time.Duration
	exitSet      bool
	exitCode     int
	dataDir      string
	stopDelay    time.Duration
	workers      int
	requestDelay time.Duration
	requestCPU   time.Duration
	bootThreads  int
	bootCPU      time.Duration
}

func loadConfig(getenv func(string) string) (config, error) {
	c := config{
		port:       getenv("PORT"),
		version:    getenv("VERSION"),
		healthFail: getenv("HEALTH") == "fail",
		dataDir:    getenv("DATA_DIR"),
		exitCode:   1,
	}
	if c.port == "" {
		c.port = "8080"
	}
	if c.version == "" {
		c.version = "dev"
	}
	durations := []struct {
		name string
		dst  *time.Duration
		set  *bool
	}{
		{"HEALTHY_AFTER", &c.healthyAfter, nil},
		{"START_DELAY", &c.startDelay, nil},
		{"EXIT_AFTER", &c.exitAfter, &c.exitSet},
		{"STOP_DELAY", &c.stopDelay, nil},
		{"REQUEST_DELAY", &c.requestDelay, nil},
		{"REQUEST_CPU", &c.requestCPU, nil},
	}
	for _, d := range durations {
		v := getenv(d.name)
		if v == "" {
			continue
		}
		parsed, err := time.ParseDuration(v)
		if err != nil || parsed < 0 {
			return config{}, fmt.Errorf("parse %s=%q: invalid duration", d.name, v)
		}
		*d.dst = parsed
		if d.set != nil {
			*d.set = true
		}
	}
	if v := getenv("EXIT_CODE"); v != "" {
		var code int
		if _, err := fmt.Sscanf(v, "%d", &code); err != nil || code < 0 || code > 255 {
			return config{}, fmt.Errorf("parse EXIT_CODE=%q: want an integer 0-255", v)
		}
		c.exitCode = code
	}
	if v := getenv("BOOT_CPU"); v != "" {
		var threads int
		var d string
		if _, err := fmt.Sscanf(v, "%dx%s", &threads, &d); err != nil || threads < 1 || threads > 64 {
			return config{}, fmt.Errorf("parse BOOT_CPU=%q: want THREADSxDURATION, e.g. 4x6s (1 to 64 threads)", v)
		}
		parsed, err := time.ParseDuration(d)
		if err != nil || parsed < 0 {
			return config{}, fmt.Errorf("parse BOOT_CPU=%q: invalid duration", v)
		}
		c.bootThreads, c.bootCPU = threads, parsed
	}
	if v := getenv("WORKERS"); v != "" {
		if _, err := fmt.Sscanf(v, "%d", &c.workers); err != nil || c.workers < 1 {
			return config{}, fmt.Errorf("parse WORKERS=%q: want a positive integer", v)
		}
	}
	return c, nil
}

// workerListener accepts a connection only while fewer than cap(slots)
// are open, as a pool of sync workers does: the others wait, accepted by
// the kernel, in the listen queue.
type workerListener struct {
	net.Listener
	slots chan struct{}
}

func (l *workerListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &workerConn{Conn: c, release: func() { <-l.slots }}, nil
}

type workerConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *workerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// run is the whole program; args excludes the program name.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	if len(args) > 0 && args[0] == "check" {
		url := "http://127.0.0.1:" + cfg.port + "/healthz"
		if len(args) > 1 {
			url = args[1]
		}
		if err := check(ctx, url); err != nil {
			fmt.Fprintln(stderr, "testapp check:", err)
			return exitError{code: 1}
		}
		return nil
	}
	if len(args) > 0 && args[0] == "sleep" {
		if len(args) != 2 {
			return fmt.Errorf("parse args: sleep takes one duration, got %d arguments", len(args)-1)
		}
		d, err := time.ParseDuration(args[1])
		if err != nil || d < 0 {
			return fmt.Errorf("parse args: sleep %q: invalid duration", args[1])
		}
		return sleep(ctx, d, stdout)
	}
	if len(args) > 0 {
		return fmt.Errorf("parse args: unknown sub-command %q (want none, \"check [URL]\" or \"sleep D\")", args[0])
	}
	return serve(ctx, cfg, stdout, stderr)
}

// sleep waits for d, or until ctx ends (a stop signal), which is no error.
func sleep(ctx context.Context, d time.Duration, stdout io.Writer) error {
	fmt.Fprintf(stdout, "testapp: sleeping %s\n", d)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "testapp: stop requested while sleeping")
	case <-t.C:
		fmt.Fprintln(stdout, "testapp: slept")
	}
	return nil
}

// check performs one GET with a 2 s timeout and succeeds only on 200.
func check(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: status %s", url, resp.Status)
	}
	return nil
}

// serve runs the HTTP server until ctx is cancelled (graceful, nil error) or
// EXIT_AFTER fires (exitError).
func serve(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	start := time.Now()
	exit := func() error {
		fmt.Fprintf(stderr, "testapp %s: EXIT_AFTER=%s elapsed, exiting with code %d\n", cfg.version, cfg.exitAfter, cfg.exitCode)
		return exitError{code: cfg.exitCode}
	}
	var exitC <-chan time.Time
	if cfg.exitSet {
		if cfg.exitAfter == 0 {
			return exit()
		}
		timer := time.NewTimer(cfg.exitAfter)
		defer timer.Stop()
		exitC = timer.C
	}

	if cfg.startDelay > 0 {
		delay := time.NewTimer(cfg.startDelay)
		select {
		case <-ctx.Done():
			delay.Stop()
			return nil
		case <-exitC:
			delay.Stop()
			return exit()
		case <-delay.C:
		}
	}

	if cfg.bootCPU > 0 {
		fmt.Fprintf(stdout, "testapp %s: booting: %d threads computing for %s\n", cfg.version, cfg.bootThreads, cfg.bootCPU)
		burn(ctx, cfg.bootThreads, cfg.bootCPU)
	}

	ln, err := net.Listen("tcp", "0.0.0.0:"+cfg.port)
	if err != nil {
		return fmt.Errorf("listen on port %s: %w", cfg.port, err)
	}
	if cfg.workers > 0 {
		ln = &workerListener{Listener: ln, slots: make(chan struct{}, cfg.workers)}
	}
	srv := &http.Server{
		Handler:           newHandler(cfg, start, time.Now),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(stderr, "testapp: ", 0),
	}
	fmt.Fprintf(stdout, "testapp %s listening on port %s\n", cfg.version, cfg.port)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-exitC:
		_ = srv.Close()
		return exit()
	case <-ctx.Done():
	}

	if cfg.stopDelay > 0 {
		fmt.Fprintf(stdout, "testapp: stop requested, waiting STOP_DELAY=%s before draining\n", cfg.stopDelay)
		<-time.After(cfg.stopDelay) // deliberate: simulates a slow drain
	}
	fmt.Fprintln(stdout, "testapp: shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// spin computes until the thread has used d of CPU time (wall time when
// the thread's CPU time cannot be read), so it takes longer when the CPU
// is shared.
func spin(d time.Duration) {
	if d <= 0 {
		return
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, ok := threadCPU()
	if !ok {
		for end := time.Now().Add(d); time.Now().Before(end); {
		}
		return
	}
	for {
		for range 10000 {
		}
		if now, _ := threadCPU(); now-start >= d {
			return
		}
	}
}

// burn computes on n threads for d of wall time, or until ctx ends.
func burn(ctx context.Context, n int, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				for range 100000 {
				}
			}
		}()
	}
	wg.Wait()
}

// validKey reports whether key matches [A-Za-z0-9_-]+, which keeps it a
// plain file name inside DATA_DIR.
func validKey(key string) bool {
	if key == "" {
		return false
	}
	for _, r := range key {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
		if !ok {
			return false
		}
	}
	return true
}

// newHandler returns the app's routes; now is injectable for tests.
func newHandler(cfg config, start time.Time, now func() time.Time) http.Handler {
	mux := http.NewServeMux()
	version := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)  // a POST's body is read, as an app would
		time.Sleep(cfg.requestDelay) // the request's work
		spin(cfg.requestCPU)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%s\n", cfg.version)
	}
	mux.HandleFunc("GET /{$}", version)
	mux.HandleFunc("POST /{$}", version)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case cfg.healthFail:
			http.Error(w, "unhealthy: HEALTH=fail", http.StatusInternalServerError)
		case now().Sub(start) < cfg.healthyAfter:
			http.Error(w, "unhealthy: HEALTHY_AFTER not yet elapsed", http.StatusInternalServerError)
		default:
			fmt.Fprint(w, "ok")
		}
	})
	if cfg.dataDir != "" {
		mux.HandleFunc("PUT /data/{key}", func(w http.ResponseWriter, r *http.Request) {
			key := r.PathValue("key")
			if !validKey(key) {
				http.Error(w, "invalid key", http.StatusBadRequest)
				return
			}
			if err := writeFileAtomic(filepath.Join(cfg.dataDir, key), r.Body); err != nil {
				http.Error(w, "store: "+err.Error(), http.StatusInternalServerError)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		})
		mux.HandleFunc("GET /data/{key}", func(w http.ResponseWriter, r *http.Request) {
			key := r.PathValue("key")
			if !validKey(key) {
				http.Error(w, "invalid key", http.StatusBadRequest)
				return
			}
			b, err := os.ReadFile(filepath.Join(cfg.dataDir, key))
			if errors.Is(err, os.ErrNotExist) {
				http.NotFound(w, r)
				return
			}
			if err != nil {
				http.Error(w, "read: "+err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(b)
		})
	}
	return mux
}

// writeFileAtomic writes r to path via a temporary file and rename, so a
// reader never sees a half-written value.
func writeFileAtomic(path string, r io.Reader) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rename to %s: %w", path, err)
	}
	return nil
}
