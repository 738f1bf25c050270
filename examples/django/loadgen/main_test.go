package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestKindOf(t *testing.T) {
	var got []string
	for i := range 6 {
		got = append(got, kindOf(i, 3))
	}
	want := []string{postOrder, getOrders, getVersion, postOrder, getVersion, getOrders}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("kinds = %q, want %q", got, want)
	}
	if k := kindOf(0, 0); k != getVersion {
		t.Errorf("with -post-every 0, request 0 is %q, want %q", k, getVersion)
	}
}

// fakeShop answers like the shop, except that every GET /orders/ answers
// 502, every third GET /version outlasts the client's timeout, and every
// other POST answers 201 without an id. It counts what it did.
type fakeShop struct {
	versions, slow, posts, badPosts, orders atomic.Int64
	mu                                      sync.Mutex
	names                                   map[string]bool
}

func (f *fakeShop) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/version":
		if f.versions.Add(1)%3 == 0 {
			f.slow.Add(1)
			time.Sleep(300 * time.Millisecond)
		}
		fmt.Fprint(w, `{"version": "v7"}`)
	case r.Method == http.MethodGet && r.URL.Path == "/orders/":
		f.orders.Add(1)
		http.Error(w, "bad gateway", http.StatusBadGateway)
	case r.Method == http.MethodPost && r.URL.Path == "/orders/":
		var body struct{ Name string }
		json.NewDecoder(r.Body).Decode(&body)
		f.mu.Lock()
		dup := f.names[body.Name]
		f.names[body.Name] = true
		f.mu.Unlock()
		if dup {
			http.Error(w, "duplicate name "+body.Name, http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusCreated)
		if n := f.posts.Add(1); n%2 == 0 {
			f.badPosts.Add(1)
			fmt.Fprint(w, `{"name": "x"}`)
		} else {
			fmt.Fprintf(w, `{"id": %d, "name": %q}`, n, body.Name)
		}
	default:
		http.NotFound(w, r)
	}
}

func TestFailuresAreCounted(t *testing.T) {
	shop := &fakeShop{names: map[string]bool{}}
	srv := httptest.NewServer(shop)
	cfg := config{url: srv.URL, rate: 200, clients: 4, postEvery: 4, timeout: 100 * time.Millisecond, prefix: "t"}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	rec := newRecorder(cfg.url, nil)
	run(ctx, cfg, &http.Client{Timeout: cfg.timeout}, rec)
	srv.Close() // waits for the slow handlers
	sum, ids := rec.summary()

	if sum.Sent < 20 {
		t.Fatalf("only %d requests sent in 0.5s at 200/s", sum.Sent)
	}
	want := map[string]*RequestStats{
		getVersion: {
			Sent:     int(shop.versions.Load()),
			Failed:   int(shop.slow.Load()),
			Outcomes: map[string]int{"200": int(shop.versions.Load() - shop.slow.Load()), "error": int(shop.slow.Load())},
		},
		getOrders: {
			Sent:     int(shop.orders.Load()),
			Failed:   int(shop.orders.Load()),
			Outcomes: map[string]int{"502": int(shop.orders.Load())},
		},
		postOrder: {
			Sent:     int(shop.posts.Load()),
			Failed:   int(shop.badPosts.Load()),
			Outcomes: map[string]int{"201": int(shop.posts.Load())},
		},
	}
	for kind, w := range want {
		got := sum.Requests[kind]
		if got == nil {
			t.Errorf("%s: no stats", kind)
			continue
		}
		// A map with a zero count is the same as one without the key.
		for k, v := range w.Outcomes {
			if v == 0 {
				delete(w.Outcomes, k)
			}
		}
		if fmt.Sprint(*got) != fmt.Sprint(*w) {
			t.Errorf("%s: got %+v, want %+v", kind, *got, *w)
		}
	}
	failed := shop.slow.Load() + shop.orders.Load() + shop.badPosts.Load()
	if sum.Failed != int(failed) || sum.Sent != int(shop.versions.Load()+shop.orders.Load()+shop.posts.Load()) {
		t.Errorf("sent %d, failed %d; the server saw %d failures", sum.Sent, sum.Failed, failed)
	}
	if shop.slow.Load() == 0 || shop.orders.Load() == 0 || shop.badPosts.Load() == 0 {
		t.Fatalf("the test did not exercise every failure: %d slow, %d 502, %d bad posts", shop.slow.Load(), shop.orders.Load(), shop.badPosts.Load())
	}
	if len(ids) != int(shop.posts.Load()-shop.badPosts.Load()) || sum.Created != len(ids) {
		t.Errorf("%d ids (created %d), want %d", len(ids), sum.Created, shop.posts.Load()-shop.badPosts.Load())
	}
	if sum.Versions["v7"] != int(shop.versions.Load()-shop.slow.Load()) {
		t.Errorf("versions %v", sum.Versions)
	}
	if len(sum.Errors) == 0 || len(sum.Errors) > maxErrors {
		t.Errorf("%d errors kept", len(sum.Errors))
	}
}

func TestTransportErrorsAreFailures(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens: every request is refused
	cfg := config{url: srv.URL, rate: 100, clients: 2, postEvery: 2, timeout: time.Second, prefix: "t"}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	rec := newRecorder(cfg.url, nil)
	run(ctx, cfg, &http.Client{Timeout: cfg.timeout}, rec)
	sum, ids := rec.summary()
	if sum.Sent == 0 || sum.Failed != sum.Sent || len(ids) != 0 {
		t.Fatalf("sent %d, failed %d, %d ids: want every request failed", sum.Sent, sum.Failed, len(ids))
	}
	for kind, st := range sum.Requests {
		if st.Outcomes["error"] != st.Sent {
			t.Errorf("%s: outcomes %v", kind, st.Outcomes)
		}
	}
	if !strings.Contains(sum.Errors[0].Error, "refused") {
		t.Errorf("first error %q, want a refused connection", sum.Errors[0].Error)
	}
}

func TestLogLine(t *testing.T) {
	start := time.Date(2026, 11, 30, 8, 1, 2, 345678900, time.FixedZone("CET", 3600))
	ok := logLine(outcome{kind: getVersion, start: start, took: 12345678 * time.Nanosecond}, "200")
	if want := "2026-11-30T07:01:02.345678Z\tGET /version\t200\t12.345ms\tok\n"; ok != want {
		t.Errorf("logLine = %q, want %q", ok, want)
	}
	bad := logLine(outcome{kind: postOrder, start: start, took: time.Second, err: "read: connection reset\nby peer\tx"}, "error")
	if want := "2026-11-30T07:01:02.345678Z\tPOST /orders/\terror\t1000.000ms\tread: connection reset by peer x\n"; bad != want {
		t.Errorf("logLine = %q, want %q", bad, want)
	}
	if _, err := time.Parse(LogTime, strings.SplitN(ok, "\t", 2)[0]); err != nil {
		t.Errorf("the time field does not parse with LogTime: %v", err)
	}
}
