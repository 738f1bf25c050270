package compose

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"
)

// ErrInvalid marks a problem with the request or the compose file itself:
// nothing was changed, and the caller should answer "bad request".
var ErrInvalid = errors.New("invalid")

// LoadOptions says which compose project to load and how.
type LoadOptions struct {
	Name        string   // project name (the compose -p)
	ComposeFile string   // path of the compose file
	EnvFiles    []string // env files used for interpolation, in order
	Profiles    []string // active profiles
	// Images overrides the image of a service: service name -> reference.
	// A service that is not in the project is an error.
	Images map[string]string
	// Env adds variables for interpolation, over the env files.
	Env map[string]string
	// Substitute, when set, stands in for compose-go's ${...} substitution
	// of every string of the file (and of the files it includes). The
	// request policy (package compose/trust) uses it to see which settings
	// read a request's variables.
	Substitute func(value string, lookup template.Mapping) (string, error)
	// Check, when set, stands in for the checks of one engine (Check): a
	// Swarm backend refuses what a Swarm cannot honour instead.
	Check func(*types.Project) []error
}

// Load reads and validates the compose project: interpolation from the env
// files (not from agentd's own environment), profiles, image overrides, and
// the checks that this engine needs (every service has an image, no option
// that the executor would silently drop). Every error wraps ErrInvalid.
func Load(ctx context.Context, o LoadOptions) (*types.Project, error) {
	options := []cli.ProjectOptionsFn{
		cli.WithName(o.Name),
		cli.WithEnvFiles(o.EnvFiles...),
		cli.WithDotEnv, // before WithEnv: the env files never see a request's variables
		cli.WithEnv(envList(o.Env)),
		cli.WithProfiles(o.Profiles),
		cli.WithResolvedPaths(true),
	}
	if o.Substitute != nil {
		options = append(options, cli.WithLoadOptions(func(lo *loader.Options) {
			if lo.Interpolate != nil { // nil where compose-go only lists the files
				lo.Interpolate.Substitute = o.Substitute
			}
		}))
	}
	opts, err := cli.NewProjectOptions([]string{o.ComposeFile}, options...)
	if err != nil {
		return nil, fmt.Errorf("project %s (%s): %w: %w", o.Name, o.ComposeFile, ErrInvalid, err)
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("project %s (%s): %w: %w", o.Name, o.ComposeFile, ErrInvalid, err)
	}
	if err := overrideImages(p, o.Images); err != nil {
		return nil, err
	}
	checkFn := Check
	if o.Check != nil {
		checkFn = o.Check
	}
	if problems := checkFn(p); len(problems) > 0 {
		errs := make([]error, len(problems))
		for i, e := range problems {
			errs[i] = fmt.Errorf("project %s (%s): %w: %w", o.Name, o.ComposeFile, ErrInvalid, e)
		}
		return nil, errors.Join(errs...)
	}
	return p, nil
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func overrideImages(p *types.Project, images map[string]string) error {
	var unknown []string
	for name, ref := range images {
		s, ok := p.Services[name]
		if !ok {
			unknown = append(unknown, name)
			continue
		}
		if strings.TrimSpace(ref) == "" {
			return fmt.Errorf("project %s: %w image override: service %s: empty reference", p.Name, ErrInvalid, name)
		}
		s.Image = ref
		p.Services[name] = s
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("project %s: %w image override: no service %s (services: %s)",
			p.Name, ErrInvalid, strings.Join(unknown, ", "), strings.Join(p.ServiceNames(), ", "))
	}
	return nil
}

// Check lists every service option the executor does not carry out on one
// engine, so a deploy never silently runs something other than what the
// file says.
func Check(p *types.Project) []error {
	var problems []error
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		bad := func(format string, args ...any) {
			problems = append(problems, fmt.Errorf("service %s: "+format, append([]any{name}, args...)...))
		}
		if s.Image == "" {
			bad("no image (berth deploys images from a registry; build them in CI)")
		}
		if s.ContainerName != "" && replicas(s) > 1 {
			bad("container_name is set, so it cannot run %d replicas", replicas(s))
		}
		if s.Deploy != nil && s.Deploy.Mode != "" && s.Deploy.Mode != "replicated" {
			bad("deploy.mode %q is not supported on one host", s.Deploy.Mode)
		}
		if strings.HasPrefix(s.NetworkMode, "service:") || strings.HasPrefix(s.NetworkMode, "container:") {
			bad("network_mode %q is not supported", s.NetworkMode)
		}
		for _, e := range PolicyProblems(p, s) {
			bad("%v", e)
		}
		for _, key := range sortedKeys(s.Networks) {
			n := s.Networks[key]
			if n != nil && (n.Ipv4Address != "" || n.Ipv6Address != "" || len(n.LinkLocalIPs) > 0 || n.MacAddress != "" ||
				len(n.DriverOpts) > 0 || n.InterfaceName != "" || n.GatewayPriority != 0) {
				bad("network %s: only aliases and priority are supported (no fixed addresses, driver_opts, interface_name or gw_priority)", key)
			}
		}
		for _, v := range s.Volumes {
			switch v.Type {
			case types.VolumeTypeVolume, types.VolumeTypeBind, types.VolumeTypeTmpfs:
			default:
				bad("volume %s of type %q is not supported", v.Target, v.Type)
			}
		}
		unsupported := map[string]bool{
			"devices":             len(s.Devices) > 0,
			"gpus":                len(s.Gpus) > 0,
			"secrets":             len(s.Secrets) > 0,
			"configs":             len(s.Configs) > 0,
			"links":               len(s.Links) > 0,
			"external_links":      len(s.ExternalLinks) > 0,
			"volumes_from":        len(s.VolumesFrom) > 0,
			"models":              len(s.Models) > 0,
			"provider":            s.Provider != nil,
			"pre_start":           len(s.PreStart) > 0,
			"post_start":          len(s.PostStart) > 0,
			"pre_stop":            len(s.PreStop) > 0,
			"use_api_socket":      s.UseAPISocket,
			"annotations":         len(s.Annotations) > 0,
			"blkio_config":        s.BlkioConfig != nil,
			"cpu_count":           s.CPUCount != 0,
			"cpu_percent":         s.CPUPercent != 0,
			"cgroup":              s.Cgroup != "",
			"credential_spec":     s.CredentialSpec != nil,
			"device_cgroup_rules": len(s.DeviceCgroupRules) > 0,
			"isolation":           s.Isolation != "",
			"mac_address":         s.MacAddress != "",
			"platform":            s.Platform != "",
			"storage_opt":         len(s.StorageOpt) > 0,
			"volume_driver":       s.VolumeDriver != "",
			"log_driver":          s.LogDriver != "",
			"log_opt":             len(s.LogOpt) > 0,
			"umask":               s.Umask != nil,
			"pull_refresh_after":  s.PullRefreshAfter != "",
		}
		keys := make([]string, 0, len(unsupported))
		for k, set := range unsupported {
			if set {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			bad("%s is not supported by berth yet", k)
		}
	}
	return problems
}

// PolicyProblems lists what is wrong with a service's rollout policy
// (update_config, rollback_config, healthcheck, x-berth), whichever the
// backend.
func PolicyProblems(p *types.Project, s types.ServiceConfig) []error {
	_, errs := policyOf(p, s)
	return errs
}

// replicas is the number of containers a service runs.
func replicas(s types.ServiceConfig) int {
	if s.Deploy != nil && s.Deploy.Replicas != nil {
		return *s.Deploy.Replicas
	}
	if s.Scale != nil {
		return *s.Scale
	}
	return 1
}
