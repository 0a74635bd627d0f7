#!/usr/bin/env bash
# End-to-end checks of `gptoss serve` over real HTTP on 127.0.0.1 with the
# official openai npm client (tests/serve/client.mjs): answers, streaming,
# greedy answers equal to `gptoss generate`'s, logprobs, text completions,
# tool_choice, /metrics, error objects, concurrent requests equal to their solo
# answers, and a clean exit on SIGTERM.  Every wait
# is bounded.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
G="$PWD/$BUILD/gptoss"
tmp=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

if ! command -v node >/dev/null || [ ! -f node_modules/openai/package.json ]; then
    echo "FAIL the openai npm client is missing (run make deps)"
    exit 1
fi
# The fixture models have a small vocabulary; harmony needs the full one.
M="$tmp/tiny"
"$G" mkmodel --preset tiny --out "$M" --seed 3 >/dev/null 2>&1
ARGS="--date none -t 2"
greedy=$("$G" generate -m "$M" $ARGS -p Hello --temperature 0 --max-tokens 8 --no-membw \
    --json - 2>/dev/null | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>
    process.stdout.write(JSON.parse(s).users[0].text))')
check "gptoss generate gives a reference answer" "[ -n \"\$greedy\" ]"

"$G" serve -m "$M" $ARGS --port 0 --parallel 4 --max-seq-len 256 --api-key test-key \
    >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$tmp/err" 2>/dev/null)
    [ -n "$port" ] && break
    sleep 0.1
done
check "listens on 127.0.0.1 by default" "[ -n \"$port\" ]"
ok=0
for _ in $(seq 1 100); do
    [ -n "$port" ] || break
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ]; then
        ok=1
        break
    fi
    sleep 0.1
done
check "GET /health answers 200 once loaded" "[ $ok -eq 1 ]"
if [ $ok -eq 1 ]; then
    ids=$(printf 'The sky is' | "$G" tokenize)
    timeout 180 node tests/serve/client.mjs "http://127.0.0.1:$port" test-key "$greedy" "$ids"
    check "openai client checks" "[ \$? -eq 0 ]"
fi
kill -TERM "$pid" 2>/dev/null
st=124
for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; st=$?; break; fi
    sleep 0.1
done
pid=""
check "SIGTERM stops the server cleanly (exit 0)" "[ $st -eq 0 ]"

# A full queue: one slot and no waiting room, so a second request while the first
# generates is 503 with Retry-After.
"$G" serve -m "$M" $ARGS --port 0 --parallel 1 --max-queue 0 >"$tmp/out2" 2>"$tmp/err2" &
pid=$!
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$tmp/err2" 2>/dev/null)
    [ -n "$port" ] && grep -q ready "$tmp/err2" && break
    sleep 0.1
done
URL="http://127.0.0.1:$port/v1/chat/completions"
long='{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 100000'
short='{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}'
curl -s -m 60 -o "$tmp/long.json" -d "$long}" "$URL" &
cpid=$!
sleep 1
code=$(curl -s -m 20 -D "$tmp/h503" -o "$tmp/b503" -w '%{http_code}' -d "$short" "$URL")
check "queue full: 503 with Retry-After and an error object" "[ '$code' = 503 ] && \
    grep -qi '^retry-after:' $tmp/h503 && grep -q '\"error\"' $tmp/b503"

# SIGTERM ends the request in flight: it is answered, and the exit is clean.
kill -TERM "$pid" 2>/dev/null
st=124
for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; st=$?; break; fi
    sleep 0.1
done
wait "$cpid"
check "SIGTERM with a request in flight: answered, exit 0" \
    "[ $st -eq 0 ] && grep -q chat.completion $tmp/long.json"

# A client that goes away (streaming or not) frees the only slot for the next.
"$G" serve -m "$M" $ARGS --port 0 --parallel 1 --max-queue 0 >"$tmp/out3" 2>"$tmp/err3" &
pid=$!
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$tmp/err3" 2>/dev/null)
    [ -n "$port" ] && grep -q ready "$tmp/err3" && break
    sleep 0.1
done
URL="http://127.0.0.1:$port/v1/chat/completions"
for mode in stream plain; do
    b="$long}"
    [ $mode = stream ] && b="$long, \"stream\": true}"
    curl -s -m 1 -o /dev/null -d "$b" "$URL"
    # The slot is free once the server notices; a busy machine may take a while
    # (the long request alone would hold it for a minute).
    for _ in $(seq 1 20); do
        sleep 0.5
        code=$(curl -s -m 20 -o /dev/null -w '%{http_code}' -d "$short" "$URL")
        [ "$code" = 200 ] && break
    done
    check "a $mode client that disconnects is cancelled (the slot is free)" "[ '$code' = 200 ]"
done
kill -TERM "$pid" 2>/dev/null
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
pid=""

[ $fail -eq 0 ] || { echo "--- server stderr"; cat "$tmp/err" "$tmp/err2" "$tmp/err3" 2>/dev/null; }
exit $fail
