// The ONNX Runtime peer of the caption benchmark, in its own process (spawned by bench/run.ts like bench/worker.ts):
//   node --import tsx bench/ort/driver.ts '<json job>'
// onnxruntime-node (bench/ort/node_modules: CPU execution provider, float32, graphOptimizationLevel 'all',
// intraOpNumThreads = job.threads, interOpNumThreads 1) runs the graphs bench/ort/export.py wrote from the saved
// captioner: clip_features.onnx (pixels -> CLIP image features), prefill.onnx (features -> mapper -> GPT-2 over the
// 10-token prefix -> last logits + presents), decode.onnx (one token + past key/values -> logits + presents).
// The greedy loop is the benchmark's: argmax in JS, exactly `tokens` tokens, no stop token; token s-1 sits at position
// P+s-1 (P = 10). Prints one line `@@RESULT {json}` on stdout.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import * as ort from 'onnxruntime-node'
import { resident } from '../mem.js'

export interface OrtJob {
  /** Folder written by export.py (clip_features.onnx, prefill.onnx, decode.onnx, meta.json). */
  dir: string
  /** Raw float32 pixels [maxBatch,3,S,S]. */
  pixels: string
  maxBatch: number
  batches: number[]
  tokens: number
  iters: number
  warmup: number
  threads: number
  /** Also time CLIP features alone at maxBatch. */
  parts?: boolean
}

interface Meta {
  image_size: number
  prefix: number
  n_layer: number
  n_head: number
  head_dim: number
  vocab: number
  clip_dim: number
  hash: string
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const n = s.length
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2
}
const stats = (xs: number[]) => ({ median_ms: median(xs), mean_ms: xs.reduce((a, b) => a + b, 0) / xs.length, min_ms: Math.min(...xs), samples_ms: xs })

/** Row-wise argmax of logits [B,V] (first maximum, as torch.argmax). */
function argmax(t: ort.Tensor): number[] {
  const [B, V] = t.dims as number[]
  const d = t.data as Float32Array
  const out: number[] = []
  for (let b = 0; b < B!; b++) {
    let best = 0
    let bv = -Infinity
    const o = b * V!
    for (let v = 0; v < V!; v++) {
      const x = d[o + v]!
      if (x > bv) (bv = x), (best = v)
    }
    out.push(best)
  }
  return out
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2] ?? '{}') as OrtJob
  const meta = JSON.parse(await readFile(join(job.dir, 'meta.json'), 'utf8')) as Meta
  const opts: ort.InferenceSession.SessionOptions = {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: job.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  }
  const loadMs: Record<string, number> = {}
  const beforeLoad = resident()
  const t0 = performance.now()
  const open = async (name: string): Promise<ort.InferenceSession> => {
    const t = performance.now()
    const s = await ort.InferenceSession.create(join(job.dir, `${name}.onnx`), opts)
    loadMs[name] = performance.now() - t
    return s
  }
  const clip = await open('clip_features')
  const prefill = await open('prefill')
  const decode = await open('decode')
  loadMs.total = performance.now() - t0
  const loaded = resident()

  const S = meta.image_size
  const per = 3 * S * S
  const buf = await readFile(job.pixels)
  const all = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4)
  if (all.length !== job.maxBatch * per) throw new Error(`${job.pixels}: ${all.length} floats, expected ${job.maxBatch * per}`)
  const px = (B: number) => new ort.Tensor('float32', all.slice(0, B * per), [B, 3, S, S])

  const L = meta.n_layer
  const P = meta.prefix
  const presentToPast = (r: ort.InferenceSession.OnnxValueMapType): Record<string, ort.Tensor> => {
    const past: Record<string, ort.Tensor> = {}
    for (let i = 0; i < L; i++) {
      past[`past_key_${i}`] = r[`present_key_${i}`] as ort.Tensor
      past[`past_value_${i}`] = r[`present_value_${i}`] as ort.Tensor
    }
    return past
  }

  /** One caption run: CLIP -> prefill -> tokens-1 decode steps. Returns the ids [B][tokens] and the split. */
  const caption = async (x: ort.Tensor) => {
    const B = x.dims[0]!
    const a = performance.now()
    const { features } = await clip.run({ pixels: x })
    const b = performance.now()
    const pre = await prefill.run({ features: features! })
    let tok = argmax(pre.logits as ort.Tensor)
    const rows: number[][] = tok.map((t) => [t])
    let past = presentToPast(pre)
    const c = performance.now()
    for (let s = 1; s < job.tokens; s++) {
      const r = await decode.run({
        input_ids: new ort.Tensor('int64', BigInt64Array.from(tok, (t) => BigInt(t)), [B, 1]),
        position: new ort.Tensor('int64', BigInt64Array.of(BigInt(P + s - 1)), [1]),
        ...past,
      })
      tok = argmax(r.logits as ort.Tensor)
      tok.forEach((t, i) => rows[i]!.push(t))
      past = presentToPast(r)
    }
    const d = performance.now()
    return { rows, features: features!, clip_ms: b - a, prefill_ms: c - b, decode_ms: d - c }
  }

  const res: Record<string, unknown> = {
    kind: 'ort',
    threads: job.threads,
    ort_version: ort.env.versions,
    session_options: opts,
    export_hash: meta.hash,
    load_ms: loadMs,
  }
  const tasks: Record<string, unknown> = {}
  const split: Record<string, unknown> = {}
  for (const B of job.batches) {
    const x = px(B)
    let last: Awaited<ReturnType<typeof caption>> | undefined
    for (let i = 0; i < job.warmup; i++) last = await caption(x)
    const total: number[] = []
    const perToken: number[] = []
    const clipMs: number[] = []
    const prefillMs: number[] = []
    for (let i = 0; i < job.iters; i++) {
      const t = performance.now()
      last = await caption(x)
      total.push(performance.now() - t)
      perToken.push(last.decode_ms / (job.tokens - 1))
      clipMs.push(last.clip_ms)
      prefillMs.push(last.prefill_ms)
    }
    tasks[`caption b${B}`] = stats(total)
    // Per generated token after the first: the tokens-1 decode steps (embedding + GPT-2 step + logits + argmax,
    // past key/values in and out) divided by tokens-1; mapper, prefill and the first token are not in it.
    tasks[`decode per token b${B}`] = stats(perToken)
    split[`b${B}`] = { clip_ms: median(clipMs), prefill_and_first_token_ms: median(prefillMs), decode_step_ms: median(perToken) }
    if (B === job.maxBatch) {
      res.greedy_ids = last!.rows
      res.features0 = Array.from((last!.features.data as Float32Array).subarray(0, meta.clip_dim))
    }
    if (B === 1) res.greedy_ids_b1 = last!.rows
  }
  if (job.parts) {
    const x = px(job.maxBatch)
    const t: number[] = []
    for (let i = 0; i < 1 + job.iters; i++) {
      const a = performance.now()
      await clip.run({ pixels: x })
      if (i > 0) t.push(performance.now() - a)
    }
    tasks[`clip b${job.maxBatch}`] = stats(t)
  }
  res.tasks = tasks
  res.split = split
  // Resident memory: before the sessions, after creating them, and the peak over the caption runs.
  res.memory = { before_mb: beforeLoad.rss_mb, loaded_mb: loaded.rss_mb, peak_mb: resident().hwm_mb }
  await Promise.all([clip.release(), prefill.release(), decode.release()])
  process.stdout.write(`@@RESULT ${JSON.stringify(res)}\n`)
}

await main()
