package compose

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
)

const upstreamsPath = "/etc/nginx/berth/upstreams.conf"

// withUpstreams makes the test stack's proxy front web:8080 through an
// upstreams file, and web a single replica.
func withUpstreams(p *types.Project, drain string) {
	proxy := p.Services["proxy"]
	proxy.Extensions = types.Extensions{ExtensionKey: map[string]any{"proxy": map[string]any{
		"fronts": []any{"web:8080"}, "upstreams": upstreamsPath, "drain": drain,
	}}}
	p.Services["proxy"] = proxy
	web := p.Services["web"]
	one := 1
	web.Deploy.Replicas = &one
	p.Services["web"] = web
}

// TestStartFirstDrainsBehindUpstreams: with an upstreams file, the new
// container is written into it and the old one out of it before the
// reload, and the old one is stopped only once it has no connection left;
// the proxy is not reloaded again after the stop (nothing changed for it).
func TestStartFirstDrainsBehindUpstreams(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	withUpstreams(p, "10s")
	apply(t, eng, plan(t, eng, desired(t, p)))
	ids := eng.ids()
	old := ids["shop-web-1"]
	file := "shop-proxy-1:" + upstreamsPath
	if got, want := eng.Files()[file], "server "+eng.IP(old)+":8080;  # shop-web-1\n"; !strings.Contains(got, want) {
		t.Fatalf("the proxy started with upstreams\n%s\nwant a line %q", got, want)
	}

	p.Services["web"] = withImage(p.Services["web"], "registry.test/web:v2")
	retired := "shop-web-1-retired-" + old[:min(8, len(old))]
	eng.SetConnPort(8080)
	eng.SetConns(retired, 3)
	eng.takeCalls()
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true}
	start := time.Now()
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < drainSettle {
		t.Errorf("the old container was stopped %s after the reload, before the proxy settled (%s)", took, drainSettle)
	}
	want := []string{
		"create shop-web-predeploy-2-1", "start shop-web-predeploy-2-1", "hook shop-web-predeploy-2-1 manage migrate", "remove shop-web-predeploy-2-1",
		"rename shop-web-1 " + retired,
		"create shop-web-1", "start shop-web-1", "gate shop-web-1",
		"copy shop-proxy-1 " + upstreamsPath, "exec shop-proxy-1 nginx -t", "exec shop-proxy-1 nginx -s reload",
		"count connections of " + retired + ": 3",
		"count connections of " + retired + ": 2",
		"count connections of " + retired + ": 1",
		"count connections of " + retired + ": 0",
		"stop " + retired,
	}
	if got := eng.takeCalls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	newIP := eng.IP(eng.ids()["shop-web-1"])
	got := eng.Files()[file]
	if !strings.Contains(got, "server "+newIP+":8080;  # shop-web-1\n") || strings.Contains(got, eng.IP(old)) {
		t.Errorf("upstreams after the switch:\n%s\nwant only the new container (%s), not the old (%s)", got, newIP, eng.IP(old))
	}
}

// TestDrainIsBounded: a container that keeps its connections is stopped
// once the proxy's drain period is over.
func TestDrainIsBounded(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	withUpstreams(p, "1500ms")
	apply(t, eng, plan(t, eng, desired(t, p)))
	old := eng.ids()["shop-web-1"]
	retired := "shop-web-1-retired-" + old[:min(8, len(old))]
	eng.SetConnPort(8080)
	eng.SetConns(retired, -1)
	p.Services["web"] = withImage(p.Services["web"], "registry.test/web:v2")
	var said []string
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true,
		Progress: func(service, msg string) { said = append(said, msg) }}
	start := time.Now()
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 1500*time.Millisecond || took > 5*time.Second {
		t.Errorf("apply took %s, want the drain period (1.5s) and not much more", took)
	}
	if !strings.Contains(strings.Join(said, "\n"), "still had") {
		t.Errorf("the end of the drain period was not said:\n%s", strings.Join(said, "\n"))
	}
	if eng.Running(old) {
		t.Error("the old container was not stopped after the drain period")
	}
}

// TestUpstreamsWithoutReadyContainer: a fronted service with no running
// container gets an upstream nginx accepts (a server marked down).
func TestUpstreamsWithoutReadyContainer(t *testing.T) {
	eng := newFakeEngine()
	exec := &Executor{Engine: eng}
	_, files, err := exec.proxyFiles(t.Context(), "shop", &Proxy{Fronts: []string{"web"}, Upstreams: upstreamsPath, Ports: map[string]int{"web": 8000}}, []string{"shop_default"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := files[0].content
	if !strings.Contains(got, "upstream web {\n    server 127.0.0.1:8000 down;") {
		t.Errorf("upstreams:\n%s", got)
	}
}

func TestProxyUpstreamsPolicy(t *testing.T) {
	d := desired(t, func() *types.Project { p := load(t, nil); withUpstreams(p, "7s"); return p }())
	for _, s := range d.Services {
		if s.Name == "proxy" {
			px := s.Policy.Proxy
			if px.Upstreams != upstreamsPath || px.Ports["web"] != 8080 || px.Drain != 7*time.Second || strings.Join(px.Fronts, ",") != "web" {
				t.Errorf("proxy policy = %+v", px)
			}
		}
	}
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte(`services:
  web: {image: x}
  a:
    image: x
    x-berth: {proxy: {fronts: [web], upstreams: /u.conf}}
  b:
    image: x
    x-berth: {proxy: {fronts: ["web:http"], upstreams: u.conf}}
  c:
    image: x
    x-berth: {proxy: {fronts: ["api:80"]}}
`), 0o600)
	_, err := Load(t.Context(), LoadOptions{Name: "p", ComposeFile: file})
	for _, want := range []string{
		"service a: x-berth.proxy.fronts: web: with upstreams or servers, name the port the proxy sends to (web:PORT)",
		`service b: x-berth.proxy.fronts: "web:http": the port must be a number`,
		`service b: x-berth.proxy.upstreams: "u.conf" must be an absolute path`,
		"service c: x-berth.proxy.fronts: no service api",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("load error lacks %q:\n%v", want, err)
		}
	}
}

func TestCountConnections(t *testing.T) {
	// From a gunicorn container: the listener on 8000 (0A), two requests
	// from nginx (one established, one closed by the client: 08), a
	// connection in TIME_WAIT (06) and one of the app's own to PostgreSQL.
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 41 1 0 100 0 0 10 0
   1: 060012AC:1F40 070012AC:A3C2 01 00000000:00000000 00:00000000 00000000     0        0 47 1 0 20 4 30 10 -1
   2: 060012AC:1F40 070012AC:A3C4 08 00000000:00000000 00:00000000 00000000     0        0 48 1 0 20 4 30 10 -1
   3: 060012AC:1F40 070012AC:A3C6 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
   4: 060012AC:C350 020012AC:1538 01 00000000:00000000 00:00000000 00000000     0        0 49 1 0 20 4 30 10 -1
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF0000060012AC:1F40 0000000000000000FFFF0000070012AC:A3D0 01 00000000:00000000 00:00000000 00000000     0        0 50 1 0 20 4 30 10 -1
`
	for _, tc := range []struct{ port, want int }{{8000, 3}, {9000, 0}} {
		// Written in uneven pieces, as an exec's output streams.
		c := &connCounter{ports: []int{tc.port}}
		for chunk := range slices.Chunk([]byte(table), 7) {
			c.Write(chunk)
		}
		if !c.table || c.n != tc.want {
			t.Errorf("connections to %d = %d (table seen: %v), want %d", tc.port, c.n, c.table, tc.want)
		}
	}
}

const serversDir = "/etc/nginx/berth/servers"

// withServers makes the test stack's proxy front web:8080 through server
// lines in serversDir, each with params.
func withServers(p *types.Project, params string) {
	proxy := p.Services["proxy"]
	proxy.Extensions = types.Extensions{ExtensionKey: map[string]any{"proxy": map[string]any{
		"fronts": []any{"web:8080"}, "servers": serversDir, "server_parameters": params, "drain": "10s",
	}}}
	p.Services["proxy"] = proxy
}

// TestServersMode: with x-berth proxy.servers, Berth writes only the
// server lines of web's ready containers, in DIR/web.conf, for the user's
// own upstream block (with its keepalive, least_conn, ...) to include;
// a start-first rollout of two replicas one at a time reloads the proxy
// once per batch and says so at the end.
func TestServersMode(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	withServers(p, "max_fails=3 fail_timeout=10s")
	apply(t, eng, plan(t, eng, desired(t, p)))
	file := "shop-proxy-1:" + serversDir + "/web.conf"
	ids := eng.ids()
	ip := func(name string) string { return eng.IP(eng.ids()[name]) }
	got := eng.Files()[file]
	for _, want := range []string{
		"server " + ip("shop-web-1") + ":8080 max_fails=3 fail_timeout=10s;  # shop-web-1\n",
		"server " + ip("shop-web-2") + ":8080 max_fails=3 fail_timeout=10s;  # shop-web-2\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the proxy started with %s:\n%s\nwant a line %q", file, got, want)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		if !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "server ") {
			t.Errorf("%s holds %q: only server lines (and comments) belong there", file, line)
		}
	}
	if len(eng.Files()) != 1 {
		t.Errorf("files written: %v, want only %s", slices.Sorted(maps.Keys(eng.Files())), file)
	}

	old1, old2 := ids["shop-web-1"], ids["shop-web-2"]
	p.Services["web"] = withImage(p.Services["web"], "registry.test/web:v2")
	eng.SetConnPort(8080)
	eng.takeCalls()
	var said []string
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true,
		Progress: func(service, msg string) { said = append(said, service+": "+msg) }}
	if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
		t.Fatal(err)
	}
	calls := eng.takeCalls()
	if n := slices.Index(calls, "exec shop-proxy-1 nginx -s reload"); n < 1 || calls[n-2] != "copy shop-proxy-1 "+serversDir+"/web.conf" {
		t.Errorf("the servers file was not written before the reload:\n%s", strings.Join(calls, "\n"))
	}
	if n := strings.Count(strings.Join(calls, "\n"), "nginx -s reload"); n != 2 {
		t.Errorf("%d reloads for two batches, want 2:\n%s", n, strings.Join(calls, "\n"))
	}
	if got := exec.Reloads(); got["proxy"] != 2 || len(got) != 1 {
		t.Errorf("reloads = %v, want proxy: 2", got)
	}
	if last := said[len(said)-1]; last != "proxy: reloaded 2 times in this rollout" {
		t.Errorf("the last progress line is %q, want the reload count:\n%s", last, strings.Join(said, "\n"))
	}
	got = eng.Files()[file]
	for _, name := range []string{"shop-web-1", "shop-web-2"} {
		if !strings.Contains(got, "server "+ip(name)+":8080 max_fails=3 fail_timeout=10s;  # "+name+"\n") {
			t.Errorf("after the rollout %s lacks the new %s:\n%s", file, name, got)
		}
	}
	for _, id := range []string{old1, old2} {
		if strings.Contains(got, eng.IP(id)+":") {
			t.Errorf("after the rollout %s still lists an old container (%s):\n%s", file, eng.IP(id), got)
		}
	}
}

// TestServersWithoutReadyContainer: a fronted service with no ready
// container gets a server marked down, so the user's upstream block stays
// valid.
func TestServersWithoutReadyContainer(t *testing.T) {
	eng := newFakeEngine()
	exec := &Executor{Engine: eng}
	dir, files, err := exec.proxyFiles(t.Context(), "shop", &Proxy{Fronts: []string{"web", "api"}, Servers: serversDir + "/",
		Ports: map[string]int{"web": 8000, "api": 9000}, ServerParameters: []string{"max_fails=2"}}, []string{"shop_default"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if dir != "/etc/nginx/berth" || len(files) != 3 || !files[0].dir || files[0].name != "servers" ||
		files[1].name != "servers/web.conf" || files[2].name != "servers/api.conf" {
		t.Fatalf("dir %s, files %+v", dir, files)
	}
	if !strings.HasSuffix(files[1].content, "\nserver 127.0.0.1:8000 down;  # no container of web is ready\n") ||
		!strings.HasSuffix(files[2].content, "\nserver 127.0.0.1:9000 down;  # no container of api is ready\n") {
		t.Errorf("servers files:\n%s\n%s", files[1].content, files[2].content)
	}
}

// TestReloadCount: a start-first batch reloads a proxy with an upstreams
// file once (the new container in and the old one out in one reload), and
// a proxy that resolves the service's name twice (to learn the new
// container, then to forget the stopped one); a stop-first batch twice
// (the old one out to drain it, the new one in); the count ends the
// output.
func TestReloadCount(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(*types.Project)
		want  int
	}{
		{"dns", func(p *types.Project) {
			web := p.Services["web"]
			one := 1
			web.Deploy.Replicas = &one
			p.Services["web"] = web
		}, 2},
		{"upstreams", func(p *types.Project) { withUpstreams(p, "1s") }, 1},
		{"servers", func(p *types.Project) {
			withServers(p, "")
			web := p.Services["web"]
			one := 1
			web.Deploy.Replicas = &one
			p.Services["web"] = web
		}, 1},
		{"servers-stop-first", func(p *types.Project) {
			withServers(p, "")
			web := p.Services["web"]
			one := 1
			web.Deploy.Replicas = &one
			web.Deploy.UpdateConfig = &types.UpdateConfig{Order: StopFirst}
			p.Services["web"] = web
		}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng := newFakeEngine()
			p := load(t, nil)
			tc.setup(p)
			apply(t, eng, plan(t, eng, desired(t, p)))
			p.Services["web"] = withImage(p.Services["web"], "registry.test/web:v2")
			var said []string
			exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true,
				Progress: func(service, msg string) { said = append(said, service+": "+msg) }}
			if err := exec.Apply(t.Context(), plan(t, eng, desired(t, p))); err != nil {
				t.Fatal(err)
			}
			times := "times"
			if tc.want == 1 {
				times = "time"
			}
			want := fmt.Sprintf("proxy: reloaded %d %s in this rollout", tc.want, times)
			if got := exec.Reloads()["proxy"]; got != tc.want || said[len(said)-1] != want {
				t.Errorf("reloads %d, last line %q; want %d and %q", got, said[len(said)-1], tc.want, want)
			}
		})
	}
}

func TestProxyServersPolicy(t *testing.T) {
	d := desired(t, func() *types.Project { p := load(t, nil); withServers(p, "max_fails=3  fail_timeout=10s"); return p }())
	for _, s := range d.Services {
		if s.Name == "proxy" {
			px := s.Policy.Proxy
			if px.Servers != serversDir || px.Upstreams != "" || px.Ports["web"] != 8080 ||
				strings.Join(px.ServerParameters, ",") != "max_fails=3,fail_timeout=10s" {
				t.Errorf("proxy policy = %+v", px)
			}
		}
	}
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte(`services:
  web: {image: x}
  a:
    image: x
    x-berth: {proxy: {fronts: [web], servers: /s}}
  b:
    image: x
    x-berth: {proxy: {fronts: ["web:80"], servers: etc/nginx/servers}}
  c:
    image: x
    x-berth: {proxy: {fronts: ["web:80"], servers: /s, upstreams: /u.conf}}
  d:
    image: x
    x-berth: {proxy: {fronts: ["web:80"], servers: /s, server_parameters: "max_fails=3 down weight=x fail_timeout=5s;"}}
  e:
    image: x
    x-berth: {proxy: {fronts: ["web:80"], server_parameters: "max_fails=3"}}
  f:
    image: x
    x-berth: {proxy: {fronts: ["web:80"], servers: /, drain: -1s}}
  ok:
    image: x
    x-berth: {proxy: {fronts: ["web:80"], servers: /s, server_parameters: "weight=2 max_conns=10 max_fails=0 fail_timeout=1m"}}
`), 0o600)
	_, err := Load(t.Context(), LoadOptions{Name: "p", ComposeFile: file})
	for _, want := range []string{
		"service a: x-berth.proxy.fronts: web: with upstreams or servers, name the port the proxy sends to (web:PORT)",
		`service b: x-berth.proxy.servers: "etc/nginx/servers" must be the absolute path of a directory`,
		"service c: x-berth.proxy: upstreams and servers are two ways to write the same upstreams: choose one",
		`service d: x-berth.proxy.server_parameters: "down" is not one of`,
		`service d: x-berth.proxy.server_parameters: "weight=x" is not one of`,
		`service d: x-berth.proxy.server_parameters: "fail_timeout=5s;" is not one of`,
		"service e: x-berth.proxy.server_parameters: only with upstreams or servers",
		`service f: x-berth.proxy.servers: "/" must be the absolute path of a directory`,
		"service f: x-berth.proxy.drain: -1s must not be negative",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("load error lacks %q:\n%v", want, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "service ok") {
		t.Errorf("valid server parameters refused:\n%v", err)
	}
}

// TestUpstreamsServerParameters: in the upstreams mode too, the server
// parameters are on every server line Berth writes (not on a down one).
func TestUpstreamsServerParameters(t *testing.T) {
	eng := newFakeEngine()
	p := load(t, nil)
	withUpstreams(p, "1s")
	p.Services["proxy"].Extensions[ExtensionKey].(map[string]any)["proxy"].(map[string]any)["server_parameters"] = "weight=2 max_fails=1"
	apply(t, eng, plan(t, eng, desired(t, p)))
	ip := eng.IP(eng.ids()["shop-web-1"])
	got := eng.Files()["shop-proxy-1:"+upstreamsPath]
	if want := "upstream web {\n    server " + ip + ":8080 weight=2 max_fails=1;  # shop-web-1\n}\n"; !strings.Contains(got, want) {
		t.Errorf("upstreams:\n%s\nwant %q", got, want)
	}
	exec := &Executor{Engine: newFakeEngine()}
	_, files, err := exec.proxyFiles(t.Context(), "shop", &Proxy{Fronts: []string{"web"}, Upstreams: upstreamsPath,
		Ports: map[string]int{"web": 8000}, ServerParameters: []string{"max_fails=1"}}, nil, nil)
	if err != nil || !strings.Contains(files[0].content, "    server 127.0.0.1:8000 down;  #") {
		t.Errorf("upstreams of a service with no container (%v):\n%s", err, files[0].content)
	}
}
