#!/bin/sh
# postgres-entrypoint: create the cluster in $PGDATA on the first start, then
# run the command (postgres) in the foreground, as user postgres.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
  # A fresh volume (or a bind mount) may be root's: give it to postgres,
  # then run this script again as postgres.
  mkdir -p "$PGDATA"
  [ "$(stat -c %U "$PGDATA")" = postgres ] || chown -R postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  install -d -o postgres -g postgres -m 2775 /run/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required to create the cluster}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  echo "postgres-entrypoint: creating the cluster in $PGDATA (superuser $user, database $db)"
  # Should anything below fail, leave the volume empty, so that the next
  # start tries again rather than finding a half-made cluster.
  trap 'status=$?; if [ "$status" != 0 ]; then pg_ctl --silent -m immediate stop 2>/dev/null || true; find "$PGDATA" -mindepth 1 -delete; fi' EXIT
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  # Local (unix socket, inside the container) connections are trusted; every
  # network connection needs the password (SCRAM).
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  cat >>"$PGDATA/postgresql.conf" <<CONF

# postgres-entrypoint
listen_addresses = '*'
password_encryption = scram-sha-256
CONF
  cat >>"$PGDATA/pg_hba.conf" <<CONF

# postgres-entrypoint: any address, with the password
host    all    all    all    scram-sha-256
CONF
  if [ "$db" != postgres ]; then
    # A server on the socket only, so that nothing connects before the end.
    pg_ctl --silent -o "-c listen_addresses=''" -w start
    echo 'CREATE DATABASE :"db";' |
      psql -v ON_ERROR_STOP=1 --quiet --username="$user" --dbname=postgres --set=db="$db"
    pg_ctl --silent -m fast -w stop
  fi
  trap - EXIT
  echo "postgres-entrypoint: cluster ready"
fi

exec "$@"
