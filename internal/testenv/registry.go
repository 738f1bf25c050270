package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
	"golang.org/x/crypto/bcrypt"
)

// debianRegistry is where Debian's docker-registry package installs the
// distribution 2.8 registry.
const debianRegistry = "/usr/bin/docker-registry"

// Registry is a real image registry (Debian's docker-registry, distribution
// 2.8) listening on 127.0.0.1. The Docker engine treats 127.0.0.0/8 registries
// as insecure, so it pushes and pulls over plain HTTP without configuration.
// A Registry is used from one goroutine.
type Registry struct {
	Addr string // "127.0.0.1:PORT"

	bin  string
	dir  string        // holds config.yml, registry.log and storage/
	proc *registryProc // nil while stopped
	// user and password, when set, are required by the registry (htpasswd).
	user, password string
}

// registryProc is one run of the registry process.
type registryProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, valid after done
}

// StartRegistry starts a registry with filesystem storage in t.TempDir(), on a
// free 127.0.0.1 port with deletes enabled, and waits until GET /v2/ answers
// 200. It is stopped when the test ends. Without the docker-registry binary
// the test is skipped, or fails when CI is set.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	return startRegistry(t, "", "")
}

// StartAuthRegistry starts a registry like StartRegistry that requires
// HTTP basic authentication as user with password (an htpasswd file with a
// bcrypt hash). Push images to it with its Push method.
func StartAuthRegistry(t testing.TB, user, password string) *Registry {
	t.Helper()
	return startRegistry(t, user, password)
}

// Push pushes ref with this registry's credentials and returns the digest.
func (r *Registry) Push(t testing.TB, cli *client.Client, ref string) string {
	t.Helper()
	if r.user == "" {
		return push(t, cli, ref, emptyAuth)
	}
	auth, err := registry.EncodeAuthConfig(registry.AuthConfig{Username: r.user, Password: r.password, ServerAddress: r.Addr})
	if err != nil {
		t.Fatalf("encode credentials: %v", err)
	}
	return push(t, cli, ref, auth)
}

func startRegistry(t testing.TB, user, password string) *Registry {
	t.Helper()
	bin := debianRegistry
	if _, err := os.Stat(bin); err != nil {
		found, lookErr := exec.LookPath("docker-registry")
		if lookErr != nil {
			unavailable(t, "registry: no %s and no docker-registry in PATH (apt-get install docker-registry)", debianRegistry)
		}
		bin = found
	}
	r := &Registry{bin: bin, dir: t.TempDir(), user: user, password: password}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("registry %s: %v", r.Addr, err)
		}
	})

	// The free port is found by binding and releasing it, so another process
	// may grab it before the registry does: try a few ports.
	var err error
	for range 3 {
		r.Addr, err = freeAddr()
		if err != nil {
			t.Fatalf("registry: %v", err)
		}
		if err = r.writeConfig(); err != nil {
			t.Fatalf("registry: %v", err)
		}
		if err = r.start(t.Context()); err == nil {
			return r
		}
	}
	t.Fatalf("registry: %v\n%s", err, r.logTail())
	return nil
}

// Stop stops the registry process and keeps its storage, so that tests can
// check how Berth behaves while the registry is down. Stopping a stopped
// registry does nothing.
func (r *Registry) Stop(t testing.TB) {
	t.Helper()
	if err := r.stop(); err != nil {
		t.Fatalf("registry %s: %v", r.Addr, err)
	}
}

// Start starts a stopped registry again on the same address and storage and
// waits until it answers. Starting a running registry does nothing.
func (r *Registry) Start(t testing.TB) {
	t.Helper()
	if r.proc != nil {
		return
	}
	if err := r.start(t.Context()); err != nil {
		t.Fatalf("registry %s: %v\n%s", r.Addr, err, r.logTail())
	}
}

// Ref returns the image reference of name in this registry, e.g.
// Ref("web:v1") is "127.0.0.1:5001/web:v1".
func (r *Registry) Ref(name string) string {
	return r.Addr + "/" + name
}

func (r *Registry) writeConfig() error {
	config := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: berth-testenv
`, filepath.Join(r.dir, "storage"), r.Addr)
	if r.user != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(r.password), bcrypt.MinCost)
		if err != nil {
			return fmt.Errorf("hash password: %w", err)
		}
		htpasswd := filepath.Join(r.dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(r.user+":"+string(hash)+"\n"), 0o600); err != nil {
			return fmt.Errorf("write htpasswd: %w", err)
		}
		config += fmt.Sprintf("auth:\n  htpasswd:\n    realm: berth-testenv\n    path: %s\n", htpasswd)
	}
	if err := os.WriteFile(filepath.Join(r.dir, "config.yml"), []byte(config), 0o644); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// start runs the registry process and waits until it answers or exits.
func (r *Registry) start(ctx context.Context) error {
	logFile, err := os.OpenFile(filepath.Join(r.dir, "registry.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer logFile.Close() // the child keeps its own descriptor

	cmd := exec.Command(r.bin, "serve", filepath.Join(r.dir, "config.yml"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	dieWithParent(cmd)
	// REGISTRY_* variables would override the generated configuration.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REGISTRY_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", r.bin, err)
	}
	p := &registryProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	r.proc = p

	if err := r.waitReady(ctx, 30*time.Second); err != nil {
		_ = r.stop()
		return err
	}
	return nil
}

// waitReady polls GET /v2/ until it answers 200, the process exits or the
// deadline passes.
func (r *Registry) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	url := "http://" + r.Addr + "/v2/"
	var last error
	for {
		if last = probe(ctx, url, r.user, r.password); last == nil {
			return nil
		}
		select {
		case <-r.proc.done:
			return fmt.Errorf("wait for %s: registry exited: %v", url, r.proc.err)
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", url, ctx.Err(), last)
		case <-ticker.C:
		}
	}
}

// probe GETs url once, with basic auth when user is set, and succeeds on 200.
func probe(ctx context.Context, url, user, password string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: status %s", url, resp.Status)
	}
	return nil
}

// stop terminates the running process: SIGTERM, then SIGKILL after a grace
// period.
func (r *Registry) stop() error {
	p := r.proc
	if p == nil {
		return nil
	}
	r.proc = nil
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop: signal: %w", err)
	}
	grace := time.NewTimer(10 * time.Second)
	defer grace.Stop()
	select {
	case <-p.done:
		return nil
	case <-grace.C:
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop: kill: %w", err)
	}
	<-p.done
	return nil
}

// logTail returns the end of the registry's log for failure messages.
func (r *Registry) logTail() string {
	b, err := os.ReadFile(filepath.Join(r.dir, "registry.log"))
	if err != nil {
		return "(no registry log: " + err.Error() + ")"
	}
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return "registry log:\n" + string(b)
}

// freeAddr returns a 127.0.0.1 address whose port was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
