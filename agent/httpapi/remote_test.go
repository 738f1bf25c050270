package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent"
	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
)

// fakeDeployer answers every deploy with events from emit, then exit 0.
type fakeDeployer struct {
	Deployer // the rest is not used
	ids      *auth.Identities
	events   func(emit agent.Emit)
	deploys  atomic.Int32
	done     chan struct{} // closed when a deploy returns, if set
}

func (d *fakeDeployer) Deploy(ctx context.Context, p auth.Principal, req api.DeployRequest, emit agent.Emit) (int, error) {
	d.deploys.Add(1)
	if d.events != nil {
		d.events(emit)
	}
	code := 0
	emit(api.Event{Type: "result", ExitCode: &code})
	if d.done != nil {
		close(d.done)
	}
	return 0, nil
}

func (d *fakeDeployer) Identities() *auth.Identities { return d.ids }

// errClosest is what the token package says of a valid token no identity
// accepts: it names an identity, which a caller must not learn.
var errClosest = errors.New("not allowed: the token's claims match no identity; closest is ci-secret-name, which does not accept ref \"dev\"")

// fakeVerifier accepts the bearer token "good" and the signature "good".
type fakeVerifier struct {
	bearer, hmac atomic.Int32 // calls
}

func (v *fakeVerifier) Bearer(ctx context.Context, raw string) (auth.Principal, error) {
	v.bearer.Add(1)
	switch raw {
	case "good":
		return auth.Principal{Identity: "ci", Method: "oidc"}, nil
	case "other-project":
		return auth.Principal{}, errClosest
	}
	if strings.HasPrefix(raw, "long") {
		return auth.Principal{}, fmt.Errorf("not authenticated: token %s is malformed", raw)
	}
	return auth.Principal{}, errors.New("not authenticated: token is malformed")
}

func (v *fakeVerifier) HMAC(r *http.Request, body []byte) (auth.Principal, error) {
	v.hmac.Add(1)
	if r.Header.Get("X-Berth-Signature") == "good" {
		return auth.Principal{Identity: "ci", Method: "hmac"}, nil
	}
	return auth.Principal{}, errors.New("not authenticated: bad signature")
}

// guardBody fails the test when read before the verifier saw a bearer
// token, and counts its reads.
type guardBody struct {
	t     *testing.T
	v     *fakeVerifier
	r     io.Reader
	reads int
}

func (b *guardBody) Read(p []byte) (int, error) {
	b.reads++
	if b.v.bearer.Load() == 0 {
		b.t.Error("the body was read before the bearer token was verified")
	}
	return b.r.Read(p)
}

func (b *guardBody) Close() error { return nil }

func newRemote(t *testing.T, log io.Writer) (*Remote, *fakeVerifier, *fakeDeployer) {
	t.Helper()
	ids, err := auth.New([]config.Identity{{Name: "ci", Projects: []string{"*"}, Verbs: []string{"*"}}})
	if err != nil {
		t.Fatal(err)
	}
	v := &fakeVerifier{}
	d := &fakeDeployer{ids: ids}
	if log == nil {
		log = io.Discard
	}
	return &Remote{
		Service:   d,
		Verifier:  v,
		Forbidden: func(err error) bool { return strings.HasPrefix(err.Error(), "not allowed") },
		Log:       slog.New(slog.NewTextHandler(log, nil)),
	}, v, d
}

func deployBody() []byte {
	b, _ := json.Marshal(api.DeployRequest{Project: "shop"})
	return b
}

func TestRemoteVerifiesBearerBeforeReadingBody(t *testing.T) {
	for _, tc := range []struct {
		name, auth string
		status     int
		bodyRead   bool
	}{
		{"valid token", "Bearer good", 200, true},
		{"refused token", "Bearer forged", 401, false},
		{"token no identity accepts", "Bearer other-project", 403, false},
		{"no credentials", "", 401, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, v, d := newRemote(t, nil)
			body := &guardBody{t: t, v: v, r: bytes.NewReader(deployBody())}
			req := httptest.NewRequest(http.MethodPost, api.PathDeploy, body)
			req.ContentLength = int64(len(deployBody()))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.status {
				t.Errorf("HTTP %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if read := body.reads > 0; read != tc.bodyRead {
				t.Errorf("body read: %v, want %v", read, tc.bodyRead)
			}
			if want := int32(0); tc.status == 200 {
				if d.deploys.Load() != 1 {
					t.Errorf("deploys = %d, want 1", d.deploys.Load())
				}
			} else if d.deploys.Load() != want {
				t.Errorf("a refused request deployed")
			}
			if tc.status != 200 && rec.Header().Get("Connection") != "close" {
				t.Errorf("a refusal keeps its connection: Connection %q", rec.Header().Get("Connection"))
			}
		})
	}
}

func TestRemoteUnknownRouteSpendsNoCredential(t *testing.T) {
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "/v1/nope"},
		{http.MethodGet, api.PathDeploy}, // a known path, the wrong method
		{http.MethodPost, "/v1//deploy"}, // the mux would redirect it
		{http.MethodPost, api.PathDeploy + "/"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			h, v, _ := newRemote(t, nil)
			body := &guardBody{t: t, v: v, r: bytes.NewReader(deployBody())}
			req := httptest.NewRequest(tc.method, "/", body)
			req.URL.Path = tc.path
			req.ContentLength = int64(len(deployBody()))
			for k, val := range map[string]string{"X-Berth-Identity": "ci", "X-Berth-Timestamp": "1700000000",
				"X-Berth-Nonce": "nonce-0123456789abcdef", "X-Berth-Signature": "good"} {
				req.Header.Set(k, val)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusNotFound {
				t.Errorf("HTTP %d, want 404: %s", rec.Code, rec.Body)
			}
			if n := v.hmac.Load() + v.bearer.Load(); n != 0 {
				t.Errorf("the verifier was called %d times for a route that does not exist", n)
			}
			if body.reads != 0 {
				t.Errorf("the body of a request for no route was read")
			}
		})
	}
}

func TestRemoteRefusalIsGenericAndLogged(t *testing.T) {
	var logged bytes.Buffer
	h, _, _ := newRemote(t, &logged)
	send := func(header, value string) (int, api.Error) {
		req := httptest.NewRequest(http.MethodPost, api.PathDeploy, bytes.NewReader(deployBody()))
		req.Header.Set(header, value)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var e api.Error
		json.Unmarshal(rec.Body.Bytes(), &e)
		return rec.Code, e
	}
	status, e := send("Authorization", "Bearer other-project")
	if status != 403 || e.ExitCode != api.ExitDenied || e.Message != msgForbidden {
		t.Errorf("token no identity accepts: HTTP %d, %+v; want 403, %q, exit 4", status, e, msgForbidden)
	}
	status, e = send("X-Berth-Signature", "forged")
	if status != 401 || e.ExitCode != api.ExitDenied || e.Message != msgUnauthenticated {
		t.Errorf("forged signature: HTTP %d, %+v; want 401, %q, exit 4", status, e, msgUnauthenticated)
	}
	if !strings.Contains(logged.String(), "ci-secret-name") || !strings.Contains(logged.String(), "bad signature") {
		t.Errorf("the log lacks the reasons:\n%s", logged.String())
	}

	// What the caller controls is cut short in the log.
	logged.Reset()
	if status, _ = send("Authorization", "Bearer long"+strings.Repeat("x", 10000)); status != 401 {
		t.Errorf("a 10,000-byte token: HTTP %d, want 401", status)
	}
	if logged.Len() == 0 || logged.Len() > 2000 {
		t.Errorf("a refused 10,000-byte token logs %d bytes:\n%.3000s", logged.Len(), logged.String())
	}
}

// serve runs h behind a Limiter of max connections, as agentd does.
func serve(t *testing.T, h http.Handler, max int) (string, *Limiter) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim := LimitConns(ln, max, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := &http.Server{Handler: h, ConnContext: lim.ConnContext, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Second}
	go srv.Serve(lim)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), lim
}

// closedWithin reports how long the server took to close c, failing
// after limit.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Errorf("connection still open after %s", limit)
	}
	return time.Since(start)
}

func TestRemoteBodyLimits(t *testing.T) {
	h, _, _ := newRemote(t, nil)
	h.MaxBodyBytes = 1000
	h.BodyTimeout = 300 * time.Millisecond
	addr, _ := serve(t, h, 10)

	signed := "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nX-Berth-Signature: good\r\n"
	for _, tc := range []struct {
		name, req string
		status    string
	}{
		{"declared over the limit", signed + "Content-Length: 5000\r\n\r\n", "413"},
		{"chunked over the limit", signed + "Transfer-Encoding: chunked\r\n\r\n7d0\r\n" + strings.Repeat("x", 2000) + "\r\n", "413"},
		{"stalled body", signed + "Content-Length: 900\r\n\r\n{\"proj", "408"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.req)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if !strings.Contains(line, " "+tc.status+" ") {
				t.Fatalf("status line %q (%v), want %s", line, err, tc.status)
			}
			closedWithin(t, c, 3*time.Second)
		})
	}
}

func TestRemoteStreamOutlivesWriteTimeout(t *testing.T) {
	h, _, d := newRemote(t, nil)
	h.WriteTimeout = 200 * time.Millisecond
	// Events far apart: a global write deadline would cut the stream.
	d.events = func(emit agent.Emit) {
		for i := range 4 {
			time.Sleep(300 * time.Millisecond) // the deploy's own pace, not a wait for an event
			emit(api.Event{Type: "progress", Message: fmt.Sprint(i)})
		}
	}
	addr, _ := serve(t, h, 10)
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+api.PathDeploy, bytes.NewReader(deployBody()))
	req.Header.Set("Authorization", "Bearer good")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	all, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Contains(all, []byte(`"exit_code":0`)) || bytes.Count(all, []byte("\n")) != 5 {
		t.Errorf("stream of 1.2 s with a 200 ms write timeout: %v\n%s", err, all)
	}
}

func TestRemoteCallerThatStopsReadingDoesNotHoldTheDeploy(t *testing.T) {
	h, _, d := newRemote(t, nil)
	h.WriteTimeout = 300 * time.Millisecond
	msg := strings.Repeat("x", 4096)
	d.events = func(emit agent.Emit) {
		for range 5000 { // 20 MB: more than the socket buffers hold
			emit(api.Event{Type: "progress", Message: msg})
		}
	}
	d.done = make(chan struct{})
	addr, _ := serve(t, h, 10)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := deployBody()
	fmt.Fprintf(c, "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	// ...and never reads.
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the deploy is still blocked on a caller that stopped reading")
	}
}

func TestLimiterEvictsOldestUnauthenticated(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim := LimitConns(ln, 2, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer lim.Close()
	accepted := make(chan net.Conn)
	go func() {
		for {
			c, err := lim.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() (client, server net.Conn) {
		t.Helper()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		select {
		case server = <-accepted:
			return client, server
		case <-time.After(5 * time.Second):
			t.Fatal("a connection under the cap was not accepted")
			return nil, nil
		}
	}
	authenticate := func(server net.Conn) { Authenticated(lim.ConnContext(t.Context(), server)) }
	open := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		ne, ok := errors.AsType[net.Error](err)
		return ok && ne.Timeout()
	}

	c1, s1 := dial()
	c2, _ := dial()
	c3, s3 := dial() // the cap: c1, the oldest unauthenticated, goes
	if open(c1) || !open(c2) || !open(c3) {
		t.Fatalf("after a third connection over a cap of 2: open %v %v %v, want false true true", open(c1), open(c2), open(c3))
	}
	authenticate(s3)
	c4, s4 := dial() // c2 is now the only unauthenticated one
	if open(c2) || !open(c3) || !open(c4) {
		t.Fatalf("after a fourth: open %v %v %v, want false true true", open(c2), open(c3), open(c4))
	}
	if n, u := lim.Open(); n != 2 || u != 1 {
		t.Errorf("open %d, unauthenticated %d; want 2, 1", n, u)
	}
	authenticate(s4)
	// Every connection has authenticated: a new one is refused.
	c5, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c5.Close()
	if open(c5) || !open(c3) || !open(c4) {
		t.Fatalf("over a cap of authenticated connections: open %v %v %v, want false true true", open(c5), open(c3), open(c4))
	}
	// Closing one makes room.
	s3.Close()
	c6, _ := dial()
	if !open(c6) {
		t.Error("no room after a connection closed")
	}
	s1.Close() // closing an evicted connection again changes no count
	if n, u := lim.Open(); n != 2 || u != 1 {
		t.Errorf("open %d, unauthenticated %d; want 2, 1", n, u)
	}
}

func TestLimiterLetsASignedRequestThroughAFlood(t *testing.T) {
	h, _, d := newRemote(t, nil)
	h.BodyTimeout = time.Minute // longer than the test: only eviction helps
	addr, lim := serve(t, h, 8)
	// Eight connections that send headers asking for a body, then stall.
	var flood []net.Conn
	for range 8 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nX-Berth-Signature: forged\r\nContent-Length: 900\r\n\r\n{")
		flood = append(flood, c)
	}
	waitFor(t, func() bool { n, _ := lim.Open(); return n == 8 })
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+api.PathDeploy, bytes.NewReader(deployBody()))
			req.Header.Set("X-Berth-Signature", "good")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			if all, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || !bytes.Contains(all, []byte(`"exit_code":0`)) {
				t.Errorf("signed deploy during the flood: HTTP %d\n%s", resp.StatusCode, all)
			}
		})
	}
	wg.Wait()
	if d.deploys.Load() != 3 {
		t.Errorf("deploys = %d, want 3", d.deploys.Load())
	}
	evicted := 0
	for _, c := range flood {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := io.Copy(io.Discard, c); err == nil {
			evicted++ // EOF: closed by the server
		}
	}
	if evicted < 1 {
		t.Errorf("no flood connection evicted")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(5 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatal("condition not met within 5s")
		}
	}
}
