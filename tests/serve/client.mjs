// The `gptoss serve` end-to-end checks with the official openai client (pinned in
// package.json), run by tests/e2e_serve.sh:
//   node client.mjs BASE_URL API_KEY GREEDY_TEXT PROMPT_IDS
// where GREEDY_TEXT is `gptoss generate`'s greedy answer to "Hello" (8 tokens) and
// PROMPT_IDS the token ids of "The sky is" (`gptoss tokenize`).
import OpenAI from 'openai';

const [base, key, greedy, promptIds] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, timeout: 60000, maxRetries: 0 });
let failed = 0;
function check(name, ok, detail) {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok || detail === undefined ? '' : ': ' + detail}`);
    if (!ok) failed = 1;
}
const hello = [{ role: 'user', content: 'Hello' }];

// --- answers ----------------------------------------------------------------
const models = await client.models.list();
check('GET /v1/models lists the model', models.data.length === 1 && models.data[0].id === 'tiny');

const r = await client.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 8,
                                                 temperature: 0 });
const c0 = r.choices[0];
check('greedy answer equals gptoss generate', c0.message.content === greedy,
      JSON.stringify([c0.message.content, greedy]));
check('finish_reason length at max_tokens', c0.finish_reason === 'length', c0.finish_reason);
check('usage counts', r.usage.completion_tokens === 8 && r.usage.prompt_tokens > 0 &&
      r.usage.total_tokens === r.usage.prompt_tokens + 8, JSON.stringify(r.usage));
check('object and id', r.object === 'chat.completion' && r.id.startsWith('chatcmpl-'));

const stream = await client.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 8,
    temperature: 0, stream: true, stream_options: { include_usage: true } });
let text = '', finish = null, usage = null, chunks = 0;
for await (const ch of stream) {
    chunks++;
    if (ch.usage) usage = ch.usage;
    for (const ci of ch.choices) {
        if (ci.delta.content) text += ci.delta.content;
        if (ci.finish_reason) finish = ci.finish_reason;
    }
}
check('streamed text equals the non-streamed one', text === c0.message.content,
      JSON.stringify([text, c0.message.content]));
check('stream sends several chunks, a finish reason and usage', chunks > 3 && finish === 'length' &&
      usage && usage.completion_tokens === 8, JSON.stringify({ chunks, finish, usage }));

const withMax = await client.chat.completions.create({ model: 'tiny', messages: [
    { role: 'system', content: 'Be brief.' }, { role: 'developer', content: 'Answer in English.' },
    { role: 'user', content: 'Hello' }, { role: 'assistant', content: 'Hi!' },
    { role: 'user', content: 'How are you?' }], max_completion_tokens: 3, temperature: 0.7,
    top_p: 0.9, seed: 5, reasoning_effort: 'high' });
check('system, developer and assistant history; max_completion_tokens',
      withMax.usage.completion_tokens === 3 && withMax.usage.prompt_tokens > r.usage.prompt_tokens,
      JSON.stringify(withMax.usage));

// The greedy answer goes on "olella?\nyang bolup...": a stop string cuts it.
const stopped = await client.chat.completions.create({ model: 'tiny', messages: hello,
    max_tokens: 8, temperature: 0, stop: ['bolup'] });
const st = stopped.choices[0];
check('stop string ends the answer before it', st.finish_reason === 'stop' &&
      !st.message.content.includes('bolup') && greedy.startsWith(st.message.content),
      JSON.stringify(st));

// Function tools are rendered into the developer message; a tool call and its
// result in the history are accepted (the random model never calls a tool).
const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather now.',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
const withTools = await client.chat.completions.create({ model: 'tiny', max_tokens: 4,
    temperature: 0, tools, messages: [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function',
          function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '20 C' }] });
const noTools = await client.chat.completions.create({ model: 'tiny', max_tokens: 4,
    temperature: 0, tools, tool_choice: 'none', messages: [{ role: 'user', content: 'Weather in Paris?' }] });
const plain = await client.chat.completions.create({ model: 'tiny', max_tokens: 4,
    temperature: 0, messages: [{ role: 'user', content: 'Weather in Paris?' }] });
check('tools and a tool call in the history are rendered',
      withTools.usage.prompt_tokens > plain.usage.prompt_tokens + 40 &&
      noTools.usage.prompt_tokens === plain.usage.prompt_tokens &&
      ['stop', 'length', 'tool_calls'].includes(withTools.choices[0].finish_reason),
      JSON.stringify([withTools.usage, noTools.usage, plain.usage]));
try {
    await client.chat.completions.create({ model: 'tiny', max_tokens: 1, messages: [
        { role: 'tool', tool_call_id: 'nope', content: 'x' }] });
    check('a tool result without its call: 400', false, 'no error');
} catch (err) {
    check('a tool result without its call: 400', err.status === 400 && err.param === 'messages',
          String(err));
}

// --- the same seed gives the same tokens alone and among concurrent requests --
const reqs = [...Array(8).keys()].map((i) => ({ model: 'tiny', max_tokens: 6, temperature: 1,
    seed: 100 + i, messages: [{ role: 'user', content: `Tell me about the number ${i}` }] }));
const solo = [];
for (const q of reqs) solo.push((await client.chat.completions.create(q)).choices[0].message.content);
const together = await Promise.all(reqs.map((q) => client.chat.completions.create(q)));
check('8 concurrent requests equal their solo answers',
      together.every((t, i) => t.choices[0].message.content === solo[i]),
      JSON.stringify([solo, together.map((t) => t.choices[0].message.content)]));
check('seeded answers differ between seeds', new Set(solo).size > 1);

// --- errors -------------------------------------------------------------------
async function raw(method, path, body, headers = {}) {
    const res = await fetch(base + path, { method, body,
        headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json', ...headers } });
    let json = null;
    try { json = await res.json(); } catch { /* not JSON */ }
    return { status: res.status, json, headers: res.headers };
}
let e = await raw('POST', '/v1/chat/completions', '{"messages": [');
check('malformed JSON: 400 saying so', e.status === 400 && /JSON/.test(e.json?.error?.message),
      JSON.stringify(e));
e = await raw('POST', '/v1/chat/completions', JSON.stringify({ messages: hello, temperature: 'hot' }));
check('wrong type: 400 naming the field', e.status === 400 && e.json?.error?.param === 'temperature' &&
      /temperature/.test(e.json.error.message), JSON.stringify(e));
e = await raw('POST', '/v1/chat/completions', JSON.stringify({ messages: 'Hello' }));
check('messages not an array: 400', e.status === 400 && e.json?.error?.param === 'messages');
e = await raw('GET', '/v1/nothing');
check('unknown route: 404 error object', e.status === 404 && e.json?.error?.code === 'not_found');
e = await raw('GET', '/v1/chat/completions');
check('wrong method: 405', e.status === 405 && e.json?.error);
e = await raw('POST', '/v1/chat/completions', 'x'.repeat(9 << 20));
check('body over 8 MiB: 413', e.status === 413, e.status);
try {
    const bad = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'wrong-key', maxRetries: 0 });
    await bad.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 1 });
    check('wrong API key: 401', false, 'no error');
} catch (err) {
    check('wrong API key: 401', err.status === 401 && err.code === 'invalid_api_key', String(err));
}
e = await raw('GET', '/v1/models', undefined, { Authorization: '' });
check('missing API key: 401', e.status === 401);
try {
    await client.chat.completions.create({ model: 'tiny', max_tokens: 4,
        messages: [{ role: 'user', content: 'hello world '.repeat(400) }] });
    check('too-long prompt: 400', false, 'no error');
} catch (err) {
    check('too-long prompt: 400 with the numbers', err.status === 400 &&
          err.code === 'context_length_exceeded' && /256/.test(err.message) &&
          /\d{3,} tokens/.test(err.message), String(err));
}

// --- logprobs -----------------------------------------------------------------
// Greedy: the chosen token is the most likely one; every value is a
// log-probability; the tokens spell the content exactly.
function checkLogprobs(name, content, lp, top) {
    const bytes = Buffer.concat(lp.map((e) => Buffer.from(e.bytes)));
    check(`${name}: the tokens spell the content`, lp.length > 0 &&
          bytes.toString('utf8') === content, JSON.stringify([content, lp.map((e) => e.token)]));
    check(`${name}: chosen logprob <= 0, top sorted, greedy first, mass <= 1`, lp.every((e) =>
        e.logprob <= 0 && e.top_logprobs.length === top &&
        e.top_logprobs.every((t, i) => i === 0 || t.logprob <= e.top_logprobs[i - 1].logprob) &&
        e.top_logprobs[0].token === e.token && e.top_logprobs[0].logprob === e.logprob &&
        e.top_logprobs.reduce((s, t) => s + Math.exp(t.logprob), 0) <= 1 + 1e-6),
          JSON.stringify(lp.slice(0, 2)));
}
const withLp = await client.chat.completions.create({ model: 'tiny', messages: hello,
    max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 5 });
const lpc = withLp.choices[0];
check('logprobs do not change the answer', lpc.message.content === c0.message.content);
checkLogprobs('chat logprobs', lpc.message.content, lpc.logprobs?.content ?? [], 5);
const lpStream = await client.chat.completions.create({ model: 'tiny', messages: hello,
    max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 5, stream: true });
const streamedLp = [];
for await (const ch of lpStream)
    for (const ci of ch.choices) if (ci.logprobs?.content) streamedLp.push(...ci.logprobs.content);
check('streamed logprobs equal the non-streamed ones',
      JSON.stringify(streamedLp) === JSON.stringify(lpc.logprobs.content),
      JSON.stringify([streamedLp.length, lpc.logprobs.content.length]));
check('no logprobs unless asked', c0.logprobs === null);
// A stop string cuts the content inside a token: its logprobs end with that token.
const lpStop = await client.chat.completions.create({ model: 'tiny', messages: hello,
    max_tokens: 8, temperature: 0, stop: ['bolup'], logprobs: true });
const lsc = lpStop.choices[0].logprobs.content;
check('logprobs with a stop string: the tokens up to the cut', lsc.length > 0 &&
      Buffer.concat(lsc.slice(0, -1).map((e) => Buffer.from(e.bytes))).length <
      Buffer.from(lpStop.choices[0].message.content).length &&
      lsc.every((e, i) => e.token === lpc.logprobs.content[i].token),
      JSON.stringify([lpStop.choices[0].message.content, lsc.map((e) => e.token)]));
for (const [body, param] of [[{ logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
                             [{ top_logprobs: 2 }, 'top_logprobs']]) {
    try {
        await client.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 1,
                                               ...body });
        check(`${JSON.stringify(body)}: 400`, false, 'no error');
    } catch (err) {
        check(`${JSON.stringify(body)}: 400 naming ${param}`, err.status === 400 &&
              err.param === param, String(err));
    }
}

// --- POST /v1/completions -------------------------------------------------------
const sky = 'The sky is';
const t0 = await client.completions.create({ model: 'tiny', prompt: sky, max_tokens: 6,
                                             temperature: 0, logprobs: 2 });
const tc = t0.choices[0];
check('completion: text, finish_reason length, usage', t0.object === 'text_completion' &&
      t0.id.startsWith('cmpl-') && tc.text.length > 0 && tc.finish_reason === 'length' &&
      t0.usage.completion_tokens === 6 && t0.usage.prompt_tokens === promptIds.split(' ').length,
      JSON.stringify(t0));
const lg = tc.logprobs;
// text_offset counts characters (code points), as Python's str does.
check('completion logprobs: legacy shape, tokens spell the text, offsets add up',
      lg && lg.tokens.join('') === tc.text && lg.tokens.length === 6 &&
      lg.token_logprobs.every((v) => v <= 0) &&
      lg.top_logprobs.every((t, i) => Object.keys(t).length <= 2 && t[lg.tokens[i]] ===
                                        lg.token_logprobs[i]) &&
      lg.text_offset.every((o, i) => o === [...lg.tokens.slice(0, i).join('')].length),
      JSON.stringify(lg));
const tIds = await client.completions.create({ model: 'tiny', temperature: 0, max_tokens: 6,
    prompt: promptIds.split(' ').map(Number) });
check('completion: a prompt of token ids equals the same text', tIds.choices[0].text === tc.text,
      JSON.stringify([tIds.choices[0].text, tc.text]));
const tDef = await client.completions.create({ model: 'tiny', prompt: sky, temperature: 0 });
check('completion: max_tokens defaults to 16', tDef.usage.completion_tokens <= 16 &&
      (tDef.choices[0].finish_reason !== 'length' || tDef.usage.completion_tokens === 16) &&
      tDef.choices[0].text.startsWith(tc.text), JSON.stringify(tDef));
let tText = '', tFinish = null, tUsage = null;
for await (const ch of await client.completions.create({ model: 'tiny', prompt: sky,
    temperature: 0, stream: true, stream_options: { include_usage: true } })) {
    if (ch.usage) tUsage = ch.usage;
    for (const ci of ch.choices) {
        tText += ci.text;
        if (ci.finish_reason) tFinish = ci.finish_reason;
    }
}
check('completion: streamed text equals the non-streamed one', tText === tDef.choices[0].text &&
      tFinish === tDef.choices[0].finish_reason && tUsage?.completion_tokens ===
      tDef.usage.completion_tokens, JSON.stringify([tText, tDef.choices[0].text, tFinish, tUsage]));
// A stop string from the middle of the greedy text cuts it there, streamed or not.
const full = tDef.choices[0].text;
const stopAt = Math.max(1, Math.floor(full.length / 2));
const stopStr = full.slice(stopAt, stopAt + 3);
const tStop = await client.completions.create({ model: 'tiny', prompt: sky, temperature: 0,
                                               stop: [stopStr] });
let sText = '';
for await (const ch of await client.completions.create({ model: 'tiny', prompt: sky,
    temperature: 0, stop: [stopStr], stream: true }))
    for (const ci of ch.choices) sText += ci.text;
check('completion: a stop string ends the text before it', stopStr.length === 3 &&
      tStop.choices[0].finish_reason === 'stop' && tStop.choices[0].text === full.slice(0,
      full.indexOf(stopStr)) && sText === tStop.choices[0].text,
      JSON.stringify([full, stopStr, tStop.choices[0], sText]));
for (const [body, param] of [[{ prompt: sky, echo: true }, 'echo'],
                             [{ prompt: [999999999] }, 'prompt'],
                             [{ prompt: sky, logprobs: 6 }, 'logprobs'],
                             [{}, 'prompt']]) {
    try {
        await client.completions.create({ model: 'tiny', max_tokens: 1, ...body });
        check(`completion ${JSON.stringify(body)}: 400`, false, 'no error');
    } catch (err) {
        check(`completion ${JSON.stringify(body).slice(0, 40)}: 400 naming ${param}`,
              err.status === 400 && err.param === param, String(err));
    }
}

// --- tool_choice ----------------------------------------------------------------
// Named: the prompt ends inside the call's header, so the answer is a call to
// that function whatever the (random) model writes; cut by max_tokens it is
// shown as far as it got with finish_reason length.
const weather = [{ role: 'user', content: 'Weather in Paris?' }];
const named = await client.chat.completions.create({ model: 'tiny', max_tokens: 6,
    temperature: 0, tools, messages: weather,
    tool_choice: { type: 'function', function: { name: 'get_weather' } } });
const nc = named.choices[0];
const auto = await client.chat.completions.create({ model: 'tiny', max_tokens: 1,
    temperature: 0, tools, messages: weather });
check('tool_choice named: a call to that function, no content',
      ['tool_calls', 'length'].includes(nc.finish_reason) && nc.message.content === null &&
      nc.message.tool_calls?.length === 1 &&
      nc.message.tool_calls[0].function.name === 'get_weather' &&
      nc.message.tool_calls[0].id.startsWith('call_') &&
      named.usage.prompt_tokens > auto.usage.prompt_tokens, JSON.stringify([named, auto.usage]));
let sCalls = null;
for await (const ch of await client.chat.completions.create({ model: 'tiny', max_tokens: 6,
    temperature: 0, tools, messages: weather, stream: true,
    tool_choice: { type: 'function', function: { name: 'get_weather' } } }))
    for (const ci of ch.choices) if (ci.delta.tool_calls) sCalls = ci.delta.tool_calls;
check('tool_choice named, streamed: the same call', sCalls?.[0]?.function?.name === 'get_weather' &&
      sCalls[0].function.arguments === nc.message.tool_calls[0].function.arguments,
      JSON.stringify(sCalls));
const req = await client.chat.completions.create({ model: 'tiny', max_tokens: 6,
    temperature: 0, tools, messages: weather, tool_choice: 'required' });
check('tool_choice required: the prompt ends in an opened call header',
      req.usage.prompt_tokens > auto.usage.prompt_tokens &&
      req.usage.prompt_tokens < named.usage.prompt_tokens &&
      (req.choices[0].message.tool_calls ?? []).every((c) => c.function.name === 'get_weather'),
      JSON.stringify(req));
for (const [choice, toolsArg] of [[{ type: 'function', function: { name: 'nope' } }, tools],
                                  ['required', undefined]]) {
    try {
        await client.chat.completions.create({ model: 'tiny', max_tokens: 1, messages: weather,
                                               tools: toolsArg, tool_choice: choice });
        check(`tool_choice ${JSON.stringify(choice)}: 400`, false, 'no error');
    } catch (err) {
        check(`tool_choice ${JSON.stringify(choice)}: 400 naming tool_choice`, err.status === 400 &&
              err.param === 'tool_choice', String(err));
    }
}

// --- GET /metrics -----------------------------------------------------------------
// Every sample line is `name{labels} value` after its family's HELP and TYPE.
function scrape(text) {
    const families = new Map(), samples = [];
    let ok = true;
    for (const line of text.split('\n')) {
        if (!line) continue;
        let m = line.match(/^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/);
        if (m) {
            const f = families.get(m[2]) ?? {};
            f[m[1]] = m[3];
            families.set(m[2], f);
            continue;
        }
        m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/);
        const fam = m && m[1].replace(/_(bucket|sum|count)$/, '');
        const f = m && (families.get(m[1]) ?? families.get(fam));
        if (!m || !f?.HELP || !f?.TYPE || !Number.isFinite(Number(m[3]))) {
            ok = false;
            console.log(`bad metrics line: ${line}`);
            continue;
        }
        samples.push({ name: m[1], labels: m[2] ?? '', value: Number(m[3]) });
    }
    return { ok, families, samples };
}
const value = (sc, name, labels = '') =>
    sc.samples.find((x) => x.name === name && x.labels.includes(labels))?.value ?? 0;
const getMetrics = async () => scrape(await (await fetch(`${base}/metrics`)).text());
const m1 = await getMetrics();
await client.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 3 });
const m2 = await getMetrics();
check('/metrics parses (HELP and TYPE before samples, numeric values)', m1.ok && m2.ok &&
      m2.samples.length > 20);
const chat200 = 'route="/v1/chat/completions",code="200"';
const grew = (name, labels = '') => value(m2, name, labels) - value(m1, name, labels);
check('/metrics counters grow after a request',
      grew('gptoss_requests_total', chat200) === 1 &&
      grew('gptoss_generation_tokens_total') === 3 &&
      value(m2, 'gptoss_prompt_tokens_total') > value(m1, 'gptoss_prompt_tokens_total') &&
      value(m2, 'gptoss_requests_total', 'code="400"') > 0 &&
      value(m2, 'gptoss_requests_total', 'code="401"') > 0,
      JSON.stringify(m2.samples.filter((x) => x.name.startsWith('gptoss_requests_total'))));
for (const h of ['gptoss_time_to_first_token_seconds', 'gptoss_inter_token_latency_seconds']) {
    const b = m2.samples.filter((x) => x.name === `${h}_bucket`);
    check(`${h}: a histogram, cumulative buckets, _count = +Inf bucket`,
          m2.families.get(h)?.TYPE === 'histogram' && b.length > 3 &&
          b.every((x, i) => i === 0 || x.value >= b[i - 1].value) &&
          b.at(-1).labels === '{le="+Inf"}' && b.at(-1).value === value(m2, `${h}_count`) &&
          value(m2, `${h}_count`) > value(m1, `${h}_count`) && value(m2, `${h}_sum`) > 0,
          JSON.stringify(b));
}
check('/metrics gauges: queue, batch, KV blocks', ['gptoss_requests_queued',
      'gptoss_requests_running', 'gptoss_kv_blocks_used', 'gptoss_kv_blocks_cached'].every((g) =>
      m2.families.get(g)?.TYPE === 'gauge') && value(m2, 'gptoss_kv_blocks_total') > 0 &&
      value(m2, 'gptoss_requests_running') === 0 && value(m2, 'gptoss_kv_blocks_used') === 0,
      JSON.stringify(m2.samples.filter((x) => /queued|running|kv_/.test(x.name))));

// --- a client that goes away mid-stream, then the server still answers ---------
const ac = new AbortController();
try {
    const s2 = await client.chat.completions.create({ model: 'tiny', messages: hello,
        max_tokens: 200, stream: true }, { signal: ac.signal });
    for await (const ch of s2) { ac.abort(); }
} catch { /* aborted */ }
const after = await client.chat.completions.create({ model: 'tiny', messages: hello, max_tokens: 8,
                                                     temperature: 0 });
check('after a client disconnect the server answers the same', after.choices[0].message.content ===
      c0.message.content);
const health = await fetch(`${base}/health`);
check('GET /health 200', health.status === 200);

process.exit(failed);
