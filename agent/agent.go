// Package agent is the deploy service: it takes requests from the front
// doors, holds one deploy per project at a time, and carries a release
// through its life: load the compose project, pin and pull every image,
// plan, apply, record.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/registry"
	"github.com/berth-deploy/berth/compose"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
)

// ErrUnknownProject is returned for a project that is not configured.
var ErrUnknownProject = errors.New("unknown project")

// Engine is the Docker API the service needs.
type Engine interface {
	compose.Engine
	registry.Engine
}

// Store is the release history the service needs.
type Store interface {
	Begin(r api.Release) (api.Release, error)
	Save(r api.Release, live bool) error
	Current(project string) (api.Release, bool, error)
	History(project string) ([]api.Release, error)
	Prune(project string, keep int) (int, error)
}

// Service deploys the configured projects.
type Service struct {
	cfg    *config.Config
	engine Engine
	store  Store
	log    *slog.Logger
	locks  locks
	now    func() time.Time
}

// New returns a service for the projects in cfg.
func New(cfg *config.Config, engine Engine, store Store, log *slog.Logger) *Service {
	return &Service{cfg: cfg, engine: engine, store: store, log: log, now: time.Now}
}

// Emit receives a deploy's events as they happen.
type Emit func(api.Event)

// Deploy runs one deploy request for identity and returns its exit code.
// The last event emitted is the result, with the same code.
func (s *Service) Deploy(ctx context.Context, identity string, req api.DeployRequest, emit Emit) int {
	d := &deploy{svc: s, req: req, identity: identity, emit: emit, started: s.now()}
	d.log = s.log.With("project", req.Project, "identity", identity)
	code, err := d.run(ctx)
	var msg string
	switch {
	case err != nil:
		msg = err.Error()
	case d.noop:
		msg = "nothing to change: the running containers already match this release"
	default:
		msg = fmt.Sprintf("release %d is live", d.release.Number)
	}
	d.log.Info("deploy finished", "release", d.release.Number, "exit_code", code, "result", msg)
	d.event(api.Event{Type: api.EventResult, Message: msg, ExitCode: &code})
	return code
}

type deploy struct {
	svc      *Service
	req      api.DeployRequest
	identity string
	emit     Emit
	log      *slog.Logger
	started  time.Time
	release  api.Release
	noop     bool
}

func (d *deploy) event(e api.Event) {
	e.Time = d.svc.now()
	e.Project = d.req.Project
	e.Release = d.release.Number
	if d.emit != nil {
		d.emit(e)
	}
}

func (d *deploy) progress(service, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	d.log.Info(msg, "service", service, "release", d.release.Number)
	d.event(api.Event{Type: api.EventProgress, Service: service, Message: msg})
}

func (d *deploy) run(ctx context.Context) (int, error) {
	pc, ok := d.svc.cfg.Projects[d.req.Project]
	if !ok {
		return api.ExitBadRequest, fmt.Errorf("deploy %q: %w (configured: %s)", d.req.Project, ErrUnknownProject, strings.Join(d.svc.cfg.ProjectNames(), ", "))
	}
	unlock, holder := d.svc.locks.tryLock(d.req.Project, api.Holder{Identity: d.identity, Since: d.started, Verb: "deploy", Message: d.req.Message})
	if holder != nil {
		return api.ExitLocked, fmt.Errorf("deploy %s: locked: %s has been running %s since %s%s",
			d.req.Project, holder.Identity, holder.Verb, holder.Since.Format(time.RFC3339), quoted(holder.Message))
	}
	defer unlock()

	d.progress("", "loading %s", pc.ComposeFile)
	project, err := compose.Load(ctx, loadOptions(d.req.Project, pc, d.req.Images))
	if err != nil {
		return api.ExitBadRequest, err
	}
	reg := &registry.Client{Engine: d.svc.engine, ConfigDir: firstNonEmpty(pc.DockerConfig, d.svc.cfg.DockerConfig)}
	d.progress("", "resolving %d images", len(project.Services))
	pins, err := reg.Resolve(ctx, imageRequests(project))
	if err != nil {
		return api.ExitBadRequest, fmt.Errorf("resolve images: %w", err)
	}
	for _, name := range project.ServiceNames() {
		d.progress(name, "%s is %s", pins[name].Ref, pins[name].Digest)
	}
	if err := reg.Pull(ctx, pins, func(svc, msg string) { d.progress(svc, "%s", msg) }); err != nil {
		return api.ExitBadRequest, fmt.Errorf("pull images: %w", err)
	}
	desired, err := compose.NewDesired(project, pins)
	if err != nil {
		return api.ExitBadRequest, err
	}
	observed, err := compose.Observe(ctx, d.svc.engine, d.req.Project)
	if err != nil {
		return api.ExitBroken, err
	}
	plan := compose.MakePlan(desired, observed)
	d.event(api.Event{Type: api.EventPlan, Message: plan.String()})
	if plan.Empty() {
		d.noop = true
		return api.ExitOK, nil
	}
	composeYAML, err := pinnedYAML(project, pins)
	if err != nil {
		return api.ExitBadRequest, err
	}

	// From here on the engine changes: finish what was started even if the
	// caller goes away, so a cancelled CI job cannot leave half a release.
	ctx = context.WithoutCancel(ctx)
	prev, _, err := d.svc.store.Current(d.req.Project)
	if err != nil {
		return api.ExitBroken, err
	}
	d.release, err = d.svc.store.Begin(api.Release{
		Project:  d.req.Project,
		Previous: prev.Number,
		Started:  d.started,
		Identity: d.identity,
		Message:  d.req.Message,
		Outcome:  api.OutcomeInProgress,
		Services: serviceImages(pins),
		Compose:  string(composeYAML),
		Plan:     plan.String(),
	})
	if err != nil {
		return api.ExitBroken, err
	}
	if prev.Number == 0 {
		d.progress("", "release %d is the first of %s: starting %s", d.release.Number, d.req.Project, strings.Join(plan.ChangedServices(), ", "))
	} else {
		d.progress("", "release %d replaces release %d: changing %s", d.release.Number, prev.Number, strings.Join(plan.ChangedServices(), ", "))
	}
	exec := &compose.Executor{Engine: d.svc.engine, Release: strconv.Itoa(d.release.Number), Progress: func(svc, msg string) { d.progress(svc, "%s", msg) }}
	applyErr := exec.Apply(ctx, plan)
	d.release.Finished = d.svc.now()
	if applyErr != nil {
		d.release.Outcome = api.OutcomeFailed
		d.release.Error = applyErr.Error()
		if err := d.svc.store.Save(d.release, false); err != nil {
			applyErr = errors.Join(applyErr, err)
		}
		return api.ExitBroken, fmt.Errorf("release %d failed part-way and was not restored: %w", d.release.Number, applyErr)
	}
	d.release.Outcome = api.OutcomeSucceeded
	if err := d.svc.store.Save(d.release, true); err != nil {
		return api.ExitBroken, err
	}
	if n, err := d.svc.store.Prune(d.req.Project, pc.KeepReleases); err != nil {
		d.log.Warn("prune history", "err", err)
	} else if n > 0 {
		d.progress("", "pruned %d old release records (keeping %d)", n, pc.KeepReleases)
	}
	return api.ExitOK, nil
}

func quoted(msg string) string {
	if msg == "" {
		return ""
	}
	return fmt.Sprintf(": %q", msg)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func loadOptions(name string, pc config.Project, images map[string]string) compose.LoadOptions {
	o := compose.LoadOptions{Name: name, ComposeFile: pc.ComposeFile, Profiles: pc.Profiles, Images: images}
	if pc.EnvFile != "" {
		o.EnvFiles = []string{pc.EnvFile}
	}
	return o
}

func imageRequests(p *types.Project) []registry.Request {
	var out []registry.Request
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		local := s.PullPolicy == types.PullPolicyNever || s.PullPolicy == types.PullPolicyBuild
		out = append(out, registry.Request{Service: name, Ref: s.Image, Local: local})
	}
	return out
}

func serviceImages(pins map[string]compose.Pin) map[string]api.ServiceImage {
	out := map[string]api.ServiceImage{}
	for svc, p := range pins {
		out[svc] = api.ServiceImage{Ref: p.Ref, Pinned: p.Pinned, Digest: p.Digest}
	}
	return out
}

// pinnedYAML renders the project as deployed: every image by digest.
func pinnedYAML(p *types.Project, pins map[string]compose.Pin) ([]byte, error) {
	pinned, err := p.WithServicesTransform(func(name string, s types.ServiceConfig) (types.ServiceConfig, error) {
		s.Image = pins[name].Pinned
		return s, nil
	})
	if err != nil {
		return nil, fmt.Errorf("render compose file: %w", err)
	}
	b, err := pinned.MarshalYAML()
	if err != nil {
		return nil, fmt.Errorf("render compose file: %w", err)
	}
	return b, nil
}

// Status reports the current release and containers of one project, or of
// every project when name is empty.
func (s *Service) Status(ctx context.Context, name string) ([]api.ProjectStatus, error) {
	names := s.cfg.ProjectNames()
	if name != "" {
		if _, ok := s.cfg.Projects[name]; !ok {
			return nil, fmt.Errorf("status %q: %w", name, ErrUnknownProject)
		}
		names = []string{name}
	}
	var out []api.ProjectStatus
	for _, n := range names {
		st := api.ProjectStatus{Project: n, Deploying: s.locks.holder(n)}
		cur, ok, err := s.store.Current(n)
		if err != nil {
			return nil, err
		}
		if ok {
			st.Current = &cur
		}
		list, err := s.engine.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", compose.LabelProject+"="+n))})
		if err != nil {
			return nil, fmt.Errorf("status %s: list containers: %w", n, err)
		}
		bySvc := map[string][]api.ContainerStatus{}
		for _, c := range list {
			if strings.EqualFold(c.Labels[compose.LabelOneoff], "true") {
				continue
			}
			svc := c.Labels[compose.LabelService]
			bySvc[svc] = append(bySvc[svc], api.ContainerStatus{
				Name: strings.TrimPrefix(firstOf(c.Names), "/"), ID: c.ID[:min(12, len(c.ID))], Image: c.Image,
				State: c.State, Status: c.Status, Release: c.Labels[compose.LabelRelease],
			})
		}
		svcs := make([]string, 0, len(bySvc))
		for svc := range bySvc {
			svcs = append(svcs, svc)
		}
		sort.Strings(svcs)
		for _, svc := range svcs {
			cs := bySvc[svc]
			sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
			st.Services = append(st.Services, api.ServiceStatus{Name: svc, Containers: cs})
		}
		out = append(out, st)
	}
	return out, nil
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// History returns the recorded releases of a project, newest first.
func (s *Service) History(_ context.Context, name string) ([]api.Release, error) {
	if _, ok := s.cfg.Projects[name]; !ok {
		return nil, fmt.Errorf("history %q: %w", name, ErrUnknownProject)
	}
	return s.store.History(name)
}

// CheckProjects loads every configured compose project and returns every
// problem found. A compose file that cannot be opened is left to
// config.Validate, which reports it.
func CheckProjects(ctx context.Context, cfg *config.Config) error {
	var errs []error
	for _, name := range cfg.ProjectNames() {
		if _, err := os.Stat(cfg.Projects[name].ComposeFile); err != nil {
			continue
		}
		if _, err := compose.Load(ctx, loadOptions(name, cfg.Projects[name], nil)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
