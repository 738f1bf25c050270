#!/usr/bin/env bash
# bench.sh: the reference Django shop (examples/django) rolled out side by
# side, in one run, under the same load, with the same images: docker-compose
# (`pull`, the release's migrate and collectstatic, `up -d`: whichever
# compose the host has) against Berth (`agentctl deploy`). Prints a table
# (scripts/bench: failed requests, p50/p99/max steady and during the deploy,
# wall time, Berth's critical-path bound and the ratio, the no-op redeploy,
# a broken release's failure detected and old release serving, agentd's RSS
# and CPU seconds) with issue 13's targets and whether each was met, and
# draws latency over time with the deploy's steps marked.
#
# Each run, for each system in turn, on a stack started from nothing:
#   1. start v1 and wait until GET /version answers through nginx;
#   2. the load: kept-alive clients (--rate, 1 in --post-every a POST) and,
#      beside them, clients that open a connection per request (--close-rate);
#      --steady seconds of steady load;
#   3. deploy v2 (web, worker and beat: a new image and an additive migration)
#      under that load; --settle more seconds of load; stop the load;
#   4. Berth only: redeploy v2 (a no-op); then, under the same load, deploy
#      v3 (v2 whose /healthz answers 503): Berth must detect it and restore v2;
#   5. remove the stack (containers, networks, volumes) and stop agentd.
# Every latency figure is the median of --runs runs with min and max.
#
# The load generators run in a network namespace of their own (berth-bench,
# 10.231.0.2, a veth pair to the host's 10.231.0.1, where nginx publishes
# its port): their requests reach nginx as a remote client's do, through the
# kernel's forwarding (DNAT), not docker-proxy, the engine's process that
# carries only connections made from the host itself (docs/testing.md).
#
# With --probes, a run measures instead what one kind of a rollout's work
# costs the serving stack, alone: Berth's stack of v1 under the same load,
# --steady seconds of steady load, then each probe for about 6 s with 4 s of
# load between two (no deploy, no docker-compose). The table gives each
# window's p50/p90/p99/max and its p99 against the steady p99. The probes:
#   boot          Django booting (`manage.py check`, again and again) in one
#                 container of the web image at the boot CPU weight (2)
#   boot-default  the same at the default weight
#   create        the engine's work for a container and nothing else:
#                 `docker run --rm` of `true` on the stack's network at
#                 weight 2, again and again (create, network, start, exit,
#                 remove)
#   burn          two processes spinning on the CPU at weight 2
#
# Usage: sudo scripts/bench.sh [flags]   (after sudo scripts/setup-host.sh)
#   --runs N          runs (3)
#   --rate R          requests/s of the kept-alive clients, all together (150)
#   --clients C       kept-alive clients (16)
#   --post-every K    one request in K is a POST /orders/ (20)
#   --close-rate R    requests/s of the connection-per-request clients (10; 0: none)
#   --steady S        seconds of steady load before each deploy (20)
#   --settle S        seconds of load after each deploy (5)
#   --picture PATH    the latency picture, .png or .svg (docs/bench/latency.png)
#   --out DIR         keep the measurements here (default: a temporary directory, removed)
#   --probes LIST     comma-separated probes (above) instead of the deploys
#   --registry-port P (5097)  --http-port P (8097)
# Needs: docker, docker-compose (or docker compose), docker-registry, go
# (/usr/local/go/bin), curl, ip (iproute2); python3 (or the base image's,
# through docker).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/shop-stack.sh
. "$root/scripts/lib/shop-stack.sh"
# shellcheck source=lib/cgroup.sh
. "$root/scripts/lib/cgroup.sh"
here=$root/examples/django
export PATH="/usr/local/go/bin:$PATH"

runs=3 rate=150 clients=16 post_every=20 close_rate=10 steady=20 settle=5
picture=$root/docs/bench/latency.png out= registry_port=5097 http_port=8097 probes=
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }
while (($#)); do
  case $1 in
    --runs|--rate|--clients|--post-every|--close-rate|--steady|--settle|--picture|--out|--registry-port|--http-port|--probes)
      [[ $# -ge 2 && -n $2 ]] || { echo "bench.sh: $1 needs a value" >&2; exit 2; }
      v=$2
      case $1 in
        --runs) runs=$v ;; --rate) rate=$v ;; --clients) clients=$v ;; --post-every) post_every=$v ;;
        --close-rate) close_rate=$v ;; --steady) steady=$v ;; --settle) settle=$v ;; --picture) picture=$v ;;
        --out) out=$v ;; --registry-port) registry_port=$v ;; --http-port) http_port=$v ;; --probes) probes=$v ;;
      esac
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
for n in "$runs" "$clients" "$post_every" "$steady" "$settle" "$registry_port" "$http_port"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "bench.sh: $n is not a whole number" >&2; exit 2; }
done
for n in "$rate" "$close_rate"; do
  [[ $n =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "bench.sh: $n is not a number" >&2; exit 2; }
done
((runs >= 1 && clients >= 1 && steady >= 3)) || { echo "bench.sh: --runs and --clients must be at least 1, --steady 3" >&2; exit 2; }
probe_list=()
if [[ -n $probes ]]; then
  IFS=, read -ra probe_list <<<"$probes"
  for p in "${probe_list[@]}"; do
    case $p in boot|boot-default|create|burn) ;; *) echo "bench.sh: unknown probe: $p (boot, boot-default, create, burn)" >&2; exit 2 ;; esac
  done
  [[ $(printf '%s\n' "${probe_list[@]}" | sort | uniq -d) == "" ]] || { echo "bench.sh: a probe is named twice in --probes" >&2; exit 2; }
fi
[[ $picture == /* ]] || picture=$PWD/$picture
[[ -z $out || $out == /* ]] || out=$PWD/$out

registry=127.0.0.1:$registry_port
# The clients' network namespace and the veth pair's addresses.
client_ns=berth-bench host_veth=berth-bench0 host_ip=10.231.0.1 client_ip=10.231.0.2
url=http://$host_ip:$http_port
cproject=benchcompose   # docker-compose's project
bproject=benchberth     # Berth's
started=$EPOCHREALTIME
agentd_pid= shop_registry_pid= load_pids=() work= fg_pid= probe_env=() layout=

# cpu_weight CGROUP: its cpu.shares (v1) or cpu.weight (v2), named.
cpu_weight() {
  local f
  f=$(cpu_weight_file)
  echo "$f $(cat "$(cpu_root)$1/$f" 2>/dev/null || echo ?)"
}
# record_layout: once, where dockerd and Berth's web container get their CPU.
record_layout() {
  [[ -z $layout ]] || return 0
  local d w
  d=$(cpu_cgroup "$(pgrep -xo dockerd)")
  w=$(cpu_cgroup "$(docker inspect -f '{{.State.Pid}}' $bproject-web-1)")
  layout="dockerd in $d ($(cpu_weight "$d")), web in $w ($(cpu_weight "$w")) (cgroup v$(docker info -f '{{.CgroupVersion}}'))"
}

# interruptible COMMAND...: run it and wait for it, in a way a signal interrupts (bash
# runs a trap only once the foreground command is done; `wait` it breaks).
interruptible() {
  "$@" &
  fg_pid=$!
  local rc=0
  wait "$fg_pid" || rc=$?
  fg_pid=
  return "$rc"
}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "bench: FATAL: $*" >&2; exit 1; }
note() { echo "bench: $*"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

[[ $(id -u) == 0 ]] || die "run me as root: sudo $0"
for c in docker docker-registry go curl ip; do
  command -v "$c" >/dev/null || die "$c is missing: run sudo scripts/setup-host.sh"
done
if command -v docker-compose >/dev/null; then compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then compose_cmd=(docker compose)
else die "neither docker-compose nor docker compose is installed"; fi
docker info >/dev/null 2>&1 || die "no Docker engine answers"
for p in $cproject $bproject; do
  [[ -z $(docker ps -aq --filter "label=com.docker.compose.project=$p") ]] ||
    die "containers of a compose project named $p exist already (another run?); remove them first"
done
# clients_net: the clients' namespace, its veth pair and addresses (a
# leftover of an interrupted run is removed first).
# Its caller tests it (errexit is off inside): every step is chained.
clients_net() {
  ip netns del $client_ns 2>/dev/null || true
  ip link del $host_veth 2>/dev/null || true
  ip netns add $client_ns &&
    ip link add $host_veth type veth peer name eth0 netns $client_ns &&
    ip addr add $host_ip/30 dev $host_veth &&
    ip link set $host_veth up &&
    ip -n $client_ns addr add $client_ip/30 dev eth0 &&
    ip -n $client_ns link set eth0 up &&
    ip -n $client_ns link set lo up &&
    ip -n $client_ns route add default via $host_ip
}
work=$(mktemp -d /tmp/berth-bench.XXXXXX)
data=${out:-$work/data}
mkdir -p "$data"

# remove_stack PROJECT: its containers, networks and volumes (by label).
remove_stack() {
  docker ps -aq --filter "label=com.docker.compose.project=$1" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=com.docker.compose.project=$1" | xargs -r docker network rm >/dev/null
  docker volume ls -q --filter "label=com.docker.compose.project=$1" | xargs -r docker volume rm >/dev/null
}

load_stop() {
  local p
  for p in "${load_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${load_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  load_pids=()
}

agentd_stop() {
  [[ -n $agentd_pid ]] || return 0
  kill -TERM "$agentd_pid" 2>/dev/null || true
  wait "$agentd_pid" 2>/dev/null || true
  agentd_pid=
}

cleanup() {
  local status=$?
  trap - EXIT
  set +e
  if [[ -n $fg_pid ]]; then kill -TERM "$fg_pid" 2>/dev/null; wait "$fg_pid" 2>/dev/null; fi
  load_stop
  agentd_stop
  if [[ $status != 0 && -f $work/agentd.log ]]; then
    echo "--- agentd log (last 30 lines)"
    tail -n 30 "$work/agentd.log"
  fi
  remove_stack $cproject
  docker rm -f $bproject-probe >/dev/null 2>&1
  remove_stack $bproject
  if [[ -n $shop_registry_pid ]]; then kill "$shop_registry_pid" 2>/dev/null; wait "$shop_registry_pid" 2>/dev/null; fi
  shop_remove_images
  ip netns del $client_ns 2>/dev/null
  ip link del $host_veth 2>/dev/null
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


load1=$(cut -d' ' -f1-3 /proc/loadavg)
clients_net || die "could not make the clients' network namespace $client_ns ($client_ip, the host $host_ip on $host_veth)"
step "base image; agentd, agentctl and the load generator"
t=$EPOCHREALTIME
base=$("$root/scripts/base-image.sh" | tail -n 1)
(cd "$root" && go build -o "$work/bin/" ./cmd/agentd ./cmd/agentctl ./examples/django/loadgen)
note "base image $base; built in $(since "$t")s"

step "registry on $registry; the shop's images"
shop_registry_start
t=$EPOCHREALTIME
shop_build_images
note "web v1 $web_v1"
note "web v2 $web_v2"
note "web v3 $web_v3 (its /healthz answers 503)"
note "built and pushed in $(since "$t")s"

cat >"$work/shop.env" <<ENV
REGISTRY=$registry
DJANGO_SECRET_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
POSTGRES_PASSWORD=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
RABBITMQ_PASSWORD=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
ALLOWED_HOSTS=localhost,127.0.0.1,$host_ip
HEALTH_HOST=localhost
HTTP_PORT=$host_ip:$http_port
ORDER_PROCESSING_SECONDS=1
SWEEP_INTERVAL=10
ENV
# docker-compose reads the images by tag: v1, then v2, then (not run) v3.
for v in v1 v2; do { cat "$work/shop.env"; echo "WEB_TAG=$v"; } >"$work/compose-$v.env"; done
# docker-compose needs a health check on web for nginx's depends_on
# (condition: service_healthy); Berth's is in x-berth. The same probe.
cat >"$work/compose.override.yaml" <<YAML
services:
  web:
    healthcheck:
      test: ["CMD", "curl", "-fsS", "-o", "/dev/null", "-H", "Host: localhost", "http://127.0.0.1:8000/healthz"]
      interval: 1s
      timeout: 5s
      retries: 3
      start_period: 60s
  # docker-compose 1.29 cuts the nested defaults of db's and rabbitmq's images
  # at their first "}": the same images, spelled out.
  db:
    image: $registry/shop/postgres:v1
  rabbitmq:
    image: $registry/shop/rabbitmq:v1
YAML
dc() { # dc VERSION ARGS...: docker-compose on the shop with the env of VERSION
  local v=$1
  shift
  "${compose_cmd[@]}" -p $cproject -f "$here/compose.yaml" -f "$work/compose.override.yaml" --env-file "$work/compose-$v.env" "$@"
}

mark() { echo "$1 $EPOCHREALTIME" >>"$phases"; }

# load_start FILE_PREFIX: the kept-alive clients (PREFIX.req) and the
# connection-per-request clients (PREFIX-close.req), in the background.
load_start() {
  ip netns exec $client_ns "$work/bin/loadgen" -url "$url" -rate "$rate" -clients "$clients" -post-every "$post_every" -keepalive \
    -timeout 10s -prefix "bench-$(basename "$1")" -log "$1.req" -summary "$1.json" 2>>"$work/loadgen.log" &
  load_pids=($!)
  if [[ $close_rate != 0 && $close_rate != 0.0 ]]; then
    ip netns exec $client_ns "$work/bin/loadgen" -url "$url" -rate "$close_rate" -clients 4 -post-every "$post_every" \
      -timeout 10s -prefix "bench-$(basename "$1")-close" -log "$1-close.req" -summary "$1-close.json" 2>>"$work/loadgen.log" &
    load_pids+=($!)
  else
    : >"$1-close.req"
  fi
}

# serving V: wait (up to 3 minutes) until GET /version through nginx answers V.
serving() {
  local deadline=$((SECONDS + 180))
  until curl -fsS -m 5 "$url/version" 2>/dev/null | grep -q "\"$1\""; do
    ((SECONDS < deadline)) || die "GET $url/version does not answer $1 after 180s"
    sleep 0.5
  done
}

agentd_start() {
  cat >"$work/agentd.yaml" <<YAML
state_dir: $work/state-$1
socket:
  path: $work/agentd.sock
projects:
  $bproject:
    compose_file: $here/compose.yaml
    env_file: $work/shop.env
YAML
  "$work/bin/agentd" --config "$work/agentd.yaml" --check
  "$work/bin/agentd" --config "$work/agentd.yaml" 2>>"$work/agentd.log" &
  agentd_pid=$!
  export BERTH_SOCKET=$work/agentd.sock
  local _
  for _ in $(seq 100); do
    "$work/bin/agentctl" status $bproject >/dev/null 2>&1 && return 0
    kill -0 "$agentd_pid" 2>/dev/null || die "agentd exited: $(tail -n 5 "$work/agentd.log")"
    sleep 0.1
  done
  die "agentd does not answer on $BERTH_SOCKET"
}

# berth_deploy IMAGE EVENTS: agentctl deploy of IMAGE to web, worker and
# beat, its --json events into EVENTS; returns its exit code.
berth_deploy() {
  interruptible "$work/bin/agentctl" deploy $bproject --image "web=$1" --image "worker=$1" --image "beat=$1" \
    --wait 1m --timeout 10m --json >"$2"
}

# probe NAME: one probe (--probes) beside the steady stack, marked
# NAME_start and NAME_end. A probe's container is created before its
# window, except create's, whose whole point is the engine's work. The
# boot probes run with web's settings, $probe_env (--env=... each).
probe() {
  local name=$bproject-probe
  # shellcheck disable=SC2016 # expanded by the probe's shell
  local loop='end=$(($(date +%s) + 6)); while [ "$(date +%s)" -lt "$end" ]; do python3 manage.py check >/dev/null || exit 1; done'
  case $1 in
    boot) docker create --name "$name" --cpu-shares 2 --network none "${probe_env[@]}" "$web_v1" sh -c "$loop" >/dev/null ;;
    boot-default) docker create --name "$name" --network none "${probe_env[@]}" "$web_v1" sh -c "$loop" >/dev/null ;;
    burn) docker create --name "$name" --cpu-shares 2 --network none "$web_v1" \
      sh -c 'python3 -c "while 1: pass" & python3 -c "while 1: pass" & sleep 6; kill %1 %2' >/dev/null ;;
  esac
  mark "$1_start"
  if [[ $1 == create ]]; then
    local end=$((SECONDS + 6))
    while ((SECONDS < end)); do
      docker run --rm --cpu-shares 2 --network "${bproject}_default" "$web_v1" true || die "probe create: docker run failed"
    done
  else
    docker start "$name" >/dev/null
    local code
    code=$(docker wait "$name")
    [[ $code == 0 || $1 == burn ]] || die "probe $1: its container exited $code: $(docker logs --tail 5 "$name" 2>&1)"
  fi
  mark "$1_end"
  docker rm -f "$name" >/dev/null 2>&1 || true
}

loads=()
for i in $(seq "$runs"); do
  dir=$data/run$i
  mkdir -p "$dir"
  loads+=("$(cut -d' ' -f1-3 /proc/loadavg)")

  if ((${#probe_list[@]})); then
    step "run $i of $runs: probes ${probe_list[*]} beside Berth's stack"
    phases=$dir/probes.phases
    : >"$phases"
    agentd_start "$i"
    berth_deploy "$web_v1" "$dir/berth-v1.jsonl" || die "the v1 deploy failed: $(tail -n 3 "$dir/berth-v1.jsonl")"
    serving v1
    record_layout
    mapfile -t probe_env < <(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$bproject-web-1" |
      grep -E '^(SECRET_KEY|DEBUG|ALLOWED_HOSTS|POSTGRES_|CELERY_)' | sed 's/^/--env=/')
    load_start "$dir/probes"
    mark load_start
    interruptible sleep "$steady"
    mark steady_end
    for p in "${probe_list[@]}"; do
      probe "$p"
      note "probe $p: $(awk -v p="$p" '$1==p"_start"{a=$2} $1==p"_end"{b=$2} END {printf "%.1f", b-a}' "$phases")s"
      interruptible sleep 4
    done
    load_stop
    agentd_stop
    remove_stack $bproject
    continue
  fi

  step "run $i of $runs: docker-compose ($("${compose_cmd[@]}" version --short 2>/dev/null || echo ?))"
  phases=$dir/compose.phases
  : >"$phases"
  t=$EPOCHREALTIME
  interruptible dc v1 pull -q
  interruptible dc v1 up -d db rabbitmq
  interruptible dc v1 up -d  # waits for db and rabbitmq healthy (web's depends_on), then web healthy (nginx's)
  interruptible dc v1 run --rm --no-deps web python3 manage.py migrate --noinput >/dev/null
  interruptible dc v1 run --rm --no-deps web python3 manage.py collectstatic --noinput >/dev/null
  serving v1
  note "v1 up in $(since "$t")s"
  load_start "$dir/compose"
  mark load_start
  interruptible sleep "$steady"
  mark deploy_start
  interruptible dc v2 pull -q
  mark hooks_start
  interruptible dc v2 run --rm --no-deps web python3 manage.py migrate --noinput >/dev/null
  interruptible dc v2 run --rm --no-deps web python3 manage.py collectstatic --noinput >/dev/null
  mark up_start
  interruptible dc v2 up -d
  mark deploy_end
  interruptible sleep "$settle"
  load_stop
  note "docker-compose deploy of v2: $(awk '$1=="deploy_start"{a=$2} $1=="deploy_end"{b=$2} END {printf "%.1f", b-a}' "$phases")s"
  curl -sS -m 5 "$url/version" || true; echo
  interruptible dc v2 down -v --remove-orphans >/dev/null 2>&1 || true
  remove_stack $cproject

  step "run $i of $runs: Berth"
  phases=$dir/berth.phases
  : >"$phases"
  agentd_start "$i"
  t=$EPOCHREALTIME
  berth_deploy "$web_v1" "$dir/berth-v1.jsonl" || die "the v1 deploy failed: $(tail -n 3 "$dir/berth-v1.jsonl")"
  serving v1
  note "v1 up in $(since "$t")s"
  record_layout
  load_start "$dir/berth"
  mark load_start
  interruptible sleep "$steady"
  mark deploy_start
  rc=0
  berth_deploy "$web_v2" "$dir/berth-deploy.jsonl" || rc=$?
  mark deploy_end
  interruptible sleep "$settle"
  load_stop
  ((rc == 0)) || note "WARNING: the deploy of v2 exited $rc"
  note "Berth deploy of v2: exit $rc, $(awk '$1=="deploy_start"{a=$2} $1=="deploy_end"{b=$2} END {printf "%.1f", b-a}' "$phases")s"

  mark noop_start
  berth_deploy "$web_v2" "$dir/berth-noop.jsonl" || note "WARNING: the no-op redeploy exited $?"
  mark noop_end

  load_start "$dir/berth-broken"
  interruptible sleep 3
  mark broken_start
  rc=0
  berth_deploy "$web_v3" "$dir/berth-broken.jsonl" || rc=$?
  mark broken_end
  interruptible sleep "$settle"
  load_stop
  cp "$dir/berth-broken.json" "$dir/berth-broken-versions.json"
  note "Berth deploy of the broken v3: exit $rc (1: failed, v2 restored)"
  curl -sS -m 5 "$url/version" || true; echo

  cat "/proc/$agentd_pid/status" >"$dir/agentd.status"
  cat "/proc/$agentd_pid/stat" >"$dir/agentd.stat"
  agentd_stop
  remove_stack $bproject
done
load2=$(cut -d' ' -f1-3 /proc/loadavg)

step "results ($runs run(s), $(since "$started")s in all)"
note "CPU cgroups (scripts/setup-host.sh): $layout"
note "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); docker $(docker version -f '{{.Server.Version}}'); $("${compose_cmd[@]}" version --short 2>/dev/null || echo compose)"
note "load average (1/5/15 min) at the start: $load1; at each run's start: ${loads[*]}; at the end: $load2"
note "clients: in the network namespace $client_ns ($client_ip), to nginx's port on $host_ip:$http_port (the kernel's DNAT)"
note "load: $rate req/s kept-alive ($clients clients, 1 in $post_every a POST), $close_rate req/s a connection per request; steady ${steady}s, settle ${settle}s"
((${#probe_list[@]} == 0)) || picture=
(cd "$root" && go run ./scripts/bench -dir "$data" -compose "$here/compose.yaml" -picture "$picture")
[[ -z $out ]] || note "measurements kept in $out"
