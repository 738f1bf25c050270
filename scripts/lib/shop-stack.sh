# shellcheck shell=bash
# shop-stack.sh: what scripts/e2e.sh and scripts/bench.sh share to stand up
# the reference Django shop (examples/django) on this machine: a local
# registry (docker-registry) and the shop's images, built on Berth's Debian
# base image (scripts/base-image.sh) and pushed there. Sourced:
#
#   . scripts/lib/shop-stack.sh
#   shop_registry_start     # needs $work, $registry; sets $shop_registry_pid
#   shop_build_images       # needs $work, $base, $registry, $here; sets
#                           # $web_v1, $web_v2, $web_v3 (REPOSITORY@sha256:...)
#
#   shop_remove_images      # the shop's images of $registry, at the end
#   py ARGS...              # python3: the host's, else $base's
# The caller defines die MESSAGE (print it, exit non-zero) and stops
# $shop_registry_pid at its end.

# shop_registry_start: docker-registry serving $registry (127.0.0.1:PORT),
# storing under $work/registry; returns when it answers /v2/.
shop_registry_start() {
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
  shop_registry_pid=$!
  local _
  for _ in $(seq 100); do
    curl -fs "http://$registry/v2/" >/dev/null && break
    kill -0 "$shop_registry_pid" 2>/dev/null || break
    sleep 0.1
  done
  curl -fs "http://$registry/v2/" >/dev/null || die "the registry did not start on $registry: $(tail -n 5 "$work/registry.log")"
}

# shop_build NAME TAG DIR [docker build args...]: build and push
# $registry/shop/NAME:TAG; print it by digest.
shop_build() {
  local name=$1 ref=$registry/shop/$1:$2 dir=$3 digest
  shift 3
  docker build -q --build-arg BASE="$base" "$@" -t "$ref" "$dir" >/dev/null 2>"$work/build.log" ||
    { cat "$work/build.log" >&2; die "the build of $ref failed"; }
  digest=$(docker push "$ref" | sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' | tail -n 1)
  [[ -n $digest ]] || die "docker push $ref printed no digest"
  echo "$registry/shop/$name@$digest"
}

# shop_build_images: web v1; v2 (APP_VERSION=v2 and a new nullable field
# Order.note, its migration made by makemigrations in a container of the
# base image); v3 (v2's image with HEALTHZ_FAIL: every /healthz answers 503,
# so the release never passes its health gate); nginx, postgres and rabbitmq
# (tag v1). Sets web_v1, web_v2, web_v3.
shop_build_images() {
  web_v1=$(shop_build web v1 "$here" --build-arg APP_VERSION=v1)
  shop_build nginx v1 "$here/nginx" >/dev/null
  shop_build postgres v1 "$here/postgres" >/dev/null
  shop_build rabbitmq v1 "$here/rabbitmq" >/dev/null
  mkdir -p "$work/v2"
  cp -a "$here/." "$work/v2/"
  rm -rf "$work/v2/loadgen"
  py - "$work/v2/orders/models.py" <<'PY'
import sys
path = sys.argv[1]
src = open(path).read()
anchor = "    result = models.CharField(max_length=200, null=True, blank=True)\n"
assert anchor in src, "models.py changed: the v2 edit needs a new anchor"
src = src.replace(anchor, anchor + "    note = models.TextField(null=True, blank=True)  # v2\n")
open(path, "w").write(src)
PY
  docker run --rm -u 0 -e DEBUG=1 -v "$work/v2:/app" -w /app "$base" sh -c \
    'python3 manage.py makemigrations orders --name order_note && rm -f db.sqlite3 && find . -name __pycache__ -prune -exec rm -rf {} +' ||
    die "makemigrations for v2 failed"
  [[ -n $(find "$work/v2/orders/migrations" -name '*_order_note.py') ]] || die "makemigrations made no migration for v2"
  web_v2=$(shop_build web v2 "$work/v2" --build-arg APP_VERSION=v2)
  mkdir -p "$work/v3"
  cat >"$work/v3/Dockerfile" <<DOCKERFILE
FROM $web_v2
ENV APP_VERSION=v3 HEALTHZ_FAIL="v3 is broken on purpose by scripts/$(basename "$0")"
DOCKERFILE
  web_v3=$(shop_build web v3 "$work/v3")
}

# shop_remove_images: remove the shop's images of $registry, by tag and then
# what is left by ID.
shop_remove_images() {
  docker images --format '{{.Repository}}:{{.Tag}}' "$registry/shop/*" | grep -v ':<none>$' | xargs -r docker rmi -f >/dev/null 2>&1
  docker images -q "$registry/shop/*" | xargs -r docker rmi -f >/dev/null 2>&1
}

# py: python3 for the JSON checks: the host's, else the base image's ($base).
py() {
  if command -v python3 >/dev/null; then
    python3 "$@"
  else
    docker run --rm -i --network none -v "$work:$work" "$base" python3 "$@"
  fi
}
