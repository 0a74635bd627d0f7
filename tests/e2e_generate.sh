#!/usr/bin/env bash
# End-to-end runs of `gptoss generate`, `chat`, `logits` and `info` on a tiny
# random-weight model: batching does not change any user's tokens, the report is
# printed, and bad input gives a clear message and a non-zero exit.
set -u
BUILD=${BUILD:-build}
G="$BUILD/gptoss"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

"$G" mkmodel --preset tiny --out "$tmp/m" --seed 3 >/dev/null 2>&1
check "mkmodel tiny" "[ -f $tmp/m/model.safetensors ]"

P1="How many r's in the word 'strawberry'?"; P2="Write a short story about space exploration"
P3="Explain quantum computing in simple terms"; P4="What are the benefits of renewable energy?"
"$G" generate -m "$tmp/m" --temperature 0 --max-tokens 12 -p "$P1" -p "$P2" -p "$P3" -p "$P4" \
    --json "$tmp/all.json" >"$tmp/all.out" 2>"$tmp/all.err"
check "generate 4 users" "[ \$? -eq 0 ]"
check "report printed" "grep -q '^=== Performance Metrics ===' $tmp/all.out && grep -q '^Average Time to First Token (TTFT): [0-9.]*ms' $tmp/all.out && grep -q '^Average decode speed: [0-9.]*ms @ [0-9.]* tok/s/user ([0-9.]* tok/s throughput)' $tmp/all.out && grep -q '^Data parallel: 1, Global batch size: 4' $tmp/all.out && grep -q '^Memory: weights' $tmp/all.out && grep -q '^Utilisation:' $tmp/all.out"
check "user sections" "grep -q '^==USER 3 - PROMPT' $tmp/all.out && grep -q '^==USER 3 - OUTPUT' $tmp/all.out"
i=0
for p in "$P1" "$P2" "$P3" "$P4"; do
    "$G" generate -m "$tmp/m" --temperature 0 --max-tokens 12 -p "$p" --json "$tmp/one$i.json" >/dev/null 2>&1
    check "user $i alone = in batch" "node -e '
        const a = require(\"$tmp/all.json\").users[$i].tokens, b = require(\"$tmp/one$i.json\").users[0].tokens;
        process.exit(a.length > 0 && JSON.stringify(a) === JSON.stringify(b) ? 0 : 1)'"
    i=$((i+1))
done
"$G" generate -m "$tmp/m" --temperature 0.8 --seed 5 --max-tokens 10 -p "$P1" --json "$tmp/s1.json" >/dev/null 2>&1
"$G" generate -m "$tmp/m" --temperature 0.8 --seed 5 --max-tokens 10 -p "$P1" --json "$tmp/s2.json" >/dev/null 2>&1
check "fixed seed repeats" "node -e 'process.exit(JSON.stringify(require(\"$tmp/s1.json\").users[0].tokens) === JSON.stringify(require(\"$tmp/s2.json\").users[0].tokens) ? 0 : 1)'"
"$G" generate -m "$tmp/m" --max-tokens 4 -p "$P1" --batch 3 -t 1 --warmup >"$tmp/b.out" 2>&1
check "--batch repeats prompts" "grep -q 'Global batch size: 3' $tmp/b.out && grep -q '==USER 2 - OUTPUT' $tmp/b.out"
echo '[{"prompt": "hello"}, {"prompt": "world"}]' > "$tmp/p.json"
"$G" generate -m "$tmp/m" --max-tokens 3 --prompts "$tmp/p.json" >"$tmp/pf.out" 2>&1
check "--prompts file" "grep -q '==USER 1 - PROMPT' $tmp/pf.out"

# bad input: each a message and a non-zero exit
expect_fail() { # name, expected text, command...
    local name=$1 want=$2; shift 2
    "$@" >"$tmp/f.out" 2>&1; local rc=$?
    check "$name" "[ $rc -ne 0 ] && grep -qi -- \"$want\" $tmp/f.out"
}
expect_fail "empty prompt" "empty" "$G" generate -m "$tmp/m" -p ""
expect_fail "no prompt" "prompt" "$G" generate -m "$tmp/m"
expect_fail "prompt over --max-seq-len" "max-seq-len" "$G" generate -m "$tmp/m" --max-seq-len 16 -p "$P2"
expect_fail "invalid UTF-8" "UTF-8" "$G" generate -m "$tmp/m" -p "$(printf 'bad \xff byte')"
expect_fail "unknown flag" "unknown option" "$G" generate -m "$tmp/m" --bogus -p x
echo '[{"prompt": 3}]' > "$tmp/bad.json"
expect_fail "malformed prompts file" "prompt" "$G" generate -m "$tmp/m" --prompts "$tmp/bad.json"
echo '[{"prompt": ' > "$tmp/bad2.json"
expect_fail "unparsable prompts file" "JSON" "$G" generate -m "$tmp/m" --prompts "$tmp/bad2.json"
expect_fail "missing model folder" "not found" "$G" generate -m "$tmp/nope" -p x
expect_fail "folder that is not a checkpoint" "not a GPT-OSS checkpoint" "$G" info -m "$tmp"
GPT_DIR= HF_MODEL=openai/gpt-oss-20b "$G" info >"$tmp/f.out" 2>&1
check "Hub id in HF_MODEL explained" "grep -q 'Hub id' $tmp/f.out"
expect_fail "bad temperature" "temperature" "$G" generate -m "$tmp/m" --temperature abc -p x

# chat: a scripted conversation
printf 'Hello\n/reasoning high\nMore?\n/reset\n/quit\n' | "$G" chat -m "$tmp/m" --max-tokens 5 --temperature 0 >"$tmp/c.out" 2>&1
check "chat session" "[ \$? -eq 0 ] && grep -q 'reasoning effort: high' $tmp/c.out && grep -q 'conversation reset' $tmp/c.out && grep -q 'reused' $tmp/c.out"

# logits: prefill and incremental agree (bit for bit), on both layouts
F=tests/fixtures/tiny-a
ids=$(node -e 'console.log(require("./tests/fixtures/tiny-a/golden/seq3.ids.json").join(","))')
"$G" logits -m $F --tokens "$ids" -o "$tmp/a.f32" 2>/dev/null
"$G" logits -m $F/original --tokens "$ids" -o "$tmp/b.f32" --mode incremental -t 1 2>/dev/null
check "logits prefill = incremental, hf = original" "cmp -s $tmp/a.f32 $tmp/b.f32 && [ \$(stat -c %s $tmp/a.f32) -eq $((23*1000*4)) ]"
expect_fail "logits token out of range" "out of range" "$G" logits -m $F --tokens "1,2,1000" -o "$tmp/x.f32"
"$G" info -m "$tmp/m" >"$tmp/i.out" 2>&1
check "info" "grep -q 'per decoded token' $tmp/i.out && grep -q 'kernels:' $tmp/i.out"
exit $fail
