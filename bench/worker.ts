// One addon measurement in its own process (the thread count is per process): spawned by bench/run.ts as
//   node --import tsx bench/worker.ts '<json job>'
// with SEMICAP_THREADS and OMP_WAIT_POLICY set by the parent. Prints one line `@@RESULT {json}` on stdout.
// Jobs: prepare (save the captioner for the Python side, greedy ids for the cross-check, CLIP text length of
// sampled captions), load (cold then warm Captioner.create), caption (tinybench, batch 1 and 8, plus a
// CLIP / decode split), ce and scst (per-step times from the trainer's progress events).
import { readFile } from 'node:fs/promises'
import { Bench } from 'tinybench'
import { Captioner, Clip, ClipTokenizer, Gpt2Tokenizer, Tensor, runtimeInfo, type Caption, type DecodeOptions } from '../lib/index.js'
import { resident } from './mem.js'

export interface Job {
  kind: 'prepare' | 'load' | 'caption' | 'ce' | 'scst'
  models: string
  /** Raw float32 pixels [maxBatch,3,S,S] (caption / prepare). */
  pixels: string
  maxBatch: number
  batches?: number[]
  iters: number
  warmup: number
  /** Training: PNG images, the caption, the feature cache folder. */
  images?: string[]
  caption?: string
  featureCache?: string
  steps?: number
  /** prepare: where to save the captioner. */
  saveDir?: string
  /** caption: CPU inference weights ('float32' default, 'bfloat16', 'int8'); the greedy ids of batch maxBatch come back. */
  dtype?: 'float32' | 'bfloat16' | 'int8'
  tokens: number
  samples?: number
  profile?: boolean
  /** caption: also time, each round, CLIP features alone at maxBatch (`clip b8`) and the per-token decoding cost at
   * every batch (`decode per token bN`: (20-token - 1-token captionFeatures) / 19 per iteration), the measurements
   * the ONNX Runtime peer (bench/ort/driver.ts) reports too. */
  parts?: boolean
}

const GREEDY: DecodeOptions = { maxTokens: 20, minTokens: 20, stop: null, stopAtEos: false }

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const n = s.length
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2
}

async function create(models: string, dtype?: Job['dtype']): Promise<Captioner> {
  return Captioner.create({ clip: `${models}/clip`, gpt2: `${models}/gpt2`, mapper: { type: 'mlp', prefixLength: 10 }, device: 'cpu', dtype })
}

async function pixelsOf(job: Job, size: number): Promise<(B: number) => Tensor> {
  const buf = await readFile(job.pixels)
  const all = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4)
  const per = 3 * size * size
  if (all.length !== job.maxBatch * per) throw new Error(`${job.pixels}: ${all.length} floats, expected ${job.maxBatch * per}`)
  return (B: number) => new Tensor('float32', [B, 3, size, size], all.slice(0, B * per))
}

const statsOf = (xs: number[]) => ({ median_ms: median(xs), mean_ms: xs.reduce((a, b) => a + b, 0) / xs.length, min_ms: Math.min(...xs), samples_ms: xs })

async function timeLoop(fn: () => Promise<unknown>, warmup: number, iters: number): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn()
  const out: number[] = []
  for (let i = 0; i < iters; i++) {
    const t = performance.now()
    await fn()
    out.push(performance.now() - t)
  }
  return out
}

async function stepTimes(cap: Captioner, options: Parameters<Captioner['train']>[0]): Promise<{ steps_ms: number[]; last_loss?: number; prepare_ms: number }> {
  const times: number[] = []
  let last = 0
  let first = NaN
  const t0 = performance.now()
  const run = cap.train(options)
  run.on('progress', (p: { seconds: number }) => {
    if (Number.isNaN(first)) first = performance.now() - t0 - p.seconds * 1000
    times.push((p.seconds - last) * 1000)
    last = p.seconds
  })
  const summary = await run
  return { steps_ms: times, last_loss: summary.lastLoss, prepare_ms: first }
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2] ?? '{}') as Job
  const res: Record<string, unknown> = { kind: job.kind, threads: runtimeInfo().threads, env_threads: process.env.SEMICAP_THREADS ?? null, addon_dir: process.env.SEMICAP_PREBUILD ?? null }

  if (job.kind === 'load') {
    const times: number[] = []
    for (let i = 0; i < 3; i++) {
      const t = performance.now()
      const cap = await create(job.models)
      times.push(performance.now() - t)
      cap.dispose()
    }
    res.cold_ms = times[0]
    res.warm_ms = median(times.slice(1))
    res.samples_ms = times
    // Warm breakdown: CLIP alone (weights + its BPE), then a captioner around that loaded CLIP (GPT-2 weights,
    // mapper init, GPT-2 tokenizer), and the two tokenizers on their own.
    const part = async <T>(fn: () => Promise<T>): Promise<[number, T]> => {
      const t = performance.now()
      const v = await fn()
      return [performance.now() - t, v]
    }
    const [clipMs, clip] = await part(() => Clip.load(`${job.models}/clip`, { device: 'cpu' }))
    const [capMs, cap] = await part(() => Captioner.create({ clip, gpt2: `${job.models}/gpt2`, mapper: { type: 'mlp', prefixLength: 10 }, device: 'cpu' }))
    cap.dispose()
    clip.dispose()
    const [clipTokMs] = await part(() => ClipTokenizer.load(`${job.models}/clip`))
    const [gptTokMs] = await part(() => Gpt2Tokenizer.load(`${job.models}/gpt2`, { packageFallback: true }))
    res.breakdown_ms = { clip_load: clipMs, captioner_around_loaded_clip: capMs, clip_tokenizer: clipTokMs, gpt2_tokenizer: gptTokMs }
    // Loading a saved captioner (what an application serving captions does), when prepare has written one.
    if (job.saveDir) {
      const [loadMs, saved] = await part(() => Captioner.load(job.saveDir!, { device: 'cpu' }))
      saved.dispose()
      res.captioner_load_ms = loadMs
    }
  } else {
    const beforeLoad = resident() // (the addon and libtorch are loaded: runtimeInfo() above)
    const cap = await create(job.models, job.dtype)
    const loaded = resident()
    const size = cap.clip.imageSize
    const px = await pixelsOf(job, size)
    const rowsOf = (c: Caption[]): number[][] => c.map((x) => x.ids)

    if (job.kind === 'prepare') {
      await cap.save(job.saveDir!)
      res.greedy_ids = rowsOf(await cap.caption(px(job.maxBatch), { ...GREEDY, maxTokens: job.tokens, minTokens: job.tokens }))
      // What the clip-reward stage feeds CLIP's text tower: "A photo depicts " + the decoded sampled caption,
      // CLIP-tokenised and padded to the longest of the batch (greedy B + B*K samples). Estimated here on the
      // same images with the same decoding settings (sampling, stop at '.' or the end token).
      const feats = await cap.clip.imageFeatures(px(job.maxBatch))
      const K = job.samples ?? 5
      const D = feats.shape[1]!
      const rep = new Float32Array(job.maxBatch * K * D)
      const f = feats.data as Float32Array
      for (let b = 0; b < job.maxBatch; b++) for (let k = 0; k < K; k++) rep.set(f.subarray(b * D, (b + 1) * D), (b * K + k) * D)
      const sampled = await cap.captionFeatures(new Tensor('float32', [job.maxBatch * K, D], rep), { decoding: 'sample', maxTokens: job.tokens, seed: 7 })
      const greedy = await cap.captionFeatures(feats, { maxTokens: job.tokens })
      const texts = [...greedy, ...sampled].map((c) => 'A photo depicts ' + c.text)
      const ids = cap.clip.tokenize(texts)
      res.clip_len = ids.shape[1]
      res.sampled_tokens_mean = sampled.reduce((a, c) => a + c.ids.length, 0) / sampled.length
      res.greedy_tokens_mean = greedy.reduce((a, c) => a + c.ids.length, 0) / greedy.length
      res.gpt2_caption_tokens = cap.tokenizer ? cap.tokenizer.encode(job.caption ?? '').length : null
    } else if (job.kind === 'caption') {
      const bench = new Bench({ iterations: job.iters, time: 0, warmupIterations: job.warmup, warmupTime: 0, retainSamples: true, throws: true })
      for (const B of job.batches ?? [1, 8]) {
        const x = px(B)
        bench.add(`caption b${B}`, async () => {
          await cap.caption(x, GREEDY)
        })
      }
      await bench.run()
      const out: Record<string, unknown> = {}
      for (const task of bench.tasks) {
        const r = task.result
        if (r.state !== 'completed') throw new Error(`${task.name}: ${r.state}`)
        out[task.name] = { median_ms: r.latency.p50, mean_ms: r.latency.mean, min_ms: r.latency.min, rme: r.latency.rme, samples_ms: r.latency.samples ? [...r.latency.samples] : [] }
      }
      if (job.parts) {
        const B = job.maxBatch
        const x = px(B)
        out[`clip b${B}`] = statsOf(await timeLoop(() => cap.clip.imageFeatures(x), 1, job.iters))
        const feats = await cap.clip.imageFeatures(x)
        const D = feats.shape[1]!
        for (const b of job.batches ?? [1, 8]) {
          const fb = new Tensor('float32', [b, D], (feats.data as Float32Array).slice(0, b * D))
          // mapper + prefix forward + first token are in both runs: the difference is the tokens-1 decode steps.
          const one = { ...GREEDY, maxTokens: 1, minTokens: 1 }
          await cap.captionFeatures(fb, GREEDY)
          await cap.captionFeatures(fb, one)
          const perToken: number[] = []
          for (let i = 0; i < job.iters; i++) {
            let t = performance.now()
            await cap.captionFeatures(fb, GREEDY)
            const full = performance.now() - t
            t = performance.now()
            await cap.captionFeatures(fb, one)
            const first = performance.now() - t
            perToken.push((full - first) / (GREEDY.maxTokens! - 1))
          }
          out[`decode per token b${b}`] = statsOf(perToken)
        }
      }
      res.tasks = out
      // Resident memory: before the load, after it, and the peak over the caption runs (batch 1 and maxBatch).
      res.memory = { before_mb: beforeLoad.rss_mb, loaded_mb: loaded.rss_mb, peak_mb: resident().hwm_mb }
      res.weights = { captioner: cap.weights, clip: cap.clip.weights }
      const info = runtimeInfo()
      res.kernels = { cpu: info.cpu, blas: info.blas, blas_core_type: info.blasCoreType, choices: info.kernelChoices, pool: info.pool }
      if (job.dtype) res.greedy_ids = (await cap.caption(px(job.maxBatch), GREEDY)).map((c) => c.ids)
      if (job.profile) {
        // Where the batch-8 time goes: CLIP vision alone, decoding from features (20 tokens), and decoding 1 token
        // (mapper + prefix forward + first logits): per-step cost = (20-token - 1-token) / 19.
        const B = job.maxBatch
        const x = px(B)
        const feats = await cap.clip.imageFeatures(x)
        const it = Math.max(2, Math.min(job.iters, 3))
        const prof: Record<string, number> = {}
        for (const b of job.batches ?? [1, 8]) {
          const xb = px(b)
          const fb = new Tensor('float32', [b, feats.shape[1]!], (feats.data as Float32Array).slice(0, b * feats.shape[1]!))
          prof[`b${b}_clip_ms`] = median(await timeLoop(() => cap.clip.imageFeatures(xb), 1, it))
          prof[`b${b}_decode20_ms`] = median(await timeLoop(() => cap.captionFeatures(fb, GREEDY), 1, it))
          prof[`b${b}_decode1_ms`] = median(await timeLoop(() => cap.captionFeatures(fb, { ...GREEDY, maxTokens: 1, minTokens: 1 }), 1, it))
          prof[`b${b}_step_ms`] = (prof[`b${b}_decode20_ms`]! - prof[`b${b}_decode1_ms`]!) / 19
        }
        res.profile = prof
      }
    } else {
      const examples = job.images!.map((image, i) => ({ id: `img${i}`, image, captions: [job.caption!] }))
      const steps = job.steps ?? 5
      const r =
        job.kind === 'ce'
          ? await stepTimes(cap, { stage: 'supervised', labeled: examples, steps, batchSize: examples.length, lr: 1e-5, featureCache: job.featureCache })
          : await stepTimes(cap, {
              stage: 'clip-reward',
              unlabeled: examples,
              steps,
              batchSize: examples.length,
              samples: job.samples ?? 5,
              maxTokens: job.tokens,
              lr: 1e-6,
              featureCache: job.featureCache,
            })
      const skip = Math.min(2, Math.max(0, r.steps_ms.length - 1))
      res.steps_ms = r.steps_ms
      res.skipped = skip
      res.median_ms = median(r.steps_ms.slice(skip))
      res.last_loss = r.last_loss
      res.prepare_ms = r.prepare_ms
    }
    cap.dispose()
  }
  res.threads_after = runtimeInfo().threads
  process.stdout.write(`@@RESULT ${JSON.stringify(res)}\n`)
}

await main()
