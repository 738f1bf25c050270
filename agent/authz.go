package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/clip"
)

// ErrDenied is a request its caller may not make: exit code 4, HTTP 403.
// The error that wraps it says who may not do what, naming only what the
// caller sent: never the configured projects or identities.
var ErrDenied = errors.New("not allowed")

// deniedError is a refusal: its text is what the caller is told, and it
// is ErrDenied.
type deniedError struct{ msg string }

func (e *deniedError) Error() string        { return e.msg }
func (e *deniedError) Is(target error) bool { return target == ErrDenied }

// authorize is where the service decides whether p may use verb on
// project, and, with ship, send the deploy's compose file with the
// request. A door authenticates; this is the one decision of every door.
//
// A local user of the host may do anything, ship included (it controls
// the host already), when socket.allow_users is empty or names it. An
// identity of the config may use the verbs and projects of its scopes
// (status with no project: of those it may see), and ship a compose file
// only with ship_compose.
func (s *Service) authorize(p auth.Principal, verb, project string, ship bool) error {
	switch {
	case !s.allowed(p, verb, project) && p.IsLocal():
		return s.deny(p, verb, project, "not in socket.allow_users",
			fmt.Sprintf("local user %s is not allowed to use agentd (socket.allow_users)", p.Detail))
	case !s.allowed(p, verb, project):
		what := verb
		if project != "" {
			what += " " + project
		}
		return s.deny(p, verb, project, "not allowed", fmt.Sprintf("%s may not %s", subject(p), what))
	case ship && !p.IsLocal() && !s.ids.MayShip(p.Identity):
		return s.deny(p, verb, project, "may not ship a compose file",
			fmt.Sprintf("%s may not ship a compose file (ship_compose)", subject(p)))
	}
	return nil
}

// allowed reports whether p may use verb on project (shipping aside),
// without a word in the log: authorize's rule, and the filter of what p
// is shown.
func (s *Service) allowed(p auth.Principal, verb, project string) bool {
	if p.IsLocal() {
		allow := s.cfg.Socket.AllowUsers
		return len(allow) == 0 || slices.Contains(allow, p.Detail)
	}
	return s.ids.Allowed(p.Identity, project, verb)
}

// deny logs a refusal, with what the caller chose clipped, and returns
// the error the caller is told.
func (s *Service) deny(p auth.Principal, verb, project, why, msg string) error {
	s.log.Warn("request refused", "identity", clip.F(p.Identity), "method", p.Method, "detail", clip.F(p.Detail),
		"remote", clip.F(p.Remote), "reason", why, "verb", verb, "project", clip.F(project))
	return &deniedError{msg: msg}
}

// subject names p in a refusal as its door always has: "identity NAME"
// to an SSH key (or an OpenSSH forced command), the principal with its
// method to a token or a signed request.
func subject(p auth.Principal) string {
	if p.Method == "ssh" || p.Method == "ssh-command" {
		return "identity " + p.Identity
	}
	return p.String()
}

// Deploy runs one deploy request for p, if p may make it, and returns
// its exit code; see deploy. A refusal (ErrDenied) is returned before
// anything is emitted, with exit code 4.
func (s *Service) Deploy(ctx context.Context, p auth.Principal, req api.DeployRequest, emit Emit) (int, error) {
	if err := s.authorize(p, api.VerbDeploy, req.Project, req.Compose != nil); err != nil {
		return api.ExitDenied, err
	}
	return s.deploy(ctx, p.String(), req, emit), nil
}

// Rollback redeploys a recorded release for p, if p may; see rollback.
func (s *Service) Rollback(ctx context.Context, p auth.Principal, req api.RollbackRequest, emit Emit) (int, error) {
	if err := s.authorize(p, api.VerbRollback, req.Project, false); err != nil {
		return api.ExitDenied, err
	}
	return s.rollback(ctx, p.String(), req, emit), nil
}

// Lock holds (or, with req.Unlock, releases) a project's deploys for p,
// if p may; see lock.
func (s *Service) Lock(ctx context.Context, p auth.Principal, req api.LockRequest) (*api.Holder, error) {
	verb := api.VerbLock
	if req.Unlock {
		verb = api.VerbUnlock
	}
	if err := s.authorize(p, verb, req.Project, false); err != nil {
		return nil, err
	}
	return s.lock(ctx, p.String(), req)
}

// Status reports one project (which p must be allowed to see), or every
// project p may see when project is empty.
func (s *Service) Status(ctx context.Context, p auth.Principal, project string) ([]api.ProjectStatus, error) {
	if err := s.authorize(p, api.VerbStatus, project, false); err != nil {
		return nil, err
	}
	return s.visibleStatus(ctx, p, project)
}

// visibleStatus is the status of project, or of every project, cut down
// to the projects p may see: the one place a status is filtered.
func (s *Service) visibleStatus(ctx context.Context, p auth.Principal, project string) ([]api.ProjectStatus, error) {
	st, err := s.status(ctx, project)
	if err != nil {
		return nil, err
	}
	visible := []api.ProjectStatus{}
	for _, ps := range st {
		if s.allowed(p, api.VerbStatus, ps.Project) {
			visible = append(visible, ps)
		}
	}
	return visible, nil
}

// History returns a project's recorded releases, newest first, if p may
// see them.
func (s *Service) History(ctx context.Context, p auth.Principal, project string) ([]api.Release, error) {
	if err := s.authorize(p, api.VerbHistory, project, false); err != nil {
		return nil, err
	}
	hist, err := s.history(ctx, project)
	if hist == nil && err == nil {
		hist = []api.Release{}
	}
	return hist, err
}
