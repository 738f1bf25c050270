// Package notify tells webhooks how deploys and rollbacks ended and which
// live services turned unhealthy. Events are queued and delivered in the
// background, one worker per webhook, so that a slow or dead webhook never
// holds a deploy up nor delays the other webhooks.
package notify

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
)

// Events a webhook may ask for (config.Notification.Events).
const (
	eventSuccess   = "success"
	eventFailure   = "failure"
	eventRollback  = "rollback"
	eventUnhealthy = "unhealthy"
)

const (
	// queueSize is how many deliveries wait for a webhook; more are dropped.
	queueSize = 100
	// defaultTimeout bounds an attempt when the config sets no timeout.
	defaultTimeout = 5 * time.Second
	// maxBackoff caps the wait between two attempts.
	maxBackoff = 30 * time.Second
	// maxSlackError caps the error quoted in a Slack line.
	maxSlackError = 500
)

// Notifier delivers events to the configured webhooks. It is an
// agent.Observer; its methods never block.
type Notifier struct {
	log     *slog.Logger
	client  *http.Client
	hooks   []*hook
	backoff func(retry int) time.Duration

	// ctx is canceled when Close gives up on the deliveries left.
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	dropped atomic.Int64 // deliveries given up by Close

	mu     sync.Mutex
	closed bool
}

// hook is one webhook and its queue.
type hook struct {
	index   int
	host    string // for logs: the URL's path and query may be secret
	cfg     config.Notification
	timeout time.Duration
	queue   chan delivery
}

// delivery is one body for one webhook.
type delivery struct {
	event, project string
	body           []byte
}

// New returns a notifier for the webhooks of cfg and starts their workers;
// Close stops them. A nil client means http.DefaultClient; a nil log,
// no logs.
func New(cfg []config.Notification, client *http.Client, log *slog.Logger) *Notifier {
	return newNotifier(cfg, client, log, backoff)
}

// backoff is the wait before retry n (from 0): 1s, 2s, 4s... up to 30s.
func backoff(n int) time.Duration {
	if n >= 5 {
		return maxBackoff
	}
	return min(time.Second<<n, maxBackoff)
}

func newNotifier(cfg []config.Notification, client *http.Client, log *slog.Logger, backoff func(int) time.Duration) *Notifier {
	if client == nil {
		client = http.DefaultClient
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifier{log: log, client: client, backoff: backoff, ctx: ctx, cancel: cancel}
	for i, c := range cfg {
		c.Events = slices.Clone(c.Events)
		c.Projects = slices.Clone(c.Projects)
		c.Retries = max(c.Retries, 0)
		h := &hook{index: i, cfg: c, timeout: c.Timeout, queue: make(chan delivery, queueSize)}
		if h.timeout <= 0 {
			h.timeout = defaultTimeout
		}
		if u, err := url.Parse(c.URL); err == nil {
			h.host = u.Host
		}
		n.hooks = append(n.hooks, h)
		n.wg.Add(1)
		go n.work(h)
	}
	return n
}

// RunFinished queues the notification of a deploy or rollback that ended:
// succeeded is a success, rolled-back a rollback, failed a failure; noop
// and refused runs are not notified. It returns at once.
func (n *Notifier) RunFinished(ev api.RunEvent) {
	var event string
	switch ev.Outcome {
	case api.RunSucceeded:
		event = eventSuccess
	case api.RunRolledBack:
		event = eventRollback
	case api.RunFailed:
		event = eventFailure
	default:
		return
	}
	n.enqueue(event, ev.Project, func(format string) ([]byte, error) {
		if format == "slack" {
			return json.Marshal(slackBody{Text: runText(ev)})
		}
		return json.Marshal(newRunBody(event, ev))
	})
}

// Unhealthy queues the notification of a live container gone wrong. It
// returns at once.
func (n *Notifier) Unhealthy(ev api.UnhealthyEvent) {
	n.enqueue(eventUnhealthy, ev.Project, func(format string) ([]byte, error) {
		if format == "slack" {
			return json.Marshal(slackBody{Text: unhealthyText(ev)})
		}
		return json.Marshal(newUnhealthyBody(ev))
	})
}

// enqueue renders the body of each format once and queues it for the
// webhooks that want the event; a full queue drops it.
func (n *Notifier) enqueue(event, project string, render func(format string) ([]byte, error)) {
	bodies := map[string][]byte{}
	var queued []*hook
	for _, h := range n.hooks {
		if !h.wants(event, project) {
			continue
		}
		if _, ok := bodies[h.cfg.Format]; !ok {
			b, err := render(h.cfg.Format)
			if err != nil {
				n.log.Error("notification not sent: encoding its body", "event", event, "project", project, "err", err)
				return
			}
			bodies[h.cfg.Format] = b
		}
		queued = append(queued, h)
	}
	if len(queued) == 0 {
		return
	}
	var full []*hook
	n.mu.Lock()
	closed := n.closed
	if !closed {
		for _, h := range queued {
			select {
			case h.queue <- delivery{event: event, project: project, body: bodies[h.cfg.Format]}:
			default:
				full = append(full, h)
			}
		}
	}
	n.mu.Unlock()
	if closed {
		n.log.Warn("notification not sent: the notifier is closed", "event", event, "project", project)
	}
	for _, h := range full {
		n.log.Warn("notification dropped: the webhook's queue is full", "webhook", h.index, "host", h.host, "event", event, "project", project)
	}
}

// wants reports whether the webhook's filters let the event through.
func (h *hook) wants(event, project string) bool {
	return (len(h.cfg.Events) == 0 || slices.Contains(h.cfg.Events, event)) &&
		(len(h.cfg.Projects) == 0 || slices.Contains(h.cfg.Projects, project))
}

// work delivers a webhook's queue in order until Close.
func (n *Notifier) work(h *hook) {
	defer n.wg.Done()
	for d := range h.queue {
		if n.ctx.Err() != nil {
			n.dropped.Add(1)
			continue
		}
		err := n.deliver(n.ctx, h, d)
		switch {
		case err == nil:
			n.log.Debug("notification sent", "webhook", h.index, "host", h.host, "event", d.event, "project", d.project)
		case n.ctx.Err() != nil:
			n.dropped.Add(1)
		default:
			n.log.Warn("notification failed", "webhook", h.index, "host", h.host, "event", d.event, "project", d.project, "err", err)
		}
	}
}

// deliver posts the body, retrying up to the webhook's Retries times.
func (n *Notifier) deliver(ctx context.Context, h *hook, d delivery) error {
	for retry := 0; ; retry++ {
		err := n.post(ctx, h, d.body)
		if err == nil {
			return nil
		}
		if retry >= h.cfg.Retries || ctx.Err() != nil {
			return fmt.Errorf("%s: %w", attempts(retry+1), err)
		}
		wait := n.backoff(retry)
		n.log.Debug("notification attempt failed; retrying", "webhook", h.index, "host", h.host, "event", d.event,
			"project", d.project, "attempt", retry+1, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s, then %w: %w", attempts(retry+1), ctx.Err(), err)
		case <-t.C:
		}
	}
}

func attempts(n int) string {
	if n == 1 {
		return "1 attempt"
	}
	return fmt.Sprintf("%d attempts", n)
}

// post makes one attempt, bounded by the webhook's timeout.
func (n *Notifier) post(ctx context.Context, h *hook, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("new request: %w", withoutURL(err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "berth")
	resp, err := n.client.Do(req)
	if err != nil {
		return withoutURL(err)
	}
	defer resp.Body.Close()
	said, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // so the connection may be reused
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if s := strings.Join(strings.Fields(string(said)), " "); s != "" {
			return fmt.Errorf("%s: %q", resp.Status, s)
		}
		return errors.New(resp.Status)
	}
	return nil
}

// withoutURL drops the URL from a client's error: a webhook's URL (a
// Slack one, say) is a secret and errors are logged.
func withoutURL(err error) error {
	var u *url.Error
	if errors.As(err, &u) {
		return fmt.Errorf("%s: %w", u.Op, u.Err)
	}
	return err
}

// Close stops taking events and waits for the queued deliveries until ctx
// ends; then it drops the rest, logs how many, and returns ctx's error.
func (n *Notifier) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	for _, h := range n.hooks {
		close(h.queue)
	}
	n.mu.Unlock()

	done := make(chan struct{})
	go func() {
		n.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		n.cancel()
		return nil
	case <-ctx.Done():
	}
	// Abort the deliveries under way; the workers drop what is queued.
	n.cancel()
	<-done
	dropped := n.dropped.Load()
	n.log.Warn("notifications dropped at shutdown", "dropped", dropped)
	return fmt.Errorf("notify: %d notifications dropped at shutdown: %w", dropped, ctx.Err())
}

// runBody is the json format of a deploy or rollback. The release's
// compose file, plan and state are not sent: they may hold secrets.
type runBody struct {
	Event           string            `json:"event"`
	Project         string            `json:"project"`
	Kind            string            `json:"kind"`
	Release         int               `json:"release"`
	Outcome         string            `json:"outcome"`
	ExitCode        int               `json:"exit_code"`
	Identity        string            `json:"identity"`
	Message         string            `json:"message"`
	ReleaseMessage  string            `json:"release_message,omitempty"`
	Error           string            `json:"error,omitempty"`
	RollbackOf      int               `json:"rollback_of,omitempty"`
	RestoredTo      int               `json:"restored_to,omitempty"`
	Images          map[string]string `json:"images"`
	DurationSeconds float64           `json:"duration_seconds"`
	Live            int               `json:"live"`
	Time            time.Time         `json:"time"`
}

func newRunBody(event string, ev api.RunEvent) runBody {
	images := make(map[string]string, len(ev.Release.Services))
	for name, s := range ev.Release.Services {
		images[name] = cmp.Or(s.Pinned, s.Ref)
	}
	return runBody{
		Event:           event,
		Project:         ev.Project,
		Kind:            ev.Kind,
		Release:         ev.Release.Number,
		Outcome:         ev.Outcome,
		ExitCode:        ev.ExitCode,
		Identity:        ev.Identity,
		Message:         ev.Message,
		ReleaseMessage:  ev.Release.Message,
		Error:           ev.Release.Error,
		RollbackOf:      ev.Release.RollbackOf,
		RestoredTo:      ev.Release.RestoredTo,
		Images:          images,
		DurationSeconds: math.Round(ev.Duration.Seconds()*1000) / 1000,
		Live:            ev.Live,
		Time:            ev.Time,
	}
}

// unhealthyBody is the json format of an unhealthy container.
type unhealthyBody struct {
	Event     string    `json:"event"`
	Project   string    `json:"project"`
	Release   int       `json:"release"`
	Service   string    `json:"service"`
	Container string    `json:"container"`
	State     string    `json:"state"`
	Health    string    `json:"health"`
	Restarts  int       `json:"restarts"`
	Detail    string    `json:"detail"`
	Time      time.Time `json:"time"`
}

func newUnhealthyBody(ev api.UnhealthyEvent) unhealthyBody {
	return unhealthyBody{
		Event:     eventUnhealthy,
		Project:   ev.Project,
		Release:   ev.Release,
		Service:   ev.Service,
		Container: ev.Container,
		State:     ev.State,
		Health:    ev.Health,
		Restarts:  ev.Restarts,
		Detail:    ev.Detail,
		Time:      ev.Time,
	}
}

// slackBody is the slack format: one line of text.
type slackBody struct {
	Text string `json:"text"`
}

// runText is the Slack line of a deploy or rollback.
func runText(ev api.RunEvent) string {
	r := ev.Release
	what := "the " + ev.Kind
	if r.Number > 0 {
		what = fmt.Sprintf("release %d", r.Number)
		if ev.Kind == api.KindRollback && r.RollbackOf > 0 {
			what += fmt.Sprintf(" (rollback to %d)", r.RollbackOf)
		}
	}
	who := fmt.Sprintf("(%s by %s, %s)", ev.Kind, cmp.Or(ev.Identity, "?"), seconds(ev.Duration))
	why := oneLine(cmp.Or(r.Error, ev.Message), maxSlackError)
	var s string
	switch ev.Outcome {
	case api.RunSucceeded:
		s = fmt.Sprintf(":white_check_mark: %s: %s is live %s", ev.Project, what, who)
		if r.Message != "" {
			s += " — " + oneLine(r.Message, maxSlackError)
		}
	case api.RunRolledBack:
		to := ""
		if restored := cmp.Or(r.RestoredTo, ev.Live); restored > 0 {
			to = fmt.Sprintf(" to %d", restored)
		}
		s = fmt.Sprintf(":rewind: %s: %s failed and was rolled back%s %s: %s", ev.Project, what, to, who, why)
	default:
		s = fmt.Sprintf(":rotating_light: %s: %s failed and was NOT restored %s: %s", ev.Project, what, who, why)
	}
	return slackEscape(s)
}

// unhealthyText is the Slack line of an unhealthy container.
func unhealthyText(ev api.UnhealthyEvent) string {
	var facts []string
	if ev.Service != "" {
		facts = append(facts, "service "+ev.Service)
	}
	if ev.Release > 0 {
		facts = append(facts, fmt.Sprintf("release %d", ev.Release))
	}
	if ev.State != "" {
		facts = append(facts, "state "+ev.State)
	}
	if ev.Health != "" {
		facts = append(facts, "health "+ev.Health)
	}
	if ev.Restarts > 0 {
		facts = append(facts, fmt.Sprintf("%d restarts", ev.Restarts))
	}
	s := fmt.Sprintf(":warning: %s: %s is unhealthy", ev.Project, cmp.Or(ev.Container, ev.Service))
	if len(facts) > 0 {
		s += " (" + strings.Join(facts, ", ") + ")"
	}
	if ev.Detail != "" {
		s += ": " + oneLine(ev.Detail, maxSlackError)
	}
	return slackEscape(s)
}

// seconds writes a duration to the second (or to the millisecond under a
// second).
func seconds(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// oneLine folds s's whitespace and cuts it to at most n bytes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// slackEscape escapes the three characters Slack's text reserves.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
