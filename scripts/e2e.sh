#!/usr/bin/env bash
# e2e.sh: the reference Django shop (examples/django), deployed by Berth for
# real on this machine, the way CI deploys it, under load.
#
# Builds the images on Berth's Debian base image (scripts/base-image.sh,
# cached: no Docker Hub, no PyPI) for three versions of the code, pushes them
# to a local registry (docker-registry), builds agentd, agentctl and the load
# generator (examples/django/loadgen), starts agentd with the project `shop`
# and its SSH server, and then:
#   1. deploys v1 over SSH with the real OpenSSH client (ci/deploy.sh, host
#      key pinned), which ships examples/django/compose.yaml with the request
#      (the project has no compose file on the host: ship-only, with its
#      policy: allowed_images, allowed_ports); creates orders through nginx
#      and checks that Celery processed each of them into PostgreSQL;
#   2. deploys v2 (APP_VERSION=v2 and an additive migration: a new nullable
#      field) with the pipeline's deploy:production job, run by gitlab-ci-local
#      (scripts/lib/gitlab-job.sh; the job runs the same ci/deploy.sh over
#      SSH; with E2E_GITLAB=0, ci/deploy.sh runs directly) while the load generator
#      sends steady traffic through nginx and Celery tasks are in flight: no
#      request may fail, every order (old and new) must be processed exactly
#      once, and /version answers only v1 or v2. The job ships the compose
#      file of a new commit of the repository: a new environment variable
#      (SHIPPED_BY, read back with docker inspect) and 3 web replicas instead
#      of 2, while db, rabbitmq and nginx, which it does not change, keep
#      their containers; the release records that commit (--source);
#   2b. ships a compose file that adds `privileged: true` to web, as a dry run
#      and as a deploy: both exit 2 naming web, privileged and true, and
#      nothing changes (the same containers, the same live and newest
#      release); a dry run of the live file exits 0 with nothing to change;
#   3. deploys a broken v3 (v2's code, its /healthz answers 503: HEALTHZ_FAIL
#      baked into the image) with the same job under the same load: the deploy
#      must exit 1, v2 must keep serving (/version never answers v3), no
#      request may fail;
#   4. `agentctl rollback shop --to 1` over the unix socket, under load: v1
#      serves again on the v2 schema (the additive migration stays), with
#      release 1's recorded compose file (2 web replicas, no SHIPPED_BY);
#   5. prints a table: requests sent and failed, tasks sent and completed
#      exactly once, deploy and rollback times, per step.
# Before step 1, the example's own tests (examples/django/tests) run in web
# v1 against a PostgreSQL of the postgres image: any failure fails the run.
# After every step, `agentctl status shop --json` and `history shop --json`
# are checked against the engine (the live release, its outcome, the image
# every web/worker/beat container runs, by digest and image ID, the replicas,
# the shipped compose file's SHIPPED_BY) and their text is printed.
#
# Any failed check fails the run (exit 1) with a FAIL line saying what; the
# table is printed all the same. Everything started is removed at the end;
# E2E_KEEP=1 leaves the stack, agentd and the registry running.
#
# Usage: sudo scripts/e2e.sh   (after sudo scripts/setup-host.sh)
# Env: E2E_REGISTRY_PORT (5099), E2E_HTTP_PORT (8080), E2E_SSH_PORT (2222),
#      E2E_RATE (50 requests/s), E2E_CLIENTS (8), E2E_POST_EVERY (10: one
#      request in 10 creates an order), E2E_GITLAB (0: steps 2 and 3 run
#      ci/deploy.sh directly instead of the GitLab job in gitlab-ci-local), E2E_KEEP (1: leave it all running)
# Needs: docker, docker-registry, go (/usr/local/go/bin), curl, ssh,
#        ssh-keygen, openssl; python3 (or the base image's, through docker).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/shop-stack.sh
. "$root/scripts/lib/shop-stack.sh"
here=$root/examples/django
export PATH="/usr/local/go/bin:$PATH"

project=shop
registry=127.0.0.1:${E2E_REGISTRY_PORT:-5099}
http_port=${E2E_HTTP_PORT:-8080}
ssh_port=${E2E_SSH_PORT:-2222}
url=http://127.0.0.1:$http_port
rate=${E2E_RATE:-50}
clients=${E2E_CLIENTS:-8}
post_every=${E2E_POST_EVERY:-10}
# Requests the load generator sends before a deploy starts and after it ends.
load_before=$((rate * 2))
load_after=$((rate * 3))

started=$EPOCHREALTIME
pids=()
failures=()
rows=()
table_done=0
load_pid=
work=

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "e2e: FATAL: $*" >&2; exit 1; }
fail() { echo "e2e: FAIL: $*" >&2; failures+=("$*"); }
note() { echo "e2e: $*"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

[[ $(id -u) == 0 ]] || die "run me as root: sudo $0"
for c in docker docker-registry go curl ssh ssh-keygen openssl; do
  command -v "$c" >/dev/null || die "$c is missing: run sudo scripts/setup-host.sh"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers: run sudo scripts/setup-host.sh"
if [[ -n $(docker ps -aq --filter "label=com.docker.compose.project=$project") ]]; then
  die "containers of a compose project named $project exist already (another run, or E2E_KEEP=1?); remove them first"
fi
work=$(mktemp -d /tmp/berth-e2e.XXXXXX)

print_table() {
  ((${#rows[@]})) || return 0
  table_done=1
  step "summary ($(since "$started")s in all)"
  printf '%-34s %9s %7s %11s %15s %9s\n' step requests failed "tasks sent" "completed once" "time (s)" "${rows[@]}"
}

cleanup() {
  local status=$?
  trap - EXIT
  set +e
  if [[ -n $load_pid ]]; then kill "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null; fi
  ((table_done)) || print_table
  if [[ $status != 0 && -f $work/agentd.log ]]; then
    echo "--- agentd log (last 40 lines)"
    tail -n 40 "$work/agentd.log"
  fi
  if [[ ${E2E_KEEP:-} == 1 ]]; then
    echo "e2e: left running (E2E_KEEP=1): agentd (pid ${pids[1]:-?}; BERTH_SOCKET=$work/agentd.sock $work/bin/agentctl status), the registry (pid ${pids[0]:-?}), the stack on $url; work directory $work"
    exit "$status"
  fi
  # The registry, also when it died before its pid went into pids.
  [[ -z ${shop_registry_pid:-} ]] || { kill "$shop_registry_pid" 2>/dev/null; wait "$shop_registry_pid" 2>/dev/null; }
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  docker rm -f "$project-tests-db" >/dev/null 2>&1
  docker network rm "$project-tests" >/dev/null 2>&1
  docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null
  docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null
  shop_remove_images
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


step "base image; agentd, agentctl and the load generator"
t=$EPOCHREALTIME
base=$("$root/scripts/base-image.sh" | tail -n 1)
note "base image: $base"
(cd "$root" && go build -o "$work/bin/" ./cmd/agentd ./cmd/agentctl ./examples/django/loadgen)
note "ready in $(since "$t")s"

step "registry on $registry"
shop_registry_start
pids+=("$shop_registry_pid")

step "images: web v1, v2 (+ migration), v3 (health check fails); nginx, postgres, rabbitmq"
t=$EPOCHREALTIME
shop_build_images
note "web v1 $web_v1"
note "web v2 $web_v2"
note "web v3 $web_v3"
note "built and pushed in $(since "$t")s"

step "0. the example's own tests (examples/django/tests): python3 manage.py test in web v1, against the postgres image"
t=$EPOCHREALTIME
docker network create "$project-tests" >/dev/null
docker run -d --name "$project-tests-db" --network "$project-tests" --network-alias db \
  -e POSTGRES_DB=shop -e POSTGRES_USER=shop -e POSTGRES_PASSWORD=tests-only "$registry/shop/postgres:v1" >/dev/null
deadline=$((SECONDS + 60))
until docker exec "$project-tests-db" pg_isready -q -h 127.0.0.1 -U shop -d shop; do
  ((SECONDS < deadline)) || die "the tests' PostgreSQL is not ready after 60s"
  sleep 0.5
done
if docker run --rm --network "$project-tests" -e POSTGRES_HOST=db -e POSTGRES_DB=shop -e POSTGRES_USER=shop \
  -e POSTGRES_PASSWORD=tests-only -e SECRET_KEY=tests-only -e CELERY_BROKER_URL=amqp://tests@broker.invalid// \
  "$web_v1" python3 manage.py test >"$work/django-tests.log" 2>&1; then
  note "$(grep -E '^Ran [0-9]+ tests' "$work/django-tests.log"), OK, in $(since "$t")s"
else
  fail "the example's Django tests failed: $(grep -E '^(FAIL|ERROR|Ran|FAILED)' "$work/django-tests.log" | tr '\n' ' ')"
  tail -n 30 "$work/django-tests.log" >&2
fi
docker rm -f "$project-tests-db" >/dev/null
docker network rm "$project-tests" >/dev/null

step "agentd: unix socket, SSH on 127.0.0.1:$ssh_port for ci/deploy.sh"
ssh-keygen -q -t ed25519 -N "" -C "ci shop" -f "$work/ci_key"
secret_key=$(openssl rand -hex 32)
pg_password=$(openssl rand -hex 16)
mq_password=$(openssl rand -hex 16)
cat >"$work/shop.env" <<ENV
REGISTRY=$registry
DJANGO_SECRET_KEY=$secret_key
POSTGRES_PASSWORD=$pg_password
RABBITMQ_PASSWORD=$mq_password
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
    # No compose_file: every deploy ships it from the repository
    # (ci/deploy.sh), within this policy.
    env_file: $work/shop.env
    request_variables: [DJANGO_SECRET_KEY, POSTGRES_PASSWORD, RABBITMQ_PASSWORD]
    allowed_images: ["$registry/shop/*"]
    allowed_ports: ["127.0.0.1:$http_port"]
ssh:
  listen: "127.0.0.1:$ssh_port"
identities:
  - name: ci-shop
    ssh_keys:
      - '$(cat "$work/ci_key.pub")'
    projects: [$project]
    verbs: [deploy, status, history]
    ship_compose: true
YAML
"$work/bin/agentd" --config "$work/agentd.yaml" --check
"$work/bin/agentd" --config "$work/agentd.yaml" 2>"$work/agentd.log" &
pids+=($!)
export BERTH_SOCKET=$work/agentd.sock
for _ in $(seq 100); do
  "$work/bin/agentctl" status "$project" >/dev/null 2>&1 && break
  kill -0 "${pids[1]}" 2>/dev/null || die "agentd exited: $(tail -n 5 "$work/agentd.log")"
  sleep 0.1
done
"$work/bin/agentctl" status "$project" >/dev/null || die "agentd does not answer on $BERTH_SOCKET"
known_hosts=$("$work/bin/agentctl" host-key --host 127.0.0.1)
printf '%s\n' "$known_hosts" >"$work/known_hosts"
note "pinned host key: $known_hosts"
ctl() { echo "\$ agentctl $*"; "$work/bin/agentctl" "$@"; }

# deploy_over_ssh WEB_IMAGE [REPO]: what the CI deploy job runs: ci/deploy.sh
# with the real OpenSSH client, in a clean environment, to agentd's SSH
# server with its host key pinned. It ships REPO's compose.yaml (default
# examples/django) and the secrets in a tar on stdin (--compose-file -
# --env-file -). Returns the deploy's exit code. $message is recorded with
# the release; DEPLOY_DRY_RUN=1 in the environment makes it a dry run.
deploy_over_ssh() {
  local repo=${2:-$here}
  env -i PATH="$PATH" HOME="$work" \
    DEPLOY_HOST=127.0.0.1 DEPLOY_PORT="$ssh_port" BERTH_SSH_KEY="$work/ci_key" \
    SSH_KNOWN_HOSTS="$known_hosts" BERTH_PROJECT=$project WEB_IMAGE="$1" \
    DEPLOY_MESSAGE="$message" DEPLOY_WAIT=1m DEPLOY_TIMEOUT=5m DEPLOY_DRY_RUN="${DEPLOY_DRY_RUN:-0}" \
    DJANGO_SECRET_KEY="$secret_key" POSTGRES_PASSWORD="$pg_password" RABBITMQ_PASSWORD="$mq_password" \
    sh "$repo/ci/deploy.sh"
}

# Steps 2 and 3 run the pipeline's deploy job itself (deploy:production of
# examples/django/.gitlab-ci.yml in gitlab-ci-local: scripts/lib/gitlab-job.sh,
# which installs gitlab-ci-local with npm); the job runs the same ci/deploy.sh
# over SSH. With E2E_GITLAB=0, deploy_over_ssh like step 1.
ci_via=ssh
if [[ ${E2E_GITLAB:-1} == 1 ]]; then
  [[ -f $root/scripts/lib/gitlab-job.sh ]] || die "E2E_GITLAB=1 needs scripts/lib/gitlab-job.sh"
  # shellcheck source=lib/gitlab-job.sh
  . "$root/scripts/lib/gitlab-job.sh"
  gitlab_job_setup "$work/gitlab" "$base" ||
    die "gitlab_job_setup failed (with E2E_GITLAB=0, steps 2 and 3 run ci/deploy.sh over SSH without it)"
  ci_via="gitlab job"
fi

# The repository CI deploys from: the pipeline's (gitlab-ci-local's copy of
# examples/django), or with E2E_GITLAB=0 a copy of examples/django's
# compose.yaml and ci/. Step 2 commits a changed compose.yaml to it.
if [[ $ci_via == ssh ]]; then
  ci_repo=$work/repo
  mkdir -p "$ci_repo"
  cp -a "$here/ci" "$here/compose.yaml" "$ci_repo/"
  git -C "$ci_repo" init -q -b main
  git -C "$ci_repo" add -A
  git -C "$ci_repo" -c user.name=e2e -c user.email=e2e@berth.invalid commit -q -m "examples/django's compose.yaml"
else
  ci_repo=$work/gitlab/repo
fi
# ci_commit MESSAGE: commit what changed in the CI repository; its SHA.
ci_commit() {
  if [[ $ci_via == ssh ]]; then
    git -C "$ci_repo" add -A
    git -C "$ci_repo" -c user.name=e2e -c user.email=e2e@berth.invalid commit -q -m "$1"
    git -C "$ci_repo" rev-parse HEAD
  else
    gitlab_job_commit "$work/gitlab" "$1"
  fi
}

# ci_deploy WEB_IMAGE: steps 2 and 3's deploy, as CI runs it; the deploy's exit code.
ci_deploy() {
  [[ $ci_via == ssh ]] && { deploy_over_ssh "$1" "$ci_repo"; return; }
  DEPLOY_HOST=127.0.0.1 DEPLOY_PORT="$ssh_port" BERTH_SSH_KEY="$work/ci_key" \
    SSH_KNOWN_HOSTS="$known_hosts" BERTH_PROJECT=$project WEB_IMAGE="$1" \
    DEPLOY_MESSAGE="$message" DEPLOY_WAIT=1m DEPLOY_TIMEOUT=5m \
    DJANGO_SECRET_KEY="$secret_key" POSTGRES_PASSWORD="$pg_password" RABBITMQ_PASSWORD="$mq_password" \
    gitlab_deploy_job "$work/gitlab"
}

# --- load and orders ---------------------------------------------------------

# load_start NAME: the load generator in the background; its order names are
# e2e-NAME-N. Returns once it has sent $load_before requests.
load_start() {
  load_name=$1
  : >"$work/$1.log"
  "$work/bin/loadgen" -url "$url" -rate "$rate" -clients "$clients" -post-every "$post_every" \
    -timeout 10s -prefix "e2e-$1" -summary "$work/$1.json" -ids "$work/$1.ids" -log "$work/$1.log" \
    2>>"$work/loadgen.log" &
  load_pid=$!
  load_wait "$load_before"
}

# load_wait N: until the load generator has sent N more requests.
load_wait() {
  local target=$(($(wc -l <"$work/$load_name.log") + $1)) deadline=$((SECONDS + $1 / rate * 4 + 30))
  while (($(wc -l <"$work/$load_name.log") < target)); do
    kill -0 "$load_pid" 2>/dev/null || die "the load generator exited: $(tail -n 3 "$work/loadgen.log")"
    ((SECONDS < deadline)) || die "the load generator sent under $1 requests in $((deadline - SECONDS))s"
    sleep 0.2
  done
}

# load_stop: SIGTERM; it finishes the requests in flight and writes its summary.
load_stop() {
  kill -TERM "$load_pid"
  wait "$load_pid" || die "the load generator failed: $(tail -n 3 "$work/loadgen.log")"
  load_pid=
  cat "$work/$load_name.ids" >>"$work/all.ids"
}

# load_report NAME ALLOWED_VERSIONS: print the summary; fail on any failed
# request, or a /version answer not among ALLOWED_VERSIONS (space-separated).
load_report() {
  local out
  out=$(py - "$work/$1.json" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
allowed = sys.argv[2].split()
print("requests: %d sent in %.1fs (%.1f/s), %d failed; %d orders created" % (s["sent"], s["seconds"], s["rate"], s["failed"], s["created"]))
for k in sorted(s["requests"]):
    r = s["requests"][k]
    print("  %-14s %5d sent %4d failed  %s" % (k, r["sent"], r["failed"], "  ".join("%s: %d" % kv for kv in sorted(r["outcomes"].items()))))
print("  /version answered: " + ", ".join("%s %d times" % kv for kv in sorted(s["versions"].items())))
for e in s["errors"][:10]:
    print("  failed: %s %s: %s" % (e["time"][11:23], e["request"], e["error"]))
print("SENT %d" % s["sent"])
print("FAILED %d" % s["failed"])
other = sorted(set(s["versions"]) - set(allowed))
if other:
    print("VERSIONS /version answered %s (allowed: %s)" % (" ".join(other), " ".join(allowed)))
PY
  ) || die "cannot read the load generator's summary $work/$1.json"
  grep -v -e '^SENT ' -e '^FAILED ' -e '^VERSIONS ' <<<"$out"
  sent=$(sed -n 's/^SENT //p' <<<"$out")
  failed=$(sed -n 's/^FAILED //p' <<<"$out")
  ((failed == 0)) || fail "$1: $failed of $sent requests failed (502s on POST: see the known limitation in examples/django/README.md)"
  if grep -q '^VERSIONS ' <<<"$out"; then fail "$1: $(sed -n 's/^VERSIONS //p' <<<"$out")"; fi
}

container_of() { # container_of SERVICE: the ID of a running container of the service
  docker ps -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --filter status=running | head -n 1
}
psql_q() { docker exec -i "$(container_of db)" psql -U shop -d shop -v ON_ERROR_STOP=1 -Atc "$1"; }

# orders_check NAME: wait until Celery has processed every order; then check
# that every order any step created (all.ids) is there, processed, and was
# processed exactly once (completions = 1), and count this step's orders.
orders_check() {
  local t=$EPOCHREALTIME deadline=$((SECONDS + 240)) pending
  while :; do
    pending=$(psql_q "select count(*) from orders_order where processed_at is null") || pending=unknown
    [[ $pending == 0 ]] && break
    ((SECONDS < deadline)) || { fail "$1: $pending order(s) still unprocessed after 240s"; break; }
    sleep 0.5
  done
  note "every order processed $(since "$t")s after the load stopped"
  sort -n -u "$work/all.ids" >"$work/all.sorted"
  psql_q "select id from orders_order order by id" | sort -n >"$work/db.ids"
  local missing
  missing=$(comm -23 "$work/all.sorted" "$work/db.ids" | wc -l)
  ((missing == 0)) || fail "$1: $missing order(s) created through nginx are missing from PostgreSQL: $(comm -23 "$work/all.sorted" "$work/db.ids" | head -n 5 | tr '\n' ' ')"
  local counts
  counts=$(psql_q "select count(*), count(*) filter (where processed_at is not null and completions = 1),
      count(*) filter (where completions > 1), count(*) filter (where processed_at is not null and completions = 0)
    from orders_order where name like 'e2e-$1-%'")
  IFS='|' read -r tasks_sent tasks_once tasks_more tasks_none <<<"$counts"
  local all
  all=$(psql_q "select count(*) || ' orders in all, ' || count(*) filter (where completions = 1 and processed_at is not null) || ' processed exactly once, ' || count(*) filter (where completions <> 1) || ' not' from orders_order")
  note "orders of $1: $tasks_sent created (the load generator saw $(wc -l <"$work/$1.ids") created), $tasks_once processed exactly once, $tasks_more more than once; $all"
  ((tasks_sent == $(wc -l <"$work/$1.ids"))) ||
    note "$1: $tasks_sent orders in PostgreSQL, $(wc -l <"$work/$1.ids") answered 201 (a POST that failed after Django committed it)"
  ((tasks_more == 0)) || fail "$1: $tasks_more order(s) processed more than once"
  ((tasks_none == 0)) || fail "$1: $tasks_none order(s) with processed_at set but completions 0"
  ((tasks_once == tasks_sent)) || fail "$1: $((tasks_sent - tasks_once)) of $tasks_sent orders not processed exactly once"
  local notonce
  notonce=$(psql_q "select count(*) from orders_order where completions <> 1 or processed_at is null")
  ((notonce == 0)) || fail "$1: $notonce order(s) of all the steps not processed exactly once"
}

# --- what agentd says against what runs -------------------------------------

image_id() { docker image inspect -f '{{.Id}}' "$1"; }

# truth_check STEP LIVE NEWEST OUTCOME KIND WEB_IMAGE WEB_REPLICAS SHIPPED_BY
# [KEY=VALUE...]: status and history (JSON) against the engine: LIVE is the
# live release (status's current), NEWEST history's newest release with
# OUTCOME and KIND, every web, worker and beat container runs WEB_IMAGE (by
# digest and image ID) with SHIPPED_BY in its environment ("-": not set),
# and web runs WEB_REPLICAS containers; the live release's record holds the
# shipped compose file; KEY=VALUE are more fields of the newest release
# (restored_to=2, rollback_of=1, source=SHA).
truth_check() {
  local name=$1 live=$2 newest=$3 outcome=$4 kind=$5 image=$6 web_replicas=$7 shipped_by=$8
  shift 8
  "$work/bin/agentctl" status "$project" --json >"$work/status.json" || { fail "$name: agentctl status --json failed"; return; }
  "$work/bin/agentctl" history "$project" --json >"$work/history.json" || { fail "$name: agentctl history --json failed"; return; }
  docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker inspect >"$work/engine.json"
  local out
  out=$(py - "$work/status.json" "$work/history.json" "$work/engine.json" "$live" "$newest" "$outcome" "$kind" \
    "${image#*@}" "$(image_id "$image")" "$web_replicas" "$shipped_by" "$@" <<'PY'
import json, sys
status, history, engine = (json.load(open(p)) for p in sys.argv[1:4])
live, newest, outcome, kind, digest, image_id = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7], sys.argv[8], sys.argv[9]
web_replicas, shipped_by = int(sys.argv[10]), sys.argv[11]
extra = dict(a.split("=", 1) for a in sys.argv[12:])
bad = []
def check(ok, msg):
    if not ok:
        bad.append(msg)

st = status[0] if len(status) == 1 else {}
cur = st.get("current") or {}
check(cur.get("number") == live, "status: live release %s, want %d" % (cur.get("number"), live))
check(cur.get("outcome") == "succeeded", "status: the live release's outcome is %s" % cur.get("outcome"))
check(not st.get("deploying"), "status: a deploy is still in progress: %s" % st.get("deploying"))
for svc in ("web", "worker", "beat"):
    check(cur.get("services", {}).get(svc, {}).get("digest") == digest,
          "status: the live release's %s is %s, want %s" % (svc, cur.get("services", {}).get(svc, {}).get("digest"), digest))

check(bool(history) and history[0].get("number") == newest, "history: newest release %s, want %d" % (history and history[0].get("number"), newest))
top = history[0] if history else {}
check(top.get("outcome") == outcome, "history: release %s's outcome is %s, want %s" % (top.get("number"), top.get("outcome"), outcome))
check(top.get("kind") == kind, "history: release %s's kind is %s, want %s" % (top.get("number"), top.get("kind"), kind))
for k, v in extra.items():
    check(str(top.get(k)) == v, "history: release %s's %s is %s, want %s" % (top.get("number"), k, top.get(k), v))
rec = [r for r in history if r.get("number") == live]
check(len(rec) == 1 and rec[0].get("outcome") == "succeeded", "history: the live release %d is not recorded as succeeded" % live)
# Every release ran a shipped compose file (the project has none on the host).
for r in history:
    check("compose.yaml" in ((r.get("shipped") or {}).get("files") or {}),
          "history: release %s does not record its shipped compose.yaml" % r.get("number"))
check(len(set(r.get("number") for r in history)) == len(history), "history: a release number appears twice")

# The engine: the project's containers (not one-off hook containers).
running = {}
for c in engine:
    labels = c["Config"]["Labels"] or {}
    if labels.get("com.docker.compose.oneoff") == "True" or not c["State"]["Running"]:
        continue
    running[c["Name"].lstrip("/")] = (labels.get("com.docker.compose.service"), c["Image"], c["Id"])
    env = dict(e.split("=", 1) for e in c["Config"]["Env"] or [] if "=" in e)
    if labels.get("com.docker.compose.service") in ("web", "worker", "beat"):
        got = env.get("SHIPPED_BY", "-")
        check(got == shipped_by, "engine: %s has SHIPPED_BY=%s, want %s" % (c["Name"].lstrip("/"), got, shipped_by))
# status lists every running container, and only those.
listed = {}
for s in st.get("services", []):
    for c in s.get("containers", []):
        if c.get("state") == "running":
            listed[c["name"]] = (s["name"], c)
check(set(listed) == set(running), "status lists running containers %s; the engine runs %s" % (sorted(listed), sorted(running)))
for n, (svc, c) in listed.items():
    if n in running:
        check(running[n][2].startswith(c.get("id", "")) and c.get("id"), "status: %s has id %s, the engine %s" % (n, c.get("id"), running[n][2][:12]))
        check(running[n][0] == svc, "status: %s is in service %s, the engine says %s" % (n, svc, running[n][0]))
want = {"web": web_replicas, "worker": 2, "beat": 1, "db": 1, "rabbitmq": 1, "nginx": 1}
for svc, n in want.items():
    got = [name for name, r in running.items() if r[0] == svc]
    check(len(got) == n, "engine: %d running %s container(s), want %d: %s" % (len(got), svc, n, got))
for name, (svc, img, _) in sorted(running.items()):
    if svc in ("web", "worker", "beat"):
        check(img == image_id, "engine: %s runs image %s, want %s (%s)" % (name, img[:19], image_id[:19], digest[:19]))
        c = listed.get(name, (None, {}))[1]
        check(digest in c.get("image", ""), "status: %s's image is %s, want the digest %s" % (name, c.get("image"), digest))
print("%d running containers; live release %s (%s, %s); newest %s (%s, %s, source %s); web, worker and beat run %s with SHIPPED_BY=%s; %d web" % (
    len(running), cur.get("number"), cur.get("kind"), cur.get("outcome"), top.get("number"), top.get("kind"),
    top.get("outcome"), top.get("source") or "-", digest[:19], shipped_by, web_replicas))
for b in bad:
    print("BAD " + b)
PY
  ) || { fail "$name: the status/history check crashed"; return; }
  grep -v '^BAD ' <<<"$out" | sed 's/^/e2e: agentd tells the truth: /' || true
  while IFS= read -r line; do fail "$name: $line"; done < <(sed -n 's/^BAD //p' <<<"$out")
  ctl status "$project"
  ctl history "$project"
}

version_is() { # version_is V: GET /version through nginx answers V
  local v
  v=$(curl -fsS -m 10 "$url/version" | py -c 'import json, sys; print(json.load(sys.stdin)["version"])') || v="(no answer)"
  [[ $v == "$1" ]] || fail "GET /version answers $v, want $1"
  note "GET /version: $v"
}

# row NAME SENT FAILED TASKS ONCE TIME
row() { rows+=("$@"); }

: >"$work/all.ids"

# --- 1 -----------------------------------------------------------------------
step "1. deploy v1 over SSH (ci/deploy.sh, OpenSSH); orders through nginx into PostgreSQL"
message="e2e step 1: v1"
t=$EPOCHREALTIME
rc=0
deploy_over_ssh "$web_v1" || rc=$?
d1=$(since "$t")
((rc == 0)) || die "the v1 deploy exited $rc, want 0"
note "v1 deployed in ${d1}s (the first deploy: PostgreSQL and RabbitMQ start from nothing)"
curl -fsS -m 10 "$url/healthz" >/dev/null || fail "GET /healthz through nginx failed after the v1 deploy"
version_is v1
# A few seconds of the same traffic, no deploy: the baseline.
load_start step1
load_wait $((rate * 3))
load_stop
load_report step1 v1
orders_check step1
row "1 deploy v1 (ssh)" "$sent" "$failed" "$tasks_sent" "$tasks_once" "$d1"
truth_check step1 1 1 succeeded deploy "$web_v1" 2 -
echo "\$ ssh -p $ssh_port deploy@127.0.0.1 history $project  (the CI key's identity)"
ssh -p "$ssh_port" -i "$work/ci_key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
  -o UserKnownHostsFile="$work/known_hosts" -o GlobalKnownHostsFile=/dev/null \
  deploy@127.0.0.1 "history $project" || fail "step1: history over SSH failed"

# ci_step NAME WEB_IMAGE WANT_EXIT VERSIONS: a deploy by the CI job (ci_deploy)
# under the load generator; fails unless it exits WANT_EXIT and every
# /version answer is one of VERSIONS. Sets dur (seconds).
ci_step() {
  local rc=0 t
  load_start "$1"
  t=$EPOCHREALTIME
  ci_deploy "$2" || rc=$?
  dur=$(since "$t")
  load_wait "$load_after"
  load_stop
  ((rc == $3)) || fail "$1: the deploy of $2 exited $rc, want $3"
  note "$1: the deploy exited $rc in ${dur}s"
  load_report "$1" "$4"
}

# --- 2 -----------------------------------------------------------------------
step "2. deploy v2 (additive migration) and a changed compose file (SHIPPED_BY, 3 web) with the CI deploy job ($ci_via) under load: $rate requests/s, every ${post_every}th a POST"
message="e2e step 2: v2, Order.note"
# The repository's next commit: a new variable for the app's services, and
# 3 web replicas instead of 2.
py - "$ci_repo/compose.yaml" <<'PY' || die "cannot edit the CI repository's compose.yaml"
import sys
path = sys.argv[1]
src = open(path).read()
for old, new in [
    ("    SWEEP_INTERVAL: ${SWEEP_INTERVAL:-30}\n", "    SWEEP_INTERVAL: ${SWEEP_INTERVAL:-30}\n    SHIPPED_BY: e2e-step2\n"),
    ("      replicas: 2\n      update_config:\n        order: start-first      # explicit", "      replicas: 3\n      update_config:\n        order: start-first      # explicit"),
]:
    assert src.count(old) == 1, "compose.yaml changed: the step 2 edit needs a new anchor: %r" % old
    src = src.replace(old, new)
open(path, "w").write(src)
PY
step2_sha=$(ci_commit "compose.yaml: SHIPPED_BY, 3 web replicas") || die "cannot commit in $ci_repo"
note "the CI repository is at $step2_sha: compose.yaml with SHIPPED_BY=e2e-step2 and 3 web replicas"
# The services the new commit does not change keep their containers.
unchanged_ids() { for s in db rabbitmq nginx; do container_of "$s"; done | tr '\n' ' '; }
before_unchanged=$(unchanged_ids)
ci_step step2 "$web_v2" 0 "v1 v2"
[[ $(unchanged_ids) == "$before_unchanged" ]] ||
  fail "step2: db, rabbitmq or nginx was recreated by a compose change to web, worker and beat only: $before_unchanged -> $(unchanged_ids)"
d2=$dur
version_is v2
orders_check step2
row "2 deploy v2 ($ci_via, load)" "$sent" "$failed" "$tasks_sent" "$tasks_once" "$d2"
[[ $(psql_q "select data_type from information_schema.columns where table_name = 'orders_order' and column_name = 'note'") == text ]] ||
  fail "step2: the column orders_order.note is not there"
truth_check step2 2 2 succeeded deploy "$web_v2" 3 e2e-step2 source="$step2_sha"

# --- 2b ----------------------------------------------------------------------
step "2b. a shipped compose file that adds privileged: true to web: exit 2, nothing changes"
# The engine's containers and agentd's releases, to compare after.
engine_state() { docker ps -q --no-trunc --filter "label=com.docker.compose.project=$project" | sort | tr '\n' ' '; }
release_numbers() {
  "$work/bin/agentctl" history "$project" --json | py -c 'import json, sys; h = json.load(sys.stdin); print(len(h), h[0]["number"] if h else 0)'
  "$work/bin/agentctl" status "$project" --json | py -c 'import json, sys; print((json.load(sys.stdin)[0].get("current") or {}).get("number"))'
}
before_containers=$(engine_state)
before_releases=$(release_numbers)
mkdir -p "$work/repo-privileged"
cp -a "$ci_repo/ci" "$ci_repo/compose.yaml" "$work/repo-privileged/"
py - "$work/repo-privileged/compose.yaml" <<'PY' || die "cannot edit the privileged compose.yaml"
import sys
path = sys.argv[1]
src = open(path).read()
old = "  web:\n    <<: *app\n"
assert src.count(old) == 1, "compose.yaml changed: the step 2b edit needs a new anchor"
open(path, "w").write(src.replace(old, old + "    privileged: true\n"))
PY
t=$EPOCHREALTIME
message="e2e step 2b: privileged, refused"
refusals=0
for dry in 1 0; do
  rc=0
  DEPLOY_DRY_RUN=$dry deploy_over_ssh "$web_v2" "$work/repo-privileged" >"$work/step2b-$dry.log" 2>&1 || rc=$?
  cat "$work/step2b-$dry.log"
  ((rc == 2)) || fail "step2b: the privileged file (dry run: $dry) exited $rc, want 2"
  if grep -q 'web' "$work/step2b-$dry.log" && grep -q 'privileged' "$work/step2b-$dry.log" && grep -q 'true' "$work/step2b-$dry.log"; then
    refusals=$((refusals + 1))
  else
    fail "step2b: the refusal (dry run: $dry) does not name web, privileged and true"
  fi
done
# A dry run of the good file: exit 0, the plan, nothing changed.
rc=0
message="e2e step 2b: dry run"
DEPLOY_DRY_RUN=1 deploy_over_ssh "$web_v2" "$ci_repo" >"$work/step2b-dry.log" 2>&1 || rc=$?
cat "$work/step2b-dry.log"
((rc == 0)) || fail "step2b: a dry run of the good file exited $rc, want 0"
grep -q "nothing to change" "$work/step2b-dry.log" || fail "step2b: a dry run of the live compose file plans changes"
d2b=$(since "$t")
[[ $(engine_state) == "$before_containers" ]] || fail "step2b: the containers changed: before $before_containers, after $(engine_state)"
[[ $(release_numbers) == "$before_releases" ]] || fail "step2b: the releases changed: before $(tr '\n' ' ' <<<"$before_releases"), after $(release_numbers | tr '\n' ' ')"
note "step2b: $refusals refusal(s) naming web, privileged and true; the same $(wc -w <<<"$before_containers") containers, releases (count, newest; live) $(tr '\n' ' ' <<<"$before_releases")"
version_is v2
row "2b privileged (ssh, exit 2)" - - - - "$d2b"
truth_check step2b 2 2 succeeded deploy "$web_v2" 3 e2e-step2 source="$step2_sha"

# --- 3 -----------------------------------------------------------------------
step "3. deploy a broken v3 (/healthz answers 503) with the CI deploy job ($ci_via) under load: exit 1, v2 serves"
message="e2e step 3: v3, broken on purpose"
ci_step step3 "$web_v3" 1 v2   # 1: failed, v2 restored
d3=$dur
version_is v2
orders_check step3
row "3 broken v3 ($ci_via, exit 1)" "$sent" "$failed" "$tasks_sent" "$tasks_once" "$d3"
truth_check step3 2 3 rolled-back deploy "$web_v2" 3 e2e-step2 restored_to=2 source="$step2_sha"
if [[ -n $(docker ps -aq --filter "label=com.docker.compose.project=$project" --filter "ancestor=$(image_id "$web_v3")") ]]; then
  fail "step3: containers of v3 are left: $(docker ps -a --filter "ancestor=$(image_id "$web_v3")" --format '{{.Names}} {{.Status}}' | tr '\n' ';')"
fi

# --- 4 -----------------------------------------------------------------------
step "4. agentctl rollback $project --to 1 under load: v1 on v2's schema"
load_start step4
t=$EPOCHREALTIME
rc=0
ctl rollback "$project" --to 1 --message "e2e step 4: back to v1" || rc=$?
d4=$(since "$t")
load_wait "$load_after"
load_stop
((rc == 0)) || fail "step4: the rollback exited $rc, want 0"
note "rollback to release 1: exit $rc in ${d4}s"
load_report step4 "v2 v1"
version_is v1
orders_check step4
row "4 rollback to v1 (agentctl, load)" "$sent" "$failed" "$tasks_sent" "$tasks_once" "$d4"
[[ $(psql_q "select count(*) from django_migrations where app = 'orders' and name like '%_order_note'") == 1 &&
   $(psql_q "select count(*) from information_schema.columns where table_name = 'orders_order' and column_name = 'note'") == 1 ]] ||
  fail "step4: v2's migration (orders_order.note) is gone"
truth_check step4 4 4 succeeded rollback "$web_v1" 2 - rollback_of=1

# --- 5 -----------------------------------------------------------------------
print_table
note "tasks: orders created in the step (each enqueues one process_order); completed once: processed, with completions = 1"
if ((${#failures[@]})); then
  echo
  echo "e2e: FAILED: ${#failures[@]} check(s):" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
note "PASSED in $(since "$started")s"
