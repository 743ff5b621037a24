#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suite: Debian's server binaries, a fresh data directory,
# a free local TCP port, trust authentication and durability off (tests, not data, live here).
#
#   eval "$(scripts/start_postgres.sh)"        # exports FLATMTL_TEST_POSTGRES_URL and FLATMTL_TEST_POSTGRES_DIR
#   scripts/start_postgres.sh stop             # stops the cluster named by FLATMTL_TEST_POSTGRES_DIR
#   scripts/start_postgres.sh down|up          # stops it keeping its data, and starts it again on the same port
#                                              # (fault-injection tests: an outage of the database)
#
# Diagnostics go to stderr so that stdout stays eval-able. As root, the server runs as `postgres`
# because initdb and postgres refuse to run as root.
set -euo pipefail

wait_seconds=${FLATMTL_PG_WAIT_SECONDS:-600}
database=${FLATMTL_PG_DATABASE:-flatmtl_test}

find_bindir() {
  local pg_ctl
  pg_ctl=$(ls -1d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$pg_ctl" ] && dirname "$pg_ctl"
}

# Run a server binary as the cluster's owner: ourselves, or `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

server_options() {
  echo "-p $1 -k $2 -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
}

if [ "${1:-}" = down ] || [ "${1:-}" = up ]; then
  bindir=$(find_bindir) || { echo "start_postgres: no PostgreSQL installed" >&2; exit 1; }
  : "${FLATMTL_TEST_POSTGRES_DIR:?set FLATMTL_TEST_POSTGRES_DIR (printed by the start command)}"
  root=$FLATMTL_TEST_POSTGRES_DIR
  if [ "$1" = down ]; then
    as_owner "$bindir/pg_ctl" -D "$root/data" -m fast -w stop >&2
  else
    as_owner "$bindir/pg_ctl" -D "$root/data" -l "$root/server.log" -w -t 60 \
      -o "$(server_options "$(cat "$root/port")" "$root")" start >&2
  fi
  exit 0
fi

if [ "${1:-}" = stop ]; then
  bindir=$(find_bindir) || { echo "start_postgres: no PostgreSQL installed" >&2; exit 1; }
  : "${FLATMTL_TEST_POSTGRES_DIR:?set FLATMTL_TEST_POSTGRES_DIR (printed by the start command)}"
  as_owner "$bindir/pg_ctl" -D "$FLATMTL_TEST_POSTGRES_DIR/data" -m fast -w stop >&2
  rm -rf "$FLATMTL_TEST_POSTGRES_DIR"
  exit 0
fi

bindir=""
for ((waited = 0; waited < wait_seconds; waited++)); do
  bindir=$(find_bindir) && break
  [ "$waited" = 0 ] && echo "start_postgres: waiting for /usr/lib/postgresql/*/bin/pg_ctl ..." >&2
  sleep 1
done
[ -n "$bindir" ] || { echo "start_postgres: PostgreSQL not installed after ${wait_seconds}s" >&2; exit 1; }

root=$(mktemp -d /tmp/flatmtl-pg.XXXXXX)
chmod 755 "$root"
if [ "$(id -u)" = 0 ]; then
  chown postgres "$root"
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "$port" >"$root/port"

as_owner "$bindir/initdb" -D "$root/data" -U postgres -A trust -E UTF8 --no-locale >"$root/initdb.log" 2>&1 \
  || { cat "$root/initdb.log" >&2; exit 1; }
as_owner "$bindir/pg_ctl" -D "$root/data" -l "$root/server.log" -w -t 60 \
  -o "$(server_options "$port" "$root")" \
  start >&2 || { cat "$root/server.log" >&2; exit 1; }
as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$database" >&2

url="postgresql+psycopg://postgres@127.0.0.1:$port/$database"
echo "start_postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') at $url (data in $root)" >&2
echo "export FLATMTL_TEST_POSTGRES_URL='$url'"
echo "export FLATMTL_TEST_POSTGRES_DIR='$root'"
