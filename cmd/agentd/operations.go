package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/metrics"
	"github.com/berth-deploy/berth/agent/notify"
	"github.com/berth-deploy/berth/agent/schedule"
	"github.com/berth-deploy/berth/agent/store"
	"github.com/docker/docker/client"
)

// operations are the parts that watch and report on the deploys rather
// than take requests: metrics, notifications, scheduled jobs.
type operations struct {
	notifier *notify.Notifier
	sched    *schedule.Scheduler
	doors    []door // the metrics endpoint, when configured
}

// setupOperations wires the configured metrics, notifications and jobs to
// the service. Call it before the service takes requests.
func setupOperations(cfg *config.Config, svc *agent.Service, docker *client.Client, st *store.Store, log *slog.Logger) (*operations, error) {
	ops := &operations{}
	if cfg.Metrics != nil {
		m := metrics.New(version, svc)
		svc.AddObserver(m)
		ln, err := net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", m.Handler())
		log.Info("metrics listening", "addr", ln.Addr().String())
		ops.doors = append(ops.doors, httpDoor("metrics", ln, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}))
	}
	var alert schedule.Alerter
	if len(cfg.Notifications) > 0 {
		ops.notifier = notify.New(cfg.Notifications, nil, log)
		svc.AddObserver(ops.notifier)
		alert = ops.notifier
	}
	j := cfg.Jobs
	if j.PruneImages != nil || j.Watch != nil || len(j.PgDump) > 0 {
		sched, err := schedule.New(j, cfg.ProjectNames(), docker, st, alert, log)
		if err != nil {
			return nil, fmt.Errorf("jobs: %w", err)
		}
		ops.sched = sched
		svc.AddPreparer(sched)
	}
	return ops, nil
}

// start starts the scheduled jobs.
func (o *operations) start() {
	if o.sched != nil {
		o.sched.Start()
	}
}

// stop stops the jobs and delivers the notifications still queued, each
// for a bounded time.
func (o *operations) stop(log *slog.Logger) {
	var errs []error
	if o.sched != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, o.sched.Stop(ctx))
		cancel()
	}
	if o.notifier != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		errs = append(errs, o.notifier.Close(ctx))
		cancel()
	}
	if err := errors.Join(errs...); err != nil {
		log.Warn("stopping jobs and notifications", "err", err)
	}
}
