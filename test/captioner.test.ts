// Captioner end to end on the tiny golden models: creation with both mappers, every decoding method and option,
// batching, save/load, checkpoint validation, reduced-precision checkpoints, disposal.
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  Captioner,
  Clip,
  Gpt2,
  SemicapError,
  Tensor,
  loadSafetensors,
  readSafetensorsHeader,
  tensor,
  writeSafetensors,
  type Caption,
  type MapperOptions,
} from '../lib/index.js'
import type { Gpt2Tokenizer } from '../lib/tokenizers/index.js'
import {
  fromBfloat16Bits,
  fromFloat16Bits,
  makePngs,
  makeTinyModels,
  toBfloat16Bits,
  toFloat16Bits,
  type TinyModels,
} from './helpers/models.js'
import { relError } from './helpers/numeric.js'
import { tempDir } from './helpers/paths.js'

const MAPPERS: [string, MapperOptions][] = [
  ['mlp', { type: 'mlp', prefixLength: 4 }],
  ['transformer', { type: 'transformer', prefixLength: 4, clipLength: 4, layers: 2, heads: 4 }],
]
const K = 4

let models: TinyModels
let images: Buffer[]
let tmp: string
const caps = new Map<string, Captioner>()

beforeAll(async () => {
  models = await makeTinyModels()
  images = await makePngs(8)
  tmp = tempDir('semicap-captioner-')
  for (const [name, mapper] of MAPPERS) caps.set(name, await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper, device: 'cpu' }))
})
afterAll(() => {
  for (const c of caps.values()) c.dispose()
})

const idsOf = (cs: Caption[]) => cs.map((c) => c.ids)
const tok = (c: Captioner): Gpt2Tokenizer => {
  if (!c.tokenizer) throw new Error('the tiny GPT-2 copy should have a tokenizer')
  return c.tokenizer
}
/** Ids of tokens whose text contains `s` (what the stop option means). */
function idsContaining(t: Gpt2Tokenizer, s: string): Set<number> {
  const out = new Set<number>()
  for (let id = 0; id < t.vocabSize; id++) if (!t.isSpecial(id) && t.decode([id]).includes(s)) out.add(id)
  return out
}
/** Mean log-probability of each row of `rows` (all length T) after the prefix, by teacher forcing. */
async function teacherForced(c: Captioner, rows: number[][], features: Tensor): Promise<{ meanLogp: number[]; argmaxOk: boolean[] }> {
  const B = rows.length
  const T = rows[0]!.length
  const ids = new BigInt64Array(B * T)
  rows.forEach((r, b) => r.forEach((x, t) => (ids[b * T + t] = BigInt(x))))
  const logits = await c.logits(new Tensor('int64', [B, T], ids), features)
  const [, L, V] = logits.shape as [number, number, number]
  expect(L).toBe(K + T)
  const d = logits.data as Float32Array
  const meanLogp: number[] = []
  const argmaxOk: boolean[] = []
  for (let b = 0; b < B; b++) {
    let sum = 0
    let ok = true
    for (let t = 0; t < T; t++) {
      const row = d.subarray((b * L + K - 1 + t) * V, (b * L + K + t) * V)
      let max = -Infinity
      let arg = -1
      for (let v = 0; v < V; v++) if (row[v]! > max) [max, arg] = [row[v]!, v]
      let z = 0
      for (let v = 0; v < V; v++) z += Math.exp(row[v]! - max)
      sum += row[rows[b]![t]!]! - max - Math.log(z)
      if (arg !== rows[b]![t]) ok = false
    }
    meanLogp.push(sum / T)
    argmaxOk.push(ok)
  }
  return { meanLogp, argmaxOk }
}

describe.each(MAPPERS)('Captioner with the %s mapper', (name, mapper) => {
  let cap: Captioner
  let pixels: Tensor
  beforeAll(async () => {
    cap = caps.get(name)!
    pixels = await cap.clip.preprocess(images)
  })

  it('is created from the two folders with the requested mapper and a tokenizer', () => {
    expect(cap.mapper.type).toBe(mapper.type)
    expect(cap.mapper.prefixLength).toBe(4)
    expect(cap.mapper.clipDim).toBe(32)
    expect(cap.mapper.nEmbd).toBe(64)
    expect(cap.device).toBe('cpu')
    expect(tok(cap).eosId).toBe(999)
    expect(cap.numParams).toBeGreaterThan(100_000)
    expect(pixels.shape).toEqual([8, 3, 32, 32])
  })

  it('captions encoded images (Buffers), file paths and a pixel Tensor alike', async () => {
    const fromBuffers = await cap.caption(images)
    const fromTensor = await cap.caption(pixels)
    expect(fromBuffers).toHaveLength(8)
    expect(fromTensor).toEqual(fromBuffers)
    const path = join(tmp, `${name}-0.png`)
    writeFileSync(path, images[0]!)
    // Alone, the image gets the same tokens; its score may differ in the last bit (a batch of 8 takes other tile
    // shapes in the products than one row, so sums round differently).
    const [alone] = await cap.caption([path])
    expect({ ids: alone!.ids, text: alone!.text }).toEqual({ ids: fromBuffers[0]!.ids, text: fromBuffers[0]!.text })
    expect(alone!.score).toBeCloseTo(fromBuffers[0]!.score, 5)
    for (const c of fromBuffers) {
      expect(typeof c.text).toBe('string')
      expect(c.ids.length).toBeGreaterThan(0)
      expect(c.ids.length).toBeLessThanOrEqual(30)
      for (const id of c.ids) expect(id >= 0 && id < 999).toBe(true)
      expect(c.text).toBe(tok(cap).decode(c.ids).trim())
      expect(Number.isFinite(c.score) && c.score < 0).toBe(true)
    }
  })

  it('greedy: deterministic, each token the argmax of teacher-forced logits, score = mean log-probability', async () => {
    const o = { maxTokens: 10, stop: null, stopAtEos: false } as const
    const a = await cap.caption(pixels, o)
    expect(await cap.caption(pixels, o)).toEqual(a)
    for (const c of a) expect(c.ids).toHaveLength(10)
    const features = await cap.clip.imageFeatures(pixels)
    const tf = await teacherForced(cap, idsOf(a), features)
    expect(tf.argmaxOk).toEqual(a.map(() => true))
    a.forEach((c, i) => expect(c.score).toBeCloseTo(tf.meanLogp[i]!, 4))
  })

  it('beam search (3 beams): a valid scored sequence; 1 beam and top-k 1 sampling equal greedy', async () => {
    const o = { maxTokens: 10, stop: null, stopAtEos: false } as const
    const greedy = await cap.caption(pixels, o)
    const beam = await cap.caption(pixels, { ...o, decoding: 'beam', beams: 3 })
    expect(beam).toHaveLength(8)
    expect(await cap.caption(pixels, { ...o, decoding: 'beam', beams: 3 })).toEqual(beam)
    const tf = await teacherForced(cap, idsOf(beam), await cap.clip.imageFeatures(pixels))
    beam.forEach((c, i) => {
      expect(c.ids).toHaveLength(10)
      expect(c.score).toBeCloseTo(tf.meanLogp[i]!, 4)
    })
    // Beam search keeps the best few prefixes: over 8 images it should not do worse than greedy on average.
    const mean = (cs: Caption[]) => cs.reduce((s, c) => s + c.score, 0) / cs.length
    expect(mean(beam)).toBeGreaterThanOrEqual(mean(greedy) - 1e-6)
    expect(idsOf(await cap.caption(pixels, { ...o, decoding: 'beam', beams: 1 }))).toEqual(idsOf(greedy))
    expect(idsOf(await cap.caption(pixels, { ...o, decoding: 'sample', topK: 1, seed: 3 }))).toEqual(idsOf(greedy))
  })

  it('sampling: the same seed gives the same captions, other seeds give others', async () => {
    const o = { decoding: 'sample', maxTokens: 12, stop: null, temperature: 1.2 } as const
    const a = await cap.caption(pixels, { ...o, seed: 1 })
    expect(await cap.caption(pixels, { ...o, seed: 1 })).toEqual(a)
    const seen = new Set([JSON.stringify(idsOf(a))])
    for (const seed of [2, 3, 4, 5]) seen.add(JSON.stringify(idsOf(await cap.caption(pixels, { ...o, seed }))))
    expect(seen.size).toBeGreaterThan(1)
    // Sampled scores are log-probabilities under the model too.
    const full = await cap.caption(pixels, { ...o, seed: 7, stopAtEos: false, temperature: 1 })
    const tf = await teacherForced(cap, idsOf(full), await cap.clip.imageFeatures(pixels))
    full.forEach((c, i) => expect(c.score).toBeCloseTo(tf.meanLogp[i]!, 4))
    // Nucleus and top-k options are accepted and stay reproducible.
    const nucleus = { decoding: 'sample', topP: 0.9, topK: 50, temperature: 0.8, seed: 11 } as const
    expect(await cap.caption(pixels, nucleus)).toEqual(await cap.caption(pixels, nucleus))
  })

  it('a batch gives the same captions as one image at a time (greedy and beam)', async () => {
    for (const o of [{}, { decoding: 'beam', beams: 3 }] as const) {
      const batch = await cap.caption(images, o)
      for (let i = 0; i < images.length; i++) {
        const [one] = await cap.caption([images[i]!], o)
        expect(one!.ids).toEqual(batch[i]!.ids)
        expect(one!.text).toBe(batch[i]!.text)
        expect(one!.score).toBeCloseTo(batch[i]!.score, 5)
      }
    }
  })

  it('maxTokens bounds the length; prefix + maxTokens beyond n_positions is refused', async () => {
    for (const maxTokens of [1, 3, 7]) {
      const cs = await cap.caption(pixels, { maxTokens, stop: null, stopAtEos: false })
      for (const c of cs) expect(c.ids).toHaveLength(maxTokens)
      for (const c of await cap.caption(pixels, { maxTokens })) expect(c.ids.length).toBeLessThanOrEqual(maxTokens)
    }
    for (const c of await cap.caption(pixels, { maxTokens: 60, stop: null, stopAtEos: false })) expect(c.ids).toHaveLength(60)
    const err = await cap.caption(pixels, { maxTokens: 61 }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(SemicapError)
    expect((err as SemicapError).code).toBe('E_VALUE')
    expect((err as Error).message).toMatch(/n_positions/)
  })

  it("stop string: a caption ends at (and keeps) its first token containing '.'", async () => {
    const t = tok(cap)
    const dots = idsContaining(t, '.')
    expect(dots.size).toBeGreaterThan(0)
    let hits = 0
    for (let seed = 0; seed < 60 && hits < 3; seed++) {
      const o = { decoding: 'sample', maxTokens: 30, temperature: 2, seed } as const
      const free = await cap.caption(pixels, { ...o, stop: null })
      const stopped = await cap.caption(pixels, o) // default stop: '.'
      free.forEach((f, i) => {
        const at = f.ids.findIndex((id) => dots.has(id))
        const want = at < 0 ? f.ids : f.ids.slice(0, at + 1)
        expect(stopped[i]!.ids).toEqual(want)
        if (at >= 0) {
          hits++
          expect(stopped[i]!.text).toContain('.')
          expect(stopped[i]!.text).toBe(t.decode(want).trim())
        }
      })
    }
    expect(hits).toBeGreaterThan(0)
    // The same rule with a stop string that nearly every token contains, under greedy decoding.
    const e = idsContaining(t, 'e')
    const free = await cap.caption(pixels, { stop: null })
    const stopped = await cap.caption(pixels, { stop: 'e' })
    free.forEach((f, i) => {
      const at = f.ids.findIndex((id) => e.has(id))
      expect(stopped[i]!.ids).toEqual(at < 0 ? f.ids : f.ids.slice(0, at + 1))
    })
  })

  it('minTokens: no stop or end token before that many tokens (greedy, beam and sample)', async () => {
    // The stop string is the text of the first greedy token for image 0, so that caption ends at once without minTokens.
    const t = tok(cap)
    const [first] = await cap.caption(pixels, { stop: null, stopAtEos: false, maxTokens: 1 })
    const stop = t.decode([first!.ids[0]!])
    const e = idsContaining(t, stop)
    const base = await cap.caption(pixels, { stop })
    expect(base[0]!.ids).toHaveLength(1)
    for (const o of [{}, { decoding: 'beam', beams: 3 }, { decoding: 'sample', seed: 2 }] as const) {
      const cs = await cap.caption(pixels, { ...o, stop, minTokens: 5, maxTokens: 20 })
      for (const c of cs) {
        expect(c.ids.length).toBeGreaterThanOrEqual(5)
        for (const id of c.ids.slice(0, 5)) expect(e.has(id)).toBe(false)
      }
    }
    const exact = await cap.caption(pixels, { stop, minTokens: 6, maxTokens: 6 })
    for (const c of exact) expect(c.ids).toHaveLength(6)
  })

  it('captionFeatures on CLIP features equals caption on the pixels', async () => {
    const features = await cap.clip.imageFeatures(pixels)
    expect(features.shape).toEqual([8, 32])
    for (const o of [{}, { decoding: 'beam', beams: 3 }, { decoding: 'sample', seed: 4 }] as const) {
      expect(await cap.captionFeatures(features, o)).toEqual(await cap.caption(pixels, o))
    }
  })

  it('save -> load is bit-exact (weights and captions); the folder is self-contained', async () => {
    const dirA = join(tmp, `${name}-a`)
    const dirB = join(tmp, `${name}-b`)
    await cap.save(dirA)
    for (const f of ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt', 'clip/config.json', 'clip/model.safetensors'])
      expect(existsSync(join(dirA, f)), f).toBe(true)
    const cfg = JSON.parse(readFileSync(join(dirA, 'config.json'), 'utf8'))
    expect(cfg.semicap).toMatchObject({ format: 1, clip: 'clip', mapper: { type: mapper.type, prefixLength: 4 } })

    const loaded = await Captioner.load(dirA, { device: 'cpu' })
    try {
      expect(loaded.mapper).toEqual(cap.mapper)
      expect(loaded.numParams).toBe(cap.numParams)
      await loaded.save(dirB)
      const [a, b] = [await loadSafetensors(join(dirA, 'model.safetensors')), await loadSafetensors(join(dirB, 'model.safetensors'))]
      expect(Object.keys(b).sort()).toEqual(Object.keys(a).sort())
      expect(Object.keys(a).some((k) => k.startsWith('clip_project.'))).toBe(true)
      expect(Object.keys(a).some((k) => k.startsWith('gpt.'))).toBe(true)
      for (const k of Object.keys(a)) {
        expect(b[k]!.dtype, k).toBe('float32')
        expect(b[k]!.shape, k).toEqual(a[k]!.shape)
        expect(Buffer.from(b[k]!.data.buffer, b[k]!.data.byteOffset, b[k]!.data.byteLength).equals(Buffer.from(a[k]!.data.buffer, a[k]!.data.byteOffset, a[k]!.data.byteLength)), k).toBe(true)
      }
      expect(readFileSync(join(dirB, 'model.safetensors')).equals(readFileSync(join(dirA, 'model.safetensors')))).toBe(true)
      // Saved again over itself: CLIP's files in dirB are already links to dirA's (rename(2) of a link onto the same
      // file does nothing), and no temporary name may stay behind.
      await loaded.save(dirB)
      await cap.save(dirA)
      // Three saves into one new folder at once: all succeed (each writes under its own temporary names).
      const dirC = join(tmp, `${name}-c`)
      await Promise.all([loaded.save(dirC), loaded.save(dirC), cap.save(dirC)])
      for (const d of [dirA, join(dirA, 'clip'), dirB, join(dirB, 'clip'), dirC, join(dirC, 'clip')]) expect(readdirSync(d).filter((f) => f.includes('.tmp')), d).toEqual([])
      expect(readFileSync(join(dirC, 'model.safetensors')).equals(readFileSync(join(dirA, 'model.safetensors')))).toBe(true)
      expect(readFileSync(join(dirB, 'clip', 'model.safetensors')).equals(readFileSync(join(dirA, 'clip', 'model.safetensors')))).toBe(true)
      expect((await readSafetensorsHeader(join(dirA, 'model.safetensors'))).metadata).toMatchObject({ format: 'pt' })
      for (const o of [{}, { decoding: 'beam', beams: 3 }, { decoding: 'sample', seed: 9 }] as const)
        expect(await loaded.caption(images, o)).toEqual(await cap.caption(images, o))
    } finally {
      loaded.dispose()
    }

    // A copy elsewhere, loaded by a relative path from another working directory.
    const moved = join(tmp, `${name}-moved`, 'model')
    mkdirSync(join(tmp, `${name}-cwd`), { recursive: true })
    cpSync(dirA, moved, { recursive: true })
    const cwd = process.cwd()
    process.chdir(join(tmp, `${name}-cwd`))
    let again: Captioner
    try {
      again = await Captioner.load(relative(process.cwd(), moved), { device: 'cpu' })
    } finally {
      process.chdir(cwd)
    }
    try {
      expect(await again.caption(pixels)).toEqual(await cap.caption(pixels))
    } finally {
      again.dispose()
    }
  })

  it('a checkpoint with a missing or mis-shaped tensor fails with E_CHECKPOINT naming it', async () => {
    const good = join(tmp, `${name}-good`)
    await cap.save(good)
    const weights = await loadSafetensors(join(good, 'model.safetensors'))
    const names = Object.keys(weights)
    const missingKey = names.find((k) => k.startsWith('clip_project.'))!
    const shapeKey = 'gpt.h.1.mlp.c_fc.bias'
    expect(names).toContain(shapeKey)

    const broken = async (label: string, edit: (w: Record<string, Tensor>) => void): Promise<unknown> => {
      const dir = join(tmp, `${name}-${label}`)
      cpSync(good, dir, { recursive: true })
      const w = { ...weights }
      edit(w)
      await writeSafetensors(join(dir, 'model.safetensors'), w, { format: 'pt' })
      return Captioner.load(dir, { device: 'cpu' }).then(
        (c) => {
          c.dispose()
          return undefined
        },
        (e: unknown) => e,
      )
    }
    const missing = await broken('missing', (w) => delete w[missingKey])
    expect(missing).toBeInstanceOf(SemicapError)
    expect(missing).toMatchObject({ code: 'E_CHECKPOINT' })
    expect((missing as Error).message).toContain(missingKey)
    expect((missing as Error).message).toMatch(/missing/i)

    const misshaped = await broken('misshaped', (w) => (w[shapeKey] = tensor(new Float32Array(255), [255])))
    expect(misshaped).toMatchObject({ code: 'E_CHECKPOINT' })
    expect((misshaped as Error).message).toContain(shapeKey)
    expect((misshaped as Error).message).toMatch(/255/)

    const extra = await broken('unexpected', (w) => (w['gpt.h.9.ln_1.weight'] = tensor(new Float32Array(64))))
    expect(extra).toMatchObject({ code: 'E_CHECKPOINT' })
    expect((extra as Error).message).toContain('gpt.h.9.ln_1.weight')

    // Nothing of the failed loads is left behind: the good folder still loads.
    const ok = await Captioner.load(good, { device: 'cpu' })
    ok.dispose()
  })
})

describe('reduced-precision checkpoints', () => {
  /** Writes a GPT-2 folder with every float32 weight stored by `convert`; returns it and the f32 values it stands for. */
  async function variant(label: string, dtype: 'float16' | 'bfloat16'): Promise<{ dir: string; roundedDir: string }> {
    const [to, from] = dtype === 'float16' ? [toFloat16Bits, fromFloat16Bits] : [toBfloat16Bits, fromBfloat16Bits]
    const src = await loadSafetensors(join(models.gpt2Dir, 'model.safetensors'))
    const half: Record<string, Tensor> = {}
    const rounded: Record<string, Tensor> = {}
    for (const [k, t] of Object.entries(src)) {
      expect(t.dtype).toBe('float32')
      const d = t.data as Float32Array
      const bits = new Uint16Array(d.length)
      const back = new Float32Array(d.length)
      for (let i = 0; i < d.length; i++) {
        bits[i] = to(d[i]!)
        back[i] = from(bits[i]!)
      }
      half[k] = tensor(bits, t.shape, dtype)
      rounded[k] = tensor(back, t.shape)
    }
    const dir = join(tmp, `gpt2-${label}`)
    const roundedDir = join(tmp, `gpt2-${label}-as-f32`)
    for (const [d, w] of [[dir, half], [roundedDir, rounded]] as const) {
      cpSync(models.gpt2Dir, d, { recursive: true })
      await writeSafetensors(join(d, 'model.safetensors'), w, { format: 'pt' })
    }
    const hdr = await readSafetensorsHeader(join(dir, 'model.safetensors'))
    expect(hdr.tensors['wte.weight']!.dtype).toBe(dtype === 'float16' ? 'F16' : 'BF16')
    return { dir, roundedDir }
  }

  it.each([
    ['f16', 'float16', 1e-2],
    ['bf16', 'bfloat16', 5e-2],
  ] as const)('a %s GPT-2 checkpoint loads and computes in float32', async (label, dtype, tol) => {
    const { dir, roundedDir } = await variant(label, dtype)
    const t = tok(caps.get('mlp')!)
    const rows = ['a red circle above a blue square.', 'There are 3 green dogs sitting near a house.'].map((s) => t.encode(s).slice(0, 9))
    const ids = new Tensor('int64', [2, 9], BigInt64Array.from(rows.flat(), BigInt))
    const [ref, low, rounded] = await Promise.all([models.gpt2Dir, dir, roundedDir].map((d) => Gpt2.load(d, { device: 'cpu' })))
    try {
      const [lr, ll, lo] = await Promise.all([ref!.logits(ids), low!.logits(ids), rounded!.logits(ids)])
      expect(ll.dtype).toBe('float32')
      expect(ll.shape).toEqual([2, 9, 1000])
      // Upcast on load: exactly the float32 model with the rounded weights...
      expect(Array.from(ll.data as Float32Array)).toEqual(Array.from(lo.data as Float32Array))
      // ...and close to the original float32 model.
      const err = relError(ll.data as Float32Array, lr.data as Float32Array)
      expect(err).toBeLessThan(tol)
      expect(err).toBeGreaterThan(0)
    } finally {
      for (const m of [ref, low, rounded]) m!.dispose()
    }
    // A Captioner takes the reduced-precision GPT-2 as well and saves float32.
    const cap = await Captioner.create({ clip: models.clipDir, gpt2: dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
    try {
      expect((await cap.caption(images.slice(0, 2))).length).toBe(2)
      await cap.save(join(tmp, `cap-${label}`))
      const hdr = await readSafetensorsHeader(join(tmp, `cap-${label}`, 'model.safetensors'))
      for (const n of hdr.names) expect(hdr.tensors[n]!.dtype).toBe('F32')
    } finally {
      cap.dispose()
    }
  })
})

describe('lifetime', () => {
  it('dispose(): later calls fail with E_DISPOSED; a shared Clip stays usable', async () => {
    const clip = await Clip.load(models.clipDir, { device: 'cpu' })
    const cap = await Captioner.create({ clip, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 } })
    const pixels = await clip.preprocess(images.slice(0, 2))
    expect(await cap.caption(pixels)).toHaveLength(2)
    cap.dispose()
    cap.dispose() // idempotent
    const features = await clip.imageFeatures(pixels)
    for (const run of [() => cap.caption(pixels), () => cap.caption(images.slice(0, 1)), () => cap.captionFeatures(features)]) {
      const err = await run().catch((e: unknown) => e)
      expect(err).toBeInstanceOf(SemicapError)
      expect((err as SemicapError).code).toBe('E_DISPOSED')
    }
    await expect(cap.save(join(tmp, 'disposed'))).rejects.toMatchObject({ code: 'E_DISPOSED' })
    // The Clip was passed in, so the captioner does not own it.
    expect((await clip.imageFeatures(pixels)).shape).toEqual([2, 32])
    clip.dispose()
    await expect(clip.imageFeatures(pixels)).rejects.toMatchObject({ code: 'E_DISPOSED' })
  })

  it('Symbol.asyncDispose (await using) waits for queued work, then disposes the captioner and its Clip', async () => {
    const saved = join(tmp, 'async-dispose')
    await caps.get('mlp')!.save(saved)
    const pixels = await caps.get('mlp')!.clip.preprocess(images)
    let ref: Captioner | undefined
    let inflight: Promise<Caption[]> | undefined
    {
      await using cap = await Captioner.load(saved, { device: 'cpu' })
      ref = cap
      inflight = cap.caption(pixels, { maxTokens: 20 })
    }
    expect(await inflight).toEqual(await caps.get('mlp')!.caption(pixels, { maxTokens: 20 }))
    await expect(ref.caption(pixels)).rejects.toMatchObject({ code: 'E_DISPOSED' })
    await expect(ref.clip.imageFeatures(pixels)).rejects.toMatchObject({ code: 'E_DISPOSED' })
  })
})
