#!/usr/bin/env bash
# The postgres-store tests against a real, throwaway PostgreSQL.
#
# Installs PostgreSQL if missing, creates a cluster in a temporary directory
# owned by the postgres user, starts it on 127.0.0.1 on a free port with
# synchronous_commit=on, and runs `ctest -L postgres` in $BUILD_DIR with
# TASKER_TEST_DATABASE_URL pointing at it, then (when 25-tsan.sh left its
# build) the same tests under ThreadSanitizer.  The server is stopped and the
# directory removed on exit, whatever happens.  No existing database or
# cluster is touched.
#
# Env: BUILD_DIR (configured + built tree, required), REPO (the repository,
# for the default TSAN_BUILD_DIR), TSAN_BUILD_DIR (default $REPO/build/tsan).
set -uo pipefail

say() { echo "40-postgres: $*"; }
fail() { echo "40-postgres: FAILED: $*" >&2; exit 1; }

[ -n "${BUILD_DIR:-}" ] && [ -d "$BUILD_DIR" ] || fail "BUILD_DIR is not set to a build directory"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
PGBIN="$(find_bin)"
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    say "installing PostgreSQL"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null \
        || fail "could not install postgresql"
    PGBIN="$(find_bin)"
fi
[ -x "$PGBIN/initdb" ] || fail "no initdb under /usr/lib/postgresql/*/bin"

# The server refuses to run as root: run it as the postgres user (or as
# ourselves when we are not root).
RUNAS=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || fail "no 'postgres' user to run the server as"
    RUNAS=(runuser -u postgres --)
fi

TMP="$(mktemp -d /tmp/tasker-pg.XXXXXX)" || fail "mktemp"
PGDATA="$TMP/data"
started=0
cleanup() {
    if [ "$started" -eq 1 ]; then
        "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
chmod 755 "$TMP"
if [ "${#RUNAS[@]}" -gt 0 ]; then chown postgres "$TMP"; fi

# A free TCP port on 127.0.0.1 (the kernel picks one; we release it at once).
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null)"
[ -n "$PORT" ] || PORT=$(( 20000 + RANDOM % 20000 ))

"${RUNAS[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; fail "initdb"; }
# The settings go into the cluster's own configuration (not pg_ctl -o), so
# that a test restarting the server with a plain `pg_ctl start` gets the
# same port and socket directory back.
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$TMP'
synchronous_commit = on
max_connections = 200
fsync = on
EOF
"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$TMP/server.log" -w -t 60 \
    start >/dev/null 2>&1 || { cat "$TMP/server.log" >&2; fail "the server did not start"; }
started=1
say "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT (data in $PGDATA)"

"$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qAt -c "CREATE DATABASE tasker_test" \
    >/dev/null || fail "could not create the test database"
export TASKER_TEST_DATABASE_URL="host=127.0.0.1 port=$PORT user=postgres dbname=tasker_test"
# For tests that stop and restart the server (tests/c/pg/test_pg_restart.c):
# `$TASKER_TEST_PGCTL -D $TASKER_TEST_PGDATA ...`, run as $TASKER_TEST_PGUSER
# (through runuser) when set, logging to $TASKER_TEST_PGLOG.
export TASKER_TEST_PGCTL="$PGBIN/pg_ctl"
export TASKER_TEST_PGDATA="$PGDATA"
export TASKER_TEST_PGLOG="$TMP/server.log"
if [ "${#RUNAS[@]}" -gt 0 ]; then export TASKER_TEST_PGUSER=postgres; else unset TASKER_TEST_PGUSER; fi

if ! ctest --test-dir "$BUILD_DIR" -N -L postgres | grep -q "Total Tests: [1-9]"; then
    fail "no tests labelled 'postgres' in $BUILD_DIR (is tests/c/pg wired into tests/c/CMakeLists.txt?)"
fi
if ! ctest --test-dir "$BUILD_DIR" -L postgres --output-on-failure; then
    echo "---- server log (last 40 lines) ----" >&2
    tail -40 "$TMP/server.log" >&2
    fail "postgres tests failed"
fi
say "all postgres tests passed"

# The store's own threads (flusher, claimer, listener, heartbeat) under
# ThreadSanitizer too, when 25-tsan.sh left its build (the crash and
# restart tests, which kill processes and the server, stay with ASan).
TSAN_BUILD=${TSAN_BUILD_DIR:-${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}/build/tsan}
if [ -f "$TSAN_BUILD/CMakeCache.txt" ]; then
    # (25-tsan.sh configured it, with setarch -R as the tests' launcher
    # where TSan needs ASLR off.)
    cmake --build "$TSAN_BUILD" -j2 >/dev/null || fail "building the ThreadSanitizer tree"
    if TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
        ctest --test-dir "$TSAN_BUILD" -L postgres -E 'crash|restart' --output-on-failure; then
        say "postgres tests clean under ThreadSanitizer"
    else
        echo "---- server log (last 40 lines) ----" >&2
        tail -40 "$TMP/server.log" >&2
        fail "postgres tests under ThreadSanitizer"
    fi
fi
exit 0
