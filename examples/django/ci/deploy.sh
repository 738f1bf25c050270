#!/bin/sh
# deploy.sh: ask Berth's agentd on the deploy host, over its SSH server, to
# deploy the web image (by digest) to web, worker and beat, with the compose
# file of this commit of the repository (compose.yaml, shipped with the
# request: the host keeps no copy to edit by hand). The deploy's progress is
# printed as it happens, and this script exits with the deploy's exit code:
# 0 live, 1 rolled back, 2 bad request (or a compose file the host's policy
# refuses), 3 locked, 4 refused, 5 operator needed (255: ssh itself failed).
# Anything but 0 fails the job.
#
# Standard input is a tar archive (--compose-file -): the compose files, and
# request.env, the secrets and registry credential (--env-file -). The
# release records the compose files and the commit (--source); the secrets
# are never in them (compose.yaml says ${DJANGO_SECRET_KEY}; the value comes
# from request.env or the env file on the host).
#
# Needs only a POSIX shell, tar and ssh (openssh-client). Runs the same in a
# GitLab job (.gitlab-ci.yml) and by hand:
#
#   DEPLOY_HOST=deploy.example.com BERTH_SSH_KEY=~/.ssh/berth-ci \
#   SSH_KNOWN_HOSTS="$(cat known_host_line)" \
#   WEB_IMAGE=registry.example.com/group/shop/web@sha256:... ci/deploy.sh
#
# Required:
#   DEPLOY_HOST       the host running agentd
#   BERTH_SSH_KEY     path of the private key of an agentd identity (a GitLab
#                     variable of type File)
#   SSH_KNOWN_HOSTS   the host key line(s) to pin, as printed on the host by
#                     `agentctl host-key --host DEPLOY_HOST`
#   WEB_IMAGE         the web image by digest: REPOSITORY@sha256:...
# Optional:
#   DEPLOY_PORT       agentd's SSH port (default 2222)
#   BERTH_PROJECT     the project in agentd's config (default shop)
#   NGINX_IMAGE       the nginx image by digest, deployed to nginx too
#   APP_SERVICES      the services running the web image (default: web worker beat)
#   DEPLOY_MESSAGE    recorded with the release (default: the commit and who
#                     pushed it, in CI; only letters, digits and . _ : / @ + = , - are kept)
#   DEPLOY_WAIT       how long to queue behind another deploy (default 10m)
#   DEPLOY_TIMEOUT    roll back if not live by then (default 15m)
#   COMPOSE_FILES     the compose files shipped, relative to the repository's
#                     root (default compose.yaml; the first is the compose
#                     file, the others files it includes or extends); set it
#                     empty to deploy the compose file on the host instead
#   DEPLOY_SOURCE     the commit recorded with the release (default
#                     CI_COMMIT_SHA, else git rev-parse HEAD)
#   DEPLOY_DRY_RUN    1: agentd checks the request (the compose file against
#                     its policy too), resolves the images and prints the
#                     plan; nothing changes (exit 0, or 2 and why)
#   DEPLOY_SECRETS    names of variables sent on stdin for the compose file's
#                     ${...} when they are set (default: DJANGO_SECRET_KEY
#                     POSTGRES_PASSWORD RABBITMQ_PASSWORD); those not set
#                     come from the project's env file on the host. agentd
#                     accepts only those its project lists in
#                     request_variables (exit 2 naming any other)
#   CI_REGISTRY, CI_REGISTRY_USER, CI_JOB_TOKEN   (GitLab sets them) sent as
#                     this deploy's registry credential, for the pulls
set -eu

die() { echo "deploy.sh: $*" >&2; exit 2; }
: "${DEPLOY_HOST:?DEPLOY_HOST is required}"
: "${BERTH_SSH_KEY:?BERTH_SSH_KEY (a private key file) is required}"
: "${SSH_KNOWN_HOSTS:?SSH_KNOWN_HOSTS (the host key line to pin) is required}"
: "${WEB_IMAGE:?WEB_IMAGE (REPOSITORY@sha256:...) is required}"
port=${DEPLOY_PORT:-2222}
project=${BERTH_PROJECT:-shop}
services=${APP_SERVICES:-web worker beat}
# The repository's root: GitLab's checkout, else the directory above ci/.
repo=${CI_PROJECT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
compose_files=${COMPOSE_FILES-compose.yaml}
src=${DEPLOY_SOURCE:-${CI_COMMIT_SHA:-$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)}}

pinned() {
  case $1 in
    *@sha256:*) case $1 in *[!A-Za-z0-9._:/@-]*) return 1 ;; esac ;;
    *) return 1 ;;
  esac
}
pinned "$WEB_IMAGE" || die "WEB_IMAGE must be an image by digest (REPOSITORY@sha256:...), not '$WEB_IMAGE'"
[ -z "${NGINX_IMAGE:-}" ] || pinned "$NGINX_IMAGE" || die "NGINX_IMAGE must be an image by digest, not '$NGINX_IMAGE'"
[ -r "$BERTH_SSH_KEY" ] || die "cannot read the key file BERTH_SSH_KEY=$BERTH_SSH_KEY"
case $src in *[!A-Za-z0-9._/@+:-]*) die "DEPLOY_SOURCE must be a commit or ref (A-Z a-z 0-9 . _ / @ + : -), not '$src'" ;; esac
for f in $compose_files; do
  case $f in
    /*|../*|*/../*|..) die "COMPOSE_FILES: '$f' is not a path inside the repository" ;;
    request.env|./request.env) die "COMPOSE_FILES: request.env is the name of the secrets in the archive; rename the file" ;;
  esac
  [ -f "$repo/$f" ] || die "COMPOSE_FILES: no file $repo/$f"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# ssh wants the key file private and ending in a newline (a File variable may
# be neither), and the pinned host key in a known_hosts file.
umask 077
awk '{ sub(/\r$/, ""); print }' "$BERTH_SSH_KEY" >"$tmp/key"
printf '%s\n' "$SSH_KNOWN_HOSTS" >"$tmp/known_hosts"

msg=${DEPLOY_MESSAGE:-"${CI_COMMIT_SHORT_SHA:-manual} by ${GITLAB_USER_LOGIN:-$(id -un)}${CI_PIPELINE_ID:+ pipeline $CI_PIPELINE_ID}"}
msg=$(printf '%s' "$msg" | tr -cd 'A-Za-z0-9 ._:/@+=,-' | cut -c1-200)

# The remote command (agentd splits it with a shell's quoting rules; no shell runs it).
cmd="deploy $project"
for s in $services; do cmd="$cmd --image $s=$WEB_IMAGE"; done
[ -z "${NGINX_IMAGE:-}" ] || cmd="$cmd --image nginx=$NGINX_IMAGE"
cmd="$cmd --env-file - --wait ${DEPLOY_WAIT:-10m} --timeout ${DEPLOY_TIMEOUT:-15m} --message '$msg'"
[ -z "$compose_files" ] || cmd="$cmd --compose-file -"
[ -z "$src" ] || cmd="$cmd --source $src"
[ "${DEPLOY_DRY_RUN:-0}" != 1 ] || cmd="$cmd --dry-run"

# Standard input: the secrets and the registry credential, never the command line.
for name in ${DEPLOY_SECRETS:-DJANGO_SECRET_KEY POSTGRES_PASSWORD RABBITMQ_PASSWORD}; do
  case $name in ''|[0-9]*|*[!A-Za-z0-9_]*) die "DEPLOY_SECRETS: '$name' is not a variable name" ;; esac
  eval "isset=\${$name+x} value=\${$name-}"
  [ -n "$isset" ] || continue
  case $value in *"
"*) die "$name holds a newline; it cannot go in an env file" ;; esac
  printf '%s=%s\n' "$name" "$value"
done >"$tmp/env"
if [ -n "${CI_REGISTRY:-}" ] && [ -n "${CI_JOB_TOKEN:-}" ]; then
  printf 'BERTH_REGISTRY=%s\nBERTH_REGISTRY_USER=%s\nBERTH_REGISTRY_PASSWORD=%s\n' \
    "$CI_REGISTRY" "${CI_REGISTRY_USER:-gitlab-ci-token}" "$CI_JOB_TOKEN" >>"$tmp/env"
fi

# With --compose-file -, standard input is a tar archive: the compose files
# under their paths in the repository, and the env file as request.env.
stdin=$tmp/env
if [ -n "$compose_files" ]; then
  mkdir "$tmp/ship"
  for f in $compose_files; do
    mkdir -p "$tmp/ship/$(dirname "$f")"
    cp "$repo/$f" "$tmp/ship/$f"
  done
  mv "$tmp/env" "$tmp/ship/request.env"
  # shellcheck disable=SC2086 # a list of paths
  (cd "$tmp/ship" && tar -cf - $compose_files request.env) >"$tmp/ship.tar" || die "tar of $compose_files failed"
  stdin=$tmp/ship.tar
fi

echo "deploy.sh: $cmd (to $DEPLOY_HOST:$port${compose_files:+; shipping $compose_files from $repo})"
status=0
ssh -p "$port" -i "$tmp/key" \
  -o IdentitiesOnly=yes -o BatchMode=yes \
  -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$tmp/known_hosts" -o GlobalKnownHostsFile=/dev/null \
  -o ConnectTimeout=20 -o ServerAliveInterval=30 -o ServerAliveCountMax=4 \
  "deploy@$DEPLOY_HOST" "$cmd" <"$stdin" || status=$?

case $status in
  0) if [ "${DEPLOY_DRY_RUN:-0}" = 1 ]; then echo "deploy.sh: dry run: the request is good; nothing was changed"; else echo "deploy.sh: live"; fi ;;
  1) echo "deploy.sh: FAILED (exit 1): the release failed and the previous one is serving again" >&2 ;;
  2) echo "deploy.sh: FAILED (exit 2): bad request (unknown service, image not found, compose error, or the compose file asks for what the host's policy refuses); nothing changed" >&2 ;;
  3) echo "deploy.sh: FAILED (exit 3): the project is locked (another deploy, or an operator's lock)" >&2 ;;
  4) echo "deploy.sh: FAILED (exit 4): refused (this key's identity may not deploy this project)" >&2 ;;
  5) echo "deploy.sh: FAILED (exit 5): the release failed and so did its rollback: an operator is needed" >&2 ;;
  255) echo "deploy.sh: FAILED: ssh could not reach $DEPLOY_HOST:$port or the host key did not match" >&2 ;;
  *) echo "deploy.sh: FAILED (exit $status)" >&2 ;;
esac
exit "$status"
