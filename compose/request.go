package compose

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
)

// The compose file and its env file are the operator's, on the host. A
// request may bring variables of its own (`--env-file -`: secrets, tags),
// and those reach every ${...} of the file. What they may not do is give a
// service more power over the host than the operator's file gives it:
// privileges, capabilities, security options, the host's network, PID,
// IPC or user namespace, or a bind mount of a host path outside the
// project's allowed paths.
//
// Which settings depend on the request is found by loading the file a
// second time with each request variable replaced by a placeholder: a
// setting that differs between the two loads comes from the request.

// requestPlaceholder stands in for every request variable in the second
// load: not empty, so ${VAR:?} still passes, and a path, so a bind
// mount's source stays a bind mount.
const requestPlaceholder = "/berth-request-placeholder"

// CheckRequest refuses (ErrInvalid) a project, loaded with o, whose
// host-level settings depend on the variables of the request (o.Env).
// allowedBinds are host paths under which a request may choose a bind
// mount's source.
func CheckRequest(ctx context.Context, o LoadOptions, loaded *types.Project, allowedBinds []string) error {
	if len(o.Env) == 0 {
		return nil
	}
	names := slices.Sorted(maps.Keys(o.Env))
	base := o
	base.Env = map[string]string{}
	for _, k := range names {
		base.Env[k] = requestPlaceholder
	}
	baseline, err := Load(ctx, base)
	if err != nil {
		return fmt.Errorf("%w: the request sets %s, and with those replaced by a placeholder the compose file no longer loads, so Berth cannot tell which settings they change (a request's variables may be used in environment values, image tags and the like): %w",
			ErrInvalid, strings.Join(names, ", "), err)
	}
	var errs []error
	for _, name := range loaded.ServiceNames() {
		s := loaded.Services[name]
		b, ok := baseline.Services[name]
		if !ok {
			errs = append(errs, fmt.Errorf("%w: service %s exists only with the request's variables (%s)", ErrInvalid, name, strings.Join(names, ", ")))
			continue
		}
		for _, problem := range hostChanges(s, b, allowedBinds) {
			errs = append(errs, fmt.Errorf("%w: service %s: %s comes from the request's variables (%s): a request may not set it",
				ErrInvalid, name, problem, strings.Join(names, ", ")))
		}
	}
	return errors.Join(errs...)
}

// hostChanges lists the host-level settings of s (loaded with the request)
// that differ from b (loaded without it).
func hostChanges(s, b types.ServiceConfig, allowedBinds []string) []string {
	var out []string
	if s.Privileged != b.Privileged {
		out = append(out, fmt.Sprintf("privileged: %v", s.Privileged))
	}
	for _, f := range []struct{ key, got, base string }{
		{"network_mode", s.NetworkMode, b.NetworkMode},
		{"pid", s.Pid, b.Pid},
		{"ipc", s.Ipc, b.Ipc},
		{"userns_mode", s.UserNSMode, b.UserNSMode},
		{"cgroup_parent", s.CgroupParent, b.CgroupParent},
	} {
		if f.got != f.base {
			out = append(out, fmt.Sprintf("%s %q", f.key, f.got))
		}
	}
	for _, f := range []struct {
		key       string
		got, base []string
	}{
		{"cap_add", s.CapAdd, b.CapAdd},
		{"security_opt", s.SecurityOpt, b.SecurityOpt},
		{"group_add", s.GroupAdd, b.GroupAdd},
	} {
		if !slices.Equal(f.got, f.base) {
			out = append(out, fmt.Sprintf("%s %v", f.key, f.got))
		}
	}
	baseBinds := binds(b)
	for _, src := range binds(s) {
		if !slices.Contains(baseBinds, src) && !under(src, allowedBinds) {
			out = append(out, fmt.Sprintf("the bind mount of %s (outside the project's allowed_bind_paths)", src))
		}
	}
	return out
}

// binds lists the host paths a service bind-mounts.
func binds(s types.ServiceConfig) []string {
	var out []string
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind {
			out = append(out, filepath.Clean(v.Source))
		}
	}
	return out
}

// under reports whether path is one of dirs or inside one.
func under(path string, dirs []string) bool {
	for _, d := range dirs {
		d = filepath.Clean(d)
		if path == d || strings.HasPrefix(path, d+string(filepath.Separator)) {
			return true
		}
	}
	return false
}
