package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/agent/token"
	"github.com/berth-deploy/berth/internal/testenv"
)

// Targets of the HTTP API under attack, with agentd's default limits.
const (
	maxAgentRSS  = 60 << 20         // bytes
	maxHeldOpen  = 15 * time.Second // from an attacker's stall to its connection's close
	attackWindow = 25 * time.Second // how long the attacker waits for closes before it gives up
)

// TestHTTPTrust attacks the HTTP API as an unauthenticated client would,
// on loopback, and holds agentd to its targets: under 60 MB of RSS, every
// attacking connection closed within 15 s, and a signed deploy during each
// flood succeeds. It prints the figures.
func TestHTTPTrust(t *testing.T) {
	secret := hex.EncodeToString(bytes.Repeat([]byte{9}, 32))
	secretFile := filepath.Join(t.TempDir(), "hmac")
	os.WriteFile(secretFile, []byte(secret+"\n"), 0o600)
	port := freePort(t)
	h := newHarness(t, webStack, options{extra: fmt.Sprintf(`identities:
  - name: signer
    hmac_secret_file: %s
    projects: [$PROJECT]
    verbs: [deploy]
http:
  listen: 127.0.0.1:%s
`, secretFile, port)})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.start()
	addr := "127.0.0.1:" + port
	base := "http://" + addr
	rss := watchRSS(t, h.agentd.Process.Pid)
	t.Logf("agentd RSS at start: %.1f MB", mb(rss.now()))

	signedDeploy := func(what string) {
		t.Helper()
		body, _ := json.Marshal(api.DeployRequest{Project: h.project, Message: "during " + what})
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/deploy", bytes.NewReader(body))
		token.Sign(req, "signer", []byte(secret), body, time.Now(), nonce())
		start := time.Now()
		// A fresh connection: the flood must not keep a new client out.
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Minute}
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("signed deploy during %s: %v", what, err)
			return
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !bytes.Contains(out, []byte(`"exit_code":0`)) {
			t.Errorf("signed deploy during %s: HTTP %d\n%s\nagentd:\n%s", what, resp.StatusCode, out, h.agentLog)
			return
		}
		t.Logf("%s: a signed deploy succeeded (exit 0) in %.1f s", what, time.Since(start).Seconds())
	}

	// The signed headers an attacker can copy from any request: a real
	// identity, a fresh timestamp and nonce, a signature that is wrong.
	signedHead := func(method, path string, length int) string {
		return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
			"X-Berth-Identity: signer\r\nX-Berth-Timestamp: %d\r\nX-Berth-Nonce: %s\r\nX-Berth-Signature: %s\r\n\r\n",
			method, path, addr, length, time.Now().Unix(), nonce(), strings.Repeat("ab", 32))
	}
	// stallAfter sends a body of n bytes (of declared) after signed
	// headers, then nothing.
	stallAfter := func(declared, n int) func(c net.Conn) {
		return func(c net.Conn) {
			io.WriteString(c, signedHead("POST", "/v1/deploy", declared))
			c.Write(bytes.Repeat([]byte("x"), n))
		}
	}
	attacks := []struct {
		name  string
		conns int
		// send is what the attacker sends before it stalls; it returns
		// when the stall begins.
		send func(c net.Conn)
		// during runs while the connection stalls (a drip); nil: nothing.
		during func(c net.Conn, closed <-chan struct{})
	}{
		{"(a) 150 connections sending a 1,040,000-byte body, then stalling", 150, stallAfter(1048576, 1040000), nil},
		{"(a') 150 connections sending a body just under the default max_body_bytes, then stalling", 150,
			stallAfter(config.DefaultHTTPMaxBody, config.DefaultHTTPMaxBody-100), nil},
		{"(b) 100 connections dripping a body at 1,000 bytes every 2 s", 100, func(c net.Conn) {
			io.WriteString(c, signedHead("POST", "/v1/deploy", 200000))
		}, func(c net.Conn, closed <-chan struct{}) {
			tick := time.NewTicker(2 * time.Second)
			defer tick.Stop()
			for {
				if _, err := c.Write(bytes.Repeat([]byte("x"), 1000)); err != nil {
					return
				}
				select {
				case <-tick.C:
				case <-closed:
					return
				}
			}
		}},
		{"(c) 100 idle keep-alive connections after GET /healthz", 100, func(c net.Conn) {
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			c.SetReadDeadline(time.Time{})
		}, nil},
	}
	for _, a := range attacks {
		rss.resetPeak()
		res := attack(t, addr, a.conns, a.send, a.during, func() { signedDeploy(a.name) })
		peak := rss.peak()
		t.Logf("%s: %d of %d connections closed by agentd, the last %.1f s after its stall (median %.1f s); agentd peak RSS %.1f MB",
			a.name, res.closed, a.conns, res.slowest.Seconds(), res.median.Seconds(), mb(peak))
		if res.closed < a.conns {
			t.Errorf("%s: %d of %d connections still open after %s", a.name, a.conns-res.closed, a.conns, attackWindow)
		} else if res.slowest > maxHeldOpen {
			t.Errorf("%s: a connection was held %.1f s, want at most %s", a.name, res.slowest.Seconds(), maxHeldOpen)
		}
		if peak > maxAgentRSS {
			t.Errorf("%s: agentd peak RSS %.1f MB, want under %.0f MB", a.name, mb(peak), mb(maxAgentRSS))
		}
	}
	hwm := rss.hwm()
	t.Logf("agentd RSS high-water mark (VmHWM) over the whole test: %.1f MB", mb(hwm))
	if hwm > maxAgentRSS {
		t.Errorf("agentd VmHWM %.1f MB, want under %.0f MB", mb(hwm), mb(maxAgentRSS))
	}
}

// TestHTTPHeldLimits: what held when the HTTP API was attacked, and must
// keep holding: a 10 MB body gets 413, headers sent slowly are cut off
// after 10-12 s (the 1 MB header's 431 is in TestHTTPAPIWithTokens).
func TestHTTPHeldLimits(t *testing.T) {
	port := freePort(t)
	h := newHarness(t, webStack, options{extra: fmt.Sprintf("http:\n  listen: 127.0.0.1:%s\n", port)})
	h.start()
	addr := "127.0.0.1:" + port

	var wg sync.WaitGroup
	wg.Go(func() {
		// Headers one byte a second, never finished.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		start := time.Now()
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			c.SetReadDeadline(start.Add(20 * time.Second))
			io.Copy(io.Discard, c)
		}()
		head := "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("s", 100)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			if _, err := c.Write([]byte{head[i%len(head)]}); err != nil {
				break
			}
			select {
			case <-tick.C:
				continue
			case <-closed:
			}
			break
		}
		<-closed
		held := time.Since(start)
		t.Logf("slow headers: closed by agentd after %.1f s", held.Seconds())
		if held < 9500*time.Millisecond || held > 14*time.Second {
			t.Errorf("slow headers closed after %.1f s, want 10-12 s (header_timeout 10s)", held.Seconds())
		}
	})

	// A 10 MB body: 413, whatever the credential. Written by hand, so that
	// the answer is read even while agentd refuses the rest of the body.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/deploy HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nX-Berth-Identity: nobody\r\n"+
		"X-Berth-Timestamp: %d\r\nX-Berth-Nonce: %s\r\nX-Berth-Signature: %s\r\n\r\n",
		addr, 10<<20, time.Now().Unix(), nonce(), strings.Repeat("ab", 32))
	go c.Write(bytes.Repeat([]byte("x"), 10<<20)) // fails once agentd closes
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); !strings.HasPrefix(line, "HTTP/1.1 413 ") {
		t.Errorf("a 10 MB body: status line %q (%v), want 413", line, err)
	}
	wg.Wait()
}

type attackResult struct {
	closed          int           // connections agentd closed within attackWindow
	slowest, median time.Duration // from a connection's stall to its close
}

// attack opens n connections to addr, each sending what send sends and
// then stalling (running during, if set), and measures when agentd closes
// each. Once every connection has stalled it runs meanwhile. It never
// keeps a connection past attackWindow.
func attack(t *testing.T, addr string, n int, send func(net.Conn), during func(net.Conn, <-chan struct{}), meanwhile func()) attackResult {
	t.Helper()
	held := make([]time.Duration, n)
	closed := make([]bool, n)
	var stalled, done sync.WaitGroup
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("attack: dial %d: %v", i, err)
		}
		stalled.Add(1)
		done.Go(func() {
			defer c.Close()
			send(c)
			stall := time.Now()
			stalled.Done()
			gone := make(chan struct{})
			if during != nil {
				go during(c, gone)
			}
			c.SetReadDeadline(stall.Add(attackWindow))
			_, err := io.Copy(io.Discard, c)
			close(gone)
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				return // still open: not closed by agentd
			}
			held[i], closed[i] = time.Since(stall), true
		})
	}
	stalled.Wait()
	meanwhile()
	done.Wait()
	var res attackResult
	var times []time.Duration
	for i := range n {
		if closed[i] {
			res.closed++
			times = append(times, held[i])
			res.slowest = max(res.slowest, held[i])
		}
	}
	if len(times) > 0 {
		slices.Sort(times)
		res.median = times[len(times)/2]
	}
	return res
}

// rssWatch samples a process's resident memory from /proc.
type rssWatch struct {
	t      *testing.T
	pid    int
	mu     sync.Mutex
	max    int64
	stop   chan struct{}
	closed sync.WaitGroup
}

func watchRSS(t *testing.T, pid int) *rssWatch {
	w := &rssWatch{t: t, pid: pid, stop: make(chan struct{})}
	w.closed.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				if v := w.now(); v > 0 {
					w.mu.Lock()
					w.max = max(w.max, v)
					w.mu.Unlock()
				}
			case <-w.stop:
				return
			}
		}
	})
	t.Cleanup(func() { close(w.stop); w.closed.Wait() })
	return w
}

// status reads a field of /proc/PID/status, in bytes (0 when the process
// is gone).
func (w *rssWatch) status(field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (w *rssWatch) now() int64 { return w.status("VmRSS") }
func (w *rssWatch) hwm() int64 { return w.status("VmHWM") }

func (w *rssWatch) peak() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return max(w.max, w.now())
}

func (w *rssWatch) resetPeak() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.max = w.now()
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// nonce is a fresh HMAC nonce.
func nonce() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TestHTTPRefusalsTellNothing: a refused credential learns no identity
// name and no claim (agentd's log has them), and a signed request for a
// path that does not exist spends no nonce.
func TestHTTPRefusalsTellNothing(t *testing.T) {
	gl := newGitLab(t)
	secret := hex.EncodeToString(bytes.Repeat([]byte{5}, 32))
	secretFile := filepath.Join(t.TempDir(), "hmac")
	os.WriteFile(secretFile, []byte(secret+"\n"), 0o600)
	port := freePort(t)
	h := newHarness(t, webStack, options{extra: fmt.Sprintf(`identities:
  - name: ci-shop-production
    gitlab: {project_path: group/shop, ref: main, environment: production}
    projects: [$PROJECT]
    verbs: [status]
  - name: signer
    hmac_secret_file: %s
    projects: [$PROJECT]
    verbs: [status]
http:
  listen: 127.0.0.1:%s
  oidc:
    issuer: %s
    audience: berth
    jwks_url: %s/jwks
`, secretFile, port, gl.srv.URL, gl.srv.URL)})
	h.start()
	base := "http://127.0.0.1:" + port
	status := func() *http.Request {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/status?project="+h.project, nil)
		return req
	}

	// A valid token for another environment: 403, and nothing more.
	req := status()
	req.Header.Set("Authorization", "Bearer "+gl.token(t, map[string]any{"environment": "staging"}))
	code, _, out := call(t, req)
	if code != 403 || !strings.Contains(out, `"exit_code":4`) || !strings.Contains(out, "forbidden: no identity accepts this token") {
		t.Errorf("a token no identity accepts: HTTP %d\n%s", code, out)
	}
	for _, word := range []string{"ci-shop-production", "environment", "staging"} {
		if strings.Contains(out, word) {
			t.Errorf("the refusal tells the caller %q:\n%s", word, out)
		}
	}
	// A forged signature: 401, and nothing more.
	req = status()
	token.Sign(req, "signer", bytes.Repeat([]byte("k"), 32), nil, time.Now(), nonce())
	if code, _, out = call(t, req); code != 401 || strings.TrimSpace(out) != `{"error":"not authenticated","exit_code":4}` {
		t.Errorf("a forged signature: HTTP %d\n%s", code, out)
	}

	// A correctly signed request for no endpoint is answered 404 and its
	// nonce stays unspent: the same nonce then works on a real path.
	n := nonce()
	req, _ = http.NewRequest(http.MethodGet, base+"/v1/no-such-thing", nil)
	token.Sign(req, "signer", []byte(secret), nil, time.Now(), n)
	if code, _, out = call(t, req); code != 404 {
		t.Errorf("a signed request for no endpoint: HTTP %d, want 404\n%s", code, out)
	}
	req = status()
	token.Sign(req, "signer", []byte(secret), nil, time.Now(), n)
	if code, _, out = call(t, req); code != 200 {
		t.Errorf("the nonce of a request for no endpoint was spent: HTTP %d, want 200\n%s", code, out)
	}

	// agentd's log has the reasons.
	h.stop()
	log := h.agentLog.String()
	for _, want := range []string{"ci-shop-production", "environment", "bad signature"} {
		if !strings.Contains(log, want) {
			t.Errorf("agentd's log lacks %q:\n%s", want, log)
		}
	}
}
