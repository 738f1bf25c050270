package swarm

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/compose"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/swarm"
)

// pinsOf pins every service's image to a digest made of the image's last
// character (v1 -> sha256:111...), as a registry would.
func pinsOf(p *types.Project) map[string]compose.Pin {
	out := map[string]compose.Pin{}
	for name, s := range p.Services {
		repo := s.Image[:strings.LastIndex(s.Image, ":")] // registry.test/NAME:TAG: no port in the host
		digest := "sha256:" + strings.Repeat(s.Image[len(s.Image)-1:], 64)
		out[name] = compose.Pin{Ref: s.Image, Pinned: repo + "@" + digest, Digest: digest}
	}
	return out
}

// converted loads yaml, computes its Desired and converts it.
func converted(t *testing.T, yaml string) (*types.Project, *compose.Desired) {
	t.Helper()
	p := loadYAML(t, yaml)
	if problems := Check(p); len(problems) > 0 {
		t.Fatalf("check: %v", problems)
	}
	d, err := compose.NewDesired(p, pinsOf(p))
	if err != nil {
		t.Fatalf("desired: %v", err)
	}
	if err := Convert(p, d); err != nil {
		t.Fatalf("convert: %v", err)
	}
	return p, d
}

func swarmSpec(t *testing.T, d *compose.Desired, name string) *swarm.ServiceSpec {
	t.Helper()
	for _, s := range d.Services {
		if s.Name == name {
			if s.Swarm == nil {
				t.Fatalf("service %s: no Swarm spec", name)
			}
			return s.Swarm
		}
	}
	t.Fatalf("no service %s", name)
	return nil
}

func dur(d time.Duration) *time.Duration { return &d }
func u64(n uint64) *uint64               { return &n }

// TestConvertExampleStack: every service of the Swarm example, field by
// field, against the spec written out by hand; the hash labels are the
// SpecHash of that spec.
func TestConvertExampleStack(t *testing.T) {
	_, d := converted(t, stackYAML)
	const pin = "@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	appEnv := []string{"CELERY_BROKER_URL=amqp://shop:pw@rabbitmq:5672//", "DEBUG=0", "POSTGRES_HOST=db", "SECRET_KEY=s3cret"}
	logs := &swarm.Driver{Name: "json-file", Options: map[string]string{"max-size": "10m", "max-file": "3"}}
	net := func(alias string) []swarm.NetworkAttachmentConfig {
		return []swarm.NetworkAttachmentConfig{{Target: "shop_default", Aliases: []string{alias}}}
	}
	any := &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny}
	update := func(order string, parallelism uint64) (*swarm.UpdateConfig, *swarm.UpdateConfig) {
		return &swarm.UpdateConfig{Parallelism: parallelism, FailureAction: "rollback", Monitor: 5 * time.Second, Order: order},
			&swarm.UpdateConfig{Parallelism: parallelism, FailureAction: "pause", Monitor: 5 * time.Second, Order: order}
	}
	stackVolume := func(source, target string, ro bool) mount.Mount {
		return mount.Mount{Type: mount.TypeVolume, Source: source, Target: target, ReadOnly: ro,
			VolumeOptions: &mount.VolumeOptions{Labels: map[string]string{LabelNamespace: "shop"}}}
	}
	service := func(name, image string, c swarm.ContainerSpec, replicas uint64, order string, parallelism uint64) swarm.ServiceSpec {
		c.Image = image
		c.Labels = map[string]string{LabelNamespace: "shop"}
		u, r := update(order, parallelism)
		return swarm.ServiceSpec{
			Annotations:    swarm.Annotations{Name: "shop_" + name, Labels: map[string]string{LabelNamespace: "shop", LabelImage: strings.Replace(image, pin, ":v1", 1)}},
			TaskTemplate:   swarm.TaskSpec{ContainerSpec: &c, RestartPolicy: any, Networks: net(name), LogDriver: logs},
			Mode:           swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: u64(replicas)}},
			UpdateConfig:   u,
			RollbackConfig: r,
			EndpointSpec:   &swarm.EndpointSpec{Mode: swarm.ResolutionModeVIP},
		}
	}

	web := service("web", "registry.test/shop/web"+pin, swarm.ContainerSpec{
		Args:            []string{"gunicorn", "shop.wsgi", "--bind", "0.0.0.0:8000"},
		Env:             appEnv,
		StopSignal:      "SIGTERM",
		StopGracePeriod: dur(30 * time.Second),
		Mounts:          []mount.Mount{stackVolume("shop_static", "/app/static", false)},
		Healthcheck: &container.HealthConfig{
			Test:     []string{"CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"},
			Interval: 2 * time.Second, Timeout: 5 * time.Second, StartPeriod: 10 * time.Second, Retries: 3},
	}, 3, "start-first", 1)
	web.TaskTemplate.Placement = &swarm.Placement{Preferences: []swarm.PlacementPreference{{Spread: &swarm.SpreadOver{SpreadDescriptor: "node.id"}}}}
	web.EndpointSpec.Mode = swarm.ResolutionModeDNSRR

	worker := service("worker", "registry.test/shop/web"+pin, swarm.ContainerSpec{
		Args:            []string{"celery", "-A", "shop", "worker", "--concurrency", "2"},
		Env:             appEnv,
		StopSignal:      "SIGTERM",
		StopGracePeriod: dur(60 * time.Second),
		Healthcheck: &container.HealthConfig{Test: []string{"CMD", "python3", "-c", "import sys; sys.exit(0)"},
			Interval: 2 * time.Second, Timeout: 5 * time.Second, StartPeriod: 30 * time.Second, Retries: 3},
	}, 2, "start-first", 2)

	beat := service("beat", "registry.test/shop/web"+pin, swarm.ContainerSpec{
		Args:            []string{"celery", "-A", "shop", "beat"},
		Env:             appEnv,
		StopSignal:      "SIGTERM",
		StopGracePeriod: dur(10 * time.Second),
	}, 1, "stop-first", 1) // a singleton: one task, stop-first

	db := service("db", "registry.test/shop/postgres"+pin, swarm.ContainerSpec{
		Env:             []string{"POSTGRES_DB=shop", "POSTGRES_PASSWORD=pw"},
		StopSignal:      "SIGINT",
		StopGracePeriod: dur(30 * time.Second),
		Mounts: []mount.Mount{stackVolume("shop_pgdata", "/var/lib/postgresql/data", false),
			{Type: mount.TypeTmpfs, Target: "/dev/shm", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 128 << 20}}},
		Healthcheck: &container.HealthConfig{Test: []string{"CMD-SHELL", "pg_isready -q -h 127.0.0.1"},
			Interval: 2 * time.Second, Timeout: 5 * time.Second, StartPeriod: 30 * time.Second, Retries: 5},
	}, 1, "stop-first", 1) // a named volume: stop-first
	db.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.labels.db == true"}}

	rabbitmq := service("rabbitmq", "registry.test/shop/rabbitmq"+pin, swarm.ContainerSpec{
		Hostname:        "rabbitmq",
		Env:             []string{"RABBITMQ_DEFAULT_USER=shop"},
		StopSignal:      "SIGTERM",
		StopGracePeriod: dur(30 * time.Second),
		Mounts: []mount.Mount{{Type: mount.TypeVolume, Source: "shop_rabbitmq", Target: "/var/lib/rabbitmq",
			VolumeOptions: &mount.VolumeOptions{
				Labels:       map[string]string{LabelNamespace: "shop", "backup": "daily"},
				DriverConfig: &mount.Driver{Name: "local", Options: map[string]string{"type": "tmpfs", "device": "tmpfs"}}}}},
		Healthcheck: &container.HealthConfig{Test: []string{"CMD", "rabbitmq-diagnostics", "-q", "check_port_connectivity"},
			Interval: 3 * time.Second, Timeout: 10 * time.Second, StartPeriod: 60 * time.Second, Retries: 5},
	}, 1, "stop-first", 1)
	rabbitmq.TaskTemplate.RestartPolicy = &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, MaxAttempts: u64(5)}
	rabbitmq.TaskTemplate.Resources = &swarm.ResourceRequirements{
		Limits:       &swarm.Limit{NanoCPUs: 500_000_000, MemoryBytes: 512 << 20, Pids: 200},
		Reservations: &swarm.Resources{NanoCPUs: 100_000_000, MemoryBytes: 256 << 20},
	}

	nginx := service("nginx", "registry.test/shop/nginx"+pin, swarm.ContainerSpec{
		StopSignal:      "SIGQUIT",
		StopGracePeriod: dur(15 * time.Second),
		Mounts:          []mount.Mount{stackVolume("shop_static", "/app/static", true)},
		Healthcheck: &container.HealthConfig{Test: []string{"CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1/nginx-health"},
			Interval: 2 * time.Second, Timeout: 3 * time.Second, Retries: 3},
	}, 1, "stop-first", 1) // publishes a host port: stop-first
	nginx.TaskTemplate.Placement = &swarm.Placement{Constraints: []string{"node.role == manager"}}
	nginx.EndpointSpec.Ports = []swarm.PortConfig{{Protocol: swarm.PortConfigProtocolTCP, TargetPort: 80, PublishedPort: 8080, PublishMode: swarm.PortConfigPublishModeHost}}

	for _, want := range []swarm.ServiceSpec{web, worker, beat, db, rabbitmq, nginx} {
		name := strings.TrimPrefix(want.Name, "shop_")
		t.Run(name, func(t *testing.T) {
			hash := SpecHash(want)
			want.Labels[LabelSpecHash] = hash
			want.TaskTemplate.ContainerSpec.Labels[LabelSpecHash] = hash
			got := swarmSpec(t, d, name)
			if !reflect.DeepEqual(*got, want) {
				g, _ := json.MarshalIndent(got, "", "  ")
				w, _ := json.MarshalIndent(want, "", "  ")
				t.Fatalf("spec of %s:\n%s\nwant:\n%s", name, g, w)
			}
		})
	}
}

// TestConvertNetworksAreOverlay: the project's networks become attachable
// overlay networks of the swarm scope, labelled with the stack; a driver
// the file names stays.
func TestConvertNetworksAreOverlay(t *testing.T) {
	_, d := converted(t, "services:\n  web:\n    image: registry.test/web:v1\n    networks: [front, back]\n"+
		"networks:\n  front:\n    labels: {tier: front}\n  back:\n    driver: overlay\n    driver_opts: {encrypted: \"\"}\n    internal: true\n")
	if len(d.Networks) != 2 {
		t.Fatalf("networks: %+v", d.Networks)
	}
	for _, n := range d.Networks {
		o := n.Options
		if o.Driver != "overlay" || !o.Attachable || o.Scope != "swarm" || o.Labels[LabelNamespace] != "shop" {
			t.Errorf("network %s: driver %q attachable %v scope %q labels %v", n.Name, o.Driver, o.Attachable, o.Scope, o.Labels)
		}
		switch n.Key {
		case "front":
			if o.Labels["tier"] != "front" {
				t.Errorf("front lost its label: %v", o.Labels)
			}
		case "back":
			if !o.Internal || o.Options["encrypted"] != "" || len(o.Options) != 1 {
				t.Errorf("back: internal %v options %v", o.Internal, o.Options)
			}
		}
	}
	want := []swarm.NetworkAttachmentConfig{{Target: "shop_back", Aliases: []string{"web"}}, {Target: "shop_front", Aliases: []string{"web"}}}
	if got := swarmSpec(t, d, "web").TaskTemplate.Networks; !reflect.DeepEqual(got, want) {
		t.Errorf("attachments %+v, want %+v", got, want)
	}
}

// TestConvertContainerOptions: the keys a Swarm's ContainerSpec carries.
func TestConvertContainerOptions(t *testing.T) {
	_, d := converted(t, `services:
  web:
    image: registry.test/web:v1
    entrypoint: ["/entry"]
    command: ["serve", "--port", "80"]
    working_dir: /app
    user: "1000:1000"
    group_add: ["50"]
    hostname: web-{{.Task.Slot}}
    labels: {tier: web}
    init: true
    read_only: true
    tty: true
    stdin_open: true
    extra_hosts: ["db.local:10.0.0.5", "api.local:10.0.0.6"]
    dns: [1.1.1.1]
    dns_search: [example.com]
    dns_opt: [ndots:2]
    sysctls: {net.core.somaxconn: "1024"}
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    ulimits: {nproc: 65535, nofile: {soft: 1024, hard: 2048}}
    tmpfs: ["/run:size=64m,mode=1777", /tmp]
    cpus: 0.1
    mem_limit: 1g
    pids_limit: 100
    volumes:
      - {type: bind, source: /srv/data, target: /data, bind: {propagation: rslave}}
      - {type: tmpfs, target: /cache, tmpfs: {size: 1m}}
      - {type: volume, target: /anon}
    networks:
      default: {aliases: [www]}
    ports:
      - "8080:80"
      - {target: 53, published: "53", protocol: udp, mode: host, name: dns}
    deploy:
      labels: {team: shop}
      placement: {max_replicas_per_node: 2}
      update_config: {order: stop-first, parallelism: 0, delay: 10s, failure_action: pause, monitor: 30s}
      rollback_config: {parallelism: 2, failure_action: continue, max_failure_ratio: 0.25}
    stop_grace_period: 20s
`)
	s := swarmSpec(t, d, "web")
	c := s.TaskTemplate.ContainerSpec
	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %#v, want %#v", what, got, want)
		}
	}
	check("command", c.Command, []string{"/entry"})
	check("args", c.Args, []string{"serve", "--port", "80"})
	check("dir", c.Dir, "/app")
	check("user", c.User, "1000:1000")
	check("groups", c.Groups, []string{"50"})
	check("hostname", c.Hostname, "web-{{.Task.Slot}}")
	check("container labels", c.Labels, map[string]string{"tier": "web", LabelNamespace: "shop", LabelSpecHash: s.Labels[LabelSpecHash]})
	check("service labels", s.Labels, map[string]string{"team": "shop", LabelNamespace: "shop", LabelImage: "registry.test/web:v1", LabelSpecHash: SpecHash(*s)})
	check("init", c.Init != nil && *c.Init, true)
	check("read only", c.ReadOnly, true)
	check("tty", c.TTY, true)
	check("stdin", c.OpenStdin, true)
	check("hosts", c.Hosts, []string{"10.0.0.5 db.local", "10.0.0.6 api.local"})
	check("dns", c.DNSConfig, &swarm.DNSConfig{Nameservers: []string{"1.1.1.1"}, Search: []string{"example.com"}, Options: []string{"ndots:2"}})
	check("sysctls", c.Sysctls, map[string]string{"net.core.somaxconn": "1024"})
	check("cap add", c.CapabilityAdd, []string{"NET_ADMIN"})
	check("cap drop", c.CapabilityDrop, []string{"ALL"})
	check("ulimits", c.Ulimits, []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}, {Name: "nproc", Soft: 65535, Hard: 65535}})
	check("stop grace", *c.StopGracePeriod, 20*time.Second)
	check("mounts", c.Mounts, []mount.Mount{
		{Type: mount.TypeBind, Source: "/srv/data", Target: "/data", BindOptions: &mount.BindOptions{Propagation: mount.PropagationRSlave}},
		{Type: mount.TypeTmpfs, Target: "/cache", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1 << 20}},
		{Type: mount.TypeVolume, Target: "/anon"},
		{Type: mount.TypeTmpfs, Target: "/run", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 64 << 20, Mode: 01777}},
		{Type: mount.TypeTmpfs, Target: "/tmp"},
	})
	check("resources", s.TaskTemplate.Resources, &swarm.ResourceRequirements{Limits: &swarm.Limit{NanoCPUs: 100_000_000, MemoryBytes: 1 << 30, Pids: 100}})
	check("placement", s.TaskTemplate.Placement, &swarm.Placement{MaxReplicas: 2})
	check("networks", s.TaskTemplate.Networks, []swarm.NetworkAttachmentConfig{{Target: "shop_default", Aliases: []string{"web", "www"}}})
	check("endpoint", s.EndpointSpec, &swarm.EndpointSpec{Mode: swarm.ResolutionModeVIP, Ports: []swarm.PortConfig{
		{Protocol: swarm.PortConfigProtocolTCP, TargetPort: 80, PublishedPort: 8080, PublishMode: swarm.PortConfigPublishModeIngress},
		{Name: "dns", Protocol: swarm.PortConfigProtocolUDP, TargetPort: 53, PublishedPort: 53, PublishMode: swarm.PortConfigPublishModeHost},
	}})
	check("update", s.UpdateConfig, &swarm.UpdateConfig{Parallelism: 0, Delay: 10 * time.Second, FailureAction: "pause", Monitor: 30 * time.Second, Order: "stop-first"})
	check("rollback", s.RollbackConfig, &swarm.UpdateConfig{Parallelism: 2, FailureAction: "continue", MaxFailureRatio: 0.25, Monitor: 30 * time.Second, Order: "stop-first"})
	check("restart", s.TaskTemplate.RestartPolicy, (*swarm.RestartPolicy)(nil))
}

// TestConvertRestart: deploy.restart_policy, else the restart key mapped.
func TestConvertRestart(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want *swarm.RestartPolicy
	}{
		{"", nil},
		{"    restart: \"no\"\n", &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone}},
		{"    restart: always\n", &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny}},
		{"    restart: unless-stopped\n", &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny}},
		{"    restart: on-failure\n", &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure}},
		{"    restart: on-failure:3\n", &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, MaxAttempts: u64(3)}},
		{"    restart: always\n    deploy: {restart_policy: {condition: on-failure, delay: 5s, max_attempts: 2, window: 1m}}\n",
			&swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionOnFailure, Delay: dur(5 * time.Second), MaxAttempts: u64(2), Window: dur(time.Minute)}},
	} {
		_, d := converted(t, "services:\n  web:\n    image: registry.test/web:v1\n"+tc.yaml)
		if got := swarmSpec(t, d, "web").TaskTemplate.RestartPolicy; !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: restart policy %+v, want %+v", tc.yaml, got, tc.want)
		}
	}
}

// TestConvertModes: global, a singleton's one replica, scale.
func TestConvertModes(t *testing.T) {
	_, d := converted(t, "services:\n  a:\n    image: registry.test/a:v1\n    deploy: {mode: global}\n"+
		"  b:\n    image: registry.test/b:v1\n    x-berth: {singleton: true}\n  c:\n    image: registry.test/c:v1\n    scale: 4\n")
	if m := swarmSpec(t, d, "a").Mode; m.Global == nil || m.Replicated != nil {
		t.Errorf("a: mode %+v, want global", m)
	}
	if m := swarmSpec(t, d, "b").Mode; m.Replicated == nil || *m.Replicated.Replicas != 1 {
		t.Errorf("b: mode %+v, want 1 replica", m)
	}
	if o := swarmSpec(t, d, "b").UpdateConfig.Order; o != "stop-first" {
		t.Errorf("b: order %s, want stop-first", o)
	}
	if m := swarmSpec(t, d, "c").Mode; m.Replicated == nil || *m.Replicated.Replicas != 4 {
		t.Errorf("c: mode %+v, want 4 replicas", m)
	}
}

// TestSpecHash: the hash changes with the image or the environment, not
// with LabelRelease; it is what the spec's labels say; and the same input
// converts to the same JSON.
func TestSpecHash(t *testing.T) {
	_, d := converted(t, stackYAML)
	web := swarmSpec(t, d, "web")
	hash := web.Labels[LabelSpecHash]
	if len(hash) != 16 || hash != web.TaskTemplate.ContainerSpec.Labels[LabelSpecHash] || hash != SpecHash(*web) {
		t.Fatalf("hash labels %q / %q, SpecHash %q", hash, web.TaskTemplate.ContainerSpec.Labels[LabelSpecHash], SpecHash(*web))
	}

	released := *web
	released.Labels = map[string]string{LabelRelease: "7"}
	for k, v := range web.Labels {
		released.Labels[k] = v
	}
	if SpecHash(released) != hash {
		t.Errorf("LabelRelease changed the hash")
	}
	if web.Labels[LabelRelease] != "" {
		t.Fatalf("SpecHash's copy wrote into the spec")
	}

	p, d2 := converted(t, stackYAML)
	if swarmSpec(t, d2, "web").Labels[LabelSpecHash] != hash {
		t.Errorf("the same file hashed differently")
	}
	// The same loaded project, converted again and again (map order
	// differs from run to run).
	a, _ := json.Marshal(d2)
	for range 20 {
		d3, err := compose.NewDesired(p, pinsOf(p))
		if err != nil {
			t.Fatal(err)
		}
		if err := Convert(p, d3); err != nil {
			t.Fatal(err)
		}
		if b, _ := json.Marshal(d3); !bytes.Equal(a, b) {
			i := 0
			for i < len(a) && i < len(b) && a[i] == b[i] {
				i++
			}
			t.Fatalf("the same project converted to different JSON, from byte %d: %.200s\nagainst %.200s", i, a[i:], b[i:])
		}
	}

	image := strings.Replace(stackYAML, "registry.test/shop/web:v1", "registry.test/shop/web:v2", 1)
	_, d4 := converted(t, image)
	if h := swarmSpec(t, d4, "web").Labels[LabelSpecHash]; h == hash {
		t.Errorf("a new image kept the hash %s", h)
	}
	env := strings.Replace(stackYAML, "DEBUG: \"0\"", "DEBUG: \"1\"", 1)
	_, d5 := converted(t, env)
	if h := swarmSpec(t, d5, "web").Labels[LabelSpecHash]; h == hash {
		t.Errorf("a new environment kept the hash %s", h)
	}
	// Only web, worker and beat run the app's image and environment.
	if swarmSpec(t, d4, "db").Labels[LabelSpecHash] != swarmSpec(t, d, "db").Labels[LabelSpecHash] {
		t.Errorf("web's image changed db's hash")
	}
}

// TestDesiredRoundTrip: the Desired with its Swarm specs, as a release
// records it, decodes to the same specs and encodes to the same JSON.
func TestDesiredRoundTrip(t *testing.T) {
	_, d := converted(t, stackYAML)
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var back compose.Desired
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	again, err := json.Marshal(&back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, again) {
		t.Fatalf("the record changed in a round trip:\n%s\n%s", b, again)
	}
	if len(back.Services) != len(d.Services) {
		t.Fatalf("%d services back, want %d", len(back.Services), len(d.Services))
	}
	for i := range d.Services {
		if !reflect.DeepEqual(back.Services[i].Swarm, d.Services[i].Swarm) {
			t.Errorf("service %s: the Swarm spec changed in a round trip", d.Services[i].Name)
		}
		if SpecHash(*back.Services[i].Swarm) != d.Services[i].Swarm.Labels[LabelSpecHash] {
			t.Errorf("service %s: the decoded spec hashes differently", d.Services[i].Name)
		}
	}
	if !reflect.DeepEqual(back.Networks, d.Networks) {
		t.Errorf("networks changed in a round trip: %+v\n%+v", back.Networks, d.Networks)
	}
}

func TestNanoCPUs(t *testing.T) {
	for in, want := range map[float32]int64{0: 0, 0.1: 100_000_000, 0.5: 500_000_000, 1.5: 1_500_000_000, 0.001: 1_000_000, 3: 3_000_000_000} {
		if got := nanoCPUs(in); got != want {
			t.Errorf("nanoCPUs(%v) = %d, want %d", in, got, want)
		}
	}
}
