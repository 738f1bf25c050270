package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const defaultSocket = "/run/berth/agentd.sock"

// exitError carries an exit code out of a command.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot(stdout)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return api.ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(stderr, "agentctl:", ee.msg)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "agentctl:", err)
	return api.ExitBadRequest
}

type client struct {
	socket string
	http   *http.Client
}

func newRoot(stdout io.Writer) *cobra.Command {
	c := &client{}
	root := &cobra.Command{
		Use:           "agentctl",
		Short:         "Operate the Berth deploy agent on this host",
		Long:          "agentctl talks to agentd over its unix socket. Exit codes: 0 live, 1 failed and rolled back, 2 bad request (nothing changed), 3 locked, 4 not allowed, 5 failed and not restored.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			c.http = &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", c.socket)
				},
			}}
		},
	}
	sock := os.Getenv("BERTH_SOCKET")
	if sock == "" {
		sock = defaultSocket
	}
	root.PersistentFlags().StringVar(&c.socket, "socket", sock, "agentd's unix socket (env BERTH_SOCKET)")
	root.AddCommand(deployCmd(c), rollbackCmd(c), statusCmd(c), historyCmd(c), lockCmd(c, false), lockCmd(c, true), sshCommandCmd(c), hostKeyCmd(c), versionCmd())
	return root
}

func deployCmd(c *client) *cobra.Command {
	var images, composeFiles []string
	var message, source string
	var asJSON, dryRun bool
	var wait, timeout time.Duration
	cmd := &cobra.Command{
		Use:   "deploy PROJECT [--image SERVICE=REF]... [--compose-file PATH]... [--source REF] [--dry-run] [--message M] [--wait D] [--timeout D] [--json]",
		Short: "Deploy a new release of a project",
		Long: `Deploy a new release: load the project's compose file, apply the --image
overrides, pin every image to its digest, pull, journal the release, roll it
out service by service with health gates, watch the monitor window, and
commit; or roll the whole release back. Progress streams as it happens; the
exit code says how it ended.

With --compose-file, the release deploys the files given instead of the
project's compose file on the host (a checkout of the repository, say):
the first is the compose file, the others the files it includes or
extends, under their paths relative to the first one's directory. They are
recorded with the release (with --source, the commit they come from), and
the project's policy applies to them as to a file CI ships.

With --dry-run, the request is checked and the plan printed, and nothing
changes: no pull, no lock, no record.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.DeployRequest{Project: args[0], Message: message, Images: map[string]string{}, Wait: wait, Timeout: timeout, Source: source, DryRun: dryRun}
			if err := api.CheckSource(source); err != nil || cmd.Flags().Changed("source") && source == "" {
				return &exitError{api.ExitBadRequest, fmt.Sprintf("--source %q: want a commit or ref: 1 to 128 of A-Z a-z 0-9 . _ / @ + : -", source)}
			}
			if len(composeFiles) > 0 {
				b, err := readBundle(composeFiles)
				if err != nil {
					return &exitError{api.ExitBadRequest, "--compose-file: " + err.Error()}
				}
				req.Compose = b
			}
			for _, im := range images {
				svc, ref, ok := strings.Cut(im, "=")
				if !ok || svc == "" || ref == "" {
					return &exitError{api.ExitBadRequest, fmt.Sprintf("--image %q: want SERVICE=REF", im)}
				}
				if _, dup := req.Images[svc]; dup {
					return &exitError{api.ExitBadRequest, fmt.Sprintf("--image: service %s given twice", svc)}
				}
				req.Images[svc] = ref
			}
			return c.stream(cmd.Context(), api.PathDeploy, req, args[0], cmd.OutOrStdout(), asJSON)
		},
	}
	cmd.Flags().StringArrayVar(&images, "image", nil, "set a service's image: SERVICE=REF (repeatable)")
	cmd.Flags().StringArrayVar(&composeFiles, "compose-file", nil, "deploy this compose file instead of the host's (repeatable: the first is the compose file, the others files it includes or extends)")
	cmd.Flags().StringVar(&source, "source", "", "what the release was built from, recorded (a commit: 1-128 of A-Z a-z 0-9 . _ / @ + : -)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "check the request and print the plan; change nothing")
	cmd.Flags().StringVarP(&message, "message", "m", "", "why this release (recorded in history)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the project's lock instead of exiting 3")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "roll the release back if it is not live within this long (0: each service's health timeout applies)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON event per line instead of text")
	return cmd
}

func rollbackCmd(c *client) *cobra.Command {
	var req api.RollbackRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "rollback PROJECT [--to RELEASE] [--message M] [--wait D] [--timeout D] [--json]",
		Short: "Redeploy an earlier release, by digest, with the same gating",
		Long: `Redeploy a recorded release exactly as it ran: the same images by digest and
the same container configuration, rolled out with the same health gates. By
default the release before the live one that succeeded. The images must be
on this host or pullable; the registry is not needed when they are on disk.
If the rollback itself fails, the release that was live is restored (exit 1).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Project = args[0]
			return c.stream(cmd.Context(), api.PathRollback, req, args[0], cmd.OutOrStdout(), asJSON)
		},
	}
	cmd.Flags().IntVar(&req.To, "to", 0, "the release number to go back to (default: the previous good release)")
	cmd.Flags().StringVarP(&req.Message, "message", "m", "", "why (recorded in history)")
	cmd.Flags().DurationVar(&req.Wait, "wait", 0, "wait up to this long for the project's lock instead of exiting 3")
	cmd.Flags().DurationVar(&req.Timeout, "timeout", 0, "give up and restore the live release if the rollback is not done within this long")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON event per line instead of text")
	return cmd
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print agentctl's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "agentctl", version)
		},
	}
}

func lockCmd(c *client, unlock bool) *cobra.Command {
	var message string
	var asJSON bool
	use, short := "lock PROJECT --message M", "Hold a project's deploys and rollbacks until unlock"
	if unlock {
		use, short = "unlock PROJECT", "Lift the hold on a project's deploys"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !unlock && strings.TrimSpace(message) == "" {
				return &exitError{api.ExitBadRequest, "lock: --message is required: say why, it is shown to everyone refused"}
			}
			var h *api.Holder
			if err := c.call(cmd.Context(), api.PathLock, api.LockRequest{Project: args[0], Message: message, Unlock: unlock}, &h); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, h)
			}
			switch {
			case unlock && h == nil:
				fmt.Fprintf(out, "%s was not locked\n", args[0])
			case unlock:
				fmt.Fprintf(out, "%s unlocked (it was locked by %s since %s%s)\n", args[0], h.Identity, h.Since.Local().Format(time.DateTime), api.MsgSuffix(h.Message))
			default:
				fmt.Fprintf(out, "%s locked by %s%s: deploys and rollbacks exit 3 until `agentctl unlock %s`\n", args[0], h.Identity, api.MsgSuffix(h.Message), args[0])
			}
			return nil
		},
	}
	if !unlock {
		cmd.Flags().StringVarP(&message, "message", "m", "", "why (required; shown to anyone refused)")
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the hold as JSON")
	return cmd
}

// do sends a request to agentd (a JSON body unless body is nil) and
// returns its answer when it is 200; any other answer, or none, is the
// exitError to report.
func (c *client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agentd"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &exitError{api.ExitBadRequest, fmt.Sprintf("cannot reach agentd at %s: %v", c.socket, err)}
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, refused(resp)
	}
	return resp, nil
}

// decode reads a JSON answer into v.
func decode(resp *http.Response, v any) error {
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return &exitError{api.ExitBroken, fmt.Sprintf("decode answer from agentd: %v", err)}
	}
	return nil
}

// call POSTs a JSON request and decodes the JSON answer into v.
func (c *client) call(ctx context.Context, path string, req, v any) error {
	resp, err := c.do(ctx, http.MethodPost, path, req)
	if err != nil {
		return err
	}
	return decode(resp, v)
}

// get GETs path with the query q and decodes the JSON answer into v.
func (c *client) get(ctx context.Context, path string, q url.Values, v any) error {
	resp, err := c.do(ctx, http.MethodGet, path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	return decode(resp, v)
}

// lines calls fn for each line of a streamed answer until fn says stop;
// it reports whether the stream ended before that.
func lines(resp *http.Response, fn func([]byte) (stop bool, err error)) (ended bool, err error) {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if stop, err := fn(sc.Bytes()); stop || err != nil {
			return false, err
		}
	}
	return true, sc.Err()
}

// stream POSTs a request whose answer is a stream of events, prints them,
// and returns the exit code of the result event.
func (c *client) stream(ctx context.Context, path string, req any, project string, out io.Writer, asJSON bool) error {
	resp, err := c.do(ctx, http.MethodPost, path, req)
	if err != nil {
		return err
	}
	var result error
	ended, err := lines(resp, func(line []byte) (bool, error) {
		var e api.Event
		if err := json.Unmarshal(line, &e); err != nil {
			return true, &exitError{api.ExitBroken, fmt.Sprintf("bad event from agentd: %v", err)}
		}
		if asJSON {
			fmt.Fprintf(out, "%s\n", line)
		} else {
			api.PrintEvent(out, e)
		}
		if e.Type == api.EventResult && e.ExitCode != nil {
			result = &exitError{code: *e.ExitCode}
			return true, nil
		}
		return false, nil
	})
	if err != nil && !ended {
		return err
	}
	if !ended {
		return result
	}
	// The stream ended without a result: agentd went away mid-deploy, so
	// nobody here knows what is live. Say so, and ask for an operator.
	return &exitError{api.ExitBroken, fmt.Sprintf("the connection to agentd ended before the deploy did (%v); check `agentctl status %s`", err, project)}
}

func refused(resp *http.Response) error {
	var e api.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.ExitCode == 0 {
		return &exitError{api.ExitBroken, fmt.Sprintf("agentd answered %s", resp.Status)}
	}
	return &exitError{e.ExitCode, e.Message}
}

func statusCmd(c *client) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [PROJECT]",
		Short: "Show the live release and the containers of one or every project",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			if len(args) == 1 {
				q.Set("project", args[0])
			}
			var st []api.ProjectStatus
			if err := c.get(cmd.Context(), api.PathStatus, q, &st); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			api.PrintStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func historyCmd(c *client) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history PROJECT",
		Short: "List a project's releases, newest first, with every image by digest",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var hist []api.Release
			if err := c.get(cmd.Context(), api.PathHistory, url.Values{"project": {args[0]}}, &hist); err != nil {
				return err
			}
			var st []api.ProjectStatus
			if err := c.get(cmd.Context(), api.PathStatus, url.Values{"project": {args[0]}}, &st); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), hist)
			}
			live := 0
			if len(st) == 1 && st[0].Current != nil {
				live = st[0].Current.Number
			}
			api.PrintHistory(cmd.OutOrStdout(), args[0], hist, live)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
