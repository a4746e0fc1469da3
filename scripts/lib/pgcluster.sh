# shellcheck shell=bash
# pgcluster.sh - a throwaway PostgreSQL cluster for tests.  Source it, then:
#
#   pgcluster_start PREFIX || exit 1     # PREFIX names the caller in messages
#   trap pgcluster_stop EXIT             # (or call pgcluster_stop yourself)
#
# pgcluster_start installs PostgreSQL if it is missing, creates a cluster in
# a new temporary directory (owned by the postgres user when we are root:
# the server refuses to run as root), starts it on 127.0.0.1 on a free port
# with synchronous_commit=on, creates the database `tasker_test`, and sets:
#
#   PGC_BIN, PGC_PORT, PGC_DIR, PGC_DATA, PGC_LOG   where things are
#   PGC_RUNAS                                       an array: the command prefix
#                                                   that runs as the server's user
#   TASKER_TEST_DATABASE_URL  (exported) a libpq connection string for tasker_test
#   TASKER_TEST_PGCTL, TASKER_TEST_PGDATA, TASKER_TEST_PGLOG, TASKER_TEST_PGUSER
#                             (exported) for tests that stop and restart the server
#   TASKER_TEST_PGBIN         (exported) the directory holding psql, initdb, ...
#
# pgcluster_stop stops the server (immediate mode) and removes the directory.
# It is idempotent and safe to call when the start failed half-way, so it is
# meant for an EXIT trap.  No existing cluster or database is touched.

PGC_BIN=""
PGC_PORT=""
PGC_DIR=""
PGC_DATA=""
PGC_LOG=""
PGC_RUNAS=()
_pgc_started=0
_pgc_prefix="pgcluster"

_pgc_say() { echo "$_pgc_prefix: $*"; }
_pgc_err() { echo "$_pgc_prefix: $*" >&2; }

_pgc_find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

pgcluster_start() {
    _pgc_prefix=${1:-pgcluster}
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"

    PGC_BIN="$(_pgc_find_bin)"
    if [ -z "$PGC_BIN" ] || [ ! -x "$PGC_BIN/initdb" ]; then
        _pgc_say "installing PostgreSQL"
        $sudo apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null ||
            { _pgc_err "could not install postgresql"; return 1; }
        PGC_BIN="$(_pgc_find_bin)"
    fi
    [ -x "$PGC_BIN/initdb" ] || { _pgc_err "no initdb under /usr/lib/postgresql/*/bin"; return 1; }

    PGC_RUNAS=()
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || { _pgc_err "no 'postgres' user to run the server as"; return 1; }
        PGC_RUNAS=(runuser -u postgres --)
    fi

    PGC_DIR="$(mktemp -d /tmp/tasker-pg.XXXXXX)" || { _pgc_err "mktemp"; return 1; }
    PGC_DATA="$PGC_DIR/data"
    PGC_LOG="$PGC_DIR/server.log"
    chmod 755 "$PGC_DIR"
    if [ "${#PGC_RUNAS[@]}" -gt 0 ]; then chown postgres "$PGC_DIR"; fi

    # A free TCP port on 127.0.0.1 (the kernel picks one; we release it at once).
    PGC_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null)"
    [ -n "$PGC_PORT" ] || PGC_PORT=$((20000 + RANDOM % 20000))

    "${PGC_RUNAS[@]}" "$PGC_BIN/initdb" -D "$PGC_DATA" -U postgres --auth=trust -E UTF8 --no-sync \
        >"$PGC_DIR/initdb.log" 2>&1 || { cat "$PGC_DIR/initdb.log" >&2; _pgc_err "initdb failed"; return 1; }
    # The settings go into the cluster's own configuration (not pg_ctl -o),
    # so that a test restarting the server with a plain `pg_ctl start` gets
    # the same port and socket directory back.
    cat >>"$PGC_DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGC_PORT
unix_socket_directories = '$PGC_DIR'
synchronous_commit = on
max_connections = 200
fsync = on
EOF
    if ! "${PGC_RUNAS[@]}" "$PGC_BIN/pg_ctl" -D "$PGC_DATA" -l "$PGC_LOG" -w -t 60 start >/dev/null 2>&1; then
        cat "$PGC_LOG" >&2
        _pgc_err "the server did not start"
        return 1
    fi
    _pgc_started=1
    _pgc_say "PostgreSQL $("$PGC_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGC_PORT (data in $PGC_DATA)"

    "$PGC_BIN/psql" -h 127.0.0.1 -p "$PGC_PORT" -U postgres -d postgres -qAt \
        -c "CREATE DATABASE tasker_test" >/dev/null || { _pgc_err "could not create the test database"; return 1; }
    export TASKER_TEST_DATABASE_URL="host=127.0.0.1 port=$PGC_PORT user=postgres dbname=tasker_test"
    export TASKER_TEST_PGBIN="$PGC_BIN"
    export TASKER_TEST_PGCTL="$PGC_BIN/pg_ctl"
    export TASKER_TEST_PGDATA="$PGC_DATA"
    export TASKER_TEST_PGLOG="$PGC_LOG"
    if [ "${#PGC_RUNAS[@]}" -gt 0 ]; then export TASKER_TEST_PGUSER=postgres; else unset TASKER_TEST_PGUSER; fi
    return 0
}

# Prints the last lines of the server log to stderr (for failure reports).
pgcluster_log_tail() {
    if [ -n "$PGC_LOG" ] && [ -f "$PGC_LOG" ]; then
        echo "---- server log (last ${1:-40} lines) ----" >&2
        tail -"${1:-40}" "$PGC_LOG" >&2
    fi
}

pgcluster_stop() {
    if [ "$_pgc_started" -eq 1 ]; then
        "${PGC_RUNAS[@]}" "$PGC_BIN/pg_ctl" -D "$PGC_DATA" -m immediate -w stop >/dev/null 2>&1 || true
        _pgc_started=0
    fi
    if [ -n "$PGC_DIR" ] && [ -d "$PGC_DIR" ]; then
        rm -rf "$PGC_DIR"
    fi
    PGC_DIR=""
}
