#!/usr/bin/env bash
# Runs every test binary in $BUILD/tests and every tests/e2e_*.sh script, then
# prints one summary line "tests: N passed, N failed".  A script that exits 77
# was skipped (it says why): it counts as neither and is listed.
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/.."
pass=0; fail=0; failed=(); skipped=()
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
    bash "$s"
    case $? in
        0) pass=$((pass+1)) ;;
        77) skipped+=("$name") ;;
        *) fail=$((fail+1)); failed+=("$name") ;;
    esac
done
echo
[ $fail -gt 0 ] && echo "failed: ${failed[*]}"
[ ${#skipped[@]} -gt 0 ] && echo "skipped: ${skipped[*]}"
echo "tests: $pass passed, $fail failed"
[ $fail -eq 0 ]
