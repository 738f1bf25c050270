package compose

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

// RunHooks runs a service's hooks of one kind ("post-deploy" after a
// release commits) and returns the first failure.
func (e *Executor) RunHooks(ctx context.Context, project string, spec *ServiceSpec, kind string, hooks []Hook) error {
	for i, h := range hooks {
		if err := e.runHook(ctx, project, spec, kind, i, h); err != nil {
			return err
		}
	}
	return nil
}

// runHook runs one hook as a one-off container of the service's (new)
// image, with the service's config, volumes and networks but the hook's
// command, no published ports, no health check and no restart. Its output
// is streamed as progress while it runs, bounded (hookLog); a non-zero exit
// is an error that carries the last lines of it. The container is removed
// afterwards.
func (e *Executor) runHook(ctx context.Context, project string, spec *ServiceSpec, kind string, i int, h Hook) error {
	what := fmt.Sprintf("%s hook %q", kind, strings.Join(h.Command, " "))
	name := fmt.Sprintf("%s-%s-%s-%s-%d", project, spec.Name, strings.ReplaceAll(kind, "-", ""), e.Release, i+1)
	cfg := spec.Config
	cfg.Cmd = h.Command
	cfg.Tty, cfg.OpenStdin = false, false
	cfg.Healthcheck = &container.HealthConfig{Test: []string{"NONE"}}
	cfg.ExposedPorts = nil
	cfg.Labels = maps.Clone(spec.Config.Labels)
	cfg.Labels[LabelOneoff] = "True"
	cfg.Labels[LabelNumber] = "1"
	if e.Release != "" {
		cfg.Labels[LabelRelease] = e.Release
	}
	host := spec.Host
	host.PortBindings = nil
	host.RestartPolicy = container.RestartPolicy{}

	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	e.say(spec.Name, "running %s", what)
	start := time.Now()
	id, err := e.createShielded(ctx, spec, name, &cfg, host, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer rcancel()
		e.Engine.ContainerRemove(rctx, id, container.RemoveOptions{Force: true})
	}()
	out := &hookLog{say: func(line string) { e.say(spec.Name, "| %s", line) }}
	streamed := e.streamHookOutput(ctx, id, out)
	waitc, errc := e.Engine.ContainerWait(ctx, id, container.WaitConditionNotRunning)
	var code int64
	select {
	case res := <-waitc:
		if res.Error != nil {
			return fmt.Errorf("%s: wait: %s", what, res.Error.Message)
		}
		code = res.StatusCode
	case err := <-errc:
		return fmt.Errorf("%s: wait: %w", what, err)
	}
	// The engine ends a followed log when the container exits; what it
	// still holds arrives at once.
	t := time.NewTimer(hookFlush)
	select {
	case <-streamed:
	case <-t.C:
		out.say(fmt.Sprintf("(the output did not end %s after the hook exited)", hookFlush))
	}
	t.Stop()
	out.finish()
	if code != 0 {
		return fmt.Errorf("%s exited %d after %s:\n%s", what, code, time.Since(start).Round(time.Millisecond), strings.Join(out.last(), "\n"))
	}
	e.say(spec.Name, "%s done in %s", what, time.Since(start).Round(time.Millisecond))
	return nil
}

// What a hook's output may cost: each line is cut to hookLineBytes,
// at most hookLines lines are shown as progress (the rest are counted), the
// last hookTail lines are kept for the error of a failed hook, and the
// output is waited for at most hookFlush after the hook exits.
const (
	hookLineBytes = 1024
	hookLines     = 2000
	hookTail      = 20
	hookFlush     = 5 * time.Second
)

// hookLog takes a hook's output line by line, as it comes.
type hookLog struct {
	mu     sync.Mutex
	say    func(line string)
	shown  int
	hidden int
	tail   []string
}

func (h *hookLog) line(s string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.tail) == hookTail {
		h.tail = h.tail[1:]
	}
	h.tail = append(h.tail, s)
	if h.shown < hookLines {
		h.shown++
		h.say(s)
		return
	}
	h.hidden++
}

// finish says how many lines were not shown.
func (h *hookLog) finish() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hidden > 0 {
		h.say(fmt.Sprintf("(%d more lines not shown)", h.hidden))
	}
}

// last returns the last lines of the output.
func (h *hookLog) last() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.tail)
}

// streamHookOutput follows a started hook's stdout and stderr and hands
// them to out line by line as they come, each line cut to hookLineBytes;
// the channel is closed when the output ends.
func (e *Executor) streamHookOutput(ctx context.Context, id string, out *hookLog) <-chan struct{} {
	done := make(chan struct{})
	rc, err := e.Engine.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: true})
	if err != nil {
		out.line(fmt.Sprintf("(could not read the output: %v)", err))
		close(done)
		return done
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := stdcopy.StdCopy(pw, pw, rc)
		rc.Close()
		pw.CloseWithError(err)
	}()
	go func() {
		defer close(done)
		defer pr.Close()
		ReadLines(pr, hookLineBytes, out.line)
	}()
	return done
}

// ReadLines calls line for each line of r, without its newline; a line
// longer than max bytes is cut there, the rest of it skipped and counted
// in a "…(+N bytes)" suffix. It returns the error that ended r (io.EOF at
// its end).
func ReadLines(r io.Reader, max int, line func(string)) error {
	br := bufio.NewReaderSize(r, max)
	for {
		chunk, isPrefix, err := br.ReadLine()
		if len(chunk) > 0 || (err == nil && !isPrefix) {
			s := string(chunk)
			skipped := 0
			for isPrefix && err == nil {
				var more []byte
				more, isPrefix, err = br.ReadLine()
				skipped += len(more)
			}
			if skipped > 0 {
				s += fmt.Sprintf("…(+%d bytes)", skipped)
			}
			line(s)
		}
		if err != nil {
			return err
		}
	}
}
