package trust

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/compose"
	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// shipFixture is a host for shipped files: a bundle directory (where the
// shipped compose file is written), an allowed bind directory with a link
// in it that points out of it, and a directory outside both.
type shipFixture struct {
	bundle, allowed, outside string
}

func newShipFixture(t *testing.T) shipFixture {
	t.Helper()
	root := t.TempDir()
	f := shipFixture{filepath.Join(root, "bundle"), filepath.Join(root, "srv", "shop"), filepath.Join(root, "elsewhere")}
	for _, d := range []string{f.bundle, filepath.Join(f.allowed, "media"), f.outside} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for dir, name := range map[string]string{f.bundle: "shipped.env", f.allowed: "host.env", f.outside: "other.env"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("FROM_FILE=1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A link under the allowed directory that leads out of it.
	if err := os.Symlink(f.outside, filepath.Join(f.allowed, "escape")); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f shipFixture) policy() ShipPolicy {
	return ShipPolicy{
		Project:          "shop",
		AllowedImages:    []string{"registry.test/shop/*", "postgres", "registry.test/vendor/**"},
		AllowedPorts:     []string{"8080", "127.0.0.1:9000-9009", "[::1]:7000", "53/udp"},
		AllowedBindPaths: []string{f.allowed},
		BundleDir:        f.bundle,
	}
}

// loadShipped writes file as the bundle's compose.yaml and loads it as
// agentd does (compose.Load). When compose.Load refuses it (a key the
// executor does not carry out), it is loaded with compose-go alone, so
// CheckShipped is shown to refuse it too, should compose.Load ever accept
// it; loadRefused says which happened.
func (f shipFixture) loadShipped(t *testing.T, file string, images map[string]string) (p *types.Project, loadRefused bool) {
	t.Helper()
	path := filepath.Join(f.bundle, "compose.yaml")
	file = strings.NewReplacer("$BUNDLE", f.bundle, "$ALLOWED", f.allowed, "$OUTSIDE", f.outside).Replace(file)
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := compose.Load(context.Background(), compose.LoadOptions{Name: "shop", ComposeFile: path, Images: images})
	if err == nil {
		return p, false
	}
	opts, err2 := cli.NewProjectOptions([]string{path}, cli.WithName("shop"), cli.WithResolvedPaths(true))
	if err2 != nil {
		t.Fatal(err2)
	}
	p, err2 = opts.LoadProject(context.Background())
	if err2 != nil {
		t.Fatalf("compose.Load: %v; compose-go: %v", err, err2)
	}
	return p, true
}

// svc is a shipped file with one service, app, of an allowed image, and
// the lines of body below it.
func svc(body ...string) string {
	return "services:\n  app:\n    image: registry.test/shop/web:v1\n" + indent(body, "    ")
}

func indent(lines []string, by string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(by + l + "\n")
	}
	return b.String()
}

// TestCheckShippedRefuses covers every key a shipped file may not use and
// every value check. want lists the refusals as SERVICE|FIELD|VALUE; each
// must also carry a reason.
func TestCheckShippedRefuses(t *testing.T) {
	f := newShipFixture(t)
	for _, tc := range []struct {
		name   string
		file   string
		images map[string]string
		// loadRefuses: compose.Load refuses the file already (Berth's
		// executor does not carry the key out); CheckShipped must too.
		loadRefuses bool
		want        []string
	}{
		// Refused whatever the value.
		{name: "privileged", file: svc("privileged: true"), want: []string{"app|privileged|true"}},
		{name: "cap_add", file: svc("cap_add: [SYS_ADMIN, NET_ADMIN]"), want: []string{"app|cap_add|[SYS_ADMIN, NET_ADMIN]"}},
		{name: "security_opt", file: svc("security_opt: ['seccomp:unconfined']"), want: []string{"app|security_opt|[seccomp:unconfined]"}},
		{name: "devices", file: svc("devices: ['/dev/sda:/dev/xvda']"), loadRefuses: true, want: []string{"app|devices|[{permissions: rwm, source: /dev/sda, target: /dev/xvda}]"}},
		{name: "device_cgroup_rules", file: svc("device_cgroup_rules: ['b 8:* rmw']"), loadRefuses: true, want: []string{"app|device_cgroup_rules|[b 8:* rmw]"}},
		{name: "gpus", file: svc("gpus: all"), loadRefuses: true, want: []string{"app|gpus|[{count: -1}]"}},
		{name: "network_mode host", file: svc("network_mode: host"), want: []string{"app|network_mode|host"}},
		{name: "network_mode none", file: svc("network_mode: none"), want: []string{"app|network_mode|none"}},
		{name: "network_mode container", file: svc("network_mode: container:other_db_1"), loadRefuses: true, want: []string{"app|network_mode|container:other_db_1"}},
		{name: "network_mode service", file: svc("network_mode: service:db") + "  db:\n    image: postgres:15\n", loadRefuses: true, want: []string{"app|network_mode|service:db"}},
		{name: "pid host", file: svc("pid: host"), want: []string{"app|pid|host"}},
		{name: "ipc host", file: svc("ipc: host"), want: []string{"app|ipc|host"}},
		{name: "uts host", file: svc("uts: host"), want: []string{"app|uts|host"}},
		{name: "userns_mode host", file: svc("userns_mode: host"), want: []string{"app|userns_mode|host"}},
		{name: "cgroup_parent", file: svc("cgroup_parent: system.slice"), want: []string{"app|cgroup_parent|system.slice"}},
		{name: "cgroup host", file: svc("cgroup: host"), loadRefuses: true, want: []string{"app|cgroup|host"}},
		{name: "sysctls", file: svc("sysctls: {net.ipv4.ip_forward: 1}"), want: []string{"app|sysctls|{net.ipv4.ip_forward: 1}"}},
		{name: "runtime", file: svc("runtime: runc-unconfined"), want: []string{"app|runtime|runc-unconfined"}},
		{name: "isolation", file: svc("isolation: process"), loadRefuses: true, want: []string{"app|isolation|process"}},
		{name: "group_add", file: svc("group_add: [docker]"), want: []string{"app|group_add|[docker]"}},
		{name: "oom_kill_disable", file: svc("oom_kill_disable: true"), want: []string{"app|oom_kill_disable|true"}},
		{name: "oom_score_adj below 0", file: svc("oom_score_adj: -500"), want: []string{"app|oom_score_adj|-500"}},
		{name: "cpu_rt_runtime", file: svc("cpu_rt_runtime: 950000"), want: []string{"app|cpu_rt_runtime|950000"}},
		{name: "volumes_from another container", file: svc("volumes_from: ['container:other_db_1']"), loadRefuses: true, want: []string{"app|volumes_from|[container:other_db_1]"}},
		{name: "links", file: svc("links: [db]") + "  db:\n    image: postgres:15\n", loadRefuses: true, want: []string{"app|links|[db]"}},
		{name: "external_links to another project", file: svc("external_links: ['other_db_1:db']"), loadRefuses: true, want: []string{"app|external_links|[other_db_1:db]"}},
		{name: "use_api_socket", file: svc("use_api_socket: true"), loadRefuses: true, want: []string{"app|use_api_socket|true"}},
		{name: "storage_opt", file: svc("storage_opt: {size: 1G}"), loadRefuses: true, want: []string{"app|storage_opt|{size: 1G}"}},
		{name: "container_name", file: svc("container_name: other-web-1"), want: []string{"app|container_name|other-web-1"}},
		{name: "secrets", file: svc("secrets: [key]") + "secrets:\n  key:\n    file: /etc/shadow\n", loadRefuses: true,
			want: []string{"|secrets|{key: {file: /etc/shadow, name: shop_key}}", "app|secrets|[{source: key, target: /run/secrets/key}]"}},
		{name: "configs", file: "configs:\n  c:\n    file: /etc/shadow\n" + svc(), want: []string{"|configs|{c: {file: /etc/shadow, name: shop_c}}"}},
		{name: "build", file: svc("build: .", "pull_policy: build"), want: []string{"app|build|{context: " + f.bundle + ", dockerfile: Dockerfile}", "app|pull_policy|build"}},
		{name: "ulimits other than nofile", file: svc("ulimits: {memlock: -1, nofile: 65536}"), want: []string{"app|ulimits.memlock|-1"}},
		{name: "logging driver off the host", file: svc("logging: {driver: syslog, options: {syslog-address: 'tcp://203.0.113.1:514'}}"), want: []string{"app|logging.driver|syslog"}},
		{name: "deploy device reservations", file: svc("deploy:", "  resources: {reservations: {devices: [{capabilities: [gpu]}]}}"),
			want: []string{"app|deploy.resources.reservations.devices|[{capabilities: [gpu], count: -1}]"}},

		{name: "cpu_rt_period", file: svc("cpu_rt_period: 1000000"), want: []string{"app|cpu_rt_period|1000000"}},
		{name: "credential_spec", file: svc("credential_spec: {file: /etc/shadow}"), loadRefuses: true, want: []string{"app|credential_spec|{file: /etc/shadow}"}},
		{name: "develop", file: svc("develop: {watch: [{path: ., action: sync, target: /app}]}"), want: []string{"app|develop|{watch: [{action: sync, path: $BUNDLE, target: /app}]}"}},
		{name: "provider", file: "services:\n  app:\n    image: registry.test/shop/web:v1\n    provider: {type: /usr/local/bin/evil}\n", loadRefuses: true, want: []string{"app|provider|{type: /usr/local/bin/evil}"}},
		{name: "models", file: svc("models: [llm]") + "models:\n  llm:\n    model: ai/smollm2\n", loadRefuses: true, want: []string{"|models|{llm: {model: ai/smollm2}}", "app|models|{llm}"}},
		{name: "pre_start, post_start, pre_stop", file: svc("pre_start: [{command: [id]}]", "post_start: [{command: [id], privileged: true}]", "pre_stop: [{command: [id]}]"), loadRefuses: true,
			want: []string{"app|post_start|[{command: [id], privileged: true}]", "app|pre_start|[{command: [id], image: registry.test/shop/web:v1, networks: {default}}]", "app|pre_stop|[{command: [id]}]"}},
		{name: "deploy labels", file: svc("deploy: {labels: {com.docker.compose.project: other}}"), want: []string{"app|deploy.labels|{com.docker.compose.project: other}"}},
		{name: "blkio_config", file: svc("blkio_config: {weight: 10}"), loadRefuses: true, want: []string{"app|blkio_config|{weight: 10}"}},
		{name: "platform", file: svc("platform: linux/arm64"), loadRefuses: true, want: []string{"app|platform|linux/arm64"}},
		{name: "attach", file: svc("attach: false"), want: []string{"app|attach|false"}},

		// Keys no list names: a made-up future key, a rarely used one.
		{name: "a service extension other than x-berth", file: svc("x-future: {privileged: true}"), want: []string{"app|x-future|{privileged: true}"}},
		{name: "a top-level x-berth", file: "x-berth: {anything: 1}\n" + svc(), want: []string{"|x-berth|{anything: 1}"}},
		{name: "mac_address", file: svc("mac_address: '02:42:ac:11:00:02'"), loadRefuses: true, want: []string{"app|mac_address|02:42:ac:11:00:02"}},

		// Bind mounts.
		{name: "bind of /", file: svc("volumes: ['/:/host']"), want: []string{"app|volumes[0]|/:/host"}},
		{name: "bind of /etc", file: svc("volumes: ['/etc:/host-etc:ro']"), want: []string{"app|volumes[0]|/etc:/host-etc:ro"}},
		{name: "the docker socket", file: svc("volumes: ['/var/run/docker.sock:/var/run/docker.sock']"), want: []string{"app|volumes[0]|/var/run/docker.sock:/var/run/docker.sock"}},
		{name: "the directory of the docker socket", file: svc("volumes: [{type: bind, source: /run, target: /hostrun}]"), want: []string{"app|volumes[0]|/run:/hostrun"}},
		{name: "a bind outside the allowed paths", file: svc("volumes: ['$OUTSIDE:/data']"), want: []string{"app|volumes[0]|$OUTSIDE:/data"}},
		{name: "a bind beside an allowed path", file: svc("volumes: ['$ALLOWED-other:/data']"), want: []string{"app|volumes[0]|$ALLOWED-other:/data"}},
		{name: "a bind through a link out of an allowed path", file: svc("volumes: ['$ALLOWED/escape:/data']"), want: []string{"app|volumes[0]|$ALLOWED/escape:/data"}},
		{name: "a relative bind out of the bundle", file: svc("volumes: ['../elsewhere:/data:ro']"), want: []string{"app|volumes[0]|$OUTSIDE:/data:ro"}},
		{name: "a shipped file bound writable", file: svc("volumes: ['./shipped.env:/app/.env']"), want: []string{"app|volumes[0]|$BUNDLE/shipped.env:/app/.env"}},
		{name: "bind propagation", file: svc("volumes: [{type: bind, source: $ALLOWED/media, target: /media, bind: {propagation: rshared}}]"),
			want: []string{"app|volumes[0]|$ALLOWED/media:/media"}},
		{name: "a volume of another project", file: svc("volumes: ['data:/data']") + "volumes:\n  data:\n    name: other_data\n", want: []string{"|volumes.data.name|other_data"}},
		{name: "a volume named like a project's but not its own", file: svc("volumes: ['data:/data']") + "volumes:\n  data:\n    name: shop_other\n", want: []string{"|volumes.data.name|shop_other"}},
		{name: "an external volume", file: svc("volumes: ['data:/data']") + "volumes:\n  data:\n    external: true\n", want: []string{"|volumes.data.external|true", "|volumes.data.name|data"}},
		{name: "a volume's driver options (a bind in disguise)", file: svc("volumes: ['data:/data']") + "volumes:\n  data:\n    driver: local\n    driver_opts: {type: none, o: bind, device: /etc}\n",
			want: []string{"|volumes.data.driver_opts|{device: /etc, o: bind, type: none}"}},
		{name: "a volume driver", file: svc("volumes: ['data:/data']") + "volumes:\n  data:\n    driver: rexray/ebs\n", want: []string{"|volumes.data.driver|rexray/ebs"}},
		{name: "containerd's socket", file: svc("volumes: ['/run/containerd/containerd.sock:/c.sock']"), want: []string{"app|volumes[0]|/run/containerd/containerd.sock:/c.sock"}},
		{name: "an image volume", file: svc("volumes: [{type: image, source: 'registry.test/other:1', target: /data}]"), loadRefuses: true,
			want: []string{"app|volumes[0]|image registry.test/other:1:/data"}},

		// Networks.
		{name: "a network of another project", file: svc("networks: [back]") + "networks:\n  back:\n    name: other_default\n", want: []string{"|networks.back.name|other_default"}},
		{name: "an external network", file: svc("networks: [back]") + "networks:\n  back:\n    external: true\n    name: bridge\n", want: []string{"|networks.back.external|true", "|networks.back.name|bridge"}},
		{name: "a macvlan network", file: svc("networks: [lan]") + "networks:\n  lan:\n    driver: macvlan\n    driver_opts: {parent: eth0}\n    ipam: {config: [{subnet: 192.168.1.0/24}]}\n",
			want: []string{"|networks.lan.driver|macvlan", "|networks.lan.driver_opts|{parent: eth0}", "|networks.lan.ipam|{config: [{subnet: 192.168.1.0/24}]}"}},

		// Published ports.
		{name: "a port outside the list", file: svc("ports: ['80:8000']"), want: []string{"app|ports[0]|80:8000"}},
		{name: "a port Docker picks", file: svc("ports: ['8000']"), want: []string{"app|ports[0]|8000"}},
		{name: "an allowed port on another address", file: svc("ports: ['0.0.0.0:9000:8000', '192.0.2.1:9001:8000']"), want: []string{"app|ports[0]|0.0.0.0:9000:8000", "app|ports[1]|192.0.2.1:9001:8000"}},
		{name: "a range partly outside", file: svc("ports: ['127.0.0.1:9008-9010:8008-8010']"), want: []string{"app|ports[2]|127.0.0.1:9010:8010"}},
		{name: "another IPv6 address", file: svc("ports: ['[::]:7000:8000']"), want: []string{"app|ports[0]|[::]:7000:8000"}},
		{name: "another protocol", file: svc("ports: ['53:53']"), want: []string{"app|ports[0]|53:53"}},

		// Images.
		{name: "an image outside the list", file: "services:\n  app:\n    image: docker.io/evil/miner:latest\n", want: []string{"app|image|docker.io/evil/miner:latest"}},
		{name: "a glob stays within one element", file: "services:\n  app:\n    image: registry.test/shop/a/b:1\n", want: []string{"app|image|registry.test/shop/a/b:1"}},
		{name: "a look-alike registry", file: "services:\n  app:\n    image: registry.test.evil/shop/web:1\n", want: []string{"app|image|registry.test.evil/shop/web:1"}},
		{name: "--image outside the list", file: svc(), images: map[string]string{"app": "docker.io/evil/miner@sha256:" + strings.Repeat("a", 64)},
			want: []string{"app|image|docker.io/evil/miner@sha256:" + strings.Repeat("a", 64)}},

		// Labels Berth and docker compose read.
		{name: "Berth's labels", file: svc("labels: {dev.berth.release: '7', version: '2'}"), want: []string{"app|labels.dev.berth.release|7"}},
		{name: "compose's labels", file: svc("labels: ['com.docker.compose.project=other']"), want: []string{"app|labels.com.docker.compose.project|other"}},
		{name: "a volume's compose label", file: svc("volumes: ['data:/data']") + "volumes:\n  data:\n    labels: {com.docker.compose.project: other}\n",
			want: []string{"|volumes.data.labels.com.docker.compose.project|other"}},

		// Files read on the host while loading.
		{name: "an env_file outside", file: svc("env_file: [$OUTSIDE/other.env]"), want: []string{"app|env_file[0]|$OUTSIDE/other.env"}},
		{name: "a label_file outside", file: svc("label_file: [$OUTSIDE/other.env]"), want: []string{"app|label_file[0]|$OUTSIDE/other.env"}},
		{name: "an env_file through a link", file: svc("env_file: [$ALLOWED/escape/other.env]"), want: []string{"app|env_file[0]|$ALLOWED/escape/other.env"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, loadRefused := f.loadShipped(t, tc.file, tc.images)
			if loadRefused != tc.loadRefuses {
				t.Errorf("compose.Load refused the file: %v, want %v", loadRefused, tc.loadRefuses)
			}
			vs := CheckShipped(p, f.policy())
			var got []string
			for _, v := range vs {
				if v.Reason == "" || !strings.Contains(v.String(), v.Reason) {
					t.Errorf("%+v: no reason in %q", v, v.String())
				}
				got = append(got, v.Service+"|"+v.Field+"|"+v.Value)
			}
			r := strings.NewReplacer("$BUNDLE", f.bundle, "$ALLOWED", f.allowed, "$OUTSIDE", f.outside)
			var want []string
			for _, w := range tc.want {
				want = append(want, r.Replace(w))
			}
			if !slices.Equal(got, want) {
				t.Errorf("refusals:\n got %q\nwant %q\n(%v)", got, want, vs)
			}
		})
	}
}

// TestCheckShippedAllows: what a shipped file may hold passes, values
// checked included.
func TestCheckShippedAllows(t *testing.T) {
	f := newShipFixture(t)
	type allowCase struct {
		name   string
		file   string
		images map[string]string
	}
	for _, tc := range []allowCase{
		{"allowed ports", svc("ports: ['8080:80', '127.0.0.1:9000-9009:8000-8009', '[::1]:7000:70', '53:53/udp', '127.0.0.1:8080:80']"), nil},
		{"the project's volumes, tmpfs, binds under the allowed path, a shipped file read-only", svc(
			"volumes:",
			"  - data:/data",
			"  - /anonymous",
			"  - {type: tmpfs, target: /tmp, tmpfs: {size: 64m}}",
			"  - $ALLOWED/media:/media",
			"  - $ALLOWED/new-dir:/new",
			"  - ./shipped.env:/app/.env:ro",
			"  - {type: bind, source: ./shipped.env, target: /app/b.env, read_only: true, bind: {propagation: rprivate}}",
		) + "volumes:\n  data:\n  named:\n    name: shop_named\n", nil},
		{"the project's networks", svc("networks: {front: {aliases: [api]}, back: {}}") + "networks:\n  front:\n  back:\n    internal: true\n    driver: bridge\n    labels: {team: shop}\n", nil},
		{"env and label files shipped or under the allowed path", svc("env_file: [shipped.env, $ALLOWED/host.env]", "label_file: [shipped.env]"), nil},
		{"defaults written out", svc("privileged: false", "cap_add: []", "security_opt: []", "sysctls: {}", "read_only: false", "oom_score_adj: 0", "logging: {driver: json-file}", "volumes: ['data:/data']") +
			"volumes:\n  data:\n    external: false\n    driver: local\nnetworks:\n  default:\n    name: shop_default\n    external: false\n", nil},
		{"labels of the user's own", svc("labels: {traefik.enable: 'true', com.example.team: shop}"), nil},
		{"images: a glob, a Docker Hub name, a /** prefix, an --image in the list", "services:\n  app:\n    image: registry.test/shop/web:v1\n  db:\n    image: postgres:15\n  official:\n    image: docker.io/library/postgres:16\n  deep:\n    image: registry.test/vendor/a/b/c:1\n",
			map[string]string{"app": "registry.test/shop/web@sha256:" + strings.Repeat("b", 64)}},
		{"harmless settings", svc(
			"command: [serve]", "entrypoint: [/init]", "environment: {A: b}", "working_dir: /app", "user: '1000'", "hostname: app",
			"init: true", "read_only: true", "restart: unless-stopped", "stop_signal: SIGTERM", "stop_grace_period: 30s",
			"expose: ['8000']", "extra_hosts: ['host.docker.internal:host-gateway']", "dns: [1.1.1.1]", "cap_drop: [ALL]",
			"shm_size: 128m", "tmpfs: [/run]", "mem_limit: 512m", "cpus: 1.5", "pids_limit: 200", "oom_score_adj: 100",
			"ulimits: {nofile: {soft: 1024, hard: 4096}}", "logging: {driver: json-file, options: {max-size: 10m}}",
			"healthcheck: {test: [CMD, 'true'], interval: 2s}",
			"deploy: {replicas: 3, update_config: {order: start-first, monitor: 5s}, resources: {limits: {memory: 512m, cpus: 1.5, pids: 200}, reservations: {memory: 64m}},",
			"  endpoint_mode: dnsrr, placement: {constraints: [node.role==worker], preferences: [{spread: node.id}], max_replicas_per_node: 2}}",
			"x-berth: {singleton: false, health: {http: {path: /healthz, port: 8000}}}",
		), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, loadRefused := f.loadShipped(t, tc.file, tc.images)
			if loadRefused {
				t.Fatal("compose.Load refused the file")
			}
			if vs := CheckShipped(p, f.policy()); len(vs) > 0 {
				t.Errorf("refused: %v", vs)
			}
		})
	}
}

// TestCheckShippedDjango: the reference stack, shipped, passes with the
// policy its docs give, and the same file is refused when the policy
// allows nothing.
func TestCheckShippedDjango(t *testing.T) {
	dir := t.TempDir()
	env := filepath.Join(dir, "shop.env")
	if err := os.WriteFile(env, []byte("REGISTRY=registry.gitlab.com/group\nDJANGO_SECRET_KEY=s\nPOSTGRES_PASSWORD=p\nRABBITMQ_PASSWORD=r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file, err := filepath.Abs("../../examples/django/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := compose.Load(context.Background(), compose.LoadOptions{Name: "shop", ComposeFile: file, EnvFiles: []string{env},
		Images: map[string]string{"web": "registry.gitlab.com/group/shop/web:abc123"}})
	if err != nil {
		t.Fatal(err)
	}
	pol := ShipPolicy{Project: "shop", AllowedImages: []string{"registry.gitlab.com/group/shop/*"}, AllowedPorts: []string{"8080"}, BundleDir: filepath.Dir(file)}
	if vs := CheckShipped(p, pol); len(vs) > 0 {
		t.Errorf("the reference stack is refused: %v", vs)
	}
	// Deny by default: no images, no ports.
	vs := CheckShipped(p, ShipPolicy{Project: "shop"})
	var got []string
	for _, v := range vs {
		got = append(got, v.Service+"|"+v.Field)
	}
	want := []string{"beat|image", "db|image", "nginx|image", "nginx|ports[0]", "rabbitmq|image", "web|image", "worker|image"}
	if !slices.Equal(got, want) {
		t.Errorf("with an empty policy: got %q, want %q", got, want)
	}
	// Under another project's name, its volumes are not that project's.
	vs = CheckShipped(p, ShipPolicy{Project: "other", AllowedImages: pol.AllowedImages, AllowedPorts: pol.AllowedPorts})
	if len(vs) != 4 { // default network and three volumes
		t.Errorf("as project other: %v", vs)
	}
}

func TestViolationString(t *testing.T) {
	v := Violation{Service: "app", Field: "privileged", Value: "true", Reason: refused["privileged"]}
	if got, want := v.String(), `service app: privileged "true": `+refused["privileged"]; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	v = Violation{Field: "volumes.data.name", Value: "other_data", Reason: ReasonForeign}
	if got, want := v.String(), `volumes.data.name "other_data": `+ReasonForeign; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParsePortRule(t *testing.T) {
	for in, want := range map[string]string{
		"80": "80-80 any", "8000-8099": "8000-8099 any", "127.0.0.1:8000": "8000-8000 127.0.0.1", "[::1]:7000-7001/udp": "7000-7001 ::1 udp",
		"53/udp": "53-53 any udp",
	} {
		r, err := ParsePortRule(in)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		got := strings.TrimSpace(strings.Join([]string{strconv.Itoa(r.From) + "-" + strconv.Itoa(r.To), ipOrAny(r), r.Protocol}, " "))
		if got != want {
			t.Errorf("%s: got %q, want %q", in, got, want)
		}
	}
	for _, in := range []string{"", "0", "65536", "http", "80-70", "080", "::1:80", "localhost:80", "80/icmp", "1.2.3.4:", "8000-", "-1", " 80"} {
		if _, err := ParsePortRule(in); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
}

func ipOrAny(r PortRule) string {
	if r.HostIP.IsValid() {
		return r.HostIP.String()
	}
	return "any"
}

func TestCheckImagePatternAndMatch(t *testing.T) {
	for _, p := range []string{"registry.gitlab.com/group/shop/*", "postgres", "registry.test:5000/x/**", "ghcr.io/org/app-[ab]"} {
		if err := CheckImagePattern(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, p := range []string{"", "a/**/b", "reg/[", "reg/x@sha256:aa", "reg x"} {
		if err := CheckImagePattern(p); err == nil {
			t.Errorf("%q: accepted", p)
		}
	}
	for _, tc := range []struct {
		pattern, ref string
		want         bool
	}{
		{"registry.gitlab.com/group/shop/*", "registry.gitlab.com/group/shop/web:v1", true},
		{"registry.gitlab.com/group/shop/*", "registry.gitlab.com/group/shop:v1", false},
		{"registry.gitlab.com/group/shop/*", "registry.gitlab.com/group/shopx/web", false},
		{"postgres", "postgres:15", true},
		{"postgres", "docker.io/library/postgres@sha256:" + strings.Repeat("c", 64), true},
		{"docker.io/library/postgres", "postgres", true},
		{"postgres", "evil/postgres", false},
		{"registry.test:5000/x/**", "registry.test:5000/x/a/b:1", true},
		{"registry.test:5000/x/**", "registry.test:5000/x:1", false},
		{"*", "NOT A REFERENCE", false},
	} {
		if got := MatchImage(tc.pattern, tc.ref); got != tc.want {
			t.Errorf("MatchImage(%q, %q) = %v, want %v", tc.pattern, tc.ref, got, tc.want)
		}
	}
}

func TestCheckBindPath(t *testing.T) {
	for _, p := range []string{"/srv/shop", "/var/lib/shop/media"} {
		if err := CheckBindPath(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, p := range []string{"", "srv/shop", "/", "/srv/../etc", "/srv/shop/", "/var/run", "/run", "/var"} {
		if err := CheckBindPath(p); err == nil {
			t.Errorf("%q: accepted", p)
		}
	}
}

// TestCheckShippedReferences: an include or extends may name only shipped
// files, by a plain relative path; what compose-go reads through them (an
// include's env_file above all) never shows in the loaded project.
func TestCheckShippedReferences(t *testing.T) {
	f := newShipFixture(t)
	extra := map[string]string{
		"$BUNDLE/sub/part.yaml":   "services:\n  part:\n    image: registry.test/shop/part:1\n    environment: {LEAK: \"${OTHER_SECRET:-none}\"}\n",
		"$BUNDLE/sub/part.env":    "OTHER_SECRET=shipped\n",
		"$BUNDLE/sub/deeper.yaml": "include: [../../elsewhere/other.yaml]\n",
		"$BUNDLE/base.yaml":       "services:\n  base:\n    image: registry.test/shop/web:v1\n    environment: {A: b}\n",
		"$OUTSIDE/other.yaml":     "services:\n  other:\n    image: registry.test/shop/other:1\n",
		"$OUTSIDE/secret.env":     "OTHER_SECRET=another-projects-secret\n",
	}
	r := strings.NewReplacer("$BUNDLE", f.bundle, "$ALLOWED", f.allowed, "$OUTSIDE", f.outside)
	for name, content := range extra {
		name = r.Replace(name)
		if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		file string
		want []string
	}{
		{"an include of shipped files, with a shipped env file", "include:\n  - path: sub/part.yaml\n    env_file: sub/part.env\n" + svc(), nil},
		{"extends of a shipped file", svc("extends: {file: base.yaml, service: base}"), nil},
		{"an include's env file outside", "include:\n  - path: sub/part.yaml\n    env_file: $OUTSIDE/secret.env\n" + svc(),
			[]string{"|include[0].env_file[0]|$OUTSIDE/secret.env"}},
		{"an include outside", "include: [$OUTSIDE/other.yaml]\n" + svc(), []string{"|include[0]|$OUTSIDE/other.yaml"}},
		{"an include through ..", "include: [../elsewhere/other.yaml]\n" + svc(), []string{"|include[0]|../elsewhere/other.yaml"}},
		{"an include of an include outside", "include: [sub/deeper.yaml]\n" + svc(), []string{"|sub/deeper.yaml: include[0]|../../elsewhere/other.yaml"}},
		{"an include's project directory outside", "include:\n  - path: sub/part.yaml\n    project_directory: $OUTSIDE\n" + svc(),
			[]string{"|include[0].project_directory|$OUTSIDE"}},
		{"an include path from a variable", "include: ['${PART:-sub/part.yaml}']\n" + svc(), []string{"|include[0]|${PART:-sub/part.yaml}"}},
		{"extends of a file outside", svc("extends: {file: $OUTSIDE/other.yaml, service: other}"), []string{"app|extends.file|$OUTSIDE/other.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, loadRefused := f.loadShipped(t, tc.file, nil)
			if loadRefused {
				t.Fatal("compose.Load refused the file")
			}
			if part, ok := p.Services["part"]; ok && strings.Contains(tc.file, "secret.env") {
				// What the include read shows in the project only as a
				// value, which no key check can tell from another.
				if v := part.Environment["LEAK"]; v == nil || *v != "another-projects-secret" {
					t.Fatalf("the fixture does not leak: LEAK = %v", v)
				}
			}
			var got []string
			for _, v := range CheckShipped(p, f.policy()) {
				got = append(got, v.Service+"|"+v.Field+"|"+v.Value)
			}
			var want []string
			for _, w := range tc.want {
				want = append(want, r.Replace(w))
			}
			if !slices.Equal(got, want) {
				t.Errorf("refusals:\n got %q\nwant %q", got, want)
			}
		})
	}
}

// TestCheckShippedHidesVariables: a value from the host's env file (or a
// request's variable) is shown by its name in a refusal, never as it is.
func TestCheckShippedHidesVariables(t *testing.T) {
	f := newShipFixture(t)
	hostEnv := filepath.Join(f.outside, "host.env")
	if err := os.WriteFile(hostEnv, []byte("SECRET=s3cret-from-the-host\nHOSTDIR=/srv/private-dir\nSHORT=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := svc("sysctls: {kernel.msgmax: '${SECRET}'}", "volumes: ['${HOSTDIR}/x:/data']", "cpu_rt_runtime: ${SHORT}${SHORT}", "privileged: true",
		"labels: {dev.berth.release: '${REQUESTED}'}")
	path := filepath.Join(f.bundle, "compose.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := compose.Load(context.Background(), compose.LoadOptions{Name: "shop", ComposeFile: path, EnvFiles: []string{hostEnv},
		Env: map[string]string{"REQUESTED": "request-secret-value"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range CheckShipped(p, f.policy()) {
		got = append(got, v.Service+"|"+v.Field+"|"+v.Value)
		if s := v.String(); strings.Contains(s, "s3cret") || strings.Contains(s, "private-dir") || strings.Contains(s, "request-secret") {
			t.Errorf("a variable's value in %q", s)
		}
	}
	want := []string{"app|cpu_rt_runtime|11", "app|labels.dev.berth.release|${REQUESTED}", "app|privileged|true",
		"app|sysctls|{kernel.msgmax: ${SECRET}}", "app|volumes[0]|${HOSTDIR}/x:/data"}
	if !slices.Equal(got, want) {
		t.Errorf("refusals:\n got %q\nwant %q", got, want)
	}
}

// TestShippedKeysTheSchemaRefuses: keys in CheckShipped's refused list
// that compose-go's schema already refuses, so no loaded project has them.
// Should compose-go ever accept one, CheckShipped refuses it as not listed.
func TestShippedKeysTheSchemaRefuses(t *testing.T) {
	f := newShipFixture(t)
	for _, line := range []string{"net: host", "log_driver: syslog", "log_opt: {syslog-address: 'udp://203.0.113.1:514'}", "volume_driver: evil"} {
		path := filepath.Join(f.bundle, "compose.yaml")
		if err := os.WriteFile(path, []byte(svc(line)), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := compose.Load(context.Background(), compose.LoadOptions{Name: "shop", ComposeFile: path}); err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("%s: compose.Load: %v, want a schema error", line, err)
		}
		key, _, _ := strings.Cut(line, ":")
		if _, ok := serviceSpec[key]; ok {
			t.Errorf("%s is allowed", key)
		}
		if _, ok := refused[key]; !ok {
			t.Errorf("%s has no reason", key)
		}
	}
}
