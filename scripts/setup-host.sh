#!/usr/bin/env bash
# setup-host.sh: make this Debian machine ready to run Berth's demo and tests.
# Installs what is missing from Debian's packages (Docker Engine, the
# registry, docker-compose for compatibility checks, the OpenSSH client and
# server the SSH front-door tests drive, systemd-analyze for the unit
# checks, rsync and npm for the local GitLab runner of scripts/e2e.sh,
# iproute2 for the benchmark's clients),
# starts dockerd
# if no engine answers, and waits until it does. Safe to run again.
# Usage: sudo scripts/setup-host.sh
set -euo pipefail
# shellcheck source=lib/cgroup.sh
. "$(dirname "$0")/lib/cgroup.sh"

log() { echo "setup-host: $*" >&2; }

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v rsync >/dev/null || need+=(rsync)
command -v ip >/dev/null || need+=(iproute2)
command -v npm >/dev/null || need+=(npm)
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || need+=(golang-go)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing packages: ${need[*]}; run me as root (sudo) to install them"
    exit 2
  fi
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# engine_cgroup: creates and prints the cgroup dockerd starts in: berth-dockerd
# in the cpu hierarchy (cgroup v1) or the unified one (v2).
engine_cgroup() {
  local d
  d=$(cpu_root)/berth-dockerd
  mkdir -p "$d"
  echo "$d"
}

# The engine's CPU weight: about a sixteenth of a container's at Docker's
# default (cpu.shares 1024 on cgroup v1, cpu.weight 100 on v2). The engine's
# work for a rollout (creating, starting, stopping and removing containers,
# their networks and mounts, health-check execs) then waits while the
# serving containers want the CPU, as a new container's boot does
# (docs/agentd.md, "The engine's CPU weight"); it takes what they leave.
engine_weight_v1=64 engine_weight_v2=6
# The same through systemd: CPUWeight 6 is cpu.weight 6 on v2 and
# cpu.shares 61 on v1 (CPUWeight x 1024 / 100).
engine_cpuweight=6

# weigh_units: gives the engine that weight through systemd, on
# docker.service and containerd.service (systemctl set-property: kept across
# boots). Says what it did; a refusal is said and is no error.
weigh_units() {
  local unit
  for unit in docker.service containerd.service; do
    systemctl cat "$unit" >/dev/null 2>&1 || continue
    if systemctl set-property "$unit" "CPUWeight=$engine_cpuweight" 2>/dev/null; then
      log "$unit: CPUWeight=$engine_cpuweight (the engine's work waits for the serving containers)"
    else
      log "could not set CPUWeight=$engine_cpuweight on $unit: the engine weighs as much as a service"
    fi
  done
}

# weigh_cgroup: gives the engine that weight in the cgroup berth-dockerd, if
# dockerd runs there (this script started it). Says it when it writes; a
# refusal is said and is no error.
weigh_cgroup() {
  local pid cg file w=$engine_weight_v2
  file=$(cpu_weight_file)
  [[ $file == cpu.shares ]] && w=$engine_weight_v1
  pid=$(pgrep -xo dockerd) || return 0
  cg=$(cpu_cgroup "$pid") || return 0
  [[ $cg == /berth-dockerd ]] || return 0
  cg=$(engine_cgroup)
  if [[ $(cat "$cg/$file" 2>/dev/null) == "$w" ]]; then
    return 0
  elif echo "$w" 2>/dev/null >"$cg/$file"; then
    log "dockerd's cgroup: $file $w (the engine's work waits for the serving containers)"
  else
    log "could not set $file in $cg: the engine weighs as much as a container"
  fi
}

# is-system-running exits non-zero when systemd runs "degraded" (a unit
# failed): systemd still starts Docker then.
systemd=false
if command -v systemctl >/dev/null; then
  sd_state=$(systemctl is-system-running 2>/dev/null || true)
  [[ $sd_state == running || $sd_state == degraded ]] && systemd=true
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    log "no Docker engine answers and I am not root: start dockerd (sudo systemctl start docker)"
    exit 2
  fi
  if $systemd; then
    log "starting docker.service"
    systemctl start docker
  else
    # Without systemd, dockerd would run in the root cgroup, where each of
    # its threads (and containerd's, runc's, docker-proxy's) weighs as much
    # for the CPU as all the containers together. Start it in a cgroup of
    # its own, as systemd starts docker.service, and give each container a
    # cgroup of its own beside it (--cgroup-parent /), as the systemd cgroup
    # driver does on cgroup v2 (Debian 12, Ubuntu 22.04 and newer), so that
    # the benchmark and the tests meet the CPU arbitration of a user's host.
    (
      if cg=$(engine_cgroup 2>/dev/null) && echo "$BASHPID" 2>/dev/null >"$cg/cgroup.procs"; then
        log "starting dockerd in cgroup $cg (log: /var/log/berth-dockerd.log)"
      else
        log "starting dockerd in the root cgroup: no cgroup of its own could be made (log: /var/log/berth-dockerd.log)"
      fi
      exec nohup dockerd --cgroup-parent=/ >/var/log/berth-dockerd.log 2>&1
    ) &
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info >/dev/null 2>&1 || { log "the Docker engine did not come up"; exit 1; }
if [ "$(id -u)" = 0 ]; then
  if $systemd; then weigh_units; else weigh_cgroup; fi
fi
log "Docker Engine $(docker info --format '{{.ServerVersion}}') is ready"
