#!/usr/bin/env node
// Writes a tiny random-weight GGUF of llama.cpp's "llama" architecture (F32,
// 2 layers, hidden 64, a 256-token byte-level vocabulary; under 1 MB), so that
// the llama.cpp half of bench/compare.sh can be checked in seconds without a
// 20b-shape file.  gptoss does not run this architecture: its rows of the check
// show as failed, which checks that path of the table too.
//
//   node bench/tiny_gguf.js OUT.gguf
'use strict';

const fs = require('fs');

const N_EMBD = 64, N_HEAD = 4, N_LAYER = 2, N_FF = 128, N_CTX = 2048, ALIGN = 32;
const GGUF_U32 = 4, GGUF_I32 = 5, GGUF_F32 = 6, GGUF_STRING = 8, GGUF_ARRAY = 9;
const GGML_F32 = 0;

// GPT-2's byte-level alphabet: each byte is one printable character.
function byteTokens() {
    const keep = [];
    for (let b = 33; b <= 126; b++) keep.push(b);
    for (let b = 161; b <= 172; b++) keep.push(b);
    for (let b = 174; b <= 255; b++) keep.push(b);
    const map = new Map(keep.map((b) => [b, b]));
    let n = 0;
    for (let b = 0; b < 256; b++) if (!map.has(b)) map.set(b, 256 + n++);
    return [...Array(256).keys()].map((b) => String.fromCodePoint(map.get(b)));
}

class Writer {
    constructor() { this.parts = []; this.size = 0; }
    push(buf) { this.parts.push(buf); this.size += buf.length; }
    u32(v) { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
    i32(v) { const b = Buffer.alloc(4); b.writeInt32LE(v); this.push(b); }
    u64(v) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
    f32(v) { const b = Buffer.alloc(4); b.writeFloatLE(v); this.push(b); }
    str(s) { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b); }
    pad(align) { const n = (align - (this.size % align)) % align; if (n) this.push(Buffer.alloc(n)); }
}

function main() {
    const out = process.argv[2];
    if (!out) {
        process.stderr.write('usage: node bench/tiny_gguf.js OUT.gguf\n');
        process.exit(2);
    }
    const tokens = byteTokens();
    const nVocab = tokens.length;
    const kv = [
        ['general.architecture', GGUF_STRING, 'llama'],
        ['general.name', GGUF_STRING, 'tiny random llama'],
        ['llama.context_length', GGUF_U32, N_CTX],
        ['llama.embedding_length', GGUF_U32, N_EMBD],
        ['llama.block_count', GGUF_U32, N_LAYER],
        ['llama.feed_forward_length', GGUF_U32, N_FF],
        ['llama.attention.head_count', GGUF_U32, N_HEAD],
        ['llama.attention.head_count_kv', GGUF_U32, N_HEAD],
        ['llama.attention.layer_norm_rms_epsilon', GGUF_F32, 1e-5],
        ['llama.rope.dimension_count', GGUF_U32, N_EMBD / N_HEAD],
        ['tokenizer.ggml.model', GGUF_STRING, 'gpt2'],
        ['tokenizer.ggml.pre', GGUF_STRING, 'default'],
        ['tokenizer.ggml.tokens', GGUF_ARRAY, [GGUF_STRING, tokens]],
        ['tokenizer.ggml.token_type', GGUF_ARRAY, [GGUF_I32, tokens.map(() => 1)]],
        ['tokenizer.ggml.merges', GGUF_ARRAY, [GGUF_STRING, []]],
        ['tokenizer.ggml.bos_token_id', GGUF_U32, 0],
        ['tokenizer.ggml.eos_token_id', GGUF_U32, 1],
    ];
    const tensors = [
        ['token_embd.weight', [N_EMBD, nVocab]],
        ['output_norm.weight', [N_EMBD]],
        ['output.weight', [N_EMBD, nVocab]],
    ];
    for (let i = 0; i < N_LAYER; i++) {
        tensors.push([`blk.${i}.attn_norm.weight`, [N_EMBD]],
            [`blk.${i}.attn_q.weight`, [N_EMBD, N_EMBD]],
            [`blk.${i}.attn_k.weight`, [N_EMBD, N_EMBD]],
            [`blk.${i}.attn_v.weight`, [N_EMBD, N_EMBD]],
            [`blk.${i}.attn_output.weight`, [N_EMBD, N_EMBD]],
            [`blk.${i}.ffn_norm.weight`, [N_EMBD]],
            [`blk.${i}.ffn_gate.weight`, [N_EMBD, N_FF]],
            [`blk.${i}.ffn_up.weight`, [N_EMBD, N_FF]],
            [`blk.${i}.ffn_down.weight`, [N_FF, N_EMBD]]);
    }

    const w = new Writer();
    w.push(Buffer.from('GGUF'));
    w.u32(3);
    w.u64(tensors.length);
    w.u64(kv.length);
    for (const [key, type, value] of kv) {
        w.str(key);
        w.u32(type);
        if (type === GGUF_STRING) w.str(value);
        else if (type === GGUF_U32) w.u32(value);
        else if (type === GGUF_F32) w.f32(value);
        else {
            const [et, items] = value;
            w.u32(et);
            w.u64(items.length);
            for (const it of items) et === GGUF_STRING ? w.str(it) : w.i32(it);
        }
    }
    let offset = 0;
    const datas = [];
    let seed = 12345;
    // A small LCG: the file is a pure function of this script.
    const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed / 4294967296 - 0.5; };
    for (const [name, dims] of tensors) {
        const n = dims.reduce((a, b) => a * b, 1);
        const data = Buffer.alloc(n * 4);
        const norm = name.includes('norm');
        for (let i = 0; i < n; i++) data.writeFloatLE(norm ? 1 : rnd() * 0.2, i * 4);
        w.str(name);
        w.u32(dims.length);
        for (const d of dims) w.u64(d);
        w.u32(GGML_F32);
        w.u64(offset);
        datas.push(data);
        offset += Math.ceil(data.length / ALIGN) * ALIGN;
    }
    w.pad(ALIGN);
    for (const d of datas) {
        w.push(d);
        w.pad(ALIGN);
    }
    fs.writeFileSync(out, Buffer.concat(w.parts));
}

main();
