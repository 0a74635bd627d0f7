// Hostile clients against `gptoss serve`, run by tests/e2e_serve_hostile.sh:
//   node hostile.mjs PORT SERVER_PID IDLE_TIMEOUT_S [asan]
// Slow senders (slowloris), huge headers, invalid UTF-8, a 10 MB body and
// hundreds of connections opened and dropped; ordinary requests must be served
// all along.  Raw sockets (net) where the HTTP layer itself is under test.
import net from 'node:net';
import fs from 'node:fs';

const [port, pid, idleArg, build] = process.argv.slice(2);
const idle = Number(idleArg);
let failed = 0;
function check(name, ok, detail) {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok || detail === undefined ? '' : ': ' + detail}`);
    if (!ok) failed = 1;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rssKiB = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const threads = () => Number(/Threads:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

// One request over a fresh socket; resolves {status, body, closed} where status
// is 0 when the server closed without an answer.  Bounded by `ms`.
function rawRequest(head, body = Buffer.alloc(0), ms = 20000) {
    return new Promise((resolve) => {
        const chunks = [];
        const s = net.connect(Number(port), '127.0.0.1');
        const done = (closed) => {
            clearTimeout(timer);
            s.destroy();
            const text = Buffer.concat(chunks).toString('latin1');
            const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
            const at = text.indexOf('\r\n\r\n');
            resolve({ status: m ? Number(m[1]) : 0, closed,
                      body: at < 0 ? '' : Buffer.from(text.slice(at + 4), 'latin1') });
        };
        const timer = setTimeout(() => done(false), ms);
        s.on('data', (d) => chunks.push(d));
        s.on('end', () => done(true));
        s.on('error', () => done(true));
        s.on('connect', () => {
            s.write(head);
            if (body.length) s.write(body);
        });
    });
}

function post(path, body, extra = '') {
    const b = Buffer.isBuffer(body) ? body : Buffer.from(body);
    return rawRequest(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` +
                      `Content-Length: ${b.length}\r\nConnection: close\r\n${extra}\r\n`, b);
}
const chat = (body) => post('/v1/chat/completions', body);
const json = (r) => { try { return JSON.parse(r.body.toString('utf8')); } catch { return null; } };
const hello = (maxTokens) => JSON.stringify({ messages: [{ role: 'user', content: 'Hello' }],
                                              max_tokens: maxTokens, temperature: 0 });

// --- slowloris: connections that send their headers a byte a second ----------
// After a first answer the engine's worker threads exist: the baseline.
check('a first request is answered', (await chat(hello(2))).status === 200);
const idleThreads = threads();
const SLOW = 24;
const slowHead = 'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ' + 'a'.repeat(64);
const slow = [...Array(SLOW).keys()].map(() => {
    const st = { sock: net.connect(Number(port), '127.0.0.1'), sent: 0, closedAt: 0, stopAt: 0 };
    st.sock.on('close', () => { st.closedAt = Date.now(); clearInterval(st.timer); });
    st.sock.on('error', () => {});
    st.timer = setInterval(() => {
        if (st.sent < 5) st.sock.write(slowHead[st.sent++]);
        else if (!st.stopAt) st.stopAt = Date.now(); /* then silence */
    }, 1000);
    return st;
});

// A declared 10 MB body that never comes (checked at the end): answered without
// waiting for it, or closed by the idle timeout; either way the connection ends.
const never = (async () => {
    const t = Date.now();
    const r = await rawRequest('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n' +
                               `Content-Length: ${10 << 20}\r\nConnection: close\r\n\r\n{"mess`,
                               Buffer.alloc(0), (idle + 8) * 1000);
    return { ...r, ms: Date.now() - t };
})();

// Ordinary requests meanwhile: each answered quickly.
const t0 = Date.now();
const served = [];
for (let i = 0; i < 4; i++) {
    const t = Date.now();
    const r = await chat(hello(4));
    served.push({ status: r.status, ms: Date.now() - t });
}
check(`${SLOW} slow senders do not hold up other clients`, served.every((s) => s.status === 200 &&
      s.ms < 5000), JSON.stringify(served));
check('the slow senders are still connected meanwhile', slow.every((s) => !s.closedAt),
      `${slow.filter((s) => s.closedAt).length} closed after ${Date.now() - t0} ms`);

// --- huge headers ------------------------------------------------------------
for (const kib of [64, 300, 1024]) {
    const r = await rawRequest(`GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'b'.repeat(kib << 10)}` +
                               '\r\nConnection: close\r\n\r\n');
    check(`a ${kib} KiB header: 431 or closed`, r.status === 431 || (r.status === 0 && r.closed),
          `status ${r.status}`);
}
{
    const many = [...Array(4000).keys()].map((i) => `X-H${i}: ${i}\r\n`).join('');
    const r = await rawRequest(`GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n${many}Connection: close\r\n\r\n`);
    check('4000 headers: 431 or closed', r.status === 431 || (r.status === 0 && r.closed),
          `status ${r.status}`);
}

// --- invalid UTF-8 ------------------------------------------------------------
const bad = Buffer.from([0x63, 0x61, 0x66, 0xc3, 0x20, 0xff, 0xfe, 0xed, 0xa0, 0x80]);
const withBytes = (pre, post) => Buffer.concat([Buffer.from(pre), bad, Buffer.from(post)]);
{
    const r = await chat(withBytes('{"messages": [{"role": "user", "content": "', '"}], "max_tokens": 2}'));
    const e = json(r)?.error;
    check('invalid UTF-8 in a message: 400 naming messages[0].content', r.status === 400 &&
          e?.param === 'messages' && /messages\[0\]\.content/.test(e.message) && /UTF-8/.test(e.message),
          `${r.status} ${r.body}`);
    const r2 = await chat(withBytes('{"messages": [{"role": "user", "content": [{"type": "text", "text": "',
                                    '"}]}], "max_tokens": 2}'));
    check('invalid UTF-8 in a content part: 400', r2.status === 400 && json(r2)?.error?.param === 'messages',
          `${r2.status} ${r2.body}`);
}
// Elsewhere (stop strings, tool descriptions, names, keys): refused or answered,
// never a server error; the answer is JSON.
for (const [what, pre, post] of [
    ['a stop string', '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stop": "', '"}'],
    ['a tool description', '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "tools": ' +
     '[{"type": "function", "function": {"name": "f", "description": "', '"}}]}'],
    ['a tool parameter name', '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "tools": ' +
     '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"',
     '": {"type": "string"}}}}}]}'],
    ['the model name', '{"model": "', '", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}'],
    ['an object key', '{"', '": 1, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}'],
]) {
    const r = await chat(withBytes(pre, post));
    check(`invalid UTF-8 in ${what}: ${r.status}`, (r.status === 200 || r.status === 400) && json(r),
          `${r.status} ${r.body}`);
}
{
    const r = await rawRequest(Buffer.concat([Buffer.from('GET /v1/'), bad,
                                              Buffer.from(' HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')]));
    check(`invalid UTF-8 in the path: ${r.status}`, r.status === 404 || r.status === 400 ||
          (r.status === 0 && r.closed), `${r.status}`);
}

// Token ids beyond the vocabulary as a /v1/completions prompt: a 400, not a crash.
{
    const r = await post('/v1/completions', JSON.stringify({ prompt: [1, 2147483647], max_tokens: 2 }));
    check(`a prompt id beyond the vocabulary: ${r.status}`, r.status === 400 && json(r)?.error,
          `${r.status} ${r.body}`);
}

// --- a 10 MB body -------------------------------------------------------------
{
    const big = Buffer.alloc(10 << 20, 0x61);
    let before = rssKiB();
    const r = await post('/v1/chat/completions', big);
    check('a 10 MB body: 413 with an error object', r.status === 413 &&
          json(r)?.error?.code === 'request_too_large', `${r.status}`);
    let grew = rssKiB() - before;
    check(`declared 10 MB bodies are not stored (RSS grew ${grew} KiB)`, grew < 2048);
    // Without a length the body is kept up to the limit (8 MiB), then dropped.
    before = rssKiB();
    const chunked = await rawRequest('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n' +
        'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n' +
        `${(10 << 20).toString(16)}\r\n`, Buffer.concat([big, Buffer.from('\r\n0\r\n\r\n')]));
    check('a chunked 10 MB body: 413', chunked.status === 413, `${chunked.status}`);
    grew = rssKiB() - before;
    // (AddressSanitizer keeps freed blocks in quarantine: the body's reallocations stay.)
    check(`a chunked 10 MB body is not kept past the limit (RSS grew ${grew} KiB)`,
          grew < (build === 'asan' ? 40960 : 12288));
}

// --- hundreds of connections opened and dropped ------------------------------
{
    const N = 300;
    const socks = [];
    for (let i = 0; i < N; i++) {
        socks.push(new Promise((resolve) => {
            const s = net.connect(Number(port), '127.0.0.1');
            s.on('error', () => resolve());
            s.on('close', () => resolve());
            s.on('connect', () => {
                const kind = i % 4;
                if (kind === 0) return s.destroy();                 /* connect, drop */
                if (kind === 1) { s.write('POST /v1/chat'); return setTimeout(() => s.destroy(), 50); }
                if (kind === 2) {                                  /* headers, then a reset */
                    s.write('GET /health HTTP/1.1\r\nHost: x\r\n');
                    return setTimeout(() => s.resetAndDestroy(), 20);
                }
                if (kind === 3) {                                  /* a generation, then gone */
                    const b = JSON.stringify({ messages: [{ role: 'user', content: `n ${i}` }],
                                               max_tokens: 64, stream: i % 8 === 3 });
                    s.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
                            `Content-Length: ${b.length}\r\n\r\n${b}`);
                    setTimeout(() => s.destroy(), 100 + (i % 7) * 50);
                }
            });
        }));
    }
    await Promise.all(socks);
    const r = await chat(hello(4));
    check(`${N} connections opened and dropped; a request after them is answered`, r.status === 200,
          `${r.status}`);
}

// --- the slow senders are cut off by the idle timeout ----------------------------
{
    const r = await never;
    check(`a declared 10 MB body that never comes: ${r.status || 'closed'} after ${r.ms} ms`,
          r.status === 413 || r.closed, `${r.status}`);
    const deadline = Date.now() + (idle + 10) * 1000;
    while (Date.now() < deadline && slow.some((s) => !s.closedAt)) await sleep(200);
    const after = slow.map((s) => (s.closedAt && s.stopAt ? s.closedAt - s.stopAt : -1));
    check(`the slow senders are cut off after ${idle} s of silence`, after.every((ms) => ms >= 0 &&
          ms <= (idle + 5) * 1000), JSON.stringify(after));
    slow.forEach((s) => { clearInterval(s.timer); s.sock.destroy(); });
}
// Their threads (one per connection) are gone: back to the count of the start.
{
    let n = threads();
    for (let i = 0; i < 150 && n > idleThreads; i++) { await sleep(100); n = threads(); }
    check(`connection threads end (${n} now, ${idleThreads} before)`, n <= idleThreads);
}
process.exit(failed);
