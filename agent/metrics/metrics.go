// Package metrics exposes agentd's Prometheus metrics: the deploys and
// rollbacks it ran, how long they took, and, asked at scrape time, each
// project's live release and locks. Every Metrics has a registry of its
// own, with the Go and process collectors beside Berth's.
package metrics

import (
	"net/http"
	"runtime"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berth-deploy/berth/agent/api"
)

// Source is what the collector asks at scrape time.
type Source interface {
	Projects() []string
	LockState(project string) (running, held bool)
	Live(project string) int
}

// durationBuckets suit deploys: from a second to half an hour.
func durationBuckets() []float64 {
	return []float64{1, 2, 5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800}
}

// Metrics counts runs and serves them with the state of the projects.
// It is an agent.Observer.
type Metrics struct {
	src         Source
	reg         *prometheus.Registry
	runs        *prometheus.CounterVec
	deploys     *prometheus.HistogramVec
	rollbacks   *prometheus.HistogramVec
	lastSuccess *prometheus.GaugeVec
	stopKilled  *prometheus.CounterVec
	killedGrace *prometheus.GaugeVec
}

// New returns the metrics of an agent of that version; src is asked for
// the projects' state at each scrape (nil: no such series).
func New(version string, src Source) *Metrics {
	m := &Metrics{
		src: src,
		reg: prometheus.NewRegistry(),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_runs_total",
			Help: `Deploys and rollbacks that ended, by project, kind and outcome (project="" for requests that named no configured project).`,
		}, []string{"project", "kind", "outcome"}),
		deploys: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_deploy_duration_seconds",
			Help:    "How long deploys took, by project and outcome (refused requests are not counted).",
			Buckets: durationBuckets(),
		}, []string{"project", "outcome"}),
		rollbacks: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_rollback_duration_seconds",
			Help:    "How long rollbacks took, by project and outcome (refused requests are not counted).",
			Buckets: durationBuckets(),
		}, []string{"project", "outcome"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_last_success_timestamp_seconds",
			Help: "When the project's last successful deploy or rollback ended, in Unix seconds.",
		}, []string{"project"}),
		stopKilled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_container_stop_killed_total",
			Help: "Containers a deploy or rollback stopped that were still running at the end of their grace period (stop_grace_period), so the engine killed them with SIGKILL, by project and service.",
		}, []string{"project", "service"}),
		killedGrace: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "berth_container_stop_killed_grace_seconds",
			Help: "The grace period, in seconds, of the service's last container the engine killed at the end of it.",
		}, []string{"project", "service"}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "berth_build_info",
		Help:        "The agent's version and the Go version it was built with; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	build.Set(1)
	m.reg.MustRegister(
		m.runs, m.deploys, m.rollbacks, m.lastSuccess, m.stopKilled, m.killedGrace, build,
		newState(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Start the run counters of the known projects at zero, so that rates
	// and increases see their first run.
	if src != nil {
		for _, p := range src.Projects() {
			for _, kind := range []string{api.KindDeploy, api.KindRollback} {
				for _, o := range []string{api.RunSucceeded, api.RunNoop, api.RunRolledBack, api.RunFailed, api.RunRefused} {
					m.runs.WithLabelValues(p, kind, o)
				}
			}
		}
	}
	return m
}

// RunFinished counts a deploy or rollback that ended. It never blocks.
func (m *Metrics) RunFinished(ev api.RunEvent) {
	// The project of a request is the caller's word until the service
	// checks it: a refusal for a name that is not configured is counted
	// under "", so that callers cannot make series at will.
	if m.src != nil && !slices.Contains(m.src.Projects(), ev.Project) {
		ev.Project = ""
	}
	m.runs.WithLabelValues(ev.Project, ev.Kind, ev.Outcome).Inc()
	if ev.Outcome != api.RunRefused {
		h := m.deploys
		if ev.Kind == api.KindRollback {
			h = m.rollbacks
		}
		h.WithLabelValues(ev.Project, ev.Outcome).Observe(ev.Duration.Seconds())
	}
	if ev.Outcome == api.RunSucceeded && ev.Project != "" {
		t := ev.Time
		if t.IsZero() {
			t = time.Now()
		}
		m.lastSuccess.WithLabelValues(ev.Project).Set(float64(t.UnixNano()) / 1e9)
	}
	if ev.Project == "" || ev.Release.Number == 0 {
		return
	}
	// The kill counters of a release's services start at zero, so that
	// the first kill is an increase.
	for svc := range ev.Release.Services {
		m.stopKilled.WithLabelValues(ev.Project, svc)
	}
	for _, k := range ev.Release.KilledOnStop {
		m.stopKilled.WithLabelValues(ev.Project, k.Service).Inc()
		m.killedGrace.WithLabelValues(ev.Project, k.Service).Set(k.GracePeriod)
	}
}

// Handler serves the metrics in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:          m.reg, // counts the handler's own errors
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// state collects the projects' live releases and locks at scrape time.
type state struct {
	src        Source
	live, lock *prometheus.Desc
}

func newState(src Source) *state {
	return &state{
		src: src,
		live: prometheus.NewDesc("berth_live_release",
			"The number of the project's live release (0: none).", []string{"project"}, nil),
		lock: prometheus.NewDesc("berth_lock",
			`Whether the project's lock is taken: kind="deploy" while a deploy or rollback runs, kind="hold" while an operator holds its deploys.`,
			[]string{"project", "kind"}, nil),
	}
}

func (s *state) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.live
	ch <- s.lock
}

func (s *state) Collect(ch chan<- prometheus.Metric) {
	if s.src == nil {
		return
	}
	for _, p := range s.src.Projects() {
		ch <- prometheus.MustNewConstMetric(s.live, prometheus.GaugeValue, float64(s.src.Live(p)), p)
		running, held := s.src.LockState(p)
		ch <- prometheus.MustNewConstMetric(s.lock, prometheus.GaugeValue, bool01(running), p, "deploy")
		ch <- prometheus.MustNewConstMetric(s.lock, prometheus.GaugeValue, bool01(held), p, "hold")
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
