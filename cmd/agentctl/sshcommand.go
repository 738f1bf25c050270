package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshCommandCmd is OpenSSH's forced command for Berth keys:
//
//	command="agentctl ssh-command --identity ci-shop",restrict ssh-ed25519 AAAA...
//
// sshd runs it for every connection with that key and puts what the client
// asked for in SSH_ORIGINAL_COMMAND; agentd runs it with the identity's
// scopes if this host user is one of the identity's local_users.
func sshCommandCmd(c *client) *cobra.Command {
	var identity string
	var maxBytes int
	var maxStdin int64
	var stdinTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "ssh-command --identity NAME",
		Short: "Run SSH_ORIGINAL_COMMAND as an identity (OpenSSH forced-command mode)",
		Long: `Run the command an SSH client asked for (SSH_ORIGINAL_COMMAND) through
agentd, as the given identity and within its scopes. Meant as the forced
command of a key in an OpenSSH authorized_keys file:

  command="agentctl ssh-command --identity ci-shop",restrict ssh-ed25519 AAAA... ci

The host user sshd runs it as must be listed in the identity's local_users.
Standard input is passed on, byte for byte, when the command has
--env-file - or --compose-file - (a tar archive of the compose files); it
must end within --stdin-timeout and hold at most --max-stdin-bytes. A
command line longer than --max-command-bytes is refused (exit 2) before it
reaches agentd, which applies its own ssh.max_command_bytes, stdin timeout
and bundle limits too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			line := os.Getenv("SSH_ORIGINAL_COMMAND")
			if len(line) > maxBytes {
				return &exitError{api.ExitBadRequest, fmt.Sprintf("the command is %d bytes long; at most %d are taken (--max-command-bytes)", len(line), maxBytes)}
			}
			if strings.TrimSpace(line) == "" {
				return &exitError{api.ExitBadRequest, "this key runs Berth commands only, not a shell\n" + api.Usage}
			}
			args, err := api.SplitCommand(line)
			if err != nil {
				return &exitError{api.ExitBadRequest, fmt.Sprintf("cannot split the command: %v", err)}
			}
			req := api.CommandRequest{Identity: identity, Args: args}
			if fields := strings.Fields(os.Getenv("SSH_CONNECTION")); len(fields) > 0 {
				req.Remote = fields[0]
			}
			if wantsStdin(args) {
				if req.Stdin, err = readStdin(cmd.InOrStdin(), stdinTimeout, maxStdin); err != nil {
					return &exitError{api.ExitBadRequest, err.Error()}
				}
			}
			return c.command(cmd.Context(), req, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&identity, "identity", "", "the identity whose scopes apply (required)")
	cmd.Flags().IntVar(&maxBytes, "max-command-bytes", 4096, "the longest SSH_ORIGINAL_COMMAND taken, in bytes")
	cmd.Flags().DurationVar(&stdinTimeout, "stdin-timeout", 30*time.Second, "how long standard input may stay open (--env-file -, --compose-file -)")
	cmd.Flags().Int64Var(&maxStdin, "max-stdin-bytes", defaultMaxStdin, "the most standard input passed on, in bytes")
	cmd.MarkFlagRequired("identity")
	return cmd
}

// defaultMaxStdin is --max-stdin-bytes by default: more than the largest
// compose archive agentd takes by default (64 files, 1 MiB of them, 1 MiB
// of request.env, and tar's headers and padding: 2.3 MiB), and within the
// socket's max_body_bytes (4 MiB) once base64-encoded.
const defaultMaxStdin = 3 << 20

// readStdin reads standard input, at most max bytes, from r, which must
// end within d: a client that keeps it open is not waited for.
func readStdin(r io.Reader, d time.Duration, max int64) ([]byte, error) {
	b, err := api.ReadWithin(context.Background(), r, d, max)
	switch {
	case errors.Is(err, api.ErrInputTooLarge):
		return nil, fmt.Errorf("more than %d bytes on standard input (--max-stdin-bytes)", max)
	case errors.Is(err, api.ErrInputStillOpen):
		return nil, fmt.Errorf("standard input still open after %s (--stdin-timeout): send the env file or archive and close it", d)
	}
	return b, err
}

// wantsStdin reports whether the command reads standard input (--env-file
// -, --compose-file -), as the grammar parses it; a command that does not
// parse gets none, and agentd says what is wrong with it.
func wantsStdin(args []string) bool {
	c, err := api.ParseCommand(args)
	return err == nil && (c.EnvFromStdin || c.ComposeFromStdin)
}

func (c *client) command(ctx context.Context, req api.CommandRequest, stdout, stderr io.Writer) error {
	resp, err := c.do(ctx, http.MethodPost, api.PathCommand, req)
	if err != nil {
		return err
	}
	var result error
	ended, err := lines(resp, func(line []byte) (bool, error) {
		var f api.Frame
		if err := json.Unmarshal(line, &f); err != nil {
			return true, &exitError{api.ExitBroken, fmt.Sprintf("bad frame from agentd: %v", err)}
		}
		switch {
		case f.ExitCode != nil:
			result = &exitError{code: *f.ExitCode}
			return true, nil
		case f.Stream == "stderr":
			io.WriteString(stderr, f.Data)
		default:
			io.WriteString(stdout, f.Data)
		}
		return false, nil
	})
	if err != nil && !ended {
		return err
	}
	if !ended {
		return result
	}
	return &exitError{api.ExitBroken, fmt.Sprintf("the connection to agentd ended before the command did (%v)", err)}
}

// hostKeyCmd prints the known_hosts line of agentd's SSH server, for CI to
// pin with StrictHostKeyChecking=yes.
func hostKeyCmd(c *client) *cobra.Command {
	var host string
	cmd := &cobra.Command{
		Use:   "host-key [--host NAME]",
		Short: "Print the known_hosts line of agentd's SSH server",
		Long: `Print the line CI puts in known_hosts to pin agentd's SSH host key, e.g.

  [deploy.example.com]:2222 ssh-ed25519 AAAA...

Store it as a CI variable (SSH_KNOWN_HOSTS) and connect with
-o StrictHostKeyChecking=yes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ans api.HostKeyAnswer
			if err := c.get(cmd.Context(), api.PathHostKey, nil, &ans); err != nil {
				return err
			}
			key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(ans.PublicKey))
			if err != nil {
				return &exitError{api.ExitBroken, fmt.Sprintf("agentd sent a bad host key: %v", err)}
			}
			if host == "" {
				if host, err = os.Hostname(); err != nil {
					return err
				}
			}
			addr := host
			if ans.Port != 22 {
				addr = "[" + host + "]:" + strconv.Itoa(ans.Port)
			}
			fmt.Fprintln(cmd.OutOrStdout(), knownhosts.Line([]string{addr}, key))
			return nil
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "the name or address CI connects to (default: this host's name)")
	return cmd
}
