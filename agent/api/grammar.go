package api

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"

	"github.com/berth-deploy/berth/agent/clip"
	"github.com/spf13/pflag"
)

// Verbs of the command grammar.
const (
	VerbDeploy   = "deploy"
	VerbRollback = "rollback"
	VerbStatus   = "status"
	VerbHistory  = "history"
	VerbLock     = "lock"
	VerbUnlock   = "unlock"
)

// Usage is the command grammar, as shown to a caller who got it wrong.
const Usage = `commands:
  deploy PROJECT [--image SERVICE=REF]... [--env-file -] [--compose-file -] [--source REF] [--dry-run]
         [--message M] [--wait D] [--timeout D] [--json]
  rollback PROJECT [--to RELEASE] [--message M] [--wait D] [--timeout D] [--json]
  status [PROJECT] [--json]
  history PROJECT [--json]
  lock PROJECT --message M
  unlock PROJECT`

// ErrUsage marks a command that does not follow the grammar.
var ErrUsage = errors.New("bad command")

// Command is one request of the command grammar, however it arrived.
type Command struct {
	Verb    string
	Project string
	JSON    bool
	// EnvFromStdin asks for an env file on standard input (--env-file -).
	EnvFromStdin bool
	// ComposeFromStdin asks for the compose files on standard input, as a
	// tar archive (--compose-file -); with EnvFromStdin too, the env file
	// is the archive's entry request.env.
	ComposeFromStdin bool
	Deploy           DeployRequest
	Rollback         RollbackRequest
	Lock             LockRequest
}

// projectName is what a project may be called (as the config requires).
var projectName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// ParseCommand parses the words of a command (already split like a
// shell would) into a Command. What it accepts is plain: a project name
// as the config allows them, image overrides and messages without control
// characters, no negative durations or release numbers. The words it
// quotes back in an error are clipped.
func ParseCommand(args []string) (Command, error) {
	var c Command
	if len(args) == 0 {
		return c, fmt.Errorf("%w: empty command\n%s", ErrUsage, Usage)
	}
	c.Verb = args[0]
	fs := pflag.NewFlagSet(c.Verb, pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	fs.SortFlags = false
	fs.BoolVar(&c.JSON, "json", false, "")
	var images []string
	var envFile, composeFile, source, message string
	var dryRun bool
	var wait, timeout time.Duration
	var to int
	nargs := [2]int{1, 1} // positional arguments: min, max
	switch c.Verb {
	case VerbDeploy:
		fs.StringArrayVar(&images, "image", nil, "")
		fs.StringVar(&envFile, "env-file", "", "")
		fs.StringVar(&composeFile, "compose-file", "", "")
		fs.StringVar(&source, "source", "", "")
		fs.BoolVar(&dryRun, "dry-run", false, "")
		fs.StringVarP(&message, "message", "m", "", "")
		fs.DurationVar(&wait, "wait", 0, "")
		fs.DurationVar(&timeout, "timeout", 0, "")
	case VerbRollback:
		fs.IntVar(&to, "to", 0, "")
		fs.StringVarP(&message, "message", "m", "", "")
		fs.DurationVar(&wait, "wait", 0, "")
		fs.DurationVar(&timeout, "timeout", 0, "")
	case VerbStatus:
		nargs = [2]int{0, 1}
	case VerbHistory, VerbUnlock:
	case VerbLock:
		fs.StringVarP(&message, "message", "m", "", "")
	default:
		return c, fmt.Errorf("%w: unknown verb %q\n%s", ErrUsage, clip.F(c.Verb), Usage)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return c, fmt.Errorf("%w: %s: %s\n%s", ErrUsage, c.Verb, clip.String(err.Error(), 2*clip.Field), Usage)
	}
	pos := fs.Args()
	if len(pos) < nargs[0] || len(pos) > nargs[1] {
		return c, fmt.Errorf("%w: %s takes %s\n%s", ErrUsage, c.Verb, map[bool]string{true: "one project", false: "at most one project"}[nargs[0] == 1], Usage)
	}
	if len(pos) == 1 {
		c.Project = pos[0]
		if !projectName.MatchString(c.Project) {
			return c, fmt.Errorf("%w: %s: %q is not a project name (lowercase letters, digits, - and _)", ErrUsage, c.Verb, clip.F(c.Project))
		}
	}
	switch {
	case wait < 0 || timeout < 0:
		return c, fmt.Errorf("%w: %s: --wait and --timeout must not be negative", ErrUsage, c.Verb)
	case to < 0:
		return c, fmt.Errorf("%w: %s: --to %d: want a release number", ErrUsage, c.Verb, to)
	case hasControl(message):
		return c, fmt.Errorf("%w: %s: --message: no control characters (newlines, escapes): one line of text", ErrUsage, c.Verb)
	}
	switch c.Verb {
	case VerbDeploy:
		c.Deploy = DeployRequest{Project: c.Project, Message: message, Wait: wait, Timeout: timeout, Source: source, DryRun: dryRun}
		if err := CheckSource(source); err != nil || fs.Changed("source") && source == "" {
			return c, fmt.Errorf("%w: --source %q: %s", ErrUsage, clip.F(source), sourceWant)
		}
		for _, im := range images {
			svc, ref, ok := strings.Cut(im, "=")
			if !ok || svc == "" || ref == "" || strings.ContainsFunc(im, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
				return c, fmt.Errorf("%w: --image %q: want SERVICE=REF", ErrUsage, clip.F(im))
			}
			if c.Deploy.Images == nil {
				c.Deploy.Images = map[string]string{}
			}
			if _, dup := c.Deploy.Images[svc]; dup {
				return c, fmt.Errorf("%w: --image: service %s given twice", ErrUsage, clip.F(svc))
			}
			c.Deploy.Images[svc] = ref
		}
		switch envFile {
		case "":
		case "-":
			c.EnvFromStdin = true
		default:
			return c, fmt.Errorf("%w: --env-file %q: only - (standard input) is accepted: secrets never travel in arguments, and files stay on the caller's side", ErrUsage, clip.F(envFile))
		}
		switch {
		case !fs.Changed("compose-file"):
		case composeFile == "-":
			c.ComposeFromStdin = true
		default:
			return c, fmt.Errorf("%w: --compose-file %q: only - is accepted: standard input is a tar archive of the compose files (tar -cf - compose.yaml ...), which stay on the caller's side", ErrUsage, clip.F(composeFile))
		}
	case VerbRollback:
		c.Rollback = RollbackRequest{Project: c.Project, To: to, Message: message, Wait: wait, Timeout: timeout}
	case VerbLock:
		if strings.TrimSpace(message) == "" {
			return c, fmt.Errorf("%w: lock: --message is required: say why, it is shown to everyone refused", ErrUsage)
		}
		c.Lock = LockRequest{Project: c.Project, Message: message}
	case VerbUnlock:
		c.Lock = LockRequest{Project: c.Project, Unlock: true}
	}
	return c, nil
}

const sourceWant = "want a commit or ref: 1 to 128 of A-Z a-z 0-9 . _ / @ + : -"

// hasControl reports whether s has a control character: a newline or an
// escape in a message would forge lines of the output it is shown in.
func hasControl(s string) bool { return strings.ContainsFunc(s, unicode.IsControl) }
