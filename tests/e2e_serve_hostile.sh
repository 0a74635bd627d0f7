#!/usr/bin/env bash
# `gptoss serve` under hostile clients (tests/serve/hostile.mjs): slow senders
# that must not hold up others and are cut off by the idle timeout, huge headers,
# invalid UTF-8, 10 MB bodies, hundreds of connections opened and dropped.
# Afterwards the server must still answer /health and exit cleanly on SIGTERM,
# and nothing may have gone wrong on its side (no sanitizer report or failed step).
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
G="$PWD/$BUILD/gptoss"
source tests/serve/lib.sh
tmp=$(mktemp -d)
srv_pid=""
trap '[ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
IDLE=10 # SERVE_IDLE_TIMEOUT in app/server.c

if ! command -v node >/dev/null; then
    echo "FAIL node is missing (run make deps)"
    exit 1
fi
M="$tmp/tiny"
"$G" mkmodel --preset tiny --out "$M" --seed 3 >/dev/null 2>&1
serve_start "$tmp/err" -m "$M" --date none -t 2 --parallel 4 --max-seq-len 512
check "the server starts" "[ -n \"$srv_port\" ]"
if [ -n "$srv_port" ]; then
    kind=plain
    ldd "$G" 2>/dev/null | grep -q libasan && kind=asan
    timeout 60 node tests/serve/hostile.mjs "$srv_port" "$srv_pid" $IDLE $kind
    check "hostile clients" "[ \$? -eq 0 ]"
    check "GET /health still answers 200" "[ \"\$(health $srv_port)\" = 200 ]"
fi
serve_stop 20
check "SIGTERM stops the server cleanly (exit 0)" "[ $srv_status -eq 0 ]"
# (libmicrohttpd's own lines about clients that went away are expected.)
check "no sanitizer report, failed step or crash on stderr" \
    "! grep -qiE 'sanitizer|runtime error|step failed|abort|assert' '$tmp/err'"
[ $fail -eq 0 ] || { echo "--- server stderr"; tail -n 40 "$tmp/err"; }
exit $fail
