#!/usr/bin/env bash
# gptoss and llama.cpp side by side on the same GGUF files (`make bench-compare`).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/compare.sh [options] [FILE.gguf ...]

Runs llama.cpp and gptoss back to back on the same GGUF files and writes one
table of both engines' tok/s and the ratio gptoss/llama.cpp to bench/compare.md
(with the CPU model and SIMD flags, the date, both versions and the exact
commands).  For each file:

  1. llama.cpp load check: llama-simple generates 4 tokens
  2. pp and tg, single sequence: llama-bench -p P -n N -t THREADS -r R -o json
     then gptoss bench -p P -n N -t THREADS -r R --json -
  3. decode with several sequences: llama-batched-bench -npp D -ntg N -npl BATCH
     -t T --output-format jsonl (plus one repeated test, ignored: llama.cpp can lose
     its last output line at exit), then gptoss bench -p 0 -n N --batch BATCH -t T
with a memory bandwidth probe (gptoss bench --membw) before each engine's run,
since the bandwidth of a shared machine moves from minute to minute.

Without FILE arguments it uses models/20b-q8.gguf (Q8_0 dense, like ggml-org's
gpt-oss-20b-mxfp4.gguf) and models/20b-bf16.gguf (BF16 dense, like the official
checkpoint), writing a missing one with
  gptoss mkmodel --preset 20b --format gguf --dense q8|bf16 --out FILE
(about 12-14 GB each).

llama.cpp is built once by bench/llama_build.sh into
${GPTOSS_CACHE:-$HOME/.cache/gptoss}/llama.cpp-nlc<version> from the source that
the npm package node-llama-cpp ships (pinned there); the first build takes
several minutes.  The raw outputs stay in bench/compare-raw/.

Options:
  -o FILE          the report (default bench/compare.md)
  --check          check the llama.cpp build and the whole pipeline in seconds: a
                   tiny llama-architecture GGUF (bench/tiny_gguf.js), small sizes,
                   the report to bench/compare-raw/check.md (gptoss does not run
                   that architecture, so its rows show as failed)
  --table-only     rebuild the report from bench/compare-raw/ without running
  --dry-run        print the commands only
  -h, --help       this help

Environment (defaults in brackets):
  GPTOSS              the gptoss binary [build/gptoss]
  P                   prompt length of the pp test [512]
  N                   generated tokens of the tg and decode tests [128]
  THREADS             thread counts of the pp/tg tests [1,2]
  REPS                repetitions of each pp/tg test [3]
  BATCH               sequences of the decode tests [1,4,8]
  BATCH_T             threads of the decode tests [the largest of THREADS]
  DEPTH               prompt tokens per sequence before llama.cpp's decode test [128]
  MEMBW_MIB           bandwidth probe buffer in MiB [1024]
  LLAMA_BENCH_ARGS    extra flags for llama-bench (e.g. -fa on)
  LLAMA_BATCHED_ARGS  extra flags for llama-batched-bench (e.g. -fa on)
  GPTOSS_ARGS         extra flags for gptoss bench (e.g. --dense q8)
  LLAMA_ISA           native, or avx2: both engines on their AVX2 code, as on a
                      machine without AVX-512 (llama.cpp built with GGML_NATIVE=OFF,
                      gptoss run with GPTOSS_KERNELS=avx2) [native]
  GPTOSS_CACHE, LLAMA_JOBS  see bench/llama_build.sh
EOF
}

# Writes a missing default file with gptoss itself, through a .partial name so an
# interrupted run is started over.
make_gguf() {
    local f=$1 dense=$2
    if ! "$G" mkmodel --help 2>/dev/null | grep -q -- '--format'; then
        echo "compare: $f is missing, and $G cannot write it: that needs" >&2
        echo "compare:   gptoss mkmodel --preset 20b --format gguf --dense $dense --out $f" >&2
        echo "compare: pass existing GGUF files as arguments instead" >&2
        exit 1
    fi
    echo "compare: writing $f (20b shape, $dense dense; 12-14 GB)" >&2
    mkdir -p "$(dirname "$f")"
    rm -f "$f.partial"
    "$G" mkmodel --preset 20b --format gguf --dense "$dense" --out "$f.partial"
    mv "$f.partial" "$f"
}

# step MODEL KIND FILE CMD...: runs CMD with stdout to $raw/FILE and stderr to
# $raw/FILE.err and records it in runs.txt; a failure is recorded, not fatal, so
# the other engine's figures still reach the table.
step() {
    local model=$1 kind=$2 file=$3 st=0
    shift 3
    local cmd="" a
    for a in "$@"; do
        # Quoted only where a shell needs it, so the report reads like typed commands.
        [[ $a =~ ^[A-Za-z0-9_./,=:@%+-]+$ ]] || a="'${a//\'/\'\\\'\'}'"
        cmd+="${cmd:+ }$a"
    done
    if [ $dry -eq 1 ]; then
        echo "$cmd"
        return 0
    fi
    echo "compare: [$(date -u +%H:%M:%S)] $model: $kind" >&2
    "$@" >"$raw/$file" 2>"$raw/$file.err" || st=$?
    if [ $st -ne 0 ]; then
        echo "compare: $kind failed with status $st; last lines of $raw/$file.err:" >&2
        tail -n 5 "$raw/$file.err" | sed 's/^/    /' >&2
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$model" "$kind" "$file" "$st" "$cmd" >>"$raw/runs.txt"
}

# Paths given on the command line or in GPTOSS are taken from the caller's
# folder; the script then works from the repository root.
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
out=""
table_only=0
check=0
dry=0
files=()
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        -o) [ $# -ge 2 ] || { echo "compare: -o needs a file" >&2; exit 2; }; out=$(abs "$2"); shift ;;
        --table-only) table_only=1 ;;
        --check) check=1 ;;
        --dry-run) dry=1 ;;
        -*) echo "compare: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) files+=("$(abs "$1")") ;;
    esac
    shift
done
[ -z "${GPTOSS:-}" ] || GPTOSS=$(abs "$GPTOSS")
cd "$(dirname "$0")/.."
raw=bench/compare-raw

if [ $table_only -eq 1 ]; then
    [ -n "$out" ] || out=bench/compare.md
    node bench/compare.js "$raw" >"$out.tmp"
    mv "$out.tmp" "$out"
    cat "$out"
    exit 0
fi

if [ $check -eq 1 ]; then
    # Small sizes unless given; the tiny file is rewritten each time (it takes
    # milliseconds) so it always matches the script.
    : "${P:=32}" "${N:=8}" "${REPS:=1}" "${MEMBW_MIB:=128}"
    tiny=${TMPDIR:-/tmp}/gptoss-compare-tiny.gguf
    node bench/tiny_gguf.js "$tiny"
    files=("$tiny")
    [ -n "$out" ] || out=$raw/check.md
fi
[ -n "$out" ] || out=bench/compare.md

G=${GPTOSS:-build/gptoss}
P=${P:-512}
N=${N:-128}
THREADS=${THREADS:-1,2}
REPS=${REPS:-3}
BATCH=${BATCH:-1,4,8}
DEPTH=${DEPTH:-128}
MEMBW_MIB=${MEMBW_MIB:-1024}
read -ra bench_args <<<"${LLAMA_BENCH_ARGS:-}"
read -ra batched_args <<<"${LLAMA_BATCHED_ARGS:-}"
read -ra gptoss_args <<<"${GPTOSS_ARGS:-}"
for v in THREADS BATCH; do
    [[ ${!v} =~ ^[0-9]+(,[0-9]+)*$ ]] ||
        { echo "compare: $v must be a comma-separated list of numbers, not '${!v}'" >&2; exit 2; }
done
BATCH_T=${BATCH_T:-$(tr ',' '\n' <<<"$THREADS" | sort -n | tail -n 1)}
for v in P N REPS BATCH_T DEPTH MEMBW_MIB; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "compare: $v must be a number, not '${!v}'" >&2; exit 2; }
done
[ -x "$G" ] || { echo "compare: $G is missing; run make first (or set GPTOSS)" >&2; exit 1; }
case ${LLAMA_ISA:-native} in
    native) ;;
    avx2) export GPTOSS_KERNELS=avx2 ;;
    *) echo "compare: LLAMA_ISA must be native or avx2, not '$LLAMA_ISA'" >&2; exit 2 ;;
esac
export LLAMA_ISA=${LLAMA_ISA:-native}
command -v node >/dev/null 2>&1 || { echo "compare: node is missing (run make deps)" >&2; exit 1; }

# The probe covers every thread count a test uses.
probe_t=$(tr ',' '\n' <<<"$THREADS,$BATCH_T" | sort -nu | paste -sd,)
# llama-batched-bench's context must hold its largest test: BATCH sequences of
# DEPTH + N tokens (without this it sizes the cache for the model's full context).
max_batch=$(tr ',' '\n' <<<"$BATCH" | sort -n | tail -n 1)
# llama.cpp's tools log through a queue that a thread drains; at exit the last
# lines can still be queued and are lost (seen often with 2 threads on 2 cores).
# So llama-batched-bench runs one more, smallest test after the measured ones;
# its line, when it arrives, is a duplicate that compare.js ignores.
min_batch=$(tr ',' '\n' <<<"$BATCH" | sort -n | head -n 1)
ctx=$(( max_batch * (DEPTH + N) ))
[ "$ctx" -ge $(( P + N )) ] || ctx=$(( P + N ))

if [ ${#files[@]} -eq 0 ]; then
    for dense in q8 bf16; do
        f=models/20b-$dense.gguf
        files+=("$f")
        [ -f "$f" ] || [ $dry -eq 1 ] || make_gguf "$f" "$dense"
    done
fi
for f in "${files[@]}"; do
    [ -f "$f" ] || [ $dry -eq 1 ] || { echo "compare: $f: no such file" >&2; exit 1; }
done

if [ $dry -eq 1 ]; then
    bin=$(bench/llama_build.sh --print 2>/dev/null || echo '<llama.cpp bin>')
else
    bin=$(bench/llama_build.sh)
fi
llama_dir=$(dirname "$(dirname "$bin")")

if [ $dry -eq 0 ]; then
    rm -rf "$raw"
    mkdir -p "$raw"
    : >"$raw/runs.txt"
    cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || true)
    flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' |
        grep -E '^(avx|fma|f16c|amx|sse4_2)' | sort -u | paste -sd' ' || true)
    tag=$(node -e 'console.log(require(process.argv[1]).tag)' "$llama_dir/llama.cpp.info.json" 2>/dev/null || echo '?')
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    git diff --quiet HEAD 2>/dev/null || rev="$rev (with uncommitted changes)"
    {
        printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        printf 'cpu\t%s, %s cores, %s\n' "${cpu:-unknown}" "$(nproc)" \
            "$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
        printf 'SIMD flags\t%s\n' "${flags:-none found}"
        stamp=$(cat "$llama_dir/.complete" 2>/dev/null || echo '?')
        build="GGML_NATIVE=ON"
        case $stamp in
            *noamx*) build+=" without AMX (-mno-amx-*: ggml's AMX kernels crash on this CPU; see bench/llama_build.sh)" ;;
            *avx2*) build="GGML_NATIVE=OFF (AVX2, FMA, F16C, BMI2; no AVX-512), as on an AVX2-only machine" ;;
        esac
        printf 'llama.cpp\t%s (commit %s), from npm node-llama-cpp@%s; CPU Release, %s, static\n' \
            "$tag" "$(cut -c1-12 "$llama_dir/commit" 2>/dev/null || echo '?')" "${stamp%%+*}" "$build"
        printf 'gptoss\t%s, commit %s; %s\n' "$("$G" --version 2>/dev/null | head -n 1)" "$rev" \
            "$("$G" --version 2>/dev/null | sed -n 's/^why: *//p')"
    } >"$raw/meta.txt"
fi

for f in "${files[@]}"; do
    m=$(basename "$f" .gguf)
    probe=("$G" bench --membw -t "$probe_t" --membw-mib "$MEMBW_MIB" --json -)
    step "$m" load "$m.load.txt" "$bin/llama-simple" -m "$f" -n 4 "Hello"
    step "$m" membw "$m.membw1.jsonl" "${probe[@]}"
    step "$m" llama-bench "$m.llama-bench.json" "$bin/llama-bench" -m "$f" \
        -p "$P" -n "$N" -t "$THREADS" -r "$REPS" -o json "${bench_args[@]}"
    step "$m" membw "$m.membw2.jsonl" "${probe[@]}"
    step "$m" gptoss-bench "$m.gptoss-bench.jsonl" "$G" bench -m "$f" \
        -p "$P" -n "$N" -t "$THREADS" -r "$REPS" --no-membw --json - "${gptoss_args[@]}"
    step "$m" membw "$m.membw3.jsonl" "${probe[@]}"
    step "$m" llama-batched "$m.llama-batched.jsonl" "$bin/llama-batched-bench" -m "$f" \
        -c "$ctx" -b 2048 -ub 512 -npp "$DEPTH" -ntg "$N" -npl "$BATCH,$min_batch" -t "$BATCH_T" \
        --output-format jsonl "${batched_args[@]}"
    step "$m" membw "$m.membw4.jsonl" "${probe[@]}"
    step "$m" gptoss-batch "$m.gptoss-batch.jsonl" "$G" bench -m "$f" \
        -p 0 -n "$N" --batch "$BATCH" -t "$BATCH_T" -r "$REPS" --no-membw --json - "${gptoss_args[@]}"
done
[ $dry -eq 1 ] && exit 0

mkdir -p "$(dirname "$out")"
node bench/compare.js "$raw" >"$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
echo "compare: wrote $out (raw outputs in $raw)" >&2
