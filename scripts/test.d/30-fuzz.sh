#!/bin/sh
# Fuzzes the template JSON parser (tests/c/fuzz/fuzz_template.c) with
# libFuzzer for FUZZ_SECONDS (default 60) seconds, starting from the seed
# corpus in tests/c/fuzz/corpus.  Fails on any crash, leak, sanitizer report
# or broken round-trip property.  Uses its own clang build directory.
#
# Env: REPO (repo root), FUZZ_BUILD_DIR, FUZZ_SECONDS.
set -eu
REPO=${REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD=${FUZZ_BUILD_DIR:-$REPO/build/fuzz}
SECONDS_TO_RUN=${FUZZ_SECONDS:-60}

say() { echo "30-fuzz: $*"; }

# Installs Debian packages that are missing (apt-get update only then).
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

need_pkgs clang libclang-rt-14-dev cmake ninja-build pkg-config libjansson-dev uuid-dev \
    uthash-dev libcmocka-dev libpq-dev libmicrohttpd-dev

mkdir -p "$BUILD"
cmake -S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DTASKER_FUZZ=ON -DTASKER_SANITIZE=OFF -DTASKER_TSAN=OFF \
    -DTASKER_BUILD_BENCH=OFF -DTASKER_BUILD_EXAMPLES=OFF > "$BUILD/configure.log" 2>&1 ||
    { cat "$BUILD/configure.log"; say "FAIL: configure"; exit 1; }
cmake --build "$BUILD" -j2 --target fuzz_template || { say "FAIL: build"; exit 1; }

# New inputs go to a work corpus in the build dir; the committed seeds are
# read only.
WORK="$BUILD/fuzz-corpus"
ART="$BUILD/fuzz-artifacts"
mkdir -p "$WORK" "$ART"
say "running fuzz_template for ${SECONDS_TO_RUN}s"
set +e
"$BUILD/tests/c/fuzz_template" -max_total_time="$SECONDS_TO_RUN" -timeout=10 \
    -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -dict="$REPO/tests/c/fuzz/template.dict" \
    -artifact_prefix="$ART/" "$WORK" "$REPO/tests/c/fuzz/corpus" > "$BUILD/fuzz.log" 2>&1
rc=$?
set -e
tail -n 25 "$BUILD/fuzz.log"
if [ $rc -ne 0 ]; then
    say "FAIL: fuzz_template exited $rc; crashing input(s) in $ART:"
    ls -l "$ART"
    exit 1
fi
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$BUILD/fuzz.log")
say "OK: ${runs:-?} inputs in ${SECONDS_TO_RUN}s, no crash (corpus: $WORK)"
