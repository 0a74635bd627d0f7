#!/usr/bin/env bash
# End-to-end checks of the `gptoss` command line outside generate, chat and bench:
# --version, help texts, `logits -o` to stdout and to paths that cannot be
# written, and the figures `info` prints.
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
G="$BUILD/gptoss"
F=tests/fixtures/tiny-a
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

# --version / -V: the version and the kernels of this build.
for v in --version -V; do
    "$G" $v >"$tmp/v.out" 2>&1
    check "$v" "[ \$? -eq 0 ] && grep -q '^gptoss [0-9][0-9.]*' $tmp/v.out && grep -q '^kernels: [a-z0-9]* (built: ref' $tmp/v.out"
done
"$G" --help >"$tmp/h.out" 2>&1
check "gptoss --help lists --version" "grep -q -- '-V, --version' $tmp/h.out"

# Every subcommand's help lists -h.
for c in generate chat bench logits info mkmodel tokenize detokenize render; do
    "$G" $c --help >"$tmp/h.out" 2>&1
    check "$c --help lists -h" "[ \$? -eq 0 ] && grep -Eq -- '-h, --help|--help, -h' $tmp/h.out"
    "$G" $c -h >"$tmp/h2.out" 2>&1
    check "$c -h is --help" "[ \$? -eq 0 ] && cmp -s $tmp/h.out $tmp/h2.out"
done

# logits: "-o -" writes the floats to stdout, the same bytes as a file.
"$G" logits -m $F --tokens 6,428,8 -o "$tmp/l.f32" 2>/dev/null
"$G" logits -m $F --tokens 6,428,8 -o - >"$tmp/l.stdout" 2>"$tmp/l.err"
check "logits -o - writes to stdout" "[ \$? -eq 0 ] && [ \$(stat -c %s $tmp/l.stdout) -eq $((3 * 1000 * 4)) ] \
    && cmp -s $tmp/l.f32 $tmp/l.stdout && grep -q 'standard output' $tmp/l.err"
# A path that cannot be written fails at once (before the model is even looked
# for), with the OS reason; a failed run leaves no output file.
"$G" logits -m "$tmp/nope" --tokens 1,2 -o "$tmp/no/such/dir/l.f32" >/dev/null 2>"$tmp/e.err"
check "logits -o to a bad path fails first" "[ \$? -eq 1 ] && grep -q 'l.f32: No such file or directory' $tmp/e.err \
    && ! grep -q 'model' $tmp/e.err"
"$G" logits -m $F --tokens 1,2,5000 -o "$tmp/bad.f32" >/dev/null 2>&1
check "logits failure leaves no file" "[ \$? -eq 1 ] && [ ! -e $tmp/bad.f32 ]"

# info: parameter counts with a unit that fits.
"$G" info -m $F >"$tmp/i.out" 2>&1
check "info parameters in M" "grep -Eq '^parameters: +1\.85 M total, 1\.1[0-9] M active per token' $tmp/i.out"

# A FIFO given as the tokenizer is refused at once, naming what it is.
mkfifo "$tmp/fifo"
echo '{"messages":[{"role":"user","content":"hi"}]}' >"$tmp/c.json"
timeout 20 "$G" render --tokenizer "$tmp/fifo" "$tmp/c.json" >/dev/null 2>"$tmp/f.err"
check "--tokenizer FIFO is refused" "[ \$? -eq 1 ] && grep -q 'FIFO (named pipe), not a regular file' $tmp/f.err"
exit $fail
