package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/token"
	"github.com/berth-deploy/berth/internal/testenv"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
)

// socketDeploy sends a deploy to agentd's socket API, as agentctl does,
// and returns the exit code of its result event and its events.
func (h *harness) socketDeploy(req api.DeployRequest) (int, []api.Event, string) {
	h.t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", h.socket)
	}}}
	body, _ := json.Marshal(req)
	resp, err := client.Post("http://agentd/v1/deploy", "application/json", bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	return readEvents(h.t, resp)
}

// readEvents reads a deploy's NDJSON stream (or a refusal's JSON body).
func readEvents(t *testing.T, resp *http.Response) (int, []api.Event, string) {
	t.Helper()
	var all strings.Builder
	var evs []api.Event
	code := -1
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		all.Write(sc.Bytes())
		all.WriteByte('\n')
		var e api.Event
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.ExitCode != nil {
			code = *e.ExitCode
		}
		evs = append(evs, e)
		var refusal api.Error
		if json.Unmarshal(sc.Bytes(), &refusal) == nil && refusal.ExitCode != 0 {
			code = refusal.ExitCode
		}
	}
	return code, evs, all.String()
}

// shipped is a bundle of one compose file, with $REGISTRY replaced.
func (h *harness) shipped(compose string) *api.ComposeBundle {
	return &api.ComposeBundle{Files: map[string]string{"compose.yaml": strings.ReplaceAll(compose, "$REGISTRY", h.reg.Addr)}}
}

// env returns a container's environment, NAME -> value.
func (h *harness) env(name string) map[string]string {
	h.t.Helper()
	c, err := h.docker.ContainerInspect(h.t.Context(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range c.Config.Env {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

// The shipped compose file of step 2: a new environment variable and two
// replicas.
const shippedStack = `
services:
  web:
    image: $REGISTRY/web:v1
    environment:
      GREETING: hello from the repository
    deploy:
      replicas: 2
      update_config: {monitor: 1s}
`

// TestShippedComposeFile: over the socket API (a local user, who may
// ship), a dry run of a shipped file shows its plan and changes nothing; the
// deploy applies it (a new environment variable, a changed replica count)
// and records it verbatim with its source; a shipped file with
// privileged: true is refused with exit code 2 before anything changes; a
// name: in a shipped file does not take the deploy to another project; a
// rollback to the shipped release brings its services back, and its record
// says which files and source it brought back.
func TestShippedComposeFile(t *testing.T) {
	reg := testenv.StartRegistry(t)
	h := newHarness(t, webStack, options{reg: reg, project: fmt.Sprintf("    allowed_images: [%s/*]\n    env_file: app.env\n    request_variables: [WEB_USER]\n", reg.Addr)})
	if err := os.WriteFile(filepath.Join(h.dir, "app.env"), []byte("SECRET_TOKEN=s3cr3t-value-42\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.start()
	h.deploy(0)
	before := h.ids()

	// A dry run: the plan, exit 0, nothing changed, nothing recorded.
	bundle := h.shipped(shippedStack)
	code, evs, out := h.socketDeploy(api.DeployRequest{Project: h.project, Compose: bundle, Source: "3f2c1a0b", DryRun: true})
	if code != 0 {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, h.agentLog)
	}
	plan := ""
	for _, e := range evs {
		if e.Type == api.EventPlan {
			plan = e.Message
		}
	}
	if !strings.Contains(plan, "web") || !strings.Contains(out, "dry run: the deploy would change web; nothing was changed") {
		t.Errorf("dry run: plan %q\n%s", plan, out)
	}
	h.sameIDs(before, "after the dry run")
	if hist := h.history(); len(hist) != 1 {
		t.Errorf("the dry run was recorded: %d releases", len(hist))
	}
	if entries, _ := os.ReadDir(filepath.Join(h.dir, "state", "shipped", h.project)); len(entries) != 0 {
		t.Errorf("the dry run left files in state_dir/shipped: %v", entries)
	}

	// The deploy applies the shipped file.
	code, _, out = h.socketDeploy(api.DeployRequest{Project: h.project, Compose: bundle, Source: "3f2c1a0b", Message: "ship it"})
	if code != 0 {
		t.Fatalf("deploy of a shipped file: exit %d\n%s\n%s", code, out, h.agentLog)
	}
	if !strings.Contains(out, "loading the shipped compose file compose.yaml") {
		t.Errorf("the progress does not say the file was shipped:\n%s", out)
	}
	shippedIDs := h.ids()
	for _, n := range []string{h.project + "-web-1", h.project + "-web-2"} {
		if _, ok := shippedIDs[n]; !ok {
			t.Fatalf("no container %s after the shipped deploy: %s", n, names(shippedIDs))
		}
		if got := h.env(n)["GREETING"]; got != "hello from the repository" {
			t.Errorf("%s: GREETING = %q", n, got)
		}
	}
	if len(shippedIDs) != 2 {
		t.Errorf("containers after the shipped deploy: %s, want 2", names(shippedIDs))
	}
	hist := h.history()
	rel := hist[0]
	if rel.Number != 2 || rel.Outcome != api.OutcomeSucceeded || rel.Source != "3f2c1a0b" || rel.Shipped == nil ||
		!maps.Equal(rel.Shipped.Files, bundle.Files) || rel.Shipped.Main != "compose.yaml" {
		t.Errorf("release 2 record: number %d, outcome %s, source %q, shipped %+v", rel.Number, rel.Outcome, rel.Source, rel.Shipped)
	}
	if hist[1].Shipped != nil || hist[1].Source != "" {
		t.Errorf("release 1 (the host's file) records shipped files %+v, source %q", hist[1].Shipped, hist[1].Source)
	}
	if text, code := h.ctl("history", h.project); code != 0 || !strings.Contains(text, "    source: 3f2c1a0b\n    compose file: shipped compose.yaml\n") {
		t.Errorf("plain history (exit %d) does not show the source and the shipped file:\n%s", code, text)
	}

	// privileged: true is refused, naming service, key and value, and
	// nothing changes.
	bad := h.shipped(strings.Replace(shippedStack, "    environment:", "    privileged: true\n    environment:", 1))
	code, _, out = h.socketDeploy(api.DeployRequest{Project: h.project, Compose: bad, Source: "bad"})
	if code != api.ExitBadRequest {
		t.Fatalf("privileged: exit %d, want 2\n%s", code, out)
	}
	if !strings.Contains(out, `service web: privileged \"true\"`) || strings.Contains(out, "resolving") {
		t.Errorf("the refusal does not name service, key and value, or it came after a resolve:\n%s", out)
	}
	// A dry run gives the same verdict.
	if code, _, out := h.socketDeploy(api.DeployRequest{Project: h.project, Compose: bad, DryRun: true}); code != api.ExitBadRequest || !strings.Contains(out, `service web: privileged \"true\"`) {
		t.Errorf("dry run of the privileged file: exit %d, want 2\n%s", code, out)
	}
	h.sameIDs(shippedIDs, "after the refused privileged file")
	if n := len(h.history()); n != 2 {
		t.Errorf("the refused deploy was recorded: %d releases", n)
	}

	// A host secret the shipped file puts where it is refused is not
	// shown in the refusal (nor logged).
	leak := h.shipped(strings.Replace(shippedStack, "    environment:", "    cap_add: [\"${SECRET_TOKEN}\"]\n    environment:", 1))
	code, _, out = h.socketDeploy(api.DeployRequest{Project: h.project, Compose: leak})
	if code != api.ExitBadRequest || !strings.Contains(out, "service web: cap_add") {
		t.Errorf("cap_add: exit %d, want 2 naming service web: cap_add\n%s", code, out)
	}
	if strings.Contains(out, "s3cr3t-value-42") || strings.Contains(h.agentLog.String(), "s3cr3t-value-42") {
		t.Errorf("the refusal or the log shows the host's secret:\n%s", out)
	}
	// The request policy still applies to the request's variables in a
	// shipped file: they may set an environment value, not a user.
	userFile := h.shipped(strings.Replace(shippedStack, "    environment:", "    user: \"${WEB_USER}\"\n    environment:", 1))
	code, _, out = h.socketDeploy(api.DeployRequest{Project: h.project, Compose: userFile, Env: map[string]string{"WEB_USER": "1000"}})
	if code != api.ExitBadRequest || !strings.Contains(out, "service web: user is set by the request's variable WEB_USER") {
		t.Errorf("user from a request variable: exit %d, want 2 from the request policy\n%s", code, out)
	}
	h.sameIDs(shippedIDs, "after the refused files")
	if n := len(h.history()); n != 2 {
		t.Errorf("a refused deploy was recorded: %d releases", n)
	}

	// name: does not redirect the deploy to another project: the
	// containers and the volume are this project's.
	victim := h.project + "victim"
	t.Cleanup(func() { testenv.RemoveProject(t, h.docker, victim) })
	named := h.shipped(`
name: ` + victim + `
services:
  web:
    image: $REGISTRY/web:v1
    volumes: [data:/data]
    deploy:
      update_config: {monitor: 1s}
volumes:
  data: {}
`)
	code, _, out = h.socketDeploy(api.DeployRequest{Project: h.project, Compose: named, Source: "named"})
	if code != 0 {
		t.Fatalf("a shipped file with name: exit %d\n%s", code, out)
	}
	cs := h.containers()
	if _, ok := cs[h.project+"-web-1"]; !ok || len(cs) != 1 {
		t.Errorf("containers of %s after the name: file: %v", h.project, slices.Collect(maps.Keys(cs)))
	}
	vols, err := h.docker.VolumeList(t.Context(), volume.ListOptions{Filters: filters.NewArgs(filters.Arg("name", victim))})
	if err != nil {
		t.Fatal(err)
	}
	if len(vols.Volumes) != 0 {
		t.Errorf("a volume of project %s was made: %s", victim, vols.Volumes[0].Name)
	}
	if _, err := h.docker.VolumeInspect(t.Context(), h.project+"_data"); err != nil {
		t.Errorf("volume %s_data: %v", h.project, err)
	}
	victims, _ := h.docker.ContainerList(t.Context(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+victim))})
	if len(victims) != 0 {
		t.Errorf("%d containers of project %s", len(victims), victim)
	}

	// A rollback to the shipped release brings its services back and
	// records its files and source.
	if out, code := h.ctl("rollback", h.project, "--to", "2"); code != 0 {
		t.Fatalf("rollback to release 2: exit %d\n%s", code, out)
	}
	after := h.ids()
	if len(after) != 2 {
		t.Errorf("containers after the rollback: %s, want web-1 and web-2", names(after))
	}
	for n := range after {
		if got := h.env(n)["GREETING"]; got != "hello from the repository" {
			t.Errorf("%s after the rollback: GREETING = %q", n, got)
		}
	}
	rel = h.history()[0]
	if rel.Kind != api.KindRollback || rel.RollbackOf != 2 || rel.Source != "3f2c1a0b" || rel.Shipped == nil || !maps.Equal(rel.Shipped.Files, bundle.Files) {
		t.Errorf("rollback record: kind %s of %d, source %q, shipped %+v", rel.Kind, rel.RollbackOf, rel.Source, rel.Shipped)
	}
}

// TestShipComposeNeedsTheIdentityKey: over the HTTP API an identity
// without ship_compose that sends a compose file is refused with exit code
// 4 and nothing changes; one with it deploys the file.
func TestShipComposeNeedsTheIdentityKey(t *testing.T) {
	secret := hex.EncodeToString(bytes.Repeat([]byte{9}, 32))
	secretFile := filepath.Join(t.TempDir(), "hmac")
	os.WriteFile(secretFile, []byte(secret+"\n"), 0o600)
	port := freePort(t)
	reg := testenv.StartRegistry(t)
	h := newHarness(t, webStack, options{reg: reg, project: fmt.Sprintf("    allowed_images: [%s/*]\n", reg.Addr), extra: fmt.Sprintf(`identities:
  - name: ci
    hmac_secret_file: %[1]s
    projects: [$PROJECT]
    verbs: [deploy]
  - name: shipper
    hmac_secret_file: %[1]s
    projects: [$PROJECT]
    verbs: [deploy]
    ship_compose: true
http:
  listen: 127.0.0.1:%[2]s
`, secretFile, port)})
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.start()
	h.deploy(0)
	before := h.ids()

	n := 0
	send := func(identity string, req api.DeployRequest) (int, int, string) {
		n++
		body, _ := json.Marshal(req)
		hr, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:"+port+"/v1/deploy", bytes.NewReader(body))
		token.Sign(hr, identity, []byte(secret), body, time.Now(), fmt.Sprintf("nonce-ship-%020d", n))
		resp, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		code, _, out := readEvents(t, resp)
		return resp.StatusCode, code, out
	}
	bundle := h.shipped(shippedStack)
	status, code, out := send("ci", api.DeployRequest{Project: h.project, Compose: bundle})
	if status != http.StatusForbidden || code != api.ExitDenied || !strings.Contains(out, "may not ship a compose file (ship_compose)") {
		t.Errorf("ci without ship_compose: HTTP %d, exit %d\n%s", status, code, out)
	}
	h.sameIDs(before, "after the refused identity")
	if n := len(h.history()); n != 1 {
		t.Errorf("the refused deploy was recorded: %d releases", n)
	}
	// The same identity may still deploy the host's file.
	if status, code, out := send("ci", api.DeployRequest{Project: h.project}); status != 200 || code != 0 {
		t.Errorf("ci with the host's file: HTTP %d, exit %d\n%s", status, code, out)
	}
	status, code, out = send("shipper", api.DeployRequest{Project: h.project, Compose: bundle, Source: "abc"})
	if status != 200 || code != 0 {
		t.Fatalf("shipper: HTTP %d, exit %d\n%s\n%s", status, code, out, h.agentLog)
	}
	if rel := h.history()[0]; rel.Shipped == nil || rel.Source != "abc" || !strings.HasPrefix(rel.Identity, "shipper (hmac") {
		t.Errorf("the shipped release: identity %q, source %q, shipped %v", rel.Identity, rel.Source, rel.Shipped != nil)
	}
}

// TestShipOnlyProject: a project without a compose file on the host takes
// its compose file from the deploys: the first deploy must ship one (exit 2
// otherwise), a shipped file's relative bind resolves to the shipped copy
// under state_dir, and a later deploy that ships nothing (a new image, say)
// redeploys the live release's files and records them again.
func TestShipOnlyProject(t *testing.T) {
	reg := testenv.StartRegistry(t)
	h := newHarness(t, webStack, options{reg: reg, project: fmt.Sprintf("    allowed_images: [%s/*]\n", reg.Addr)})
	cfg, err := os.ReadFile(h.config)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(cfg, []byte("    compose_file: compose.yaml\n")) {
		t.Fatalf("the harness's config changed:\n%s", cfg)
	}
	os.WriteFile(h.config, bytes.Replace(cfg, []byte("    compose_file: compose.yaml\n"), nil, 1), 0o600)
	os.Remove(filepath.Join(h.dir, "compose.yaml"))
	h.image("web:v1", testenv.Image{Healthcheck: true})
	h.image("web:v2", testenv.Image{Healthcheck: true, Env: map[string]string{"VERSION": "v2"}})
	h.start()

	out := h.deploy(api.ExitBadRequest)
	if !strings.Contains(out, "has no compose_file on this host and its live release did not ship one") {
		t.Errorf("a first deploy without a compose file:\n%s", out)
	}
	bundle := &api.ComposeBundle{Files: map[string]string{
		"deploy/compose.yaml": strings.ReplaceAll(`
services:
  web:
    image: $REGISTRY/web:v1
    volumes: ["./conf/greeting.txt:/greeting.txt:ro"]
    deploy:
      update_config: {monitor: 1s}
`, "$REGISTRY", h.reg.Addr),
		"deploy/conf/greeting.txt": "hello\n",
	}, Main: "deploy/compose.yaml"}
	code, _, out := h.socketDeploy(api.DeployRequest{Project: h.project, Compose: bundle, Source: "v1"})
	if code != 0 {
		t.Fatalf("shipped deploy: exit %d\n%s\n%s", code, out, h.agentLog)
	}
	web := h.project + "-web-1"
	c, err := h.docker.ContainerInspect(t.Context(), web)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(h.dir, "state", "shipped", h.project, bundle.ID(), "deploy", "conf", "greeting.txt")
	if len(c.Mounts) != 1 || c.Mounts[0].Source != want || c.Mounts[0].RW {
		t.Errorf("mounts of %s: %+v, want %s read-only", web, c.Mounts, want)
	}
	if b, err := os.ReadFile(want); err != nil || string(b) != "hello\n" {
		t.Errorf("%s: %q, %v", want, b, err)
	}

	// No compose file in the request: the live release's files, with the
	// request's image.
	out = h.deploy(0, "--image", "web="+h.reg.Ref("web:v2"))
	if !strings.Contains(out, "using the one live release 1 shipped") {
		t.Errorf("a deploy without a compose file does not say which it used:\n%s", out)
	}
	rel := h.history()[0]
	if rel.Number != 2 || rel.Shipped == nil || !maps.Equal(rel.Shipped.Files, bundle.Files) || rel.Shipped.Main != "deploy/compose.yaml" || rel.Source != "" {
		t.Errorf("release 2: number %d, shipped %+v, source %q", rel.Number, rel.Shipped, rel.Source)
	}
	if got := h.env(web)["VERSION"]; got != "v2" {
		t.Errorf("VERSION = %q after the deploy of web:v2", got)
	}
	if _, err := os.Stat(want); err != nil {
		t.Errorf("the shipped file the live release binds: %v", err)
	}

	// A compose file that includes another, shipped with it: a dry run
	// loads both, and shows the change the included file makes.
	included := &api.ComposeBundle{Files: map[string]string{
		"compose.yaml": "include: [services/web.yaml]\n",
		"services/web.yaml": strings.ReplaceAll(`
services:
  web:
    image: $REGISTRY/web:v2
    environment: {FROM_INCLUDE: "yes"}
`, "$REGISTRY", h.reg.Addr),
	}}
	code, _, out = h.socketDeploy(api.DeployRequest{Project: h.project, Compose: included, DryRun: true})
	if code != 0 || !strings.Contains(out, "dry run: the deploy would change web") {
		t.Errorf("dry run of an including file: exit %d\n%s", code, out)
	}
}
