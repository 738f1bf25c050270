package compose

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/errdefs"
)

// Progress receives one human-readable line per thing the executor does.
type Progress func(service, message string)

// Executor applies plans to one engine.
type Executor struct {
	Engine Engine
	// Release labels every container created (LabelRelease); may be empty.
	Release string
	// Progress may be nil.
	Progress Progress
}

func (e *Executor) say(service, format string, args ...any) {
	if e.Progress != nil {
		e.Progress(service, fmt.Sprintf(format, args...))
	}
}

// Apply carries out the plan: networks and volumes first, then services in
// dependency order, then the removal of services and networks that are no
// longer in the file. Volumes are never removed. It stops at the first
// error, which names the step that failed.
func (e *Executor) Apply(ctx context.Context, p *Plan) error {
	for _, n := range p.CreateNetworks {
		e.say("", "creating network %s", n.Name)
		if _, err := e.Engine.NetworkCreate(ctx, n.Name, n.Options); err != nil && !errdefs.IsConflict(err) {
			return fmt.Errorf("create network %s: %w", n.Name, err)
		}
	}
	for _, v := range p.CreateVolumes {
		e.say("", "creating volume %s", v.Name)
		if _, err := e.Engine.VolumeCreate(ctx, volume.CreateOptions{Name: v.Name, Driver: v.Driver, DriverOpts: v.Options, Labels: v.Labels}); err != nil {
			return fmt.Errorf("create volume %s: %w", v.Name, err)
		}
	}
	for _, s := range p.Services {
		if err := e.applyService(ctx, p.Project, s); err != nil {
			return err
		}
	}
	for _, s := range p.RemoveServices {
		if err := e.applyService(ctx, p.Project, s); err != nil {
			return err
		}
	}
	for _, n := range p.RemoveNetworks {
		e.say("", "removing network %s", n)
		if err := e.Engine.NetworkRemove(ctx, n); err != nil && !errdefs.IsNotFound(err) {
			// A network still used by something outside the plan is left
			// in place: that is not worth failing a release for.
			e.say("", "network %s kept: %v", n, err)
		}
	}
	return nil
}

func (e *Executor) applyService(ctx context.Context, project string, s ServicePlan) error {
	for _, st := range s.Steps {
		var err error
		switch st.Op {
		case OpCreate:
			e.say(s.Name, "creating %s", s.Spec.containerName(project, st.Number))
			err = e.createAndStart(ctx, project, s.Spec, st.Number)
		case OpRecreate:
			e.say(s.Name, "recreating %s (%s)", st.Old.Name, st.Reason)
			err = e.stopAndRemove(ctx, st.Old, s.Spec.StopTimeout)
			if err == nil {
				err = e.createAndStart(ctx, project, s.Spec, st.Number)
			}
		case OpStart:
			e.say(s.Name, "starting %s (%s)", st.Old.Name, st.Reason)
			err = e.Engine.ContainerStart(ctx, st.Old.ID, container.StartOptions{})
		case OpRemove:
			e.say(s.Name, "removing %s (%s)", st.Old.Name, st.Reason)
			timeout := 10 * time.Second
			if s.Spec != nil {
				timeout = s.Spec.StopTimeout
			}
			err = e.stopAndRemove(ctx, st.Old, timeout)
		}
		if err != nil {
			return fmt.Errorf("service %s: %s: %w", s.Name, st.Op, err)
		}
	}
	return nil
}

// createAndStart creates replica n of a service, joins its other networks
// and starts it. On failure the half-made container is removed.
func (e *Executor) createAndStart(ctx context.Context, project string, spec *ServiceSpec, n int) (err error) {
	name := spec.containerName(project, n)
	cfg := spec.Config
	cfg.Labels = maps.Clone(spec.Config.Labels)
	cfg.Labels[LabelNumber] = strconv.Itoa(n)
	cfg.Labels[LabelConfigHash] = spec.Hash
	if e.Release != "" {
		cfg.Labels[LabelRelease] = e.Release
	}
	host := spec.Host
	var netCfg *network.NetworkingConfig
	if len(spec.Networks) > 0 {
		first := spec.Networks[0]
		netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			first.Network: {Aliases: first.Aliases},
		}}
	}
	created, err := e.Engine.ContainerCreate(ctx, &cfg, &host, netCfg, nil, name)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			// Use a fresh context: the request's may be what failed.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			rmErr := e.Engine.ContainerRemove(cctx, created.ID, container.RemoveOptions{Force: true})
			err = errors.Join(err, rmErr)
		}
	}()
	for _, ep := range spec.Networks[min(1, len(spec.Networks)):] {
		if err := e.Engine.NetworkConnect(ctx, ep.Network, created.ID, &network.EndpointSettings{Aliases: ep.Aliases}); err != nil {
			return fmt.Errorf("connect %s to %s: %w", name, ep.Network, err)
		}
	}
	if err := e.Engine.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	return nil
}

// stopAndRemove stops a container with its grace period (the engine sends
// the container's own stop signal) and removes it, keeping its volumes.
func (e *Executor) stopAndRemove(ctx context.Context, c *Container, grace time.Duration) error {
	secs := int(grace / time.Second)
	if err := e.Engine.ContainerStop(ctx, c.ID, container.StopOptions{Timeout: &secs}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("stop %s: %w", c.Name, err)
	}
	if err := e.Engine.ContainerRemove(ctx, c.ID, container.RemoveOptions{}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove %s: %w", c.Name, err)
	}
	return nil
}
