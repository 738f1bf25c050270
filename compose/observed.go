package compose

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
)

// Container is one existing container of the project, as its labels say.
type Container struct {
	ID      string
	Name    string
	Service string
	Number  int
	Hash    string
	Image   string // the image the container was created from (pinned)
	State   string // created, running, restarting, paused, exited, dead
	Oneoff  bool
	Release string // the Berth release that created it; "" for others
}

// Running reports whether the container is up (restarting counts as not).
func (c Container) Running() bool { return c.State == "running" }

// Observed is what the engine holds for one project.
type Observed struct {
	Containers []Container       // sorted by service, then number
	Networks   map[string]string // engine name -> ID, networks labelled with the project
	Volumes    map[string]bool   // engine names of volumes labelled with the project
}

// Service returns the non-oneoff containers of one service.
func (o *Observed) Service(name string) []Container {
	var out []Container
	for _, c := range o.Containers {
		if c.Service == name && !c.Oneoff {
			out = append(out, c)
		}
	}
	return out
}

// Observe lists the containers, networks and volumes of a project by the
// compose project label.
func Observe(ctx context.Context, eng Engine, project string) (*Observed, error) {
	f := filters.NewArgs(filters.Arg("label", LabelProject+"="+project))
	list, err := eng.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("observe %s: list containers: %w", project, err)
	}
	o := &Observed{Networks: map[string]string{}, Volumes: map[string]bool{}}
	for _, c := range list {
		n, _ := strconv.Atoi(c.Labels[LabelNumber])
		name := ""
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		o.Containers = append(o.Containers, Container{
			ID:      c.ID,
			Name:    name,
			Service: c.Labels[LabelService],
			Number:  n,
			Hash:    c.Labels[LabelConfigHash],
			Image:   c.Image,
			State:   c.State,
			Oneoff:  strings.EqualFold(c.Labels[LabelOneoff], "true"),
			Release: c.Labels[LabelRelease],
		})
	}
	sort.Slice(o.Containers, func(i, j int) bool {
		a, b := o.Containers[i], o.Containers[j]
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Number != b.Number {
			return a.Number < b.Number
		}
		return a.Name < b.Name
	})
	nets, err := eng.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("observe %s: list networks: %w", project, err)
	}
	for _, n := range nets {
		o.Networks[n.Name] = n.ID
	}
	vols, err := eng.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("observe %s: list volumes: %w", project, err)
	}
	for _, v := range vols.Volumes {
		o.Volumes[v.Name] = true
	}
	return o, nil
}
