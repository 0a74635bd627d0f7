#!/usr/bin/env node
// Turns the raw outputs of bench/compare.sh into one Markdown table comparing
// llama.cpp and gptoss on the same GGUF files.
//
//   node bench/compare.js RAWDIR          the report on stdout
//
// RAWDIR holds:
//   meta.txt   "key<TAB>value" lines: date, cpu, cores, memory, flags, llama,
//              gptoss (shown in the header, in that order; unknown keys too)
//   runs.txt   "model<TAB>kind<TAB>file<TAB>status<TAB>command" lines, in run
//              order; kind is one of membw, load, llama-bench, gptoss-bench,
//              llama-batched, gptoss-batch; file is relative to RAWDIR
// and the files runs.txt names:
//   llama-bench    `llama-bench -o json`: one JSON array of tests
//   llama-batched  `llama-batched-bench --output-format jsonl`: JSON lines among
//                  other log lines
//   gptoss-*       `gptoss bench --json -`: JSON Lines, one object per test
//   membw          `gptoss bench --membw --json -`: one object per thread count
// A run whose status is not 0, or whose output has no usable test, shows as
// "failed" in the table, so one engine's failure still leaves the other's
// figures readable.
'use strict';

const fs = require('fs');
const path = require('path');

function fail(msg) {
    process.stderr.write(`compare.js: ${msg}\n`);
    process.exit(1);
}

function readTsv(file, nFields) {
    if (!fs.existsSync(file)) fail(`${file} is missing`);
    const rows = [];
    fs.readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
        if (line.trim() === '') return;
        const f = line.split('\t');
        if (f.length < nFields) fail(`${file}:${i + 1}: expected ${nFields} tab-separated fields, got ${f.length}`);
        // The last field (a command) may itself hold tabs.
        rows.push(f.slice(0, nFields - 1).concat([f.slice(nFields - 1).join('\t')]));
    });
    return rows;
}

// Every line that parses as a JSON object; log lines around them are skipped.
function jsonLines(text) {
    const out = [];
    for (const line of text.split('\n')) {
        const s = line.trim();
        if (!s.startsWith('{')) continue;
        try {
            out.push(JSON.parse(s));
        } catch (e) {
            // a log line that happens to start with a brace
        }
    }
    return out;
}

// llama-bench -o json prints one array; a run cut short may leave it unclosed,
// so fall back to the objects it did print whole.
function jsonArray(text) {
    const start = text.indexOf('[');
    if (start < 0) return [];
    try {
        const v = JSON.parse(text.slice(start));
        return Array.isArray(v) ? v : [];
    } catch (e) {
        const objs = [];
        let depth = 0, begin = -1, inStr = false, esc = false;
        for (let i = start + 1; i < text.length; i++) {
            const c = text[i];
            if (inStr) {
                if (esc) esc = false;
                else if (c === '\\') esc = true;
                else if (c === '"') inStr = false;
                continue;
            }
            if (c === '"') inStr = true;
            else if (c === '{') { if (depth++ === 0) begin = i; }
            else if (c === '}' && --depth === 0) {
                try { objs.push(JSON.parse(text.slice(begin, i + 1))); } catch (e2) { /* skip */ }
            }
        }
        return objs;
    }
}

function testName(nPrompt, nGen) {
    if (nPrompt > 0 && nGen === 0) return `pp${nPrompt}`;
    if (nGen > 0 && nPrompt === 0) return `tg${nGen}`;
    return `pp${nPrompt}+tg${nGen}`;
}

// Each parser returns rows {section, test, threads, batch, tok_s, spread}, plus
// model (how the engine describes the file) where the output says, and depth
// (prompt tokens before decoding) for llama-batched-bench.  Rows of both engines
// with the same section, test, threads and batch share a table line.
const parsers = {
    'llama-bench': (text) => jsonArray(text).filter((t) => typeof t.avg_ts === 'number').map((t) => ({
        section: 'single', test: testName(t.n_prompt, t.n_gen), threads: t.n_threads, batch: 1,
        tok_s: t.avg_ts, spread: `± ${fmt(t.stddev_ts || 0)}`,
        model: `${t.model_type}, ${gb(t.model_size)}, ${(t.model_n_params / 1e9).toFixed(2)} B parameters`,
    })),
    'llama-batched': (text) => jsonLines(text).filter((t) => typeof t.speed_tg === 'number').map((t) => ({
        section: 'batch', test: `tg${t.tg}`, threads: t.n_threads, batch: t.pl,
        tok_s: t.speed_tg, spread: '', depth: t.pp,
    })),
    'gptoss-bench': (text) => jsonLines(text).filter((t) => typeof t.tok_s === 'number').map((t) => gptossRow('single', t)),
    'gptoss-batch': (text) => jsonLines(text).filter((t) => typeof t.tok_s === 'number').map((t) => gptossRow('batch', t)),
    'membw': (text) => jsonLines(text).filter((t) => t.test === 'membw' && typeof t.membw_gbs === 'number'),
    'load': () => [],
};

function gptossRow(section, t) {
    const spread = t.reps > 1 && typeof t.tok_s_min === 'number'
        ? `${fmt(t.tok_s_min)}-${fmt(t.tok_s_max)}` : '';
    return { section, test: t.test, threads: t.threads, batch: t.batch || 1, tok_s: t.tok_s, spread,
        model: `${gb(t.model_bytes)}, ${(t.n_params / 1e9).toFixed(2)} B parameters `
            + `(${(t.n_params_active / 1e9).toFixed(2)} B active), ${t.dense === 'q8' ? 'dense requantised to Q8_0 (--dense q8)' : 'dense as stored'}, kernels ${t.kernels}` };
}

function gb(bytes) {
    return typeof bytes === 'number' ? `${(bytes / 1e9).toFixed(2)} GB` : '? GB';
}

// The last non-empty line of a run's stderr: the error a failed run printed.
function lastError(dir, file) {
    const err = path.join(dir, file + '.err');
    if (!fs.existsSync(err)) return '';
    const lines = fs.readFileSync(err, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l);
    const last = lines.length ? lines[lines.length - 1] : '';
    return last.length > 200 ? last.slice(0, 200) + '...' : last;
}

function fmt(x) {
    if (typeof x !== 'number' || !isFinite(x)) return '-';
    return x >= 100 ? x.toFixed(1) : x.toFixed(2);
}

function main() {
    const dir = process.argv[2];
    if (!dir || dir === '-h' || dir === '--help') {
        process.stdout.write('usage: node bench/compare.js RAWDIR   (see bench/compare.sh)\n');
        process.exit(dir ? 0 : 2);
    }
    const meta = readTsv(path.join(dir, 'meta.txt'), 2);
    const runs = readTsv(path.join(dir, 'runs.txt'), 5).map(([model, kind, file, status, command]) => {
        if (!(kind in parsers)) fail(`runs.txt: unknown kind '${kind}' for ${file}`);
        const full = path.join(dir, file);
        const text = fs.existsSync(full) ? fs.readFileSync(full, 'utf8') : '';
        const rows = status === '0' ? parsers[kind](text) : [];
        return { model, kind, file, status, command, rows, error: lastError(dir, file) };
    });

    const out = [];
    out.push('# gptoss and llama.cpp on the same GGUF file', '');
    for (const [k, v] of meta) out.push(`- ${k}: ${v}`);
    out.push('');
    const models = [...new Set(runs.map((r) => r.model))];
    for (const model of models) out.push(...modelTable(model, runs.filter((r) => r.model === model)));
    out.push('## Commands', '', `Run from the repository root, in this order; the raw outputs went to ${dir}/.`, '');
    for (const r of runs) {
        const st = r.status === '0' ? '' : `  # exit status ${r.status}`;
        out.push(`    ${r.command}${st}`);
    }
    out.push('');
    out.push('tok/s: the single-sequence llama.cpp rows are llama-bench\'s mean ± standard deviation;',
        'the "@ dD" rows are llama-batched-bench\'s decode speed (S_TG) from one run, each',
        'sequence decoding after its own D-token prompt (gptoss decodes after one prompt token), and',
        'count the tokens of all sequences. gptoss rows are the median of its repeats (min-max).',
        'ratio = gptoss / llama.cpp: above 1, gptoss is faster. membw is the read bandwidth',
        '`gptoss bench --membw` measured just before each engine\'s run (llama.cpp / gptoss) at the',
        'row\'s thread count: a shared machine\'s bandwidth moves between runs.', '');
    process.stdout.write(out.join('\n'));
}

// The probe run last before `index` in run order, as {threads: GB/s}.
function probeBefore(runs, index) {
    for (let i = index - 1; i >= 0; i--) {
        if (runs[i].kind === 'membw') {
            const m = {};
            for (const p of runs[i].rows) m[p.threads] = p.membw_gbs;
            return m;
        }
    }
    return {};
}

function modelTable(model, runs) {
    const out = [`## ${model}`, ''];
    const load = runs.find((r) => r.kind === 'load');
    if (load) {
        out.push(load.status === '0' ? '- llama.cpp loads the file and generates (llama-simple): ok'
            : `- llama.cpp load check (llama-simple) FAILED (status ${load.status}): ${load.error}`);
    }
    for (const side of ['llama', 'gptoss']) {
        const r = runs.find((x) => x.kind.startsWith(side) && x.rows.length && x.rows[0].model);
        if (r) out.push(`- ${side === 'llama' ? 'llama.cpp' : 'gptoss'} reads it as: ${r.rows[0].model}`);
    }
    for (const r of runs) {
        if (r.kind !== 'membw' && r.kind !== 'load' && r.rows.length === 0) {
            out.push(`- ${r.kind} gave no result (status ${r.status}): ${r.error || 'no output'} `
                + `(raw output: ${r.file}, ${r.file}.err)`);
        }
    }
    if (out.length > 2) out.push('');
    out.push('| test | threads | sequences | llama.cpp tok/s | gptoss tok/s | gptoss/llama.cpp | membw GB/s |',
        '| ---- | ------: | --------: | --------------: | -----------: | ---------------: | ---------: |');
    const key = (r) => `${r.section}|${r.test}|${r.threads}|${r.batch}`;
    const cells = new Map();
    runs.forEach((run, i) => {
        const side = run.kind.startsWith('llama') ? 'llama' : run.kind.startsWith('gptoss') ? 'gptoss' : null;
        if (!side) return;
        const bw = probeBefore(runs, i);
        for (const row of run.rows) {
            // gptoss names decode tests tgN; the llama.cpp batched rows match on it.
            const k = key(row);
            if (!cells.has(k)) cells.set(k, { row });
            const c = cells.get(k);
            // The first result counts: compare.sh repeats one llama-batched-bench
            // test at the end so that a lost last line costs nothing.
            if (c[side]) continue;
            c[side] = row;
            c[side + 'Bw'] = bw[row.threads];
        }
    });
    const order = (c) => [c.row.section === 'single' ? 0 : 1, c.row.test.startsWith('pp') ? 0 : 1,
        c.row.threads, c.row.batch];
    const sorted = [...cells.values()].sort((a, b) => {
        const x = order(a), y = order(b);
        for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] - y[i];
        return 0;
    });
    for (const c of sorted) {
        const l = c.llama, g = c.gptoss;
        const lv = l ? `${fmt(l.tok_s)}${l.spread ? ' ' + l.spread : ''}` : 'failed';
        const gv = g ? `${fmt(g.tok_s)}${g.spread ? ' (' + g.spread + ')' : ''}` : 'failed';
        const ratio = l && g && l.tok_s > 0 ? (g.tok_s / l.tok_s).toFixed(2) : '-';
        const test = c.row.section === 'batch' && l && l.depth ? `${c.row.test} @ d${l.depth}` : c.row.test;
        const bw = `${fmt(c.llamaBw)} / ${fmt(c.gptossBw)}`;
        out.push(`| ${test} | ${c.row.threads} | ${c.row.batch} | ${lv} | ${gv} | ${ratio} | ${bw} |`);
    }
    out.push('');
    return out;
}

main();
