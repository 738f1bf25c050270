#!/usr/bin/env bash
# install.sh: install Berth from a release archive, on a host that does not
# use the .deb or .rpm packages. Run as root.
#
# Usage: sudo scripts/install.sh [--version V] [--from DIR|FILE|URL] [--arch ARCH]
#   --version V  the release to install (1.2.0 or v1.2.0). Needed to download;
#                optional with --from DIR if DIR holds one archive for ARCH.
#   --from DIR   a directory with berth_V_linux_ARCH.tar.gz and checksums.txt
#                (a downloaded release, or GoReleaser's dist/)
#   --from FILE  the archive itself; checksums.txt must be beside it
#   --from URL   where both are, fetched with curl: a base URL (…/download/v1.2.0)
#                or the archive's URL. Default with only --version: the GitHub
#                release https://github.com/berth-deploy/berth/releases/download/vV
#   --arch ARCH  amd64 or arm64 (default: this machine's)
#
# Before it changes anything it checks the archive's sha256 against
# checksums.txt and refuses (exit 1) on a mismatch or a missing entry. Then,
# like the packages, it:
#   - installs /usr/bin/agentd and /usr/bin/agentctl (replacing older ones),
#   - installs agentd.service and agentd.socket into /etc/systemd/system,
#   - installs the commented default config as /etc/berth/agentd.yaml ONLY IF
#     there is none (an existing config is never overwritten),
#   - creates the system user and group berth (no login, home /var/lib/berth)
#     and adds berth to the docker group if that group exists,
#   - creates /var/lib/berth (0700 berth:berth) and /etc/berth (0750
#     root:berth; the config 0640 root:berth),
#   - runs systemctl daemon-reload if systemd runs.
# It STARTS NOTHING: configure /etc/berth/agentd.yaml, then
#   agentd --config /etc/berth/agentd.yaml --check && systemctl enable --now agentd
# Running it again is safe (an upgrade: binaries and units replaced, config
# and state kept; a running agentd is not restarted).
#
# To uninstall: systemctl disable --now agentd.socket agentd; rm /usr/bin/agentd
# /usr/bin/agentctl /etc/systemd/system/agentd.{service,socket}; systemctl
# daemon-reload. /etc/berth and /var/lib/berth (release history) are yours.
#
# Exit status: 0 installed; 1 refused (checksum, archive, conflicting
# package) or failed; 2 usage (bad argument, not root).
set -euo pipefail

REPO_URL=https://github.com/berth-deploy/berth/releases/download

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$1" >&2; exit "${2:-1}"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }

version="" from="" arch=""
while (($#)); do
  case $1 in
    --version) [[ $# -ge 2 && -n $2 ]] || die "--version needs a value" 2; version=${2#v}; shift ;;
    --from) [[ $# -ge 2 && -n $2 ]] || die "--from needs a directory, file or URL" 2; from=$2; shift ;;
    --arch) [[ $# -ge 2 && -n $2 ]] || die "--arch needs a value" 2; arch=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" 2 ;;
  esac
  shift
done

[[ $EUID -eq 0 ]] || die "installing Berth needs root; re-run with sudo" 2

if [[ -z $arch ]]; then
  case $(uname -m) in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) die "no Berth release for this machine ($(uname -m)); give --arch amd64 or arm64" 2 ;;
  esac
fi
case $arch in amd64|arm64) ;; *) die "--arch $arch: want amd64 or arm64" 2 ;; esac

# Files the berth package owns must not be overwritten behind its back.
if command -v dpkg-query >/dev/null && dpkg-query -W -f='${Status}' berth 2>/dev/null | grep -q 'ok installed'; then
  die "the berth package is installed: upgrade it with apt instead, or remove it first (apt remove berth keeps /etc/berth and /var/lib/berth)"
fi
if command -v rpm >/dev/null && rpm -q berth >/dev/null 2>&1; then
  die "the berth package is installed: upgrade it with dnf/yum instead, or remove it first"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

fetch() { # URL FILE
  command -v curl >/dev/null || die "curl is needed to download $1 (or download it yourself and use --from DIR)"
  log "downloading $1"
  curl -fsSL --retry 3 --proto '=https,http' -o "$2" "$1" || die "download failed: $1"
}

# Find the archive and checksums.txt.
archive="" sums=""
case $from in
  http://*|https://*|"")
    if [[ -z $from ]]; then
      [[ -n $version ]] || die "give --version V (to download it) or --from DIR|FILE|URL" 2
      from=$REPO_URL/v$version
    fi
    if [[ $from == *.tar.gz ]]; then
      base=${from%/*} name=${from##*/}
    else
      [[ -n $version ]] || die "--from URL: give --version V too, or the archive's own URL" 2
      base=${from%/} name=berth_${version}_linux_${arch}.tar.gz
    fi
    archive=$work/$name sums=$work/checksums.txt
    fetch "$base/$name" "$archive"
    fetch "$base/checksums.txt" "$sums"
    ;;
  *)
    if [[ -d $from ]]; then
      if [[ -n $version ]]; then
        archive=$from/berth_${version}_linux_${arch}.tar.gz
        [[ -f $archive ]] || die "no $(basename "$archive") in $from"
      else
        shopt -s nullglob
        found=("$from"/berth_*_linux_"$arch".tar.gz)
        shopt -u nullglob
        ((${#found[@]} > 0)) || die "no berth_*_linux_$arch.tar.gz in $from"
        ((${#found[@]} == 1)) || die "several archives for $arch in $from: choose one with --version" 2
        archive=${found[0]}
      fi
    elif [[ -f $from ]]; then
      archive=$from
    else
      die "--from $from: no such file or directory" 2
    fi
    sums=$(dirname "$archive")/checksums.txt
    [[ -f $sums ]] || die "no checksums.txt beside $(basename "$archive") in $(dirname "$archive"): refusing to install an unverified archive"
    ;;
esac
name=$(basename "$archive")

# Verify the sha256 before anything is unpacked or changed.
want=$(awk -v f="$name" '{ n = $2; sub(/^\*/, "", n) } n == f { print $1; exit }' "$sums")
[[ -n $want ]] || die "checksums.txt has no entry for $name: refusing to install an unverified archive; nothing was installed"
got=$(sha256sum "$archive" | cut -d' ' -f1)
if [[ ${got,,} != "${want,,}" ]]; then
  die "CHECKSUM MISMATCH for $name:
    checksums.txt says  $want
    the archive is      $got
  The archive is corrupt or not the released one. Nothing was installed."
fi
log "sha256 ok: $name"

# Unpack and check the contents: one top directory (berth_V_linux_ARCH/) or none.
tar -xzf "$archive" -C "$work" --no-same-owner || die "cannot unpack $name; nothing was installed"
root=$work
if [[ ! -f $root/agentd ]]; then
  shopt -s nullglob
  dirs=("$work"/berth_*/)
  shopt -u nullglob
  ((${#dirs[@]} == 1)) && root=${dirs[0]%/}
fi
for f in agentd agentctl systemd/agentd.service packaging/agentd.yaml; do
  [[ -f $root/$f ]] || die "$name has no $f: not a Berth release archive; nothing was installed"
done
new_version=$("$root/agentd" --version 2>&1) ||
  die "the agentd in $name does not run here ($new_version): wrong --arch?; nothing was installed"
log "installing $new_version"

# The user and group berth, as the packages create them.
if ! getent group berth >/dev/null; then
  groupadd --system berth
  log "created group berth"
fi
if ! getent passwd berth >/dev/null; then
  nologin=/usr/sbin/nologin
  [[ -x $nologin ]] || nologin=/sbin/nologin
  [[ -x $nologin ]] || nologin=/bin/false
  useradd --system --gid berth --home-dir /var/lib/berth --no-create-home \
    --shell "$nologin" --comment "Berth deploy agent" berth
  log "created user berth"
fi
if getent group docker >/dev/null; then
  case " $(id -nG berth) " in
    *" docker "*) ;;
    *) usermod -a -G docker berth; log "added berth to the docker group" ;;
  esac
else
  log "warning: there is no docker group (is Docker installed?). agentd needs the Docker engine; the unit runs it with SupplementaryGroups=docker."
fi

# Directories.
install -d -m 0700 -o berth -g berth /var/lib/berth
install -d -m 0750 -o root -g berth /etc/berth
install -d -m 0755 /usr/bin /etc/systemd/system

# Binaries: copied beside, then renamed over the old ones (safe while agentd runs).
for b in agentd agentctl; do
  install -m 0755 -o root -g root "$root/$b" "/usr/bin/.$b.berth-new"
  mv -f "/usr/bin/.$b.berth-new" "/usr/bin/$b"
done

# Units.
for u in agentd.service agentd.socket; do
  [[ -f $root/systemd/$u ]] || continue
  install -m 0644 -o root -g root "$root/systemd/$u" "/etc/systemd/system/$u"
done

# The config: only if there is none.
if [[ -e /etc/berth/agentd.yaml ]]; then
  log "kept the existing /etc/berth/agentd.yaml"
else
  install -m 0640 -o root -g berth "$root/packaging/agentd.yaml" /etc/berth/agentd.yaml
  log "installed the default /etc/berth/agentd.yaml"
fi
chown root:berth /etc/berth/agentd.yaml
chmod 0640 /etc/berth/agentd.yaml

running=0
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  systemctl is-active --quiet agentd.service && running=1
fi

if ! check=$(/usr/bin/agentd --config /etc/berth/agentd.yaml --check 2>&1); then
  log "warning: /etc/berth/agentd.yaml does not pass agentd --check yet:"
  printf '%s\n' "$check" >&2
fi

log "installed $new_version: /usr/bin/agentd, /usr/bin/agentctl, /etc/systemd/system/agentd.{service,socket}"
if ((running)); then
  log "agentd was NOT restarted: it runs the old version until you run: systemctl restart agentd"
else
  log "agentd is NOT started or enabled: this script starts nothing. Configure /etc/berth/agentd.yaml, then:"
  log "  agentd --config /etc/berth/agentd.yaml --check && systemctl enable --now agentd"
fi
log "members of the group berth may use agentctl: usermod -aG berth USER"
