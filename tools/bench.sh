#!/usr/bin/env bash
# The benchmark suite behind `make bench`: pp512, pp4096 (long prompts: attention
# over thousands of keys) and tg128 at batch 1, 4 and 8 with 1 and 2 threads.  Uses the model folder given as the first argument, else
# $MODEL, else $GPT_DIR; otherwise makes a 20b-shape random-weight checkpoint
# under models/20b (about 13.8 GB of disk).  The table goes to bench/results.md,
# JSON Lines to bench/results.jsonl.  Sizes can be changed through BENCH_P,
# BENCH_N, BENCH_BATCH, BENCH_THREADS, BENCH_REPS and BENCH_ARGS (extra flags).
set -eu
cd "$(dirname "$0")/.."
G=build/gptoss
[ -x "$G" ] || { echo "bench: $G is missing; run make first" >&2; exit 1; }

model=${1:-${MODEL:-${GPT_DIR:-}}}
if [ -z "$model" ]; then
    model=models/20b
    # A finished checkpoint has its config and shard index; a run cut short
    # leaves only the .partial folder, which is started over.
    if [ ! -f "$model/config.json" ] || [ ! -f "$model/model.safetensors.index.json" ]; then
        if ! "$G" mkmodel --help >/dev/null 2>&1; then
            echo "bench: no model given and '$G mkmodel' is not available to make one;" >&2
            echo "bench: pass a checkpoint folder: make bench MODEL=DIR (or set GPT_DIR)" >&2
            exit 1
        fi
        echo "bench: making a 20b-shape random-weight checkpoint in $model (about 13.8 GB)" >&2
        rm -rf "$model.partial"
        mkdir -p "$(dirname "$model")"
        "$G" mkmodel --preset 20b --out "$model.partial"
        rm -rf "$model"
        mv "$model.partial" "$model"
    fi
fi

P=${BENCH_P:-512,4096}
N=${BENCH_N:-128}
BATCH=${BENCH_BATCH:-1,4,8}
THREADS=${BENCH_THREADS:-1,2}
REPS=${BENCH_REPS:-3}
mkdir -p bench
md=bench/results.md
jsonl=bench/results.jsonl
read -ra extra <<<"${BENCH_ARGS:-}"
cmd=("$G" bench -m "$model" -p "$P" -n "$N" --batch "$BATCH" -t "$THREADS" -r "$REPS" "${extra[@]}")
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || true)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    echo "# gptoss bench"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: ${cpu:-unknown CPU}, $(nproc) cores, $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "- commit: $rev"
    echo "- command: \`${cmd[*]}\`"
    echo
} >"$md.tmp"
echo "bench: ${cmd[*]}" >&2
"${cmd[@]}" --json-out "$jsonl.tmp" >>"$md.tmp"
mv "$md.tmp" "$md"
mv "$jsonl.tmp" "$jsonl"
cat "$md"
echo "bench: wrote $md and $jsonl" >&2
