// Command loadgen sends steady HTTP traffic to the shop (through nginx) and
// records the outcome of every request, for scripts/e2e.sh: a deploy under
// this load must fail none of them.
//
// K clients share one steady total rate. Request i is a POST /orders/ with a
// unique name when i is a multiple of -post-every, else GET /version and
// GET /orders/ in turn. Each request has a timeout. A request failed when it
// got a transport error or timed out, when its status was not the expected
// one (GET: 200, POST: 201), or when its body was not what the shop answers
// (GET /version: {"version": ...}; POST: the order, with its id).
//
// It runs until SIGTERM or SIGINT (or for -duration), lets the requests in
// flight finish, and then writes a JSON summary (-summary: sent, failed, per
// request and status, the versions /version answered, the first errors) and
// the IDs of the orders it created, one per line (-ids).
//
//	loadgen -url http://127.0.0.1:8080 -rate 50 -clients 8 -prefix step2 \
//	    -summary step2.json -ids step2.ids
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type config struct {
	url       string
	rate      float64       // requests per second, all clients together
	clients   int           // concurrent clients
	postEvery int           // every Nth request is a POST (0: none)
	timeout   time.Duration // per request
	prefix    string        // order names: PREFIX-N
}

// A request is one of three kinds.
const (
	getVersion = "GET /version"
	getOrders  = "GET /orders/"
	postOrder  = "POST /orders/"
)

// kindOf says what request number i (from 0) is.
func kindOf(i, postEvery int) string {
	switch {
	case postEvery > 0 && i%postEvery == 0:
		return postOrder
	case i%2 == 0:
		return getVersion
	default:
		return getOrders
	}
}

// Summary is what loadgen writes at exit.
type Summary struct {
	URL      string                   `json:"url"`
	Started  time.Time                `json:"started"`
	Seconds  float64                  `json:"seconds"`
	Rate     float64                  `json:"rate"` // achieved, requests per second
	Sent     int                      `json:"sent"`
	Failed   int                      `json:"failed"`
	Requests map[string]*RequestStats `json:"requests"`
	Versions map[string]int           `json:"versions"` // what GET /version answered, and how often
	Created  int                      `json:"created"`  // orders created (their IDs are in -ids)
	Errors   []Failure                `json:"errors"`   // the first few failures
}

// RequestStats counts one kind of request by outcome: an HTTP status, or
// "error" (transport error or timeout).
type RequestStats struct {
	Sent     int            `json:"sent"`
	Failed   int            `json:"failed"`
	Outcomes map[string]int `json:"outcomes"`
}

// Failure is one failed request.
type Failure struct {
	Time    time.Time `json:"time"`
	Request string    `json:"request"`
	Error   string    `json:"error"`
}

const maxErrors = 20

// recorder collects the outcomes; safe for concurrent use.
type recorder struct {
	mu  sync.Mutex
	sum Summary
	ids []int64
	log io.Writer // one line per request, or nil
}

func newRecorder(url string, log io.Writer) *recorder {
	return &recorder{log: log, sum: Summary{
		URL: url, Started: time.Now(), Requests: map[string]*RequestStats{},
		Versions: map[string]int{}, Errors: []Failure{},
	}}
}

// outcome is what became of one request.
type outcome struct {
	kind    string
	start   time.Time
	took    time.Duration
	status  int    // 0: no response
	err     string // "" when it succeeded
	version string // GET /version
	id      int64  // POST
}

func (r *recorder) add(o outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.sum.Requests[o.kind]
	if st == nil {
		st = &RequestStats{Outcomes: map[string]int{}}
		r.sum.Requests[o.kind] = st
	}
	r.sum.Sent++
	st.Sent++
	key := "error"
	if o.status != 0 {
		key = strconv.Itoa(o.status)
	}
	st.Outcomes[key]++
	if o.err != "" {
		r.sum.Failed++
		st.Failed++
		if len(r.sum.Errors) < maxErrors {
			r.sum.Errors = append(r.sum.Errors, Failure{o.start, o.kind, o.err})
		}
	} else if o.kind == getVersion {
		r.sum.Versions[o.version]++
	} else if o.kind == postOrder {
		r.ids = append(r.ids, o.id)
	}
	if r.log != nil {
		io.WriteString(r.log, logLine(o, key))
	}
}

// summary returns the summary and the created IDs, once every request is done.
func (r *recorder) summary() (Summary, []int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sum
	s.Seconds = time.Since(s.Started).Seconds()
	if s.Seconds > 0 {
		s.Rate = float64(s.Sent) / s.Seconds
	}
	s.Created = len(r.ids)
	return s, append([]int64(nil), r.ids...)
}

// do sends request number i and says what became of it. It is not tied to
// run's context: a request in flight when loadgen is told to stop finishes
// (or times out) and is counted.
func do(client *http.Client, cfg config, i int) (o outcome) {
	o = outcome{kind: kindOf(i, cfg.postEvery), start: time.Now()}
	defer func() { o.took = time.Since(o.start) }()
	var req *http.Request
	var err error
	want := http.StatusOK
	switch o.kind {
	case getVersion:
		req, err = http.NewRequest(http.MethodGet, cfg.url+"/version", nil)
	case getOrders:
		req, err = http.NewRequest(http.MethodGet, cfg.url+"/orders/", nil)
	case postOrder:
		body, _ := json.Marshal(map[string]string{"name": fmt.Sprintf("%s-%d", cfg.prefix, i)})
		req, err = http.NewRequest(http.MethodPost, cfg.url+"/orders/", strings.NewReader(string(body)))
		if req != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		want = http.StatusCreated
	}
	if err != nil {
		o.err = err.Error()
		return o
	}
	resp, err := client.Do(req)
	if err != nil {
		o.err = err.Error()
		return o
	}
	defer resp.Body.Close()
	o.status = resp.StatusCode
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		o.err = "reading the body: " + err.Error()
		return o
	}
	if resp.StatusCode != want {
		o.err = fmt.Sprintf("%s: %s", resp.Status, firstLine(body))
		return o
	}
	switch o.kind {
	case getVersion:
		var v struct {
			Version *string `json:"version"`
		}
		if json.Unmarshal(body, &v) != nil || v.Version == nil {
			o.err = "no version in the body: " + firstLine(body)
			return o
		}
		o.version = *v.Version
	case postOrder:
		var v struct {
			ID int64 `json:"id"`
		}
		if json.Unmarshal(body, &v) != nil || v.ID <= 0 {
			o.err = "no order id in the body: " + firstLine(body)
			return o
		}
		o.id = v.ID
	}
	return o
}

// LogTime is the layout of a -log line's first field: the request's start,
// UTC, to the microsecond (scripts/bench parses it).
const LogTime = "2006-01-02T15:04:05.000000Z07:00"

// logLine is one -log line: the start (LogTime), the request, its status
// ("error" without a response), its latency in milliseconds with three
// decimals, and "ok" or what failed; tab-separated, newline-terminated.
func logLine(o outcome, status string) string {
	result := "ok"
	if o.err != "" {
		result = strings.NewReplacer("\t", " ", "\n", " ").Replace(o.err)
	}
	return fmt.Sprintf("%s\t%s\t%s\t%.3fms\t%s\n", o.start.UTC().Format(LogTime), o.kind, status,
		float64(o.took.Microseconds())/1000, result)
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

// run sends requests at cfg.rate until ctx is done, then waits for those in
// flight. When every client is busy, the rate drops rather than queueing:
// Summary.Rate says what was achieved.
func run(ctx context.Context, cfg config, client *http.Client, rec *recorder) {
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range cfg.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				rec.add(do(client, cfg, i))
			}
		}()
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.rate))
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case jobs <- i:
		case <-ctx.Done():
			close(jobs)
			wg.Wait()
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

func main() {
	var cfg config
	var duration time.Duration
	var summaryPath, idsPath, logPath string
	var keepAlive bool
	flag.StringVar(&cfg.url, "url", "http://127.0.0.1:8080", "the shop's base URL (nginx)")
	flag.Float64Var(&cfg.rate, "rate", 50, "requests per second, all clients together")
	flag.IntVar(&cfg.clients, "clients", 8, "concurrent clients")
	flag.IntVar(&cfg.postEvery, "post-every", 10, "every Nth request is a POST /orders/ (0: none); the others alternate GET /version and GET /orders/")
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "timeout of each request")
	flag.DurationVar(&duration, "duration", 0, "stop after this long (0: at SIGTERM or SIGINT)")
	flag.StringVar(&cfg.prefix, "prefix", "loadgen", "order names are PREFIX-N")
	flag.StringVar(&summaryPath, "summary", "", "write the JSON summary here (default: standard output)")
	flag.StringVar(&idsPath, "ids", "", "write the IDs of the orders created here, one per line")
	flag.BoolVar(&keepAlive, "keepalive", false, "reuse connections (default: one connection per request)")
	flag.StringVar(&logPath, "log", "", "write one line per request here (start time UTC to the µs, request, status, latency in ms, result; tab-separated)")
	flag.Parse()
	if err := start(cfg, duration, keepAlive, summaryPath, idsPath, logPath); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
}

func start(cfg config, duration time.Duration, keepAlive bool, summaryPath, idsPath, logPath string) error {
	if cfg.rate <= 0 || cfg.clients <= 0 || cfg.timeout <= 0 || cfg.postEvery < 0 {
		return errors.New("-rate, -clients and -timeout must be positive, -post-every not negative")
	}
	cfg.url = strings.TrimRight(cfg.url, "/")
	var log io.Writer
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		log = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = cfg.clients
	// By default every request opens its connection, as many independent
	// users would: a kept-alive connection that nginx closes as it reloads
	// races with a request sent on it, a failure of this client's making
	// (browsers retry those).
	transport.DisableKeepAlives = !keepAlive
	client := &http.Client{Timeout: cfg.timeout, Transport: transport}

	fmt.Fprintf(os.Stderr, "loadgen: %g requests/s to %s with %d clients (every %dth a POST)\n", cfg.rate, cfg.url, cfg.clients, cfg.postEvery)
	rec := newRecorder(cfg.url, log)
	run(ctx, cfg, client, rec)
	sum, ids := rec.summary()
	fmt.Fprintf(os.Stderr, "loadgen: %d sent, %d failed, %d orders created in %.1fs (%.1f/s)\n", sum.Sent, sum.Failed, sum.Created, sum.Seconds, sum.Rate)

	if idsPath != "" {
		sort.Slice(ids, func(a, b int) bool { return ids[a] < ids[b] })
		var b strings.Builder
		for _, id := range ids {
			fmt.Fprintln(&b, id)
		}
		if err := os.WriteFile(idsPath, []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	out, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return err
	}
	out = append(out, '\n')
	if summaryPath == "" {
		_, err = os.Stdout.Write(out)
		return err
	}
	return os.WriteFile(summaryPath, out, 0o644)
}
