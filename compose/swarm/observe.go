package swarm

import (
	"context"
	"fmt"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/swarm"
)

// Observed is what a stack has on the Swarm: its services (hooks left
// out) and networks, by name.
type Observed struct {
	Services map[string]swarm.Service
	Networks map[string]network.Summary
}

// stackFilter selects what carries the stack's namespace label.
func stackFilter(project string) filters.Args {
	return filters.NewArgs(filters.Arg("label", LabelNamespace+"="+project))
}

// Observe lists the stack's services and networks. The one-off services
// that run hooks are not part of it.
func Observe(ctx context.Context, eng Engine, project string) (*Observed, error) {
	svcs, err := eng.ServiceList(ctx, swarm.ServiceListOptions{Filters: stackFilter(project)})
	if err != nil {
		return nil, fmt.Errorf("observe stack %s: list services: %w", project, err)
	}
	o := &Observed{Services: map[string]swarm.Service{}, Networks: map[string]network.Summary{}}
	for _, s := range svcs {
		if s.Spec.Labels[LabelNamespace] != project {
			continue
		}
		if _, hook := s.Spec.Labels[LabelHook]; hook {
			continue
		}
		o.Services[s.Spec.Name] = s
	}
	nets, err := eng.NetworkList(ctx, network.ListOptions{Filters: stackFilter(project)})
	if err != nil {
		return nil, fmt.Errorf("observe stack %s: list networks: %w", project, err)
	}
	for _, n := range nets {
		if n.Labels[LabelNamespace] != project {
			continue
		}
		o.Networks[n.Name] = n
	}
	return o, nil
}
