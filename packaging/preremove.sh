#!/bin/sh
# preremove: run by dpkg (prerm "remove" | "upgrade" | ...) and rpm (%preun
# 0 = removal, 1 = upgrade) before the files go. On a real removal only, it
# stops agentd (the service and its socket, if systemd runs) and disables
# them. An upgrade leaves a running agentd alone. Deployed containers keep
# running either way: stopping agentd stops no project.
set -e

case "${1:-}" in
  remove|0) ;;
  *) exit 0 ;;
esac

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl stop agentd.socket agentd.service >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1; then
  systemctl --no-reload disable agentd.socket agentd.service >/dev/null 2>&1 || true
fi
exit 0
