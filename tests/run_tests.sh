#!/usr/bin/env bash
# Runs every test binary in $BUILD/tests and every tests/e2e_*.sh script, then
# prints one summary line "tests: N passed, N failed".
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/.."
pass=0; fail=0; failed=()
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "=== $name"
    if "$t"; then pass=$((pass+1)); else fail=$((fail+1)); failed+=("$name"); fi
done
for s in tests/e2e_*.sh; do
    [ -f "$s" ] || continue
    name=$(basename "$s")
    echo "=== $name"
    if bash "$s"; then pass=$((pass+1)); else fail=$((fail+1)); failed+=("$name"); fi
done
echo
[ $fail -gt 0 ] && echo "failed: ${failed[*]}"
echo "tests: $pass passed, $fail failed"
[ $fail -eq 0 ]
