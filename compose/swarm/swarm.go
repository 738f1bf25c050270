// Package swarm is Berth's second backend: a compose project deployed to a
// Docker Swarm as a stack, through the Docker API of a manager. The compose
// file becomes Swarm service specs (Convert, refusing with Check what a
// Swarm cannot honour); a release is a graph of service updates that
// Swarm carries out with each service's update_config, gated by Berth on
// the update's state and on every new task running and healthy; a failure
// takes every service back to the previous release's spec. Hooks run as
// one-off tasks of the new image. Services carry the labels of `docker
// stack deploy`, so `docker stack ps` and `docker stack services` work.
package swarm

import (
	"context"
	"io"

	"github.com/berth-deploy/berth/compose"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
)

// Labels of a stack's services, networks and volumes, as `docker stack
// deploy` sets them, and Berth's own.
const (
	// LabelNamespace names the stack (the project).
	LabelNamespace = "com.docker.stack.namespace"
	// LabelImage is the image a stack service was deployed with.
	LabelImage = "com.docker.stack.image"
	// LabelRelease is the Berth release that last set a service's spec.
	LabelRelease = "io.berth.release"
	// LabelSpecHash is the hash of the spec Berth deployed: a service whose
	// hash differs from the desired one is updated.
	LabelSpecHash = "io.berth.spec-hash"
	// LabelHook marks a one-off service that runs a hook; LabelHookOf
	// names the service whose hook it is.
	LabelHook   = "io.berth.hook"
	LabelHookOf = "io.berth.hook-of"
)

// Engine is the part of a Swarm manager's Docker API the backend uses.
// *client.Client satisfies it; unit tests use an in-memory fake.
type Engine interface {
	ServiceCreate(ctx context.Context, service swarm.ServiceSpec, options swarm.ServiceCreateOptions) (swarm.ServiceCreateResponse, error)
	ServiceUpdate(ctx context.Context, serviceID string, version swarm.Version, service swarm.ServiceSpec, options swarm.ServiceUpdateOptions) (swarm.ServiceUpdateResponse, error)
	ServiceInspectWithRaw(ctx context.Context, serviceID string, options swarm.ServiceInspectOptions) (swarm.Service, []byte, error)
	ServiceList(ctx context.Context, options swarm.ServiceListOptions) ([]swarm.Service, error)
	ServiceRemove(ctx context.Context, serviceID string) error
	ServiceLogs(ctx context.Context, serviceID string, options container.LogsOptions) (io.ReadCloser, error)
	TaskList(ctx context.Context, options swarm.TaskListOptions) ([]swarm.Task, error)
	NodeList(ctx context.Context, options swarm.NodeListOptions) ([]swarm.Node, error)
	NetworkList(ctx context.Context, options network.ListOptions) ([]network.Summary, error)
	NetworkCreate(ctx context.Context, name string, options network.CreateOptions) (network.CreateResponse, error)
	NetworkRemove(ctx context.Context, networkID string) error
}

// HookRunner runs a service's hooks as one-off tasks of its new spec, one
// at a time, each removed after it ends (Hooks, in hooks.go). A failing
// pre-deploy hook's error wraps compose.ErrHook.
type HookRunner interface {
	Run(ctx context.Context, spec *compose.ServiceSpec, phase string, hooks []compose.Hook) error
}

// ProxySyncer keeps the proxies that front a service (x-berth.proxy) in
// step with its running tasks (Proxies, in proxy.go): it writes the
// addresses of service's running tasks into every proxy fronting it, and
// validates and reloads a proxy whose file changed. It does nothing for a
// service no proxy fronts.
type ProxySyncer interface {
	Sync(ctx context.Context, desired *compose.Desired, service string) error
}
