// bench_serve.mjs - a serving benchmark for `gptoss serve`, in the manner of
// `vllm bench serve` (run by `make bench-serve`; Node 20, no packages).
//
//   node bench/bench_serve.mjs [--url URL | -m MODEL] [options]
//
// Against a running server (--url), or one it starts from -m MODEL (or, with
// neither, from the tiny random model it makes first), it sends streamed
// /v1/completions requests whose prompts are arrays of token ids (so each
// prompt is exactly --input-len tokens) at each concurrency of --concurrency,
// and prints per concurrency: request throughput, output tok/s, TTFT p50/p99
// and inter-token latency p50/p99, as a markdown table and as JSON.
//
// --prefill-check adds the chunked-prefill check: --decoders requests decode a
// long answer; once all of them are receiving tokens, one --long-len token
// prompt arrives; the gaps between the decoders' tokens while it is prefilled
// (from its arrival to its first token) are reported (p50, p99, p99/p50).  With
// chunked prefill the decoders keep getting a token every step, so the ratio
// stays small; without it they would wait for the whole prefill.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const HELP = `usage: node bench/bench_serve.mjs [--url URL | -m MODEL] [options]
  --url URL            a running server (http://127.0.0.1:8080)
  -m, --model PATH     start \`gptoss serve -m PATH\` on 127.0.0.1 (port 0) for the run;
                       with neither, a tiny random model is made and served
  --gptoss BIN         the binary to start (default build/gptoss)
  -t, --threads N      its threads (default 2)
  --parallel N         its --parallel (default: the largest concurrency)
  --max-seq-len N      its --max-seq-len (default: enough for the longest request)
  --serve-arg ARG      one more argument for it (repeatable)
  --api-key KEY        sent as Authorization: Bearer KEY
  --concurrency LIST   concurrencies to run (default 1,4,16,64)
  --requests N         requests per concurrency (default: 2 x concurrency, at least 8)
  --input-len N        prompt tokens (default 128)
  --output-len N       tokens to generate per request (max_tokens; default 64)
  --temperature T      sampling temperature (default 0)
  --seed N             seed of the prompts (default 1)
  --prefill-check      add the chunked-prefill check
  --long-len N         its long prompt's tokens (default 2000)
  --decoders N         requests decoding meanwhile (default 4)
  --decode-len N       their max_tokens (default 400)
  --duration S         stop starting new requests after S seconds per concurrency
  --json FILE          also write the results as JSON to FILE ('-': stdout only)
  -h, --help           this text`;

function parseArgs(argv) {
    const o = { gptoss: 'build/gptoss', threads: 2, concurrency: [1, 4, 16, 64], inputLen: 128,
                outputLen: 64, temperature: 0, seed: 1, longLen: 2000, decoders: 4, decodeLen: 400,
                serveArgs: [] };
    const num = (v, name) => {
        const n = Number(v);
        if (!Number.isFinite(n) || n < 0) usage(`${name} needs a number, not '${v}'`);
        return n;
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i], v = () => (i + 1 < argv.length ? argv[++i] : usage(`${a} needs a value`));
        switch (a) {
        case '--url': o.url = v().replace(/\/+$/, ''); break;
        case '-m': case '--model': o.model = v(); break;
        case '--gptoss': o.gptoss = v(); break;
        case '-t': case '--threads': o.threads = num(v(), a); break;
        case '--parallel': o.parallel = num(v(), a); break;
        case '--max-seq-len': o.maxSeqLen = num(v(), a); break;
        case '--serve-arg': o.serveArgs.push(v()); break;
        case '--api-key': o.apiKey = v(); break;
        case '--concurrency': o.concurrency = v().split(',').map((x) => num(x, a)).filter((x) => x > 0); break;
        case '--requests': o.requests = num(v(), a); break;
        case '--input-len': o.inputLen = num(v(), a); break;
        case '--output-len': o.outputLen = num(v(), a); break;
        case '--temperature': o.temperature = num(v(), a); break;
        case '--seed': o.seed = num(v(), a); break;
        case '--prefill-check': o.prefill = true; break;
        case '--long-len': o.longLen = num(v(), a); break;
        case '--decoders': o.decoders = num(v(), a); break;
        case '--decode-len': o.decodeLen = num(v(), a); break;
        case '--duration': o.duration = num(v(), a); break;
        case '--json': o.json = v(); break;
        case '-h': case '--help': console.log(HELP); process.exit(0); break;
        default: usage(`unknown option '${a}'`);
        }
    }
    if (o.url && o.model) usage('--url and -m exclude each other');
    if (!o.concurrency.length) usage('--concurrency needs at least one number above 0');
    if (o.inputLen < 1 || o.outputLen < 1) usage('--input-len and --output-len must be at least 1');
    return o;
}
function usage(msg) {
    console.error(`bench_serve: ${msg}\n${HELP}`);
    process.exit(2);
}

// Token ids of ordinary text pieces (no special tokens), from a seeded generator.
function rng(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = Math.imul(a ^ (a >>> 15), a | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}
const promptIds = (rand, n) => Array.from({ length: n }, () => 1000 + Math.floor(rand() * 90000));

function quantile(xs, q) {
    if (!xs.length) return NaN;
    const s = [...xs].sort((a, b) => a - b);
    const pos = (s.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
    return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}
const r2 = (x) => (Number.isFinite(x) ? Math.round(x * 100) / 100 : null);

// ---------------------------------------------------------------------------
// The server: a running one, or one started here (stopped at exit).

async function startServer(o) {
    let model = o.model;
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-serve-'));
    if (!model) {
        model = path.join(tmp, 'tiny');
        execFileSync(o.gptoss, ['mkmodel', '--preset', 'tiny', '--seed', '3', '--out', model],
                     { stdio: 'ignore' });
    }
    const longest = Math.max(o.inputLen + o.outputLen, o.prefill ? o.longLen + 16 : 0,
                             o.prefill ? 64 + o.decodeLen : 0);
    const maxSeq = o.maxSeqLen || Math.max(1024, 1 << Math.ceil(Math.log2(longest + 1)));
    const parallel = o.parallel || Math.max(...o.concurrency, o.prefill ? o.decoders + 1 : 1);
    const args = ['serve', '-m', model, '--port', '0', '-t', String(o.threads), '--parallel',
                  String(parallel), '--max-seq-len', String(maxSeq), '--max-queue',
                  String(Math.max(64, parallel)), '--date', 'none', ...o.serveArgs];
    if (o.apiKey) args.push('--api-key', o.apiKey);
    console.error(`bench_serve: ${o.gptoss} ${args.join(' ')}`);
    const child = spawn(o.gptoss, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const stop = () => { try { child.kill('SIGTERM'); } catch { /* gone */ } };
    process.on('exit', () => { stop(); fs.rmSync(tmp, { recursive: true, force: true }); });
    process.on('SIGINT', () => process.exit(130));
    let err = '';
    const url = await new Promise((resolve, reject) => {
        let port = null;
        child.stderr.on('data', (d) => {
            err += d;
            port ??= /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(err)?.[1];
            if (port && /ready/.test(err)) resolve(`http://127.0.0.1:${port}`);
        });
        child.on('exit', (code) => reject(new Error(`the server exited (${code}):\n${err}`)));
    });
    child.stderr.resume();
    return { url, info: { model, threads: o.threads, parallel, max_seq_len: maxSeq } };
}

// ---------------------------------------------------------------------------
// One streamed completion: arrival times of its text chunks (filled into
// live.times as they come) and its usage.

async function stream(o, prompt, maxTokens, live = {}) {
    const t0 = performance.now();
    const res = await fetch(`${o.url}/v1/completions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json',
                   ...(o.apiKey ? { Authorization: `Bearer ${o.apiKey}` } : {}) },
        body: JSON.stringify({ model: 'bench', prompt, max_tokens: maxTokens, temperature: o.temperature,
                               seed: 1, stream: true, stream_options: { include_usage: true } }),
    });
    if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
    const times = (live.times = []);
    let usage = null, buf = '';
    const dec = new TextDecoder();
    for await (const part of res.body) {
        const now = performance.now();
        buf += dec.decode(part, { stream: true });
        let at;
        while ((at = buf.indexOf('\n\n')) >= 0) {
            const ev = buf.slice(0, at);
            buf = buf.slice(at + 2);
            if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
            const ch = JSON.parse(ev.slice(6));
            if (ch.error) throw new Error(ch.error.message);
            if (ch.usage) usage = ch.usage;
            if (ch.choices?.some((c) => c.text)) times.push(now);
        }
    }
    return { t0, end: performance.now(), times, usage };
}

// N requests, at most `conc` at once.
async function level(o, conc, rand) {
    const n = o.requests || Math.max(8, 2 * conc);
    const prompts = Array.from({ length: n }, () => promptIds(rand, o.inputLen));
    const results = [];
    let next = 0;
    const t0 = performance.now();
    const stopAt = o.duration ? t0 + o.duration * 1000 : Infinity;
    await Promise.all(Array.from({ length: conc }, async () => {
        while (next < n && performance.now() < stopAt) results.push(await stream(o, prompts[next++], o.outputLen));
    }));
    const secs = (performance.now() - t0) / 1000;
    const ttft = results.filter((r) => r.times.length).map((r) => r.times[0] - r.t0);
    const itl = results.flatMap((r) => r.times.slice(1).map((t, i) => t - r.times[i]));
    const out = results.reduce((s, r) => s + (r.usage?.completion_tokens ?? 0), 0);
    return { concurrency: conc, requests: results.length, seconds: r2(secs),
             req_per_s: r2(results.length / secs), output_tok_per_s: r2(out / secs),
             output_tokens: out, ttft_p50_ms: r2(quantile(ttft, 0.5)), ttft_p99_ms: r2(quantile(ttft, 0.99)),
             itl_p50_ms: r2(quantile(itl, 0.5)), itl_p99_ms: r2(quantile(itl, 0.99)) };
}

// The chunked-prefill check (see the top of the file).
async function prefillCheck(o, rand) {
    const live = Array.from({ length: o.decoders }, () => ({ times: [] }));
    const decoders = live.map((l) => stream(o, promptIds(rand, 32), o.decodeLen, l));
    // The long prompt comes once every decoder has had a few tokens.
    for (let i = 0; i < 2400 && live.some((l) => l.times.length < 4); i++)
        await new Promise((r) => setTimeout(r, 50));
    const t0 = performance.now();
    const long = await stream(o, promptIds(rand, o.longLen), 1);
    const t1 = long.times[0] ?? long.end;
    const done = await Promise.all(decoders);
    const gaps = [], before = [];
    for (const r of done) {
        for (let i = 1; i < r.times.length; i++) {
            const g = r.times[i] - r.times[i - 1];
            if (r.times[i] > t0 && r.times[i - 1] < t1) gaps.push(g);
            else if (r.times[i] <= t0) before.push(g);
        }
    }
    const decodingAtStart = done.filter((r) => r.times.length && r.times[0] < t0 &&
                                        r.times.at(-1) > t1).length;
    const p50 = quantile(gaps, 0.5), p99 = quantile(gaps, 0.99);
    return { long_prompt_tokens: o.longLen, decoders: o.decoders, decoding_throughout: decodingAtStart,
             prefill_ms: r2(t1 - t0), gaps: gaps.length, itl_p50_ms: r2(p50), itl_p99_ms: r2(p99),
             itl_max_ms: r2(gaps.length ? Math.max(...gaps) : NaN), p99_over_p50: r2(p99 / p50),
             itl_p50_before_ms: r2(quantile(before, 0.5)), within_3x: p99 <= 3 * p50,
             p99_over_p50_before: r2(p99 / quantile(before, 0.5)) };
}

// ---------------------------------------------------------------------------

const o = parseArgs(process.argv.slice(2));
let info = { url: o.url };
if (!o.url) {
    const s = await startServer(o);
    o.url = s.url;
    info = { url: s.url, ...s.info };
}
const rand = rng(o.seed);
const levels = [];
for (const c of o.concurrency) {
    console.error(`bench_serve: concurrency ${c} ...`);
    levels.push(await level(o, c, rand));
}
const prefill = o.prefill ? await prefillCheck(o, rand) : null;

const head = '| concurrency | requests | req/s | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |';
console.log(`\nPrompts ${o.inputLen} tokens, outputs up to ${o.outputLen} tokens, temperature ${o.temperature}` +
            (info.model ? `; ${info.model}, ${info.threads} threads, --parallel ${info.parallel}` : ''));
console.log(`\n${head}\n${head.replace(/[^|]+/g, (m) => ` ${'-'.repeat(Math.max(3, m.length - 2))} `)}`);
for (const l of levels)
    console.log(`| ${l.concurrency} | ${l.requests} | ${l.req_per_s} | ${l.output_tok_per_s} | ${l.ttft_p50_ms} | ` +
                `${l.ttft_p99_ms} | ${l.itl_p50_ms} | ${l.itl_p99_ms} |`);
if (prefill)
    console.log(`\nChunked prefill: while a ${prefill.long_prompt_tokens}-token prompt was prefilled ` +
                `(${prefill.prefill_ms} ms), ${prefill.decoding_throughout} of ${prefill.decoders} decoding ` +
                `requests got ${prefill.gaps} tokens: ITL p50 ${prefill.itl_p50_ms} ms, p99 ` +
                `${prefill.itl_p99_ms} ms (max ${prefill.itl_max_ms}), p99/p50 ${prefill.p99_over_p50} ` +
                `(${prefill.within_3x ? 'within' : 'NOT within'} 3x; ITL p50 before: ${prefill.itl_p50_before_ms} ms, ` +
                `p99 during / p50 before ${prefill.p99_over_p50_before})`);
const report = { when: new Date().toISOString(), server: info, input_len: o.inputLen,
                 output_len: o.outputLen, temperature: o.temperature, levels, prefill };
console.log(`\n${JSON.stringify(report)}`);
if (o.json && o.json !== '-') fs.writeFileSync(o.json, JSON.stringify(report, null, 2) + '\n');
process.exit(0);
