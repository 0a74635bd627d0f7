#!/usr/bin/env bash
# The sharded forward pass under mpirun (oversubscribed): tests/mpi_forward_check.c
# on meshes 1x2, 2x1 and 2x2 (and 1x1 with 2 replicas) over shared memory and once
# over TCP: logits within the golden tolerance of the tiny-a fixture and
# bit-identical across runs, thread counts and batch make-up; then `gptoss logits`
# and `gptoss bench` under mpirun: logits equal to the single process's within the
# tolerance (bit-identical for one rank), bench's JSON with the communication
# counters.  Skips (exit 77, not a pass) where Open MPI is not installed.
set -u
cd "$(dirname "$0")/.." || exit 1
source tests/mpi_lib.sh
G="$MPI_BUILD/gptoss"
CHECK="$MPI_BUILD/tests/mpi_forward_check"
M=tests/fixtures/tiny-a
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

if ! make --no-print-directory MPI=1 BUILD="$MPI_BUILD" "$G" "$CHECK" >"$tmp/make.log" 2>&1; then
    tail -n 20 "$tmp/make.log"
    echo "FAIL building the MPI binaries in $MPI_BUILD"
    exit 1
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
export GPTOSS_DIST_TIMEOUT=${GPTOSS_DIST_TIMEOUT:-30}
mpi() { mpi_run 120 "$@"; }

# mesh, ranks, extra mpirun options
while read -r mesh dp n opts; do
    name="mesh $mesh DP $dp, $n rank(s)${opts:+, $opts}"
    # shellcheck disable=SC2086
    mpi -np "$n" $opts "$CHECK" "$mesh" "$dp" >"$tmp/c.out" 2>&1 </dev/null
    check "$name: golden tolerance, bit-identical runs" \
        "[ \$? -eq 0 ] && [ \$(grep -c 'all checks passed' $tmp/c.out) -eq $n ]"
    grep -h 'max|d|' "$tmp/c.out" | sed 's/^/     /'
    grep -q 'all checks passed' "$tmp/c.out" || cat "$tmp/c.out"
done <<'MESHES'
1x1 1 1
1x2 1 2
2x1 1 2
2x2 1 4
1x1 2 2
2x2 1 4 --mca btl tcp,self
MESHES

# `gptoss logits`: one process (the plain build when there is one), then under
# mpirun; every file against the first within the golden tolerance.
ids=$(tr -d '[] \n' <$M/golden/seq0.ids.json)
close() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
if len(a) != len(b) or not a:
    sys.exit("sizes %d and %d" % (len(a), len(b)))
fa, fb = (struct.unpack("<%df" % (len(x) // 4), x) for x in (a, b))
d = max(abs(x - y) for x, y in zip(fa, fb))
print("     max|d| %.3g over %d logits" % (d, len(fa)))
sys.exit(0 if d <= 1e-3 else 1)
PY
}
ONE="$G"
[ -x "$BUILD/gptoss" ] && [ "$MPI_BUILD" != "$BUILD" ] && ONE="$BUILD/gptoss"
"$ONE" logits -m $M --tokens "$ids" -o "$tmp/one.f32" -t 2 2>"$tmp/one.err"
check "gptoss logits, one process" "[ \$? -eq 0 ] && [ -s $tmp/one.f32 ]"
mpi -np 4 "$G" logits -m $M --tokens "$ids" -o "$tmp/four.f32" -t 1 --mesh 2x2 2>"$tmp/four.err" </dev/null
check "gptoss logits under mpirun -np 4 --mesh 2x2, the plan said at load (with the packed wo)" \
    "[ \$? -eq 0 ] && grep -q 'rank 3 (.*): KV heads \[1, 2), experts \[4, 8), vocabulary \[750, 1000): .* (packed wo: 0.1 MiB)' $tmp/four.err"
check "  within 1e-3 of one process's" "close $tmp/one.f32 $tmp/four.f32"
[ $fail -eq 0 ] || cat "$tmp/four.err"
mpi -np 1 "$G" logits -m $M --tokens "$ids" -o "$tmp/alone.f32" -t 2 2>/dev/null </dev/null
check "gptoss logits of the MPI build on 1 rank: the same bits" "cmp -s $tmp/one.f32 $tmp/alone.f32"
mpi -np 2 "$G" logits -m $M --tokens-file - -o "$tmp/two.f32" -t 1 --mesh 1x2 <<<"$ids" 2>/dev/null
check "gptoss logits --tokens-file - on 2 ranks: rank 0 reads and shares" "close $tmp/one.f32 $tmp/two.f32"

# `gptoss bench` under mpirun: rank 0 reports, JSON with the counters.
mpi -np 2 "$G" bench -m $M -p 8 -n 4 -r 1 -t 1 --mesh 2x1 --json - >"$tmp/b.json" 2>"$tmp/b.err" </dev/null
check "gptoss bench under mpirun -np 2: one JSON line per test with the communication counters" \
    "[ \$? -eq 0 ] && [ \$(wc -l <$tmp/b.json) -eq 2 ] && grep -q '\"ranks\":2' $tmp/b.json \
    && grep -q '\"comm_bytes_per_token\":[1-9]' $tmp/b.json && grep -q '\"comm_s_per_step\":' $tmp/b.json"
[ $fail -eq 0 ] || cat "$tmp/b.err" "$tmp/b.json"
exit $fail
