package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/compose"
	"github.com/berth-deploy/berth/compose/trust"
	"github.com/compose-spec/compose-go/v2/types"
)

// ErrRequestPolicy marks a deploy refused for what its variables would
// set: exit code 2, nothing changed.
var ErrRequestPolicy = errors.New("refused by the request policy")

// undeclared refuses a request that sets a variable its project does not
// list in request_variables. Only names are shown, never values.
func undeclared(project string, pc config.Project, env map[string]string) error {
	names := trust.Undeclared(env, pc.RequestVariables)
	if len(names) == 0 {
		return nil
	}
	allowed := "none"
	if len(pc.RequestVariables) > 0 {
		allowed = "only " + strings.Join(pc.RequestVariables, ", ")
	}
	return fmt.Errorf("%w: the request sets %s, and project %s lets a request set %s: an operator lists the variables a request may set under projects.%s.request_variables in agentd's config (images are chosen with --image SERVICE=REF)",
		ErrRequestPolicy, listNames(names), project, allowed, project)
}

// listNames joins names a caller chose, bounded: at most maxListed, each
// cut to maxNameLen bytes, so a refusal (and its log line) stays short.
func listNames(names []string) string {
	const maxListed, maxNameLen = 10, 64
	shown := make([]string, 0, min(len(names), maxListed))
	for _, n := range names[:min(len(names), maxListed)] {
		if len(n) > maxNameLen {
			n = n[:maxNameLen] + "..."
		}
		shown = append(shown, n)
	}
	out := strings.Join(shown, ", ")
	if len(names) > maxListed {
		out += fmt.Sprintf(" and %d more", len(names)-maxListed)
	}
	return out
}

// checkRequest refuses a project whose variables from the request change
// more than the harmless fields, naming each variable, service and field,
// never a value: a value comes from the request or from the host's env
// file, and either may be a secret or a host path.
func checkRequest(ctx context.Context, o compose.LoadOptions, loaded *types.Project) error {
	vs, err := trust.CheckRequest(ctx, o, loaded)
	switch {
	case err != nil && ctx.Err() != nil:
		return err // cancelled, not refused
	case err != nil:
		return fmt.Errorf("%w: %w", ErrRequestPolicy, err)
	}
	if len(vs) == 0 {
		return nil
	}
	lines := make([]string, len(vs))
	for i, v := range vs {
		where := "the compose file"
		switch {
		case v.Service != "" && v.Field != "":
			where = "service " + v.Service + ": " + v.Field
		case v.Service != "":
			where = "service " + v.Service
		case v.Field != "":
			where = v.Field
		}
		vars := "variables " + strings.Join(v.Variables, ", ")
		if len(v.Variables) == 1 {
			vars = "variable " + v.Variables[0]
		}
		switch v.Reason {
		case trust.ReasonSet:
			lines[i] = fmt.Sprintf("%s is set by the request's %s", where, vars)
		default:
			lines[i] = fmt.Sprintf("%s: %s (%s)", where, v.Reason, vars)
		}
	}
	return fmt.Errorf("%w: a request's variables may change only %s, and here they change more (values not shown):\n  %s",
		ErrRequestPolicy, trust.Harmless, strings.Join(lines, "\n  "))
}
