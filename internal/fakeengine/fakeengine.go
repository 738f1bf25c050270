// Package fakeengine is an in-memory Docker engine for unit tests: the
// union of the narrow engine interfaces that compose, healthcheck,
// agent/schedule and agent use (containers with labels, state, health and
// networks; create, start, stop, rename, remove, wait; exec with scripted
// results; logs; events the test feeds; networks, volumes and images).
//
// Each container is kept as the engine would inspect it
// (container.InspectResponse), so a test changes its state the way the
// engine would show it (Update, Exit, SetHealth). What the code under test
// asked is kept in a call log (TakeCalls) and in the exec calls (Execs).
//
// It imports only the Docker API types, so that any package's tests can
// use it without an import cycle.
package fakeengine

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	dockerregistry "github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The labels docker compose puts on a container that the fake reads: the
// service answers the embedded DNS (getent) and picks stubborn containers.
const labelService = "com.docker.compose.service"

// StopTimeout is how long the engine waits after the stop signal when
// neither the call nor the container says (Docker's default).
const StopTimeout = 10 * time.Second

// ExitSIGKILL is the exit code of a container the engine killed.
const ExitSIGKILL = 137

// ExecResult is what one exec does.
type ExecResult struct {
	Stdout, Stderr string
	ExitCode       int
	// Hang keeps the output open after it is written, until the caller
	// hangs up.
	Hang bool
}

// ExecCall is one exec the code asked for.
type ExecCall struct {
	ContainerID string
	Container   string // its name
	Opts        container.ExecOptions
}

// Output is what a container wrote, by stream.
type Output struct {
	Stdout, Stderr string
}

// Engine is the fake. Its methods are safe for concurrent use. Its zero
// value is not usable: use New.
type Engine struct {
	mu         sync.Mutex
	next       int
	lastPid    int      // a started container's process is 1000 + the count of starts
	order      []string // container IDs, oldest first (ContainerList's order)
	containers map[string]*container.InspectResponse
	unfound    map[string]bool
	networks   map[string]network.CreateOptions // by name
	volumes    map[string]volume.CreateOptions  // by name
	images     []image.Summary

	removedImages   []string
	imageRemoveOpts []image.RemoveOptions
	imageRemoveErr  map[string]error
	onImageList     func(context.Context) error
	registry        map[string]string // repository:tag -> digest, what the registry serves
	crashOnStart    map[string]int    // by image: the exit code its containers die with

	calls []string

	execCalls   []ExecCall
	execResults []ExecResult // in order; the last one repeats
	nextResult  int
	execByID    map[string]ExecResult

	logs        map[string]Output // by container ID
	defaultLogs Output

	failCreate string
	waitExit   int64
	onWait     func(container.InspectResponse)
	stubborn   map[string]bool
	connPort   int
	conns      map[string]int // by container name
	files      map[string]string
	clock      time.Time

	eventFilters []events.ListOptions
	events       chan events.Message
}

// New returns an empty engine.
func New() *Engine {
	return &Engine{
		containers:     map[string]*container.InspectResponse{},
		unfound:        map[string]bool{},
		networks:       map[string]network.CreateOptions{},
		volumes:        map[string]volume.CreateOptions{},
		imageRemoveErr: map[string]error{},
		execByID:       map[string]ExecResult{},
		logs:           map[string]Output{},
		stubborn:       map[string]bool{},
		conns:          map[string]int{},
		files:          map[string]string{},
		registry:       map[string]string{},
		crashOnStart:   map[string]int{},
		events:         make(chan events.Message, 16),
	}
}

// Scripting: what the engine will do.

// FailCreate makes the creation of the container called name fail.
func (e *Engine) FailCreate(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failCreate = name
}

// SetWaitExit sets the exit code every waited container reports (a
// one-off container such as a hook).
func (e *Engine) SetWaitExit(code int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.waitExit = code
}

// SetStubborn makes the containers of the compose service ignore their
// stop signal: a stop takes the whole grace period (on the fake's clock)
// and ends in SIGKILL.
func (e *Engine) SetStubborn(services ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range services {
		e.stubborn[s] = true
	}
}

// SetExecResults scripts the execs that are not answered by the engine
// itself (getent, cat /proc/net/tcp): in order, the last one repeating.
// With none, an exec writes nothing and exits 0.
func (e *Engine) SetExecResults(rs ...ExecResult) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.execResults = rs
	e.nextResult = 0
}

// SetLogs sets what container id wrote.
func (e *Engine) SetLogs(id string, o Output) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.logs[id] = o
}

// SetDefaultLogs sets what every container without logs of its own wrote.
func (e *Engine) SetDefaultLogs(o Output) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.defaultLogs = o
}

// SetConnPort sets the port every container listens on in
// /proc/net/tcp.
func (e *Engine) SetConnPort(port int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.connPort = port
}

// SetConns makes the next look at /proc/net/tcp in the container called
// name show n open connections to the port; each look drops one, but
// n = -1 shows one connection for ever.
func (e *Engine) SetConns(name string, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.conns[name] = n
}

// SetUnfound makes container id listed but not found by its ID (as while
// the engine still creates it), or found again.
func (e *Engine) SetUnfound(id string, unfound bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if unfound {
		e.unfound[id] = true
	} else {
		delete(e.unfound, id)
	}
}

// SetImages replaces the engine's images.
func (e *Engine) SetImages(imgs ...image.Summary) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.images = slices.Clone(imgs)
}

// FailImageRemove makes the removal of image id fail with err.
func (e *Engine) FailImageRemove(id string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.imageRemoveErr[id] = err
}

// OnImageList runs f at the start of every ImageList (outside the lock);
// its error is ImageList's.
func (e *Engine) OnImageList(f func(context.Context) error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onImageList = f
}

// SetRegistry makes the registry serve digest for ref (repository:tag):
// DistributionInspect resolves it, and ImagePull of ref or of
// repository@digest adds the image.
func (e *Engine) SetRegistry(ref, digest string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.registry[ref] = digest
}

// CrashOnStart makes every container of img (its config's image, as
// created) exit with code as soon as it starts, as a process that dies at
// once does.
func (e *Engine) CrashOnStart(img string, code int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.crashOnStart[img] = code
}

// Containers as a test sets them up or changes them.

// Put adds a container as the engine would inspect it (or replaces the one
// with its ID). Missing parts (state, config, networks) are filled empty.
func (e *Engine) Put(in container.InspectResponse) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := deepCopy(in)
	if c.ContainerJSONBase == nil {
		c.ContainerJSONBase = &container.ContainerJSONBase{}
	}
	if c.State == nil {
		c.State = &container.State{}
	}
	if c.Config == nil {
		c.Config = &container.Config{}
	}
	if c.NetworkSettings == nil {
		c.NetworkSettings = &container.NetworkSettings{}
	}
	if c.NetworkSettings.Networks == nil {
		c.NetworkSettings.Networks = map[string]*network.EndpointSettings{}
	}
	if _, ok := e.containers[c.ID]; !ok {
		e.order = append(e.order, c.ID)
	}
	e.containers[c.ID] = &c
}

// Update changes container id as the engine shows it.
func (e *Engine) Update(id string, change func(*container.InspectResponse)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	change(e.containers[id])
}

// Exit makes container id exited with code, without an event.
func (e *Engine) Exit(id string, code int) {
	e.Update(id, func(in *container.InspectResponse) {
		in.State.Running = false
		in.State.Status = container.StateExited
		in.State.ExitCode = code
		in.State.Pid = 0
	})
}

// SetHealth gives container id a HEALTHCHECK in the given state.
func (e *Engine) SetHealth(id, status string) {
	e.Update(id, func(in *container.InspectResponse) {
		if in.Config.Healthcheck == nil {
			in.Config.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/testapp", "check"}}
		}
		in.State.Health = &container.Health{Status: status}
	})
}

// Send feeds an event to the event streams.
func (e *Engine) Send(m events.Message) { e.events <- m }

// SendContainer feeds an event about container id.
func (e *Engine) SendContainer(id string, action events.Action, attrs map[string]string) {
	e.Send(events.Message{Type: events.ContainerEventType, Action: action, Actor: events.Actor{ID: id, Attributes: attrs}})
}

// What happened.

// TakeCalls returns the calls logged since the last TakeCalls: "create
// NAME", "start NAME", "stop NAME", "remove NAME", "rename OLD NEW", "hook
// NAME CMD" (a waited container), "exec NAME CMD", "count connections of
// NAME: N", "mkdir NAME DIR", "copy NAME FILE", "network create|remove
// NAME", "volume create NAME", and what tests add with Record.
func (e *Engine) TakeCalls() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.calls
	e.calls = nil
	return c
}

// Record adds a line to the call log (for fakes built around the engine,
// such as a health gate).
func (e *Engine) Record(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.record(format, args...)
}

func (e *Engine) record(format string, args ...any) {
	e.calls = append(e.calls, fmt.Sprintf(format, args...))
}

// IDs returns container name -> ID, to check which containers survived.
func (e *Engine) IDs() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]string{}
	for id, c := range e.containers {
		out[strings.TrimPrefix(c.Name, "/")] = id
	}
	return out
}

// Container returns container id as the engine shows it, and whether
// there is one.
func (e *Engine) Container(id string) (container.InspectResponse, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.containers[id]
	if !ok {
		return container.InspectResponse{}, false
	}
	return deepCopy(*c), true
}

// Name returns the name of container id, without the leading slash.
func (e *Engine) Name(id string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.containers[id]; ok {
		return strings.TrimPrefix(c.Name, "/")
	}
	return ""
}

// IP returns the address of container id.
func (e *Engine) IP(id string) string {
	in, _ := e.Container(id)
	if in.NetworkSettings == nil {
		return ""
	}
	for _, n := range in.NetworkSettings.Networks {
		if n != nil && n.IPAddress != "" {
			return n.IPAddress
		}
	}
	return ""
}

// Running reports whether container id runs.
func (e *Engine) Running(id string) bool {
	in, ok := e.Container(id)
	return ok && in.State.Running
}

// Execs returns the execs asked for, in order.
func (e *Engine) Execs() []ExecCall {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.execCalls)
}

// Files returns the files copied into containers, by "NAME:PATH".
func (e *Engine) Files() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.files)
}

// Networks returns the names of the networks.
func (e *Engine) Networks() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Sorted(maps.Keys(e.networks))
}

// HasVolume reports whether volume name exists.
func (e *Engine) HasVolume(name string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.volumes[name]
	return ok
}

// Images returns the engine's images.
func (e *Engine) Images() []image.Summary {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.images)
}

// RemovedImages returns the images removed, with the options of each
// removal.
func (e *Engine) RemovedImages() ([]string, []image.RemoveOptions) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.removedImages), slices.Clone(e.imageRemoveOpts)
}

// EventFilters returns the options of every event subscription, in order.
func (e *Engine) EventFilters() []events.ListOptions {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.eventFilters)
}

// Now is the fake's clock, which only stops of stubborn containers move on.
func (e *Engine) Now() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.clock
}

// The engine API.

func (e *Engine) get(id string) (*container.InspectResponse, error) {
	c, ok := e.containers[id]
	if !ok || e.unfound[id] {
		return nil, errdefs.NotFound(fmt.Errorf("no such container: %s", id))
	}
	return c, nil
}

func name(c *container.InspectResponse) string { return strings.TrimPrefix(c.Name, "/") }

func matchLabels(filters []string, labels map[string]string) bool {
	for _, f := range filters {
		k, v, hasValue := strings.Cut(f, "=")
		if got, ok := labels[k]; !ok || hasValue && got != v {
			return false
		}
	}
	return true
}

// ContainerList lists as the engine does: by label filters; with a status
// filter, the containers in one of those states, else with All every
// container and without it the running ones.
func (e *Engine) ContainerList(_ context.Context, o container.ListOptions) ([]container.Summary, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []container.Summary
	for _, id := range e.order {
		c := e.containers[id]
		if !matchLabels(o.Filters.Get("label"), c.Config.Labels) {
			continue
		}
		if st := o.Filters.Get("status"); len(st) > 0 {
			if !slices.Contains(st, c.State.Status) {
				continue
			}
		} else if !o.All && !c.State.Running {
			continue
		}
		nets := map[string]*network.EndpointSettings{}
		for n, s := range c.NetworkSettings.Networks {
			nets[n] = &network.EndpointSettings{IPAddress: s.IPAddress}
		}
		out = append(out, container.Summary{ID: c.ID, Names: []string{"/" + name(c)}, Image: c.Config.Image, ImageID: c.Image,
			Labels: maps.Clone(c.Config.Labels), State: c.State.Status, NetworkSettings: &container.NetworkSettingsSummary{Networks: nets}})
	}
	return out, nil
}

// ContainerCreate creates a container with an address (10.0.0.N) on the
// networks it is created on.
func (e *Engine) ContainerCreate(_ context.Context, cfg *container.Config, hc *container.HostConfig, nc *network.NetworkingConfig, _ *ocispec.Platform, containerName string) (container.CreateResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.record("create %s", containerName)
	if containerName == e.failCreate {
		return container.CreateResponse{}, fmt.Errorf("fake: create %s refused", containerName)
	}
	for _, c := range e.containers {
		if name(c) == containerName {
			return container.CreateResponse{}, errdefs.Conflict(fmt.Errorf("name %s in use", containerName))
		}
	}
	e.next++
	id := fmt.Sprintf("c%03d", e.next)
	ip := fmt.Sprintf("10.0.0.%d", e.next)
	c := &container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: id, Name: "/" + containerName, Image: cfg.Image,
			State: &container.State{Status: "created"}},
		Config:          new(container.Config),
		NetworkSettings: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{}},
	}
	*c.Config = *cfg
	c.Config.Labels = maps.Clone(cfg.Labels)
	if hc != nil {
		h := *hc
		c.HostConfig = &h
	}
	if nc != nil {
		for n := range nc.EndpointsConfig {
			c.NetworkSettings.Networks[n] = &network.EndpointSettings{IPAddress: ip}
		}
	}
	e.containers[id] = c
	e.order = append(e.order, id)
	return container.CreateResponse{ID: id}, nil
}

func (e *Engine) ContainerStart(_ context.Context, id string, _ container.StartOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
	if err != nil {
		return err
	}
	e.record("start %s", name(c))
	if code, ok := e.crashOnStart[c.Config.Image]; ok {
		c.State.Running = false
		c.State.Status = container.StateExited
		c.State.ExitCode = code
		return nil
	}
	c.State.Running = true
	c.State.Status = container.StateRunning
	c.State.ExitCode = 0
	e.lastPid++
	c.State.Pid = 1000 + e.lastPid
	return nil
}

// ContainerStop stops a container as the engine does: with the timeout
// given, else the container's own, else StopTimeout. A container of a
// stubborn service takes the whole timeout (the clock moves on) and is
// killed; one whose stop signal is SIGKILL is killed at once; any other
// exits 0.
func (e *Engine) ContainerStop(_ context.Context, id string, o container.StopOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
	if err != nil {
		return err
	}
	e.record("stop %s", name(c))
	timeout := StopTimeout
	if c.Config.StopTimeout != nil {
		timeout = time.Duration(*c.Config.StopTimeout) * time.Second
	}
	if o.Timeout != nil {
		timeout = time.Duration(*o.Timeout) * time.Second
	}
	switch {
	case !c.State.Running:
	case isSIGKILL(c.Config.StopSignal):
		c.State.ExitCode = ExitSIGKILL
	case e.stubborn[c.Config.Labels[labelService]]:
		e.clock = e.clock.Add(timeout + 200*time.Millisecond)
		c.State.ExitCode = ExitSIGKILL
	default:
		c.State.ExitCode = 0
	}
	c.State.Running = false
	c.State.Status = container.StateExited
	c.State.Pid = 0
	return nil
}

func isSIGKILL(signal string) bool {
	if n, err := strconv.Atoi(signal); err == nil {
		return n == 9
	}
	return strings.TrimPrefix(strings.ToUpper(signal), "SIG") == "KILL"
}

func (e *Engine) ContainerRemove(_ context.Context, id string, o container.RemoveOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
	if err != nil {
		return err
	}
	if c.State.Running && !o.Force {
		return errdefs.Conflict(fmt.Errorf("container %s is running", name(c)))
	}
	e.record("remove %s", name(c))
	delete(e.containers, id)
	e.order = slices.DeleteFunc(e.order, func(x string) bool { return x == id })
	return nil
}

func (e *Engine) ContainerRename(_ context.Context, id, newName string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
	if err != nil {
		return err
	}
	for _, o := range e.containers {
		if name(o) == newName {
			return errdefs.Conflict(fmt.Errorf("name %s in use", newName))
		}
	}
	e.record("rename %s %s", name(c), newName)
	c.Name = "/" + newName
	return nil
}

// SetOnWait makes ContainerWait show each container waited for (a hook) to
// f, as it is when it runs; f must not call the engine.
func (e *Engine) SetOnWait(f func(container.InspectResponse)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onWait = f
}

// ContainerUpdate changes a container's CPU weight (the only resource
// the executor updates).
func (e *Engine) ContainerUpdate(_ context.Context, id string, u container.UpdateConfig) (container.UpdateResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
	if err != nil {
		return container.UpdateResponse{}, err
	}
	e.record("update %s cpu-shares %d", name(c), u.CPUShares)
	if c.HostConfig == nil {
		c.HostConfig = &container.HostConfig{}
	}
	c.HostConfig.CPUShares = u.CPUShares
	return container.UpdateResponse{}, nil
}

// ContainerWait reports the container as exited at once, with the code
// set by SetWaitExit.
func (e *Engine) ContainerWait(_ context.Context, id string, _ container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	waitc := make(chan container.WaitResponse, 1)
	if c, ok := e.containers[id]; ok {
		e.record("hook %s %s", name(c), strings.Join(c.Config.Cmd, " "))
		if e.onWait != nil {
			e.onWait(deepCopy(*c))
		}
		c.State.Running = false
		c.State.Status = container.StateExited
		c.State.ExitCode = int(e.waitExit)
		c.State.Pid = 0
	}
	waitc <- container.WaitResponse{StatusCode: e.waitExit}
	return waitc, make(chan error)
}

// ContainerLogs gives what the container wrote (SetLogs, SetDefaultLogs),
// multiplexed as the engine does for a container without a TTY.
func (e *Engine) ContainerLogs(_ context.Context, id string, o container.LogsOptions) (io.ReadCloser, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out, ok := e.logs[id]
	if !ok {
		out = e.defaultLogs
	}
	var b bytes.Buffer
	if o.ShowStdout && out.Stdout != "" {
		_, _ = stdcopy.NewStdWriter(&b, stdcopy.Stdout).Write([]byte(out.Stdout))
	}
	if o.ShowStderr && out.Stderr != "" {
		_, _ = stdcopy.NewStdWriter(&b, stdcopy.Stderr).Write([]byte(out.Stderr))
	}
	return io.NopCloser(&b), nil
}

func (e *Engine) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
	if err != nil {
		return container.InspectResponse{}, err
	}
	return deepCopy(*c), nil
}

// deepCopy copies the parts a test or the fake changes in place.
func deepCopy(in container.InspectResponse) container.InspectResponse {
	out := in
	if in.ContainerJSONBase != nil {
		base := *in.ContainerJSONBase
		if base.State != nil {
			st := *base.State
			if st.Health != nil {
				h := *st.Health
				h.Log = slices.Clone(h.Log)
				st.Health = &h
			}
			base.State = &st
		}
		if base.HostConfig != nil {
			h := *base.HostConfig
			base.HostConfig = &h
		}
		out.ContainerJSONBase = &base
	}
	if in.Config != nil {
		cfg := *in.Config
		cfg.Labels = maps.Clone(cfg.Labels)
		out.Config = &cfg
	}
	if in.NetworkSettings != nil {
		ns := *in.NetworkSettings
		if ns.Networks != nil {
			ns.Networks = map[string]*network.EndpointSettings{}
			for n, s := range in.NetworkSettings.Networks {
				if s != nil {
					c := *s
					s = &c
				}
				ns.Networks[n] = s
			}
		}
		out.NetworkSettings = &ns
	}
	return out
}

// ContainerExecCreate records the exec. `getent ahostsv4 SERVICE` and
// `cat /proc/net/tcp [...]` are answered by the engine itself; any other exec
// takes the next scripted result.
func (e *Engine) ContainerExecCreate(_ context.Context, id string, o container.ExecOptions) (container.ExecCreateResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
	if err != nil {
		return container.ExecCreateResponse{}, err
	}
	e.execCalls = append(e.execCalls, ExecCall{ContainerID: id, Container: name(c), Opts: o})
	execID := fmt.Sprintf("exec-%d", len(e.execCalls))
	var res ExecResult
	switch {
	case len(o.Cmd) == 3 && o.Cmd[0] == "getent" && o.Cmd[1] == "ahostsv4":
		res = ExecResult{Stdout: e.resolve(o.Cmd[2])}
	case len(o.Cmd) >= 2 && o.Cmd[0] == "cat" && o.Cmd[1] == "/proc/net/tcp":
		res = ExecResult{Stdout: e.procNetTCP(name(c))}
	default:
		e.record("exec %s %s", name(c), strings.Join(o.Cmd, " "))
		if len(e.execResults) > 0 {
			res = e.execResults[min(e.nextResult, len(e.execResults)-1)]
			e.nextResult++
		}
	}
	e.execByID[execID] = res
	return container.ExecCreateResponse{ID: execID}, nil
}

// resolve answers getent ahostsv4 SERVICE the way Docker's embedded DNS
// does: the addresses of the service's running containers.
func (e *Engine) resolve(service string) string {
	var b strings.Builder
	for _, id := range e.order {
		c := e.containers[id]
		if !c.State.Running || c.Config.Labels[labelService] != service {
			continue
		}
		for _, n := range c.NetworkSettings.Networks {
			fmt.Fprintf(&b, "%s       STREAM %s\n", n.IPAddress, service)
			break
		}
	}
	return b.String()
}

// procNetTCP is /proc/net/tcp in container name: a listener on the
// connection port and the open connections SetConns set.
func (e *Engine) procNetTCP(name string) string {
	n := e.conns[name]
	if n < 0 {
		n = 1
	} else {
		e.record("count connections of %s: %d", name, n)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
	fmt.Fprintf(&b, "   0: 00000000:%04X 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n", e.connPort)
	for i := range n {
		fmt.Fprintf(&b, "   %d: 0500000A:%04X 0300000A:%04X 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n", i+1, e.connPort, 40000+i)
	}
	if e.conns[name] > 0 {
		e.conns[name]--
	}
	return b.String()
}

// ContainerExecAttach streams the exec's output, multiplexed as the engine
// does and in small pieces as a real stream comes, over an in-memory
// connection.
func (e *Engine) ContainerExecAttach(_ context.Context, execID string, _ container.ExecAttachOptions) (types.HijackedResponse, error) {
	e.mu.Lock()
	res, ok := e.execByID[execID]
	e.mu.Unlock()
	if !ok {
		return types.HijackedResponse{}, errdefs.NotFound(fmt.Errorf("no such exec: %s", execID))
	}
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		out := stdcopy.NewStdWriter(server, stdcopy.Stdout)
		for b := []byte(res.Stdout); len(b) > 0; {
			k := min(7, len(b))
			if _, err := out.Write(b[:k]); err != nil {
				return
			}
			b = b[k:]
		}
		if res.Stderr != "" {
			if _, err := stdcopy.NewStdWriter(server, stdcopy.Stderr).Write([]byte(res.Stderr)); err != nil {
				return
			}
		}
		if res.Hang {
			_, _ = io.Copy(io.Discard, server) // until the client closes its end
		}
	}()
	return types.HijackedResponse{Conn: client, Reader: bufio.NewReader(client)}, nil
}

func (e *Engine) ContainerExecInspect(_ context.Context, execID string) (container.ExecInspect, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	res, ok := e.execByID[execID]
	if !ok {
		return container.ExecInspect{}, errdefs.NotFound(fmt.Errorf("no such exec: %s", execID))
	}
	return container.ExecInspect{ExecID: execID, ExitCode: res.ExitCode}, nil
}

// CopyToContainer keeps the files of the tar archive, by container name
// and path.
func (e *Engine) CopyToContainer(_ context.Context, id, dir string, content io.Reader, _ container.CopyToContainerOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
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
			e.record("mkdir %s %s", name(c), path.Join(dir, hdr.Name))
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		file := path.Join(dir, hdr.Name)
		e.record("copy %s %s", name(c), file)
		e.files[name(c)+":"+file] = string(b)
	}
}

// Events returns the stream the test feeds (Send), shared by every
// subscriber, and records the subscription's filters.
func (e *Engine) Events(ctx context.Context, o events.ListOptions) (<-chan events.Message, <-chan error) {
	e.mu.Lock()
	e.eventFilters = append(e.eventFilters, o)
	e.mu.Unlock()
	errs := make(chan error, 1)
	go func() {
		<-ctx.Done()
		errs <- ctx.Err()
	}()
	return e.events, errs
}

func (e *Engine) NetworkList(_ context.Context, o network.ListOptions) ([]network.Summary, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []network.Summary
	for _, n := range slices.Sorted(maps.Keys(e.networks)) {
		if opts := e.networks[n]; matchLabels(o.Filters.Get("label"), opts.Labels) {
			out = append(out, network.Summary{Name: n, ID: "net-" + n, Labels: opts.Labels})
		}
	}
	return out, nil
}

func (e *Engine) NetworkCreate(_ context.Context, name string, o network.CreateOptions) (network.CreateResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.record("network create %s", name)
	e.networks[name] = o
	return network.CreateResponse{ID: "net-" + name}, nil
}

func (e *Engine) NetworkConnect(_ context.Context, net, id string, _ *network.EndpointSettings) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(id)
	if err != nil {
		return err
	}
	ip := ""
	for _, s := range c.NetworkSettings.Networks {
		ip = s.IPAddress
	}
	if ip == "" {
		ip = fmt.Sprintf("10.0.1.%d", len(e.order))
	}
	c.NetworkSettings.Networks[net] = &network.EndpointSettings{IPAddress: ip}
	return nil
}

func (e *Engine) NetworkRemove(_ context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.containers {
		if _, ok := c.NetworkSettings.Networks[name]; ok {
			return errdefs.Conflict(fmt.Errorf("network %s has active endpoints", name))
		}
	}
	e.record("network remove %s", name)
	delete(e.networks, name)
	return nil
}

func (e *Engine) VolumeList(_ context.Context, o volume.ListOptions) (volume.ListResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out volume.ListResponse
	for _, n := range slices.Sorted(maps.Keys(e.volumes)) {
		if v := e.volumes[n]; matchLabels(o.Filters.Get("label"), v.Labels) {
			out.Volumes = append(out.Volumes, &volume.Volume{Name: n, Labels: v.Labels})
		}
	}
	return out, nil
}

func (e *Engine) VolumeCreate(_ context.Context, o volume.CreateOptions) (volume.Volume, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.record("volume create %s", o.Name)
	e.volumes[o.Name] = o
	return volume.Volume{Name: o.Name}, nil
}

// ImageList runs the OnImageList hook, then lists the images.
func (e *Engine) ImageList(ctx context.Context, _ image.ListOptions) ([]image.Summary, error) {
	e.mu.Lock()
	hook := e.onImageList
	e.mu.Unlock()
	if hook != nil {
		if err := hook(ctx); err != nil {
			return nil, err
		}
	}
	return e.Images(), nil
}

func (e *Engine) ImageRemove(_ context.Context, id string, o image.RemoveOptions) ([]image.DeleteResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.imageRemoveErr[id]; err != nil {
		return nil, err
	}
	for i, img := range e.images {
		if img.ID == id {
			e.images = slices.Delete(e.images, i, i+1)
			e.removedImages = append(e.removedImages, id)
			e.imageRemoveOpts = append(e.imageRemoveOpts, o)
			return []image.DeleteResponse{{Deleted: id}}, nil
		}
	}
	return nil, errdefs.NotFound(fmt.Errorf("no such image: %s", id))
}

// ImageInspect finds an image by ID, repository:tag or repository@digest.
func (e *Engine) ImageInspect(_ context.Context, ref string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, img := range e.images {
		if img.ID == ref || slices.Contains(img.RepoTags, ref) || slices.Contains(img.RepoDigests, ref) {
			return image.InspectResponse{ID: img.ID, RepoTags: img.RepoTags, RepoDigests: img.RepoDigests}, nil
		}
	}
	return image.InspectResponse{}, errdefs.NotFound(fmt.Errorf("no such image: %s", ref))
}

// DistributionInspect resolves a repository:tag the registry serves
// (SetRegistry).
func (e *Engine) DistributionInspect(_ context.Context, ref, _ string) (dockerregistry.DistributionInspect, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.record("resolve %s", ref)
	d, ok := e.registry[ref]
	if !ok {
		return dockerregistry.DistributionInspect{}, errdefs.NotFound(fmt.Errorf("manifest unknown: %s", ref))
	}
	var di dockerregistry.DistributionInspect
	di.Descriptor.Digest = digest.Digest(d)
	return di, nil
}

// ImagePull adds the image of ref (repository:tag or
// repository@digest) if the registry serves it, as a pull does.
func (e *Engine) ImagePull(_ context.Context, ref string, _ image.PullOptions) (io.ReadCloser, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.record("pull %s", ref)
	repo, d, byDigest := strings.Cut(ref, "@")
	if !byDigest {
		var ok bool
		if d, ok = e.registry[ref]; !ok || strings.LastIndex(ref, ":") < strings.LastIndex(ref, "/") {
			return nil, errdefs.NotFound(fmt.Errorf("manifest for %s not found", ref))
		}
		repo = ref[:strings.LastIndex(ref, ":")]
	} else if !slices.Contains(slices.Collect(maps.Values(e.registry)), d) {
		return nil, errdefs.NotFound(fmt.Errorf("manifest for %s not found", ref))
	}
	e.images = append(e.images, image.Summary{ID: "sha256:" + strings.TrimPrefix(d, "sha256:"), RepoDigests: []string{repo + "@" + d}})
	return io.NopCloser(strings.NewReader(`{"status":"Downloaded newer image"}` + "\n")), nil
}
