package schedule_test

import (
	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/schedule"
	"github.com/berth-deploy/berth/agent/store"
	"github.com/docker/docker/client"
)

// The scheduler is the deploy service's preparer, and the real engine and
// store are what it runs on.
var (
	_ agent.Preparer   = (*schedule.Scheduler)(nil)
	_ schedule.Engine  = (*client.Client)(nil)
	_ schedule.History = (*store.Store)(nil)
)
