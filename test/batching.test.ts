// Continuous batching across concurrent caption() calls (lib/batcher.ts over native/batch_decode.h), streaming,
// abort / deadline / queue bound / disposal, and the decode options that came with it (stopIds, decode defaults),
// on the tiny golden models. A captioner with maxBatch: 1 (calls decode one at a time, as before batching) is the
// reference: batched calls must produce the same token ids.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner, SemicapError, Tensor, type Caption } from '../lib/index.js'
import type { CaptionOptions } from '../lib/captioner.js'
import { native, type AddonDecodeBatch, type BatchRowWire } from '../lib/native.js'
import { makePngs, makeTinyModels, type TinyModels } from './helpers/models.js'

const MAPPER = { type: 'mlp', prefixLength: 4 } as const
let models: TinyModels
let images: Buffer[]
let pixels: Tensor
let features: Tensor
let cap: Captioner // batched (default maxBatch)
let solo: Captioner // maxBatch: 1, the reference

const make = (o: { maxBatch?: number; maxQueue?: number } = {}) => Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: MAPPER, device: 'cpu', ...o })
const ids = (cs: Caption[]) => cs.map((c) => c.ids)
/** Pixels of images[i..j) as a tensor. */
const slice = (t: Tensor, i: number, j: number): Tensor => {
  const row = t.shape.slice(1).reduce((a, b) => a * b, 1)
  return new Tensor('float32', [j - i, ...t.shape.slice(1)], (t.data as Float32Array).slice(i * row, j * row))
}
const until = async (ok: () => boolean, what: string) => {
  const t0 = Date.now()
  while (!ok()) {
    if (Date.now() - t0 > 20000) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setImmediate(r))
  }
}
type CodedError = Error & { code?: string }
const rejection = (p: Promise<unknown>): Promise<CodedError> => p.then(() => new Error('expected a rejection'), (e: unknown) => e as CodedError)
const LONG: CaptionOptions = { maxTokens: 60, stop: null, stopAtEos: false }

beforeAll(async () => {
  models = await makeTinyModels()
  images = await makePngs(8)
  cap = await make()
  solo = await make({ maxBatch: 1 })
  pixels = await cap.clip.preprocess(images)
  features = await cap.clip.imageFeatures(pixels)
})
afterAll(async () => {
  await cap?.dispose()
  await solo?.dispose()
})

describe('continuous batching', () => {
  it('sampling copies of one image: each copy as that row samples among other images (decode() prefills copies once)', async () => {
    const o = { decoding: 'sample', maxTokens: 12, stop: null, temperature: 1.2, seed: 5 } as const
    const [a, b, c] = [images[0]!, images[1]!, images[2]!]
    const rows = [a, b, a, b, a]
    const copies = await solo.caption(rows, o)
    for (let r = 0; r < rows.length; r++) {
      const alone = await solo.caption(rows.map((img, i) => (i === r ? img : c)), o)
      expect(alone[r]!.ids, `row ${r}`).toEqual(copies[r]!.ids)
      expect(alone[r]!.score, `row ${r}`).toBe(copies[r]!.score)
    }
    // Each copy drew its own caption (row seeds), not one shared.
    expect(new Set([0, 2, 4].map((r) => copies[r]!.ids.join(' '))).size).toBeGreaterThan(1)
  })

  it('concurrent greedy calls give the ids of the same calls made one at a time, and share steps', async () => {
    const calls: [Tensor | Buffer[], CaptionOptions][] = [
      [slice(pixels, 0, 1), { maxTokens: 5, stop: null, stopAtEos: false }],
      [slice(pixels, 1, 3), { maxTokens: 20 }],
      [[images[3]!], { maxTokens: 12, stop: 'e' }],
      [slice(pixels, 4, 8), { maxTokens: 30, stop: null }],
      [slice(pixels, 5, 6), { minTokens: 3, maxTokens: 9, stop: 'a' }],
      [images.slice(2, 5), { maxTokens: 60, stop: null, stopAtEos: false }],
      [slice(pixels, 7, 8), { maxTokens: 1 }],
    ]
    const want: Caption[][] = []
    for (const [x, o] of calls) want.push(await solo.caption(x as Tensor, o))
    const before = cap.batchStats()
    const got = await Promise.all(calls.map(([x, o]) => cap.caption(x as Tensor, o)))
    const after = cap.batchStats()
    got.forEach((g, i) => {
      expect(ids(g), `call ${i}`).toEqual(ids(want[i]!))
      g.forEach((c, j) => {
        expect(c.text).toBe(want[i]![j]!.text)
        expect(c.score).toBeCloseTo(want[i]![j]!.score, 5)
      })
    })
    // Batching happened: steps ran several rows at once, and fewer steps ran than rows x tokens.
    const steps = after.steps - before.steps
    const rowSteps = after.rowSteps - before.rowSteps
    expect(steps).toBeGreaterThan(0)
    expect(rowSteps).toBeGreaterThan(steps * 2)
    expect(after.rowsPerStep.slice(2).reduce((a, b) => a + b, 0)).toBeGreaterThan(before.rowsPerStep.slice(2).reduce((a, b) => a + b, 0))
    expect(after.rowsPerStep.length).toBe(17) // default maxBatch 16
    expect(after.prefillRows - before.prefillRows).toBe(13)
    expect(after.active).toBe(0)
    expect(after.queued).toBe(0)
    // The reference decoded without the batcher.
    expect(solo.batchStats().steps).toBe(0)
  })

  it('captionFeatures batches with caption(), and one call with 8 images equals 8 single calls', async () => {
    const want = await solo.captionFeatures(features, { maxTokens: 25 })
    const [all, ...singles] = await Promise.all([
      cap.caption(images, { maxTokens: 25 }),
      ...Array.from({ length: 8 }, (_, i) => cap.captionFeatures(slice(features, i, i + 1), { maxTokens: 25 })),
    ])
    expect(ids(all!)).toEqual(ids(want))
    expect(singles.map((s) => s[0]!.ids)).toEqual(ids(want))
  })

  it('sampling with a seed: the same tokens alone, in a multi-image call, and batched with others', async () => {
    const o: CaptionOptions = { decoding: 'sample', seed: 5, temperature: 1.5, maxTokens: 20, stop: null }
    const o2: CaptionOptions = { decoding: 'sample', seed: 9, topK: 20, topP: 0.9, temperature: 0.9, maxTokens: 15 }
    const alone = await solo.caption(slice(pixels, 0, 3), o)
    // Unbatched decoding samples row i from (seed, i) alone: row 0 of a 1-image call is row 0 of the 3-image call.
    expect(ids(await solo.caption(slice(pixels, 0, 1), o))).toEqual(ids(alone).slice(0, 1))
    const alone2 = await solo.caption(slice(pixels, 3, 6), o2)
    const [batched, batched2] = await Promise.all([
      cap.caption(slice(pixels, 0, 3), o),
      cap.caption(slice(pixels, 3, 6), o2),
      cap.caption(slice(pixels, 6, 8), { maxTokens: 40, stop: null }),
      cap.caption(slice(pixels, 2, 4), { ...o, seed: 6 }),
    ])
    expect(ids(batched!)).toEqual(ids(alone))
    expect(ids(batched2!)).toEqual(ids(alone2))
    // Seeds matter.
    expect(ids(await cap.caption(slice(pixels, 0, 3), { ...o, seed: 77 }))).not.toEqual(ids(alone))
  })

  it('beam search is not batched but runs alongside batched calls', async () => {
    const beam: CaptionOptions = { decoding: 'beam', beams: 3, maxTokens: 12 }
    const want = await solo.caption(slice(pixels, 0, 2), beam)
    const wantGreedy = await solo.caption(slice(pixels, 2, 4), { maxTokens: 30 })
    const [b, g] = await Promise.all([cap.caption(slice(pixels, 0, 2), beam), cap.caption(slice(pixels, 2, 4), { maxTokens: 30 })])
    expect(b).toEqual(want)
    expect(ids(g!)).toEqual(ids(wantGreedy))
  })

  it('calls made together (one Promise.all) join as one prefill', async () => {
    const o: CaptionOptions = { maxTokens: 8, stop: null, stopAtEos: false }
    const want = ids(await solo.captionFeatures(features, o))
    const before = cap.batchStats()
    const got = await Promise.all(Array.from({ length: 8 }, (_, i) => cap.captionFeatures(slice(features, i, i + 1), o)))
    const after = cap.batchStats()
    expect(got.map((g) => g[0]!.ids)).toEqual(want)
    expect(after.prefills - before.prefills).toBe(1)
    expect(after.prefillRows - before.prefillRows).toBe(8)
    // Every step ran all 8 rows: 7 steps after the first tokens, which the prefill chose.
    expect(after.steps - before.steps).toBe(7)
    expect(after.rowSteps - before.rowSteps).toBe(56)
  })

  it('abort: the aborted call rejects with an AbortError at once, leaves the batch, and the others are untouched', async () => {
    const others: [Tensor, CaptionOptions][] = [
      [slice(pixels, 1, 3), { maxTokens: 20, stop: null }],
      [slice(pixels, 3, 4), { decoding: 'sample', seed: 3, maxTokens: 18, stop: null, stopAtEos: false }],
    ]
    const want = await Promise.all(others.map(([x, o]) => solo.caption(x, o)))
    const ctl = new AbortController()
    const s0 = cap.batchStats()
    const victim = rejection(cap.caption(slice(pixels, 0, 1), { ...LONG, signal: ctl.signal }))
    const rest = others.map(([x, o]) => cap.caption(x, o))
    await until(() => cap.batchStats().steps >= s0.steps + 3, 'three steps')
    ctl.abort(new Error('enough'))
    const err = await victim
    expect(err.name).toBe('AbortError')
    expect(err.code).toBe('E_ABORTED')
    expect(ids((await rest[0])!)).toEqual(ids(want[0]!))
    expect(ids((await rest[1])!)).toEqual(ids(want[1]!))
    await until(() => cap.batchStats().active === 0, 'the batch to empty')
    const s1 = cap.batchStats()
    expect(s1.aborted).toBe(s0.aborted + 1)
    // The aborted row did not decode its 60 tokens: the batch ran about as long as the longest other call (20).
    expect(s1.steps - s0.steps).toBeLessThan(40)
    // An already aborted signal rejects before anything is queued.
    const pre = await rejection(cap.caption(slice(pixels, 0, 1), { signal: AbortSignal.abort() }))
    expect(pre.code).toBe('E_ABORTED')
  })

  it('deadline: a call past its deadline rejects with a TimeoutError (E_ABORTED); the rest go on', async () => {
    // A beam call holds the model's queue for a while; the batched call queued behind it times out while waiting.
    const beam = cap.caption(pixels, { decoding: 'beam', beams: 8, maxTokens: 60, stop: null, stopAtEos: false })
    const late = rejection(cap.caption(slice(pixels, 0, 1), { ...LONG, deadline: 5 }))
    const fine = cap.caption(slice(pixels, 1, 2), { maxTokens: 10, deadline: new Date(Date.now() + 600_000) })
    const err = await late
    expect(err.name).toBe('TimeoutError')
    expect(err.code).toBe('E_ABORTED')
    expect(err).toBeInstanceOf(SemicapError)
    expect(ids(await fine)).toEqual(ids(await solo.caption(slice(pixels, 1, 2), { maxTokens: 10 })))
    await beam
    // A deadline already past, and the unbatched path too.
    expect((await rejection(cap.caption(slice(pixels, 0, 1), { deadline: new Date(Date.now() - 1) }))).name).toBe('TimeoutError')
    expect((await rejection(cap.caption(pixels, { decoding: 'beam', beams: 8, ...LONG, deadline: 1 }))).name).toBe('TimeoutError')
    await until(() => cap.batchStats().active === 0, 'the batch to empty')
  })

  it('maxQueue: requests beyond the queue bound are refused with E_BUSY', async () => {
    const c = await make({ maxBatch: 2, maxQueue: 2 })
    try {
      const one = (i: number) => c.captionFeatures(slice(features, i, i + 1), { maxTokens: 8 })
      // Submitted together: the first two join the idle batch; two wait; the fifth finds the queue full.
      const ps = [one(0), one(1), one(2), one(3)]
      const busy = await rejection(one(4))
      expect(busy).toBeInstanceOf(SemicapError)
      expect(busy.code).toBe('E_BUSY')
      const want = await solo.captionFeatures(slice(features, 0, 4), { maxTokens: 8 })
      expect((await Promise.all(ps)).map((r) => r[0]!.ids)).toEqual(ids(want))
      expect(c.batchStats().busy).toBe(1)
      expect(c.batchStats().rowsPerStep).toHaveLength(3) // steps of 0..maxBatch rows
    } finally {
      await c.dispose()
    }
  })

  it('dispose() mid-batch rejects active and queued calls with E_DISPOSED and does not hang', async () => {
    const c = await make({ maxBatch: 3 })
    // The stream joins first (pixels: no await before it is queued), then 2 calls decode with it and 4 wait.
    const s = c.stream(slice(pixels, 7, 8), LONG)
    const first = s.next()
    const calls = Array.from({ length: 6 }, (_, i) => rejection(c.caption(slice(pixels, i, i + 1), LONG)))
    expect((await first).done).toBe(false)
    await until(() => c.batchStats().steps >= 3, 'three steps')
    expect(c.batchStats().active).toBe(3)
    expect(c.batchStats().queued).toBe(4)
    const disposed = c.dispose()
    for (const p of calls) expect((await p).code).toBe('E_DISPOSED')
    const streamErr = await (async () => {
      for (;;) if ((await s.next()).done) return new Error('the stream ended') as CodedError
    })().catch((e: unknown) => e as CodedError)
    expect(streamErr.code).toBe('E_DISPOSED')
    await disposed
    expect((await rejection(c.caption(slice(pixels, 0, 1)))).code).toBe('E_DISPOSED')
    // Disposed while the first newcomers are being prefilled (neither queued nor decoding yet), and while idle.
    for (const wait of [0, 1, 3]) {
      const d = await make({ maxBatch: 4 })
      const ps = Array.from({ length: 5 }, (_, i) => d.caption(slice(pixels, 0, i + 1), LONG).then((r) => r.length, (e: CodedError) => e.code))
      await new Promise((r) => setTimeout(r, wait))
      await d.dispose()
      for (const o of await Promise.all(ps)) expect(o === 'E_DISPOSED' || typeof o === 'number').toBe(true)
    }
  })
})

describe('stream()', () => {
  it('pieces join to caption()\'s text, with no split characters, greedy and sampled', async () => {
    let pieces = 0
    let nonAscii = 0
    const opts: CaptionOptions[] = [
      { maxTokens: 30 },
      { ...LONG },
      { decoding: 'sample', seed: 1, temperature: 3, ...LONG },
      { decoding: 'sample', seed: 2, temperature: 5, maxTokens: 40, stop: null },
    ]
    for (const o of opts) {
      // One image per call: a sampled row's seed comes from the request's seed and the row's index in its call.
      const want: Caption[] = []
      for (const img of images) want.push((await solo.caption([img], o))[0]!)
      const got = await Promise.all(
        images.map(async (img) => {
          const parts: string[] = []
          for await (const p of cap.stream(img, o)) parts.push(p)
          return parts
        }),
      )
      got.forEach((parts, i) => {
        expect(parts.join('')).toBe(want[i]!.text)
        for (const p of parts.slice(0, -1)) expect(p.endsWith('\uFFFD')).toBe(false)
        expect(parts.every((p) => p.length > 0)).toBe(true)
        pieces += parts.length
        if (/[^\x00-\x7f]/.test(want[i]!.text)) nonAscii++
      })
    }
    expect(pieces).toBeGreaterThan(opts.length * images.length)
    // High-temperature sampling from a random model emits single-byte tokens: characters split between tokens.
    expect(nonAscii).toBeGreaterThan(0)
  })

  it('breaking out of the iteration takes the row out of the batch', async () => {
    const s0 = cap.batchStats()
    const other = cap.caption(slice(pixels, 1, 2), { maxTokens: 10, stop: null })
    let n = 0
    for await (const _ of cap.stream(images[0]!, LONG)) if (++n === 2) break
    expect(n).toBe(2)
    await other
    await until(() => cap.batchStats().active === 0, 'the batch to empty')
    const s1 = cap.batchStats()
    expect(s1.aborted).toBe(s0.aborted + 1)
    expect(s1.steps - s0.steps).toBeLessThan(40)
    // Beam search streams the finished caption as one piece.
    const parts: string[] = []
    for await (const p of cap.stream(images[2]!, { decoding: 'beam', beams: 2, maxTokens: 10 })) parts.push(p)
    expect(parts.join('')).toBe((await solo.caption([images[2]!], { decoding: 'beam', beams: 2, maxTokens: 10 }))[0]!.text)
  })
})

describe('decode options', () => {
  it('stopIds end a caption at those tokens (kept) and replace the stop string', async () => {
    const free = await solo.caption(pixels, { ...LONG })
    // The third token of each free-running caption, as stop ids.
    const stopIds = [...new Set(free.map((c) => c.ids[2]!))]
    for (const c of [solo, cap]) {
      const got = await c.caption(pixels, { ...LONG, stopIds, stop: 'zzz' })
      got.forEach((g, i) => {
        const at = free[i]!.ids.findIndex((id) => stopIds.includes(id))
        expect(g.ids).toEqual(free[i]!.ids.slice(0, at + 1))
      })
    }
    await expect(cap.caption(pixels, { stopIds: [1000] })).rejects.toThrow(RangeError)
    await expect(cap.caption(pixels, { stopIds: 'x' as unknown as number[] })).rejects.toThrow(TypeError)
  })

  it('decodeDefaults sit under every call\'s options', async () => {
    const c = await make()
    try {
      c.decodeDefaults = { maxTokens: 5, stop: null, stopAtEos: false }
      for (const r of await c.caption(slice(pixels, 0, 2))) expect(r.ids).toHaveLength(5)
      for (const r of await c.caption(slice(pixels, 0, 2), { maxTokens: 7 })) expect(r.ids).toHaveLength(7)
      expect(ids(await c.caption(slice(pixels, 0, 2), { maxTokens: undefined }))).toEqual(ids(await solo.caption(slice(pixels, 0, 2), { maxTokens: 5, stop: null, stopAtEos: false })))
      // A call's stop string replaces default stopIds.
      c.decodeDefaults = { stopIds: [0] }
      expect(ids(await c.caption(slice(pixels, 0, 2), { stop: null, maxTokens: 9 }))).toEqual(ids(await solo.caption(slice(pixels, 0, 2), { stop: null, maxTokens: 9 })))
    } finally {
      await c.dispose()
    }
  })
})

describe('invalid inputs', () => {
  it('the JS options: maxBatch, maxQueue, deadline, signal', async () => {
    for (const o of [{ maxBatch: 0 }, { maxBatch: 1.5 }, { maxQueue: -1 }]) {
      const err = await rejection(make(o))
      expect(err.code, JSON.stringify(o)).toBe('E_VALUE')
    }
    for (const o of [{ deadline: -1 }, { deadline: Number.NaN }, { deadline: new Date(Number.NaN) }, { signal: {} as AbortSignal }]) {
      expect((await rejection(cap.caption(slice(pixels, 0, 1), o))).code).toBe('E_VALUE')
      expect((await rejection(cap.caption(slice(pixels, 0, 1), { ...o, decoding: 'beam' }))).code).toBe('E_VALUE')
    }
    expect((await rejection(cap.stream(slice(pixels, 0, 2)).next())).code).toBe('E_SHAPE')
    // A tensor whose data is shorter than its shape (the raw constructor does not check) is refused, not zero-filled.
    const short = new Tensor('float32', [4, 32], new Float32Array(2 * 32))
    const err = await rejection(cap.captionFeatures(short, { maxTokens: 3 }))
    expect(err.code).toBe('E_SHAPE')
    expect(err.message).toMatch(/holds 64 elements but its shape \[4, 32\] needs 128/)
  })

  it('the native batch: constructor, shapes, dtypes, row options, ids', async () => {
    const N = native()
    const b: AddonDecodeBatch = new N.AddonDecodeBatch(cap.addon)
    const row = (o: Partial<BatchRowWire> = {}): BatchRowWire => ({
      method: 'greedy', maxTokens: 5, minTokens: 0, beams: 1, topK: 0, temperature: 1, topP: 1, seed: 0, stopIds: [], eosId: 999, bf16: false, row: 0, ...o,
    })
    const f = (n: number, d = 32, fill = 0.1) => ({ dtype: 'float32', shape: [n, d], data: new Float32Array(n * d).fill(fill) })
    const code = async (fn: () => unknown) => {
      try {
        await fn()
      } catch (err) {
        return (err as { code?: string }).code
      }
      return 'no error'
    }
    expect(await code(() => new N.AddonDecodeBatch({} as never))).toBe('E_CONFIG')
    expect(await code(() => b.add(f(1, 31), [row()]))).toBe('E_SHAPE')
    expect(await code(() => b.add(f(2), [row()]))).toBe('E_SHAPE')
    expect(await code(() => b.add(f(0), []))).toBe('E_SHAPE')
    expect(await code(() => b.add({ dtype: 'int32', shape: [1, 32], data: new Int32Array(32) }, [row()]))).toBe('E_DTYPE')
    expect(await code(() => b.add(f(1), [row({ method: 'beam' })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ method: 'nucleus' as 'sample' })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ maxTokens: 61 })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ maxTokens: 0 })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ minTokens: 6 })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ stopIds: [1000] })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ eosId: 5000 })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ method: 'sample', topP: 2 })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ method: 'sample', temperature: 0 })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ seed: -1 })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ bf16: true })]))).toBe('E_VALUE')
    expect(await code(() => b.add(f(1), [row({ maxTokens: 'x' as unknown as number })]))).toBe('E_CONFIG')
    expect(await code(() => b.add(f(1), [null as unknown as BatchRowWire]))).toBe('E_CONFIG')
    expect(await code(() => b.add(f(1), 'rows' as unknown as BatchRowWire[]))).toBe('E_CONFIG')
    expect(await code(() => b.add(f(1, 32, Number.NaN), [row()]))).toBe('E_VALUE')
    expect(await code(() => b.remove([0]))).toBe('E_VALUE')
    expect(await code(() => b.remove('1' as unknown as number[]))).toBe('E_CONFIG')
    // Nothing above left a row behind; a good add works, and its rows step to their end.
    expect(b.size).toBe(0)
    const first = await b.add(f(2), [row({ eosId: -1 }), row({ method: 'sample', seed: 3, row: 1, maxTokens: 3, eosId: -1 })])
    expect(first.map((t) => t.finished)).toEqual([false, false])
    expect(b.size).toBe(2)
    let steps = 0
    while (b.size > 0) {
      const out = await b.step()
      steps++
      for (const t of out) expect(Number.isInteger(t.token) && t.token >= 0 && t.token < 1000).toBe(true)
    }
    expect(steps).toBe(4)
    expect(await b.step()).toEqual([])
    expect(await b.remove([first[0]!.rowId])).toBe(0)
    b.dispose()
    expect(await code(() => b.step())).toBe('E_DISPOSED')
  })
})
