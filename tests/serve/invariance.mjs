// Batch invariance of `gptoss serve` (run by tests/e2e_serve_load.sh):
//   node invariance.mjs BASE_URL [SEED]
// 16 requests with fixed seeds (a third greedy, the rest sampled), different
// prompt and output lengths, some streamed, are first run one at a time on the
// idle server, then all together, each started at a random offset so they join
// and leave the running batch (and the queue, with --parallel 8) at different
// steps.  Every answer must equal its solo answer: text, reasoning, finish
// reason and usage.  The offsets come from SEED (printed), so a failure repeats.
import OpenAI from 'openai';

const [base, seedArg] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none', timeout: 120000, maxRetries: 0 });
let failed = 0;
function check(name, ok, detail) {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok || detail === undefined ? '' : ': ' + detail}`);
    if (!ok) failed = 1;
}

// A small deterministic generator (mulberry32) for the offsets and lengths.
function rng(seed) {
    let a = seed >>> 0;
    return () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}
const seed = seedArg ? Number(seedArg) : Date.now() % 100000;
console.log(`invariance seed ${seed}`);
const rand = rng(seed);
const words = 'the quick brown fox jumps over a lazy dog while seven bright stars fall'.split(' ');

const reqs = [...Array(16).keys()].map((i) => {
    const n = 1 + Math.floor(rand() * 40); /* prompt words */
    const text = [...Array(n).keys()].map((k) => words[(k * 7 + i) % words.length]).join(' ');
    const q = { model: 'tiny', messages: [{ role: 'user', content: `${i}: ${text}` }],
                max_tokens: 4 + Math.floor(rand() * 40) };
    if (i % 3 === 0) q.temperature = 0;
    else Object.assign(q, { temperature: 0.6 + (i % 4) * 0.2, top_p: i % 2 ? 0.9 : 1, seed: 1000 + i });
    if (i % 5 === 1) q.messages.unshift({ role: 'system', content: 'Be brief.' });
    return { q, stream: i % 4 === 1, offset: Math.floor(rand() * 1500) };
});

// One request, streamed or not, as {content, reasoning, finish, usage}.
async function run({ q, stream }) {
    if (!stream) {
        const r = await client.chat.completions.create(q);
        const m = r.choices[0].message;
        return { content: m.content, reasoning: m.reasoning_content ?? '',
                 finish: r.choices[0].finish_reason, usage: r.usage };
    }
    const s = await client.chat.completions.create({ ...q, stream: true,
                                                     stream_options: { include_usage: true } });
    let content = '', reasoning = '', finish = null, usage = null;
    for await (const ch of s) {
        if (ch.usage) usage = ch.usage;
        for (const c of ch.choices) {
            content += c.delta.content ?? '';
            reasoning += c.delta.reasoning_content ?? '';
            if (c.finish_reason) finish = c.finish_reason;
        }
    }
    return { content, reasoning, finish, usage };
}
const key = (a) => JSON.stringify([a.content, a.reasoning, a.finish, a.usage?.prompt_tokens,
                                   a.usage?.completion_tokens, a.usage?.total_tokens]);

const solo = [];
for (const r of reqs) solo.push(await run(r));
check('solo answers have text and usage', solo.every((a) => a.usage && a.usage.completion_tokens > 0));

const t0 = Date.now();
const together = await Promise.all(reqs.map(async (r) => {
    await new Promise((res) => setTimeout(res, r.offset));
    const t = Date.now();
    const a = await run(r);
    return { ...a, start: t - t0, end: Date.now() - t0 };
}));
const spans = together.map((a) => `${a.start}-${a.end}`).join(' ');
let same = 0;
together.forEach((a, i) => {
    if (key(a) === key(solo[i])) same++;
    else console.log(`  request ${i} ${JSON.stringify(reqs[i].q)}\n  solo     ${key(solo[i])}\n  ` +
                     `together ${key(a)}`);
});
check(`16 concurrent requests (ms spans ${spans}) equal their solo answers`, same === 16,
      `${16 - same} differ`);
// The runs overlapped: at least one request started before another ended.
check('the concurrent requests overlapped', together.some((a) => together.some((b) =>
      a !== b && a.start < b.end && b.start < a.end)));
process.exit(failed);
