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

# --stop: the streamed text never shows the stop string and equals the --json text
"$G" generate -m "$tmp/m" --no-membw --temperature 0 --max-tokens 40 -p "$P2" --json "$tmp/nostop.json" >/dev/null 2>&1
stop=$(node -e 'const t = require(process.argv[1]).users[0].text, c = [...t], m = c.length >> 1;
    process.stdout.write(c.slice(m - 3, m + 3).join(""))' "$tmp/nostop.json")
"$G" generate -m "$tmp/m" --no-membw --temperature 0 --max-tokens 40 -p "$P2" --stop "$stop" --json "$tmp/stop.json" >"$tmp/stop.out" 2>/dev/null
check "stop string found (${#stop} characters)" "[ \${#stop} -eq 6 ] && node -e 'process.exit(require(\"$tmp/stop.json\").users[0].finish_reason === \"stop\" ? 0 : 1)'"
check "streamed text = --json text, no stop string" "node -e '
    const fs = require(\"fs\"), out = fs.readFileSync(\"$tmp/stop.out\", \"utf8\");
    const a = out.indexOf(\"==USER 0 - OUTPUT\n\") + 18, b = out.indexOf(\"\n=== Performance Metrics ===\");
    const shown = out.slice(a, b), text = require(\"$tmp/stop.json\").users[0].text;
    process.exit(shown === text && !shown.includes(process.argv[1]) ? 0 : 1)' \"\$stop\""

# --json - writes the JSON alone on stdout; a path that cannot be written fails before loading
"$G" generate -m "$tmp/m" --no-membw --max-tokens 3 -p "$P1" --json - >"$tmp/js.out" 2>"$tmp/js.err"
check "--json - on stdout, text on stderr" "[ \$? -eq 0 ] && node -e 'JSON.parse(require(\"fs\").readFileSync(\"$tmp/js.out\", \"utf8\"))' && grep -q '^==USER 0 - OUTPUT' $tmp/js.err && grep -q '^=== Performance Metrics' $tmp/js.err"
"$G" generate -m "$tmp/m" --no-membw --max-tokens 3 -p "$P1" --json "$tmp/no/such/dir/out.json" >"$tmp/f.out" 2>&1
check "--json to a bad path fails before loading" "[ \$? -ne 0 ] && grep -q 'No such file or directory' $tmp/f.out && ! grep -q loaded $tmp/f.out"

# more prompts than --batch: waves, nobody dropped, same tokens as one batch
"$G" generate -m "$tmp/m" --no-membw --temperature 0 --max-tokens 12 -p "$P1" -p "$P2" -p "$P3" -p "$P4" -p "$P1" --batch 2 \
    --json "$tmp/waves.json" >"$tmp/waves.out" 2>&1
check "--batch 2 with 5 prompts runs all 5" "grep -q 'Global batch size: 2' $tmp/waves.out && grep -q '==USER 4 - OUTPUT' $tmp/waves.out && node -e '
    const w = require(\"$tmp/waves.json\").users, a = require(\"$tmp/all.json\").users, t = u => JSON.stringify(u.tokens);
    process.exit(w.length === 5 && [0, 1, 2, 3].every(i => t(w[i]) === t(a[i])) && t(w[4]) === t(a[0]) ? 0 : 1)'"

# Ctrl-C: what was generated and the report, finish "aborted", exit status 130
interrupt() { # out, err, wait-for, generate arguments...; sends SIGINT once wait-for is on stderr
    local out=$1 err=$2 want=$3; shift 3
    "$G" generate "$@" >"$out" 2>"$err" & local pid=$! n=0
    while [ $n -lt 100 ] && ! grep -q "$want" "$err" 2>/dev/null; do sleep 0.1; n=$((n+1)); done
    sleep 0.5; kill -INT $pid 2>/dev/null
    n=0; while [ $n -lt 300 ] && kill -0 $pid 2>/dev/null; do sleep 0.1; n=$((n+1)); done
    kill -KILL $pid 2>/dev/null
    wait $pid
}
interrupt "$tmp/int.out" "$tmp/int.err" kernels -m "$tmp/m" --temperature 0 -c 131072 -n 1000000 -t 1 -p "$P2" \
    --json "$tmp/int.json"
check "SIGINT: exit 130, finish aborted, report" "[ \$? -eq 130 ] && grep -q 'finish aborted' $tmp/int.err && grep -q '^=== Performance Metrics' $tmp/int.out && node -e 'process.exit(require(\"$tmp/int.json\").users[0].finish_reason === \"aborted\" ? 0 : 1)'"
awk 'BEGIN { for (i = 0; i < 3000; i++) printf "hello world "; print "" }' >"$tmp/long.txt"
interrupt "$tmp/wint.out" "$tmp/wint.err" loaded -m "$tmp/m" -c 8192 -n 4 -t 1 -f "$tmp/long.txt" --warmup
check "SIGINT during --warmup: exit 130, no timed run" "[ \$? -eq 130 ] && grep -q 'interrupted during the warm-up' $tmp/wint.err && ! grep -q '==USER' $tmp/wint.out"

# llama.cpp-style aliases mean the same as our names
printf '%s\n' "$P3" >"$tmp/p3.txt"
"$G" generate -m "$tmp/m" --no-membw --max-tokens 6 --seed 5 --temperature 0.8 --max-seq-len 256 --stop zzz --developer "Be brief" \
    --reasoning high -p "$P3" --json "$tmp/long.json" >/dev/null 2>&1
"$G" generate -m "$tmp/m" --no-membw -n 6 -s 5 --temp 0.8 -c 256 -r zzz -sys "Be brief" --reasoning-effort HIGH -f "$tmp/p3.txt" \
    --json "$tmp/alias.json" >/dev/null 2>&1
check "aliases -n -s --temp -c -r -sys --reasoning-effort -f" "node -e '
    const a = require(\"$tmp/long.json\").users[0], b = require(\"$tmp/alias.json\").users[0];
    process.exit(a.tokens.length === 6 && JSON.stringify(a.tokens) === JSON.stringify(b.tokens) && a.prompt_tokens === b.prompt_tokens ? 0 : 1)'"
"$G" generate -m "$tmp/m" --no-membw --n-predict 2 --ctx-size 256 --system-prompt "Be brief" --reverse-prompt zzz -p "$P3" >/dev/null 2>&1
check "long aliases --n-predict --ctx-size --system-prompt --reverse-prompt" "[ \$? -eq 0 ]"
"$G" generate --help >"$tmp/h.out"
check "help lists the aliases, and gen options speak of no users" "grep -q -- '--n-predict' $tmp/h.out && grep -q -- '-sys' $tmp/h.out && grep -q -- '--reverse-prompt' $tmp/h.out && grep -q 'seed S + i' $tmp/h.out && ! awk '/^  -m, --model/,0' $tmp/h.out | grep -qi 'user'"

# the seed: random by default, always in --json, exact with --seed (user i: seed + i)
"$G" generate -m "$tmp/m" --no-membw --max-tokens 4 -p "$P1" --json "$tmp/r1.json" >/dev/null 2>&1
"$G" generate -m "$tmp/m" --no-membw --max-tokens 4 -p "$P1" --json "$tmp/r2.json" -v >/dev/null 2>"$tmp/r2.err"
check "random seed by default, printed with -v" "node -e '
    const a = require(\"$tmp/r1.json\").seed, b = require(\"$tmp/r2.json\").seed;
    process.exit(typeof a === \"number\" && a !== b ? 0 : 1)' && grep -q \"seed \$(node -e 'console.log(require(\"$tmp/r2.json\").seed)')\" $tmp/r2.err"
"$G" generate -m "$tmp/m" --no-membw --max-tokens 2 -p "$P1" --batch 2 --seed 41 --json "$tmp/r3.json" >/dev/null 2>&1
check "--seed 41: users 41 and 42" "node -e '
    const j = require(\"$tmp/r3.json\"); process.exit(j.seed === 41 && j.users[0].seed === 41 && j.users[1].seed === 42 ? 0 : 1)'"

# warnings: threads above the cores, a context above the model's
"$G" generate -m "$tmp/m" --no-membw --max-tokens 1 -p "$P1" -t $(( $(nproc) + 1 )) -c 1000000 >"$tmp/w.out" 2>&1
check "warn: --threads above the cores, --max-seq-len capped" "grep -q 'cores' $tmp/w.out && grep -q 'capped to 131072' $tmp/w.out"
# --date: a real calendar date
"$G" generate -m "$tmp/m" --no-membw --max-tokens 1 -p "$P1" --date 2024-02-29 >/dev/null 2>&1
check "--date 2024-02-29 (leap year) accepted" "[ \$? -eq 0 ]"
# --show-reasoning prints no [final] header when there was no reasoning
"$G" generate -m "$tmp/m" --no-membw --temperature 0 --max-tokens 12 -p "$P1" --show-reasoning --json "$tmp/sr.json" >"$tmp/sr.out" 2>&1
"$G" generate -m "$tmp/m" --no-membw --temperature 0 --max-tokens 12 -p "$P1" -p "$P2" --show-reasoning >"$tmp/sr2.out" 2>&1
check "--show-reasoning: no [final] without reasoning" "node -e 'process.exit(require(\"$tmp/sr.json\").users[0].reasoning === \"\" ? 0 : 1)' && ! grep -q 'final\]' $tmp/sr.out && ! grep -q 'final\]' $tmp/sr2.out"

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
expect_fail "--date 2025-02-31 refused" "real date" "$G" generate -m "$tmp/m" --date 2025-02-31 -p x
expect_fail "--date 2023-02-29 refused" "real date" "$G" generate -m "$tmp/m" --date 2023-02-29 -p x
expect_fail "--date 2025-04-31 refused" "real date" "$G" generate -m "$tmp/m" --date 2025-04-31 -p x
expect_fail "--reasoning bad value" "low, medium or high" "$G" generate -m "$tmp/m" --reasoning extreme -p x
expect_fail "-f missing file" "cannot open" "$G" generate -m "$tmp/m" -f "$tmp/nope.txt"

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

# GGUF: the same model written as one .gguf (same seed) gives the same tokens, its
# tokenizer taken from the metadata when no tokenizer.json lies beside it
mkdir -p "$tmp/g"
"$G" mkmodel --preset tiny --format gguf --seed 3 --out "$tmp/g/m.gguf" >/dev/null 2>&1
check "mkmodel tiny --format gguf" "[ -f $tmp/g/m.gguf ]"
GPTOSS_TOKENIZER=$tmp/none.json "$G" generate -m "$tmp/g/m.gguf" --no-membw --temperature 0 --max-tokens 12 -p "$P1" \
    --json "$tmp/gg.json" >"$tmp/gg.out" 2>&1
check "generate -m FILE.gguf, tokenizer from its metadata" "[ \$? -eq 0 ] && grep -q '^==USER 0 - OUTPUT' $tmp/gg.out"
check "gguf tokens = safetensors tokens" "node -e '
    const a = require(\"$tmp/gg.json\").users[0].tokens, b = require(\"$tmp/one0.json\").users[0].tokens;
    process.exit(a.length > 0 && JSON.stringify(a) === JSON.stringify(b) ? 0 : 1)'"
GPTOSS_TOKENIZER=$tmp/none.json "$G" generate -m "$tmp/g" --no-membw --max-tokens 2 -p "$P1" >"$tmp/gd.out" 2>&1
check "generate -m FOLDER holding a .gguf" "[ \$? -eq 0 ] && grep -q '^==USER 0 - OUTPUT' $tmp/gd.out"
"$G" info -m "$tmp/g/m.gguf" >"$tmp/gi.out" 2>&1
check "info -m FILE.gguf" "grep -q 'gguf layout' $tmp/gi.out && grep -q 'per decoded token' $tmp/gi.out && grep -q 'memory plan' $tmp/gi.out"
printf 'Hello world' | GPTOSS_TOKENIZER=$tmp/none.json "$G" tokenize -m "$tmp/g/m.gguf" >"$tmp/gt.out" 2>&1
check "tokenize with the tokenizer of a .gguf" "[ \"\$(cat $tmp/gt.out)\" = '13225 2375' ]"
printf 'not a model' > "$tmp/g/fake.gguf"
expect_fail "a .gguf that is not GGUF" "GGUF magic" "$G" info -m "$tmp/g/fake.gguf"
# the tiny-a fixture converted to GGUF gives the same logits bytes
if "$G" convert "$F" "$tmp/a.gguf" >/dev/null 2>&1; then
    "$G" logits -m "$tmp/a.gguf" --tokens "$ids" -o "$tmp/c.f32" --mode incremental 2>/dev/null
    check "logits of the converted GGUF = safetensors" "cmp -s $tmp/a.f32 $tmp/c.f32"
fi
exit $fail
