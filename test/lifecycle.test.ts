// dispose() can never hang the JS thread: called from a training run's 'progress' handler (a CE run, and a
// clip-reward run whose trainer thread waits on the JS thread for every step's rewards), it aborts the run, the run
// rejects with E_DISPOSED, the event loop keeps turning throughout, and native memory is released once the run has
// stopped. Calls after dispose() fail with E_DISPOSED. Clip.logitScale is cached in JS (no native lock).
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner, Clip, Gpt2, SemicapError, Tensor, type TrainProgress } from '../lib/index.js'
import type { Example } from '../lib/data/index.js'
import { makeColourSquares, makeTinyCaptionModels, type TinyModels } from './helpers/models.js'
import { tempDir } from './helpers/paths.js'

let models: TinyModels
let work: string
let examples: Example[]

beforeAll(async () => {
  work = tempDir('semicap-lifecycle-')
  models = await makeTinyCaptionModels(work)
  examples = await makeColourSquares(work, [['red', [230, 20, 20]], ['green', [20, 200, 40]], ['blue', [20, 40, 230]]], (n) => `a ${n} square.`)
})

const created: Captioner[] = []
afterAll(async () => {
  await Promise.all(created.map((c) => c.dispose()))
})

async function fresh(): Promise<Captioner> {
  const c = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  created.push(c)
  return c
}

/** Largest gap between ticks of a 10 ms interval while `fn` runs. */
async function maxTickGap<T>(fn: () => Promise<T>): Promise<{ value: T; gap: number }> {
  let last = performance.now()
  let gap = 0
  const timer = setInterval(() => {
    const now = performance.now()
    gap = Math.max(gap, now - last)
    last = now
  }, 10)
  try {
    const value = await fn()
    gap = Math.max(gap, performance.now() - last)
    return { value, gap }
  } finally {
    clearInterval(timer)
  }
}

const runs = {
  ce: { stage: 'supervised' as const, steps: 100_000, batchSize: 2 },
  clipReward: { stage: 'clip-reward' as const, steps: 100_000, batchSize: 2, samples: 2, maxTokens: 6 },
}

describe('dispose() during training', () => {
  for (const kind of ['ce', 'clipReward'] as const) {
    it(`from a progress handler of a ${kind === 'ce' ? 'CE' : 'clip-reward (CLIP-S)'} run: resolves quickly, the loop keeps turning, the run rejects with E_DISPOSED`, async () => {
      const cap = await fresh()
      const options =
        kind === 'ce'
          ? { ...runs.ce, labeled: examples, featureCache: join(work, 'cache') }
          : { ...runs.clipReward, unlabeled: examples.map((e) => ({ ...e, captions: [] })), featureCache: join(work, 'cache') }
      const { value, gap } = await maxTickGap(async () => {
        const run = cap.train(options)
        const progress: TrainProgress[] = []
        let disposed: Promise<void> | undefined
        let disposeReturnedAfter = Infinity
        run.on('progress', (p: TrainProgress) => {
          progress.push(p)
          if (p.step === 2) {
            const t0 = performance.now()
            disposed = cap.dispose()
            disposeReturnedAfter = performance.now() - t0
          }
        })
        const started = performance.now()
        const err = await run.then(
          () => undefined,
          (e: unknown) => e,
        )
        await disposed
        return { err, progress, disposeReturnedAfter, seconds: (performance.now() - started) / 1000 }
      })
      expect(value.err).toBeInstanceOf(SemicapError)
      expect(value.err).toMatchObject({ code: 'E_DISPOSED' })
      expect((value.err as Error).message).toMatch(/disposed/)
      // The run stopped within a step or two of the dispose, long before its 100 000 steps.
      expect(value.progress.length).toBeGreaterThanOrEqual(2)
      expect(value.progress.length).toBeLessThanOrEqual(4)
      expect(value.disposeReturnedAfter).toBeLessThan(50)
      expect(value.seconds).toBeLessThan(30)
      // Generous: the point is "no multi-second freeze", on a shared 2-core machine.
      expect(gap).toBeLessThan(1000)
      // Everything after dispose fails with E_DISPOSED.
      await expect(cap.caption([examples[0]!.image])).rejects.toMatchObject({ code: 'E_DISPOSED' })
      await expect(cap.captionFeatures(new Tensor('float32', [1, 32], new Float32Array(32)))).rejects.toMatchObject({ code: 'E_DISPOSED' })
      await expect(cap.save(join(work, 'never'))).rejects.toMatchObject({ code: 'E_DISPOSED' })
      expect(() => cap.train(options)).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }))
      // The owned CLIP went with it.
      await expect(cap.clip.imageFeatures(new Tensor('float32', [1, 3, 32, 32], new Float32Array(3 * 32 * 32)))).rejects.toMatchObject({ code: 'E_DISPOSED' })
      expect(() => cap.clip.logitScale).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }))
    }, 60_000)
  }

  it('dispose() right after train() (before the run starts): the run rejects with E_DISPOSED', async () => {
    const cap = await fresh()
    const run = cap.train({ ...runs.ce, labeled: examples, featureCache: join(work, 'cache') })
    const released = cap.dispose()
    await expect(run).rejects.toMatchObject({ code: 'E_DISPOSED' })
    await released
    expect(await cap.dispose()).toBeUndefined() // idempotent
  })

  it('a user abort still rejects with AbortError, and dispose() afterwards releases at once', async () => {
    const cap = await fresh()
    const controller = new AbortController()
    const run = cap.train({ ...runs.ce, labeled: examples, featureCache: join(work, 'cache'), signal: controller.signal })
    run.on('progress', (p: TrainProgress) => p.step === 1 && controller.abort())
    await expect(run).rejects.toMatchObject({ name: 'AbortError', code: 'E_ABORTED' })
    await cap.dispose()
  })

  it('Clip pretraining: dispose() from a progress handler stops the run; logitScale is cached and follows training', async () => {
    const clip = await Clip.load(models.clipDir, { device: 'cpu' })
    const before = clip.logitScale
    expect(Number.isFinite(before) && before > 0).toBe(true)
    const pixels = new Tensor('float32', [4, 3, 32, 32], Float32Array.from({ length: 4 * 3 * 32 * 32 }, (_, i) => Math.sin(i)))
    const texts = ['a red square.', 'a green square.', 'a blue square.', 'a grey square.']
    // A short run changes the learned scale; the getter reports the new value once the run has ended.
    await clip.train({ pixels, texts }, { steps: 3, batchSize: 4, lr: 0.05, schedule: 'constant' })
    const after = clip.logitScale
    expect(after).not.toBe(before)
    let during = NaN
    const { value, gap } = await maxTickGap(async () => {
      const run = clip.train({ pixels, texts }, { steps: 100_000, batchSize: 4 })
      run.on('progress', (p: TrainProgress) => {
        // The getter never touches native code: reading it during the run cannot block.
        if (p.step === 1) during = clip.logitScale
        if (p.step === 2) void clip.dispose()
      })
      return run.then(
        () => undefined,
        (e: unknown) => e,
      )
    })
    expect(value).toMatchObject({ code: 'E_DISPOSED' })
    expect(gap).toBeLessThan(1000)
    expect(during).toBe(after)
  }, 60_000)

  it('Gpt2 pretraining: dispose() from a progress handler stops the run', async () => {
    const gpt2 = await Gpt2.load(models.gpt2Dir, { device: 'cpu' })
    const run = gpt2.train({ texts: ['a red square.', 'a blue circle.'] }, { steps: 100_000, batchSize: 2 })
    run.on('progress', (p: TrainProgress) => p.step === 2 && void gpt2.dispose())
    await expect(run).rejects.toMatchObject({ code: 'E_DISPOSED' })
    await expect(gpt2.generate(new Tensor('float32', [1, 1, gpt2.config.nEmbd], new Float32Array(gpt2.config.nEmbd)))).rejects.toMatchObject({ code: 'E_DISPOSED' })
  }, 60_000)
})
