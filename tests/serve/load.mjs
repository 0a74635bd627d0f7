// Load on `gptoss serve` (run by tests/e2e_serve_load.sh):
//   node load.mjs BASE_URL SERVER_PID SECONDS [CLIENTS]   (warm-up: $LOAD_WARM_SECONDS, default 20)
// CLIENTS (default 64) streaming clients send chat requests back to back for a
// warm-up, then for SECONDS; a third of them disconnect at random points (before
// the answer, or after a random number of chunks).  Every stream that completes
// must be well-formed: each `data:` line valid JSON of one chat.completion.chunk
// id, one finish reason, the usage chunk when asked (and only then) with
// consistent counts, `data: [DONE]` last.  After each phase the server must go
// idle (/metrics: nothing running or queued, no KV block held; else /health);
// its RSS after the run must stay within a small margin of its RSS after the
// warm-up.  Prints one JSON line of figures; exit status 1 on any failure.
import fs from 'node:fs';

const [base, pid, secondsArg, clientsArg] = process.argv.slice(2);
const seconds = Number(secondsArg);
const clients = Number(clientsArg || 64);
const warmSeconds = Number(process.env.LOAD_WARM_SECONDS || 20);
let failed = 0;
function check(name, ok, detail) {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok || detail === undefined ? '' : ': ' + detail}`);
    if (!ok) failed = 1;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const status = (field) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(
    fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const rssKiB = () => status('VmRSS');
const words = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu'.split(' ');
const pick = (n) => Math.floor(Math.random() * n);

// cut: requests still running when a phase ends, aborted then (so the phase
// ends on time, and the server has to clean up after them too).
const stats = { requests: 0, completed: 0, disconnected: 0, cut: 0, busy: 0, malformed: 0,
                errors: 0, tokens: 0 };
const problems = [];
function bad(what) {
    stats.malformed++;
    if (problems.length < 5) problems.push(what);
}

// Check one complete SSE body; counts the generated tokens.
function checkStream(text, q) {
    if (!text.endsWith('\n\n')) return bad('the stream does not end with a blank line');
    const events = text.slice(0, -2).split('\n\n');
    if (events.at(-1) !== 'data: [DONE]') return bad(`last event ${events.at(-1).slice(0, 80)}`);
    let id = null, finishes = 0, usage = null;
    for (const ev of events.slice(0, -1)) {
        if (!ev.startsWith('data: ')) return bad(`event without data: ${ev.slice(0, 80)}`);
        let ch;
        try { ch = JSON.parse(ev.slice(6)); } catch { return bad(`not JSON: ${ev.slice(0, 80)}`); }
        if (ch.object !== 'chat.completion.chunk') return bad(`object ${ch.object}`);
        if ((id ??= ch.id) !== ch.id) return bad('the chunk ids differ');
        if (ch.usage) {
            if (usage || ch.choices.length) return bad('a second or non-empty usage chunk');
            usage = ch.usage;
        }
        for (const c of ch.choices) if (c.finish_reason) finishes++;
    }
    if (finishes !== 1) return bad(`${finishes} finish reasons`);
    const wantUsage = q.stream_options?.include_usage === true;
    if (wantUsage !== !!usage) return bad(`usage ${usage ? 'sent' : 'missing'} (asked: ${wantUsage})`);
    if (usage) {
        if (!(usage.prompt_tokens > 0 && usage.completion_tokens > 0 &&
              usage.completion_tokens <= q.max_tokens &&
              usage.total_tokens === usage.prompt_tokens + usage.completion_tokens))
            return bad(`usage ${JSON.stringify(usage)}`);
        stats.tokens += usage.completion_tokens;
    }
    stats.completed++;
}

// One request; a disconnecting client aborts before the answer or after a
// random number of chunks.
async function one(disconnects, end) {
    const q = { model: 'tiny', stream: true, max_tokens: 8 + pick(56), temperature: pick(2),
                messages: [{ role: 'user', content: [...Array(1 + pick(30))].map(() => words[pick(12)])
                             .join(' ') }] };
    if (pick(3)) q.stream_options = { include_usage: true };
    const ac = new AbortController();
    const cutAfter = disconnects ? pick(12) - 2 : Infinity; /* < 0: before the answer */
    if (cutAfter < 0) setTimeout(() => ac.abort(), pick(300));
    let atEnd = false;
    const endTimer = setTimeout(() => { atEnd = true; ac.abort(); }, end - Date.now());
    stats.requests++;
    try {
        await request(q, ac, cutAfter);
    } finally {
        clearTimeout(endTimer);
    }
    if (atEnd) stats.cut++;
    else if (ac.signal.aborted) stats.disconnected++;
}

async function request(q, ac, cutAfter) {
    let res;
    try {
        res = await fetch(`${base}/v1/chat/completions`, { method: 'POST', signal: ac.signal,
            headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(q) });
    } catch (e) {
        if (!ac.signal.aborted) { stats.errors++; problems.length < 5 && problems.push(String(e)); }
        return;
    }
    if (res.status === 503 && res.headers.get('retry-after')) {
        stats.busy++;
        await res.arrayBuffer().catch(() => {});
        return sleep(200);
    }
    if (res.status !== 200) {
        stats.errors++;
        if (problems.length < 5) problems.push(`HTTP ${res.status} ${await res.text().catch(() => '')}`);
        return;
    }
    const dec = new TextDecoder();
    let text = '', chunks = 0;
    try {
        for await (const part of res.body) {
            text += dec.decode(part, { stream: true });
            chunks++;
            if (chunks > cutAfter) {
                ac.abort();
                break;
            }
        }
    } catch (e) {
        if (!ac.signal.aborted) { stats.errors++; problems.length < 5 && problems.push(String(e)); }
    }
    if (!ac.signal.aborted) checkStream(text + dec.decode(), q);
}

async function phase(s) {
    const end = Date.now() + s * 1000;
    await Promise.all([...Array(clients).keys()].map(async (i) => {
        await sleep(pick(1000));
        while (Date.now() < end) await one(i % 3 === 0, end);
    }));
}

// Idle: the metrics say nothing runs, waits or holds KV blocks (or /health when
// there are no metrics).  Returns the last reading.
async function idle() {
    let last = '';
    for (let i = 0; i < 150; i++) {
        const r = await fetch(`${base}/metrics`).catch(() => null);
        if (r && r.status === 200) {
            const t = await r.text();
            const v = (name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`, 'm').exec(t)?.[1] ?? 0);
            last = `running ${v('gptoss_requests_running')}, queued ${v('gptoss_requests_queued')}, ` +
                   `kv blocks used ${v('gptoss_kv_blocks_used')}`;
            if (!v('gptoss_requests_running') && !v('gptoss_requests_queued') &&
                !v('gptoss_kv_blocks_used'))
                return { ok: true, last };
        } else if (r && r.status === 404) {
            const h = await fetch(`${base}/health`).catch(() => null);
            last = `health ${h?.status}`;
            if (h?.status === 200) return { ok: true, last };
        }
        await sleep(200);
    }
    return { ok: false, last };
}

await phase(warmSeconds);
let st = await idle();
check(`idle after a ${warmSeconds} s warm-up (${st.last})`, st.ok);
const warm = { ...stats };
const rssBefore = rssKiB(), anonBefore = status('RssAnon');
await phase(seconds);
st = await idle();
check(`idle after ${seconds} s of load (${st.last})`, st.ok);
await sleep(500);
const rssAfter = rssKiB(), anonAfter = status('RssAnon');
const run = Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, v - warm[k]]));
console.log(JSON.stringify({ clients, seconds, ...run, rss_before_kib: rssBefore,
                             rss_after_kib: rssAfter, rss_anon_before_kib: anonBefore,
                             rss_anon_after_kib: anonAfter }));
check(`${run.requests} requests: ${run.completed} completed, ${run.disconnected} disconnected, ` +
      `${run.cut} cut at the end, ${run.busy} busy (503), ${run.tokens} tokens`,
      run.completed > 0 && run.disconnected > 0);
check('every completed stream is well-formed', stats.malformed === 0, problems.join(' | '));
check('no request failed', stats.errors === 0, problems.join(' | '));
// Not zero: first-touch high-water marks (expert weights first routed to, the
// largest step's scratch, glibc's cache of ended threads' stacks) still rise a
// little after the warm-up.  Small leaks are the sanitizer run's business.
const margin = Math.max(32768, rssBefore * 0.1);
// (Under AddressSanitizer, LOAD_RSS_CHECK=0: its quarantine holds freed memory.)
if (process.env.LOAD_RSS_CHECK !== '0')
    check(`RSS ${rssBefore} KiB after the warm-up, ${rssAfter} KiB after the run ` +
          `(margin ${Math.round(margin)})`, rssAfter <= rssBefore + margin);
process.exit(failed);
