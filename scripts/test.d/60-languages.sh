#!/usr/bin/env bash
# 60-languages.sh - tasker consumed from outside its build: the install tree
# (libraries, header, pkg-config file, CMake package), a C program built
# against it with pkg-config and with find_package(tasker), and the Go, Rust
# and Ruby examples, each of which fails when the workflow's outcome is wrong.
#
# It builds its own plain library (no sanitizers: the ASan runtime does not
# mix with the Go, Rust and Ruby runtimes loading libtasker.so) in
# $TASKER_LANGS_WORK (default: a directory under /tmp named after the repo
# path, kept between runs so rebuilds are incremental) and installs it into a
# prefix there.  Go and cargo keep their caches in their default places.
#
# Env: REPO (repo root; default: derived from this file), TASKER_LANGS_WORK.
# Exit status: 0 when every part that could run passed, 1 otherwise.
set -uo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
REPO=$(cd "$REPO" && pwd)
repo_key=$(printf '%s' "$REPO" | md5sum | cut -c1-10)
WORK=${TASKER_LANGS_WORK:-${TMPDIR:-/tmp}/tasker-langs-$repo_key}
BUILD=$WORK/build
PREFIX=$WORK/prefix
LOGS=$WORK/logs
mkdir -p "$WORK" "$LOGS"

passed=0
failed=0
skipped=0
summary=()

# part NAME COMMAND...: runs one part with its output in $LOGS/NAME.log,
# prints the last lines on failure, and records the result.
part() {
    local name=$1
    shift
    local log=$LOGS/$name.log
    printf '[languages] %-24s ... ' "$name"
    # A subshell keeps cd and exports of one part out of the others.
    if ("$@") >"$log" 2>&1; then
        echo "ok"
        passed=$((passed + 1))
        summary+=("PASS  $name")
    else
        echo "FAILED (log: $log)"
        sed 's/^/    | /' "$log" | tail -n 60
        failed=$((failed + 1))
        summary+=("FAIL  $name")
    fi
}

skip() {
    printf '[languages] %-24s ... skipped (%s)\n' "$1" "$2"
    skipped=$((skipped + 1))
    summary+=("SKIP  $1 ($2)")
}

finish() {
    echo "[languages] summary:"
    printf '    %s\n' "${summary[@]}"
    echo "languages: $passed passed, $failed failed, $skipped skipped"
    [ "$failed" -eq 0 ]
    exit $?
}

# ---------------------------------------------------------------------------
# Plain build + install.  Flags from the environment (a sanitizer run may set
# CFLAGS/LDFLAGS) must not leak into this build.
build_and_install() {
    env -u CFLAGS -u CXXFLAGS -u LDFLAGS -u CPPFLAGS \
        cmake -S "$REPO" -B "$BUILD" -G Ninja \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DTASKER_SANITIZE=OFF -DTASKER_TSAN=OFF -DTASKER_FUZZ=OFF \
        -DTASKER_BUILD_TESTS=OFF -DTASKER_BUILD_BENCH=OFF -DTASKER_BUILD_EXAMPLES=OFF &&
        cmake --build "$BUILD" -j2 &&
        rm -rf "$PREFIX" &&
        cmake --install "$BUILD" --prefix "$PREFIX"
}
part build+install build_and_install
if [ "$failed" -ne 0 ]; then
    finish
fi

export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Foreign runtimes must not get a sanitizer runtime preloaded by a caller.
unset LD_PRELOAD

check_install_tree() {
    local f ok=0
    for f in lib/libtasker.so lib/libtasker.so.0 lib/libtasker.so.0.1.0 lib/libtasker.a \
        include/tasker.h lib/pkgconfig/tasker.pc \
        lib/cmake/tasker/taskerConfig.cmake lib/cmake/tasker/taskerConfigVersion.cmake \
        lib/cmake/tasker/taskerTargets.cmake; do
        if [ -e "$PREFIX/$f" ]; then echo "present: $f"; else echo "MISSING: $f"; ok=1; fi
    done
    [ "$(readlink "$PREFIX/lib/libtasker.so")" = libtasker.so.0 ] || { echo "libtasker.so should link to libtasker.so.0"; ok=1; }
    [ "$(readlink "$PREFIX/lib/libtasker.so.0")" = libtasker.so.0.1.0 ] || { echo "libtasker.so.0 should link to libtasker.so.0.1.0"; ok=1; }
    local soname
    soname=$(readelf -d "$PREFIX/lib/libtasker.so.0.1.0" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
    echo "SONAME: $soname"
    [ "$soname" = libtasker.so.0 ] || { echo "SONAME should be libtasker.so.0"; ok=1; }
    local modversion static_libs
    modversion=$(pkg-config --modversion tasker) || ok=1
    echo "pkg-config --modversion tasker: $modversion"
    [ "$modversion" = 0.1.0 ] || { echo "pkg-config version should be 0.1.0"; ok=1; }
    echo "pkg-config --cflags --libs tasker: $(pkg-config --cflags --libs tasker)"
    static_libs=$(pkg-config --static --libs tasker)
    echo "pkg-config --static --libs tasker: $static_libs"
    for f in -ltasker -ljansson -luuid -pthread; do
        case " $static_libs " in *" $f "*) ;; *) echo "static libs lack $f"; ok=1 ;; esac
    done
    return $ok
}
part install-tree check_install_tree

EX_C=$REPO/examples/installed

c_pkg_config() {
    local exe=$WORK/c-pkgconfig/diamond
    rm -rf "$WORK/c-pkgconfig" && mkdir -p "$WORK/c-pkgconfig" &&
        # shellcheck disable=SC2046  # pkg-config output is a list of words
        cc -std=c11 -Wall -Wextra -Werror -o "$exe" "$EX_C/diamond.c" $(pkg-config --cflags --libs tasker) &&
        "$exe" | tee "$WORK/c-pkgconfig/out.txt" &&
        grep -q '^installed example: OK$' "$WORK/c-pkgconfig/out.txt"
}
part c-pkg-config c_pkg_config

c_cmake() { # $1: ON to link tasker::tasker_static
    local dir=$WORK/c-cmake-$1
    rm -rf "$dir" &&
        env -u CFLAGS -u LDFLAGS cmake -S "$EX_C" -B "$dir" -G Ninja \
            -DCMAKE_PREFIX_PATH="$PREFIX" -DTASKER_EXAMPLE_STATIC="$1" &&
        cmake --build "$dir" &&
        if [ "$1" = ON ]; then
            ! ldd "$dir/diamond" | grep -q libtasker || { echo "static build still needs libtasker.so"; return 1; }
        fi &&
        # The shared build must run without LD_LIBRARY_PATH: CMake sets the RPATH.
        env -u LD_LIBRARY_PATH "$dir/diamond" | tee "$dir/out.txt" &&
        grep -q '^installed example: OK$' "$dir/out.txt"
}
part c-cmake-shared c_cmake OFF
part c-cmake-static c_cmake ON

# ---------------------------------------------------------------------------
if command -v go >/dev/null 2>&1; then
    go_example() {
        # Go caches what `#cgo pkg-config` returned and does not notice a new
        # PKG_CONFIG_PATH or header (golang/go#24544, #24355).  CGO_CFLAGS is
        # part of its cache key, so a define naming this install's prefix,
        # header and .pc file makes a changed install rebuild the package.
        local id
        id=$(cat "$PREFIX/include/tasker.h" "$PREFIX/lib/pkgconfig/tasker.pc" - <<<"$PREFIX" | md5sum | cut -c1-16)
        export CGO_ENABLED=1 CGO_CFLAGS="-O2 -g -DTASKER_INSTALL_ID_$id"
        # Go needs a cache directory; without HOME it has no default one.
        if [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ] && [ -z "${GOCACHE:-}" ]; then
            export GOCACHE=$WORK/go-cache
        fi
        cd "$REPO/examples/go" &&
            go vet ./... &&
            go test -count=1 -v ./... &&
            go run . | tee "$WORK/go-out.txt" &&
            grep -q '^go example: OK' "$WORK/go-out.txt"
    }
    part go go_example
else
    skip go "go not installed"
fi

if command -v cargo >/dev/null 2>&1; then
    rust_example() {
        # The target dir stays out of the source tree; the registry cache
        # stays in its default place (the crate has no dependencies anyway).
        export CARGO_TARGET_DIR=$WORK/rust-target TASKER_LIB_DIR=$PREFIX/lib
        cargo test --manifest-path "$REPO/examples/rust/Cargo.toml" &&
            cargo run --quiet --manifest-path "$REPO/examples/rust/Cargo.toml" | tee "$WORK/rust-out.txt" &&
            grep -q '^rust example: OK' "$WORK/rust-out.txt"
    }
    part rust rust_example
else
    skip rust "cargo not installed"
fi

# Ruby comes from Debian's packages when missing (minitest with it).
ensure_ruby() {
    if command -v ruby >/dev/null 2>&1 && ruby -e 'require "fiddle"; require "minitest"' >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || return 1
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq ruby ruby-minitest >/dev/null
}
if ensure_ruby; then
    ruby_example() {
        export TASKER_LIB_DIR=$PREFIX/lib
        ruby "$REPO/examples/ruby/test/test_tasker.rb" &&
            ruby "$REPO/examples/ruby/diamond.rb" | tee "$WORK/ruby-out.txt" &&
            grep -q '^ruby example: OK' "$WORK/ruby-out.txt"
    }
    part ruby ruby_example
else
    # The brief is that Ruby is installed when missing: failing to is a failure.
    echo "[languages] could not install ruby"
    failed=$((failed + 1))
    summary+=("FAIL  ruby (could not install ruby from apt)")
fi

finish
