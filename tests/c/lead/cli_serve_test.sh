#!/usr/bin/env bash
# `tasker config check` reports every bad key at once; `tasker serve` answers
# on its port and exits 0 on SIGTERM.  Usage: cli_serve_test.sh PATH/TO/tasker
set -u
T=$1
fail() { echo "FAIL: $*"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [ -n "${pid:-}" ] && kill -9 "$pid" 2>/dev/null' EXIT

env -u TASKER_DATABASE_URL "$T" config check >"$tmp/out" 2>&1 || fail "defaults rejected: $(cat "$tmp/out")"
printf 'store = cassandra\nbreaker.window = 0\nnope = 1\nlog.level = info\n' >"$tmp/bad.conf"
if "$T" config check --config "$tmp/bad.conf" >"$tmp/out" 2>&1; then fail "bad file accepted"; fi
grep -q "bad.conf:1: store: 'cassandra' is not allowed; allowed values: memory|postgres" "$tmp/out" || fail "store error missing: $(cat "$tmp/out")"
grep -q "bad.conf:2: breaker.window: 0 is out of range; allowed 1..10000" "$tmp/out" || fail "range error missing"
grep -q "bad.conf:3: nope: unknown key" "$tmp/out" || fail "unknown key missing"
[ "$(grep -c 'bad.conf' "$tmp/out")" -eq 3 ] || fail "expected exactly 3 errors: $(cat "$tmp/out")"
if TASKER_NO_SUCH_KEY=1 "$T" config check >"$tmp/out" 2>&1; then fail "unknown env var accepted"; fi
grep -q "TASKER_NO_SUCH_KEY: names no configuration key" "$tmp/out" || fail "env error missing"

env -u TASKER_DATABASE_URL "$T" serve --port 0 >"$tmp/serve.out" 2>"$tmp/serve.err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$tmp/serve.out" && break; sleep 0.1; done
port=$(sed -n 's/^listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$tmp/serve.out")
[ -n "$port" ] || fail "serve printed no port: $(cat "$tmp/serve.out" "$tmp/serve.err")"
exec 3<>"/dev/tcp/127.0.0.1/$port" || fail "cannot connect to port $port"
printf 'GET /health/live HTTP/1.0\r\nHost: x\r\n\r\n' >&3
reply=$(cat <&3)
exec 3<&-
echo "$reply" | head -1 | grep -q "200" || fail "health/live: $reply"
kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "serve still running 10 s after SIGTERM"
wait "$pid"; rc=$?
pid=
[ "$rc" -eq 0 ] || fail "serve exited $rc after SIGTERM"
grep -q "SIGTERM received" "$tmp/serve.err" || fail "no shutdown message"
echo "cli_serve_test: 1 passed, 0 failed"
