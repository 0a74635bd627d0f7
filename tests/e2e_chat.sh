#!/usr/bin/env bash
# End-to-end runs of `gptoss chat` on a tiny random-weight model: piped sessions
# (blank lines, continued lines, --stop, --raw, log lines, help) and, under tmux,
# a real terminal (long and bracketed pastes, line editing, Ctrl-C and Ctrl-D).
# Every wait is bounded, so a broken chat fails a check instead of hanging.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
G="$PWD/$BUILD/gptoss"
tmp=$(mktemp -d)
# One tmux server per terminal session, all killed at the end.
sock="gptoss-e2e-chat-$$"
T="tmux -L $sock -f /dev/null"
trap 'for s in $socks; do tmux -L "$s" kill-server >/dev/null 2>&1; done; rm -rf "$tmp"' EXIT
socks=""
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

M="$tmp/m"
"$G" mkmodel --preset tiny --out "$M" --seed 3 >/dev/null 2>&1
ARGS="--temperature 0 --date none -t 1"

# The prompt tokens of the first answer of a piped session (the whole conversation
# rendered), which tells whether a message arrived whole.
prompt_tokens() { sed -n 's/.*reused [0-9]* of \([0-9]*\) prompt tokens.*/\1/p' "$1" | sed -n "${2:-1}p"; }
answers() { grep -c '^\[[0-9]* tokens' "$1"; }

# --- piped stdin ----------------------------------------------------------
printf 'Hello\n   \n\t\nline one\\\nline two\n/quit\n' | "$G" chat -m "$M" $ARGS --max-tokens 3 \
    >"$tmp/p.out" 2>"$tmp/p.err"
check "piped session exits 0" "[ \$? -eq 0 ]"
check "blank lines are not sent" "[ \$(answers $tmp/p.err) -eq 2 ]"
printf 'line one\nline two\n' >"$tmp/two.txt"
check "a trailing backslash continues the message" "[ \$(answers $tmp/p.err) -eq 2 ] && \
    [ \"\$(prompt_tokens $tmp/p.err 2)\" -gt \"\$(prompt_tokens $tmp/p.err 1)\" ]"

# A line far over the terminal's 4095 bytes (5400 bytes, about 900 tokens).
long=$(for i in $(seq 1 450); do printf 'hello world '; done)
printf '%s\n' "$long" | "$G" chat -m "$M" $ARGS --max-tokens 1 >/dev/null 2>"$tmp/long.err"
long_tokens=$(prompt_tokens "$tmp/long.err")
printf 'Hello\n' | "$G" chat -m "$M" $ARGS --max-tokens 1 >/dev/null 2>"$tmp/hello.err"
hello_tokens=$(prompt_tokens "$tmp/hello.err")
printf 'first line\\\nsecond line\n' | "$G" chat -m "$M" $ARGS --max-tokens 1 >/dev/null 2>"$tmp/ml.err"
ml_tokens=$(prompt_tokens "$tmp/ml.err")
check "reference counts" "[ -n '$long_tokens' ] && [ -n '$hello_tokens' ] && [ -n '$ml_tokens' ] && [ $long_tokens -gt 800 ]"

# --stop: the answer streams without the stop string (the model's greedy answer
# to Hello starts "olella?" and goes on with "yang bolup").
printf 'Hello\n' | "$G" chat -m "$M" $ARGS --max-tokens 8 >"$tmp/nostop.out" 2>/dev/null
printf 'Hello\n' | "$G" chat -m "$M" $ARGS --max-tokens 8 --stop bolup >"$tmp/stop.out" 2>/dev/null
check "the answer without --stop has the text" "grep -q 'yang bolup' $tmp/nostop.out"
check "--stop hides the stop string" "grep -q 'olella' $tmp/stop.out && ! grep -q 'bolup' $tmp/stop.out"

# --show-reasoning labels the final answer only after shown reasoning (the
# random model writes no analysis channel).
printf 'Hello\n' | "$G" chat -m "$M" $ARGS --max-tokens 8 --show-reasoning >"$tmp/sr.out" 2>/dev/null
check "--show-reasoning without reasoning: no [final] label" "grep -q 'olella' $tmp/sr.out && ! grep -q '\[final\]' $tmp/sr.out"

# --raw prints everything generated, as the model wrote it: the stop string too.
printf 'Hello\n' | "$G" chat -m "$M" $ARGS --max-tokens 8 --stop bolup --raw >"$tmp/raw.out" 2>/dev/null
check "--raw prints the raw text" "grep -q 'yang bolup' $tmp/raw.out"

# Engine notes only with -v.  Here: the first answer runs past the sliding-window
# ring (16 + 1024 slots), so the cache cannot be rewound for the next turn, whose
# answer the short context then keeps short.  (The load's own line, the dense
# matrices copied out of the mapping, comes before the conversation.)
LOGARGS="--max-tokens 1050 --max-seq-len 1200"
printf 'Hello\nMore\n' | "$G" chat -m "$M" $ARGS $LOGARGS >/dev/null 2>"$tmp/log.err"
check "no engine log lines between turns" "[ \$(answers $tmp/log.err) -eq 2 ] && ! grep 'gptoss: info' $tmp/log.err | grep -qv ': info: copied [0-9]* dense matrices'"
printf 'Hello\nMore\n' | "$G" chat -m "$M" $ARGS $LOGARGS -v >/dev/null 2>"$tmp/logv.err"
check "-v shows them" "grep -q 'gptoss: info: cannot reuse' $tmp/logv.err"

# Help: chat's own description, its commands and the shared options.
"$G" chat --help >"$tmp/h.out" 2>&1
check "chat --help" "[ \$? -eq 0 ] && grep -q 'usage: gptoss chat' $tmp/h.out && grep -q '/show-reasoning' $tmp/h.out \
    && grep -q 'backslash' $tmp/h.out && grep -q -- '-h, --help' $tmp/h.out && grep -q -- '--temperature' $tmp/h.out"

# --- a terminal (tmux) ----------------------------------------------------
if ! command -v tmux >/dev/null 2>&1; then
    echo "skip terminal checks: tmux is not installed"
    exit $fail
fi

# Poll (at most 20 s) until file $1 has $3 (default 1) lines matching $2.  After
# one wait has timed out the others give up at once, so a broken chat costs 20 s.
stuck=0
wait_file() {
    local i=0 c
    while [ $stuck -eq 0 ] && [ $i -lt 200 ]; do
        c=$(grep -c -- "$2" "$1" 2>/dev/null)
        [ "${c:-0}" -ge "${3:-1}" ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    stuck=1
    return 1
}
# Poll until the pane's last non-empty line is the empty prompt "> ".
wait_prompt() {
    local i=0
    while [ $stuck -eq 0 ] && [ $i -lt 200 ]; do
        [ "$($T capture-pane -p 2>/dev/null | grep -v '^$' | tail -1)" = ">" ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    stuck=1
    return 1
}
# Start a chat in a fresh 200x50 terminal; stderr to $tmp/$1.err, exit status to
# $tmp/$1.rc, then "AFTER" where the shell would print its next prompt.
start_chat() {
    local name=$1
    shift
    sock="gptoss-e2e-chat-$$-$name"
    socks="$socks $sock"
    T="tmux -L $sock -f /dev/null"
    $T new-session -d -x 200 -y 50 \
        "'$G' chat -m '$M' $ARGS $* 2>'$tmp/$name.err'; echo \$? >'$tmp/$name.rc'; printf AFTER; sleep 60"
    wait_prompt
}
keys() { $T send-keys "$@"; }

# The long line, typed (or pasted without brackets) in one go.
start_chat long --max-tokens 1
keys -l "$long"
keys Enter
wait_file "$tmp/long.err" '^\[[0-9]* tokens'
check "a long line arrives whole" "[ \"\$(prompt_tokens $tmp/long.err)\" = '$long_tokens' ]"
wait_prompt
keys C-d
wait_file "$tmp/long.rc" .
check "Ctrl-D at the prompt exits 0" "[ \"\$(cat $tmp/long.rc 2>/dev/null)\" = 0 ]"
check "Ctrl-D ends the line" "$T capture-pane -p | grep -q '^AFTER'"

# A bracketed paste with a newline is one message, newlines kept.
start_chat paste --max-tokens 1
$T set-buffer -b p "$(printf 'first line\nsecond line')"
$T paste-buffer -p -b p
keys Enter
wait_file "$tmp/paste.err" '^\[[0-9]* tokens'
sleep 0.3
check "a pasted block is one message" "[ \$(answers $tmp/paste.err) -eq 1 ] && [ \"\$(prompt_tokens $tmp/paste.err)\" = '$ml_tokens' ]"
# The same message typed with a trailing backslash, in a new conversation.
wait_prompt
keys -l '/reset'
keys Enter
wait_file "$tmp/paste.err" 'conversation reset'
keys -l 'first line\'
keys Enter
keys -l 'second line'
keys Enter
wait_file "$tmp/paste.err" '^\[[0-9]* tokens' 2
sleep 0.3
check "a trailing backslash continues a typed line" "[ \$(answers $tmp/paste.err) -eq 2 ] && [ \"\$(prompt_tokens $tmp/paste.err 2)\" = '$ml_tokens' ]"
# Editing: Ctrl-U, Backspace and Ctrl-W leave "Hello".
wait_prompt
keys -l '/reset'
keys Enter
wait_file "$tmp/paste.err" 'conversation reset' 2
keys -l 'junk words'
keys C-u
keys -l 'Hellx'
keys BSpace
keys -l 'o bad'
keys C-w
keys BSpace
keys Enter
wait_file "$tmp/paste.err" '^\[[0-9]* tokens' 3
check "Ctrl-U, Backspace and Ctrl-W edit the line" "[ \"\$(prompt_tokens $tmp/paste.err 3)\" = '$hello_tokens' ]"
# Ctrl-C at the prompt leaves with 130.
wait_prompt
keys C-c
wait_file "$tmp/paste.rc" .
check "Ctrl-C at the prompt exits 130" "[ \"\$(cat $tmp/paste.rc 2>/dev/null)\" = 130 ]"

# Ctrl-D sends typed text; Ctrl-C during the (slow, --ref) prefill stops the
# answer, drops the unanswered message, and the chat goes on.
slow=$(for i in $(seq 1 1200); do printf 'w%d ' "$i"; done)
start_chat cancel --max-tokens 3 --ref --max-seq-len 8192
keys -l "$slow"
keys C-d
sleep 1
keys C-c
wait_file "$tmp/cancel.err" '^\[[0-9]* tokens'
wait_prompt
keys -l 'Hello'
keys Enter
wait_file "$tmp/cancel.err" '^\[[0-9]* tokens' 2
check "Ctrl-C stops the answer" "grep -q 'aborted' $tmp/cancel.err"
check "a stopped empty answer leaves no turn behind" "[ \"\$(prompt_tokens $tmp/cancel.err 2)\" = '$hello_tokens' ]"
wait_prompt
keys -l '   '
keys Enter
wait_prompt
keys -l '/quit'
keys Enter
wait_file "$tmp/cancel.rc" .
check "spaces only are not sent; /quit exits 0" "[ \"\$(answers $tmp/cancel.err)\" = 2 ] && [ \"\$(cat $tmp/cancel.rc)\" = 0 ]"
exit $fail
