# Shared pieces of the `gptoss serve` end-to-end scripts (sourced): start a server
# on 127.0.0.1 with --port 0 and learn its port, wait for /health, stop it with
# SIGTERM and get its exit status.  Every wait is bounded.

# serve_start LOG ARGS...: starts "$G serve ARGS --port 0" with stderr to LOG;
# sets srv_pid and srv_port (empty when it did not come up within 30 s).
serve_start() {
    local log=$1
    shift
    "$G" serve "$@" --port 0 >/dev/null 2>"$log" &
    srv_pid=$!
    srv_port=""
    for _ in $(seq 1 300); do
        srv_port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$log" 2>/dev/null)
        [ -n "$srv_port" ] && grep -q ready "$log" && return 0
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.1
    done
    srv_port=""
    return 1
}

# health PORT: the HTTP status of GET /health (000 when nothing answers in 5 s).
health() {
    curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health"
}

# rss_kib PID: the process's resident set (VmRSS) in KiB.
rss_kib() {
    sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"
}

# serve_stop [SECONDS]: SIGTERM, then waits up to SECONDS (default 20) for the
# exit; sets srv_status (124 when it did not exit, and it is then killed).
serve_stop() {
    local limit=${1:-20}
    srv_status=124
    [ -n "${srv_pid:-}" ] || return 0
    kill -TERM "$srv_pid" 2>/dev/null
    for _ in $(seq 1 $((limit * 10))); do
        if ! kill -0 "$srv_pid" 2>/dev/null; then
            wait "$srv_pid"
            srv_status=$?
            break
        fi
        sleep 0.1
    done
    [ $srv_status -eq 124 ] && kill -KILL "$srv_pid" 2>/dev/null
    srv_pid=""
}
