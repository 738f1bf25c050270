package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/store"
	"github.com/docker/docker/api/types/container"
)

// listOnly is an engine that has no containers: enough for a status. Any
// other call panics (the embedded nil interface): an authorization test
// must not reach the rollout.
type listOnly struct{ Engine }

func (listOnly) ContainerList(context.Context, container.ListOptions) ([]container.Summary, error) {
	return nil, nil
}

// newAuthzService is a service with two projects, three identities, a
// socket that serves only alice, a store and an engine without
// containers. shop's compose file does not exist: a deploy that is let in
// ends with exit code 2 at loading it, before any engine call.
func newAuthzService(t *testing.T) (*Service, *store.Store, *countObserver) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "berth.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	project := config.Project{ComposeFile: filepath.Join(dir, "missing", "compose.yaml"), KeepReleases: 10,
		MaxComposeFiles: config.DefaultMaxComposeFiles, MaxComposeBytes: config.DefaultMaxComposeBytes}
	cfg := &config.Config{
		StateDir: filepath.Join(dir, "state"),
		Projects: map[string]config.Project{"shop": project, "zeta-internal": project},
		Socket:   config.Socket{AllowUsers: []string{"alice"}},
		Identities: []config.Identity{
			{Name: "ci-shop", LocalUsers: []string{"deploy"}, Projects: []string{"shop"}, Verbs: []string{"deploy", "status"}},
			{Name: "shipper", LocalUsers: []string{"deploy"}, Projects: []string{"shop"}, Verbs: []string{"deploy"}, ShipCompose: true},
			{Name: "ops", LocalUsers: []string{"deploy"}, Projects: []string{"*"}, Verbs: []string{"*"}},
		},
	}
	svc, err := New(cfg, listOnly{}, st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	obs := &countObserver{}
	svc.AddObserver(obs)
	return svc, st, obs
}

// badCompose is a shipped compose file that does not load: a deploy let
// in with it ends with exit code 2, and nothing is changed.
const badCompose = "services: [\n"

// door calls the service as one front door does, and returns the exit
// code and what the caller was told of a refusal (stderr, or the error).
type door struct {
	name string
	// as is the principal of the door for an identity of the config.
	as   func(identity string) auth.Principal
	call func(t *testing.T, svc *Service, p auth.Principal, verb, project string, ship bool) (int, string, []string)
}

// viaRun is the SSH door or agentctl ssh-command: Service.Run with the
// command's words.
func viaRun(t *testing.T, svc *Service, p auth.Principal, verb, project string, ship bool) (int, string, []string) {
	args := []string{verb}
	if project != "" {
		args = append(args, project)
	}
	var stdin io.Reader = strings.NewReader("")
	switch {
	case ship:
		args = append(args, "--compose-file", "-")
		stdin = tarOf(t, "compose.yaml", badCompose)
	case verb == api.VerbLock:
		args = append(args, "-m", "why")
	case verb == api.VerbStatus:
		args = append(args, "--json")
	}
	var stdout, stderr bytes.Buffer
	code := svc.Run(t.Context(), p, args, stdin, &stdout, &stderr)
	var seen []string
	if verb == api.VerbStatus && code == api.ExitOK {
		for line := range strings.Lines(stdout.String()) {
			if name, ok := strings.CutPrefix(strings.TrimSpace(line), `"project": "`); ok {
				seen = append(seen, strings.TrimSuffix(name, `",`))
			}
		}
	}
	return code, stderr.String(), seen
}

// viaMethods is the HTTP API or the unix socket: the service's methods.
func viaMethods(t *testing.T, svc *Service, p auth.Principal, verb, project string, ship bool) (int, string, []string) {
	ctx := t.Context()
	answer := func(err error) (int, string, []string) {
		if err != nil {
			return codeOf(err), err.Error(), nil
		}
		return api.ExitOK, "", nil
	}
	switch verb {
	case api.VerbDeploy:
		req := api.DeployRequest{Project: project}
		if ship {
			req.Compose = &api.ComposeBundle{Files: map[string]string{"compose.yaml": badCompose}}
		}
		emitted := 0
		code, err := svc.Deploy(ctx, p, req, func(api.Event) { emitted++ })
		if err != nil && (emitted > 0 || code != api.ExitDenied || !errors.Is(err, ErrDenied)) {
			t.Errorf("%s deploy %s: exit %d, %v after %d events: a refusal is ErrDenied, exit 4, before any event", p, project, code, err, emitted)
		}
		if err != nil {
			return code, err.Error(), nil
		}
		return code, "", nil
	case api.VerbRollback:
		code, err := svc.Rollback(ctx, p, api.RollbackRequest{Project: project}, func(api.Event) {})
		if err != nil {
			return code, err.Error(), nil
		}
		return code, "", nil
	case api.VerbLock, api.VerbUnlock:
		_, err := svc.Lock(ctx, p, api.LockRequest{Project: project, Message: "why", Unlock: verb == api.VerbUnlock})
		return answer(err)
	case api.VerbStatus:
		st, err := svc.Status(ctx, p, project)
		if err != nil {
			return answer(err)
		}
		var seen []string
		for _, ps := range st {
			seen = append(seen, ps.Project)
		}
		return api.ExitOK, "", seen
	case api.VerbHistory:
		_, err := svc.History(ctx, p, project)
		return answer(err)
	}
	t.Fatalf("no verb %s", verb)
	return 0, "", nil
}

var doors = []door{
	{"ssh", func(id string) auth.Principal {
		return auth.Principal{Identity: id, Method: "ssh", Detail: "SHA256:test", Remote: "127.0.0.1:5555"}
	}, viaRun},
	{"ssh-command", func(id string) auth.Principal {
		return auth.Principal{Identity: id, Method: "ssh-command", Detail: "local:deploy", Remote: "127.0.0.1 5555"}
	}, viaRun},
	{"http (token)", func(id string) auth.Principal {
		return auth.Principal{Identity: id, Method: "oidc", Detail: "group/shop@main", Remote: "127.0.0.1:5555"}
	}, viaMethods},
	{"http (hmac)", func(id string) auth.Principal {
		return auth.Principal{Identity: id, Method: "hmac", Remote: "127.0.0.1:5555"}
	}, viaMethods},
}

// subjectOn is how door names an identity in a refusal: by name to an SSH
// key, as the principal to a token or a signature.
func subjectOn(d door, identity string) string {
	switch d.name {
	case "ssh", "ssh-command":
		return "identity " + identity
	case "http (token)":
		return identity + " (oidc group/shop@main)"
	}
	return identity + " (hmac)"
}

// TestAuthorizationMatrix: identity x project x verb x door, with and
// without a shipped compose file. Every door lets in and refuses the
// same requests; a refusal is exit code 4 (ErrDenied), says who may not
// do what in the words each door has always used, names no project the
// caller did not, and changes nothing; status shows only the projects
// the caller may see.
func TestAuthorizationMatrix(t *testing.T) {
	type row struct {
		identity, verb, project string
		ship                    bool
		// deny is the refusal after the subject ("" : let in).
		deny string
		// sees is what a status that is let in shows.
		sees []string
	}
	rows := []row{
		{"ci-shop", "deploy", "shop", false, "", nil},
		{"ci-shop", "deploy", "zeta-internal", false, "may not deploy zeta-internal", nil},
		{"ci-shop", "deploy", "nosuch", false, "may not deploy nosuch", nil},
		{"ci-shop", "deploy", "shop", true, "may not ship a compose file (ship_compose)", nil},
		{"ci-shop", "rollback", "shop", false, "may not rollback shop", nil},
		{"ci-shop", "lock", "shop", false, "may not lock shop", nil},
		{"ci-shop", "unlock", "shop", false, "may not unlock shop", nil},
		{"ci-shop", "history", "shop", false, "may not history shop", nil},
		{"ci-shop", "status", "shop", false, "", []string{"shop"}},
		{"ci-shop", "status", "", false, "", []string{"shop"}},
		{"ci-shop", "status", "zeta-internal", false, "may not status zeta-internal", nil},
		{"shipper", "deploy", "shop", true, "", nil},
		{"shipper", "deploy", "zeta-internal", true, "may not deploy zeta-internal", nil},
		{"shipper", "status", "", false, "may not status", nil},
		{"ops", "deploy", "zeta-internal", false, "", nil},
		{"ops", "deploy", "shop", true, "may not ship a compose file (ship_compose)", nil},
		{"ops", "rollback", "zeta-internal", false, "", nil},
		{"ops", "lock", "shop", false, "", nil},
		{"ops", "unlock", "shop", false, "", nil},
		{"ops", "history", "zeta-internal", false, "", nil},
		{"ops", "status", "", false, "", []string{"shop", "zeta-internal"}},
		{"nobody", "deploy", "shop", false, "may not deploy shop", nil},
		{"nobody", "status", "", false, "may not status", nil},
	}
	for _, d := range doors {
		for _, tc := range rows {
			name := fmt.Sprintf("%s/%s %s %s ship=%v", d.name, tc.identity, tc.verb, tc.project, tc.ship)
			t.Run(name, func(t *testing.T) {
				svc, st, obs := newAuthzService(t)
				code, told, seen := d.call(t, svc, d.as(tc.identity), tc.verb, tc.project, tc.ship)
				if tc.deny == "" {
					if code == api.ExitDenied {
						t.Fatalf("refused (exit 4): %s", told)
					}
					if tc.verb == api.VerbStatus && !slices.Equal(seen, tc.sees) {
						t.Errorf("status shows %v, want %v", seen, tc.sees)
					}
					return
				}
				want := subjectOn(d, tc.identity) + " " + tc.deny
				if code != api.ExitDenied || !strings.Contains(told, want) {
					t.Errorf("exit %d, told %q; want 4 and %q", code, told, want)
				}
				if strings.Contains(told, "zeta-internal") && tc.project != "zeta-internal" {
					t.Errorf("the refusal names a project the caller did not: %q", told)
				}
				if h, _ := st.Hold("shop"); h != nil || obs.n != 0 {
					t.Errorf("a refusal changed something: hold %+v, %d runs told", h, obs.n)
				}
			})
		}
	}
}

// TestAuthorizationLocalUsers: a local user of the socket may do
// anything, ship included, when socket.allow_users names it or is empty;
// anyone else is refused with exit code 4 and the same words as before.
func TestAuthorizationLocalUsers(t *testing.T) {
	for _, tc := range []struct {
		user  string
		allow []string
		ok    bool
	}{
		{"alice", []string{"alice"}, true},
		{"mallory", []string{"alice"}, false},
		{"mallory", nil, true},
	} {
		for _, verb := range []string{"deploy", "ship", "rollback", "lock", "unlock", "history", "status"} {
			t.Run(fmt.Sprintf("%s %v %s", tc.user, tc.allow, verb), func(t *testing.T) {
				svc, st, _ := newAuthzService(t)
				svc.cfg.Socket.AllowUsers = tc.allow
				project := "zeta-internal"
				if verb == "status" {
					project = ""
				}
				v, ship := verb, verb == "ship"
				if ship {
					v = api.VerbDeploy
				}
				code, told, seen := viaMethods(t, svc, auth.Local(tc.user), v, project, ship)
				if !tc.ok {
					want := fmt.Sprintf("local user %s is not allowed to use agentd (socket.allow_users)", tc.user)
					if code != api.ExitDenied || told != want {
						t.Errorf("exit %d, %q; want 4, %q", code, told, want)
					}
					if h, _ := st.Hold(project); h != nil {
						t.Errorf("a refused lock was taken: %+v", h)
					}
					return
				}
				if code == api.ExitDenied {
					t.Fatalf("refused: %s", told)
				}
				if verb == "status" && !slices.Equal(seen, []string{"shop", "zeta-internal"}) {
					t.Errorf("status shows %v", seen)
				}
				if verb == "lock" {
					if h, _ := st.Hold(project); h == nil || h.Identity != "local:"+tc.user {
						t.Errorf("hold %+v, want one by local:%s", h, tc.user)
					}
				}
			})
		}
	}
}

// TestAuthorizationIsRecordedAs: the release history records the caller
// as the door authenticated it.
func TestAuthorizationIsRecordedAs(t *testing.T) {
	svc, st, _ := newAuthzService(t)
	for _, p := range []auth.Principal{auth.Local("alice"), {Identity: "ops", Method: "oidc", Detail: "group/shop@main"}} {
		if _, err := svc.Lock(t.Context(), p, api.LockRequest{Project: "shop", Message: "why"}); err != nil {
			t.Fatal(err)
		}
		if h, _ := st.Hold("shop"); h == nil || h.Identity != p.String() {
			t.Errorf("hold %+v, want one by %s", h, p)
		}
	}
}
