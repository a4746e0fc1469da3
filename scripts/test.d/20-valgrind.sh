#!/bin/sh
# Runs the C test suite (ctest label "unit") under valgrind memcheck on a
# build without sanitizers: any invalid access or definite/indirect leak
# fails the test.  Uses its own build directory.
#
# Env: REPO (repo root), VALGRIND_BUILD_DIR.
set -eu
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD=${VALGRIND_BUILD_DIR:-$REPO/build/valgrind}

say() { echo "20-valgrind: $*"; }

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

need_pkgs valgrind gcc g++ cmake ninja-build pkg-config libcmocka-dev libjansson-dev uuid-dev \
    uthash-dev libpq-dev libmicrohttpd-dev

# The launcher is a ;-list (a CMake list) prefixed to every test executable.
VG="valgrind;--error-exitcode=1;--leak-check=full;--errors-for-leak-kinds=definite,indirect"
VG="$VG;--show-leak-kinds=definite,indirect;--track-origins=yes;--quiet"
mkdir -p "$BUILD"
cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTASKER_SANITIZE=OFF -DTASKER_TSAN=OFF -DTASKER_FUZZ=OFF \
    -DTASKER_BUILD_BENCH=OFF -DTASKER_BUILD_EXAMPLES=OFF \
    "-DTASKER_TEST_LAUNCHER=$VG" -DTASKER_TEST_TIMEOUT=3000 > "$BUILD/configure.log" 2>&1 ||
    { cat "$BUILD/configure.log"; say "FAIL: configure"; exit 1; }
cmake --build "$BUILD" -j2 || { say "FAIL: build"; exit 1; }

# The "static" tests (header, exports) run no library code; skip them here.
if ctest --test-dir "$BUILD" -L unit -LE static -j2 --output-on-failure; then
    say "OK: C tests clean under valgrind"
else
    say "FAIL: C tests under valgrind (see output above)"
    exit 1
fi
