package compose

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"strings"
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
// is streamed as progress; a non-zero exit is an error that carries the
// last lines of it. The container is removed afterwards.
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
	id, err := e.create(ctx, name, &cfg, host, spec.Networks, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer rcancel()
		e.Engine.ContainerRemove(rctx, id, container.RemoveOptions{Force: true})
	}()
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
	out := e.hookOutput(ctx, id)
	for _, line := range out {
		e.say(spec.Name, "| %s", line)
	}
	if code != 0 {
		tail := out[max(0, len(out)-20):]
		return fmt.Errorf("%s exited %d after %s:\n%s", what, code, time.Since(start).Round(time.Millisecond), strings.Join(tail, "\n"))
	}
	e.say(spec.Name, "%s done in %s", what, time.Since(start).Round(time.Millisecond))
	return nil
}

// hookOutput returns a finished hook's stdout and stderr, line by line.
func (e *Executor) hookOutput(ctx context.Context, id string) []string {
	rc, err := e.Engine.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return []string{fmt.Sprintf("(could not read the output: %v)", err)}
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, rc); err != nil {
		return []string{fmt.Sprintf("(could not read the output: %v)", err)}
	}
	var lines []string
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}
