#!/bin/sh
# postremove: run by dpkg (postrm "remove" | "purge" | "upgrade" | ...) and
# rpm (%postun 0 = removal, 1 = upgrade) after the files are gone.
#
# What stays, by decision:
#   - /var/lib/berth, the release history (and the SSH host key): never
#     deleted, not even by purge. The containers agentd deployed keep running
#     after removal, and their history is what a reinstalled agentd needs to
#     roll them back.
#   - the user and group berth (Debian's practice for system users).
#   - /etc/berth/agentd.yaml: a conffile. dpkg keeps it on remove and deletes
#     it on purge; rpm deletes it on erase if unedited, else keeps it as
#     agentd.yaml.rpmsave. Other files in /etc/berth (secrets, keys) are never
#     touched; purge removes /etc/berth only if it is then empty.
set -e

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi

case "${1:-}" in
  remove)
    echo "berth: removed. Kept: /etc/berth (config), /var/lib/berth (release history), the user berth. Deployed containers keep running."
    ;;
  0)
    echo "berth: removed. Kept: /var/lib/berth (release history), the user berth, and an edited config as /etc/berth/agentd.yaml.rpmsave. Deployed containers keep running."
    ;;
  purge)
    rmdir /etc/berth 2>/dev/null || true
    echo "berth: purged. Kept on purpose: /var/lib/berth (release history) and the user berth; delete them yourself if you are sure: rm -rf /var/lib/berth && userdel berth"
    ;;
esac
exit 0
