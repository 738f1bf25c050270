#!/bin/sh
# postinstall: run by dpkg (postinst "configure" [OLD-VERSION]) and rpm (%post
# 1 = install, 2 = upgrade) after the files are in place; scripts/install.sh
# does the same for hosts without the packages. Idempotent. It creates the user and group berth, adds
# berth to the docker group if that group exists, creates /var/lib/berth and
# /etc/berth, and reloads systemd if it runs. It STARTS NOTHING: agentd is
# enabled and started by the operator once /etc/berth/agentd.yaml is
# configured, and an upgrade does not restart a running agentd.
set -e

case "${1:-}" in
  abort-upgrade|abort-remove|abort-deconfigure|triggered) exit 0 ;;
esac

# The system user and group berth: no login, home /var/lib/berth.
if command -v systemd-sysusers >/dev/null 2>&1 && [ -f /usr/lib/sysusers.d/berth.conf ]; then
  systemd-sysusers /usr/lib/sysusers.d/berth.conf || true
fi
if ! getent group berth >/dev/null; then
  groupadd --system berth
fi
if ! getent passwd berth >/dev/null; then
  nologin=/usr/sbin/nologin
  [ -x "$nologin" ] || nologin=/sbin/nologin
  [ -x "$nologin" ] || nologin=/bin/false
  useradd --system --gid berth --home-dir /var/lib/berth --no-create-home \
    --shell "$nologin" --comment "Berth deploy agent" berth
fi

# agentd talks to the Docker engine. The unit asks for the docker group
# (SupplementaryGroups=docker); membership also lets `sudo -u berth docker`
# work. The group is Docker's to create, never ours.
if getent group docker >/dev/null; then
  case " $(id -nG berth) " in
    *" docker "*) ;;
    *) usermod -a -G docker berth ;;
  esac
  docker_missing=0
else
  docker_missing=1
fi

# The state directory (release history): 0700 berth:berth.
if command -v systemd-tmpfiles >/dev/null 2>&1 && [ -f /usr/lib/tmpfiles.d/berth.conf ]; then
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/berth.conf || true
fi
mkdir -p /var/lib/berth
chown berth:berth /var/lib/berth
chmod 0700 /var/lib/berth

# The config directory: root writes, agentd (group berth) reads.
mkdir -p /etc/berth
chown root:berth /etc/berth
chmod 0750 /etc/berth
if [ -f /etc/berth/agentd.yaml ]; then
  chown root:berth /etc/berth/agentd.yaml
  chmod 0640 /etc/berth/agentd.yaml
fi

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload || true
fi

if [ -d /run/systemd/system ] && systemctl is-active --quiet agentd.service 2>/dev/null; then
  cat <<'MSG'
berth: agentd was NOT restarted: the running one keeps the old version until
  you restart it, when you choose (deploys in flight finish first):
    systemctl restart agentd
MSG
elif command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet agentd.service 2>/dev/null; then
  echo "berth: agentd is enabled but not running, and the package starts nothing: systemctl start agentd"
else
  cat <<'MSG'
berth: agentd is installed, and NOT started or enabled: the package starts nothing.
  1. Configure it: edit /etc/berth/agentd.yaml (add your projects), then
       agentd --config /etc/berth/agentd.yaml --check
  2. Start it now and at every boot:
       systemctl enable --now agentd
  Members of the group berth may use agentctl:  usermod -aG berth USER
MSG
fi
if [ -f /etc/berth/agentd.yaml.rpmsave ]; then
  echo "berth: /etc/berth/agentd.yaml.rpmsave is the config of an earlier install (rpm saved it on removal); to use it again: mv /etc/berth/agentd.yaml.rpmsave /etc/berth/agentd.yaml" >&2
fi
if [ "$docker_missing" = 1 ]; then
  echo "berth: warning: there is no docker group (is Docker installed?). agentd needs the Docker engine; the unit runs it with SupplementaryGroups=docker." >&2
fi
exit 0
