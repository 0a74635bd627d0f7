#!/usr/bin/env bash
# End-to-end check of `gptoss mkmodel`: the tiny preset in both layouts, the
# files and sizes it writes, determinism from the seed, refusal to overwrite a
# non-empty folder without --force, and clear failures for bad arguments.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
BIN="$BUILD/gptoss"
tmp=$(mktemp -d /tmp/gpo_e2e_mkmodel.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }

# --help works and exits 0.
"$BIN" mkmodel --help | grep -q -- "--preset" || fail "--help does not describe --preset"

# tiny, both layouts.
if ! "$BIN" mkmodel --preset tiny --layout both --seed 3 --out "$tmp/m" 2>"$tmp/log"; then
    fail "mkmodel tiny failed: $(cat "$tmp/log")"
fi
grep -q "MB/s" "$tmp/log" || fail "no progress report on stderr"
for f in config.json model.safetensors original/config.json original/dtypes.json \
         original/model.safetensors; do
    [ -s "$tmp/m/$f" ] || fail "missing $f"
done
[ -e "$tmp/m/model.safetensors.index.json" ] && fail "tiny should be a single file, not sharded"
# 4 layers of hidden 64 with 8 experts plus two 201088x64 BF16 tables: about 52 MB each.
for f in model.safetensors original/model.safetensors; do
    s=$(size_of "$tmp/m/$f")
    if [ "$s" -lt 51000000 ] || [ "$s" -gt 53000000 ]; then fail "$f has implausible size $s"; fi
done
grep -q '"eos_token_id": 200002' "$tmp/m/config.json" || fail "config.json lacks the real eos id"
grep -q '"num_hidden_layers": 4' "$tmp/m/config.json" || fail "config.json layer count"
n=$(grep -c '": ' "$tmp/m/original/config.json")
[ "$n" -eq 16 ] || fail "original/config.json has $n keys, want 16"
n=$(grep -c '"block\.\|"embedding\|"norm\|"unembedding' "$tmp/m/original/dtypes.json")
[ "$n" -eq 63 ] || fail "original/dtypes.json has $n entries, want 63"

# -m naming a file says what it is instead of "not found".
"$BIN" info -m "$tmp/m/config.json" >/dev/null 2>"$tmp/err" && fail "info -m FILE succeeded"
grep -q "is a file, not a folder: pass the folder holding config.json" "$tmp/err" ||
    fail "-m FILE message: $(cat "$tmp/err")"
: >"$tmp/model.gguf"
"$BIN" info -m "$tmp/model.gguf" >/dev/null 2>"$tmp/err" && fail "info -m x.gguf succeeded"
grep -q "does not start with the GGUF magic" "$tmp/err" || fail "-m x.gguf message: $(cat "$tmp/err")"

# The same seed gives the same bytes; another seed does not.
"$BIN" mkmodel --preset tiny --seed 3 --out "$tmp/same" -q || fail "second run failed"
cmp -s "$tmp/m/model.safetensors" "$tmp/same/model.safetensors" || fail "same seed, different bytes"
"$BIN" mkmodel --preset tiny --seed 4 --out "$tmp/other" -q --layout original ||
    fail "seed 4 failed"
cmp -s "$tmp/m/original/model.safetensors" "$tmp/other/original/model.safetensors" &&
    fail "different seeds gave the same bytes"
[ -e "$tmp/other/config.json" ] && fail "--layout original wrote an HF config.json"

# A non-empty folder is refused without --force, accepted with it.
if "$BIN" mkmodel --preset tiny --out "$tmp/m" -q 2>"$tmp/err"; then
    fail "overwrote a non-empty folder without --force"
fi
grep -q -- "--force" "$tmp/err" || fail "refusal does not mention --force: $(cat "$tmp/err")"
"$BIN" mkmodel --preset tiny --out "$tmp/m" -q --force || fail "--force run failed"

# Bad arguments: usage errors (exit 2) with clear messages, nothing written.
"$BIN" mkmodel --preset bogus --out "$tmp/bogus" 2>"$tmp/err"
rc=$?
[ $rc -eq 2 ] || fail "--preset bogus exited $rc, want 2"
grep -q "unknown preset 'bogus'" "$tmp/err" || fail "bogus preset message: $(cat "$tmp/err")"
[ -e "$tmp/bogus" ] && fail "--preset bogus created its folder"
"$BIN" mkmodel --preset tiny --layout nope --out "$tmp/x" 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "unknown layout 'nope'" "$tmp/err" || fail "bad layout not refused"
"$BIN" mkmodel --preset tiny 2>"$tmp/err"
[ $? -eq 2 ] && grep -q -- "--out" "$tmp/err" || fail "missing --out not refused"
"$BIN" mkmodel --out "$tmp/x" 2>"$tmp/err"
[ $? -eq 2 ] && grep -q -- "--preset" "$tmp/err" || fail "missing --preset not refused"
"$BIN" mkmodel --preset tiny --seed -1 --out "$tmp/x" 2>/dev/null
[ $? -eq 2 ] || fail "negative seed not refused"

if [ $fails -gt 0 ]; then echo "e2e_mkmodel: $fails failure(s)"; exit 1; fi
echo "e2e_mkmodel: ok"
