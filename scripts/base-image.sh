#!/usr/bin/env bash
# base-image.sh: build Berth's Debian bookworm base image without Docker Hub.
#
# debootstrap (minbase) builds a rootfs, apt adds the Django/Celery/Postgres/
# RabbitMQ/nginx stack, and `docker import` turns it into an image. The image
# is cached by tag: berth/debian-base:<key>, where <key> is a hash of this
# script plus the package list. If that tag already exists, the script returns
# at once. Default tags are also tagged berth/debian-base:latest.
#
# Usage: sudo scripts/base-image.sh [--tag NAME] [--print-tag] [--force]
#   tag=$(sudo scripts/base-image.sh | tail -n1)   # last stdout line = tag
# Env: BERTH_DEBIAN_MIRROR (default: the host's apt mirror, else deb.debian.org)
set -euo pipefail

SUITE=bookworm
PACKAGES=(python3-django gunicorn python3-celery celery python3-psycopg2 postgresql
  rabbitmq-server nginx-light curl ca-certificates tzdata netbase libjs-jquery)
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'base-image.sh: %s\n' "$1" >&2; exit "${2:-1}"; }

# First URI in the host's apt sources that ends in /$1 (e.g. debian).
host_uri() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk -v re="^https?://.*/$1/?\$" '$1 == "URIs:" || $1 == "deb" {
      for (i = 2; i <= NF; i++) if ($i ~ re) { print $i; exit } }' || true
}

tag="" print_only=0 force=0
while (($#)); do
  case $1 in
    --tag) [[ $# -ge 2 && -n $2 ]] || die "--tag needs a value"; tag=$2; shift ;;
    --print-tag) print_only=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
  shift
done

key=$({ cat "${BASH_SOURCE[0]}"; printf '%s\n' "${PACKAGES[@]}"; } | sha256sum | cut -c1-12)
default_tag=berth/debian-base:$key
tag=${tag:-$default_tag}

if ((print_only)); then echo "$tag"; exit 0; fi
if ((!force)) && docker image inspect "$tag" >/dev/null 2>&1; then
  log "cached: $tag"; echo "$tag"; exit 0
fi
exec 3>&1 1>&2   # from here on, everything except the final tag goes to stderr

[[ $EUID -eq 0 ]] || die "building the base image needs root (debootstrap, chroot); re-run with sudo" 2
docker version >/dev/null || die "docker daemon is not reachable"
mirror=${BERTH_DEBIAN_MIRROR:-$(host_uri debian)}
mirror=${mirror:-http://deb.debian.org/debian}
security=$(host_uri debian-security)

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get install -y debootstrap || { apt-get update && apt-get install -y debootstrap; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-base.XXXXXX")
rootfs=$work/rootfs
cleanup() {
  # Unmount anything left under $work (e.g. /proc after a failure) before deleting.
  findmnt -rno TARGET | grep -F "$work/" | sort -r | xargs -r umount -l || true
  rm -rf --one-file-system "$work"
}; trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM
start=$SECONDS

log "debootstrap --variant=minbase $SUITE from $mirror"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror"

log "configuring rootfs for container use"
# Never start services from maintainer scripts (also kept in the image).
printf '#!/bin/sh\n# berth: no services are started inside images\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"
# Do not create a default "main" PostgreSQL cluster; Berth initialises its own.
mkdir -p "$rootfs/etc/postgresql-common/createcluster.d"
echo 'create_main_cluster = false' >"$rootfs/etc/postgresql-common/createcluster.d/berth.conf"
# Keep docs, man pages and translations out of the image.
printf 'path-exclude=/usr/share/%s\n' 'doc/*' 'man/*' 'info/*' 'locale/*' >"$rootfs/etc/dpkg/dpkg.cfg.d/berth-nodoc"
echo 'path-include=/usr/share/doc/*/copyright' >>"$rootfs/etc/dpkg/dpkg.cfg.d/berth-nodoc"
printf 'deb %s main\n' "$mirror $SUITE" "$mirror $SUITE-updates" \
  ${security:+"$security $SUITE-security"} >"$rootfs/etc/apt/sources.list"

log "installing: ${PACKAGES[*]}"
mkdir -p "$rootfs/dev/pts"   # /dev/pts only so apt can write its terminal log
mount -t proc proc "$rootfs/proc"; mount --bind /dev/pts "$rootfs/dev/pts"
in_root() { chroot "$rootfs" env -i PATH="$PATH_ENV" LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
in_root apt-get update
in_root apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
in_root apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
in_root apt-get clean
umount "$rootfs/dev/pts" "$rootfs/proc"

log "cleaning rootfs"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/tmp/* "$rootfs"/var/tmp/* "$rootfs"/root/.cache \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
  "$rootfs"/etc/ssl/private/ssl-cert-snakeoil.key "$rootfs"/etc/ssl/certs/ssl-cert-snakeoil.pem \
  "$rootfs"/var/lib/rabbitmq/.erlang.cookie
find "$rootfs/usr/share/doc" ! -type d ! -name copyright -delete   # as berth-nodoc, for
find "$rootfs/usr/share/doc" -depth -type d -empty -delete           # debootstrap's packages
find "$rootfs/var/log" -type f -exec truncate -s 0 {} +
: >"$rootfs/etc/resolv.conf"   # Docker bind-mounts its own at run time
echo localhost >"$rootfs/etc/hostname"

log "docker import -> $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change "ENV PATH=$PATH_ENV" --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' - "$tag"
[[ $tag != "$default_tag" ]] || docker tag "$tag" berth/debian-base:latest
log "built $tag in $((SECONDS - start))s"
echo "$tag" >&3
