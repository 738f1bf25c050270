package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// load sends steady traffic to the shop through nginx: clients with kept-alive
// connections share one rate; every tenth request is a POST /orders/, the
// others alternate GET /version and GET /orders/. It records each request's
// latency and every failure (transport error, timeout, unexpected status or
// body).
type load struct {
	url     string
	cancel  context.CancelFunc
	done    sync.WaitGroup
	mu      sync.Mutex
	lat     []time.Duration
	sent    int
	failed  int
	cut     int
	errs    []string
	version map[string]int
}

// loadReport is what a load run measured.
type loadReport struct {
	Sent, Failed int
	// Cut counts the failed POSTs whose kept-alive connection was closed
	// as they went out (EOF or a reset, no answer): what a proxy reload
	// costs such a client now and then (docs/compose.md, "Reloads": about 1
	// in 17 reloads for a client that POSTs without pause). Go's client
	// sends a GET again on a new connection, not a POST.
	Cut      int
	Seconds  float64
	P50, P99 time.Duration
	Max      time.Duration
	Versions map[string]int
	Errors   []string // the first few
}

func (r loadReport) String() string {
	return fmt.Sprintf("%d requests in %.1fs (%.0f/s), %d failed (%d POSTs cut by a reload), p50 %s, p99 %s, max %s, versions %v",
		r.Sent, r.Seconds, float64(r.Sent)/r.Seconds, r.Failed, r.Cut, r.P50.Round(100*time.Microsecond),
		r.P99.Round(100*time.Microsecond), r.Max.Round(time.Millisecond), r.Versions)
}

// startLoad starts clients sending rate requests per second in all to url.
func startLoad(ctx context.Context, url string, rate, clients int, prefix string) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{url: url, cancel: cancel, version: map[string]int{}}
	work := make(chan int)
	l.done.Add(1)
	go func() { // the pacer
		defer l.done.Done()
		defer close(work)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case work <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range clients {
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute}}
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			for i := range work {
				l.one(client, i, prefix)
			}
		}()
	}
	return l
}

// one sends request i and records it; a request in flight when the load
// stops is finished and counted.
func (l *load) one(client *http.Client, i int, prefix string) {
	var req *http.Request
	want := http.StatusOK
	switch {
	case i%10 == 0:
		body, _ := json.Marshal(map[string]string{"name": fmt.Sprintf("%s-%d", prefix, i)})
		req, _ = http.NewRequest(http.MethodPost, l.url+"/orders/", strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/json")
		want = http.StatusCreated
	case i%2 == 0:
		req, _ = http.NewRequest(http.MethodGet, l.url+"/version", nil)
	default:
		req, _ = http.NewRequest(http.MethodGet, l.url+"/orders/", nil)
	}
	began := time.Now()
	resp, err := client.Do(req)
	cut := err != nil && req.Method == http.MethodPost && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET))
	var body []byte
	if err == nil {
		body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err == nil && resp.StatusCode != want {
			err = fmt.Errorf("%s: %.200s", resp.Status, body)
		}
	}
	took := time.Since(began)
	var version string
	if err == nil && req.URL.Path == "/version" {
		var v struct {
			Version string `json:"version"`
		}
		if json.Unmarshal(body, &v) != nil || v.Version == "" {
			err = fmt.Errorf("no version in %.200q", body)
		}
		version = v.Version
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent++
	l.lat = append(l.lat, took)
	if err != nil {
		l.failed++
		if cut {
			l.cut++
		}
		if len(l.errs) < 10 {
			l.errs = append(l.errs, fmt.Sprintf("%s %s %s: %v", began.UTC().Format("15:04:05.000"), req.Method, req.URL.Path, err))
		}
	} else if version != "" {
		l.version[version]++
	}
}

// stop ends the load, waits for the requests in flight, and reports.
func (l *load) stop(began time.Time) loadReport {
	l.cancel()
	l.done.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	r := loadReport{Sent: l.sent, Failed: l.failed, Cut: l.cut, Seconds: time.Since(began).Seconds(), Versions: l.version, Errors: l.errs}
	sort.Slice(l.lat, func(i, j int) bool { return l.lat[i] < l.lat[j] })
	if n := len(l.lat); n > 0 {
		r.P50 = l.lat[n/2]
		r.P99 = l.lat[min(n-1, n*99/100)]
		r.Max = l.lat[n-1]
	}
	return r
}

// maxCut is how many POSTs cut by a reload (loadReport.Cut) a phase may lose:
// a handful of reloads, 8 clients, a POST every tenth request.
const maxCut = 2

// failures says what a phase's load lost beyond what reloads may cost
// (loadReport.Cut, at most maxCut); "" when nothing else failed.
func (r loadReport) failures() string {
	if r.Failed == r.Cut && r.Cut <= maxCut {
		return ""
	}
	return fmt.Sprintf("%d of %d requests failed, %d of them POSTs cut by a reload (at most %d may be): %v", r.Failed, r.Sent, r.Cut, maxCut, r.Errors)
}
