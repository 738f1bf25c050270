#!/bin/sh
# rabbitmq-entrypoint: write the config from the environment, then run
# RabbitMQ in the foreground, as user rabbitmq, logging to stdout.
set -eu
export HOME=/var/lib/rabbitmq
cd "$HOME"

if [ "$(id -u)" = 0 ]; then
  [ "$(stat -c %U "$HOME")" = rabbitmq ] || chown -R rabbitmq:rabbitmq "$HOME"
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
fi

host=$(hostname)
case $host in
  *[!0-9a-f]*) ;;
  *) [ -n "${RABBITMQ_NODENAME:-}" ] ||
       echo "rabbitmq-entrypoint: warning: the host name $host looks like a container ID; set a fixed hostname (compose: hostname: rabbitmq) or the next container will not find this one's data" >&2 ;;
esac
export RABBITMQ_NODENAME=${RABBITMQ_NODENAME:-rabbit@$host}

umask 077
{
  echo "# written by rabbitmq-entrypoint at each start"
  echo "listeners.tcp.default = 5672"
  echo "log.console = true"
  echo "log.console.level = info"
  echo "log.console.use_colors = off"
  echo "log.file = false"
  if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
    echo "default_user = $RABBITMQ_DEFAULT_USER"
    echo "default_pass = ${RABBITMQ_DEFAULT_PASS:?RABBITMQ_DEFAULT_PASS must be set with RABBITMQ_DEFAULT_USER}"
    echo "default_permissions.configure = .*"
    echo "default_permissions.read = .*"
    echo "default_permissions.write = .*"
  fi
} >/etc/rabbitmq/rabbitmq.conf
umask 022

if [ "${1:-}" = rabbitmq-server ]; then
  shift
  # The server script itself, not Debian's /usr/sbin wrapper (which sends
  # the log to a file); it stops the node cleanly on SIGTERM.
  exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
