package compose

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
)

// Settle waits until the engine has carried out what an agentd that died
// had asked of it for a project. The engine goes on with a request after
// its caller is gone: a container create that was under way completes
// later, and meanwhile the container may not be listed yet, or be listed
// but not found by its ID (Docker 20.10, measured in TestFaults), while
// its name is already taken. Acting on such a view fails (a rename onto a
// name still held) or leaves the container behind.
//
// The project is settled when its containers, every one of which can be
// inspected, have not changed (IDs, names, states) for quiet. Settle gives
// up after limit and reports that it did not settle; it is not an error to
// go on then. It returns ctx's error if ctx ends first.
func Settle(ctx context.Context, eng Engine, project string, quiet, limit time.Duration) (settled bool, err error) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(min(quiet/4, 250*time.Millisecond) + time.Millisecond)
	defer tick.Stop()
	last, since := "", time.Now()
	for {
		view, err := settleView(ctx, eng, project)
		switch {
		case err != nil && ctx.Err() != nil:
			return false, ctx.Err()
		case err != nil || view != last:
			// Changed, or a container is listed that cannot be found yet.
			last, since = view, time.Now()
			if err != nil {
				last = "unsettled: " + err.Error()
			}
		case time.Since(since) >= quiet:
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-deadline.C:
			return false, nil
		case <-tick.C:
		}
	}
}

// settleView describes the project's containers, or says why it cannot.
func settleView(ctx context.Context, eng Engine, project string) (string, error) {
	list, err := eng.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelProject+"="+project))})
	if err != nil {
		return "", fmt.Errorf("list containers: %w", err)
	}
	var view []string
	for _, c := range list {
		if _, err := eng.ContainerInspect(ctx, c.ID); err != nil {
			return "", fmt.Errorf("inspect %s: %w", strings.Join(c.Names, ","), err)
		}
		view = append(view, c.ID+" "+strings.Join(c.Names, ",")+" "+c.State)
	}
	slices.Sort(view)
	return strings.Join(view, "\n"), nil
}
