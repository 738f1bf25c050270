package swarm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/compose"

	"github.com/compose-spec/compose-go/v2/types"
)

// stackYAML is examples/django/compose.yaml adapted to a Swarm: web is
// gated by a compose healthcheck and reached by its tasks' addresses
// (endpoint_mode dnsrr), db's shm_size is a tmpfs, nginx publishes its port
// in host mode on the manager.
const stackYAML = `
x-app: &app
  image: registry.test/shop/web:v1
  environment:
    SECRET_KEY: s3cret
    DEBUG: "0"
    POSTGRES_HOST: db
    CELERY_BROKER_URL: amqp://shop:pw@rabbitmq:5672//
  restart: unless-stopped
  logging: &logging
    driver: json-file
    options: {max-size: 10m, max-file: "3"}

services:
  web:
    <<: *app
    command: ["gunicorn", "shop.wsgi", "--bind", "0.0.0.0:8000"]
    stop_signal: SIGTERM
    stop_grace_period: 30s
    volumes:
      - static:/app/static
    depends_on:
      db: {condition: service_healthy}
      rabbitmq: {condition: service_healthy}
    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
      interval: 2s
      timeout: 5s
      retries: 3
      start_period: 10s
    deploy:
      replicas: 3
      endpoint_mode: dnsrr
      update_config:
        order: start-first
        monitor: 5s
      placement:
        preferences:
          - spread: node.id
    x-berth:
      pre_deploy:
        - command: ["python3", "manage.py", "migrate", "--noinput"]
          timeout: 10m

  worker:
    <<: *app
    command: ["celery", "-A", "shop", "worker", "--concurrency", "2"]
    stop_signal: SIGTERM
    stop_grace_period: 60s
    healthcheck:
      test: ["CMD", "python3", "-c", "import sys; sys.exit(0)"]
      interval: 2s
      timeout: 5s
      retries: 3
      start_period: 30s
    deploy:
      replicas: 2
      update_config:
        order: start-first
        parallelism: 2
        monitor: 5s

  beat:
    <<: *app
    command: ["celery", "-A", "shop", "beat"]
    stop_signal: SIGTERM
    stop_grace_period: 10s
    deploy:
      update_config: {monitor: 5s}
    x-berth:
      singleton: true

  db:
    image: registry.test/shop/postgres:v1
    environment:
      POSTGRES_DB: shop
      POSTGRES_PASSWORD: pw
    volumes:
      - pgdata:/var/lib/postgresql/data
    tmpfs:
      - /dev/shm:size=128m
    stop_signal: SIGINT
    stop_grace_period: 30s
    restart: unless-stopped
    logging: *logging
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1"]
      interval: 2s
      timeout: 5s
      retries: 5
      start_period: 30s
    deploy:
      placement:
        constraints: [node.labels.db == true]

  rabbitmq:
    image: registry.test/shop/rabbitmq:v1
    hostname: rabbitmq
    environment:
      RABBITMQ_DEFAULT_USER: shop
    volumes:
      - rabbitmq:/var/lib/rabbitmq
    stop_signal: SIGTERM
    stop_grace_period: 30s
    restart: on-failure:5
    logging: *logging
    healthcheck:
      test: ["CMD", "rabbitmq-diagnostics", "-q", "check_port_connectivity"]
      interval: 3s
      timeout: 10s
      retries: 5
      start_period: 60s
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 512M, pids: 200}
        reservations: {cpus: "0.1", memory: 256M}

  nginx:
    image: registry.test/shop/nginx:v1
    ports:
      - {target: 80, published: "8080", protocol: tcp, mode: host}
    volumes:
      - static:/app/static:ro
    stop_signal: SIGQUIT
    stop_grace_period: 15s
    restart: unless-stopped
    logging: *logging
    depends_on:
      web: {condition: service_healthy}
    healthcheck:
      test: ["CMD", "curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1/nginx-health"]
      interval: 2s
      timeout: 3s
      retries: 3
    deploy:
      placement:
        constraints: [node.role == manager]
    x-berth:
      proxy:
        fronts: ["web:8000"]
        servers: /etc/nginx/berth/servers
        drain: 30s

volumes:
  pgdata:
  rabbitmq:
    driver: local
    driver_opts: {type: tmpfs, device: tmpfs}
    labels: {backup: "daily"}
  static:
`

// loadYAML loads a compose file without any backend's checks, so a test
// calls Check itself.
func loadYAML(t *testing.T, yaml string) *types.Project {
	t.Helper()
	file := filepath.Join(t.TempDir(), "compose.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := compose.Load(t.Context(), compose.LoadOptions{Name: "shop", ComposeFile: file,
		Check: func(*types.Project) []error { return nil }})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return p
}

func TestCheckExampleStackPasses(t *testing.T) {
	p := loadYAML(t, stackYAML)
	if problems := Check(p); len(problems) > 0 {
		t.Fatalf("the Swarm example is refused: %v", errors.Join(problems...))
	}
}

// TestCheckThroughLoad: Check as LoadOptions.Check refuses the file, every
// problem wrapping compose.ErrInvalid, where the engine's check would have
// accepted it.
func TestCheckThroughLoad(t *testing.T) {
	file := filepath.Join(t.TempDir(), "compose.yaml")
	yaml := "services:\n  web:\n    image: registry.test/web:v1\n    container_name: web\n    pid: host\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := compose.Load(t.Context(), compose.LoadOptions{Name: "shop", ComposeFile: file}); err != nil {
		t.Fatalf("the engine's check should accept this file: %v", err)
	}
	_, err := compose.Load(t.Context(), compose.LoadOptions{Name: "shop", ComposeFile: file, Check: Check})
	if err == nil || !errors.Is(err, compose.ErrInvalid) {
		t.Fatalf("load with swarm.Check: %v, want ErrInvalid", err)
	}
	for _, want := range []string{"service web: container_name", "service web: pid"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
}

// TestCheckRefuses: one file per refused key; Check names the key (and
// the service) in its message, and reports nothing else.
func TestCheckRefuses(t *testing.T) {
	const head = "services:\n  web:\n    image: registry.test/web:v1\n"
	cases := []struct {
		name string
		yaml string // the rest of service web, or whole files where they start with "services:"
		want string
	}{
		{"privileged", "    privileged: true\n", "privileged"},
		{"network_mode", "    network_mode: host\n", "network_mode"},
		{"pid", "    pid: host\n", "pid"},
		{"ipc", "    ipc: host\n", "ipc"},
		{"container_name", "    container_name: web\n", "container_name"},
		{"devices", "    devices: [\"/dev/fuse:/dev/fuse\"]\n", "devices"},
		{"gpus", "    gpus: all\n", "gpus"},
		{"cgroup_parent", "    cgroup_parent: berth\n", "cgroup_parent"},
		{"cgroup", "    cgroup: host\n", "cgroup"},
		{"userns_mode", "    userns_mode: host\n", "userns_mode"},
		{"uts", "    uts: host\n", "uts"},
		{"cpu_shares", "    cpu_shares: 512\n", "cpu_shares"},
		{"cpuset", "    cpuset: \"0\"\n", "cpuset"},
		{"cpu_quota", "    cpu_quota: 50000\n", "cpu_quota"},
		{"cpu_period", "    cpu_period: 100000\n", "cpu_period"},
		{"cpu_rt_period", "    cpu_rt_period: 1000000\n", "cpu_rt_period"},
		{"cpu_rt_runtime", "    cpu_rt_runtime: 950000\n", "cpu_rt_runtime"},
		{"cpu_count", "    cpu_count: 2\n", "cpu_count"},
		{"cpu_percent", "    cpu_percent: 50\n", "cpu_percent"},
		{"mem_swappiness", "    mem_swappiness: 10\n", "mem_swappiness"},
		{"memswap_limit", "    mem_limit: 1g\n    memswap_limit: 2g\n", "memswap_limit"},
		{"mem_reservation", "    mem_reservation: 1g\n", "mem_reservation"},
		{"oom_kill_disable", "    oom_kill_disable: true\n", "oom_kill_disable"},
		{"oom_score_adj", "    oom_score_adj: 100\n", "oom_score_adj"},
		{"shm_size", "    shm_size: 128m\n", "shm_size"},
		{"runtime", "    runtime: runc\n", "runtime"},
		{"links", "    links: [db]\n  db:\n    image: registry.test/db:v1\n", "links"},
		{"external_links", "    external_links: [other_db]\n", "external_links"},
		{"volumes_from", "    volumes_from: [db]\n  db:\n    image: registry.test/db:v1\n", "volumes_from"},
		{"security_opt", "    security_opt: [\"no-new-privileges:true\"]\n", "security_opt"},
		{"storage_opt", "    storage_opt: {size: 1G}\n", "storage_opt"},
		{"blkio_config", "    blkio_config: {weight: 300}\n", "blkio_config"},
		{"device_cgroup_rules", "    device_cgroup_rules: [\"c 1:3 mr\"]\n", "device_cgroup_rules"},
		{"credential_spec", "    credential_spec: {file: my.json}\n", "credential_spec"},
		{"platform", "    platform: linux/amd64\n", "platform"},
		{"mac_address", "    mac_address: 02:42:ac:11:00:02\n", "mac_address"},
		{"domainname", "    domainname: example.com\n", "domainname"},
		{"isolation", "    isolation: process\n", "isolation"},
		{"secrets", "    secrets: [key]\nsecrets:\n  key: {file: ./key}\n", "secrets: is not supported on a Swarm by berth yet"},
		{"configs", "    configs: [conf]\nconfigs:\n  conf: {file: ./conf}\n", "configs: is not supported on a Swarm by berth yet"},
		{"pull_policy never", "    pull_policy: never\n", "pull_policy never"},
		{"pull_policy build", "    pull_policy: build\n    build: .\n", "pull_policy build"},
		{"logging.options", "    logging: {options: {max-size: 10m}}\n", "logging.options"},
		{"build without image", "services:\n  web:\n    build: .\n", "build without image"},
		{"host_ip", "    ports: [\"127.0.0.1:8080:80\"]\n", "host_ip"},
		{"deploy.mode replicated-job", "    deploy: {mode: replicated-job}\n", "deploy.mode \"replicated-job\""},
		{"deploy.mode global-job", "    deploy: {mode: global-job}\n", "deploy.mode \"global-job\""},
		{"global with replicas", "    deploy: {mode: global, replicas: 2}\n", "deploy.replicas with deploy.mode global"},
		{"dnsrr with ingress port", "    ports: [\"8080:80\"]\n    deploy: {endpoint_mode: dnsrr}\n", "deploy.endpoint_mode dnsrr"},
		{"endpoint_mode", "    deploy: {endpoint_mode: mesh}\n", "deploy.endpoint_mode \"mesh\""},
		{"singleton with replicas", "    deploy: {replicas: 2}\n    x-berth: {singleton: true}\n", "deploy.replicas 2 contradicts x-berth.singleton"},
		{"singleton global", "    deploy: {mode: global}\n    x-berth: {singleton: true}\n", "deploy.mode global contradicts x-berth.singleton"},
		{"reservations.devices", "    deploy: {resources: {reservations: {devices: [{capabilities: [gpu]}]}}}\n", "deploy.resources.reservations.devices"},
		{"x-berth.health exec", "    x-berth: {health: {exec: [\"true\"]}}\n", "x-berth.health.exec"},
		{"x-berth.health http without port", "    x-berth: {health: {http: {path: /healthz, port: 8000}}}\n", "x-berth.health.http: port 8000 is not published in mode host"},
		{"x-berth.health tcp ingress port", "    ports: [{target: 5432, published: \"5432\"}]\n    x-berth: {health: {tcp: {port: 5432}}}\n", "x-berth.health.tcp: port 5432"},
		{"network driver", "    networks: [back]\nnetworks:\n  back: {driver: bridge}\n", "network back: driver \"bridge\""},
		{"network address", "    networks: {back: {ipv4_address: 10.5.0.5}}\nnetworks:\n  back:\n    ipam: {config: [{subnet: 10.5.0.0/16}]}\n", "networks.back: only aliases"},
		{"volume type", "    volumes: [{type: npipe, source: //./pipe/x, target: //./pipe/x}]\n", "of type \"npipe\""},
		{"volume subpath", "    volumes: [{type: volume, source: data, target: /data, volume: {subpath: a}}]\nvolumes:\n  data:\n", "volume.subpath"},
		{"bind selinux", "    volumes: [{type: bind, source: /srv, target: /srv, bind: {selinux: z}}]\n", "bind.selinux"},
		{"tmpfs option", "    tmpfs: [\"/run:size=64m,noexec\"]\n", "tmpfs: \"/run:size=64m,noexec\": option \"noexec\""},
		{"max_failure_ratio", "    deploy: {update_config: {max_failure_ratio: 0.5}}\n", "deploy.update_config.max_failure_ratio"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			yaml := head + tc.yaml
			if strings.HasPrefix(tc.yaml, "services:") {
				yaml = tc.yaml
			}
			problems := Check(loadYAML(t, yaml))
			n := 1
			if tc.name == "links" {
				n = 2 // compose-go makes a link a depends_on with restart: true, which PolicyProblems refuses too
			}
			if len(problems) != n {
				t.Fatalf("%d problems, want %d naming %s: %v", len(problems), n, tc.want, errors.Join(problems...))
			}
			named := false
			for _, e := range problems {
				msg := e.Error()
				named = named || strings.Contains(msg, tc.want)
				if !strings.HasPrefix(msg, "service web: ") && !strings.HasPrefix(msg, "network ") {
					t.Errorf("problem %q does not name the service", msg)
				}
			}
			if !named {
				t.Fatalf("no problem names %q: %v", tc.want, errors.Join(problems...))
			}
		})
	}
}

// TestCheckAccepts: what a Swarm carries over, or ignores harmlessly,
// passes.
func TestCheckAccepts(t *testing.T) {
	for name, yaml := range map[string]string{
		"health probe on a host-mode port":     "    ports: [{target: 8000, published: \"8000\", mode: host}]\n    x-berth: {health: {http: {path: /healthz, port: 8000}}}\n",
		"tcp probe on a host-mode port, dnsrr": "    ports: [{target: 5432, mode: host}]\n    deploy: {endpoint_mode: dnsrr}\n    x-berth: {health: {tcp: {port: 5432}}}\n",
		"global":                               "    deploy: {mode: global}\n",
		"restart_policy":                       "    deploy: {restart_policy: {condition: on-failure, max_attempts: 3, delay: 5s, window: 1m}}\n",
		"limits and reservations":              "    cpus: 0.5\n    mem_limit: 1g\n    pids_limit: 100\n    deploy: {resources: {reservations: {cpus: \"0.25\", memory: 128M, generic_resources: [{discrete_resource_spec: {kind: ssd, value: 1}}]}}}\n",
		"ingress port":                         "    ports: [\"8080:80\", \"53:53/udp\"]\n",
		"harmless keys":                        "    expose: [\"8000\"]\n    pull_policy: always\n    build: .\n    stdin_open: true\n    tty: true\n",
		"container options": "    init: true\n    read_only: true\n    user: \"1000:1000\"\n    group_add: [\"50\"]\n    cap_add: [NET_ADMIN]\n    cap_drop: [ALL]\n" +
			"    sysctls: {net.core.somaxconn: \"1024\"}\n    ulimits: {nofile: {soft: 1024, hard: 2048}}\n    extra_hosts: [\"db.local:10.0.0.5\"]\n    dns: [1.1.1.1]\n    tmpfs: [\"/run:size=64m,mode=1777\"]\n",
	} {
		t.Run(name, func(t *testing.T) {
			p := loadYAML(t, "services:\n  web:\n    image: registry.test/web:v1\n"+yaml)
			if problems := Check(p); len(problems) > 0 {
				t.Fatalf("refused: %v", errors.Join(problems...))
			}
		})
	}
}
