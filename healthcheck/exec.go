package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

const (
	// execOutputMax caps the output Exec keeps (its end).
	execOutputMax = 64 << 10
	// execExitWait bounds the wait for an exec's exit code once its output
	// has ended, and execExitPoll is how often it is asked for.
	execExitWait = 10 * time.Second
	execExitPoll = 50 * time.Millisecond
)

// Exec runs cmd in a running container, waits for it, and returns its exit
// code and combined stdout+stderr (the last 64 KiB of it). Used for exec
// probes and by the deploy engine to validate and reload a proxy
// (`nginx -t`, `nginx -s reload`). A non-zero exit code is no error.
func Exec(ctx context.Context, eng ExecEngine, containerID string, cmd []string) (exitCode int, output string, err error) {
	out := &tailBuffer{max: execOutputMax}
	code, err := ExecTo(ctx, eng, containerID, "", cmd, out, out)
	return code, out.String(), err
}

// ExecTo runs cmd in a running container as user ("" for the container's
// own), streams its stdout and stderr (demultiplexed) to the writers, waits
// for it and returns its exit code. A non-zero exit code is no error.
func ExecTo(ctx context.Context, eng ExecEngine, containerID, user string, cmd []string, stdout, stderr io.Writer) (exitCode int, err error) {
	op := fmt.Sprintf("exec %q in %s", strings.Join(cmd, " "), shortID(containerID))
	if len(cmd) == 0 {
		return -1, fmt.Errorf("%s: empty command", op)
	}
	created, err := eng.ContainerExecCreate(ctx, containerID, container.ExecOptions{
		User:         user,
		Cmd:          cmd,
		AttachStdout: true,
		AttachStderr: true,
	})
	if err != nil {
		return -1, fmt.Errorf("%s: create: %w", op, err)
	}
	resp, err := eng.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return -1, fmt.Errorf("%s: start: %w", op, err)
	}
	defer resp.Close()

	// The hijacked connection knows nothing of ctx: read it in a goroutine
	// and close it if ctx ends first.
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(stdout, stderr, resp.Reader)
		copied <- err
	}()
	select {
	case <-ctx.Done():
		resp.Close()
		<-copied
		return -1, fmt.Errorf("%s: %w", op, ctx.Err())
	case err := <-copied:
		if err != nil {
			return -1, fmt.Errorf("%s: read output: %w", op, err)
		}
	}

	code, err := waitExec(ctx, eng, created.ID)
	if err != nil {
		return -1, fmt.Errorf("%s: %w", op, err)
	}
	return code, nil
}

// errStillRunning says an exec's process outlived its output.
var errStillRunning = errors.New("still running after its output ended")

// waitExec asks for the exit code of an exec whose output has ended: the
// engine may report it as running for a moment longer.
func waitExec(ctx context.Context, eng ExecEngine, execID string) (int, error) {
	deadline := time.NewTimer(execExitWait)
	defer deadline.Stop()
	ticker := time.NewTicker(execExitPoll)
	defer ticker.Stop()
	for {
		in, err := eng.ContainerExecInspect(ctx, execID)
		if err != nil {
			return -1, fmt.Errorf("inspect: %w", err)
		}
		if !in.Running {
			return in.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-deadline.C:
			return -1, fmt.Errorf("wait %s for the exit code: %w", execExitWait, errStillRunning)
		case <-ticker.C:
		}
	}
}

// tailBuffer is an io.Writer that keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	if len(p) >= b.max {
		b.buf = append(b.buf[:0], p[len(p)-b.max:]...)
		return len(p), nil
	}
	if len(b.buf)+len(p) > 2*b.max {
		// Drop all but the last max bytes, copying them to the front so the
		// backing array stays at most 2*max long.
		keep := b.buf[len(b.buf)-b.max:]
		b.buf = b.buf[:copy(b.buf, keep)]
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// String returns the last max bytes written.
func (b *tailBuffer) String() string {
	if len(b.buf) > b.max {
		return string(b.buf[len(b.buf)-b.max:])
	}
	return string(b.buf)
}
