#!/usr/bin/env bash
# demo.sh: Berth end to end on this machine. Builds agentd and agentctl,
# starts a local registry on 127.0.0.1, pushes two versions of a small web
# image, runs agentd with a config for examples/demo, deploys v1, then v2 of
# web only, and shows status and history. Everything it starts is stopped
# and removed at the end (set BERTH_DEMO_KEEP=1 to leave the stack running).
# Usage: sudo scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="/usr/local/go/bin:$PATH"

scripts/setup-host.sh

work=$(mktemp -d /tmp/berth-demo.XXXXXX)
project=berth-demo
regport=${BERTH_DEMO_REGISTRY_PORT:-5055}
registry=127.0.0.1:$regport
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${BERTH_DEMO_KEEP:-}" != 1 ]; then
    docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null
    docker network ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker network rm >/dev/null
    docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null
    rm -rf "$work"
  else
    echo "demo: left running; state and config in $work"
  fi
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "build agentd, agentctl and the demo app"
go build -o "$work/bin/" ./cmd/agentd ./cmd/agentctl
CGO_ENABLED=0 go build -trimpath -o "$work/image/testapp" ./examples/testapp
cp examples/demo/Dockerfile "$work/image/"

step "start a registry on $registry"
mkdir -p "$work/registry"
cat > "$work/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $registry
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do curl -fs "http://$registry/v2/" >/dev/null && break; sleep 0.1; done

step "build and push web:v1, web:v2, a broken web:v3, and db:v1"
push() { # push NAME:TAG VERSION [HEALTH]: build, push, then drop the local copy so agentd pulls it
  docker build -q --build-arg VERSION="$2" --build-arg HEALTH="${3:-ok}" -t "$registry/berth-demo/$1" "$work/image" >/dev/null 2>"$work/build.log" ||
    { cat "$work/build.log" >&2; exit 1; }
  docker push -q "$registry/berth-demo/$1"
  docker rmi -f "$registry/berth-demo/$1" >/dev/null
}
push web:v1 web-v1
push web:v2 web-v2
push web:v3 web-v3 fail   # its health check never passes
push db:v1 db-v1

step "start agentd"
printf 'REGISTRY=%s\nDEMO_PORT=%s\n' "$registry" "${BERTH_DEMO_PORT:-8088}" >"$work/demo.env"
cat > "$work/agentd.yaml" <<YAML
state_dir: $work/state
socket:
  path: $work/agentd.sock
projects:
  $project:
    compose_file: $root/examples/demo/compose.yaml
    env_file: $work/demo.env
    keep_releases: 10
YAML
"$work/bin/agentd" --config "$work/agentd.yaml" --check
"$work/bin/agentd" --config "$work/agentd.yaml" 2>"$work/agentd.log" &
pids+=($!)
export BERTH_SOCKET=$work/agentd.sock
for _ in $(seq 1 50); do [ -S "$BERTH_SOCKET" ] && break; sleep 0.1; done
ctl() { echo "\$ agentctl $*"; "$work/bin/agentctl" "$@"; }

step "deploy release 1"
ctl deploy "$project" --message "first release"
step "status"
ctl status "$project"
echo "\$ curl http://127.0.0.1:${BERTH_DEMO_PORT:-8088}/"
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:${BERTH_DEMO_PORT:-8088}/" && break; sleep 0.2; done

step "deploy web v2 (only web changes)"
ctl deploy "$project" --image "web=$registry/berth-demo/web:v2" --message "web v2"
step "deploy the same release again (nothing to change)"
ctl deploy "$project" --image "web=$registry/berth-demo/web:v2"
step "a bad request changes nothing (exit 2)"
ctl deploy "$project" --image "web=$registry/berth-demo/web:v9" || echo "(exit code $?)"
step "a broken release (web:v3 never turns healthy) is rolled back (exit 1); v2 keeps serving"
ctl deploy "$project" --image "web=$registry/berth-demo/web:v3" --message "v3" || echo "(exit code $?)"
curl -fs "http://127.0.0.1:${BERTH_DEMO_PORT:-8088}/"
step "agentctl rollback: back to release 1, by digest"
ctl rollback "$project" --message "v2 is not what we wanted"
curl -fs "http://127.0.0.1:${BERTH_DEMO_PORT:-8088}/"

step "status and history"
ctl status "$project"
echo
ctl history "$project"
echo
echo "\$ docker-compose -p $project ps"
docker-compose -f examples/demo/compose.yaml --env-file "$work/demo.env" -p "$project" ps
