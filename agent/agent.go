// Package agent is the deploy service: it takes requests from the front
// doors, holds one deploy per project at a time, and carries a release
// through its life: load the compose project, pin and pull every image,
// journal the intent, plan, roll out with health gates, watch the monitor
// window, and commit, or roll the whole release back.
package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/registry"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/compose/cgroup"
	"github.com/berth-deploy/berth/compose/life"
	"github.com/berth-deploy/berth/compose/swarm"
	"github.com/berth-deploy/berth/healthcheck"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/system"
)

// ErrUnknownProject is returned for a project that is not configured.
var ErrUnknownProject = errors.New("unknown project")

// Engine is the Docker API the service needs.
type Engine interface {
	compose.Engine
	registry.Engine
	healthcheck.Engine
}

// Store is the release history the service needs.
type Store interface {
	Begin(r api.Release) (api.Release, error)
	Save(r api.Release, live bool) error
	Current(project string) (api.Release, bool, error)
	Get(project string, number int) (api.Release, error)
	History(project string) ([]api.Release, error)
	Prune(project string, keep int) (int, error)
	Unfinished(project string) (api.Release, bool, error)
	SetHold(project string, h *api.Holder) error
	Hold(project string) (*api.Holder, error)
}

// Service deploys the configured projects.
type Service struct {
	cfg     *config.Config
	engine  Engine
	store   Store
	log     *slog.Logger
	checker *healthcheck.Checker
	ids     *auth.Identities
	locks   locks
	now     func() time.Time
	// observers are told of every deploy and rollback; set before serving.
	observers []Observer
	preparers []Preparer
	// defaultShares is the CPU shares of a container that sets none, on
	// this engine's cgroup version (SetEngineInfo).
	defaultShares int64
	// swarm is what the swarm projects share across their releases.
	swarm swarmSide
}

// SetEngineInfo tells the service what the engine said of itself; call
// it before the service takes requests. Its cgroup version decides the CPU
// weight a container that booted shielded gets back.
func (s *Service) SetEngineInfo(info system.Info) {
	s.defaultShares = compose.DefaultShares(info.CgroupVersion)
	if info.CgroupVersion == "2" {
		s.log.Info("cgroup v2: a container that booted at the boot CPU weight gets the default weight 100 back", "cpu_shares", s.defaultShares)
	}
}

// idler puts new containers in the idle CPU class as they boot
// (rollout.boot_cpu_idle); nil when the config turns it off.
func (s *Service) idler() compose.Idler {
	if !s.cfg.Rollout.Idle() {
		return nil
	}
	return cgroup.Host{}
}

// pinner keeps new containers on half the CPUs as they boot
// (rollout.boot_cpus); nil when the config turns it off.
func (s *Service) pinner() compose.Pinner {
	if !s.cfg.Rollout.Pin() {
		return nil
	}
	return cgroup.Host{}
}

// Observer is told when a deploy or rollback request ends (metrics,
// notifications). It must not block: the request's caller is waiting.
type Observer interface {
	RunFinished(api.RunEvent)
}

// AddObserver adds an observer; call it before the service takes requests.
func (s *Service) AddObserver(o Observer) { s.observers = append(s.observers, o) }

// Preparer runs before the first change of a release: a database dump
// before migrations, say. Its error fails the release with nothing changed.
type Preparer interface {
	// BeforeRelease is told whether the release runs pre-deploy hooks.
	BeforeRelease(ctx context.Context, project string, hooks bool) error
}

// AddPreparer adds a preparer; call it before the service takes requests.
func (s *Service) AddPreparer(p Preparer) { s.preparers = append(s.preparers, p) }

// Projects returns the configured project names.
func (s *Service) Projects() []string { return s.cfg.ProjectNames() }

// LockState reports whether a deploy or rollback is running in project,
// and whether an operator holds it.
func (s *Service) LockState(project string) (running, held bool) {
	h, _ := s.store.Hold(project)
	return s.locks.holder(project) != nil, h != nil
}

// Live returns the number of a project's live release (0: none).
func (s *Service) Live(project string) int {
	cur, ok, err := s.store.Current(project)
	if err != nil || !ok {
		return 0
	}
	return cur.Number
}

// New returns a service for the projects and identities in cfg.
func New(cfg *config.Config, engine Engine, store Store, log *slog.Logger) (*Service, error) {
	ids, err := auth.New(cfg.Identities)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, engine: engine, store: store, log: log, now: time.Now, ids: ids,
		checker: &healthcheck.Checker{Engine: engine}}
	for _, name := range cfg.ProjectNames() {
		if cfg.Projects[name].Backend == config.BackendSwarm {
			if _, err := s.swarmEngine(); err != nil {
				return nil, fmt.Errorf("project %s has backend: swarm: %w", name, err)
			}
		}
	}
	return s, nil
}

// Identities returns the identities that may reach the service from
// outside the host.
func (s *Service) Identities() *auth.Identities { return s.ids }

// Emit receives a deploy's events as they happen.
type Emit func(api.Event)

// outcome is how a request ended: its exit code and what to say.
type outcome struct {
	code int
	err  error
	msg  string
}

// releaseRun is one request that may change a project, a deploy or a
// rollback, from its lock to its result.
type releaseRun struct {
	svc      *Service
	project  string
	pc       config.Project
	identity string
	emit     Emit
	log      *slog.Logger
	started  time.Time
	release  api.Release
	// stepMu guards release.Steps while the rollout's steps end; emitMu
	// sends one event at a time.
	stepMu, emitMu sync.Mutex
	// dry is a dry run: no lock, no record, nothing changed, and the
	// observers are not told.
	dry bool
	// override is the request's own registry credential, if any: for
	// the pulls here, and for a Swarm's nodes.
	override *registry.Credential
}

func (s *Service) newReleaseRun(project, identity string, emit Emit) *releaseRun {
	// Every log line of one request carries its deploy ID.
	id := make([]byte, 4)
	rand.Read(id)
	return &releaseRun{svc: s, project: project, identity: identity, emit: emit, started: s.now(),
		log: s.log.With("deploy_id", hex.EncodeToString(id), "project", project, "identity", identity)}
}

func (r *releaseRun) event(e api.Event) {
	e.Time = r.svc.now()
	e.Project = r.project
	e.Release = r.release.Number
	if r.emit != nil {
		// Steps of a rollout end at once: one event at a time.
		r.emitMu.Lock()
		defer r.emitMu.Unlock()
		r.emit(e)
	}
}

func (r *releaseRun) progress(service, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.log.Info(msg, "service", service, "release", r.release.Number)
	r.event(api.Event{Type: api.EventProgress, Service: service, Message: msg})
}

// finish emits the result event, tells the observers, and returns the
// exit code.
func (r *releaseRun) finish(kind string, o outcome) int {
	msg := o.msg
	if o.err != nil {
		msg = o.err.Error()
	}
	r.log.Info("finished", "release", r.release.Number, "exit_code", o.code, "result", msg)
	code := o.code
	r.event(api.Event{Type: api.EventResult, Message: msg, ExitCode: &code})
	if len(r.svc.observers) > 0 && !r.dry {
		ev := api.RunEvent{Project: r.project, Kind: kind, ExitCode: code, Duration: r.svc.now().Sub(r.started),
			Identity: r.identity, Message: msg, Release: r.release, Live: r.svc.Live(r.project), Time: r.svc.now()}
		ev.Release.State = nil
		switch {
		case code == api.ExitOK && r.release.Number == 0:
			ev.Outcome = api.RunNoop
		case code == api.ExitOK:
			ev.Outcome = api.RunSucceeded
		case code == api.ExitRolledBack:
			ev.Outcome = api.RunRolledBack
		case code == api.ExitBroken:
			ev.Outcome = api.RunFailed
		default:
			ev.Outcome = api.RunRefused
		}
		for _, o := range r.svc.observers {
			o.RunFinished(ev)
		}
	}
	return code
}

// begin checks the project and takes its lock.
func (r *releaseRun) begin(ctx context.Context, verb, message string, wait time.Duration) (unlock func(), o *outcome) {
	pc, ok := r.svc.cfg.Projects[r.project]
	if !ok {
		return nil, &outcome{code: api.ExitBadRequest, err: fmt.Errorf("%s %q: %w", verb, r.project, ErrUnknownProject)}
	}
	r.pc = pc
	if wait > 0 {
		r.progress("", "waiting up to %s for the lock", wait)
	}
	unlock, holder, err := r.svc.locks.acquire(ctx, r.svc.store, r.project, api.Holder{Identity: r.identity, Since: r.started, Verb: verb, Message: message}, wait)
	switch {
	case err != nil:
		return nil, &outcome{code: api.ExitLocked, err: err}
	case holder != nil:
		return nil, &outcome{code: api.ExitLocked, err: errors.New(refusal(r.project, holder))}
	}
	return unlock, nil
}

// deploy runs one deploy request for identity and returns its exit code.
// The last event emitted is the result, with the same code. A dry run
// (req.DryRun) loads and checks the request as a deploy does, resolves
// the images (no pull) and shows the plan; it takes no lock, records
// nothing and changes nothing: exit code 0, or 2 for what a deploy would
// refuse.
func (s *Service) deploy(ctx context.Context, identity string, req api.DeployRequest, emit Emit) int {
	if req.DryRun {
		r := s.newReleaseRun(req.Project, identity, emit)
		r.dry = true
		pc, ok := s.cfg.Projects[req.Project]
		if !ok {
			return r.finish(api.KindDeploy, outcome{code: api.ExitBadRequest, err: fmt.Errorf("deploy %q: %w", req.Project, ErrUnknownProject)})
		}
		r.pc = pc
		r.progress("", "dry run: no lock is taken and nothing is changed")
		return r.finish(api.KindDeploy, r.deploy(ctx, req))
	}
	return s.withLock(ctx, api.KindDeploy, req.Project, identity, req.Message, req.Wait, emit,
		func(r *releaseRun) outcome { return r.deploy(ctx, req) })
}

// withLock runs work as one request of kind on project, holding its lock,
// and returns the exit code of the result it emits last.
func (s *Service) withLock(ctx context.Context, kind, project, identity, message string, wait time.Duration, emit Emit, work func(*releaseRun) outcome) int {
	r := s.newReleaseRun(project, identity, emit)
	unlock, refused := r.begin(ctx, kind, message, wait)
	if refused != nil {
		return r.finish(kind, *refused)
	}
	defer unlock()
	if r.onSwarm() {
		// What the project's proxies do is told to this run's caller.
		defer s.running(project, r)()
	}
	return r.finish(kind, work(r))
}

func (r *releaseRun) deploy(ctx context.Context, req api.DeployRequest) outcome {
	if err := undeclared(r.project, r.pc, req.Env); err != nil {
		return outcome{code: api.ExitBadRequest, err: err}
	}
	if err := api.CheckSource(req.Source); err != nil {
		return outcome{code: api.ExitBadRequest, err: err}
	}
	src, err := r.composeSource(req, req.DryRun)
	if err != nil {
		code := api.ExitBroken
		if errors.Is(err, api.ErrBundle) || errors.Is(err, ErrNoComposeFile) {
			code = api.ExitBadRequest
		}
		return outcome{code: code, err: err}
	}
	// A shipped file written for nothing is not kept.
	defer func() { src.cleanup(r.release.Number != 0) }()
	if src.shipped != nil {
		r.progress("", "loading the shipped compose file %s", src.shipped.Describe())
	} else {
		r.progress("", "loading %s", src.file)
	}
	secrets := r.secretValues(req.Env, src.shipped != nil)
	opts := loadOptions(r.project, r.pc, req.Images)
	opts.ComposeFile = src.file
	opts.Env = req.Env
	project, err := compose.Load(ctx, opts)
	if err != nil {
		return outcome{code: api.ExitBadRequest, err: src.cutDir(redact(err, secrets))}
	}
	if project.Name != r.project {
		// The name is given to the loader; a name: in the file cannot
		// change it, and this says so should that ever change.
		return outcome{code: api.ExitBadRequest, err: fmt.Errorf("the compose file loaded as project %q, not %s: a compose file cannot choose its project's name", project.Name, r.project)}
	}
	// Before anything is resolved or pulled.
	if err := checkRequest(ctx, opts, project); err != nil {
		return outcome{code: api.ExitBadRequest, err: src.cutDir(redact(err, secrets))}
	}
	if src.shipped != nil {
		if err := r.checkShipped(project, src); err != nil {
			return outcome{code: api.ExitBadRequest, err: src.cutDir(redact(err, secrets))}
		}
	}
	steadyShippedPaths(project, src)
	if a := req.Registry; a != nil {
		r.override = &registry.Credential{Server: a.Server, Username: a.Username, Password: a.Password}
	}
	reg := r.registry()
	r.progress("", "resolving %d images", len(project.Services))
	pins, err := reg.Resolve(ctx, imageRequests(project))
	if err != nil {
		return outcome{code: api.ExitBadRequest, err: fmt.Errorf("resolve images: %w", err)}
	}
	for _, name := range project.ServiceNames() {
		r.progress(name, "%s is %s", pins[name].Ref, pins[name].Digest)
	}
	if !req.DryRun && !r.onSwarm() {
		// On a Swarm each node pulls what its tasks run, with the
		// credentials passed along with the service.
		if err := reg.Pull(ctx, pins, func(svc, msg string) { r.progress(svc, "%s", msg) }); err != nil {
			return outcome{code: api.ExitBadRequest, err: fmt.Errorf("pull images: %w", err)}
		}
	}
	desired, err := compose.NewDesired(project, pins)
	if err != nil {
		return outcome{code: api.ExitBadRequest, err: err}
	}
	if r.onSwarm() {
		if err := swarm.Convert(project, desired); err != nil {
			return outcome{code: api.ExitBadRequest, err: err}
		}
	}
	if req.DryRun {
		return r.dryRun(ctx, desired)
	}
	composeYAML, err := pinnedYAML(project, pins)
	if err != nil {
		return outcome{code: api.ExitBadRequest, err: err}
	}
	return r.roll(ctx, desired, api.Release{
		Kind:     api.KindDeploy,
		Message:  req.Message,
		Services: serviceImages(pins),
		Compose:  redactText(string(composeYAML), req.Env),
		Shipped:  src.shipped,
		Source:   req.Source,
	}, req.Timeout)
}

// dryRun shows the plan to desired and changes nothing.
func (r *releaseRun) dryRun(ctx context.Context, desired *compose.Desired) outcome {
	plan, err := r.plan(ctx, desired)
	if err != nil {
		return outcome{code: api.ExitBroken, err: err}
	}
	if plan.Empty() {
		return outcome{code: api.ExitOK, msg: "dry run: nothing to change: the running containers already match this deploy"}
	}
	graph := r.life().Graph(plan)
	r.event(api.Event{Type: api.EventPlan, Message: graph.String()})
	r.progress("", "%s", r.estimate(graph))
	return outcome{code: api.ExitOK, msg: fmt.Sprintf("dry run: the deploy would change %s; nothing was changed", strings.Join(plan.ChangedServices(), ", "))}
}

// rollback redeploys a recorded release, by digest, with the same gating.
func (s *Service) rollback(ctx context.Context, identity string, req api.RollbackRequest, emit Emit) int {
	return s.withLock(ctx, api.KindRollback, req.Project, identity, req.Message, req.Wait, emit,
		func(r *releaseRun) outcome { return r.rollback(ctx, req) })
}

func (r *releaseRun) rollback(ctx context.Context, req api.RollbackRequest) outcome {
	target, err := r.rollbackTarget(req.To)
	if err != nil {
		return outcome{code: api.ExitBadRequest, err: err}
	}
	desired, err := decodeState(target)
	if err != nil {
		return outcome{code: api.ExitBadRequest, err: err}
	}
	r.progress("", "rolling back to release %d (%s, by %s%s)", target.Number, target.Started.Format(time.DateTime), target.Identity, quoted(target.Message))
	if target.Shipped != nil {
		// Its containers may bind-mount a shipped file: put the files
		// back should they be gone.
		r.progress("", "release %d ran the shipped compose file %s%s", target.Number, target.Shipped.Describe(), sourceSuffix(target.Source))
		if _, _, err := r.svc.writeBundle(r.project, target.Shipped, false); err != nil {
			return outcome{code: api.ExitBroken, err: err}
		}
	}
	pins := map[string]compose.Pin{}
	for _, s := range desired.Services {
		pins[s.Name] = s.Image
	}
	if r.onSwarm() {
		pins = nil // the nodes pull
	}
	if err := r.registry().Pull(ctx, pins, func(svc, msg string) { r.progress(svc, "%s", msg) }); err != nil {
		return outcome{code: api.ExitBadRequest, err: fmt.Errorf("release %d's images are not all on this host, and pulling them failed: %w", target.Number, err)}
	}
	msg := fmt.Sprintf("rollback to release %d", target.Number)
	if req.Message != "" {
		msg += ": " + req.Message
	}
	return r.roll(ctx, desired, api.Release{
		Kind:       api.KindRollback,
		RollbackOf: target.Number,
		Message:    msg,
		Services:   target.Services,
		Compose:    target.Compose,
		Shipped:    target.Shipped,
		Source:     target.Source,
	}, req.Timeout)
}

// rollbackTarget finds the release to go back to: the one asked for, or
// the newest good release before the live one.
func (r *releaseRun) rollbackTarget(to int) (api.Release, error) {
	cur, ok, err := r.svc.store.Current(r.project)
	if err != nil {
		return api.Release{}, err
	}
	if to != 0 {
		t, err := r.svc.store.Get(r.project, to)
		if err != nil {
			return t, fmt.Errorf("rollback: %w", err)
		}
		if t.Outcome != api.OutcomeSucceeded {
			return t, fmt.Errorf("rollback: release %d %s: it was never live; choose a release that succeeded", to, t.Outcome)
		}
		return t, nil
	}
	if !ok {
		return api.Release{}, fmt.Errorf("rollback: %s has no live release yet", r.project)
	}
	hist, err := r.svc.store.History(r.project)
	if err != nil {
		return api.Release{}, err
	}
	for _, h := range hist {
		if h.Number < cur.Number && h.Outcome == api.OutcomeSucceeded {
			return h, nil
		}
	}
	return api.Release{}, fmt.Errorf("rollback: no good release before the live release %d is recorded", cur.Number)
}

// roll takes the project to desired as a new release: journal, plan,
// rollout, monitor, commit; or, on failure, the whole release back to the
// previous one.
func (r *releaseRun) roll(ctx context.Context, desired *compose.Desired, rec api.Release, timeout time.Duration) outcome {
	plan, err := r.plan(ctx, desired)
	if err != nil {
		return outcome{code: api.ExitBroken, err: err}
	}
	if plan.Empty() {
		return outcome{code: api.ExitOK, msg: "nothing to change: the running containers already match this release"}
	}
	state, err := json.Marshal(desired)
	if err != nil {
		return outcome{code: api.ExitBroken, err: fmt.Errorf("encode desired state: %w", err)}
	}
	prev, _, err := r.svc.store.Current(r.project)
	if err != nil {
		return outcome{code: api.ExitBroken, err: err}
	}
	// The journal: the intent is on disk before the first change, so a
	// restarted agentd knows what was under way.
	rec.Project, rec.Previous, rec.Started, rec.Identity = r.project, prev.Number, r.started, r.identity
	rec.Outcome, rec.Plan, rec.State = api.OutcomeInProgress, plan.String(), state
	graph := r.life().Graph(plan)
	rec.Steps = pendingSteps(graph)
	r.release, err = r.svc.store.Begin(rec)
	if err != nil {
		return outcome{code: api.ExitBroken, err: err}
	}
	if prev.Number == 0 {
		r.progress("", "release %d is the first of %s: starting %s", r.release.Number, r.project, strings.Join(plan.ChangedServices(), ", "))
	} else {
		r.progress("", "release %d replaces release %d: changing %s", r.release.Number, prev.Number, strings.Join(plan.ChangedServices(), ", "))
	}

	// From here on the engine changes: finish what was started even if the
	// caller goes away, so a cancelled CI job cannot leave half a release.
	ctx = context.WithoutCancel(ctx)
	rollCtx, cancel := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		rollCtx, cancel = context.WithTimeout(ctx, timeout)
	}
	err = r.runPreparers(rollCtx, desired, plan)
	if err == nil {
		err = r.life().RollOut(rollCtx, plan, graph)
	}
	cancel()
	if err != nil {
		return r.fail(ctx, prev, err)
	}
	return r.commit(ctx, desired, plan)
}

// plan observes the project, plans the way to desired and shows the plan.
func (r *releaseRun) plan(ctx context.Context, desired *compose.Desired) (life.Plan, error) {
	return r.life().Plan(ctx, desired)
}

// onSwarm says whether the project is deployed to a Swarm.
func (r *releaseRun) onSwarm() bool { return r.pc.Backend == config.BackendSwarm }

// life is the life of this release on the project's backend: its
// rollout, its rollback or undo, its cleanup and post-deploy hooks.
// What it creates is labelled with this release's number.
func (r *releaseRun) life() life.Backend {
	return r.lifeAs(r.release.Number)
}

// lifeAs is life with what it creates labelled as release n's: a
// rollback to release n creates or updates to n's spec.
func (r *releaseRun) lifeAs(n int) life.Backend {
	if r.onSwarm() {
		return r.swarmLife(fmt.Sprint(n))
	}
	return r.engineLife(fmt.Sprint(n))
}

// engineLife is the life of a release on this host's engine (compose/life).
func (r *releaseRun) engineLife(release string) *life.Life {
	return &life.Life{
		Engine:           r.svc.engine,
		Health:           r.svc.checker,
		Project:          r.project,
		Release:          release,
		BootCPUShares:    r.svc.cfg.Rollout.BootCPUShares,
		DefaultCPUShares: r.svc.defaultShares,
		Idle:             r.svc.idler(),
		Pin:              r.svc.pinner(),
		Progress:         func(svc, msg string) { r.progress(svc, "%s", msg) },
		OnPlan:           func(p *compose.Plan) { r.event(api.Event{Type: api.EventPlan, Message: p.String()}) },
		OnStep:           r.stepEnded,
		// life's words for when a container was stopped are api's.
		OnKilled: r.killed,
	}
}

// runPreparers runs the preparers before the first change.
func (r *releaseRun) runPreparers(ctx context.Context, desired *compose.Desired, plan life.Plan) error {
	if len(r.svc.preparers) == 0 {
		return nil
	}
	changed := map[string]bool{}
	for _, s := range plan.ChangedServices() {
		changed[s] = true
	}
	hooks := false
	for _, s := range desired.Services {
		hooks = hooks || (changed[s.Name] && len(s.Policy.PreDeploy) > 0)
	}
	for _, p := range r.svc.preparers {
		if err := p.BeforeRelease(ctx, r.project, hooks); err != nil {
			return fmt.Errorf("before the release: %w", err)
		}
	}
	return nil
}

// fail rolls the whole release back to prev after err, and records it.
func (r *releaseRun) fail(ctx context.Context, prev api.Release, cause error) outcome {
	r.progress("", "release %d failed: %v", r.release.Number, cause)
	r.release.Finished = r.svc.now()
	if errors.Is(cause, compose.ErrPaused) {
		r.release.Outcome, r.release.Error = api.OutcomeFailed, cause.Error()
		r.save(false)
		return outcome{code: api.ExitBroken, err: fmt.Errorf("release %d failed and was left as it is for an operator (failure_action: pause): %w", r.release.Number, cause)}
	}
	if err := r.restore(ctx, prev); err != nil {
		r.release.Finished = r.svc.now()
		r.release.Outcome = api.OutcomeFailed
		r.release.Error = fmt.Sprintf("%v; rolling back to release %d failed too: %v", cause, prev.Number, err)
		r.save(false)
		return outcome{code: api.ExitBroken, err: fmt.Errorf("release %d failed (%w) and rolling back to release %d failed too: %w", r.release.Number, cause, prev.Number, err)}
	}
	r.release.Finished = r.svc.now()
	r.release.Outcome, r.release.Error, r.release.RestoredTo = api.OutcomeRolledBack, cause.Error(), prev.Number
	r.save(false)
	if prev.Number == 0 {
		return outcome{code: api.ExitRolledBack, err: fmt.Errorf("release %d failed and was undone (there was no earlier release: its containers were removed, and those it had replaced run again): %w", r.release.Number, cause)}
	}
	return outcome{code: api.ExitRolledBack, err: fmt.Errorf("release %d failed; release %d is serving again: %w", r.release.Number, prev.Number, cause)}
}

// restore brings the project back to release prev with the same gating,
// using the images on disk. Before the first release there is none: the
// release is undone instead, back to what ran before it (nothing, or a
// stack `docker compose` had started).
func (r *releaseRun) restore(ctx context.Context, prev api.Release) error {
	if prev.Number == 0 {
		failed, err := decodeState(r.release)
		if err != nil {
			// The undo still works without the release's state; it only
			// lacks the order of the services and the proxies.
			r.progress("", "warning: %v: undoing it without the order of its services", err)
			failed = &compose.Desired{Project: r.project}
		}
		r.progress("", "undoing release %d (there is no earlier release): back to what ran before it", r.release.Number)
		return r.life().Undo(ctx, failed)
	}
	desired, err := decodeState(prev)
	if err != nil {
		return err
	}
	r.progress("", "rolling back to release %d", prev.Number)
	// What the rollback creates or updates runs release prev's spec: its
	// label says so.
	return r.lifeAs(prev.Number).RollBack(ctx, desired, r.release.Interrupted)
}

// commit makes the release live, then removes what it retired and runs
// the post-deploy hooks; neither can fail the release any more.
func (r *releaseRun) commit(ctx context.Context, desired *compose.Desired, plan life.Plan) outcome {
	r.release.Finished = r.svc.now()
	r.release.Outcome = api.OutcomeSucceeded
	if err := r.svc.store.Save(r.release, true); err != nil {
		return outcome{code: api.ExitBroken, err: err}
	}
	lf := r.life()
	kills := len(r.release.KilledOnStop)
	if err := lf.Cleanup(ctx, desired); err != nil {
		r.progress("", "warning: cleaning up after the release: %v", err)
	}
	if len(r.release.KilledOnStop) > kills {
		r.save(true)
	}
	lf.PostDeploy(ctx, desired, plan.ChangedServices())
	if n, err := r.svc.store.Prune(r.project, r.pc.KeepReleases); err != nil {
		r.log.Warn("prune history", "err", err)
	} else if n > 0 {
		r.progress("", "pruned %d old release records (keeping %d)", n, r.pc.KeepReleases)
	}
	if err := r.svc.pruneShipped(r.project); err != nil {
		r.log.Warn("prune shipped compose files", "err", err)
	}
	return outcome{code: api.ExitOK, msg: fmt.Sprintf("release %d is live", r.release.Number)}
}

// killed records, on the release, the containers the engine killed at the
// end of their grace period during a part of its life. The executor has
// said so in the progress already.
func (r *releaseRun) killed(during string, killed []compose.Killed) {
	for _, k := range killed {
		r.log.Warn("container killed at the end of its grace period", "release", r.release.Number, "service", k.Service,
			"container", k.Container, "signal", k.Signal, "grace_period", k.Grace, "stopped_after", k.Took, "during", during)
		r.release.KilledOnStop = append(r.release.KilledOnStop, api.StopKilled{
			Service: k.Service, Container: k.Container, Signal: k.Signal, During: during,
			GracePeriod:  k.Grace.Seconds(),
			StoppedAfter: k.Took.Round(time.Millisecond).Seconds(),
		})
	}
}

func (r *releaseRun) save(live bool) {
	if err := r.svc.store.Save(r.release, live); err != nil {
		r.progress("", "error: recording release %d: %v", r.release.Number, err)
	}
}

func (r *releaseRun) registry() *registry.Client {
	return &registry.Client{Engine: r.svc.engine, ConfigDir: firstNonEmpty(r.pc.DockerConfig, r.svc.cfg.DockerConfig), Override: r.override}
}

func decodeState(rel api.Release) (*compose.Desired, error) {
	if len(rel.State) == 0 {
		return nil, fmt.Errorf("release %d has no recorded state to redeploy", rel.Number)
	}
	var d compose.Desired
	if err := json.Unmarshal(rel.State, &d); err != nil {
		return nil, fmt.Errorf("release %d: decode recorded state: %w", rel.Number, err)
	}
	return &d, nil
}

// redactText replaces the values of request-supplied variables, which are
// secrets, in text that is recorded or shown.
func redactText(text string, env map[string]string) string {
	for _, v := range env {
		if len(v) >= 3 {
			text = strings.ReplaceAll(text, v, "[redacted]")
		}
	}
	return text
}

func redact(err error, env map[string]string) error {
	if err == nil || len(env) == 0 {
		return err
	}
	if msg := redactText(err.Error(), env); msg != err.Error() {
		return fmt.Errorf("%s", msg)
	}
	return err
}

func sourceSuffix(src string) string {
	if src == "" {
		return ""
	}
	return " from " + src
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
	if pc.Backend == config.BackendSwarm {
		// What a Swarm cannot honour, not what one engine cannot.
		o.Check = swarm.Check
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

// lock holds a project's deploys for identity (or, with req.Unlock,
// releases the hold). A held project refuses deploys and rollbacks with
// exit code 3, naming who holds it, since when and why.
func (s *Service) lock(_ context.Context, identity string, req api.LockRequest) (*api.Holder, error) {
	if _, ok := s.cfg.Projects[req.Project]; !ok {
		return nil, fmt.Errorf("lock %q: %w", req.Project, ErrUnknownProject)
	}
	if req.Unlock {
		h, err := s.store.Hold(req.Project)
		if err != nil {
			return nil, err
		}
		if err := s.store.SetHold(req.Project, nil); err != nil {
			return nil, err
		}
		s.locks.released()
		s.log.Info("project unlocked", "project", req.Project, "identity", identity)
		return h, nil
	}
	h := &api.Holder{Identity: identity, Since: s.now(), Verb: "lock", Message: req.Message}
	if err := s.store.SetHold(req.Project, h); err != nil {
		return nil, err
	}
	s.log.Info("project locked", "project", req.Project, "identity", identity, "message", req.Message)
	return h, nil
}

// status reports the current release and containers of one project, or of
// every project when name is empty.
func (s *Service) status(ctx context.Context, name string) ([]api.ProjectStatus, error) {
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
		hold, err := s.store.Hold(n)
		if err != nil {
			return nil, err
		}
		st.Locked = hold
		cur, ok, err := s.store.Current(n)
		if err != nil {
			return nil, err
		}
		if ok {
			cur.State = nil
			st.Current = &cur
		}
		if s.cfg.Projects[n].Backend == config.BackendSwarm {
			if st.Services, err = s.swarmStatus(ctx, n); err != nil {
				return nil, err
			}
			out = append(out, st)
			continue
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

// history returns the recorded releases of a project, newest first,
// without their recorded state.
func (s *Service) history(_ context.Context, name string) ([]api.Release, error) {
	if _, ok := s.cfg.Projects[name]; !ok {
		return nil, fmt.Errorf("history %q: %w", name, ErrUnknownProject)
	}
	hist, err := s.store.History(name)
	for i := range hist {
		hist[i].State = nil
	}
	return hist, err
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
