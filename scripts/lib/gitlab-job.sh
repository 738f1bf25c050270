# shellcheck shell=bash
# gitlab-job.sh: run the Django example's GitLab deploy job (deploy:production
# in examples/django/.gitlab-ci.yml, which runs `sh ci/deploy.sh`) for real,
# with gitlab-ci-local, against a running agentd. Sourced by end-to-end scripts:
#
#   . scripts/lib/gitlab-job.sh
#   gitlab_job_setup "$work/gitlab" "$(scripts/base-image.sh | tail -n1)"
#   status=0
#   DEPLOY_HOST=127.0.0.1 DEPLOY_PORT=2222 BERTH_SSH_KEY=$work/ci_key \
#   SSH_KNOWN_HOSTS="$(agentctl host-key --host 127.0.0.1)" \
#   WEB_IMAGE=$registry/shop/web@sha256:... \
#     gitlab_deploy_job "$work/gitlab" || status=$?
#
# gitlab_job_setup WORK BASE_IMAGE
#   Installs rsync (apt) and gitlab-ci-local (npm, into GITLAB_CI_LOCAL_DIR,
#   default /var/cache/berth/gitlab-ci-local, else WORK/gitlab-ci-local; reused
#   when the right version is there). Builds berth/gitlab-job:<key> FROM
#   BASE_IMAGE (Berth's Debian base, scripts/base-image.sh) with
#   openssh-client and rsync, and tags it debian:bookworm-slim (the job's
#   image: Docker Hub is not needed) and firecow/gitlab-ci-local-util:latest
#   (gitlab-ci-local's helper image: it runs `sh -c 'chown ... && chmod ...'`
#   to prepare the job's volumes, and bash + rsync to copy artifacts and
#   caches out). Copies examples/django to WORK/repo as its own git
#   repository on branch main, so the pipeline is a push to main and the
#   rules select deploy:production.
#
# gitlab_job_commit WORK MESSAGE
#   Commits what the caller changed in WORK/repo (a new compose.yaml, say) on
#   main: the next gitlab_deploy_job runs that commit (CI_COMMIT_SHA).
#   Prints the commit's SHA.
#
# gitlab_deploy_job WORK
#   Env in: DEPLOY_HOST, BERTH_SSH_KEY (path of a private key file),
#   SSH_KNOWN_HOSTS (host key line), WEB_IMAGE (REPOSITORY@sha256:...);
#   optional DEPLOY_PORT, BERTH_PROJECT, NGINX_IMAGE, APP_SERVICES,
#   DEPLOY_MESSAGE, DEPLOY_WAIT, DEPLOY_TIMEOUT, COMPOSE_FILES,
#   DEPLOY_SOURCE, DEPLOY_DRY_RUN, DEPLOY_SECRETS and the
#   variables DEPLOY_SECRETS names (see examples/django/ci/deploy.sh).
#   They become the "CI/CD variables" of a local pipeline (a variables file
#   that gitlab-ci-local reads, never its command line), BERTH_SSH_KEY as a
#   File variable as in GitLab. Runs only deploy:production in the image
#   debian:bookworm-slim on the host's network, streams its log, and returns
#   the job's exit status: deploy.sh's, that is agentd's (0 live, 1 rolled
#   back, 2 bad request, 3 locked, 4 refused, 5 operator needed, 255 ssh
#   failed), or 125 when gitlab-ci-local failed without running the job.
#   The log is kept in WORK/deploy-job.log.
#
# Needs: root (or sudo) for apt, docker, git, node and npm.

GITLAB_CI_LOCAL_VERSION=4.56.2
_gljob_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_gljob_job=deploy:production

_gljob_log() { printf '==> gitlab-job: %s\n' "$*" >&2; }
_gljob_err() { printf 'gitlab-job: %s\n' "$*" >&2; }
_gljob_as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# The variables a deploy job reads from its environment (ci/deploy.sh's).
_gljob_variables=(DEPLOY_HOST DEPLOY_PORT SSH_KNOWN_HOSTS WEB_IMAGE NGINX_IMAGE BERTH_PROJECT
  APP_SERVICES DEPLOY_MESSAGE DEPLOY_WAIT DEPLOY_TIMEOUT COMPOSE_FILES DEPLOY_SOURCE DEPLOY_DRY_RUN DEPLOY_SECRETS)

_gljob_install_rsync() {
  command -v rsync >/dev/null && return 0
  _gljob_log "installing rsync (apt)"
  _gljob_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null ||
    { _gljob_as_root apt-get update -qq && _gljob_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; } ||
    { _gljob_err "could not install rsync with apt-get"; return 1; }
}

# _gljob_install_gcl WORK: print the path of gitlab-ci-local's executable.
_gljob_install_gcl() {
  local work=$1 dir bin have
  command -v npm >/dev/null || { _gljob_err "npm is not installed (gitlab-ci-local needs Node 18 or newer)"; return 1; }
  dir=${GITLAB_CI_LOCAL_DIR:-/var/cache/berth/gitlab-ci-local}
  if ! mkdir -p "$dir" 2>/dev/null || [[ ! -w $dir ]]; then
    dir=$work/gitlab-ci-local
    mkdir -p "$dir"
  fi
  bin=$dir/node_modules/.bin/gitlab-ci-local
  (
    # One installer at a time per cache directory.
    exec 9>>"$dir/.lock"
    flock -w "${GITLAB_CI_LOCAL_INSTALL_TIMEOUT:-600}" 9 ||
      { _gljob_err "another install into $dir holds $dir/.lock; gave up waiting (set GITLAB_CI_LOCAL_DIR to use another directory)"; exit 1; }
    have=$("$bin" --version 2>/dev/null || true)
    if [[ $have == "$GITLAB_CI_LOCAL_VERSION" ]]; then
      _gljob_log "gitlab-ci-local $have (cached in $dir)"
      exit 0
    fi
    _gljob_log "installing gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION into $dir (npm)"
    # Its dependency re2 is native: its install script fetches a prebuilt
    # binary (or builds one), which can hang without a network: bounded.
    # DEVELOPMENT_SKIP_GETTING_ASSET: no download attempt (GitHub is out of
    # reach on CI machines); re2 is built with node-gyp from the local headers.
    DEVELOPMENT_SKIP_GETTING_ASSET=1 timeout "${GITLAB_CI_LOCAL_INSTALL_TIMEOUT:-600}" npm install --prefix "$dir" --no-audit --no-fund \
      --loglevel=error "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION" >&2 ||
      { _gljob_err "npm install gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION into $dir failed or timed out (GITLAB_CI_LOCAL_INSTALL_TIMEOUT=${GITLAB_CI_LOCAL_INSTALL_TIMEOUT:-600}s)"; exit 1; }
    have=$("$bin" --version 2>/dev/null || true)
    [[ $have == "$GITLAB_CI_LOCAL_VERSION" ]] ||
      { _gljob_err "$bin --version says '$have', not $GITLAB_CI_LOCAL_VERSION"; exit 1; }
  ) || return 1
  echo "$bin"
}

# _gljob_images BASE_IMAGE WORK: build the job image and tag it for the job and as
# gitlab-ci-local's helper image.
_gljob_images() {
  local base=$1 work=$2 dockerfile key image tag current
  docker image inspect "$base" >/dev/null 2>&1 ||
    { _gljob_err "base image $base not found (make it with: sudo scripts/base-image.sh)"; return 1; }
  # apt uses the base image's own sources (the mirror scripts/base-image.sh
  # put in /etc/apt/sources.list); the build runs on the host's network.
  dockerfile='ARG BASE
FROM $BASE
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-client rsync >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
LABEL org.berth.gitlab-job="debian:bookworm-slim and firecow/gitlab-ci-local-util for gitlab-ci-local"
CMD ["/bin/bash"]
'
  key=$({ docker image inspect --format '{{.Id}}' "$base"; printf '%s' "$dockerfile"; } | sha256sum | cut -c1-12)
  image=berth/gitlab-job:$key
  if docker image inspect "$image" >/dev/null 2>&1; then
    _gljob_log "job image cached: $image"
  else
    _gljob_log "building $image FROM $base (+ openssh-client rsync)"
    printf '%s' "$dockerfile" |
      docker build -q --network host --build-arg BASE="$base" -t "$image" - >"$work/image-build.log" 2>&1 ||
      { cat "$work/image-build.log" >&2; _gljob_err "docker build of $image failed"; return 1; }
  fi
  for tag in debian:bookworm-slim firecow/gitlab-ci-local-util:latest; do
    current=$(docker image inspect --format '{{.Id}} {{index .Config.Labels "org.berth.gitlab-job"}}' "$tag" 2>/dev/null || true)
    if [[ -n $current && $current != *" "?* ]]; then
      _gljob_log "warning: $tag (${current%% *}) is not Berth's; tagging $image over it"
    fi
    docker tag "$image" "$tag"
  done
  _gljob_log "tagged $image as debian:bookworm-slim and firecow/gitlab-ci-local-util:latest"
}

# _gljob_repo WORK: WORK/repo, a copy of examples/django committed on branch main.
_gljob_repo() {
  local repo=$1/repo
  mkdir -p "$repo"
  rsync -a --delete --exclude=/.git --exclude=/.gitlab-ci-local --exclude=/.gitlab-ci-local-variables.yml \
    --exclude=__pycache__ --exclude='*.pyc' --exclude=db.sqlite3 \
    "$_gljob_root/examples/django/" "$repo/" || { _gljob_err "copying examples/django to $repo failed"; return 1; }
  (
    set -e
    cd "$repo"
    if [[ ! -d .git ]]; then
      git init -q -b main .
      git config user.name "Berth e2e"
      git config user.email "e2e@berth.invalid"
      # Only for gitlab-ci-local's CI_PROJECT_PATH (group/shop); never fetched.
      git remote add origin https://gitlab.example.com/group/shop.git
      printf '%s\n' /.gitlab-ci-local/ /.gitlab-ci-local-variables.yml >>.git/info/exclude
    fi
    git checkout -q -B main
    git add -A
    git diff --cached --quiet || git commit -q -m "examples/django from $(git -C "$_gljob_root" rev-parse --short HEAD 2>/dev/null || echo the work tree)"
    # origin/HEAD -> main, so CI_DEFAULT_BRANCH is main without a fetch.
    git update-ref refs/remotes/origin/main HEAD
    git symbolic-ref refs/remotes/origin/HEAD refs/remotes/origin/main
  ) || { _gljob_err "making the git repository $repo failed"; return 1; }
  _gljob_log "repository $repo on main at $(git -C "$repo" rev-parse --short HEAD)"
}

gitlab_job_setup() {
  local work=${1:?usage: gitlab_job_setup WORK BASE_IMAGE} base=${2:?usage: gitlab_job_setup WORK BASE_IMAGE} gcl
  local t=$SECONDS
  mkdir -p "$work" && work=$(cd "$work" && pwd) || { _gljob_err "cannot make $work"; return 1; }
  docker info >/dev/null 2>&1 || { _gljob_err "docker is not reachable (try: sudo scripts/setup-host.sh)"; return 1; }
  command -v git >/dev/null || { _gljob_err "git is not installed"; return 1; }
  _gljob_install_rsync || return 1
  gcl=$(_gljob_install_gcl "$work") || return 1
  printf '%s\n' "$gcl" >"$work/gitlab-ci-local.path"
  _gljob_images "$base" "$work" || return 1
  _gljob_repo "$work" || return 1
  _gljob_log "ready in $((SECONDS - t))s: gitlab_deploy_job $work"
}

gitlab_job_commit() {
  local work=${1:?usage: gitlab_job_commit WORK MESSAGE} msg=${2:?usage: gitlab_job_commit WORK MESSAGE}
  [[ -d $work/repo/.git ]] || { _gljob_err "$work is not set up (run gitlab_job_setup $work BASE_IMAGE first)"; return 2; }
  (
    set -e
    cd "$work/repo"
    git add -A
    git diff --cached --quiet || git commit -q -m "$msg"
    git update-ref refs/remotes/origin/main HEAD
  ) >&2 || { _gljob_err "committing in $work/repo failed"; return 1; }
  git -C "$work/repo" rev-parse HEAD
}

# _gljob_write_variables FILE: the job's CI/CD variables, from the environment,
# as a gitlab-ci-local variables file (JSON is YAML); BERTH_SSH_KEY is a File
# variable holding the key file's content.
_gljob_write_variables() {
  # shellcheck disable=SC2086 # DEPLOY_SECRETS is a list of names
  (umask 077 && node - "$1" "${_gljob_variables[@]}" ${DEPLOY_SECRETS-DJANGO_SECRET_KEY POSTGRES_PASSWORD RABBITMQ_PASSWORD} <<'JS'
const fs = require("fs");
const [out, ...names] = process.argv.slice(2);
const vars = {
  BERTH_SSH_KEY: { type: "file", values: { "*": fs.readFileSync(process.env.BERTH_SSH_KEY, "utf8") } },
};
for (const name of names) {
  if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) && process.env[name] !== undefined) {
    vars[name] = { type: "variable", values: { "*": process.env[name] } };
  }
}
fs.writeFileSync(out, JSON.stringify(vars, null, 2) + "\n", { mode: 0o600 });
JS
  )
}

_gljob_file_variable_dirs() {
  compgen -G '/tmp/gitlab-ci-local-file-variables-*' || true
}

# _gljob_clean_file_variables BEFORE: gitlab-ci-local 4.56.2 writes every
# File variable for every job of the pipeline to
# /tmp/gitlab-ci-local-file-variables-undefined-<job id>/ and removes only
# the running job's copy. Remove the new ones that hold this run's key.
_gljob_clean_file_variables() {
  local before=$1 d
  while IFS= read -r d; do
    [[ -n $d ]] || continue
    grep -qxF -- "$d" <<<"$before" && continue
    if cmp -s "$d/BERTH_SSH_KEY" "$BERTH_SSH_KEY"; then rm -rf -- "$d"; fi
  done <<<"$(_gljob_file_variable_dirs)"
  return 0
}

gitlab_deploy_job() {
  local work=${1:?usage: gitlab_deploy_job WORK} gcl repo log vars name status=0 code t before
  work=$(cd "$work" 2>/dev/null && pwd) || { _gljob_err "no directory $1 (run gitlab_job_setup first)"; return 2; }
  repo=$work/repo
  gcl=$(cat "$work/gitlab-ci-local.path" 2>/dev/null) && [[ -x $gcl && -d $repo/.git ]] ||
    { _gljob_err "$work is not set up (run gitlab_job_setup $work BASE_IMAGE first)"; return 2; }
  for name in DEPLOY_HOST BERTH_SSH_KEY SSH_KNOWN_HOSTS WEB_IMAGE; do
    [[ -n ${!name:-} ]] || { _gljob_err "$name is required"; return 2; }
  done
  [[ -r $BERTH_SSH_KEY ]] || { _gljob_err "cannot read the key file BERTH_SSH_KEY=$BERTH_SSH_KEY"; return 2; }

  vars=$repo/.gitlab-ci-local-variables.yml
  _gljob_write_variables "$vars" || { _gljob_err "could not write $vars"; return 2; }
  log=$work/deploy-job.log
  _gljob_log "gitlab-ci-local $_gljob_job (WEB_IMAGE=$WEB_IMAGE, project ${BERTH_PROJECT:-shop} on $DEPLOY_HOST:${DEPLOY_PORT:-2222})"
  t=$SECONDS
  before=$(_gljob_file_variable_dirs)
  # --home: no ~/.gitlab-ci-local/variables.yml of whoever runs this.
  # The job's needs (build, test) are not run: WEB_IMAGE is a variable here.
  # umask 077: gitlab-ci-local writes File variables (the key) to /tmp.
  (umask 077 && cd "$repo" && "$gcl" --home "$work/home" --no-color \
    --pull-policy if-not-present --network host --max-job-name-padding 0 \
    "$_gljob_job") 2>&1 | tee "$log" && status=${PIPESTATUS[0]} || status=${PIPESTATUS[0]}
  rm -f "$vars"
  _gljob_clean_file_variables "$before"
  # gitlab-ci-local exits 1 for any failed job; the job's own code is in
  # its last line: "deploy:production finished in 2.3 s  FAIL 1 ".
  if grep -Eq "^$_gljob_job +finished in .* (FAIL|WARN) [0-9]+" "$log"; then
    code=$(sed -nE "s/^$_gljob_job +finished in .* (FAIL|WARN) ([0-9]+).*/\2/p" "$log" | tail -n 1)
  elif [[ $status == 0 ]] && grep -Eq "^$_gljob_job +finished in " "$log"; then
    code=0
  else
    _gljob_err "gitlab-ci-local exited $status without running $_gljob_job to the end (log: $log)"
    return 125
  fi
  _gljob_log "$_gljob_job exited $code in $((SECONDS - t))s (gitlab-ci-local exited $status)"
  return "$code"
}
