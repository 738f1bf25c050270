package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/store"
	"github.com/berth-deploy/berth/internal/testenv"
)

// engineProxy is a unix socket in front of the Docker engine that the test
// can take away (stop: the socket is gone and every connection through it
// is cut) and bring back (start).
type engineProxy struct {
	path          string
	upNet, upAddr string
	mu            sync.Mutex
	ln            net.Listener
	conns         map[net.Conn]bool
	accepting     sync.WaitGroup
}

func newEngineProxy(t *testing.T, daemonHost, path string) *engineProxy {
	t.Helper()
	p := &engineProxy{path: path, conns: map[net.Conn]bool{}}
	switch {
	case strings.HasPrefix(daemonHost, "unix://"):
		p.upNet, p.upAddr = "unix", strings.TrimPrefix(daemonHost, "unix://")
	case strings.HasPrefix(daemonHost, "tcp://"):
		p.upNet, p.upAddr = "tcp", strings.TrimPrefix(daemonHost, "tcp://")
	default:
		t.Fatalf("engine proxy: cannot proxy DOCKER_HOST %s (unix:// or tcp:// only)", daemonHost)
	}
	p.start(t)
	t.Cleanup(p.stop)
	return p
}

func (p *engineProxy) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatalf("engine proxy: %v", err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.accepting.Add(1)
	go func() {
		defer p.accepting.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial(p.upNet, p.upAddr)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(c, up) {
				return
			}
			go p.pipe(c, up)
			go p.pipe(up, c)
		}
	}()
}

// track records a proxied pair; it refuses (and closes them) once the
// proxy is stopped.
func (p *engineProxy) track(c ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		for _, x := range c {
			x.Close()
		}
		return false
	}
	for _, x := range c {
		p.conns[x] = true
	}
	return true
}

func (p *engineProxy) pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// stop removes the socket and cuts every connection through it.
func (p *engineProxy) stop() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	if ln != nil {
		ln.Close() // also unlinks the socket file
	}
	p.accepting.Wait()
}

// agentdProc is a running agentd binary.
type agentdProc struct {
	cmd  *exec.Cmd
	log  string // its stdout and stderr
	done chan struct{}
	err  error // from Wait, once done is closed
}

// startAgentd starts cmd (agentd, or a wrapper that execs it) with its
// output going to a file, which tells the order of what it logged and what
// it sent to the notify socket: a line is in the file as soon as agentd has
// written it.
func startAgentd(t *testing.T, cmd *exec.Cmd) *agentdProc {
	t.Helper()
	p := &agentdProc{cmd: cmd, log: filepath.Join(t.TempDir(), "agentd.log"), done: make(chan struct{})}
	out, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agentd: %v", err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("agentd's log:\n%s", p.output(t))
		}
	})
	return p
}

func (p *agentdProc) output(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// stop sends SIGTERM and waits for the exit.
func (p *agentdProc) stop(t *testing.T, notify *notifySocket) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	notify.waitFor(t, "STOPPING=1", 30*time.Second)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("agentd did not exit within 60s of SIGTERM")
	}
	if p.err != nil {
		t.Fatalf("agentd exited with %v, want 0", p.err)
	}
}

// childEnv is the test's environment without what systemd passes (and
// without the variables extra sets), plus extra.
func childEnv(extra ...string) []string {
	drop := map[string]bool{"NOTIFY_SOCKET": true, "WATCHDOG_USEC": true, "WATCHDOG_PID": true, "LISTEN_PID": true, "LISTEN_FDS": true, "LISTEN_FDNAMES": true}
	for _, kv := range extra {
		name, _, _ := strings.Cut(kv, "=")
		drop[name] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); !drop[name] {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// shortDir is a temp dir for unix sockets, whose paths are at most 108
// bytes (t.TempDir() paths can be longer).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth-sd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// unixClient is an HTTP client for agentd's socket at path.
func unixClient(path string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}
}

func getJSON(t *testing.T, c *http.Client, path string, v any) {
	t.Helper()
	resp, err := c.Get("http://agentd" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", path, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, body)
	}
}

// TestAgentdUnderSystemd runs the real agentd binary the way systemd does
// with agentd.service (a notify socket, a 1s watchdog) against the real
// engine, through a proxy the test can take away. There is recovery work
// waiting: the store holds a release agentd "died" during.
func TestAgentdUnderSystemd(t *testing.T) {
	docker := testenv.Docker(t)
	bin := testenv.Binary(t, "./cmd/agentd")
	notify := listenNotify(t)
	short := shortDir(t)
	proxy := newEngineProxy(t, docker.DaemonHost(), filepath.Join(short, "docker.sock"))
	sock := filepath.Join(short, "agentd.sock")

	project := testenv.UniqueName("sdnotify")
	t.Cleanup(func() { testenv.RemoveProject(t, docker, project) })
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte("services:\n  web:\n    image: berth-test/sdnotify:never-pulled\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "agentd.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "state_dir: %s\nsocket:\n  path: %s\nprojects:\n  %s:\n    compose_file: compose.yaml\n", stateDir, sock, project), 0o600); err != nil {
		t.Fatal(err)
	}
	// The journal of a first release that never finished: recovery must
	// roll it back (to nothing) before agentd is ready.
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(stateDir, "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Begin(api.Release{Project: project, Started: time.Now(), Identity: "test", Kind: api.KindDeploy, Outcome: api.OutcomeInProgress}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	cmd := exec.Command(bin, "--config", cfg)
	cmd.Env = childEnv("NOTIFY_SOCKET="+notify.path, "WATCHDOG_USEC=1000000", "DOCKER_HOST=unix://"+proxy.path)
	agentd := startAgentd(t, cmd)

	// READY=1, and only once recovery is done and the socket serves.
	seen := notify.waitFor(t, "READY=1", 2*time.Minute)
	logged := agentd.output(t)
	recovered := strings.Index(logged, "recovery done")
	if recovered < 0 || !strings.Contains(logged[recovered:], "agentd ready") {
		t.Fatalf("READY=1 came before recovery was done and logged:\n%s", logged)
	}
	if !has(seen[0], "STATUS=recovering") {
		t.Errorf("the first message is %q, want a recovering status", seen[0])
	}
	for _, m := range seen[:len(seen)-1] {
		if has(m, "READY=1") || has(m, "WATCHDOG=1") {
			t.Errorf("%q before READY=1", m)
		}
	}
	if ready := seen[len(seen)-1]; !has(ready, "STATUS=ready: 1 project, socket "+sock) {
		t.Errorf("READY=1 came with %q", ready)
	}
	var hist []api.Release
	getJSON(t, unixClient(sock), api.PathHistory+"?project="+project, &hist)
	if len(hist) != 1 || hist[0].Number != 1 || hist[0].Outcome != api.OutcomeRolledBack {
		t.Fatalf("history right after READY=1: %+v; want release 1 rolled back by recovery", hist)
	}

	// The watchdog is fed while the engine and the store answer...
	notify.waitFor(t, "WATCHDOG=1", 3*time.Second)
	notify.waitFor(t, "WATCHDOG=1", 3*time.Second)

	// ...and not at all while the engine is away, for several intervals...
	proxy.stop()
	notify.waitFor(t, "STATUS=engine unreachable", 5*time.Second)
	notify.none(t, "WATCHDOG=1", 4*time.Second)

	// ...and again once it is back.
	proxy.start(t)
	notify.waitFor(t, "WATCHDOG=1", 5*time.Second)
	notify.waitFor(t, "STATUS=ready", 5*time.Second)

	agentd.stop(t, notify)
	logged = agentd.output(t)
	for _, want := range []string{"health check failed", "health check passes again", "agentd stopped"} {
		if !strings.Contains(logged, want) {
			t.Errorf("agentd's log lacks %q", want)
		}
	}
	if c := strings.Count(logged, "health check failed"); c != 1 {
		t.Errorf("the failing check is logged %d times, want once (rate-limited)", c)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("agentd left its socket behind: %v", err)
	}
}

// TestAgentdUsesActivatedSocket passes agentd a listening socket the way
// systemd does with agentd.socket (fd 3, LISTEN_FDS, LISTEN_FDNAMES=control,
// LISTEN_PID): agentd serves on it, does not create socket.path, and leaves
// the socket file in place when it exits.
func TestAgentdUsesActivatedSocket(t *testing.T) {
	testenv.Docker(t)
	bin := testenv.Binary(t, "./cmd/agentd")
	notify := listenNotify(t)
	short := shortDir(t)
	activated := filepath.Join(short, "activated.sock")
	configured := filepath.Join(short, "configured.sock")

	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: activated, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	fd, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()

	dir := t.TempDir()
	cfg := filepath.Join(dir, "agentd.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "state_dir: %s\nsocket:\n  path: %s\n", filepath.Join(dir, "state"), configured), 0o600); err != nil {
		t.Fatal(err)
	}
	// systemd sets LISTEN_PID to the pid it execs; a shell that execs
	// agentd does the same.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, bin, "--config", cfg)
	cmd.Env = childEnv("NOTIFY_SOCKET="+notify.path, "LISTEN_FDS=1", "LISTEN_FDNAMES=control")
	cmd.ExtraFiles = []*os.File{fd} // fd 3
	agentd := startAgentd(t, cmd)
	fd.Close()

	seen := notify.waitFor(t, "READY=1", time.Minute)
	if ready := seen[len(seen)-1]; !has(ready, "STATUS=ready: 0 projects, socket "+activated) {
		t.Errorf("READY=1 came with %q", ready)
	}
	var status json.RawMessage
	getJSON(t, unixClient(activated), api.PathStatus, &status)
	if _, err := os.Stat(configured); !os.IsNotExist(err) {
		t.Errorf("agentd created socket.path although systemd passed it a socket: %v", err)
	}
	agentd.stop(t, notify)
	if !strings.Contains(agentd.output(t), "socket activation") {
		t.Errorf("agentd does not log that it uses the activated socket")
	}
	if fi, err := os.Stat(activated); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("the activated socket file is gone after agentd exited: %v", err)
	}
}
