#!/usr/bin/env bash
# e2e.sh: the shop, deployed by Berth for real on this machine.
#
# Builds the images on Berth's Debian base image (scripts/base-image.sh: no
# Docker Hub, no PyPI), pushes them to a local registry, runs agentd with the
# project `shop` (this directory's compose.yaml), and then:
#   1. deploys v1 with agentctl; creates orders through nginx and waits for
#      Celery to process them; waits for beat's periodic sweep to run;
#   2. builds v2 (APP_VERSION=v2, plus an additive migration: a new nullable
#      field, made with `makemigrations` in a container) and deploys it with
#      agentctl under load (orders created and /version read all along),
#      then checks: exit 0, /version is v2, no request failed, every order
#      (old and new) processed, the stopped containers' exit codes;
#   3. builds v3 and deploys it by digest with ci/deploy.sh, the CI deploy
#      job's script, over agentd's SSH server with a pinned host key.
# Everything it started is stopped and removed at the end (E2E_KEEP=1 leaves
# the stack, agentd and the registry running).
#
# Usage: sudo examples/django/e2e.sh
# Env: E2E_REGISTRY_PORT (5099), E2E_HTTP_PORT (8080), E2E_SSH_PORT (2222)
# Needs: docker, docker-registry, go, curl, python3, ssh, openssl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PATH="/usr/local/go/bin:$PATH"

project=shop
registry=127.0.0.1:${E2E_REGISTRY_PORT:-5099}
http_port=${E2E_HTTP_PORT:-8080}
ssh_port=${E2E_SSH_PORT:-2222}
url=http://127.0.0.1:$http_port
work=$(mktemp -d /tmp/shop-e2e.XXXXXX)
pids=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "e2e: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

if [[ -n $(docker ps -aq --filter "label=com.docker.compose.project=$project") ]]; then
  die "containers of a compose project named $project exist already; remove them first"
fi

cleanup() {
  status=$?
  [[ -z ${load_pid:-} ]] || kill "$load_pid" 2>/dev/null || true
  if [[ $status != 0 && -f $work/agentd.log ]]; then
    echo "--- agentd log (last 30 lines)"; tail -n 30 "$work/agentd.log"
  fi
  if [[ ${E2E_KEEP:-} == 1 ]]; then
    echo "e2e: left running (E2E_KEEP=1): agentd (pid ${pids[1]:-?}, BERTH_SOCKET=$work/agentd.sock), the registry (pid ${pids[0]:-?}), the stack; work directory $work"
    return
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null
  docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null
  docker images --format '{{.Repository}}:{{.Tag}}' "$registry/shop/*" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step "base image, agentd and agentctl"
base=$("$root/scripts/base-image.sh" | tail -n 1)
echo "base image: $base"
(cd "$root" && go build -o "$work/bin/" ./cmd/agentd ./cmd/agentctl)

step "registry on $registry"
mkdir -p "$work/registry"
cat >"$work/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $registry
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -fs "http://$registry/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$registry/v2/" >/dev/null || die "the registry did not start: $(cat "$work/registry.log")"

build() { # build NAME TAG DIR [build args...]: build and push $registry/shop/NAME:TAG; print its digest ref
  local name=$1 ref=$registry/shop/$1:$2 dir=$3 digest
  shift 3
  docker build -q --build-arg BASE="$base" "$@" -t "$ref" "$dir" >/dev/null 2>"$work/build.log" ||
    { cat "$work/build.log" >&2; die "build of $ref failed"; }
  digest=$(docker push "$ref" | sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' | tail -n 1)
  [[ -n $digest ]] || die "push of $ref printed no digest"
  echo "$registry/shop/$name@$digest"
}

step "build and push web:v1, nginx:v1, postgres:v1, rabbitmq:v1"
t=$(now)
build web v1 "$here" --build-arg APP_VERSION=v1 >/dev/null
build nginx v1 "$here/nginx" >/dev/null
build postgres v1 "$here/postgres" >/dev/null
build rabbitmq v1 "$here/rabbitmq" >/dev/null
echo "built and pushed in $(since "$t")s"

step "agentd (socket, and SSH on 127.0.0.1:$ssh_port for ci/deploy.sh)"
ssh-keygen -q -t ed25519 -N "" -C "ci shop" -f "$work/ci_key"
cat >"$work/shop.env" <<ENV
REGISTRY=$registry
DJANGO_SECRET_KEY=$(openssl rand -hex 32)
POSTGRES_PASSWORD=$(openssl rand -hex 16)
RABBITMQ_PASSWORD=$(openssl rand -hex 16)
ALLOWED_HOSTS=localhost,127.0.0.1
HEALTH_HOST=localhost
HTTP_PORT=127.0.0.1:$http_port
ORDER_PROCESSING_SECONDS=1
SWEEP_INTERVAL=10
ENV
cat >"$work/agentd.yaml" <<YAML
state_dir: $work/state
socket:
  path: $work/agentd.sock
projects:
  $project:
    compose_file: $here/compose.yaml
    env_file: $work/shop.env
ssh:
  listen: "127.0.0.1:$ssh_port"
identities:
  - name: ci-shop
    ssh_keys:
      - '$(cat "$work/ci_key.pub")'
    projects: [$project]
    verbs: [deploy, status, history]
YAML
"$work/bin/agentd" --config "$work/agentd.yaml" --check
"$work/bin/agentd" --config "$work/agentd.yaml" 2>"$work/agentd.log" &
pids+=($!)
export BERTH_SOCKET=$work/agentd.sock
for _ in $(seq 50); do [[ -S $BERTH_SOCKET ]] && break; sleep 0.1; done
ctl() { echo "\$ agentctl $*"; "$work/bin/agentctl" "$@"; }

step "deploy v1"
t=$(now)
ctl deploy "$project" --message "v1"
v1_time=$(since "$t")
echo "v1 deploy: ${v1_time}s"

step "orders through nginx ($url)"
curl -fsS "$url/healthz"; echo
curl -fsS "$url/version"; echo
for name in espresso latte cortado "flat white" mocha; do
  curl -fsS -X POST -H 'Content-Type: application/json' -d "{\"name\": \"$name\"}" "$url/orders/"; echo
done
t=$(now)
for _ in $(seq 100); do
  [[ $(curl -fsS "$url/orders/" | json 'd["unprocessed"]') == 0 ]] && break
  sleep 0.1
done
curl -fsS "$url/orders/" | json '"\n".join("%(id)s %(name)-10s processed_at=%(processed_at)s result=%(result)s" % o for o in d["orders"])'
[[ $(curl -fsS "$url/orders/" | json 'd["unprocessed"]') == 0 ]] || die "orders not processed"
echo "all processed within $(since "$t")s of the last POST (each takes ORDER_PROCESSING_SECONDS=1)"
curl -fsS -o /dev/null -w "static: GET /static/admin/css/base.css -> %{http_code} %{content_type}\n" "$url/static/admin/css/base.css"

step "celery beat: the periodic sweep (every 10s here)"
for _ in $(seq 40); do
  docker logs shop-worker-1 2>&1 | grep -q 'sweep:' && break
  docker logs shop-worker-2 2>&1 | grep -q 'sweep:' && break
  sleep 1
done
docker logs shop-beat-1 2>&1 | grep 'Sending due task' | tail -n 2
docker logs shop-worker-1 2>&1 | grep 'sweep:' | tail -n 1 || true
docker logs shop-worker-2 2>&1 | grep 'sweep:' | tail -n 1 || true

step "build v2: APP_VERSION=v2 and a new nullable field Order.note (makemigrations in a container)"
mkdir -p "$work/v2"
cp -a "$here/." "$work/v2/"
python3 - "$work/v2/orders/models.py" <<'PY'
import sys
path = sys.argv[1]
src = open(path).read()
anchor = "    result = models.CharField(max_length=200, null=True, blank=True)\n"
assert anchor in src
src = src.replace(anchor, anchor + "    note = models.TextField(null=True, blank=True)  # v2\n")
open(path, "w").write(src)
PY
docker run --rm -u 0 -e DEBUG=1 -v "$work/v2:/app" -w /app "$base" sh -c \
  'python3 manage.py makemigrations orders --name order_note && rm -f db.sqlite3 && find . -name __pycache__ -prune -exec rm -rf {} +'
web_v2=$(build web v2 "$work/v2" --build-arg APP_VERSION=v2)
echo "web:v2 is $web_v2"

step "deploy v2 (web, worker and beat) under load"
load() { # until killed: POST an order every ~1s, GET /version every ~0.1s
  local i=0 code body
  while :; do
    i=$((i + 1))
    if ((i % 8 == 0)); then
      code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 -X POST -H 'Content-Type: application/json' \
        -d "{\"name\": \"during-deploy-$i\"}" "$url/orders/") || true
      echo "POST $code" >>"$work/load.log"
    fi
    body=$(curl -s -m 10 -w ' %{http_code}' "$url/version") || body="curl-error"
    echo "GET $body" >>"$work/load.log"
    sleep 0.1
  done
}
: >"$work/load.log"
load &
load_pid=$!
sleep 2
t=$(now)
t_events=$(date +%s)
ctl deploy "$project" --image "web=$registry/shop/web:v2" --image "worker=$registry/shop/web:v2" \
  --image "beat=$registry/shop/web:v2" --message "v2: Order.note"
v2_time=$(since "$t")
sleep 2
kill "$load_pid"
load_pid=
echo "v2 deploy: ${v2_time}s"
echo "requests through nginx during the deploy (count, what):"
sed -e 's/{"version": "\(v[0-9]*\)"}/\1/' "$work/load.log" | sort | uniq -c
# Every GET must succeed. A POST may come back 502 when the old container
# closes its listener with it in the listen queue (nginx does not retry a
# non-idempotent request; see nginx/nginx.conf): reported, not fatal.
if grep -v -e '^GET .* 200$' -e '^POST 201$' -e '^POST 502$' "$work/load.log" >/dev/null; then
  die "some requests failed during the deploy"
fi
if grep -q '^POST 502$' "$work/load.log"; then
  echo "note: $(grep -c '^POST 502$' "$work/load.log") POST(s) answered 502 during the switch (the known limitation in README.md)"
fi
echo "containers that exited during the deploy:"
docker events --since "$t_events" --until "$(date +%s)" --filter "label=com.docker.compose.project=$project" \
  --filter event=die --format '  {{.Actor.Attributes.name}}: exit code {{.Actor.Attributes.exitCode}}'
curl -fsS "$url/version"; echo
[[ $(curl -fsS "$url/version" | json 'd["version"]') == v2 ]] || die "/version is not v2"
t=$(now)
for _ in $(seq 150); do
  [[ $(curl -fsS "$url/orders/" | json 'd["unprocessed"]') == 0 ]] && break
  sleep 0.2
done
curl -fsS "$url/orders/" | json '"orders: %d in all, %d unprocessed; the v1 ones: %s" % (d["total"], d["unprocessed"], ", ".join(o["name"] + (" (processed)" if o["processed_at"] else " (NOT processed)") for o in d["orders"] if not o["name"].startswith("during-deploy")))'
[[ $(curl -fsS "$url/orders/" | json 'd["unprocessed"]') == 0 ]] || die "orders left unprocessed after the v2 deploy"
docker exec shop-db-1 psql -U shop -d shop -Atc \
  "select 'column orders_order.note: ' || data_type from information_schema.columns where table_name = 'orders_order' and column_name = 'note'"
echo "duplicate deliveries handled (\"already processed\"): $(docker logs shop-worker-1 2>&1 | grep -c 'already processed' || true) + $(docker logs shop-worker-2 2>&1 | grep -c 'already processed' || true)"

step "build v3 and deploy it by digest with ci/deploy.sh over SSH (what the CI deploy job runs)"
web_v3=$(build web v3 "$work/v2" --build-arg APP_VERSION=v3)
t=$(now)
env -i PATH="$PATH" HOME="$work" \
  DEPLOY_HOST=127.0.0.1 DEPLOY_PORT="$ssh_port" BERTH_SSH_KEY="$work/ci_key" \
  SSH_KNOWN_HOSTS="$("$work/bin/agentctl" host-key --host 127.0.0.1)" \
  BERTH_PROJECT=$project WEB_IMAGE="$web_v3" CI_COMMIT_SHORT_SHA=e2e GITLAB_USER_LOGIN=e2e \
  sh "$here/ci/deploy.sh"
v3_time=$(since "$t")
curl -fsS "$url/version"; echo
[[ $(curl -fsS "$url/version" | json 'd["version"]') == v3 ]] || die "/version is not v3"

step "status and history"
ctl status "$project"
echo
ctl history "$project"

step "done"
echo "deploy times: v1 ${v1_time}s (first deploy: RabbitMQ and PostgreSQL start from nothing), v2 ${v2_time}s (with a migration, under load), v3 ${v3_time}s (over SSH, by digest)"
