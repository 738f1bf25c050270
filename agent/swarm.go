package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/compose/life"
	"github.com/berth-deploy/berth/compose/swarm"
)

// errNoSwarm is a swarm project on a Docker connection without the Swarm
// API (a test's fake engine): New refuses it.
var errNoSwarm = errors.New("the Docker connection has no Swarm API")

// swarmEngine is the engine as a Swarm manager's API, and as the local
// engine the proxies' tasks run on.
type swarmEngine interface {
	swarm.Engine
	swarm.ProxyEngine
}

// swarmSide is what the service keeps for its swarm projects: one
// Proxies per project, shared by the deploys and the follower, and the
// run that is telling its caller what happens, if any.
type swarmSide struct {
	mu      sync.Mutex
	proxies map[string]*swarm.Proxies
	runs    map[string]*releaseRun
	// live caches the decoded state of each project's live release.
	live map[string]liveState
}

type liveState struct {
	number  int
	desired *compose.Desired
}

// swarmEngine returns the engine as a Swarm's API.
func (s *Service) swarmEngine() (swarmEngine, error) {
	se, ok := s.engine.(swarmEngine)
	if !ok {
		return nil, errNoSwarm
	}
	return se, nil
}

// proxies returns the project's Proxies. What they do is logged, and
// told to the deploy under way, if any.
func (s *Service) proxies(project string, se swarmEngine) *swarm.Proxies {
	s.swarm.mu.Lock()
	defer s.swarm.mu.Unlock()
	if s.swarm.proxies == nil {
		s.swarm.proxies = map[string]*swarm.Proxies{}
	}
	p, ok := s.swarm.proxies[project]
	if !ok {
		p = &swarm.Proxies{Engine: se, Local: se, Project: project, Progress: func(svc, msg string) {
			s.swarm.mu.Lock()
			r := s.swarm.runs[project]
			s.swarm.mu.Unlock()
			if r != nil {
				r.progress(svc, "%s", msg)
				return
			}
			s.log.Info(msg, "project", project, "service", svc, "phase", "follow")
		}}
		s.swarm.proxies[project] = p
	}
	return p
}

// running notes the run that tells its caller what the project's proxies
// do, until the returned func is called.
func (s *Service) running(project string, r *releaseRun) func() {
	s.swarm.mu.Lock()
	defer s.swarm.mu.Unlock()
	if s.swarm.runs == nil {
		s.swarm.runs = map[string]*releaseRun{}
	}
	s.swarm.runs[project] = r
	return func() {
		s.swarm.mu.Lock()
		defer s.swarm.mu.Unlock()
		if s.swarm.runs[project] == r {
			delete(s.swarm.runs, project)
		}
	}
}

// swarmLife is the life of this release on the project's Swarm (package
// compose/swarm), labelling what it creates or updates as release's. New
// refuses a swarm project without the Swarm API.
func (r *releaseRun) swarmLife(release string) life.Backend {
	se, _ := r.svc.swarmEngine()
	progress := func(svc, msg string) { r.progress(svc, "%s", msg) }
	reg := r.registry()
	auth := func(_ context.Context, ref string) (string, error) { return reg.Auth(ref) }
	return &swarm.Life{
		Engine:   se,
		Project:  r.project,
		Release:  release,
		Progress: progress,
		OnPlan:   func(p life.Plan) { r.event(api.Event{Type: api.EventPlan, Message: p.String()}) },
		OnStep:   r.stepEnded,
		Auth:     auth,
		Hooks:    &swarm.Hooks{Engine: se, Project: r.project, Release: release, Progress: progress, Auth: auth},
		Proxies:  r.svc.proxies(r.project, se),
	}
}

// swarmStatus is the status of a swarm project's services and tasks.
func (s *Service) swarmStatus(ctx context.Context, project string) ([]api.ServiceStatus, error) {
	se, err := s.swarmEngine()
	if err != nil {
		return nil, fmt.Errorf("status %s: %w", project, err)
	}
	svcs, err := swarm.Status(ctx, se, project)
	if err != nil {
		return nil, fmt.Errorf("status %s: %w", project, err)
	}
	out := make([]api.ServiceStatus, 0, len(svcs))
	for _, sv := range svcs {
		st := &api.SwarmService{Image: sv.Image, Mode: sv.Mode, Replicas: sv.Replicas, Running: sv.Running,
			UpdateState: sv.UpdateState, UpdateMessage: sv.UpdateMessage, Release: sv.Release, Tasks: []api.TaskStatus{}}
		for _, t := range sv.Tasks {
			st.Tasks = append(st.Tasks, api.TaskStatus{ID: t.ID, Node: t.Node, Slot: t.Slot, State: t.State,
				DesiredState: t.DesiredState, Health: t.Health, Error: t.Error, Image: t.Image, Release: t.Release, Since: t.Since})
		}
		out = append(out, api.ServiceStatus{Name: sv.Name, Containers: []api.ContainerStatus{}, Swarm: st})
	}
	return out, nil
}

// FollowProxies keeps the proxies of every swarm project in step with the
// running tasks of the services they front between deploys (a node
// drained, a task rescheduled), until ctx ends. A project's deploys do it
// themselves while they run.
func (s *Service) FollowProxies(ctx context.Context) {
	se, _ := s.swarmEngine() // New refuses a swarm project without it
	var wg sync.WaitGroup
	for _, name := range s.cfg.ProjectNames() {
		if s.cfg.Projects[name].Backend != config.BackendSwarm {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.proxies(name, se).Follow(ctx, func() *compose.Desired { return s.liveDesired(name) }, swarm.DefaultFollowEvery)
		}()
	}
	wg.Wait()
}

// liveDesired is the state of the project's live release, or nil while a
// deploy or rollback runs (it syncs the proxies itself) or none is live.
func (s *Service) liveDesired(project string) *compose.Desired {
	if s.locks.holder(project) != nil {
		return nil
	}
	cur, ok, err := s.store.Current(project)
	if err != nil || !ok {
		return nil
	}
	s.swarm.mu.Lock()
	defer s.swarm.mu.Unlock()
	if l, ok := s.swarm.live[project]; ok && l.number == cur.Number {
		return l.desired
	}
	d, err := decodeState(cur)
	if err != nil {
		s.log.Warn("following the proxies", "project", project, "err", err)
		return nil
	}
	if s.swarm.live == nil {
		s.swarm.live = map[string]liveState{}
	}
	s.swarm.live[project] = liveState{number: cur.Number, desired: d}
	return d
}
