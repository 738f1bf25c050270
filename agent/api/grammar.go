package api

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

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
  deploy PROJECT [--image SERVICE=REF]... [--env-file -] [--message M] [--wait D] [--timeout D] [--json]
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
	Deploy       DeployRequest
	Rollback     RollbackRequest
	Lock         LockRequest
}

// ParseCommand parses the words of a command (already split like a
// shell would) into a Command.
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
	var envFile, message string
	var wait, timeout time.Duration
	var to int
	nargs := [2]int{1, 1} // positional arguments: min, max
	switch c.Verb {
	case VerbDeploy:
		fs.StringArrayVar(&images, "image", nil, "")
		fs.StringVar(&envFile, "env-file", "", "")
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
		return c, fmt.Errorf("%w: unknown verb %q\n%s", ErrUsage, c.Verb, Usage)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return c, fmt.Errorf("%w: %s: %v\n%s", ErrUsage, c.Verb, err, Usage)
	}
	pos := fs.Args()
	if len(pos) < nargs[0] || len(pos) > nargs[1] {
		return c, fmt.Errorf("%w: %s takes %s\n%s", ErrUsage, c.Verb, map[bool]string{true: "one project", false: "at most one project"}[nargs[0] == 1], Usage)
	}
	if len(pos) == 1 {
		c.Project = pos[0]
	}
	switch c.Verb {
	case VerbDeploy:
		c.Deploy = DeployRequest{Project: c.Project, Message: message, Wait: wait, Timeout: timeout}
		for _, im := range images {
			svc, ref, ok := strings.Cut(im, "=")
			if !ok || svc == "" || ref == "" {
				return c, fmt.Errorf("%w: --image %q: want SERVICE=REF", ErrUsage, im)
			}
			if c.Deploy.Images == nil {
				c.Deploy.Images = map[string]string{}
			}
			if _, dup := c.Deploy.Images[svc]; dup {
				return c, fmt.Errorf("%w: --image: service %s given twice", ErrUsage, svc)
			}
			c.Deploy.Images[svc] = ref
		}
		switch envFile {
		case "":
		case "-":
			c.EnvFromStdin = true
		default:
			return c, fmt.Errorf("%w: --env-file %q: only - (standard input) is accepted: secrets never travel in arguments, and files stay on the caller's side", ErrUsage, envFile)
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
