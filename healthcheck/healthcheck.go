// Package healthcheck tells when a container is ready and whether it stays
// up: the probes (Docker HEALTHCHECK, HTTP, TCP, exec), the rollout gate that
// waits for a freshly started container, and the monitor that watches a
// release for a while after its rollout.
package healthcheck

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
)

// Spec says how to tell that a container of a service is ready, and for how
// long to wait.
type Spec struct {
	HTTP     *HTTPProbe    `json:"http,omitempty"`
	TCP      *TCPProbe     `json:"tcp,omitempty"`
	Exec     []string      `json:"exec,omitempty"`     // command run inside the container; exit 0 = ready
	Interval time.Duration `json:"interval,omitempty"` // between probe attempts; default 1s
	Timeout  time.Duration `json:"timeout,omitempty"`  // the gate's deadline; default 2m
	// MinUp is how long a container with no check at all must stay running,
	// without restarting (the service's monitor period); default 5s.
	MinUp time.Duration `json:"min_up,omitempty"`
}

// HTTPProbe is ready when GET Path on the container's Port answers Status.
type HTTPProbe struct {
	Path   string `json:"path"`             // default "/"
	Port   int    `json:"port"`             // container port
	Status int    `json:"status,omitempty"` // expected status; default 200
	Host   string `json:"host,omitempty"`   // Host header (Django's ALLOWED_HOSTS must not make the probe fail)
}

// TCPProbe is ready when the container's Port accepts a connection.
type TCPProbe struct {
	Port int `json:"port"`
}

const (
	defaultInterval = time.Second
	defaultTimeout  = 2 * time.Minute
	defaultMinUp    = 5 * time.Second
	// defaultPoll is how often the gate and the monitor inspect containers in
	// case an event was missed.
	defaultPoll = time.Second
	// maxAttempt and minAttempt bound the per-attempt timeout of the HTTP
	// and TCP probes, which is otherwise the probe interval.
	maxAttempt = 2 * time.Second
	minAttempt = 500 * time.Millisecond
)

// withDefaults fills the zero (or negative) fields of s.
func (s Spec) withDefaults() Spec {
	if s.Interval <= 0 {
		s.Interval = defaultInterval
	}
	if s.Timeout <= 0 {
		s.Timeout = defaultTimeout
	}
	if s.MinUp <= 0 {
		s.MinUp = defaultMinUp
	}
	return s
}

// ExecEngine is the part of the Docker API that Exec uses.
type ExecEngine interface {
	ContainerExecCreate(ctx context.Context, containerID string, options container.ExecOptions) (container.ExecCreateResponse, error)
	ContainerExecAttach(ctx context.Context, execID string, config container.ExecAttachOptions) (types.HijackedResponse, error)
	ContainerExecInspect(ctx context.Context, execID string) (container.ExecInspect, error)
}

// Engine is the part of the Docker API the package uses (*client.Client
// satisfies it).
type Engine interface {
	ExecEngine
	ContainerInspect(ctx context.Context, containerID string) (container.InspectResponse, error)
	Events(ctx context.Context, options events.ListOptions) (<-chan events.Message, <-chan error)
	ContainerLogs(ctx context.Context, containerID string, options container.LogsOptions) (io.ReadCloser, error)
}

// The ways a container can fail the gate or the monitor; check with errors.Is.
var (
	ErrExited    = errors.New("container exited") // the container stopped (or is restarting) while we waited
	ErrRestarted = errors.New("container restarted")
	ErrUnhealthy = errors.New("container is unhealthy") // Docker health turned unhealthy
	ErrTimeout   = errors.New("not ready before the deadline")
)

// Checker gates and monitors containers through the Docker API.
type Checker struct {
	Engine Engine

	// poll is the period of the inspect fallback; zero means 1s. Unit tests
	// shorten it.
	poll time.Duration
}

func (c *Checker) pollEvery() time.Duration {
	if c.poll > 0 {
		return c.poll
	}
	return defaultPoll
}
