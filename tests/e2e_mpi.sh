#!/usr/bin/env bash
# End-to-end runs of the MPI build (make MPI=1) under mpirun, oversubscribed:
# the collectives with 1, 2 and 4 ranks over shared memory and over TCP (the
# path between machines), `gptoss info --mesh` on every rank, the refusal of
# commands whose sharded form is not built yet, and the failure paths: a rank
# killed mid-run and a rank stopped mid-run both end the whole job within 10 s
# with a message naming the rank and its host.  Skips (exit 77, not a pass)
# where Open MPI is not installed; `make deps` installs it.
set -u
cd "$(dirname "$0")/.." || exit 1
source tests/mpi_lib.sh
G="$MPI_BUILD/gptoss"
CHECK="$MPI_BUILD/tests/mpi_dist_check"
M=tests/fixtures/tiny-a
tmp=$(mktemp -d)
stopped=""
cleanup() {
    # A stopped rank that outlived its job must not linger.
    for p in $stopped; do kill -CONT "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

if ! make --no-print-directory MPI=1 BUILD="$MPI_BUILD" "$G" "$CHECK" >"$tmp/make.log" 2>&1; then
    tail -n 20 "$tmp/make.log"
    echo "FAIL building the MPI binaries in $MPI_BUILD"
    exit 1
fi
# Open MPI keeps some allocations until exit; the sanitizer builds would report them.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
host=$(uname -n)
mpi() { mpi_run 60 "$@"; }

for n in 1 2 4; do
    mpi -np $n "$CHECK" >"$tmp/c$n.out" 2>&1
    check "collectives, $n rank(s), shared memory" \
        "[ \$? -eq 0 ] && [ \$(grep -c 'all checks passed' $tmp/c$n.out) -eq $n ]"
done
for n in 2 4; do
    mpi -np $n --mca btl tcp,self "$CHECK" >"$tmp/t$n.out" 2>&1
    check "collectives, $n ranks, TCP" "[ \$? -eq 0 ] && [ \$(grep -c 'all checks passed' $tmp/t$n.out) -eq $n ]"
done
[ $fail -eq 0 ] || cat "$tmp"/c*.out "$tmp"/t*.out

# The plan under mpirun: rank 0 prints one table naming every rank's host.
mpi -np 4 "$G" info -m "$M" --mesh 2x2 >"$tmp/i.out" 2>"$tmp/i.err"
check "info --mesh 2x2 on 4 ranks" "[ \$? -eq 0 ] && [ \$(grep -c '^mesh: .*2x2 (TP x EP), DP 1: 4 ranks' $tmp/i.out) -eq 1 ] \
    && [ \$(grep -cE '^ +[0-3] $host ' $tmp/i.out) -eq 4 ]"
mpi -np 4 "$G" info -m "$M" --mesh 1x2 >"$tmp/d.out" 2>&1
check "info --mesh 1x2 on 4 ranks takes DP 2" "[ \$? -eq 0 ] && grep -q 'DP 2: 4 ranks' $tmp/d.out"
mpi -np 4 "$G" info -m "$M" --mesh 3x1 >"$tmp/bad.out" 2>&1
check "an invalid mesh is refused with the valid ones" "[ \$? -ne 0 ] && grep -q 'TP 3 does not divide' $tmp/bad.out \
    && grep -q 'valid meshes for 4 ranks and this model: 1x1 --dp 4, 1x2 --dp 2, 1x4 --dp 1, 2x1 --dp 2, 2x2 --dp 1' $tmp/bad.out"
"$G" info -m "$M" --mesh 2x1 --dp 2 >"$tmp/s.out" 2>&1
check "the MPI build runs alone too" "[ \$? -eq 0 ] && grep -q 'DP 2: 4 ranks' $tmp/s.out"

"$G" --dist-timeout 0 info -m "$M" >"$tmp/dt.out" 2>&1
check "--dist-timeout 0 is a usage error" "[ \$? -eq 2 ] && grep -q 'dist-timeout needs seconds' $tmp/dt.out"
GPTOSS_DIST_TIMEOUT=soon "$G" info -m "$M" >"$tmp/dt.out" 2>&1
check "a bad \$GPTOSS_DIST_TIMEOUT is named" "[ \$? -eq 1 ] && grep -q 'GPTOSS_DIST_TIMEOUT must be seconds' $tmp/dt.out"

# Commands without a sharded form yet refuse instead of running N copies.
echo hi | mpi -np 2 "$G" tokenize >"$tmp/g.out" 2>&1
check "tokenize under mpirun refuses" "[ \$? -ne 0 ] && [ \$(grep -c 'multi-rank runs of this command are not built yet' $tmp/g.out) -eq 1 ]"
if [ -x "$BUILD/gptoss" ] && [ "$MPI_BUILD" != "$BUILD" ]; then
    mpi -np 2 "$BUILD/gptoss" info -m "$M" >"$tmp/stub.out" 2>&1
    check "the single-rank build refuses to be one of 2 ranks" \
        "[ \$? -ne 0 ] && grep -q 'built without MPI but was started as one of 2 ranks' $tmp/stub.out"
fi

# Start a 2-rank allreduce loop (the given mpirun options first), wait until both
# ranks run, then send `sig` to rank 1 and time how long the job takes to end.
fail_run() {
    local name=$1 sig=$2
    shift 2
    mkdir -p "$tmp/$name"
    local t0 t1
    mpi "$@" -np 2 "$CHECK" --loop 30 --pid-dir "$tmp/$name" >"$tmp/$name.out" 2>&1 &
    local job=$!
    for _ in $(seq 200); do
        [ -s "$tmp/$name/0.pid" ] && [ -s "$tmp/$name/1.pid" ] && break
        sleep 0.05
    done
    local victim
    victim=$(cat "$tmp/$name/1.pid" 2>/dev/null)
    [ -n "$victim" ] || { echo "FAIL $name: the ranks did not start"; fail=1; kill "$job"; return; }
    sleep 0.3
    [ "$sig" = STOP ] && stopped="$stopped $victim"
    t0=$(date +%s.%N)
    kill -"$sig" "$victim"
    wait "$job"
    rc=$?
    t1=$(date +%s.%N)
    secs=$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")
    echo "     $name: job ended $secs s after SIG$sig to rank 1 (exit $rc)"
}
fail_run kill KILL
check "a killed rank ends the job within 10 s" "[ \$rc -ne 0 ] && awk 'BEGIN { exit !($secs < 10) }'"
check "  naming the rank and host" "grep -q 'rank 1 with PID .* on node $host' $tmp/kill.out"
fail_run kill_tcp KILL --mca btl tcp,self
check "a killed rank ends the job within 10 s (TCP)" "[ \$rc -ne 0 ] && awk 'BEGIN { exit !($secs < 10) }'"
fail_run stop STOP -x GPTOSS_DIST_TIMEOUT=2
check "a stopped rank ends the job at the 2 s deadline, within 10 s" \
    "[ \$rc -ne 0 ] && awk 'BEGIN { exit !($secs >= 1.9 && $secs < 10) }'"
check "  naming the rank and host" "grep -q 'rank 0 ($host): allreduce of 4096 floats waited .* for rank 1 ($host)' $tmp/stop.out"
[ $fail -eq 0 ] || cat "$tmp"/kill.out "$tmp"/stop.out

exit $fail
