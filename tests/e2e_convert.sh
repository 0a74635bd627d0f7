#!/usr/bin/env bash
# End-to-end check of `gptoss convert` and `gptoss mkmodel --format gguf`: the tiny
# fixture in both layouts and a tiny random model become GGUF files that `info`
# reads with the right tensor groups, `logits` gives the same figures from the
# GGUF as from the safetensors checkpoint, and bad arguments fail clearly with
# exit status 2 (usage) or 1 (run time), leaving no file behind.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
BIN="$BUILD/gptoss"
FIX=tests/fixtures/tiny-a
tmp=$(mktemp -d /tmp/gpo_e2e_convert.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }

"$BIN" convert --help | grep -q -- "--dense" || fail "convert --help does not describe --dense"
"$BIN" mkmodel --help | grep -q -- "--format" || fail "mkmodel --help does not describe --format"

# Both layouts of the fixture, with progress on stderr.
"$BIN" convert "$FIX" "$tmp/hf.gguf" 2>"$tmp/log" || fail "convert HF layout: $(cat "$tmp/log")"
grep -q "MB/s" "$tmp/log" || fail "no progress report on stderr"
"$BIN" convert -q "$FIX/original" "$tmp/orig.gguf" 2>/dev/null || fail "convert original layout"
"$BIN" convert -q --dense q8 "$FIX" "$tmp/q8.gguf" 2>/dev/null || fail "convert --dense q8"
[ -e "$tmp/hf.gguf.tmp" ] && fail "temporary file left behind"
head -c 4 "$tmp/hf.gguf" | grep -q GGUF || fail "hf.gguf does not start with GGUF"

# info reads them: 79 tensors, layout gguf, the fixture's shape.
"$BIN" info -m "$tmp/hf.gguf" >"$tmp/info" 2>&1 || fail "info on the GGUF: $(cat "$tmp/info")"
grep -q "gguf" "$tmp/info" || fail "info does not name the gguf layout"
grep -Eq "^tensors: +79" "$tmp/info" || fail "info tensor count: $(grep tensors "$tmp/info")"
grep -Eq "^layers: +4" "$tmp/info" || fail "info layers: $(grep layers "$tmp/info")"
# The types of each group, as stored and after --dense q8.
grep -Eq "^  attention .* BF16 " "$tmp/info" || fail "info attention type: $(grep attention "$tmp/info")"
grep -Eq "^  experts .* MXFP4, GGML blocks" "$tmp/info" || fail "info experts type: $(grep experts "$tmp/info")"
"$BIN" info -m "$tmp/q8.gguf" >"$tmp/info8" 2>&1 || fail "info on the Q8_0 GGUF"
grep -Eq "^  attention .* Q8_0 " "$tmp/info8" || fail "Q8_0 attention type: $(grep attention "$tmp/info8")"
grep -Eq "^  unembedding .* Q8_0" "$tmp/info8" || fail "Q8_0 unembedding type: $(grep unembedding "$tmp/info8")"
grep -Eq "^  embedding .* BF16" "$tmp/info8" || fail "Q8_0 file embedding type: $(grep -w embedding "$tmp/info8")"
"$BIN" info -m "$FIX" --dense q8 >"$tmp/info9" 2>&1 || fail "info --dense q8"
grep -Eq "^  attention .* Q8_0 " "$tmp/info9" || fail "--dense q8 attention type: $(grep attention "$tmp/info9")"
grep -Eq "^  experts .* MXFP4 \(" "$tmp/info9" || fail "safetensors experts type: $(grep experts "$tmp/info9")"
# Q8_0 dense matrices are smaller than BF16 ones.
s_bf=$(stat -c %s "$tmp/hf.gguf"); s_q8=$(stat -c %s "$tmp/q8.gguf")
[ "$s_q8" -lt "$s_bf" ] || fail "q8 file ($s_q8 B) not smaller than bf16 ($s_bf B)"

# The same logits from the GGUF as from the checkpoint, prefill and incremental.
ids=1,5,17,200,999,3,42,7
for mode in prefill incremental; do
    "$BIN" logits -m "$FIX" --tokens $ids --mode $mode -o "$tmp/st.$mode" 2>/dev/null ||
        fail "logits safetensors $mode"
    for f in hf orig; do
        "$BIN" logits -m "$tmp/$f.gguf" --tokens $ids --mode $mode -o "$tmp/$f.$mode" 2>/dev/null ||
            fail "logits $f.gguf $mode"
        cmp -s "$tmp/st.$mode" "$tmp/$f.$mode" || fail "$f.gguf $mode logits differ from safetensors"
    done
done

# mkmodel --format gguf: tiny, both dense types, the tokenizer inside.
"$BIN" mkmodel --preset tiny --format gguf --out "$tmp/t.gguf" -q || fail "mkmodel gguf bf16"
"$BIN" mkmodel --preset tiny --format gguf --dense q8 --out "$tmp/tq.gguf" -q ||
    fail "mkmodel gguf q8"
"$BIN" info -m "$tmp/t.gguf" >"$tmp/info" 2>&1 || fail "info on mkmodel's GGUF: $(cat "$tmp/info")"
grep -Eq "^vocabulary: +201088" "$tmp/info" || fail "mkmodel GGUF vocabulary: $(grep vocab "$tmp/info")"
grep -q "tokenizer.ggml.tokens" "$tmp/t.gguf" || fail "no tokenizer.ggml.tokens in mkmodel's GGUF"
grep -q "tokenizer.ggml.merges" "$tmp/t.gguf" || fail "no tokenizer.ggml.merges in mkmodel's GGUF"

# Errors: exit 2 for usage, 1 at run time; the message names the problem.
expect() { # expect STATUS PATTERN -- command...
    local want=$1 pat=$2; shift 3
    "$@" >/dev/null 2>"$tmp/err"; local rc=$?
    [ $rc -eq "$want" ] || fail "'$*' exited $rc, want $want: $(cat "$tmp/err")"
    grep -q -- "$pat" "$tmp/err" || fail "'$*' message: $(cat "$tmp/err")"
}
expect 2 "bf16 or q8" -- "$BIN" convert --dense q4 "$FIX" "$tmp/x.gguf"
expect 2 "SRC and DST" -- "$BIN" convert "$FIX"
expect 2 "unknown option" -- "$BIN" convert --frobnicate "$FIX" "$tmp/x.gguf"
expect 1 "already exists" -- "$BIN" convert "$FIX" "$tmp/hf.gguf"
expect 1 "/nonexistent" -- "$BIN" convert /nonexistent "$tmp/x.gguf"
expect 1 "not a safetensors checkpoint" -- "$BIN" convert "$tmp/hf.gguf" "$tmp/x.gguf"
expect 1 "already exists" -- "$BIN" mkmodel --preset tiny --format gguf --out "$tmp/t.gguf"
expect 2 "bf16 or q8" -- "$BIN" mkmodel --preset tiny --format gguf --dense f8 --out "$tmp/x.gguf"
expect 2 "unknown format" -- "$BIN" mkmodel --preset tiny --format ggml --out "$tmp/x.gguf"
expect 2 "--layout is for" -- "$BIN" mkmodel --preset tiny --format gguf --layout hf --out "$tmp/x.gguf"
[ -e "$tmp/x.gguf" ] && fail "a failed command left x.gguf"
"$BIN" convert -q --force "$FIX" "$tmp/hf.gguf" 2>/dev/null || fail "--force did not replace the file"

if [ $fails -eq 0 ]; then echo "e2e_convert: all checks passed"; exit 0; fi
echo "e2e_convert: $fails check(s) failed"; exit 1
