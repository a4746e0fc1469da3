#!/usr/bin/env bash
# 70-browser.sh - the status page of the HTTP endpoint in a real browser.
#
# Builds tests/c/http/http_demo_server (a coordinator that has run tasks that
# complete and tasks whose "charge" step fails for good, opening the circuit
# handler:charge), starts it on a free port, loads http://127.0.0.1:PORT/ in
# headless Chromium with --dump-dom and checks the rendered DOM: the four
# sections, the task counts, the failing step's class and message (its markup
# shown as text, not turned into elements), the dead letters and the open
# circuit.  Then it takes a --screenshot and checks it is a PNG with something
# drawn on it.
#
# Installs Debian's chromium if it is missing (apt-get update only if the
# install cannot find it).
#
# Env: REPO (repo root; default: derived from this file); BUILD_DIR (a
# configured build dir to build http_demo_server in; default: a plain build
# of this script's own under $TMPDIR); HTTP_DEMO_SERVER (a built
# http_demo_server to use instead of building one).
# Exit status: 0 when every check passed, 1 otherwise.
set -uo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
REPO=$(cd "$REPO" && pwd)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tasker-browser.XXXXXX")
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

die() {
    echo "70-browser: FAIL: $*"
    exit 1
}

# ---- Chromium -------------------------------------------------------------------
find_chrome() {
    command -v chromium || command -v chromium-browser || true
}
CHROME=$(find_chrome)
if [ -z "$CHROME" ]; then
    echo "[browser] installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -qq chromium >"$WORK/apt.log" 2>&1; then
        $SUDO apt-get update -qq >>"$WORK/apt.log" 2>&1
        $SUDO apt-get install -y -qq chromium >>"$WORK/apt.log" 2>&1 ||
            { tail -20 "$WORK/apt.log"; die "could not install chromium"; }
    fi
    CHROME=$(find_chrome)
    [ -n "$CHROME" ] || die "chromium installed but not on PATH"
fi
echo "[browser] $("$CHROME" --version 2>/dev/null | head -1)"

# ---- the demo server --------------------------------------------------------------
if [ -n "${HTTP_DEMO_SERVER:-}" ]; then
    BUILD=""
elif [ -n "${BUILD_DIR:-}" ] && [ -f "$BUILD_DIR/CMakeCache.txt" ]; then
    BUILD=$BUILD_DIR
else
    repo_key=$(printf '%s' "$REPO" | md5sum | cut -c1-10)
    BUILD=${TMPDIR:-/tmp}/tasker-browser-build-$repo_key
    cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DTASKER_BUILD_BENCH=OFF -DTASKER_BUILD_EXAMPLES=OFF >"$WORK/configure.log" 2>&1 ||
        { tail -20 "$WORK/configure.log"; die "cmake configure failed"; }
fi
if [ -n "$BUILD" ]; then
    echo "[browser] building http_demo_server in $BUILD"
    cmake --build "$BUILD" -j "${JOBS:-2}" --target http_demo_server >"$WORK/build.log" 2>&1 ||
        { tail -20 "$WORK/build.log"; die "building http_demo_server failed (is tests/c/http wired into tests/c/CMakeLists.txt?)"; }
    SERVER=$(find "$BUILD" -type f -name http_demo_server -perm -u+x | head -1)
    [ -n "$SERVER" ] || die "http_demo_server not found under $BUILD"
else
    SERVER=$HTTP_DEMO_SERVER
    [ -x "$SERVER" ] || die "HTTP_DEMO_SERVER=$SERVER is not an executable"
fi

# Leaks at exit are not this check's business (the ctest runs see to them);
# an ASan build must not fail here for that.
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} "$SERVER" >"$WORK/server.out" 2>"$WORK/server.err" &
server_pid=$!
PORT=""
for _ in $(seq 1 600); do
    PORT=$(awk '/^PORT [0-9]+$/ {print $2; exit}' "$WORK/server.out")
    [ -n "$PORT" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$WORK/server.err"; die "http_demo_server exited before serving"; }
    sleep 0.1
done
[ -n "$PORT" ] || { cat "$WORK/server.err"; die "http_demo_server printed no port within 60 s"; }
URL="http://127.0.0.1:$PORT/"
echo "[browser] server pid $server_pid on $URL"

# ---- the page in Chromium -----------------------------------------------------------
chrome() {
    timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --disable-dev-shm-usage --user-data-dir="$(mktemp -d "$WORK/profile.XXXXXX")" "$@"
}

chrome --dump-dom "$URL" >"$WORK/dom.html" 2>"$WORK/chrome-dom.err" ||
    { tail -20 "$WORK/chrome-dom.err"; die "chromium --dump-dom failed"; }
[ -s "$WORK/dom.html" ] || { tail -20 "$WORK/chrome-dom.err"; die "chromium dumped an empty DOM"; }

checks=0
failures=()
# expect DESCRIPTION FIXED-STRING [LINE-SELECTOR]: the DOM (or the first
# line of it holding LINE-SELECTOR) contains FIXED-STRING.
expect() {
    local what=$1 needle=$2 sel=${3:-} hay
    checks=$((checks + 1))
    if [ -n "$sel" ]; then
        hay=$(grep -F -m1 -- "$sel" "$WORK/dom.html" || true)
    else
        hay=$(cat "$WORK/dom.html")
    fi
    if ! grep -qF -- "$needle" <<<"$hay"; then
        failures+=("$what")
        echo "[browser] MISSING $what: $needle"
    fi
}
absent() {
    local what=$1 needle=$2
    checks=$((checks + 1))
    if grep -qiF -- "$needle" "$WORK/dom.html"; then
        failures+=("$what")
        echo "[browser] UNEXPECTED $what: $needle"
    fi
}

expect "title" "<title>tasker status</title>"
expect "auto refresh" '<meta http-equiv="refresh" content="5">'
for id in tasks recent-failures dead-letters circuits; do
    expect "section $id" "<section id=\"$id\">"
done
row='<tr data-namespace="shop">'
expect "shop complete count" '<td data-state="complete">3</td>' "$row"
expect "shop error count" '<td data-state="error">2</td>' "$row"
expect "shop running count" '<td data-state="running" class="zero">0</td>' "$row"
expect "shop total" '<td data-state="total">5</td>' "$row"
expect "recent failure count" 'Recent failures <span class="count">2</span>'
expect "dead letter count" 'Dead letters <span class="count">2</span>'
msg='card declined: amount &gt; limit &amp; &lt;b&gt;retry&lt;/b&gt; later'
expect "failure message" "<td class=\"message\">$msg</td>"
expect "failure class" '<td class="class">PaymentDeclined</td>'
expect "failing step" '<td class="step">charge</td>'
absent "markup from a message turned into an element" "<b>retry</b>"
absent "script element" "<script"
circ='<tr data-circuit="handler:charge"'
expect "open circuit row" 'class="circuit-open"' "$circ"
expect "open circuit state" '<td data-field="state">open</td>' "$circ"
expect "closed circuit" '<td data-field="state">closed</td>' '<tr data-circuit="handler:ping"'
expect "circuit summary" '1 not closed.'

# ---- screenshot ---------------------------------------------------------------------
PNG="$WORK/page.png"
chrome --hide-scrollbars --window-size=1280,900 --screenshot="$PNG" "$URL" \
    >"$WORK/chrome-shot.out" 2>"$WORK/chrome-shot.err"
checks=$((checks + 1))
shot=""
if [ ! -s "$PNG" ]; then
    tail -20 "$WORK/chrome-shot.err"
    failures+=("screenshot written")
else
    # A PNG (signature, IHDR) whose pixels are not all one colour.
    if shot=$(python3 - "$PNG" <<'EOF'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit("not a PNG signature")
pos, idat, w = 8, b"", 0
while pos < len(data):
    (n,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h = struct.unpack(">II", body[:8])
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
if not w or not idat:
    sys.exit("no IHDR or IDAT chunk")
pixels = zlib.decompress(idat)
if len(set(pixels)) < 16:
    sys.exit("the image is (nearly) blank: %d distinct byte values" % len(set(pixels)))
print("%dx%d, %d bytes" % (w, h, len(data)))
EOF
    ); then
        echo "[browser] screenshot $shot"
    else
        failures+=("screenshot is a non-blank PNG")
    fi
fi

kill -TERM "$server_pid" 2>/dev/null
wait "$server_pid"
server_rc=$?
server_pid=""
checks=$((checks + 1))
if [ "$server_rc" -ne 0 ]; then
    tail -20 "$WORK/server.err"
    failures+=("server exit status $server_rc after SIGTERM")
fi

if [ "${#failures[@]}" -gt 0 ]; then
    echo "[browser] DOM was saved as: $(cp "$WORK/dom.html" "${TMPDIR:-/tmp}/tasker-browser-dom.html" && echo "${TMPDIR:-/tmp}/tasker-browser-dom.html")"
    echo "70-browser: FAIL: ${#failures[@]} of $checks checks failed: ${failures[*]}"
    exit 1
fi
echo "70-browser: PASS: $checks checks on the status page in $("$CHROME" --version 2>/dev/null | head -1) (screenshot ${shot})"
