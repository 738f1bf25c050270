package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/clip"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/compose-spec/compose-go/v2/dotenv"
)

// maxStdin bounds the env file a command reads from standard input.
const maxStdin = 1 << 20

// Keys of the standard-input env file that carry this request's registry
// credential rather than variables for the compose file.
const (
	EnvRegistry         = "BERTH_REGISTRY"
	EnvRegistryUser     = "BERTH_REGISTRY_USER"
	EnvRegistryPassword = "BERTH_REGISTRY_PASSWORD"
)

// Run carries out one command of the grammar for an authenticated remote
// principal (the SSH front door, or agentctl ssh-command): it parses the
// words, authorizes the caller (authorize, as for every door), runs the verb, and writes progress
// to stdout (text, or JSON lines with --json) and refusals to stderr. It
// returns the exit code.
//
// A command longer than ssh.max_command_bytes is refused before it is
// parsed; standard input (--env-file -, or --compose-file -: a tar archive
// of the compose files, with the env file as its entry request.env) must
// end within ssh.stdin_timeout.
// Whatever the caller chose (words, remote address) is clipped in the log,
// and a project that is not configured is refused without naming those
// that are.
func (s *Service) Run(ctx context.Context, p auth.Principal, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	refuse := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "agentd: "+format+"\n", a...)
		return code
	}
	refused := func(why string, attrs ...any) {
		s.log.Warn("request refused", append([]any{"identity", clip.F(p.Identity), "method", p.Method,
			"detail", clip.F(p.Detail), "remote", clip.F(p.Remote), "reason", why}, attrs...)...)
	}
	maxBytes, stdinTimeout := s.cfg.CommandLimits()
	if n := commandBytes(args); n > maxBytes {
		refused("command too long", "command_bytes", n)
		return refuse(api.ExitBadRequest, "the command is %d bytes long; agentd takes at most %d (ssh.max_command_bytes)", n, maxBytes)
	}
	cmd, err := api.ParseCommand(args)
	if err != nil {
		return refuse(api.ExitBadRequest, "%v", err)
	}
	// Authorized before the project is looked up, so that a caller
	// learns nothing of projects outside its scopes, and before standard
	// input is read: an identity that may not ship a compose file gets no
	// archive read.
	if err := s.authorize(p, cmd.Verb, cmd.Project, cmd.ComposeFromStdin); err != nil {
		return refuse(api.ExitDenied, "%v", err)
	}
	if _, ok := s.cfg.Projects[cmd.Project]; cmd.Project != "" && !ok {
		// The configured projects are not listed: this caller may not
		// be allowed to know them.
		refused("unknown project", "verb", cmd.Verb, "project", clip.F(cmd.Project))
		return refuse(api.ExitBadRequest, "%s %q: %v", cmd.Verb, cmd.Project, ErrUnknownProject)
	}
	if err := s.readCommandStdin(ctx, &cmd, stdin, stdinTimeout); err != nil {
		// Not the error: a parse error may quote the env file, whose
		// values are secrets.
		refused("standard input", "verb", cmd.Verb, "project", cmd.Project)
		return refuse(api.ExitBadRequest, "%v", err)
	}
	emit := func(e api.Event) {
		if cmd.JSON {
			b, _ := json.Marshal(e)
			fmt.Fprintf(stdout, "%s\n", b)
			return
		}
		api.PrintEvent(stdout, e)
	}
	who := p.String()
	switch cmd.Verb {
	case api.VerbDeploy:
		return s.deploy(ctx, who, cmd.Deploy, emit)
	case api.VerbRollback:
		return s.rollback(ctx, who, cmd.Rollback, emit)
	case api.VerbLock, api.VerbUnlock:
		h, err := s.lock(ctx, who, cmd.Lock)
		if err != nil {
			return refuse(codeOf(err), "%v", err)
		}
		return printJSONOr(stdout, cmd.JSON, h, func() {
			switch {
			case cmd.Lock.Unlock && h == nil:
				fmt.Fprintf(stdout, "%s was not locked\n", cmd.Project)
			case cmd.Lock.Unlock:
				fmt.Fprintf(stdout, "%s unlocked (it was locked by %s%s)\n", cmd.Project, h.Identity, api.MsgSuffix(h.Message))
			default:
				fmt.Fprintf(stdout, "%s locked by %s%s\n", cmd.Project, h.Identity, api.MsgSuffix(h.Message))
			}
		})
	case api.VerbStatus:
		visible, err := s.visibleStatus(ctx, p, cmd.Project)
		if err != nil {
			return refuse(codeOf(err), "%v", err)
		}
		return printJSONOr(stdout, cmd.JSON, visible, func() { api.PrintStatus(stdout, visible) })
	case api.VerbHistory:
		hist, err := s.history(ctx, cmd.Project)
		if err != nil {
			return refuse(codeOf(err), "%v", err)
		}
		return printJSONOr(stdout, cmd.JSON, hist, func() { api.PrintHistory(stdout, cmd.Project, hist, s.Live(cmd.Project)) })
	}
	return refuse(api.ExitBadRequest, "unknown verb %q", cmd.Verb)
}

// codeOf maps a status, history or lock error to an exit code.
func codeOf(err error) int {
	switch {
	case errors.Is(err, ErrUnknownProject):
		return api.ExitBadRequest
	case errors.Is(err, ErrDenied):
		return api.ExitDenied
	}
	return api.ExitBroken
}

func printJSONOr(w io.Writer, asJSON bool, v any, text func()) int {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(v)
	} else {
		text()
	}
	return api.ExitOK
}

// commandBytes is the length of a command's words joined by spaces, as
// the command line that carried them was at least.
func commandBytes(args []string) int {
	n := max(len(args)-1, 0)
	for _, a := range args {
		n += len(a)
	}
	return n
}

// readCommandStdin reads what a command takes on standard input into
// its request: with --compose-file -, a tar archive of the compose files
// (and, with --env-file - too, the env file as its entry request.env);
// with --env-file - alone, the env file. Standard input must end within d.
// The error may quote the env file: the caller, not the log.
func (s *Service) readCommandStdin(ctx context.Context, cmd *api.Command, stdin io.Reader, d time.Duration) error {
	switch {
	case cmd.ComposeFromStdin:
		lim := s.bundleLimits(cmd.Project)
		data, err := readStdinWithin(ctx, stdin, d, lim.TarBytes(), "the tar archive")
		if err != nil {
			return fmt.Errorf("--compose-file -: %w", err)
		}
		bundle, envData, err := api.ReadComposeTar(bytes.NewReader(data), lim, cmd.EnvFromStdin)
		if err != nil {
			return fmt.Errorf("--compose-file -: %w", err)
		}
		cmd.Deploy.Compose = bundle
		if cmd.EnvFromStdin {
			if cmd.Deploy.Env, cmd.Deploy.Registry, err = parseEnv(envData); err != nil {
				return fmt.Errorf("--env-file - (%s in the archive): %w", api.RequestEnvEntry, err)
			}
		}
	case cmd.EnvFromStdin:
		data, err := readStdinWithin(ctx, stdin, d, maxStdin, "the env file")
		if err == nil {
			cmd.Deploy.Env, cmd.Deploy.Registry, err = parseEnv(data)
		}
		if err != nil {
			return fmt.Errorf("--env-file -: %w", err)
		}
	}
	return nil
}

// readStdinWithin reads standard input to its end, at most max bytes,
// within d (ssh.stdin_timeout). what names what the caller should have
// sent.
func readStdinWithin(ctx context.Context, r io.Reader, d time.Duration, max int64, what string) ([]byte, error) {
	data, err := api.ReadWithin(ctx, r, d, max)
	switch {
	case errors.Is(err, api.ErrInputTooLarge):
		return nil, fmt.Errorf("more than %d bytes on standard input", max)
	case errors.Is(err, api.ErrInputStillOpen):
		return nil, fmt.Errorf("standard input still open after %s (ssh.stdin_timeout): send %s and close it", d, what)
	}
	return data, err
}

// parseEnv parses a dotenv file: the variables for interpolation, and
// the registry credential under the BERTH_REGISTRY keys.
func parseEnv(data []byte) (map[string]string, *api.RegistryAuth, error) {
	env, err := dotenv.ParseWithLookup(bytes.NewReader(data), func(string) (string, bool) { return "", false })
	if err != nil {
		return nil, nil, fmt.Errorf("parse: %w", err)
	}
	var reg *api.RegistryAuth
	if server, ok := env[EnvRegistry]; ok {
		reg = &api.RegistryAuth{Server: server, Username: env[EnvRegistryUser], Password: env[EnvRegistryPassword]}
	} else if _, ok := env[EnvRegistryUser]; ok {
		return nil, nil, fmt.Errorf("%s is set without %s", EnvRegistryUser, EnvRegistry)
	}
	delete(env, EnvRegistry)
	delete(env, EnvRegistryUser)
	delete(env, EnvRegistryPassword)
	return env, reg, nil
}

// bundleLimits bounds the compose bundle a deploy of project may ship:
// its max_compose_files and max_compose_bytes, and for request.env what
// --env-file - takes.
func (s *Service) bundleLimits(project string) api.BundleLimits {
	pc := s.cfg.Projects[project]
	lim := api.BundleLimits{Files: pc.MaxComposeFiles, Bytes: pc.MaxComposeBytes, EnvBytes: maxStdin}
	if lim.Files == 0 { // a config that was not loaded (tests): the defaults
		lim.Files = config.DefaultMaxComposeFiles
	}
	if lim.Bytes == 0 {
		lim.Bytes = config.DefaultMaxComposeBytes
	}
	return lim
}
