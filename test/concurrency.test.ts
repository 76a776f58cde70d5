// Native work runs off the JS thread, and concurrent callers get the same answers as sequential ones.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner, Clip, type Caption, type DecodeOptions, type Tensor } from '../lib/index.js'
import { makePngs, makeTinyModels, type TinyModels } from './helpers/models.js'

let models: TinyModels
let images: Buffer[]
let a: Captioner
let b: Captioner
let pixels: Tensor

beforeAll(async () => {
  models = await makeTinyModels()
  images = await makePngs(8)
  a = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  b = await Captioner.create({
    clip: models.clipDir,
    gpt2: models.gpt2Dir,
    mapper: { type: 'transformer', prefixLength: 4, clipLength: 4, layers: 2, heads: 4 },
    device: 'cpu',
  })
  pixels = await a.clip.preprocess(images)
})
afterAll(() => {
  a?.dispose()
  b?.dispose()
})

/** Ticks of a 10 ms interval while `work` runs, the work's duration, and the longest gap the timer saw. */
async function ticksDuring<T>(work: () => Promise<T>): Promise<{ ticks: number; ms: number; maxGap: number; result: T }> {
  let ticks = 0
  let last = performance.now()
  let maxGap = 0
  const timer = setInterval(() => {
    const now = performance.now()
    maxGap = Math.max(maxGap, now - last)
    last = now
    ticks++
  }, 10)
  const t0 = performance.now()
  try {
    const result = await work()
    const ms = performance.now() - t0
    maxGap = Math.max(maxGap, performance.now() - last)
    return { ticks, ms, maxGap, result }
  } finally {
    clearInterval(timer)
  }
}

describe('off the JS thread', () => {
  it('a 10 ms timer keeps firing while a batch of 8 is captioned (maxTokens 30)', async () => {
    const o: DecodeOptions = { maxTokens: 30, stop: null, stopAtEos: false } // all 30 steps, every row
    await a.caption(pixels, o) // warm up allocators and threads
    // Several rounds: each must keep the timer alive for its whole duration.
    for (const opts of [o, { ...o, decoding: 'beam', beams: 5 } as DecodeOptions]) {
      const r = await ticksDuring(() => a.caption(pixels, opts))
      expect(r.result).toHaveLength(8)
      for (const c of r.result) expect(c.ids).toHaveLength(30)
      // Work on the JS thread would show as no ticks at all and one gap as long as the call itself.
      expect(r.ticks, `${r.ticks} ticks in ${r.ms.toFixed(0)} ms`).toBeGreaterThanOrEqual(Math.min(3, Math.floor(r.ms / 10) - 2))
      expect(r.ticks).toBeGreaterThanOrEqual(Math.floor(r.ms / 10 / 4))
      if (r.ms > 60) expect(r.maxGap, `longest timer gap ${r.maxGap.toFixed(0)} ms of ${r.ms.toFixed(0)} ms`).toBeLessThan(r.ms * 0.75)
    }
  })

  it('image decoding and model loading do not block the timer either', async () => {
    const r = await ticksDuring(async () => {
      const c = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
      try {
        return await c.caption([...images, ...images], { maxTokens: 30, stop: null, stopAtEos: false })
      } finally {
        c.dispose()
      }
    })
    expect(r.result).toHaveLength(16)
    expect(r.ticks).toBeGreaterThanOrEqual(Math.floor(r.ms / 10 / 4))
  })
})

describe('concurrent callers', () => {
  it('20 concurrent caption() calls on one Captioner equal sequential calls', async () => {
    const opts: DecodeOptions[] = Array.from({ length: 20 }, (_, i) =>
      i % 3 === 0 ? { maxTokens: 10 + i } : i % 3 === 1 ? { decoding: 'beam', beams: 2 + (i % 3), maxTokens: 12 } : { decoding: 'sample', seed: i, maxTokens: 15 },
    )
    const inputs = (i: number) => (i % 2 === 0 ? images.slice(i % 8, (i % 8) + 1 + (i % 4)) : pixels)
    const sequential: Caption[][] = []
    for (let i = 0; i < 20; i++) sequential.push(await a.caption(inputs(i), opts[i]))
    const concurrent = await Promise.all(opts.map((o, i) => a.caption(inputs(i), o)))
    // Same tokens and text; scores may differ in the last bits: concurrent calls share decode steps (continuous
    // batching), and a matrix product's summation order depends on how many rows it holds.
    expect(concurrent.map((r) => r.map((c) => [c.ids, c.text]))).toEqual(sequential.map((r) => r.map((c) => [c.ids, c.text])))
    concurrent.forEach((r, i) => r.forEach((c, j) => expect(c.score).toBeCloseTo(sequential[i]![j]!.score, 5)))
  })

  it('two Captioners in one process work concurrently and give their own answers', async () => {
    const o: DecodeOptions = { maxTokens: 20 }
    const seqA = await a.caption(pixels, o)
    const seqB = await b.caption(pixels, o)
    const runs = await Promise.all([a.caption(pixels, o), b.caption(pixels, o), a.caption(images, o), b.caption(images, o)])
    // Ids and text exactly; scores to rounding (calls on one captioner may share decode steps).
    const same = (x: Caption[], y: Caption[]) => {
      expect(x.map((c) => [c.ids, c.text])).toEqual(y.map((c) => [c.ids, c.text]))
      x.forEach((c, j) => expect(c.score).toBeCloseTo(y[j]!.score, 5))
    }
    same(runs[0]!, seqA)
    same(runs[1]!, seqB)
    same(runs[2]!, seqA)
    same(runs[3]!, seqB)
    // Different mappers, different captions (a check that the two are not sharing state).
    expect(seqA.map((c) => c.ids)).not.toEqual(seqB.map((c) => c.ids))
  })

  it('two Captioners sharing one Clip, plus direct Clip calls, all at once', async () => {
    const clip = await Clip.load(models.clipDir, { device: 'cpu' })
    const c1 = await Captioner.create({ clip, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 } })
    const c2 = await Captioner.create({ clip, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 2 } })
    try {
      const want = [await c1.caption(pixels), await c2.caption(pixels), Array.from((await clip.imageFeatures(pixels)).data as Float32Array)]
      for (let round = 0; round < 3; round++) {
        const got = await Promise.all([
          c1.caption(pixels),
          c2.caption(pixels),
          clip.imageFeatures(pixels).then((t) => Array.from(t.data as Float32Array)),
        ])
        expect(got).toEqual(want)
      }
    } finally {
      c1.dispose()
      c2.dispose()
      clip.dispose()
    }
  })

  it('dispose() while calls are queued: the running call finishes, later ones fail with E_DISPOSED, nothing crashes', async () => {
    const c = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 } })
    const calls = Array.from({ length: 6 }, () =>
      c.caption(pixels, { maxTokens: 30 }).then(
        (r) => r.length,
        (e: { code?: string }) => e.code,
      ),
    )
    await new Promise((r) => setTimeout(r, 5))
    c.dispose()
    const outcomes = await Promise.all(calls)
    for (const o of outcomes) expect(o === 8 || o === 'E_DISPOSED').toBe(true)
    expect(outcomes).toContain('E_DISPOSED')
    expect(await a.caption(pixels)).toHaveLength(8)
  })
})
