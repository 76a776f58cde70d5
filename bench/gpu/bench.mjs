// GPU benchmark: ViT-B/32 + GPT-2 124M shapes, caption images/s at batch 1, 8, 64 (greedy, 20 tokens after a
// 10-token prefix) and one training step of each stage, fp32 and bf16 autocast, then the eager PyTorch reference
// on the same machine in the same run. Usage: node bench/gpu/bench.mjs MODELS_DIR TOKENIZER_DIR WORK_DIR
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import sharp from 'sharp'
import { Captioner, Tensor, writeSafetensors } from '../../dist/index.js'

const [models, tokDir, work] = process.argv.slice(2)
mkdirSync(work, { recursive: true })
for (const f of ['vocab.json', 'merges.txt']) copyFileSync(join(tokDir, f), join(models, 'gpt2', f))
for (const f of ['vocab.json', 'merges.txt']) copyFileSync(join(tokDir, '..', 'clip-tokenizer', f), join(models, 'clip', f))
const out = { node: {}, ref: {} }
const t0 = performance.now()
const cap = await Captioner.create({ clip: join(models, 'clip'), gpt2: join(models, 'gpt2'), mapper: { type: 'mlp', prefixLength: 10 }, device: 'cuda', seed: 1 })
out.node.create_ms = performance.now() - t0
const capDir = join(work, 'captioner')
await cap.save(capDir)

// Deterministic pixels, shared with the Python reference.
const N = 64, S = 224
const px = new Float32Array(N * 3 * S * S)
let s = 12345
for (let i = 0; i < px.length; i++) (s = (Math.imul(s, 1103515245) + 12345) >>> 0), (px[i] = (s / 2 ** 32) * 4 - 2)
const pixels = new Tensor('float32', [N, 3, S, S], px)
await writeSafetensors(join(work, 'pixels.safetensors'), { pixels })
const batch = (B) => new Tensor('float32', [B, 3, S, S], px.subarray(0, B * 3 * S * S))
const opts = { maxTokens: 20, minTokens: 20, stop: null, stopAtEos: false }

async function median(fn, warmup = 3, iters = 10) {
  for (let i = 0; i < warmup; i++) await fn()
  const t = []
  for (let i = 0; i < iters; i++) {
    const a = performance.now()
    await fn()
    t.push(performance.now() - a)
  }
  return t.sort((x, y) => x - y)[Math.floor(t.length / 2)]
}
const greedy = await cap.caption(batch(8), opts)
out.node.greedy_ids_b8 = greedy.map((c) => c.ids)
for (const B of [1, 8, 64]) {
  const x = batch(B)
  out.node[`caption_fp32_b${B}_ms`] = await median(() => cap.caption(x, opts))
  out.node[`caption_bf16_b${B}_ms`] = await median(() => cap.caption(x, { ...opts, bf16: true }))
}

// Training steps: 8 images with 19-token captions (+ end token); stage 2 on the same images unlabeled.
const examples = []
for (let i = 0; i < 8; i++) {
  const raw = Buffer.alloc(S * S * 3)
  for (let j = 0; j < raw.length; j++) raw[j] = (j * (i + 3) + (j >> 7)) & 255
  const file = join(work, `img${i}.png`)
  await sharp(raw, { raw: { width: S, height: S, channels: 3 } }).png().toFile(file)
  examples.push({ id: `img${i}`, image: file, captions: ['a man riding a wave on top of a surfboard in the ocean near the beach on a sunny day'] })
}
async function stepMs(options) {
  const times = []
  let last = 0
  const run = cap.train({ featureCache: join(work, 'cache'), ...options })
  run.on('progress', (p) => (times.push((p.seconds - last) * 1000), (last = p.seconds)))
  await run
  return times.slice(2).sort((a, b) => a - b)[Math.floor((times.length - 2) / 2)]
}
for (const bf16 of [false, true]) {
  const tag = bf16 ? 'bf16' : 'fp32'
  out.node[`ce_step_${tag}_ms`] = await stepMs({ stage: 'supervised', labeled: examples, steps: 8, batchSize: 8, lr: 1e-5, bf16 })
  out.node[`scst_step_${tag}_ms`] = await stepMs({ stage: 'clip-reward', unlabeled: examples, steps: 5, batchSize: 8, samples: 5, maxTokens: 20, lr: 1e-6, bf16 })
}
cap.dispose()

// The eager PyTorch reference, same machine, same run, on the saved captioner and the same pixels.
execFileSync('python3', [new URL('./reference_cuda.py', import.meta.url).pathname, capDir, join(work, 'pixels.safetensors'), join(work, 'ref.json')], { stdio: 'inherit' })
out.ref = JSON.parse(readFileSync(join(work, 'ref.json'), 'utf8'))
const match = out.node.greedy_ids_b8.filter((row, i) => row.every((t, j) => t === out.ref.greedy_ids_b8[i][j])).length
out.greedy_rows_identical_b8 = match

// Floors from FLOPs and bytes at the measured rates.
const r = out.ref
const visionFlops = 2 * 87.8e6 * 50 + 12 * 2 * 2 * 50 * 50 * 768
const stepFlops = 2 * (85e6 + 38.6e6)
const weightBytes = 124.4e6 * 4
const floors = {}
for (const B of [1, 8, 64])
  for (const tag of ['fp32', 'bf16']) {
    const rate = (tag === 'fp32' ? r.matmul_fp32_tflops : r.matmul_bf16_tflops) * 1e12
    const bytes = tag === 'fp32' ? weightBytes : weightBytes / 2
    const ms = 1e3 * ((B * visionFlops) / rate + 20 * Math.max(bytes / (r.copy_gbs * 1e9), (B * stepFlops) / rate))
    floors[`caption_${tag}_b${B}_ms`] = ms
  }
out.floors = floors
const rows = []
for (const B of [1, 8, 64])
  for (const tag of ['fp32', 'bf16']) {
    const k = `caption_${tag}_b${B}_ms`
    rows.push({ what: `caption ${tag} b${B}`, node_ms: out.node[k], eager_ms: r[k], speedup: r[k] / out.node[k], images_per_s: (1000 * B) / out.node[k], floor_ms: floors[k], measured_over_floor: out.node[k] / floors[k] })
  }
for (const k of ['ce_step_fp32_ms', 'ce_step_bf16_ms', 'scst_step_fp32_ms', 'scst_step_bf16_ms'])
  rows.push({ what: k.replace('_ms', ''), node_ms: out.node[k], eager_ms: r[k], speedup: r[k] / out.node[k] })
out.table = rows
writeFileSync(join(process.env.OUT ?? work, 'bench.json'), JSON.stringify(out, null, 1))
console.table(rows.map((x) => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, typeof v === 'number' ? Number(v.toPrecision(4)) : v]))))
console.log('greedy rows identical to eager PyTorch (b8, fp32):', match, '/ 8')
