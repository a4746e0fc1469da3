#!/bin/sh
# Usage: check_exports.sh NM LIBTASKER_SO EXPORTS_TXT TASKER_H
#        check_exports.sh --generate TASKER_H > tests/c/exports.txt
#
# Passes when the dynamic symbols libtasker.so defines (code and data: nm types
# T, D, B and friends; the version node is an absolute symbol and is ignored)
# are exactly the names in EXPORTS_TXT, and EXPORTS_TXT is exactly the set of
# functions TASKER_H declares with TASKER_API.  The second half keeps the
# committed list honest: a header change must come with a list change.
set -u

# Declarations start on a line holding TASKER_API; the name is the identifier
# right before the first '(' on that line.
header_names() {
    grep -v '^#' "$1" | grep 'TASKER_API' |
        sed -n 's/.*[^A-Za-z0-9_]\(tasker_[A-Za-z0-9_]*\)[[:space:]]*(.*/\1/p' | LC_ALL=C sort -u
}

if [ "${1:-}" = "--generate" ]; then
    echo "# The dynamic symbols libtasker.so exports: exactly the TASKER_API functions"
    echo "# of include/tasker.h.  Checked by tests/c/check_exports.sh (ctest: exports);"
    echo "# regenerate with: sh tests/c/check_exports.sh --generate include/tasker.h"
    header_names "$2"
    exit 0
fi

nm=$1 lib=$2 list=$3 header=$4
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT

# Symbols may carry a version suffix (tasker_free@@TASKER_0).
"$nm" -D --defined-only "$lib" |
    awk '$2 ~ /^[TDBRVWGSi]$/ { sub(/@.*/, "", $3); print $3 }' | LC_ALL=C sort -u > "$tmp/lib" || exit 2

header_names "$header" > "$tmp/header"

grep -v '^[[:space:]]*\(#\|$\)' "$list" | LC_ALL=C sort -u > "$tmp/list"

status=0
if ! diff -u "$tmp/list" "$tmp/lib" > "$tmp/d1"; then
    echo "exports: libtasker.so exports differ from $list ('+' exported but not listed, '-' listed but not exported):"
    cat "$tmp/d1"
    status=1
fi
if ! diff -u "$tmp/list" "$tmp/header" > "$tmp/d2"; then
    echo "exports: $list differs from the TASKER_API declarations in $header ('+' declared but not listed):"
    cat "$tmp/d2"
    status=1
fi
if [ "$(wc -l < "$tmp/lib")" -eq 0 ]; then
    echo "exports: no symbols read from $lib"
    status=1
fi
[ $status -eq 0 ] && echo "exports: $(wc -l < "$tmp/list") symbols match $list and the header"
exit $status
