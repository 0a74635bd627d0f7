#!/usr/bin/env bash
# End-to-end checks of `gptoss render`: fixture conversations from
# tests/fixtures/harmony/cases.jsonl render to exactly their prompt_ids (from a
# file and from stdin), --text, and bad input (malformed JSON, unknown role,
# missing file, unknown option) exiting non-zero with a message.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
G="$PWD/$BUILD/gptoss"
[ -x "$G" ] || { echo "e2e_render: $G not built"; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "  ok   $1"; }
bad() { echo "  FAIL $1"; fails=$((fails + 1)); }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi; }
CASES=tests/fixtures/harmony/cases.jsonl

# Write case NAME's conversation to $T/NAME.json and its prompt_ids to $T/NAME.ids.
extract() {
    node -e '
const fs = require("fs");
const [file, name, out] = process.argv.slice(1);
for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const c = JSON.parse(line);
    if (c.name !== name) continue;
    fs.writeFileSync(out + ".json", JSON.stringify({messages: c.messages, auto_drop_analysis: c.auto_drop_analysis}));
    fs.writeFileSync(out + ".ids", c.prompt_ids.join(" "));
    process.exit(0);
}
process.exit(1);' "$CASES" "$1" "$T/$1"
}

if command -v node > /dev/null; then
    for name in spec_6_5_example history_analysis_dropped history_analysis_kept_no_drop \
                user_text_with_special_token_strings unicode_user developer_only_no_system; do
        if extract "$name"; then
            check "render $name" "$("$G" render "$T/$name.json")" "$(cat "$T/$name.ids")"
        else
            bad "case $name not found in $CASES"
        fi
    done
    check "render from stdin" "$("$G" render - < "$T/spec_6_5_example.json")" \
        "$(cat "$T/spec_6_5_example.ids")"
else
    # Without node: the spec 6.5 conversation written out by hand.
    printf '%s' '{"messages":[{"role":"system","reasoning_effort":"medium","current_date":"2025-06-28"},{"role":"user","content":"What is 2 + 2?"}]}' > "$T/spec_6_5_example.json"
fi

SPEC_IDS="200006 17360 200008 3575 553 17554 162016 11 261 4410 6439 2359 22203 656 7788 17527 558 87447 100594 25 220 1323 19 12 3218 198 6576 3521 25 220 1323 20 12 3218 12 2029 279 30377 289 25 14093 279 2 13888 18403 25 8450 11 49159 11 1721 13 21030 2804 413 7360 395 1753 3176 13 200007 200006 1428 200008 4827 382 220 17 659 220 17 30 200007 200006 173781"
check "spec 6.5 (75 ids)" "$("$G" render "$T/spec_6_5_example.json")" "$SPEC_IDS"
out=$("$G" render --text "$T/spec_6_5_example.json")
want='<|end|><|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant'
check "--text" "${out: -${#want}}" "$want"
"$G" render --help | grep -q "usage: gptoss render" && ok "--help" || bad "--help"

# Bad input: a clear message and a non-zero exit.
expect_fail() { # name, want-status, stderr-substring, command...
    local name=$1 want=$2 msg=$3
    shift 3
    "$@" > "$T/out" 2> "$T/err"
    local st=$?
    if [ $st -ne "$want" ]; then
        bad "$name: exit $st, want $want ($(head -c 200 "$T/err"))"
    elif ! grep -q -- "$msg" "$T/err"; then
        bad "$name: stderr lacks '$msg': $(head -c 200 "$T/err")"
    else
        ok "$name"
    fi
}
printf '{"messages": [' > "$T/trunc.json"
printf '{"messages": [{"role": "robot", "content": "hi"}]}' > "$T/role.json"
printf '{"messages": [{"role": "user"}]}' > "$T/nocontent.json"
printf '{"messages": [{"role": "user", "content": ["x"]}]}' > "$T/type.json"
expect_fail "malformed JSON" 1 "malformed JSON" "$G" render "$T/trunc.json"
expect_fail "unknown role" 1 'unknown role "robot"' "$G" render "$T/role.json"
expect_fail "missing content" 1 "has no content" "$G" render "$T/nocontent.json"
expect_fail "wrong type" 1 "content must be a string" "$G" render "$T/type.json"
expect_fail "missing file" 1 "cannot open" "$G" render "$T/nope.json"
expect_fail "no file argument" 2 "no conversation file" "$G" render
expect_fail "unknown option" 2 "unknown option" "$G" render --bogus "$T/role.json"
expect_fail "missing tokenizer" 1 "tokenizer" "$G" render --tokenizer "$T/none.json" "$T/spec_6_5_example.json"

if [ $fails -ne 0 ]; then
    echo "e2e_render: $fails failed"
    exit 1
fi
echo "e2e_render: all passed"
