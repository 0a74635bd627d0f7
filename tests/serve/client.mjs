// The `gptoss serve` end-to-end checks with the official openai client (pinned in
// package.json), run by tests/e2e_serve.sh: node client.mjs BASE_URL API_KEY GREEDY_TEXT
// where GREEDY_TEXT is `gptoss generate`'s greedy answer to "Hello" (8 tokens).
import OpenAI from 'openai';

const [base, key, greedy] = process.argv.slice(2);
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
