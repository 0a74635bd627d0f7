#!/usr/bin/env bash
# generate, chat and serve under mpirun (make MPI=1), oversubscribed: rank 0
# leads (schedules, samples, prints, listens), the other ranks follow its step
# plans, each running its shard of the pass.  Greedy answers must equal the
# single-process build's: several users on 2 ranks (the default mesh 1x2 and
# 2x1, 2x2 on 4 ranks, over TCP), --dp 2 with 4 users, a prompt from -f - (rank 0
# reads standard input and shares it), chat turns, a served request over HTTP.  Rank 0 samples from the candidates the shards send: the
# tokens of sampling from whole rows on every mesh (test_engine_dist).  The
# followers check after every step that their KV caches match the leader's and
# say so at the end (-v).  A follower killed mid-generation ends the job within
# 10 s with a message.  Skips (exit 77) where Open MPI is not installed.
set -u
cd "$(dirname "$0")/.." || exit 1
source tests/mpi_lib.sh
G="$PWD/$MPI_BUILD/gptoss"
T="$PWD/$MPI_BUILD/tests/test_engine_dist"
tmp=$(mktemp -d)
pids=""
cleanup() {
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

if ! make --no-print-directory MPI=1 BUILD="$MPI_BUILD" "$MPI_BUILD/gptoss" \
    "$MPI_BUILD/tests/test_engine_dist" >"$tmp/make.log" 2>&1; then
    tail -n 20 "$tmp/make.log"
    echo "FAIL building the MPI binaries in $MPI_BUILD"
    exit 1
fi
# The reference: the single-process build (the MPI one alone where it is missing).
G1="$PWD/$BUILD/gptoss"
[ -x "$G1" ] && [ "$MPI_BUILD" != "$BUILD" ] || G1=$G
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
mpi() { mpi_run 120 "$@"; }
# The user's tokens of a --json file, one line per user.
tokens() { node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1]));
    for (const u of r.users) console.log(u.user + ": " + u.tokens.join(","))' "$1"; }

M="$tmp/tiny"
"$G1" mkmodel --preset tiny --out "$M" --seed 3 >/dev/null 2>&1
OPTS="-m $M --date none -t 1 --temperature 0 --max-tokens 12" # chat and serve take these
ARGS="$OPTS --no-membw"
P=(-p Hello -p "Why is the sky blue?" -p "Count to five")

mpi -np 2 "$T" >"$tmp/t.out" 2>&1
check "engine leader and follower in lockstep (preemption, cancel, reuse, reset)" \
    "[ \$? -eq 0 ] && [ \$(grep -c 'OK \] test_followers_in_lockstep' $tmp/t.out) -eq 2 ]"
check "  every mesh of 2 ranks: the pass's candidates are those of its rows, sampling them too" \
    "[ \$(grep -c 'OK \] test_candidates_sample_as_rows\|OK \] test_forward_candidates' $tmp/t.out) -eq 4 ]"
mpi -np 4 "$T" >"$tmp/t4.out" 2>&1
check "  the same on every mesh of 4 ranks" \
    "[ \$? -eq 0 ] && [ \$(grep -c 'OK \] test_candidates_sample_as_rows\|OK \] test_forward_candidates' $tmp/t4.out) -eq 8 ]"

"$G1" generate $ARGS "${P[@]}" --batch 4 --json "$tmp/ref.json" >"$tmp/ref.out" 2>&1
check "one process: 4 users" "[ \$? -eq 0 ] && [ \$(tokens $tmp/ref.json | wc -l) -eq 4 ]"
tokens "$tmp/ref.json" >"$tmp/ref.tok"

mpi -np 2 "$G" generate $ARGS "${P[@]}" --batch 4 -v --json "$tmp/np2.json" >"$tmp/np2.out" 2>&1
check "2 ranks (mesh of 2): the same greedy tokens for 4 users" \
    "[ \$? -eq 0 ] && tokens $tmp/np2.json | cmp -s - $tmp/ref.tok"
check "  the follower stayed in step with the leader's caches" \
    "grep -q 'rank 1 .*followed [1-9][0-9]* steps, caches in step with the leader' $tmp/np2.out"
check "  one report, from rank 0" "[ \$(grep -c '=== Performance Metrics' $tmp/np2.out) -eq 1 ] \
    && grep -q 'Data parallel: 1, Global batch size: 4' $tmp/np2.out"

mpi -np 2 "$G" generate $ARGS "${P[@]}" --batch 4 --mesh 2x1 --json "$tmp/tp.json" >"$tmp/tp.out" 2>&1
check "2 ranks, --mesh 2x1 (tensor parallel): the same greedy tokens" \
    "[ \$? -eq 0 ] && tokens $tmp/tp.json | cmp -s - $tmp/ref.tok"

# -f -: mpirun gives standard input to rank 0 only, which reads the prompt and
# shares it: with a follower (2x1) and with a second replica's leader (--dp 2).
"$G1" generate $ARGS -p "Why is the sky blue?" --batch 2 --json "$tmp/f1.json" >/dev/null 2>&1
tokens "$tmp/f1.json" >"$tmp/f1.tok"
echo "Why is the sky blue?" | mpi -np 2 "$G" generate $ARGS -f - --batch 2 --mesh 2x1 \
    --json "$tmp/f.json" >"$tmp/f.out" 2>&1
check "-f - on 2 ranks (2x1): rank 0 reads the prompt and shares it, the same tokens" \
    "[ \$? -eq 0 ] && [ -s $tmp/f1.tok ] && tokens $tmp/f.json | cmp -s - $tmp/f1.tok"
echo "Why is the sky blue?" | mpi -np 2 "$G" generate $ARGS -f - --batch 2 --dp 2 \
    --json "$tmp/fdp.json" >"$tmp/fdp.out" 2>&1
check "-f - on 2 ranks with --dp 2: the second replica answers the same prompt" \
    "[ \$? -eq 0 ] && tokens $tmp/fdp.json | cmp -s - $tmp/f1.tok"
mpi -np 2 "$G" generate $ARGS -f "$tmp/missing.txt" >"$tmp/fm.out" 2>&1 </dev/null
check "-f of a missing file on 2 ranks: one message, no hang" \
    "[ \$? -ne 0 ] && [ \$(grep -c 'cannot open $tmp/missing.txt' $tmp/fm.out) -eq 1 ]"
# A rank that cannot open the model (here: its path does not exist on rank 1's
# "host") ends the job before the first step, naming the rank and host.
t0=$(date +%s)
mpi -np 2 sh -c 'm=$1; [ "$OMPI_COMM_WORLD_RANK" = 1 ] && m=$1.absent; shift; exec "$@" -m "$m"' \
    sh "$M" "$G" generate $(echo "$ARGS" | sed "s|-m $M ||") -p Hello >"$tmp/lm.out" 2>&1 </dev/null
rc=$?
check "a rank that cannot open the model ends the job at once, naming the rank" \
    "[ $rc -ne 0 ] && [ \$(( \$(date +%s) - t0 )) -lt 30 ] && \
     grep -q 'rank 1 (.*): error: cannot find the model' $tmp/lm.out"

# Waves: 4 users, 2 at a time, so slots are reused and prefixes rewound.
mpi -np 2 "$G" generate $ARGS "${P[@]}" -p Hi --batch 2 --json "$tmp/w.json" >"$tmp/w.out" 2>&1
"$G1" generate $ARGS "${P[@]}" -p Hi --batch 2 --json "$tmp/w1.json" >/dev/null 2>&1
check "2 ranks, 4 users in waves of 2: the same tokens" \
    "[ \$? -eq 0 ] && tokens $tmp/w.json | cmp -s - <(tokens $tmp/w1.json)"

mpi -np 2 "$G" generate $ARGS "${P[@]}" --batch 4 --dp 2 --json "$tmp/dp.json" >"$tmp/dp.out" 2>&1
check "--dp 2 on 2 ranks: 4 users split over 2 replicas, the same tokens" \
    "[ \$? -eq 0 ] && tokens $tmp/dp.json | cmp -s - $tmp/ref.tok"
check "  the metrics line names the replicas and the global batch" \
    "grep -q 'Data parallel: 2, Global batch size: 4' $tmp/dp.out"
# A GGUF model: each rank repacks only the experts it runs (1x2: half each) and
# the tokens are the single process's, which repacks all of them, and those of
# the experts read in place (--no-repack).
MG="$tmp/tiny.gguf"
"$G1" mkmodel --preset tiny --format gguf --out "$MG" --seed 3 >/dev/null 2>&1
GARGS="-m $MG --date none -t 1 --temperature 0 --max-tokens 12 --no-membw"
"$G1" generate $GARGS "${P[@]}" --batch 4 --json "$tmp/g1.json" >/dev/null 2>&1
"$G1" generate $GARGS "${P[@]}" --batch 4 --no-repack --json "$tmp/g1n.json" >/dev/null 2>&1
check "GGUF, one process: the same tokens with the experts repacked and read in place" \
    "[ \$(tokens $tmp/g1.json | wc -l) -eq 4 ] && tokens $tmp/g1.json | cmp -s - <(tokens $tmp/g1n.json)"
mpi -np 2 "$G" generate $GARGS "${P[@]}" --batch 4 --mesh 1x2 -v --json "$tmp/g2.json" \
    >"$tmp/g2.out" 2>&1
check "GGUF on 2 ranks (1x2): each rank repacks its half of the experts, the same tokens" \
    "[ \$? -eq 0 ] && tokens $tmp/g2.json | cmp -s - <(tokens $tmp/g1.json) && \
     grep -q 'repacked .* of experts 0-3 ' $tmp/g2.out && grep -q 'repacked .* of experts 4-7 ' $tmp/g2.out"

mpi -np 2 "$G" generate $ARGS -p Hello --dp 2 >"$tmp/dp1.out" 2>&1
check "--dp 2 with one user is a usage error" \
    "[ \$? -eq 2 ] && grep -q '2 replicas need at least 2 users' $tmp/dp1.out"

# Rank 0 samples from the candidates the shards send (their best logit when
# greedy, their top k with top-k sampling), not from gathered rows, for a
# fraction of the bytes: greedy gives the single process's tokens on every mesh.
# Sharded sums round differently from one process's, so seeded sampling is
# compared with whole-row sampling on the same mesh by test_engine_dist above
# (every mesh of 2 and 4 ranks); here it must not depend on the transport, and
# replicas of one rank each are whole models: the single process's tokens.
per_token() { node -e 'console.log(Math.round(JSON.parse(require("fs").readFileSync(
    process.argv[1])).metrics.comm_bytes_sent_per_token))' "$1"; }
for run in "-np 2" "-np 2 --mesh 2x1" "-np 4 --mesh 2x2" "-np 4 --dp 2" "-np 2 --mca btl tcp,self"; do
    read -r -a a <<<"$run"
    mca=()
    [ "${a[2]:-}" = --mca ] && mca=("${a[@]:2}") && a=("${a[@]:0:2}")
    mpi "${mca[@]}" "${a[@]:0:2}" "$G" generate $ARGS "${P[@]}" --batch 4 "${a[@]:2}" \
        --json "$tmp/c0.json" >"$tmp/c.out" 2>&1
    check "$run: greedy, the same tokens" "[ \$? -eq 0 ] && tokens $tmp/c0.json | cmp -s - $tmp/ref.tok"
done
SAMPLED=(--batch 4 --seed 5 --temperature 0.8 --top-k 40 --top-p 0.95)
mpi -np 2 "$G" generate $ARGS "${P[@]}" "${SAMPLED[@]}" --json "$tmp/s2.json" >/dev/null 2>&1
mpi --mca btl tcp,self -np 2 "$G" generate $ARGS "${P[@]}" "${SAMPLED[@]}" --json "$tmp/s2t.json" \
    >/dev/null 2>&1
check "-np 2, seeded top-k sampling: the same tokens over TCP as over shared memory" \
    "[ \$(tokens $tmp/s2.json | wc -l) -eq 4 ] && tokens $tmp/s2.json | cmp -s - <(tokens $tmp/s2t.json)"
"$G1" generate $ARGS "${P[@]}" "${SAMPLED[@]}" --json "$tmp/s1.json" >/dev/null 2>&1
mpi -np 2 "$G" generate $ARGS "${P[@]}" "${SAMPLED[@]}" --dp 2 --json "$tmp/sdp.json" >/dev/null 2>&1
check "-np 2 --dp 2, seeded top-k sampling: the single process's tokens" \
    "[ \$(tokens $tmp/s1.json | wc -l) -eq 4 ] && tokens $tmp/sdp.json | cmp -s - <(tokens $tmp/s1.json)"
# A vocabulary shard's columns of one row alone are 4 x 201088 / 2 bytes.
n=$(per_token "$tmp/c0.json")
echo "     rank 0 sent $n bytes per generated token (greedy, 2 ranks over TCP)"
check "  candidates, not rows: under 40000 bytes per token" "[ \"$n\" -lt 40000 ]"

# chat: rank 0 reads standard input; the second turn reuses the first's cache,
# /reset drops it.
turns='Hello\nAnd then?\n/reset\nHello\n/quit\n'
printf "$turns" | "$G1" chat $OPTS >"$tmp/chat1.out" 2>/dev/null
printf "$turns" | mpi -np 2 "$G" chat $OPTS >"$tmp/chat2.out" 2>"$tmp/chat2.err"
check "chat on 2 ranks (3 turns, a reset) answers as one process does" \
    "[ \$? -eq 0 ] && [ -s $tmp/chat1.out ] && cmp -s $tmp/chat1.out $tmp/chat2.out"
mpi -np 2 "$G" chat $OPTS --dp 2 </dev/null >"$tmp/chatdp.out" 2>&1
check "chat with --dp 2 is refused" "[ \$? -eq 2 ] && grep -q 'one model replica serves here' $tmp/chatdp.out"

# serve: rank 0 listens; the answer equals generate's.
greedy=$("$G1" generate $ARGS -p Hello --max-tokens 8 --json - 2>/dev/null |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>
    process.stdout.write(JSON.parse(s).users[0].text))')
# Not through mpi(): $! must be timeout's, which passes SIGTERM on to mpirun.
timeout 120 mpirun --oversubscribe --bind-to none -np 2 "$G" serve $OPTS --port 0 --parallel 2 \
    --max-seq-len 256 >"$tmp/s.out" 2>"$tmp/s.err" &
spid=$!
pids="$pids $spid"
port=""
for _ in $(seq 1 300); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$tmp/s.err" 2>/dev/null)
    [ -n "$port" ] && grep -q 'ready' "$tmp/s.err" && break
    sleep 0.1
done
check "serve on 2 ranks: one rank listens" "[ -n \"$port\" ] && [ \$(grep -c 'listening on' $tmp/s.err) -eq 1 ]"
body='{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 0}'
answer=$(curl -s -m 60 -d "$body" "http://127.0.0.1:$port/v1/chat/completions" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{try{
    process.stdout.write(JSON.parse(s).choices[0].message.content)}catch(e){process.stdout.write("?"+s)}})')
check "  a request over HTTP gets the single-process answer" \
    "[ -n \"\$greedy\" ] && [ \"\$answer\" = \"\$greedy\" ]"
kill -TERM "$spid" 2>/dev/null
wait "$spid" 2>/dev/null

# A follower killed mid-generation ends the job.  Rank 1 is found by its
# environment among the children of this job's mpirun.
mpi -np 2 "$G" generate -m "$M" --date none -t 1 -p Hello --batch 8 --max-tokens 100000 \
    --max-seq-len 4096 --no-membw >"$tmp/k.out" 2>&1 &
job=$!
pids="$pids $job"
victim=""
for _ in $(seq 1 300); do
    for p in $(pgrep -f "$G generate" 2>/dev/null); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1' && victim=$p
    done
    [ -n "$victim" ] && grep -q 'users, kernels' "$tmp/k.out" && break
    sleep 0.1
done
sleep 0.5
t0=$(date +%s.%N)
[ -n "$victim" ] && kill -KILL "$victim"
wait "$job"
rc=$?
secs=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }")
echo "     the job ended $secs s after SIGKILL to rank 1 (exit $rc)"
check "a killed follower ends the job within 10 s, with a message" \
    "[ -n \"$victim\" ] && [ $rc -ne 0 ] && awk 'BEGIN { exit !($secs < 10) }' \
    && grep -qi 'rank 1' $tmp/k.out"
[ $fail -eq 0 ] || tail -n 30 "$tmp"/t.out "$tmp"/np2.out "$tmp"/dp.out "$tmp"/s.err "$tmp"/k.out "$tmp"/chat2.err
exit $fail
