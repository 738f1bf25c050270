package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the tests run the real main() in a child process (the test
// binary re-executed with TESTAPP_AS_MAIN=1), so exit codes and signal
// handling are checked end to end without building a separate binary.
func TestMain(m *testing.M) {
	if os.Getenv("TESTAPP_AS_MAIN") == "1" {
		os.Args = append([]string{"testapp"}, strings.Fields(os.Getenv("TESTAPP_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func get(t *testing.T, h http.Handler, method, path, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), method, path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestLoadConfig(t *testing.T) {
	cfg, err := loadConfig(env())
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	if cfg.port != "8080" || cfg.version != "dev" || cfg.exitCode != 1 || cfg.exitSet || cfg.healthFail {
		t.Errorf("defaults = %+v", cfg)
	}
	cfg, err = loadConfig(env("PORT", "9000", "VERSION", "v2", "EXIT_AFTER", "0s", "EXIT_CODE", "3", "HEALTH", "fail", "STOP_DELAY", "1s",
		"WORKERS", "2", "REQUEST_DELAY", "20ms"))
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	if cfg.port != "9000" || cfg.version != "v2" || !cfg.exitSet || cfg.exitAfter != 0 || cfg.exitCode != 3 || !cfg.healthFail || cfg.stopDelay != time.Second ||
		cfg.workers != 2 || cfg.requestDelay != 20*time.Millisecond {
		t.Errorf("config = %+v", cfg)
	}
	for _, bad := range [][]string{{"START_DELAY", "soon"}, {"HEALTHY_AFTER", "-1s"}, {"EXIT_CODE", "x"}, {"EXIT_CODE", "300"}, {"WORKERS", "0"}, {"WORKERS", "many"}} {
		if _, err := loadConfig(env(bad...)); err == nil {
			t.Errorf("loadConfig(%s=%s): want error", bad[0], bad[1])
		}
	}
}

// TestWorkerListener: with one worker, a second connection waits in the
// listen queue until the first is closed.
func TestWorkerListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &workerListener{Listener: inner, slots: make(chan struct{}, 1)}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for range 2 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first := <-accepted
	select {
	case <-accepted:
		t.Fatal("a second connection was accepted while the only worker was busy")
	case <-time.After(200 * time.Millisecond):
	}
	first.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting connection was not accepted once the worker was free")
	}
}

func TestRoot(t *testing.T) {
	h := newHandler(config{version: "v1"}, time.Now(), time.Now)
	if code, body := get(t, h, "GET", "/", ""); code != 200 || body != "v1\n" {
		t.Errorf("GET / = %d %q, want 200 %q", code, body, "v1\n")
	}
	if code, body := get(t, h, "POST", "/", "an order"); code != 200 || body != "v1\n" {
		t.Errorf("POST / = %d %q, want 200 %q", code, body, "v1\n")
	}
	if code, _ := get(t, h, "DELETE", "/", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE / = %d, want 405", code)
	}
	if code, _ := get(t, h, "GET", "/nope", ""); code != 404 {
		t.Errorf("GET /nope = %d, want 404", code)
	}
}

func TestHealthz(t *testing.T) {
	start := time.Unix(1000, 0)
	now := start
	clock := func() time.Time { return now }

	if code, body := get(t, newHandler(config{}, start, clock), "GET", "/healthz", ""); code != 200 || body != "ok" {
		t.Errorf("healthy: GET /healthz = %d %q, want 200 ok", code, body)
	}
	if code, _ := get(t, newHandler(config{healthFail: true}, start, clock), "GET", "/healthz", ""); code != 500 {
		t.Errorf("HEALTH=fail: GET /healthz = %d, want 500", code)
	}
	h := newHandler(config{healthyAfter: 5 * time.Second}, start, clock)
	now = start.Add(4 * time.Second)
	if code, _ := get(t, h, "GET", "/healthz", ""); code != 500 {
		t.Errorf("HEALTHY_AFTER not elapsed: GET /healthz = %d, want 500", code)
	}
	now = start.Add(5 * time.Second)
	if code, _ := get(t, h, "GET", "/healthz", ""); code != 200 {
		t.Errorf("HEALTHY_AFTER elapsed: GET /healthz = %d, want 200", code)
	}
}

func TestData(t *testing.T) {
	dir := t.TempDir()
	h := newHandler(config{dataDir: dir}, time.Now(), time.Now)
	if code, _ := get(t, h, "GET", "/data/k1", ""); code != 404 {
		t.Errorf("GET absent key = %d, want 404", code)
	}
	if code, _ := get(t, h, "PUT", "/data/k1", "hello"); code != http.StatusNoContent {
		t.Errorf("PUT = %d, want 204", code)
	}
	if code, body := get(t, h, "GET", "/data/k1", ""); code != 200 || body != "hello" {
		t.Errorf("GET = %d %q, want 200 hello", code, body)
	}
	if b, err := os.ReadFile(dir + "/k1"); err != nil || string(b) != "hello" {
		t.Errorf("file = %q, %v", b, err)
	}
	for _, key := range []string{"a.b", "..", "%2e%2e", "a%2Fb", "sp%20ace"} {
		if code, _ := get(t, h, "PUT", "/data/"+key, "x"); code == http.StatusNoContent {
			t.Errorf("PUT /data/%s accepted an invalid key", key)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("DATA_DIR holds %d entries, want only k1", len(entries))
	}

	noData := newHandler(config{}, time.Now(), time.Now)
	if code, _ := get(t, noData, "PUT", "/data/k1", "x"); code != 404 {
		t.Errorf("PUT without DATA_DIR = %d, want 404", code)
	}
}

func TestCheck(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }))
	defer bad.Close()

	var stderr bytes.Buffer
	if err := run(t.Context(), []string{"check", ok.URL}, env(), io.Discard, &stderr); err != nil {
		t.Errorf("check 200: %v", err)
	}
	for _, url := range []string{bad.URL, "http://127.0.0.1:" + freePort(t) + "/healthz"} {
		err := run(t.Context(), []string{"check", url}, env(), io.Discard, &stderr)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 1 {
			t.Errorf("check %s: err = %v, want exit status 1", url, err)
		}
	}
	if !strings.Contains(stderr.String(), "500") {
		t.Errorf("stderr = %q, want the failing status", stderr.String())
	}
	if err := run(t.Context(), []string{"bogus"}, env(), io.Discard, io.Discard); err == nil {
		t.Error("unknown sub-command: want error")
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
}

// waitGet polls url until it answers 200 or the deadline passes.
func waitGet(ctx context.Context, url string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		body, err := httpGet(ctx, url)
		if err == nil {
			return body, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for %s: %w (last: %v)", url, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

func httpGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("build request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("get %s: status %d", url, resp.StatusCode)
	}
	return string(b), nil
}

func TestServeGracefulStop(t *testing.T) {
	port := freePort(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout bytes.Buffer
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- run(ctx, nil, env("PORT", port, "VERSION", "v7", "START_DELAY", "150ms", "STOP_DELAY", "300ms"), &stdout, io.Discard)
	}()
	url := "http://127.0.0.1:" + port + "/"
	body, err := waitGet(t.Context(), url, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if body != "v7\n" {
		t.Errorf("GET / = %q, want %q", body, "v7\n")
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("answered after %v, before START_DELAY", d)
	}

	cancel()
	// During STOP_DELAY the server still serves.
	if _, err := httpGet(t.Context(), url); err != nil {
		t.Errorf("GET during STOP_DELAY: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after stop")
	}
	if !strings.Contains(stdout.String(), "testapp v7 listening on port "+port) {
		t.Errorf("stdout = %q, want a start line with version and port", stdout.String())
	}
}

func TestServeExitAfter(t *testing.T) {
	var stderr bytes.Buffer
	err := run(t.Context(), nil, env("PORT", freePort(t), "EXIT_AFTER", "100ms", "EXIT_CODE", "4"), io.Discard, &stderr)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 4 {
		t.Fatalf("run: err = %v, want exit status 4", err)
	}
	if !strings.Contains(stderr.String(), "EXIT_AFTER") {
		t.Errorf("stderr = %q, want a line about EXIT_AFTER", stderr.String())
	}
}

// runMain starts the real main() in a child process.
func runMain(t *testing.T, args string, environ ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TESTAPP_AS_MAIN=1", "TESTAPP_ARGS="+args)
	cmd.Env = append(cmd.Env, environ...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	return cmd, &stdout, &stderr
}

func TestMainExitAtOnce(t *testing.T) {
	cmd, _, stderr := runMain(t, "", "PORT="+freePort(t), "EXIT_AFTER=0s", "EXIT_CODE=7")
	err := cmd.Wait()
	var xe *exec.ExitError
	if !errors.As(err, &xe) || xe.ExitCode() != 7 {
		t.Fatalf("wait: %v, want exit code 7", err)
	}
	if !strings.Contains(stderr.String(), "exiting with code 7") {
		t.Errorf("stderr = %q", stderr.String())
	}
}

func TestMainSIGTERM(t *testing.T) {
	port := freePort(t)
	cmd, stdout, _ := runMain(t, "", "PORT="+port, "VERSION=v9")
	if _, err := waitGet(t.Context(), "http://127.0.0.1:"+port+"/", 10*time.Second); err != nil {
		_ = cmd.Process.Kill()
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("signal: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("wait after SIGTERM: %v, want exit 0", err)
	}
	if !strings.Contains(stdout.String(), "v9") {
		t.Errorf("stdout = %q", stdout.String())
	}

	// The check sub-command against a port nobody listens on exits 1.
	cmd, _, _ = runMain(t, "check", "PORT="+port)
	var xe *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &xe) || xe.ExitCode() != 1 {
		t.Errorf("check on a closed port: %v, want exit code 1", err)
	}
}

func TestSleep(t *testing.T) {
	var stdout bytes.Buffer
	start := time.Now()
	if err := run(t.Context(), []string{"sleep", "200ms"}, env(), &stdout, io.Discard); err != nil {
		t.Fatalf("sleep 200ms: %v", err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("sleep 200ms returned after %v", took)
	}
	if !strings.Contains(stdout.String(), "slept") {
		t.Errorf("stdout = %q", stdout.String())
	}

	// A stop signal (ctx) ends the sleep at once, with no error.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start = time.Now()
	if err := run(ctx, []string{"sleep", "1h"}, env(), io.Discard, io.Discard); err != nil {
		t.Errorf("sleep 1h, stopped: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a stopped sleep returned after %v", took)
	}

	for _, args := range [][]string{{"sleep"}, {"sleep", "soon"}, {"sleep", "-1s"}, {"sleep", "1s", "2s"}} {
		if err := run(t.Context(), args, env(), io.Discard, io.Discard); err == nil {
			t.Errorf("%q: want an error", args)
		}
	}
}

func TestBootAndRequestCPU(t *testing.T) {
	cfg, err := loadConfig(func(k string) string {
		return map[string]string{"BOOT_CPU": "3x250ms", "REQUEST_CPU": "5ms"}[k]
	})
	if err != nil || cfg.bootThreads != 3 || cfg.bootCPU != 250*time.Millisecond || cfg.requestCPU != 5*time.Millisecond {
		t.Fatalf("config = %+v, %v", cfg, err)
	}
	for _, bad := range []string{"4", "x2s", "0x1s", "65x1s", "2xsoon", "2x-1s"} {
		if _, err := loadConfig(func(k string) string { return map[string]string{"BOOT_CPU": bad}[k] }); err == nil {
			t.Errorf("BOOT_CPU=%q accepted", bad)
		}
	}
	start := time.Now()
	burn(t.Context(), 2, 200*time.Millisecond)
	if took := time.Since(start); took < 200*time.Millisecond || took > 2*time.Second {
		t.Errorf("burn took %s, want about 200ms", took)
	}
	start = time.Now()
	spin(20 * time.Millisecond)
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Errorf("spin(20ms) took %s", took)
	}
}
