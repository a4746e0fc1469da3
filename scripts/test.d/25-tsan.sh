#!/bin/sh
# Builds with ThreadSanitizer (gcc) and runs the threaded C tests (ctest
# label "threads").  Any data race or lock-order report fails the test.
# Uses its own build directory.
#
# Env: REPO (repo root), TSAN_BUILD_DIR.
set -eu
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD=${TSAN_BUILD_DIR:-$REPO/build/tsan}

say() { echo "25-tsan: $*"; }

need_pkgs() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    say "installing$missing"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
}

need_pkgs gcc g++ cmake ninja-build pkg-config libcmocka-dev libjansson-dev uuid-dev \
    uthash-dev libpq-dev libmicrohttpd-dev

# gcc's TSan cannot map its shadow memory when the kernel randomises mmap
# addresses with more bits than it expects ("unexpected memory mapping");
# then the tests run with address randomisation off for that process only.
LAUNCHER=""
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
printf 'int main(void){return 0;}\n' > "$probe_dir/p.c"
if gcc -fsanitize=thread -o "$probe_dir/p" "$probe_dir/p.c" 2>/dev/null &&
    ! "$probe_dir/p" > /dev/null 2>&1; then
    if command -v setarch > /dev/null && setarch "$(uname -m)" -R "$probe_dir/p"; then
        LAUNCHER="setarch;$(uname -m);-R"
        say "TSan needs ASLR off here; running tests under setarch -R"
    fi
fi

mkdir -p "$BUILD"
cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++ \
    -DTASKER_TSAN=ON -DTASKER_SANITIZE=OFF -DTASKER_FUZZ=OFF \
    -DTASKER_BUILD_BENCH=OFF -DTASKER_BUILD_EXAMPLES=OFF \
    "-DTASKER_TEST_LAUNCHER=$LAUNCHER" > "$BUILD/configure.log" 2>&1 ||
    { cat "$BUILD/configure.log"; say "FAIL: configure"; exit 1; }
cmake --build "$BUILD" -j2 || { say "FAIL: build"; exit 1; }

# halt_on_error: the first race fails the test with its report, rather than
# a pile of follow-on reports.
if TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
    ctest --test-dir "$BUILD" -L threads -j2 --output-on-failure; then
    say "OK: threaded C tests clean under ThreadSanitizer"
else
    say "FAIL: threaded C tests under ThreadSanitizer (see output above)"
    exit 1
fi
