#!/usr/bin/env node
// Expected decode speed of gpt-oss-20b and -120b on several machines (one rank
// each), from a one-machine measurement of the decode rate and the mesh's
// communicated bytes.  Writes a Markdown table; the README's table comes from
//
//   node bench/mesh_estimate.mjs --gbs G --latency-us L
//
// where G is the bytes per second that `gptoss bench -p 0 -n 32 --json -` reports as
// effective_gbs on one such machine (weight bytes read per token x tok/s).
//
// The model of one decode step (batch 1) on a mesh of TP x EP ranks:
//   time = compute + communication
//   compute = (bytes the slowest rank reads per token) / G, with per layer
//     attention: the rank's KV-head groups (1/TP of q, k, v, o),
//     experts:   the most loaded EP rank's share of the token's top-4 experts
//                (expected maximum over uniformly random routing, computed
//                exactly over all expert sets; real routing is not uniform),
//     plus 1/(TP x EP) of the unembedding rows and the replicated small tensors;
//   communication = the allreduces' bytes at the link rate plus two latencies
//     (reduce-scatter, then allgather) per allreduce: one over the model group
//     for the embedding, per layer one over TP (when TP > 1) and one over EP
//     (when EP > 1); then the sampler's candidates (a few bytes per rank).
// The byte counts follow src/mesh.c (weights) and src/dist_mpi.c (a direct
// reduce-scatter and allgather: each rank sends 2 (N-1)/N of the buffer).
// Memory: a rank holds its heads, its experts and its vocabulary rows; the
// table says how much, so meshes that do not fit a machine can be ruled out.

const args = process.argv.slice(2);
function opt(name, def) {
    const i = args.indexOf(name);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : def;
}
if (args.includes('-h') || args.includes('--help')) {
    console.log(`usage: node bench/mesh_estimate.mjs [--gbs GB/s] [--dense q8|bf16]
       [--latency-us US] [--links 10,25,100] [--machines 1,2,4,8] [--models 20b,120b]

  --gbs GB/s        decode bytes per second of one machine (gptoss bench's
                    effective_gbs; default 20)
  --dense q8|bf16   dense weights' type (default q8: GGUF Q8_0, like ggml-org's files)
  --latency-us US   one message's latency between machines (default 30)
  --links LIST      link rates in Gbit/s (default 10,25,100)
  --machines LIST   machine counts (default 1,2,4,8)`);
    process.exit(0);
}
const gbs = Number(opt('--gbs', '20')) * 1e9;
const dense = opt('--dense', 'q8');
const latency = Number(opt('--latency-us', '30')) * 1e-6;
const links = opt('--links', '10,25,100').split(',').map(Number);
const machines = opt('--machines', '1,2,4,8').split(',').map(Number);
const models = opt('--models', '20b,120b').split(',');
if (!(gbs > 0) || !['q8', 'bf16'].includes(dense) || !(latency >= 0) ||
    links.some(x => !(x > 0)) || machines.some(x => !(x >= 1 && Number.isInteger(x)))) {
    console.error('mesh_estimate: bad option value (see --help)');
    process.exit(2);
}

// The two real configurations (spec section 1).
const CONFIGS = {
    '20b': {layers: 24, experts: 32},
    '120b': {layers: 36, experts: 128},
};
const H = 2880, HEADS = 64, KV = 8, D = 64, FF = 2880, VOCAB = 201088, TOPK = 4;

// Bytes of n values of a dense matrix; MXFP4: 17 bytes per 32 values.
const denseBytes = n => (dense === 'q8' ? (n / 32) * 34 : n * 2);
const bf = 2;
const perKvHead = (() => {
    const G = HEADS / KV;
    return denseBytes((G * D + 2 * D) * H) + (G * D + 2 * D) * bf + G * bf + denseBytes(H * G * D);
})();
const perExpert = 2 * FF * (H / 32) * 17 + 2 * FF * bf + H * (FF / 32) * 17 + H * bf;
const vocabRow = denseBytes(H);
const replicatedPerLayer = (e) => 3 * H * bf + e * H * bf + e * bf;

// Expected number of the token's TOPK experts on the busiest of EP ranks, each
// holding a contiguous range of E/EP experts: exact, over all C(E, TOPK) sets.
function expectedMaxLoad(E, EP) {
    if (EP === 1) return TOPK;
    const per = E / EP;
    let sum = 0, count = 0;
    const load = new Array(EP).fill(0);
    for (let a = 0; a < E; a++) {
        load[Math.floor(a / per)]++;
        for (let b = a + 1; b < E; b++) {
            load[Math.floor(b / per)]++;
            for (let c = b + 1; c < E; c++) {
                load[Math.floor(c / per)]++;
                for (let d = c + 1; d < E; d++) {
                    const r = Math.floor(d / per);
                    load[r]++;
                    sum += Math.max(load[Math.floor(a / per)], load[Math.floor(b / per)],
                                    load[Math.floor(c / per)], load[r]);
                    count++;
                    load[r]--;
                }
                load[Math.floor(c / per)]--;
            }
            load[Math.floor(b / per)]--;
        }
        load[Math.floor(a / per)]--;
    }
    return sum / count;
}

function meshes(E, n) {
    const out = [];
    for (let tp = 1; tp <= n; tp++)
        if (n % tp === 0 && KV % tp === 0 && E % (n / tp) === 0) out.push([tp, n / tp]);
    return out;
}

// Bytes one rank sends in an allreduce of `floats` over `ranks` ranks.
const allreduceBytes = (floats, ranks) => (ranks > 1 ? (2 * (ranks - 1) / ranks) * floats * 4 : 0);

function estimate(name, n) {
    const {layers, experts} = CONFIGS[name];
    let best = null;
    for (const [tp, ep] of meshes(experts, n)) {
        const m = tp * ep;
        const load = expectedMaxLoad(experts, ep);
        const readPerToken = layers * (perKvHead * (KV / tp) + load * perExpert + replicatedPerLayer(experts)) +
                             (VOCAB / m) * vocabRow + vocabRow /* the token's embedding row */;
        const resident = layers * (perKvHead * (KV / tp) + (experts / ep) * perExpert + replicatedPerLayer(experts)) +
                         (VOCAB / m) * (vocabRow + H * bf) /* unembedding; embedding in BF16 */;
        const reduces = (m > 1 ? 1 : 0) + layers * ((tp > 1 ? 1 : 0) + (ep > 1 ? 1 : 0));
        const sent = allreduceBytes(H, m) + layers * (allreduceBytes(H, tp) + allreduceBytes(H, ep)) +
                     (m > 1 ? 8 : 0);
        const compute = readPerToken / gbs;
        const perLink = links.map(g => 1 / (compute + sent / (g * 1e9 / 8) + 2 * latency * reduces));
        const r = {name, n, tp, ep, load, readPerToken, resident, sent, reduces, compute, perLink};
        if (!best || r.perLink[0] > best.perLink[0]) best = r;
    }
    return best;
}

const f2 = x => x.toFixed(2);
console.log(`Decode, one sequence, ${dense === 'q8' ? 'Q8_0' : 'BF16'} dense weights and MXFP4 experts; ` +
            `each machine reads weights at ${f2(gbs / 1e9)} GB/s; ` +
            `${(latency * 1e6).toFixed(0)} us per message.\n`);
console.log(`| model | machines | mesh TPxEP | weights per machine GB | read per token GB | ` +
            `sent per token KB | allreduces per token | ` +
            links.map(g => `tok/s at ${g} Gbit/s`).join(' | ') + ' |');
console.log('|' + ' --- |'.repeat(7 + links.length));
for (const name of models) {
    if (!CONFIGS[name]) {
        console.error(`mesh_estimate: unknown model ${name} (20b or 120b)`);
        process.exit(2);
    }
    for (const n of machines) {
        const r = estimate(name, n);
        if (!r) continue;
        console.log(`| ${name} | ${n} | ${r.tp}x${r.ep} | ${f2(r.resident / 1e9)} | ${f2(r.readPerToken / 1e9)} | ` +
                    `${(r.sent / 1e3).toFixed(1)} | ${r.reduces} | ` + r.perLink.map(f2).join(' | ') + ' |');
    }
}
