#!/usr/bin/env bash
# `gptoss serve` under load, on the tiny random model with --parallel 8:
#  1. batch invariance (tests/serve/invariance.mjs): 16 concurrent requests joining
#     and leaving at random steps equal their answers on the idle server;
#  2. load (tests/serve/load.mjs): 64 streaming clients for LOAD_SECONDS (default
#     120), a third disconnecting at random points; every completed stream
#     well-formed, the engine idle afterwards, RSS flat after the warm-up; then a
#     clean exit on SIGTERM;
#  3. the same load for LOAD_SECONDS_SAN (default 20) against a build with
#     SAN=address,undefined (only the binary, in $BUILD-san) with LeakSanitizer
#     on: no leak and no sanitizer report at exit.  LOAD_SECONDS_SAN=0 skips it, and
#     so does a $BUILD that is a sanitizer build already.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
LOAD_SECONDS=${LOAD_SECONDS:-120}
LOAD_SECONDS_SAN=${LOAD_SECONDS_SAN:-20}
source tests/serve/lib.sh
tmp=$(mktemp -d)
srv_pid=""
trap '[ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
# Sanitizer reports, failed steps and crashes in a server log (libmicrohttpd's own
# lines about clients that went away are expected).
clean_log() { ! grep -qiE 'sanitizer|runtime error|step failed|abort|assert' "$1"; }

if ! command -v node >/dev/null || [ ! -f node_modules/openai/package.json ]; then
    echo "FAIL the openai npm client is missing (run make deps)"
    exit 1
fi
G="$PWD/$BUILD/gptoss"
M="$tmp/tiny"
"$G" mkmodel --preset tiny --out "$M" --seed 3 >/dev/null 2>&1
ARGS=(-m "$M" --date none -t 2 --parallel 8 --max-seq-len 512)

# The RSS check runs against glibc's default arenas: the server hands freed
# memory back (malloc_trim) each time it goes idle, so a burst of connections
# must not leave the RSS higher.
# Under AddressSanitizer the RSS says nothing (its quarantine); LeakSanitizer does.
asan=0
ldd "$G" 2>/dev/null | grep -q libasan && asan=1
serve_start "$tmp/err" "${ARGS[@]}"
check "the server starts" "[ -n \"$srv_port\" ]"
if [ -n "$srv_port" ]; then
    timeout 300 node tests/serve/invariance.mjs "http://127.0.0.1:$srv_port"
    check "batch invariance" "[ \$? -eq 0 ]"
    LOAD_RSS_CHECK=$((1 - asan)) timeout $((LOAD_SECONDS + 180)) node tests/serve/load.mjs \
        "http://127.0.0.1:$srv_port" "$srv_pid" "$LOAD_SECONDS"
    check "64 streaming clients for $LOAD_SECONDS s" "[ \$? -eq 0 ]"
    check "GET /health answers 200 afterwards" "[ \"\$(health $srv_port)\" = 200 ]"
fi
serve_stop 30
check "SIGTERM stops the server cleanly (exit 0)" "[ $srv_status -eq 0 ]"
check "no sanitizer report, failed step or crash on stderr" "clean_log '$tmp/err'"
[ $fail -eq 0 ] || { echo "--- server stderr"; tail -n 20 "$tmp/err"; }

# A build that is itself ASan's (make test SAN=...) has just been checked above.
if [ $asan -eq 1 ]; then
    echo "ok   (the server above is a sanitizer build: no second run)"
elif [ "$LOAD_SECONDS_SAN" -gt 0 ]; then
    SB="$BUILD-san"
    if make --no-print-directory BUILD="$SB" SAN=address,undefined -j2 "$SB/gptoss" \
        >"$tmp/make" 2>&1; then
        G="$PWD/$SB/gptoss"
        export ASAN_OPTIONS="detect_leaks=1:log_path=$tmp/asan"
        export UBSAN_OPTIONS="print_stacktrace=1:log_path=$tmp/asan"
        serve_start "$tmp/err-san" "${ARGS[@]}"
        check "the sanitizer build starts" "[ -n \"$srv_port\" ]"
        if [ -n "$srv_port" ]; then
            LOAD_RSS_CHECK=0 LOAD_WARM_SECONDS=5 timeout $((LOAD_SECONDS_SAN + 180)) node tests/serve/load.mjs \
                "http://127.0.0.1:$srv_port" "$srv_pid" "$LOAD_SECONDS_SAN"
            check "64 streaming clients for $LOAD_SECONDS_SAN s under ASan/UBSan" "[ \$? -eq 0 ]"
        fi
        serve_stop 60
        check "ASan build: SIGTERM, exit 0 (LeakSanitizer found nothing)" "[ $srv_status -eq 0 ]"
        check "ASan build: no sanitizer report" "! ls $tmp/asan* >/dev/null 2>&1 && clean_log '$tmp/err-san'"
        if [ $fail -ne 0 ]; then
            echo "--- sanitizer reports and server stderr"
            cat "$tmp"/asan* 2>/dev/null | head -n 60
            tail -n 20 "$tmp/err-san"
        fi
    else
        tail -n 20 "$tmp/make"
        check "the sanitizer build of gptoss" false
    fi
fi
exit $fail
