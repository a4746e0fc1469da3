#!/usr/bin/env bash
# 50-python.sh - the Python package: builds it with pip into a virtualenv of
# its own (as a user would: `pip install ./bindings/python`, which compiles
# the C library into the extension; no sanitizers) and runs tests/python with
# pytest.  Installs what a fresh Debian machine lacks (a C compiler, Python
# headers and venv, the library's -dev packages, PostgreSQL).
#
# The tests that need PostgreSQL (the workflow suites on the postgres store,
# `python -m tasker worker`) run against a throwaway cluster started here
# (scripts/lib/pgcluster.sh) and stopped on exit, whatever happens; pytest
# finds it through TASKER_TEST_DATABASE_URL.
#
# Env: REPO (repo root; default: derived from this file), BUILD_DIR (the venv
# goes to $BUILD_DIR/venv-python; without it, under ${TMPDIR:-/tmp}),
# TASKER_PY_VENV (the venv's path, overrides both), PYTEST_ARGS (extra
# arguments for pytest, e.g. "-k shapes").
# Exit status: 0 when every test passed, 1 otherwise.
set -uo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
REPO=$(cd "$REPO" && pwd)
if [[ -n ${TASKER_PY_VENV:-} ]]; then
    VENV=$TASKER_PY_VENV
elif [[ -n ${BUILD_DIR:-} ]]; then
    VENV=$BUILD_DIR/venv-python
else
    VENV=${TMPDIR:-/tmp}/tasker-venv-python-$(printf '%s' "$REPO" | md5sum | cut -c1-10)
fi
PYTHON=${PYTHON:-python3}

say() { echo "50-python: $*"; }
fail() { say "FAIL: $*"; exit 1; }

need_pkgs() {
    local missing=() p
    command -v dpkg-query >/dev/null || return 0
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    say "installing ${missing[*]}"
    local sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
            >/dev/null || fail "could not install ${missing[*]}"
}

need_pkgs gcc pkg-config libjansson-dev uuid-dev libpq-dev libmicrohttpd-dev

# shellcheck source=../lib/pgcluster.sh
. "$REPO/scripts/lib/pgcluster.sh" || fail "cannot source scripts/lib/pgcluster.sh"
trap pgcluster_stop EXIT
trap 'exit 130' INT TERM

# A Python that can make a venv and build extensions.  Debian's python3 needs
# python3-venv and python3-dev for that; a python3 of its own (pyenv, a
# container image) usually has both.
command -v "$PYTHON" >/dev/null || need_pkgs python3
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    need_pkgs python3-venv
fi
if ! "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    need_pkgs python3-dev
fi

if [[ ! -x $VENV/bin/python ]]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV" || fail "python3 -m venv $VENV"
fi
PY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

say "installing test tools"
"$PY" -m pip install -q cffi pytest pyyaml || fail "pip install cffi pytest pyyaml"

say "building and installing ./bindings/python"
log=$VENV/pip-install.log
# --force-reinstall: the version number does not change between builds.
if ! (cd "$REPO" && "$PY" -m pip install --force-reinstall --no-deps ./bindings/python) \
    >"$log" 2>&1; then
    tail -n 60 "$log"
    fail "pip install ./bindings/python (full log: $log)"
fi

# From a directory outside the repository, so `import tasker` is the
# installed package and not the source tree.
cd "${TMPDIR:-/tmp}" || fail "cd ${TMPDIR:-/tmp}"
"$PY" -c 'import tasker; print("50-python: tasker", tasker.version(), "from", tasker.__file__)' ||
    fail "import tasker"

export PYTHONDONTWRITEBYTECODE=1
pgcluster_start 50-python || fail "could not start a PostgreSQL for the tests"
# shellcheck disable=SC2086
if timeout 1800 "$PY" -m pytest "$REPO/tests/python" -q -p no:cacheprovider \
    -o "testpaths=$REPO/tests/python" ${PYTEST_ARGS:-}; then
    say "OK: Python tests passed (memory and postgres stores, workers)"
else
    pgcluster_log_tail 30
    fail "Python tests (see pytest output above)"
fi
