package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
)

// socketAPI is a fake agentd on a unix socket in t.TempDir(), speaking the
// socket API's wire types (agent/api): each path answers as the test
// sets it, and every request is kept.
type socketAPI struct {
	socket string
	mu     sync.Mutex
	calls  []call
	answer map[string]http.HandlerFunc // by "METHOD /path"
}

// call is one request agentd got.
type call struct {
	method, path, query string
	body                []byte
}

func newSocketAPI(t *testing.T) *socketAPI {
	t.Helper()
	f := &socketAPI{socket: filepath.Join(t.TempDir(), "agentd.sock"), answer: map[string]http.HandlerFunc{}}
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.calls = append(f.calls, call{r.Method, r.URL.Path, r.URL.RawQuery, body})
		h := f.answer[r.Method+" "+r.URL.Path]
		f.mu.Unlock()
		if h == nil {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(api.Error{Message: "no such endpoint", ExitCode: api.ExitBadRequest})
			return
		}
		h(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return f
}

// on sets the answer of one path.
func (f *socketAPI) on(method, path string, h http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer[method+" "+path] = h
}

func (f *socketAPI) requests() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// events answers a stream of events, as agentd does a deploy's.
func events(evs ...api.Event) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", api.MediaEvents)
		enc := json.NewEncoder(w)
		for _, e := range evs {
			enc.Encode(e)
			w.(http.Flusher).Flush()
		}
	}
}

// answerJSON answers v as agentd answers a status, a history or a lock.
func answerJSON(v any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}
}

// refusal answers an api.Error, as agentd refuses a request.
func refusal(status, code int, msg string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(api.Error{Message: msg, ExitCode: code})
	}
}

func exitCodeOf(n int) *int { return &n }

// agentctl runs agentctl against socket and returns its exit code, stdout
// and stderr.
func agentctl(t *testing.T, socket string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), append([]string{"--socket", socket}, args...), strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

var at = time.Date(2026, 11, 30, 7, 0, 0, 0, time.Local)

// deploy sends the request its flags make, prints the streamed events as
// text (or, with --json, as they came), and exits with the result's code.
func TestDeployStreamsAndExitsWithTheResult(t *testing.T) {
	f := newSocketAPI(t)
	f.on("POST", api.PathDeploy, events(
		api.Event{Time: at, Type: api.EventProgress, Project: "shop", Message: "resolving 2 images"},
		api.Event{Time: at, Type: api.EventPlan, Project: "shop", Message: "web: replace\nworker: keep"},
		api.Event{Time: at, Type: api.EventProgress, Project: "shop", Service: "web", Message: "health check failed"},
		api.Event{Time: at, Type: api.EventResult, Project: "shop", Message: "release 4 failed; release 3 is serving again", ExitCode: exitCodeOf(api.ExitRolledBack)},
	))
	code, out, errOut := agentctl(t, f.socket, "deploy", "shop", "--image", "web=reg/web:v2", "--image", "worker=reg/w:v2",
		"-m", "fix the cart", "--wait", "30s", "--timeout", "5m")
	if code != api.ExitRolledBack || errOut != "" {
		t.Errorf("exit %d, stderr %q; want 1 and nothing", code, errOut)
	}
	want := "07:00:00 resolving 2 images\n07:00:00 web: replace\n07:00:00 worker: keep\n07:00:00 [web] health check failed\n" +
		"07:00:00 FAILED (exit 1): release 4 failed; release 3 is serving again\n"
	if out != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", out, want)
	}
	reqs := f.requests()
	var req api.DeployRequest
	if len(reqs) != 1 || json.Unmarshal(reqs[0].body, &req) != nil {
		t.Fatalf("requests: %+v", reqs)
	}
	if req.Project != "shop" || req.Images["web"] != "reg/web:v2" || req.Images["worker"] != "reg/w:v2" || req.Message != "fix the cart" ||
		req.Wait != 30*time.Second || req.Timeout != 5*time.Minute || req.DryRun || req.Compose != nil {
		t.Errorf("request %+v", req)
	}

	// --json: the events as they came, one a line.
	code, out, _ = agentctl(t, f.socket, "deploy", "shop", "--json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last api.Event
	if code != api.ExitRolledBack || len(lines) != 4 || json.Unmarshal([]byte(lines[3]), &last) != nil || last.ExitCode == nil || *last.ExitCode != 1 {
		t.Errorf("--json: exit %d\n%s", code, out)
	}

	// A live release: exit 0.
	f.on("POST", api.PathDeploy, events(api.Event{Time: at, Type: api.EventResult, Message: "release 5 is live", ExitCode: exitCodeOf(0)}))
	if code, out, _ := agentctl(t, f.socket, "deploy", "shop"); code != 0 || out != "07:00:00 ok: release 5 is live\n" {
		t.Errorf("exit %d, %q", code, out)
	}
}

// A stream that ends without a result (agentd went away mid-deploy) is
// exit 5: nobody here knows what is live.
func TestDeployStreamCutShort(t *testing.T) {
	f := newSocketAPI(t)
	f.on("POST", api.PathDeploy, events(api.Event{Time: at, Type: api.EventProgress, Message: "pulling"}))
	code, out, errOut := agentctl(t, f.socket, "deploy", "shop")
	if code != api.ExitBroken || out != "07:00:00 pulling\n" ||
		!strings.Contains(errOut, "the connection to agentd ended before the deploy did") || !strings.Contains(errOut, "agentctl status shop") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	f.on("POST", api.PathDeploy, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "not json\n") })
	if code, _, errOut := agentctl(t, f.socket, "deploy", "shop"); code != api.ExitBroken || !strings.Contains(errOut, "bad event from agentd") {
		t.Errorf("a bad event: exit %d, %q", code, errOut)
	}
}

// rollback sends --to, --message, --wait and --timeout, and exits with
// the result's code.
func TestRollback(t *testing.T) {
	f := newSocketAPI(t)
	f.on("POST", api.PathRollback, events(api.Event{Time: at, Type: api.EventResult, Message: "release 6 is live", ExitCode: exitCodeOf(0)}))
	code, out, _ := agentctl(t, f.socket, "rollback", "shop", "--to", "3", "-m", "bad cart", "--wait", "1m", "--timeout", "10m")
	var req api.RollbackRequest
	reqs := f.requests()
	if code != 0 || out != "07:00:00 ok: release 6 is live\n" || len(reqs) != 1 || json.Unmarshal(reqs[0].body, &req) != nil {
		t.Fatalf("exit %d, %q, %+v", code, out, reqs)
	}
	if req != (api.RollbackRequest{Project: "shop", To: 3, Message: "bad cart", Wait: time.Minute, Timeout: 10 * time.Minute}) {
		t.Errorf("request %+v", req)
	}
	f.on("POST", api.PathRollback, events(api.Event{Time: at, Type: api.EventResult, Message: "locked", ExitCode: exitCodeOf(api.ExitLocked)}))
	if code, _, _ := agentctl(t, f.socket, "rollback", "shop"); code != api.ExitLocked {
		t.Errorf("locked: exit %d, want 3", code)
	}
}

// status and history: text, and --json; history marks the live release,
// which it asks status for.
func TestStatusAndHistory(t *testing.T) {
	f := newSocketAPI(t)
	live := &api.Release{Project: "shop", Number: 2, Finished: at, Identity: "ci-shop (ssh SHA256:x)", Message: "v2"}
	status := []api.ProjectStatus{{Project: "shop", Current: live, Services: []api.ServiceStatus{{Name: "web",
		Containers: []api.ContainerStatus{{Name: "shop-web-1", State: "running", Status: "Up 2 minutes (healthy)", Release: "2", Image: "reg/web@sha256:aa"}}}}}}
	f.on("GET", api.PathStatus, answerJSON(status))
	hist := []api.Release{
		{Project: "shop", Number: 2, Started: at, Kind: api.KindDeploy, Outcome: api.OutcomeSucceeded, Identity: "ci-shop (ssh SHA256:x)",
			Services: map[string]api.ServiceImage{"web": {Pinned: "reg/web@sha256:aa"}}},
		{Project: "shop", Number: 1, Started: at, Kind: api.KindDeploy, Outcome: api.OutcomeRolledBack, Identity: "local:alice", Error: "web: unhealthy"},
	}
	f.on("GET", api.PathHistory, answerJSON(hist))

	code, out, _ := agentctl(t, f.socket, "status", "shop")
	if code != 0 || !strings.Contains(out, "project shop: release 2 live since") || !strings.Contains(out, `(by ci-shop (ssh SHA256:x): "v2")`) ||
		!strings.Contains(out, "shop-web-1") || !strings.Contains(out, "Up 2 minutes (healthy)") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	if r := f.requests(); r[len(r)-1].query != "project=shop" {
		t.Errorf("status shop asked %q", r[len(r)-1].query)
	}
	code, out, _ = agentctl(t, f.socket, "status", "--json")
	var gotStatus []api.ProjectStatus
	if code != 0 || json.Unmarshal([]byte(out), &gotStatus) != nil || len(gotStatus) != 1 || gotStatus[0].Current.Number != 2 {
		t.Errorf("status --json: exit %d\n%s", code, out)
	}
	if r := f.requests(); r[len(r)-1].query != "" {
		t.Errorf("status of every project asked %q", r[len(r)-1].query)
	}

	code, out, _ = agentctl(t, f.socket, "history", "shop")
	if code != 0 || !strings.Contains(out, "* release 2") || !strings.Contains(out, "  release 1") || !strings.Contains(out, "error: web: unhealthy") ||
		!strings.Contains(out, "web  reg/web@sha256:aa") || !strings.HasSuffix(out, "(* = live)\n") {
		t.Errorf("history: exit %d\n%s", code, out)
	}
	code, out, _ = agentctl(t, f.socket, "history", "shop", "--json")
	var gotHist []api.Release
	if code != 0 || json.Unmarshal([]byte(out), &gotHist) != nil || len(gotHist) != 2 || gotHist[1].Error != "web: unhealthy" {
		t.Errorf("history --json: exit %d\n%s", code, out)
	}
	if code, _, errOut := agentctl(t, f.socket, "history"); code != api.ExitBadRequest || !strings.Contains(errOut, "accepts 1 arg") {
		t.Errorf("history without a project: exit %d, %q", code, errOut)
	}
}

// lock needs a message; lock and unlock say who held the project.
func TestLockAndUnlock(t *testing.T) {
	f := newSocketAPI(t)
	if code, _, errOut := agentctl(t, f.socket, "lock", "shop"); code != api.ExitBadRequest || !strings.Contains(errOut, "--message is required") || len(f.requests()) != 0 {
		t.Errorf("lock without a message: exit %d, %q, agentd asked %d times", code, errOut, len(f.requests()))
	}
	f.on("POST", api.PathLock, answerJSON(&api.Holder{Identity: "local:alice", Since: at, Verb: "lock", Message: "db migration"}))
	code, out, _ := agentctl(t, f.socket, "lock", "shop", "-m", "db migration")
	var req api.LockRequest
	reqs := f.requests()
	if code != 0 || out != "shop locked by local:alice: \"db migration\": deploys and rollbacks exit 3 until `agentctl unlock shop`\n" ||
		json.Unmarshal(reqs[len(reqs)-1].body, &req) != nil || req != (api.LockRequest{Project: "shop", Message: "db migration"}) {
		t.Errorf("lock: exit %d, %q, request %+v", code, out, req)
	}
	code, out, _ = agentctl(t, f.socket, "unlock", "shop")
	reqs = f.requests()
	if code != 0 || !strings.HasPrefix(out, "shop unlocked (it was locked by local:alice since ") ||
		json.Unmarshal(reqs[len(reqs)-1].body, &req) != nil || !req.Unlock {
		t.Errorf("unlock: exit %d, %q, request %+v", code, out, req)
	}
	code, out, _ = agentctl(t, f.socket, "unlock", "shop", "--json")
	var h api.Holder
	if code != 0 || json.Unmarshal([]byte(out), &h) != nil || h.Message != "db migration" {
		t.Errorf("unlock --json: exit %d, %q", code, out)
	}
	f.on("POST", api.PathLock, answerJSON(nil))
	if code, out, _ := agentctl(t, f.socket, "unlock", "shop"); code != 0 || out != "shop was not locked\n" {
		t.Errorf("unlock of a free project: exit %d, %q", code, out)
	}
}

// agentd's refusals: its exit code and its words; an answer that is no
// refusal is exit 5; agentd down is exit 2 (nothing was changed), naming
// the socket.
func TestRefusalsAndAgentdDown(t *testing.T) {
	f := newSocketAPI(t)
	f.on("POST", api.PathDeploy, refusal(http.StatusForbidden, api.ExitDenied, "local user mallory is not allowed to use agentd (socket.allow_users)"))
	f.on("GET", api.PathStatus, refusal(http.StatusForbidden, api.ExitDenied, "local user mallory is not allowed to use agentd (socket.allow_users)"))
	f.on("POST", api.PathRollback, refusal(http.StatusBadRequest, api.ExitBadRequest, "decode request: unexpected EOF"))
	f.on("GET", api.PathHistory, refusal(http.StatusNotFound, api.ExitBadRequest, `history "nosuch": unknown project`))
	f.on("POST", api.PathLock, func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) })
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"deploy", "shop"}, api.ExitDenied, "agentctl: local user mallory is not allowed to use agentd (socket.allow_users)\n"},
		{[]string{"status"}, api.ExitDenied, "agentctl: local user mallory is not allowed to use agentd (socket.allow_users)\n"},
		{[]string{"rollback", "shop"}, api.ExitBadRequest, "agentctl: decode request: unexpected EOF\n"},
		{[]string{"history", "nosuch"}, api.ExitBadRequest, "agentctl: history \"nosuch\": unknown project\n"},
		{[]string{"unlock", "shop"}, api.ExitBroken, "agentctl: agentd answered 500 Internal Server Error\n"},
		// Refused before agentd is asked.
		{[]string{"deploy", "shop", "--image", "web"}, api.ExitBadRequest, "agentctl: --image \"web\": want SERVICE=REF\n"},
		{[]string{"deploy", "shop", "--source", "a b"}, api.ExitBadRequest, "--source \"a b\": want a commit or ref"},
		{[]string{"deploy", "shop", "--bogus"}, api.ExitBadRequest, "unknown flag: --bogus"},
		{[]string{"rollback", "shop", "--to", "x"}, api.ExitBadRequest, "invalid argument \"x\" for \"--to\""},
	} {
		code, out, errOut := agentctl(t, f.socket, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.says) || out != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d and %q", tc.args, code, out, errOut, tc.code, tc.says)
		}
	}
	if n := len(f.requests()); n != 5 {
		t.Errorf("agentd was asked %d times, want 5 (the bad flags are refused before)", n)
	}

	down := filepath.Join(t.TempDir(), "agentd.sock") // nobody listens
	for _, args := range [][]string{{"deploy", "shop"}, {"status"}, {"lock", "shop", "-m", "x"}} {
		code, out, errOut := agentctl(t, down, args...)
		if code != api.ExitBadRequest || out != "" || !strings.HasPrefix(errOut, "agentctl: cannot reach agentd at "+down+": ") {
			t.Errorf("%q with agentd down: exit %d, stdout %q, stderr %q; want 2", args, code, out, errOut)
		}
	}
}
