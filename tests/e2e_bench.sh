#!/usr/bin/env bash
# End-to-end runs of `gptoss bench` on the tiny-a fixture with tiny sizes: the
# JSON Lines carry every documented key with sane values, the table has its rows,
# and bad flags exit 2.  Speed itself is never asserted (machines are shared).
set -u
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
G="$BUILD/gptoss"
M=tests/fixtures/tiny-a
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

"$G" bench -m "$M" -p 16 -n 4 --batch 1,3 -t 1 -r 2 --ubatch 8 --membw-mib 16 --membw-seconds 0 \
    --json >"$tmp/b.jsonl" 2>"$tmp/b.err"
check "bench --json runs" "[ \$? -eq 0 ]"
check "three JSON lines" "[ \$(wc -l <$tmp/b.jsonl) -eq 3 ]"
check "every key present and sane" "node -e '
    const keys = [\"test\", \"n_prompt\", \"n_gen\", \"batch\", \"threads\", \"dense\", \"tok_s\",
        \"tok_s_user\", \"tok_s_min\", \"tok_s_max\", \"weight_bytes_per_token\", \"effective_gbs\",
        \"membw_gbs\", \"bw_fraction\", \"peak_rss_bytes\", \"kernels\", \"experts\"];
    const rows = require(\"fs\").readFileSync(\"$tmp/b.jsonl\", \"utf8\").trim().split(\"\n\").map(JSON.parse);
    const bad = [];
    for (const r of rows) {
        for (const k of keys) if (!(k in r)) bad.push(r.test + \" lacks \" + k);
        if (!(r.tok_s > 0 && r.tok_s_min <= r.tok_s && r.tok_s <= r.tok_s_max)) bad.push(r.test + \" tok/s\");
        if (Math.abs(r.tok_s_user * r.batch - r.tok_s) > 1e-6 * r.tok_s) bad.push(r.test + \" tok_s_user\");
        if (!(r.weight_bytes_per_token > 0 && r.effective_gbs > 0)) bad.push(r.test + \" bytes\");
        if (!(r.membw_gbs > 0 && Math.abs(r.bw_fraction - r.effective_gbs / r.membw_gbs) < 1e-9)) bad.push(r.test + \" membw\");
        if (!(r.peak_rss_bytes > 0) || r.dense !== \"bf16\" || r.threads !== 1 || !r.kernels) bad.push(r.test + \" misc\");
        if (r.experts !== \"MXFP4\") bad.push(r.test + \" experts \" + r.experts);
    }
    const t = rows.map(r => r.test + \"/\" + r.batch).join(\" \");
    if (t !== \"pp16/1 tg4/1 tg4/3\") bad.push(\"tests: \" + t);
    if (rows[0].n_prompt !== 16 || rows[1].n_gen !== 4 || rows[2].batch !== 3) bad.push(\"sizes\");
    /* Three sequences share some experts, so each token reads fewer weight bytes. */
    if (!(rows[2].weight_bytes_per_token < rows[1].weight_bytes_per_token)) bad.push(\"batched bytes\");
    if (bad.length) { console.error(bad.join(\"; \")); process.exit(1); }'"
check "progress on stderr" "grep -q 'warm-up' $tmp/b.err"

"$G" bench -m "$M" -p 8 -n 2 -t 1 -r 1 --no-membw >"$tmp/t.md" 2>/dev/null
check "table" "[ \$? -eq 0 ] && grep -q '^| model ' $tmp/t.md && grep -q '| pp8 |' $tmp/t.md && grep -q '| tg2 |' $tmp/t.md"
"$G" bench -m "$M" -p 8 -n 2 -t 1 -r 1 --no-membw --json >"$tmp/n.jsonl" 2>/dev/null
check "--no-membw gives null bandwidth" "node -e '
    const r = JSON.parse(require(\"fs\").readFileSync(\"$tmp/n.jsonl\", \"utf8\").split(\"\n\")[0]);
    process.exit(r.membw_gbs === null && r.bw_fraction === null ? 0 : 1)'"
"$G" bench --membw -t 1 --membw-mib 8 --membw-seconds 0 --json >"$tmp/m.jsonl" 2>/dev/null
check "--membw alone" "[ \$? -eq 0 ] && node -e '
    const r = JSON.parse(require(\"fs\").readFileSync(\"$tmp/m.jsonl\", \"utf8\"));
    process.exit(r.test === \"membw\" && r.membw_gbs > 0 ? 0 : 1)'"

"$G" bench --help >"$tmp/h.out" 2>&1
check "--help exits 0" "[ \$? -eq 0 ] && grep -q 'usage: gptoss bench' $tmp/h.out"
for bad in "--bogus" "-p abc" "--batch 0" "-r 0" "-t 1," "--dense q4" "-p 0 -n 0" "--ubatch"; do
    # shellcheck disable=SC2086  # $bad holds a flag and its value
    "$G" bench -m "$M" $bad >/dev/null 2>&1
    check "bad flag '$bad' exits 2" "[ \$? -eq 2 ]"
done
"$G" bench -m "$M" --dense q8 --no-membw -p 8 -n 4 -r 1 --json >"$tmp/q8.jsonl" 2>"$tmp/q8.err"
check "--dense q8 runs and says so" "[ \$? -eq 0 ] && node -e '
    const rs = require(\"fs\").readFileSync(\"$tmp/q8.jsonl\", \"utf8\").trim().split(\"\\n\").map(JSON.parse);
    process.exit(rs.length === 2 && rs.every(r => r.dense === \"q8\") ? 0 : 1)'"
# A GGUF file: the experts repacked at load (the default) or read in place give
# the same logits (the hash of every row of the run).
"$G" mkmodel --preset tiny --format gguf --out "$tmp/t.gguf" --seed 2 >/dev/null 2>&1
"$G" bench -m "$tmp/t.gguf" --no-membw -p 8 -n 4 --batch 2 -r 1 --json >"$tmp/g.jsonl" 2>/dev/null
"$G" bench -m "$tmp/t.gguf" --no-membw -p 8 -n 4 --batch 2 -r 1 --no-repack --json \
    >"$tmp/gn.jsonl" 2>/dev/null
check "GGUF: repacked experts and --no-repack, the same logits, JSON says which" "node -e '
    const rd = f => require(\"fs\").readFileSync(f, \"utf8\").trim().split(\"\\n\").map(JSON.parse);
    const a = rd(\"$tmp/g.jsonl\"), b = rd(\"$tmp/gn.jsonl\");
    const ok = a.length === 2 && b.length === 2 && a.every((r, i) => r.logits_hash === b[i].logits_hash) &&
        a.every(r => r.experts === \"MXFP4, repacked\") && b.every(r => r.experts === \"MXFP4, GGML blocks\");
    process.exit(ok ? 0 : 1)'"
"$G" bench -m "$tmp/nope" --no-membw >/dev/null 2>&1
check "missing model exits 1" "[ \$? -eq 1 ]"

# Outputs: "-" is stdout; a path that cannot be written fails before the model
# is looked at, with the OS reason.
"$G" bench -m "$M" -p 8 -n 0 -t 1 -r 1 --no-membw --json - >"$tmp/d.jsonl" 2>/dev/null
check "--json - writes JSON Lines to stdout" "[ \$? -eq 0 ] && node -e '
    const r = JSON.parse(require(\"fs\").readFileSync(\"$tmp/d.jsonl\", \"utf8\"));
    process.exit(r.test === \"pp8\" ? 0 : 1)'"
"$G" bench -m "$M" -p 8 -n 0 -t 1 -r 1 --no-membw --json-out - >"$tmp/d2.jsonl" 2>/dev/null
check "--json-out - is the same" "[ \$? -eq 0 ] && ! grep -q '^|' $tmp/d2.jsonl && grep -q '\"test\":\"pp8\"' $tmp/d2.jsonl"
"$G" bench -m "$M" -p 8 -n 0 -t 1 -r 1 --no-membw --json "$tmp/f.jsonl" >"$tmp/f.md" 2>/dev/null
check "--json FILE: JSON to the file, the table on stdout" "[ \$? -eq 0 ] && grep -q '| pp8 |' $tmp/f.md && grep -q '\"test\":\"pp8\"' $tmp/f.jsonl"
for opt in --json --json-out; do
    "$G" bench -m "$tmp/nope" --no-membw $opt "$tmp/no/such/dir/r.jsonl" >/dev/null 2>"$tmp/e.err"
    check "$opt to a bad path fails first, with the reason" "[ \$? -eq 1 ] && grep -q 'r.jsonl: No such file or directory' $tmp/e.err && ! grep -q 'model' $tmp/e.err"
done
# The table names the model, not the folder path.
check "model column is the model's name" "grep -q '^| tiny-a | ' $tmp/t.md && ! grep -q 'fixtures' $tmp/t.md"
check "JSON has the name and the folder" "grep -q '\"model\":\"tiny-a\"' $tmp/d.jsonl && grep -q '\"model_dir\":\"tests/fixtures/tiny-a\"' $tmp/d.jsonl"
"$G" bench -m "$tmp/nope" -t 4096 --no-membw >/dev/null 2>"$tmp/w.err"
check "--threads over the core count warns" "grep -q 'warning: --threads 4096 is more than the' $tmp/w.err"
exit $fail
