package compose

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-deploy/berth/healthcheck"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// fakeEngine is an in-memory Engine: containers, networks and volumes with
// labels, enough to observe and execute plans in unit tests.
type fakeEngine struct {
	mu         sync.Mutex
	next       int
	containers map[string]*fakeContainer
	networks   map[string]network.CreateOptions // by name
	volumes    map[string]volume.CreateOptions
	calls      []string
	failCreate string // container name whose create fails
	hookExit   int64  // exit code of every hook container
	// onHook, when set, sees every hook container as it runs.
	onHook func(*fakeContainer)
	// hookOutput is what every hook container writes on stdout.
	hookOutput string
	execs      map[string][]string
	files      map[string]string // "container-name:/path" -> content copied in
	// conns is, by container name, how many open connections to connPort
	// the next `cat /proc/net/tcp` in it shows; each look drops one, but
	// -1 shows one connection for ever.
	conns    map[string]int
	connPort int
	// stubborn are the services whose containers ignore their stop
	// signal: a stop takes the whole grace period (on clock) and ends in
	// SIGKILL, exit code 137.
	stubborn map[string]bool
	clock    time.Time
	// unfound lists containers that are listed but not found by ID, as
	// while the engine still creates them.
	unfound map[string]bool
}

type fakeContainer struct {
	id, name string
	ip       string // its address on every network, while it runs
	cfg      container.Config
	host     container.HostConfig
	running  bool
	networks []string
	exitCode int
}

func newFakeEngine() *fakeEngine {
	return &fakeEngine{containers: map[string]*fakeContainer{}, networks: map[string]network.CreateOptions{}, volumes: map[string]volume.CreateOptions{}}
}

func (f *fakeEngine) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func matches(labels map[string]string, filter string) bool {
	k, v, _ := strings.Cut(filter, "=")
	return labels[k] == v
}

func (f *fakeEngine) ContainerList(_ context.Context, o container.ListOptions) ([]container.Summary, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []container.Summary
	for _, c := range f.containers {
		if !all(o.Filters.Get("label"), c.cfg.Labels) || (!c.running && (!o.All || len(o.Filters.Get("status")) > 0)) {
			continue
		}
		state := "exited"
		if c.running {
			state = "running"
		}
		nets := map[string]*network.EndpointSettings{}
		for _, n := range c.networks {
			nets[n] = &network.EndpointSettings{IPAddress: c.ip}
		}
		out = append(out, container.Summary{ID: c.id, Names: []string{"/" + c.name}, Image: c.cfg.Image, Labels: c.cfg.Labels, State: state,
			NetworkSettings: &container.NetworkSettingsSummary{Networks: nets}})
	}
	return out, nil
}

func all(filters []string, labels map[string]string) bool {
	for _, fl := range filters {
		if !matches(labels, fl) {
			return false
		}
	}
	return true
}

func (f *fakeEngine) ContainerCreate(_ context.Context, cfg *container.Config, host *container.HostConfig, nc *network.NetworkingConfig, _ *ocispec.Platform, name string) (container.CreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("create %s", name)
	if name == f.failCreate {
		return container.CreateResponse{}, fmt.Errorf("fake: create %s refused", name)
	}
	for _, c := range f.containers {
		if c.name == name {
			return container.CreateResponse{}, errdefs.Conflict(fmt.Errorf("name %s in use", name))
		}
	}
	f.next++
	c := &fakeContainer{id: fmt.Sprintf("c%03d", f.next), name: name, cfg: *cfg, ip: fmt.Sprintf("10.0.0.%d", f.next)}
	c.cfg.Labels = maps.Clone(cfg.Labels)
	if host != nil {
		c.host = *host
	}
	if nc != nil {
		for n := range nc.EndpointsConfig {
			c.networks = append(c.networks, n)
		}
	}
	f.containers[c.id] = c
	return container.CreateResponse{ID: c.id}, nil
}

func (f *fakeEngine) get(id string) (*fakeContainer, error) {
	c, ok := f.containers[id]
	if !ok || f.unfound[id] {
		return nil, errdefs.NotFound(fmt.Errorf("no container %s", id))
	}
	return c, nil
}

func (f *fakeEngine) ContainerStart(_ context.Context, id string, _ container.StartOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return err
	}
	f.record("start %s", c.name)
	c.running = true
	return nil
}

// ContainerStop stops a container as the engine does: with the timeout
// given, else the container's own, else 10 s. A container of a stubborn
// service takes the whole timeout (the clock moves on) and is killed; one
// whose stop signal is SIGKILL is killed at once; any other exits 0.
func (f *fakeEngine) ContainerStop(_ context.Context, id string, o container.StopOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return err
	}
	f.record("stop %s", c.name)
	timeout := engineStopTimeout
	if c.cfg.StopTimeout != nil {
		timeout = time.Duration(*c.cfg.StopTimeout) * time.Second
	}
	if o.Timeout != nil {
		timeout = time.Duration(*o.Timeout) * time.Second
	}
	switch {
	case !c.running:
	case isSIGKILL(c.cfg.StopSignal):
		c.exitCode = exitSIGKILL
	case f.stubborn[c.cfg.Labels[LabelService]]:
		f.clock = f.clock.Add(timeout + 200*time.Millisecond)
		c.exitCode = exitSIGKILL
	default:
		c.exitCode = 0
	}
	c.running = false
	return nil
}

// now is the fake's clock, which only stops move on.
func (f *fakeEngine) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clock
}

func (f *fakeEngine) ContainerRemove(_ context.Context, id string, o container.RemoveOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return err
	}
	if c.running && !o.Force {
		return errdefs.Conflict(fmt.Errorf("container %s is running", c.name))
	}
	f.record("remove %s", c.name)
	delete(f.containers, id)
	return nil
}

func (f *fakeEngine) ContainerRename(_ context.Context, id, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return err
	}
	for _, o := range f.containers {
		if o.name == name {
			return errdefs.Conflict(fmt.Errorf("name %s in use", name))
		}
	}
	f.record("rename %s %s", c.name, name)
	c.name = name
	return nil
}

// ContainerUpdate changes a container's CPU weight.
func (f *fakeEngine) ContainerUpdate(_ context.Context, id string, u container.UpdateConfig) (container.UpdateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return container.UpdateResponse{}, err
	}
	f.record("update %s cpu-shares %d", c.name, u.CPUShares)
	c.host.CPUShares = u.CPUShares
	return container.UpdateResponse{}, nil
}

// ContainerWait reports hooks as exiting with hookExit at once.
func (f *fakeEngine) ContainerWait(_ context.Context, id string, _ container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	waitc := make(chan container.WaitResponse, 1)
	if c, ok := f.containers[id]; ok {
		f.record("hook %s %s", c.name, strings.Join(c.cfg.Cmd, " "))
		if f.onHook != nil {
			f.onHook(c)
		}
		c.running = false
	}
	waitc <- container.WaitResponse{StatusCode: f.hookExit}
	return waitc, make(chan error)
}

// ContainerLogs gives a hook container hookOutput, multiplexed as the
// engine does for a container without a TTY.
func (f *fakeEngine) ContainerLogs(context.Context, string, container.LogsOptions) (io.ReadCloser, error) {
	var b bytes.Buffer
	stdcopy.NewStdWriter(&b, stdcopy.Stdout).Write([]byte(f.hookOutput))
	return io.NopCloser(&b), nil
}

func (f *fakeEngine) ContainerExecCreate(_ context.Context, id string, o container.ExecOptions) (container.ExecCreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return container.ExecCreateResponse{}, err
	}
	if f.execs == nil {
		f.execs = map[string][]string{}
	}
	execID := fmt.Sprintf("exec-%d", len(f.execs))
	switch o.Cmd[0] {
	case "getent":
	case "cat":
		execID += ":" + c.name
	default:
		f.record("exec %s %s", c.name, strings.Join(o.Cmd, " "))
	}
	f.execs[execID] = o.Cmd
	return container.ExecCreateResponse{ID: execID}, nil
}

// ContainerExecAttach answers getent ahostsv4 SERVICE the way Docker's
// embedded DNS does: the addresses of the service's running containers;
// and cat /proc/net/tcp with conns[container] open connections.
func (f *fakeEngine) ContainerExecAttach(_ context.Context, execID string, _ container.ExecAttachOptions) (types.HijackedResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out bytes.Buffer
	w := stdcopy.NewStdWriter(&out, stdcopy.Stdout)
	switch cmd := f.execs[execID]; cmd[0] {
	case "getent":
		for _, c := range f.containers {
			if c.running && c.cfg.Labels[LabelService] == cmd[2] {
				fmt.Fprintf(w, "%s       STREAM %s\n", c.ip, cmd[2])
			}
		}
	case "cat":
		_, name, _ := strings.Cut(execID, ":")
		n := f.conns[name]
		if n < 0 {
			n = 1
		} else {
			f.record("count connections of %s: %d", name, n)
		}
		fmt.Fprintf(w, "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
		fmt.Fprintf(w, "   0: 00000000:%04X 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n", f.connPort)
		for i := range n {
			fmt.Fprintf(w, "   %d: 0500000A:%04X 0300000A:%04X 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n", i+1, f.connPort, 40000+i)
		}
		if f.conns[name] > 0 {
			f.conns[name]--
		}
	}
	return types.NewHijackedResponse(&bufConn{r: &out}, ""), nil
}

func (f *fakeEngine) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return container.InspectResponse{}, err
	}
	nets := map[string]*network.EndpointSettings{}
	for _, n := range c.networks {
		nets[n] = &network.EndpointSettings{IPAddress: c.ip}
	}
	cfg, host := c.cfg, c.host
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: c.id, Name: "/" + c.name, HostConfig: &host,
			State: &container.State{Running: c.running, ExitCode: c.exitCode}},
		Config:          &cfg,
		NetworkSettings: &container.NetworkSettings{Networks: nets},
	}, nil
}

// bufConn is a connection that reads a buffer, for exec attachments.
type bufConn struct {
	net.Conn
	r io.Reader
}

func (b *bufConn) Read(p []byte) (int, error)  { return b.r.Read(p) }
func (b *bufConn) Write(p []byte) (int, error) { return len(p), nil }
func (b *bufConn) Close() error                { return nil }
func (b *bufConn) CloseWrite() error           { return nil }

func (f *fakeEngine) ContainerExecInspect(context.Context, string) (container.ExecInspect, error) {
	return container.ExecInspect{ExitCode: 0}, nil
}

// CopyToContainer keeps the files of the tar archive, by container name
// and path.
func (f *fakeEngine) CopyToContainer(_ context.Context, id, dir string, content io.Reader, _ container.CopyToContainerOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return err
	}
	tr := tar.NewReader(content)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeDir {
			f.record("mkdir %s %s", c.name, path.Join(dir, hdr.Name))
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		if f.files == nil {
			f.files = map[string]string{}
		}
		file := path.Join(dir, hdr.Name)
		f.record("copy %s %s", c.name, file)
		f.files[c.name+":"+file] = string(b)
	}
}

func (f *fakeEngine) NetworkList(_ context.Context, o network.ListOptions) ([]network.Summary, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []network.Summary
	for name, n := range f.networks {
		if all(o.Filters.Get("label"), n.Labels) {
			out = append(out, network.Summary{Name: name, ID: "net-" + name, Labels: n.Labels})
		}
	}
	return out, nil
}

func (f *fakeEngine) NetworkCreate(_ context.Context, name string, o network.CreateOptions) (network.CreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("network create %s", name)
	f.networks[name] = o
	return network.CreateResponse{ID: "net-" + name}, nil
}

func (f *fakeEngine) NetworkConnect(_ context.Context, net, id string, _ *network.EndpointSettings) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.get(id)
	if err != nil {
		return err
	}
	c.networks = append(c.networks, net)
	return nil
}

func (f *fakeEngine) NetworkRemove(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.containers {
		if slices.Contains(c.networks, name) {
			return errdefs.Conflict(fmt.Errorf("network %s has active endpoints", name))
		}
	}
	f.record("network remove %s", name)
	delete(f.networks, name)
	return nil
}

func (f *fakeEngine) VolumeList(_ context.Context, o volume.ListOptions) (volume.ListResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out volume.ListResponse
	for name, v := range f.volumes {
		if all(o.Filters.Get("label"), v.Labels) {
			out.Volumes = append(out.Volumes, &volume.Volume{Name: name, Labels: v.Labels})
		}
	}
	return out, nil
}

func (f *fakeEngine) VolumeCreate(_ context.Context, o volume.CreateOptions) (volume.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("volume create %s", o.Name)
	f.volumes[o.Name] = o
	return volume.Volume{Name: o.Name}, nil
}

// ids returns container name -> id, to check which containers survived.
func (f *fakeEngine) ids() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for id, c := range f.containers {
		out[c.name] = id
	}
	return out
}

func (f *fakeEngine) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// fakeGater records the containers it gates and fails those named in fail.
type fakeGater struct {
	eng  *fakeEngine
	fail map[string]error
}

func (g *fakeGater) Gate(_ context.Context, id string, _ healthcheck.Spec) error {
	g.eng.mu.Lock()
	defer g.eng.mu.Unlock()
	c := g.eng.containers[id]
	g.eng.record("gate %s", c.name)
	return g.fail[c.name]
}
