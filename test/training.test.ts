// Both training stages on tiny models: the losses learn what they should, resume repeats a run exactly, abort
// stops within a step, checkpoints survive a failed save.
import { createHash } from 'node:crypto'
import { copyFileSync, existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner, loadSafetensors, runtimeInfo, Tensor } from '../lib/index.js'
import type { Example } from '../lib/data/index.js'
import { AbortError } from '../lib/errors.js'
import type { TrainProgress } from '../lib/index.js'
import { makeColourSquares, makeTinyCaptionModels, type TinyModels } from './helpers/models.js'
import { tempDir } from './helpers/paths.js'
import { mulberry32 } from '../lib/data/split.js'

let models: TinyModels
let work: string
let examples: Example[]
const COLOURS: [string, [number, number, number]][] = [
  ['red', [230, 20, 20]],
  ['green', [20, 200, 40]],
  ['blue', [20, 40, 230]],
  ['yellow', [240, 230, 30]],
]

beforeAll(async () => {
  work = tempDir('semicap-train-')
  models = await makeTinyCaptionModels(work)
  examples = await makeColourSquares(work, COLOURS, (name) => `a ${name} square.`)
})

const created: Captioner[] = []
afterAll(() => created.forEach((c) => c.dispose()))

async function fresh(): Promise<Captioner> {
  const c = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  created.push(c)
  return c
}

// Two runs' AdamW first moments (0.1 x one step's gradient) per parameter: the same parameters, each within 2e-5 of
// its scale (b's largest |value|). Returns the parameter names and how many of them moved (a nonzero moment).
function expectSameMoments(a: Record<string, Float32Array>, b: Record<string, Float32Array>): { params: string[]; moved: number } {
  const params = Object.keys(b).sort()
  expect(Object.keys(a).sort()).toEqual(params)
  let moved = 0
  for (const name of params) {
    const x = a[name]!, y = b[name]!
    let scale = 0, diff = 0
    for (let i = 0; i < x.length; i++) {
      scale = Math.max(scale, Math.abs(y[i]!))
      diff = Math.max(diff, Math.abs(x[i]! - y[i]!))
    }
    if (scale > 0) moved++
    expect(diff, name).toBeLessThanOrEqual(2e-5 * scale)
  }
  return { params, moved }
}

function collect(run: ReturnType<Captioner['train']>): TrainProgress[] {
  const out: TrainProgress[] = []
  run.on('progress', (p: TrainProgress) => out.push(p))
  return out
}

describe('stage 1: cross-entropy', () => {
  it('loss falls until the model reproduces its captions', async () => {
    const cap = await fresh()
    const run = cap.train({ stage: 'supervised', labeled: examples, steps: 120, batchSize: 4, lr: 3e-3, schedule: 'constant', featureCache: join(work, 'cache'), seed: 1 })
    const progress = collect(run)
    const prep: unknown[] = []
    run.on('prepare', (e) => prep.push(e))
    const summary = await run
    expect(summary.steps).toBe(120)
    expect(progress).toHaveLength(120)
    const first = progress[0].loss
    const last = progress.at(-1)!.loss
    expect(last).toBeLessThan(first * 0.1)
    expect(progress.every((p) => p.stage === 'supervised' && Number.isFinite(p.lr) && p.examplesPerSec > 0)).toBe(true)
    const captions = await cap.caption(examples.map((e) => e.image), { maxTokens: 12 })
    expect(captions.map((c) => c.text)).toEqual(examples.map((e) => e.captions[0]))
    // The first run filled the feature cache.
    expect(prep).toContainEqual(expect.objectContaining({ phase: 'features-done', misses: 4 }))
  })

  it('a second run reads every image feature from the cache', async () => {
    const cap = await fresh()
    const run = cap.train({ stage: 'supervised', labeled: examples, steps: 1, featureCache: join(work, 'cache') })
    const prep: { phase: string; hits?: number; misses?: number }[] = []
    run.on('prepare', (e) => prep.push(e))
    await run
    expect(prep.find((e) => e.phase === 'features-done')).toMatchObject({ hits: 4, misses: 0 })
  })

  it('the same seed gives the same losses', async () => {
    const losses = async () => {
      const cap = await fresh()
      const run = cap.train({ stage: 'supervised', labeled: examples, steps: 5, batchSize: 2, lr: 1e-3, featureCache: join(work, 'cache'), seed: 7 })
      const p = collect(run)
      await run
      return p.map((x) => x.loss)
    }
    const a = await losses()
    expect(await losses()).toEqual(a)
  })
})

describe('SCST', () => {
  it('a reward that favours one word raises its frequency', async () => {
    const cap = await fresh()
    const count = async () => {
      const caps = await cap.caption(examples.map((e) => e.image), { decoding: 'sample', seed: 3, maxTokens: 10, temperature: 1 })
      const more = await cap.caption(examples.map((e) => e.image), { decoding: 'sample', seed: 4, maxTokens: 10, temperature: 1 })
      return [...caps, ...more].reduce((n, c) => n + (c.text.match(/red/g)?.length ?? 0), 0)
    }
    const before = await count()
    const run = cap.train({
      stage: 'clip-reward',
      unlabeled: examples.map((e) => ({ ...e, captions: [] })),
      // 40 steps sufficed for some sampling seeds only (measured over 6 trainer seeds); 80 reach 'red' in nearly
      // every token for all 5 seeds tried.
      steps: 80,
      batchSize: 4,
      samples: 4,
      lr: 5e-3,
      maxTokens: 10,
      schedule: 'constant',
      reward: { type: 'custom', fn: (texts) => texts.map((t) => (t.match(/red/g)?.length ?? 0)) },
      featureCache: join(work, 'cache'),
    })
    const progress = collect(run)
    await run
    const after = await count()
    expect(after).toBeGreaterThan(before + 20)
    expect(progress.at(-1)!.reward!).toBeGreaterThan(progress[0].reward!)
  })

  /** Records the texts the run asks CLIP to tokenise (one call per SCST step: greedy rows, then samples). */
  function spyTokenize(cap: Captioner): { calls: string[][]; tokenize: Captioner['clip']['tokenize'] } {
    const tokenize = cap.clip.tokenize.bind(cap.clip)
    const calls: string[][] = []
    cap.clip.tokenize = (texts, o) => (calls.push([...texts]), tokenize(texts, o))
    return { calls, tokenize }
  }
  const unit = (t: Tensor): Float64Array[] => {
    const [N, D] = t.shape as [number, number]
    const d = t.data as Float32Array
    return Array.from({ length: N }, (_, i) => {
      const row = Float64Array.from(d.subarray(i * D, (i + 1) * D))
      const n = Math.hypot(...row)
      return row.map((x) => x / n)
    })
  }
  const dot = (a: Float64Array, b: Float64Array): number => a.reduce((s, x, i) => s + x * b[i]!, 0)
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length

  it('CLIP-S reward stage: reward and baseline are w * max(cos, 0) of the scored captions; KL starts at zero', async () => {
    const cap = await fresh()
    const K = 3
    const { calls, tokenize } = spyTokenize(cap)
    // One image, one per batch: every scored caption belongs to it. The tiny random CLIP gives most texts a negative
    // cosine with most images (clipped to 0); a white square with this prefix gives positive ones, so the check
    // below compares real values.
    const [white] = await makeColourSquares(work, [['white', [255, 255, 255]]], () => 'a white square.')
    const prefix = 'kitchen '
    const run = cap.train({ stage: 'clip-reward', unlabeled: [white!], steps: 3, batchSize: 1, samples: K, klCoef: 0.1, lr: 1e-3, reward: { w: 2, prefix }, featureCache: join(work, 'cache') })
    const progress = collect(run)
    await run
    // Identical models at the first step: the policy's log-probabilities are the sampled decoding's own (replayed),
    // the frozen reference's are computed teacher-forced, so they agree up to float32 rounding.
    expect(Math.abs(progress[0].kl!)).toBeLessThan(1e-6)
    expect(progress[2].kl!).toBeGreaterThan(1e-4)
    expect(calls).toHaveLength(3)
    const image = unit(await cap.clip.imageFeatures(await cap.clip.preprocess([white!.image])))[0]!
    const all: number[] = []
    for (const [step, texts] of calls.entries()) {
      expect(texts).toHaveLength(1 + K)
      for (const t of texts) expect(t.startsWith(prefix)).toBe(true)
      const r = unit(await cap.clip.textFeatures(tokenize(texts))).map((t) => 2 * Math.max(dot(t, image), 0))
      all.push(...r)
      expect(progress[step].baselineReward!).toBeCloseTo(r[0]!, 4)
      expect(progress[step].reward!).toBeCloseTo(mean(r.slice(1)), 4)
    }
    expect(all.some((x) => x > 0.01)).toBe(true) // not every cosine clipped to 0: the check compares real values
  })

  it('CLIP-S rewards of 8 captions of different lengths, two of them repeated (encoded by the tower once each, in length groups) equal each caption encoded in full', async () => {
    const cap = await fresh()
    const K = 7
    // The tiny model's captions all run to the token limit: each row's text is cut to its own length here (what the
    // run scores, and what is recorded), so the rows' CLIP lengths differ. Row 5 repeats the greedy caption (row 0)
    // and row 6 a sample (row 2), as a trained captioner's samples often do.
    const tokenize = cap.clip.tokenize.bind(cap.clip)
    const calls: string[][] = []
    cap.clip.tokenize = (texts, o) => {
      const own = texts.map((t, i) => t.slice(0, 9 + ((5 * i + 3) % 8) * 6))
      const cut = own.map((t, i) => (i === 5 ? own[0]! : i === 6 ? own[2]! : t))
      calls.push(cut)
      return tokenize(cut, o)
    }
    const [white] = await makeColourSquares(work, [['white', [255, 255, 255]]], () => 'a white square.')
    const prefix = 'kitchen '
    // 1 greedy + 7 sampled captions scored per step: enough rows for the tower to take them in groups of similar
    // length, each cut to its own longest; the rewards must be those of every caption encoded at full length.
    const run = cap.train({ stage: 'clip-reward', unlabeled: [white!], steps: 3, batchSize: 1, samples: K, lr: 1e-3, reward: { w: 2, prefix }, featureCache: join(work, 'cache') })
    const progress = collect(run)
    await run
    expect(calls).toHaveLength(3)
    const image = unit(await cap.clip.imageFeatures(await cap.clip.preprocess([white!.image])))[0]!
    const lengths = new Set<number>()
    let positive = 0
    for (const [step, texts] of calls.entries()) {
      expect(texts).toHaveLength(1 + K)
      const ids = tokenize(texts)
      const [N, T] = ids.shape as [number, number]
      const d = ids.data as ArrayLike<number | bigint>
      for (let i = 0; i < N; i++) {
        // Rows are padded with the end token: a row's length runs to its first end token.
        const eos = Number(d[i * T + T - 1])
        let end = 1
        while (Number(d[i * T + end]) !== eos) end++
        lengths.add(end + 1)
      }
      const r = unit(await cap.clip.textFeatures(ids)).map((t) => 2 * Math.max(dot(t, image), 0))
      positive += r.filter((x) => x > 0.01).length
      expect(progress[step].baselineReward!).toBeCloseTo(r[0]!, 4)
      expect(progress[step].reward!).toBeCloseTo(mean(r.slice(1)), 4)
    }
    expect(lengths.size).toBeGreaterThan(2) // the captions differ in length: groups are cut at different lengths
    for (const texts of calls) expect(new Set(texts).size).toBe(6) // 6 distinct captions: 2 repeated
    expect(positive).toBeGreaterThan(2) // real values compared, not cosines clipped to 0
  })

  it('stage-1 SCST with reference rewards: refText is the mean (or max) cosine to the image\'s references', async () => {
    const refs = ['a red square.', 'a small red box on grey.']
    for (const aggregate of ['mean', 'max'] as const) {
      const cap = await fresh()
      const { calls, tokenize } = spyTokenize(cap)
      const steps = 2
      const K = 2
      const labeled = [{ ...examples[0], captions: refs }]
      const run = cap.train({ stage: 'supervised', objective: 'scst', labeled, steps, batchSize: 1, samples: K, ceWeight: 0.5, reward: { type: 'refText', aggregate }, featureCache: join(work, 'cache') })
      const progress = collect(run)
      await run
      expect(progress).toHaveLength(steps)
      const refRows = unit(await cap.clip.textFeatures(tokenize(refs)))
      const scored = calls.slice(-steps) // before them: the references, encoded once when the run starts
      for (const [step, texts] of scored.entries()) {
        expect(texts).toHaveLength(1 + K)
        const r = unit(await cap.clip.textFeatures(tokenize(texts))).map((t) => {
          const cos = refRows.map((ref) => dot(t, ref))
          return aggregate === 'mean' ? mean(cos) : Math.max(...cos)
        })
        expect(Number.isFinite(progress[step].ce)).toBe(true)
        expect(progress[step].baselineReward!).toBeCloseTo(r[0]!, 4)
        expect(progress[step].reward!).toBeCloseTo(mean(r.slice(1)), 4)
      }
    }
  })

  it('stage-1 SCST with the contrastive reference reward runs (log-probabilities: <= 0)', async () => {
    const cap = await fresh()
    const run = cap.train({ stage: 'supervised', objective: 'scst', labeled: examples, steps: 2, batchSize: 2, samples: 2, ceWeight: 0.5, reward: { type: 'refContrastive' }, featureCache: join(work, 'cache') })
    const progress = collect(run)
    await run
    expect(progress).toHaveLength(2)
    for (const p of progress) {
      expect(Number.isFinite(p.ce)).toBe(true)
      expect(p.reward!).toBeLessThanOrEqual(0)
    }
  })

  it('an async custom reward trains exactly like the synchronous one; a rejected promise fails the run clearly', async () => {
    const base = { stage: 'clip-reward' as const, unlabeled: examples.map((e) => ({ ...e, captions: [] })), steps: 3, batchSize: 2, samples: 2, lr: 3e-3, featureCache: join(work, 'cache'), seed: 2 }
    const score = (texts: string[]) => texts.map((t) => (t.match(/red/g)?.length ?? 0) + t.length / 100)
    const run = async (fn: (texts: string[]) => number[] | Promise<number[]>) => {
      const cap = await fresh()
      const r = cap.train({ ...base, reward: { type: 'custom', fn } })
      const p = collect(r)
      await r
      return p.map((x) => [x.loss, x.reward, x.baselineReward])
    }
    const sync = await run(score)
    const viaAsync = await run(async (texts) => {
      await new Promise((res) => setTimeout(res, 5))
      return score(texts)
    })
    expect(viaAsync).toEqual(sync)
    expect(await run((texts) => Promise.resolve(score(texts)))).toEqual(sync)

    const cap = await fresh()
    const boom = new Error('reward service unavailable')
    const err = await cap.train({ ...base, reward: { type: 'custom', fn: async () => Promise.reject(boom) } }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toMatchObject({ code: 'E_VALUE', message: expect.stringMatching(/reward callback failed: reward service unavailable/) })
    expect((err as Error).cause).toBe(boom)
    // A promise of the wrong shape is refused like a wrong synchronous answer.
    const bad = await cap.train({ ...base, reward: { type: 'custom', fn: async () => [1] } }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(bad).toMatchObject({ code: 'E_VALUE', message: expect.stringMatching(/one number per caption/) })
  })

  it('abort releases a step that waits for a reward promise that never settles', async () => {
    const cap = await fresh()
    const controller = new AbortController()
    const run = cap.train({
      stage: 'clip-reward', unlabeled: [examples[0]], steps: 5, batchSize: 1, samples: 2, featureCache: join(work, 'cache'), signal: controller.signal,
      reward: { type: 'custom', fn: () => (setTimeout(() => controller.abort(), 20), new Promise<number[]>(() => undefined)) },
    })
    await expect(run).rejects.toMatchObject({ name: 'AbortError', code: 'E_ABORTED' })
  })

  it('a prefix plus caption length beyond n_positions is refused when train() is called', async () => {
    const cap = await fresh() // prefix 4, n_positions 64
    expect(() => cap.train({ stage: 'supervised', labeled: examples, steps: 1, maxCaptionTokens: 62 })).toThrow(expect.objectContaining({ code: 'E_CONFIG', message: expect.stringMatching(/n_positions 64.*maxCaptionTokens to at most 61/) }))
    expect(() => cap.train({ stage: 'clip-reward', unlabeled: examples, steps: 1, maxTokens: 61 })).toThrow(expect.objectContaining({ code: 'E_CONFIG', message: expect.stringMatching(/maxTokens to at most 60/) }))
    // At the limits, both run.
    await cap.train({ stage: 'supervised', labeled: examples, steps: 1, maxCaptionTokens: 61, featureCache: join(work, 'cache') })
    await cap.train({ stage: 'clip-reward', unlabeled: [examples[0]], steps: 1, batchSize: 1, samples: 1, maxTokens: 60, featureCache: join(work, 'cache') })
  })

  it('the default maxCaptionTokens fits a small GPT-2 (n_positions - prefix + 1 when under 40)', async () => {
    const { defaultMaxCaptionTokens, checkSequenceLengths } = await import('../lib/training/options.js')
    expect(defaultMaxCaptionTokens(10, 48)).toBe(39)
    expect(defaultMaxCaptionTokens(10, 1024)).toBe(40)
    // Not given: no error for a model whose n_positions is below prefix + 40 - 1; given too long: the clear error.
    expect(() => checkSequenceLengths({ stage: 'supervised', labeled: examples }, 'ce', 10, 48)).not.toThrow()
    expect(() => checkSequenceLengths({ stage: 'supervised', labeled: examples, maxCaptionTokens: 40 }, 'ce', 10, 48)).toThrow(expect.objectContaining({ code: 'E_CONFIG' }))
  })
})

describe('checkpoints, resume, abort', () => {
  it('a resumed run repeats the uninterrupted run exactly', async () => {
    const opts = { stage: 'supervised' as const, labeled: examples, steps: 6, batchSize: 3, lr: 2e-3, warmupSteps: 2, featureCache: join(work, 'cache'), seed: 5 }
    const full = await fresh()
    const runA = full.train({ ...opts, checkpointDir: join(work, 'ckA'), checkpointEvery: 3 })
    const a = collect(runA)
    await runA
    // Interrupted at step 3 (abort after the step-3 checkpoint), then resumed by a new process-like fresh model.
    const part = await fresh()
    const runB = part.train({ ...opts, checkpointDir: join(work, 'ckB'), checkpointEvery: 3 })
    const b = collect(runB)
    runB.on('checkpoint', () => runB.abort())
    await expect(runB).rejects.toBeInstanceOf(AbortError)
    // Progress is reported without stalling the training thread, so the abort lands within a step or two (~50 ms
    // each here; more than one when other test files keep the JS thread busy).
    expect(b.length).toBeGreaterThanOrEqual(3)
    expect(b.length).toBeLessThan(6)
    // A late abort may have passed step 3 but not step 6, the next checkpoint: latest is still step 3.
    expect(readFileSync(join(work, 'ckB', 'latest'), 'utf8').trim()).toBe('step-00000003')
    const resumed = await fresh()
    const runC = resumed.train({ ...opts, checkpointDir: join(work, 'ckB'), checkpointEvery: 3, resume: true })
    const c = collect(runC)
    await runC
    expect(c.map((p) => p.step)).toEqual([4, 5, 6])
    expect([...b.slice(0, 3), ...c].map((p) => p.loss)).toEqual(a.map((p) => p.loss))
    // The final checkpoint is a loadable Captioner folder with the same weights.
    const loaded = await Captioner.load(join(work, 'ckB', 'step-00000006'), { device: 'cpu' })
    created.push(loaded)
    const imgs = examples.map((e) => e.image)
    expect(await loaded.caption(imgs)).toEqual(await resumed.caption(imgs))
  })

  /**
   * Runs `opts` for `steps` uninterrupted, and again interrupted after the checkpoint at step `at` and resumed in a
   * fresh model: every reported number and the final weights must be bitwise equal.
   */
  async function expectExactResume(name: string, opts: Parameters<Captioner['train']>[0], at: number): Promise<TrainProgress[]> {
    const dirA = join(work, `resume-${name}-A`), dirB = join(work, `resume-${name}-B`)
    const full = await fresh()
    const runA = full.train({ ...opts, checkpointDir: dirA, checkpointEvery: at })
    const a = collect(runA)
    await runA
    const part = await fresh()
    const runB = part.train({ ...opts, checkpointDir: dirB, checkpointEvery: at })
    const b = collect(runB)
    runB.on('checkpoint', (c: { step: number }) => c.step === at && runB.abort())
    // A short run may finish before the abort lands: either way the checkpoint at step `at` is the resume point.
    await runB.then(
      () => undefined,
      (err) => {
        if (!(err instanceof AbortError)) throw err
      },
    )
    const dirC = join(work, `resume-${name}-C`)
    const resumed = await fresh()
    const runC = resumed.train({ ...opts, checkpointDir: dirC, checkpointEvery: at, resume: join(dirB, `step-${String(at).padStart(8, '0')}`) })
    const c = collect(runC)
    await runC
    const numbers = (ps: TrainProgress[]) => ps.map((p) => [p.step, p.loss, p.ce, p.reward, p.baselineReward, p.kl, p.lr, p.gradNorm])
    expect(numbers([...b.slice(0, at), ...c]), name).toEqual(numbers(a))
    const last = `step-${String(opts.steps).padStart(8, '0')}`
    const wa = await loadSafetensors(join(dirA, last, 'model.safetensors'))
    const wc = await loadSafetensors(join(dirC, last, 'model.safetensors'))
    expect(Object.keys(wc)).toEqual(Object.keys(wa))
    for (const k of Object.keys(wa)) expect(Buffer.from((wc[k]!.data as Float32Array).buffer).equals(Buffer.from((wa[k]!.data as Float32Array).buffer)), `${name}: ${k}`).toBe(true)
    return a
  }

  it('resume is exact for every stage and loss: SCST rewards, KL (its reference is checkpointed), repetition, CE mixing', async () => {
    const cache = join(work, 'cache')
    const unlabeled = examples.map((e) => ({ ...e, captions: [] }))
    const common = { steps: 4, batchSize: 2, samples: 2, maxTokens: 8, lr: 3e-3, featureCache: cache, seed: 9 }
    await expectExactResume('ce', { ...common, stage: 'supervised', labeled: examples, gradAccumulation: 2, warmupSteps: 1 }, 2)
    await expectExactResume('refText', { ...common, stage: 'supervised', objective: 'scst', labeled: examples, reward: { type: 'refText' }, ceWeight: 0.5, klCoef: 0.2, repetitionPenalty: 0.3 }, 2)
    await expectExactResume('refContrastive', { ...common, stage: 'supervised', objective: 'scst', labeled: examples, reward: { type: 'refContrastive' }, ceSteps: 1, gradAccumulation: 2 }, 2)
    const clipS = await expectExactResume('clipS', { ...common, stage: 'clip-reward', unlabeled, labeled: examples, reward: { type: 'clipS' }, klCoef: 0.5, repetitionPenalty: 0.2, ceMix: { weight: 0.3 } }, 2)
    // The KL term is live after the resume point (the reference is the stage's start, not the resumed weights).
    expect(clipS[2]!.kl!).toBeGreaterThan(0)
    await expectExactResume('custom', { ...common, stage: 'clip-reward', unlabeled, reward: { type: 'custom', fn: async (t: string[]) => t.map((x) => x.length / 10) }, klCoef: 0.1 }, 3)
    // Checkpoints of a KL run carry the reference; resuming one without it is refused.
    expect(existsSync(join(work, 'resume-clipS-C', 'step-00000004', 'reference.safetensors'))).toBe(true)
    expect(existsSync(join(work, 'resume-refContrastive-C', 'step-00000004', 'reference.safetensors'))).toBe(false)
    const cap = await fresh()
    const noRef = cap.train({ ...common, steps: 5, stage: 'supervised', objective: 'scst', labeled: examples, reward: { type: 'refContrastive' }, klCoef: 0.1, resume: join(work, 'resume-refContrastive-C', 'step-00000004') })
    await expect(noRef).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringMatching(/reference/) })
  })

  it('SCST gradients: two images with 5 samples each equal 10 copies with one sample each (each prefix computed once for its samples)', async () => {
    // One step from the same weights. Rows 5i..5i+4 of the batch are the samples of its image i, as they are the
    // single samples of 10 copies placed at those batch positions, so every row draws the same stream; rewards and
    // greedy baselines are the same. The first run computes each image's prefix positions once and sums their
    // gradients over its samples; the second computes them per row. AdamW's first moment after one step is 0.1 x
    // the gradient.
    const squares = await makeColourSquares(work, [['white', [255, 255, 255]], ['black', [0, 0, 0]]], () => '')
    type Run = { m: Record<string, Float32Array>; texts: string[]; ids: string[] }
    const train = async (name: string, unlabeled: Example[], batchSize: number, samples: number): Promise<Run> => {
      const cap = await fresh()
      const scored: { texts: string[]; ids: string[] }[] = []
      const dir = join(work, name)
      await cap.train({
        stage: 'clip-reward', unlabeled, steps: 1, batchSize, samples, maxTokens: 8, lr: 1e-3, seed: 4, featureCache: join(work, 'cache'),
        checkpointDir: dir, checkpointEvery: 1,
        reward: { type: 'custom', fn: (texts: string[], ids: string[]) => (scored.push({ texts, ids }), texts.map((x) => (x.length % 7) / 3)) },
      })
      const opt = await loadSafetensors(join(dir, 'step-00000001', 'optimizer.safetensors'))
      const m = Object.fromEntries(Object.keys(opt).filter((k) => k.endsWith('.exp_avg')).map((k) => [k, opt[k]!.toArray() as Float32Array]))
      return { m, ...scored[0]! }
    }
    const shared = await train('scst-shared', squares.map((e) => ({ ...e, captions: [] })), 2, 5)
    const order = shared.ids.slice(0, 2).map((id) => squares.find((e) => e.id === id)!.image)  // the batch's images
    // The batch order of a 10-example pool (the epoch's permutation depends on the seed and the pool's size): a
    // first run with 10 names, then the images placed so that batch positions 0-4 hold order[0] and 5-9 order[1].
    // (Copies in files of their own: examples of one image file are one image of the pool.)
    const copy = (i: number, from: string) => {
      const file = join(work, `copy-${i}.png`)
      copyFileSync(from, file)
      return { id: `copy-${i}`, image: file, captions: [] as string[] }
    }
    const probe = await train('scst-probe', Array.from({ length: 10 }, (_, i) => copy(i, order[0]!)), 10, 1)
    const position = new Map(probe.ids.slice(0, 10).map((id, j) => [id, j]))
    const copies = Array.from({ length: 10 }, (_, i) => copy(i, order[position.get(`copy-${i}`)! < 5 ? 0 : 1]!))
    const rows = await train('scst-rows', copies, 10, 1)
    // The same captions were scored: greedy baselines, then the samples in the same rows.
    expect(rows.texts.slice(10)).toEqual(shared.texts.slice(2))
    expect(rows.texts.slice(0, 10)).toEqual([0, 0, 0, 0, 0, 1, 1, 1, 1, 1].map((i) => shared.texts[i]))
    expect(new Set(shared.texts.slice(2)).size).toBeGreaterThan(2)  // samples that differ: advantages not all zero
    const { params, moved } = expectSameMoments(shared.m, rows.m)
    // Gradients reached the mapper (through the shared prefixes) and most of GPT-2.
    expect(params.filter((n) => n.startsWith('clip_project.') && shared.m[n]!.some((x) => x !== 0)).length).toBe(4)
    expect(moved).toBeGreaterThan(params.length / 2)
  })

  it('SCST decodes with the weights of its step: the greedy baseline of step n is what the step n - 1 checkpoint captions', async () => {
    // The sampling runs without autograd through packed copies of the weights being trained (packed.h); each optimizer
    // step must renew them. A stale copy would keep decoding with the weights of the step that packed it.
    const dir = join(work, 'fresh-weights')
    const unlabeled = examples.map((e) => ({ ...e, captions: [] }))
    const baselines: { texts: string[]; ids: string[] }[] = []
    const cap = await fresh()
    const initial = await fresh()
    await cap.train({
      stage: 'clip-reward', unlabeled, steps: 3, batchSize: 2, samples: 2, maxTokens: 8, lr: 3e-2, featureCache: join(work, 'cache'), seed: 3,
      checkpointDir: dir, checkpointEvery: 1, checkpointKeep: 3,
      // The first batchSize captions scored are the greedy baselines of the batch's images.
      reward: { type: 'custom', fn: (texts: string[], ids: string[]) => (baselines.push({ texts: texts.slice(0, 2), ids: ids.slice(0, 2) }), texts.map((t) => t.length / 10)) },
    })
    expect(baselines.length).toBe(3)
    const imagesOf = (ids: string[]) => ids.map((id) => examples.find((e) => e.id === id)!.image)
    for (let n = 1; n <= 3; n++) {
      const before = n === 1 ? initial : await Captioner.load(join(dir, `step-${String(n - 1).padStart(8, '0')}`), { device: 'cpu' })
      if (n > 1) created.push(before)
      const texts = (await before.caption(imagesOf(baselines[n - 1]!.ids), { maxTokens: 8, stop: '.' })).map((c) => c.text)
      expect(texts, `step ${n}`).toEqual(baselines[n - 1]!.texts)
    }
    // The run moved the captions: the initial weights caption step 3's images otherwise (so stale copies would show).
    expect((await initial.caption(imagesOf(baselines[2]!.ids), { maxTokens: 8, stop: '.' })).map((c) => c.text)).not.toEqual(baselines[2]!.texts)
  })

  it('SCST\'s forward over its samples replays the sampled decoding\'s products: the gradient of recomputing them, within float32 rounding', async () => {
    // The decoding that sampled the captions ran every product the teacher-forced forward over them runs (same
    // weights, same inputs); the forward takes those outputs (native/packed.h, ProductTape) and autograd goes back
    // through them as before. One step each way from the same weights: the same captions scored, AdamW's first
    // moment (0.1 x the gradient) equal within rounding, and every product of every decoding step after the first
    // replayed: 4 per GPT-2 block and the logits.
    const unlabeled = examples.map((e) => ({ ...e, captions: [] }))
    const nLayer = (JSON.parse(readFileSync(join(models.gpt2Dir, 'config.json'), 'utf8')) as { n_layer: number }).n_layer
    const train = async (name: string, replay: boolean) => {
      const cap = await fresh()
      const scored: string[][] = []
      const dir = join(work, name)
      const before = runtimeInfo().replayedProducts
      process.env.SEMICAP_SCST_REPLAY = replay ? '1' : '0'
      try {
        await cap.train({
          stage: 'clip-reward', unlabeled, steps: 1, batchSize: 2, samples: 3, maxTokens: 8, lr: 1e-3, seed: 6, featureCache: join(work, 'cache'),
          checkpointDir: dir, checkpointEvery: 1,
          reward: { type: 'custom', fn: (texts: string[]) => (scored.push(texts), texts.map((x) => (x.length % 5) / 2)) },
        })
      } finally {
        delete process.env.SEMICAP_SCST_REPLAY
      }
      const opt = await loadSafetensors(join(dir, 'step-00000001', 'optimizer.safetensors'))
      const m = Object.fromEntries(Object.keys(opt).filter((k) => k.endsWith('.exp_avg')).map((k) => [k, opt[k]!.toArray() as Float32Array]))
      return { m, texts: scored[0]!, replayed: runtimeInfo().replayedProducts - before }
    }
    const replayed = await train('replay-on', true)
    const computed = await train('replay-off', false)
    expect(computed.replayed).toBe(0)
    expect(replayed.replayed).toBe(4 * nLayer + 1)
    expect(replayed.texts).toEqual(computed.texts)
    expect(new Set(replayed.texts.slice(2)).size).toBeGreaterThan(1)  // samples that differ: advantages not all zero
    const { params, moved } = expectSameMoments(replayed.m, computed.m)
    expect(moved).toBeGreaterThan(params.length / 2)
  })

  it('abort stops within one step and leaves a usable model', async () => {
    const cap = await fresh()
    const controller = new AbortController()
    const run = cap.train({ stage: 'supervised', labeled: examples, steps: 1000, batchSize: 2, featureCache: join(work, 'cache'), signal: controller.signal })
    const progress = collect(run)
    run.on('progress', (p: TrainProgress) => p.step === 2 && controller.abort())
    await expect(run).rejects.toMatchObject({ name: 'AbortError', code: 'E_ABORTED' })
    expect(progress.length).toBeLessThanOrEqual(3)
    const caps = await cap.caption([examples[0].image], { maxTokens: 5 })
    expect(caps).toHaveLength(1)
  })

  it('a failed save leaves the previous checkpoint as latest, and it loads', async () => {
    const cap = await fresh()
    const dir = join(work, 'ckFail')
    process.env.SEMICAP_TEST_FAIL_CHECKPOINT = '4'
    try {
      const run = cap.train({ stage: 'supervised', labeled: examples, steps: 4, batchSize: 2, featureCache: join(work, 'cache'), checkpointDir: dir, checkpointEvery: 2 })
      await expect(run).rejects.toMatchObject({ code: 'E_IO' })
    } finally {
      delete process.env.SEMICAP_TEST_FAIL_CHECKPOINT
    }
    expect(readFileSync(join(dir, 'latest'), 'utf8').trim()).toBe('step-00000002')
    expect(existsSync(join(dir, 'step-00000004'))).toBe(false)
    const loaded = await Captioner.load(join(dir, 'step-00000002'), { device: 'cpu' })
    created.push(loaded)
    expect(await loaded.caption([examples[1].image], { maxTokens: 4 })).toHaveLength(1)
  })

  it('training a loaded captioner never writes its weight file (parameters are copy-on-write pages of it)', async () => {
    const dir = join(work, 'cow')
    const base = await fresh()
    await base.save(dir)
    const file = join(dir, 'model.safetensors')
    const digest = () => createHash('sha256').update(readFileSync(file)).digest('hex')
    const before = digest()
    const loaded = await Captioner.load(dir, { device: 'cpu' })
    created.push(loaded)
    const images = examples.map((e) => e.image)
    const original = await loaded.caption(images, { maxTokens: 8 })
    await loaded.train({ stage: 'supervised', labeled: examples, steps: 10, batchSize: 4, lr: 3e-3, schedule: 'constant', featureCache: join(work, 'cache') })
    const trained = await loaded.caption(images, { maxTokens: 8 })
    expect(trained.map((c) => c.score)).not.toEqual(original.map((c) => c.score))
    expect(digest()).toBe(before)
    const reloaded = await Captioner.load(dir, { device: 'cpu' })
    created.push(reloaded)
    expect(await reloaded.caption(images, { maxTokens: 8 })).toEqual(original)
  })

  it('rejects bad options with clear errors', async () => {
    const cap = await fresh()
    expect(() => cap.train({ stage: 'nope' as 'supervised', steps: 1 })).toThrow(RangeError)
    expect(() => cap.train({ stage: 'supervised' })).toThrow(/steps or epochs/)
    await expect(cap.train({ stage: 'supervised', steps: 1, labeled: [] })).rejects.toMatchObject({ code: 'E_DATA' })
    await expect(cap.train({ stage: 'clip-reward', steps: 1, unlabeled: [] })).rejects.toMatchObject({ code: 'E_DATA' })
    expect(() => cap.train({ stage: 'supervised', steps: 1, batchSize: 0, labeled: examples })).toThrow(RangeError)
  })
})

/**
 * A parameter after AdamW's update from its new moments m and v, each float32 operation rounded as native/optim.cc
 * rounds it (the double result of two floats, rounded to float, is the correctly rounded float result, sqrt and /
 * included, so this is the addon's arithmetic exactly).
 */
function adamwUpdated(p: number, m: number, v: number, decay: number, stepSize: number, sqrtBc2: number, eps: number): number {
  const f = Math.fround
  const den = f(f(f(Math.sqrt(v)) / sqrtBc2) + eps)
  return f(f(p * decay) + f(stepSize * f(m / den)))
}

describe('AdamW (the fused CPU update against a float32 hand computation)', () => {
  it('one step: p1 = p0 (1 - lr wd) - lr / bc1 * m1 / (sqrt(v1) / sqrt(bc2) + eps), bit for bit, for every trained parameter', async () => {
    const cap = await fresh()
    const dir0 = join(work, 'adamw-p0')
    await cap.save(dir0)
    const p0 = await loadSafetensors(join(dir0, 'model.safetensors'))
    const lr = 3e-3
    const wd = 0.05
    const run = cap.train({ stage: 'supervised', labeled: examples, steps: 1, batchSize: 4, lr, weightDecay: wd, schedule: 'constant', featureCache: join(work, 'cache'), seed: 3, checkpointDir: join(work, 'adamw-ck'), checkpointEvery: 1 })
    const progress = collect(run)
    await run
    expect(progress[0]!.lr).toBe(lr)
    const step1 = join(work, 'adamw-ck', 'step-00000001')
    const p1 = await loadSafetensors(join(step1, 'model.safetensors'))
    const opt = await loadSafetensors(join(step1, 'optimizer.safetensors'))
    // The native update's constants: computed in double, rounded to float once (native/optim.cc).
    const f = Math.fround
    const decay = f(1 - lr * wd)
    const stepSize = f(-lr / (1 - 0.9))
    const sqrtBc2 = f(Math.sqrt(1 - 0.999))
    const eps = f(1e-8)
    const names = Object.keys(opt).filter((k) => k.endsWith('.exp_avg')).map((k) => k.slice(0, -'.exp_avg'.length))
    expect(names.length).toBeGreaterThan(10)
    let elements = 0
    let moved = 0
    for (const name of names) {
      const a = p0[name]?.toArray() as Float32Array | undefined
      const b = p1[name]?.toArray() as Float32Array | undefined
      const m = opt[`${name}.exp_avg`]!.toArray() as Float32Array
      const v = opt[`${name}.exp_avg_sq`]!.toArray() as Float32Array
      expect(a, name).toBeDefined()
      expect(b!.length, name).toBe(a!.length)
      expect(m.length, name).toBe(a!.length)
      for (let i = 0; i < a!.length; i++) {
        const want = adamwUpdated(a![i]!, m[i]!, v[i]!, decay, stepSize, sqrtBc2, eps)
        if (b![i] !== want) expect(`${name}[${i}] = ${b![i]}`).toBe(`${name}[${i}] = ${want}`)
        if (m[i] !== 0) moved++
      }
      elements += a!.length
    }
    // Gradients reached most of the parameters (so the check above covers the update, not only the decay). Every
    // parameter of these tiny models has a multiple of 4 elements, so this checks the vector body; the scalar tail
    // runs only where a size or a thread's chunk is not a multiple of 4.
    expect(moved).toBeGreaterThan(elements / 2)
    expect(elements).toBeGreaterThan(10000)
  })
})

describe('gradient clipping (folded into the fused AdamW) against a float32 hand computation', () => {
  /** AdamW over float32 arrays with each operation rounded as native/optim.cc rounds it; the clipping scale comes
   * from `norms` (the native norm of each step, checked separately against a double computation). */
  function handAdamW(p0: Float32Array[], grads: Float32Array[][], norms: number[], lr: number, wd: number, maxNorm: number): Float32Array[] {
    const f = Math.fround
    const b1 = f(0.9), b2 = f(0.999), c1 = f(1 - b1), c2 = f(1 - b2), eps = f(1e-8), decay = f(1 - lr * wd)
    const p = p0.map((a) => Float32Array.from(a))
    const m = p0.map((a) => new Float32Array(a.length))
    const v = p0.map((a) => new Float32Array(a.length))
    grads.forEach((gs, t) => {
      const scale = maxNorm > 0 && norms[t]! > maxNorm ? f(maxNorm / (norms[t]! + 1e-6)) : 1
      const stepSize = f(-lr / (1 - 0.9 ** (t + 1)))
      const sqrtBc2 = f(Math.sqrt(1 - 0.999 ** (t + 1)))
      gs.forEach((g, j) => {
        for (let i = 0; i < g.length; i++) {
          const gi = scale === 1 ? g[i]! : f(g[i]! * scale)
          const mi = f(f(m[j]![i]! * b1) + f(gi * c1))
          const vi = f(f(v[j]![i]! * b2) + f(f(gi * gi) * c2))
          m[j]![i] = mi
          v[j]![i] = vi
          p[j]![i] = adamwUpdated(p[j]![i]!, mi, vi, decay, stepSize, sqrtBc2, eps)
        }
      })
    })
    return p
  }

  it('norms within float32 summation error of double; every parameter bit for bit, clipped or not, at 1 and 2 threads', async () => {
    const { native } = await import('../lib/native.js')
    const { setThreads } = await import('../lib/index.js')
    const random = mulberry32(11)
    // Sizes: a tail-only tensor, one chunk, several chunks of 64 Ki with a ragged end.
    const sizes = [3, 1000, 3 * 65536 + 17]
    const arr = (n: number, s: number) => Float32Array.from({ length: n }, () => (random() - 0.5) * s)
    const p0 = sizes.map((n) => arr(n, 0.2))
    const grads = [0, 1, 2].map((t) => sizes.map((n) => arr(n, t === 1 ? 1e-4 : 0.05)))  // step 2 below maxNorm
    const wire = (a: Float32Array) => new Tensor('float32', [a.length], a).toWire()
    const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)
    const before = runtimeInfo().threads
    const results: { params: Float32Array[]; norms: number[] }[] = []
    try {
      for (const threads of [1, 2]) {
        setThreads(threads)
        for (const maxNorm of [1, 0]) {
          const r = native().optim.adamwSteps(p0.map(wire), grads.map((gs) => gs.map(wire)), { lr: 2e-3, maxNorm, weightDecay: 0.1 })
          const params = r.params.map((w) => Tensor.fromWire(w).data as Float32Array)
          r.norms.forEach((n, t) => {
            let sq = 0
            for (const g of grads[t]!) for (const x of g) sq += x * x
            expect(Math.abs(n - Math.sqrt(sq)) / Math.sqrt(sq)).toBeLessThan(1e-7)
          })
          const want = handAdamW(p0, grads, r.norms, 2e-3, 0.1, maxNorm)
          want.forEach((w, j) => expect(bytes(params[j]!).equals(bytes(w)), `threads ${threads} maxNorm ${maxNorm} param ${j}`).toBe(true))
          results.push({ params, norms: r.norms })
        }
      }
    } finally {
      setThreads(before)
    }
    // Steps 1 and 3 were clipped (norms ~6 > 1), step 2 was not; clipping changed the result.
    expect(results[0]!.norms[0]).toBeGreaterThan(1)
    expect(results[0]!.norms[1]).toBeLessThan(1)
    expect(bytes(results[0]!.params[2]!).equals(bytes(results[1]!.params[2]!))).toBe(false)
    // The same norms and parameters at either thread count.
    expect(results[2]!.norms).toEqual(results[0]!.norms)
    results[2]!.params.forEach((p, j) => expect(bytes(p).equals(bytes(results[0]!.params[j]!))).toBe(true))
  })

  it('refuses mismatched gradients with a clear error', async () => {
    const { native } = await import('../lib/native.js')
    const w = new Tensor('float32', [4], new Float32Array(4)).toWire()
    const g = new Tensor('float32', [3], new Float32Array(3)).toWire()
    expect(() => native().optim.adamwSteps([w], [[g]], { lr: 1e-3, maxNorm: 1, weightDecay: 0 })).toThrow(expect.objectContaining({ code: 'E_SHAPE' }))
    expect(() => native().optim.adamwSteps([w], [[]], { lr: 1e-3, maxNorm: 1, weightDecay: 0 })).toThrow(expect.objectContaining({ code: 'E_VALUE' }))
  })
})

describe('loss math (native functions against hand computations)', () => {
  it('SCST loss = -sum (r - b) * sum_t logp / tokens', async () => {
    const { native } = await import('../lib/native.js')
    const L = native().losses
    // Two samples over a 3-token vocabulary; logits chosen so log-softmax is easy: [0, 0, 0] -> log(1/3).
    const logits = new Tensor('float32', [2, 2, 3], new Float32Array(12))
    const ids = new Tensor('int64', [2, 2], BigInt64Array.from([0n, 1n, 2n, -1n]))
    const reward = new Tensor('float32', [2], Float32Array.from([1.0, 0.5]))
    const baseline = new Tensor('float32', [2], Float32Array.from([0.25, 0.75]))
    const lp = Math.log(1 / 3)
    // sample 0: adv 0.75, two tokens; sample 1: adv -0.25, one token; 3 real tokens.
    const want = -(0.75 * 2 * lp + -0.25 * 1 * lp) / 3
    const got = Tensor.fromWire(L.scstLoss(logits.toWire(), ids.toWire(), reward.toWire(), baseline.toWire())).toArray()[0]
    expect(got).toBeCloseTo(want, 6)
    const ce = Tensor.fromWire(L.ceLoss(logits.toWire(), ids.toWire())).toArray()[0]
    expect(ce).toBeCloseTo(-lp, 6)
  })

  it('KL is zero for identical distributions and matches sum p log(p/q) otherwise', async () => {
    const { native } = await import('../lib/native.js')
    const L = native().losses
    const p = new Tensor('float32', [1, 1, 2], Float32Array.from([0, Math.log(3)]))  // softmax -> [1/4, 3/4]
    const q = new Tensor('float32', [1, 1, 2], Float32Array.from([0, 0]))             // [1/2, 1/2]
    const ids = new Tensor('int64', [1, 1], BigInt64Array.from([0n]))
    expect(Tensor.fromWire(L.klPenalty(p.toWire(), p.toWire(), ids.toWire())).toArray()[0]).toBeCloseTo(0, 7)
    const want = 0.25 * Math.log(0.25 / 0.5) + 0.75 * Math.log(0.75 / 0.5)
    expect(Tensor.fromWire(L.klPenalty(p.toWire(), q.toWire(), ids.toWire())).toArray()[0]).toBeCloseTo(want, 6)
  })

  it('repeated n-grams and rewards', async () => {
    const { native } = await import('../lib/native.js')
    const L = native().losses
    const ids = new Tensor('int64', [2, 6], BigInt64Array.from([1n, 2n, 1n, 2n, 1n, 2n, 5n, 6n, 7n, -1n, -1n, -1n]))
    // row 0 bigrams: 12 21 12 21 12 -> "12" twice more... occurrences beyond the first: 12 x2, 21 x1 = 3
    expect(Tensor.fromWire(L.repeatedNgrams(ids.toWire(), 2)).toArray()).toEqual([3, 0])
    const t = new Tensor('float32', [2, 2], Float32Array.from([1, 0, 0, 1]))
    const img = new Tensor('float32', [2, 2], Float32Array.from([Math.SQRT1_2, Math.SQRT1_2, -1, 0]))
    const clipS = Tensor.fromWire(L.clipSReward(t.toWire(), img.toWire(), 2.5)).toArray()
    expect(clipS[0]).toBeCloseTo(2.5 * Math.SQRT1_2, 6)
    expect(clipS[1]).toBe(0) // negative cosine clipped
    const refs = new Tensor('float32', [3, 2], Float32Array.from([1, 0, 0.6, 0.8, 0, 1]))
    const owner = new Tensor('int64', [3], BigInt64Array.from([0n, 0n, 1n]))
    const textImage = new Tensor('int64', [2], BigInt64Array.from([0n, 1n]))
    const mean = Tensor.fromWire(L.refTextReward(t.toWire(), textImage.toWire(), refs.toWire(), owner.toWire(), false)).toArray()
    expect(mean[0]).toBeCloseTo((1 + 0.6) / 2, 6)
    expect(mean[1]).toBeCloseTo(1, 6)
    const max = Tensor.fromWire(L.refTextReward(t.toWire(), textImage.toWire(), refs.toWire(), owner.toWire(), true)).toArray()
    expect(max[0]).toBeCloseTo(1, 6)
    // Contrastive: s = [[0.8, 0], [0.4, 1]] (mean cosine per image); reward = log softmax(s / tau) at the own image.
    const batch = new Tensor('int64', [2], BigInt64Array.from([0n, 1n]))
    const con = Tensor.fromWire(L.refContrastiveReward(t.toWire(), textImage.toWire(), refs.toWire(), owner.toWire(), batch.toWire(), 0.5)).toArray()
    const ls = (a: number, b: number) => a - Math.log(Math.exp(a) + Math.exp(b))
    expect(con[0]).toBeCloseTo(ls(0.8 / 0.5, 0), 5)
    expect(con[1]).toBeCloseTo(ls(1 / 0.5, 0.4 / 0.5), 5)
  })
})
