// Bad input to Clip, Gpt2 and Captioner: each fails with a SemicapError (.code) or a TypeError/RangeError, the
// stack names the caller (this file), and the model keeps working afterwards.
import { cpSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner, Clip, Gpt2, SemicapError, Tensor, int64, tensor, type Caption, type DecodeOptions, type ErrorCode } from '../lib/index.js'
import { makePngs, makeTinyModels, type TinyModels } from './helpers/models.js'
import { tempDir } from './helpers/paths.js'

const THIS_FILE = 'errors.test.ts'

let models: TinyModels
let clip: Clip
let gpt2: Gpt2
let cap: Captioner
let images: Buffer[]
let pixels: Tensor
let reference: { captions: Caption[]; features: number[]; logits: number[] }
let tmp: string

const ids = (rows: number[][]) => int64(rows)

beforeAll(async () => {
  models = await makeTinyModels()
  tmp = tempDir('semicap-errors-')
  images = await makePngs(3)
  clip = await Clip.load(models.clipDir, { device: 'cpu' })
  gpt2 = await Gpt2.load(models.gpt2Dir, { device: 'cpu' })
  cap = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  pixels = await clip.preprocess(images)
  reference = {
    captions: await cap.caption(pixels),
    features: Array.from((await clip.imageFeatures(pixels)).data as Float32Array),
    logits: Array.from((await gpt2.logits(ids([[1, 2, 3]]))).data as Float32Array),
  }
})
afterAll(() => {
  cap?.dispose()
  clip?.dispose()
  gpt2?.dispose()
})

/** Runs `f` (sync throw or rejection) and returns what it threw; fails if it did not. */
async function failure(f: () => unknown): Promise<Error> {
  try {
    await f()
  } catch (err) {
    return err as Error
  }
  throw new Error('expected a failure')
}

type Want = ErrorCode | typeof TypeError | typeof RangeError | (ErrorCode | typeof TypeError | typeof RangeError)[]

/** The error is what `want` says, has a message, and its stack leads back to this file. */
async function expectFailure(f: () => unknown, want: Want, message?: RegExp): Promise<Error> {
  const err = await failure(f)
  const wants = Array.isArray(want) ? want : [want]
  const ok = wants.some((w) => (typeof w === 'string' ? err instanceof SemicapError && err.code === w : err instanceof w))
  expect(ok, `${err.name} ${(err as SemicapError).code ?? ''}: ${err.message}`).toBe(true)
  if (err instanceof SemicapError) expect(err.code).toMatch(/^E_[A-Z]+$/)
  expect(err.message.length).toBeGreaterThan(5)
  if (message) expect(err.message).toMatch(message)
  expect(err.stack ?? '', 'the caller stack is kept').toContain(THIS_FILE)
  return err
}

async function expectStillWorks(): Promise<void> {
  expect(await cap.caption(pixels)).toEqual(reference.captions)
  expect(Array.from((await clip.imageFeatures(pixels)).data as Float32Array)).toEqual(reference.features)
  expect(Array.from((await gpt2.logits(ids([[1, 2, 3]]))).data as Float32Array)).toEqual(reference.logits)
}

describe('pixels', () => {
  const px = (shape: number[], fill = 0.1) => tensor(new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill), shape)

  it('wrong dtype: E_DTYPE (or TypeError)', async () => {
    const i32 = tensor(new Int32Array(3 * 32 * 32), [1, 3, 32, 32])
    await expectFailure(() => clip.imageFeatures(i32), ['E_DTYPE', TypeError], /float32/)
    await expectFailure(() => cap.caption(i32), ['E_DTYPE', TypeError], /float32/)
    await expectFailure(() => clip.vision(tensor(new Uint16Array(3 * 32 * 32), [1, 3, 32, 32], 'float16')), ['E_DTYPE', TypeError])
    await expectFailure(() => clip.vision(new Float32Array(3) as unknown as Tensor), TypeError)
    await expectStillWorks()
  })

  it('wrong shape: E_SHAPE', async () => {
    await expectFailure(() => clip.imageFeatures(px([1, 3, 31, 32])), 'E_SHAPE', /\[B, 3, 32, 32\]/)
    await expectFailure(() => cap.caption(px([1, 3, 31, 32])), 'E_SHAPE')
    await expectFailure(() => cap.caption(px([2, 4, 32, 32])), 'E_SHAPE')
    await expectFailure(() => cap.caption(px([3, 32, 32])), 'E_SHAPE')
    await expectFailure(() => cap.caption(px([0, 3, 32, 32])), 'E_SHAPE')
    await expectFailure(() => cap.captionFeatures(px([2, 31])), 'E_SHAPE')
    await expectFailure(() => cap.logits(ids([[1, 2]]), px([1, 31])), 'E_SHAPE')
    await expectStillWorks()
  })

  it('NaN or infinite pixels: E_VALUE', async () => {
    const nan = px([2, 3, 32, 32])
    ;(nan.data as Float32Array)[5000] = Number.NaN
    await expectFailure(() => clip.imageFeatures(nan), 'E_VALUE', /NaN/)
    await expectFailure(() => cap.caption(nan), 'E_VALUE', /NaN/)
    await expectFailure(() => cap.caption(px([1, 3, 32, 32], Number.POSITIVE_INFINITY)), 'E_VALUE')
    await expectFailure(() => cap.logits(ids([[1]]), tensor(new Float32Array(32).fill(Number.NaN), [1, 32])), 'E_VALUE', /NaN/)
    await expectStillWorks()
  })

  it('NaN features (captionFeatures) or a NaN prefix (generate): E_VALUE', async () => {
    await expectFailure(() => cap.captionFeatures(tensor(new Float32Array(32).fill(Number.NaN), [1, 32])), 'E_VALUE')
    await expectFailure(() => gpt2.generate(tensor(new Float32Array(64).fill(Number.NaN), [1, 1, 64])), 'E_VALUE')
  })

  it('input that is not an image: E_IMAGE naming the input', async () => {
    await expectFailure(() => cap.caption([Buffer.from('this is not an image at all')]), 'E_IMAGE')
    const text = join(tmp, 'notes.png')
    writeFileSync(text, 'plain text with a .png name')
    await expectFailure(() => cap.caption([images[0]!, text]), 'E_IMAGE', /notes\.png/)
    await expectFailure(() => cap.caption([join(tmp, 'missing.jpg')]), 'E_IMAGE', /missing\.jpg/)
    await expectFailure(() => clip.preprocess([images[0]!.subarray(0, 40)]), 'E_IMAGE')
    await expectFailure(() => cap.caption([]), TypeError)
    await expectFailure(() => cap.caption('a.png' as unknown as string[]), TypeError)
    await expectStillWorks()
  })
})

describe('token ids', () => {
  it('ids outside the vocabulary: E_VALUE', async () => {
    await expectFailure(() => clip.textFeatures(ids([[0, 1000]])), 'E_VALUE', /\[0, 1000\)/)
    await expectFailure(() => clip.textFeatures(ids([[-1, 3]])), 'E_VALUE')
    await expectFailure(() => gpt2.logits(ids([[5, 1000]])), 'E_VALUE', /\[0, 1000\)/)
    await expectFailure(() => gpt2.logits(ids([[2 ** 40]])), 'E_VALUE')
    await expectFailure(() => cap.logits(ids([[-3]]), tensor(new Float32Array(32), [1, 32])), 'E_VALUE')
    await expectStillWorks()
  })

  it('too many positions: E_SHAPE', async () => {
    await expectFailure(() => clip.textFeatures(ids([Array.from({ length: 17 }, () => 5)])), 'E_SHAPE', /max_position_embeddings 16/)
    await expectFailure(() => gpt2.logits(ids([Array.from({ length: 65 }, () => 5)])), 'E_SHAPE', /n_positions 64/)
    await expectFailure(() => gpt2.logits(ids([Array.from({ length: 40 }, () => 5)]), { prefix: tensor(new Float32Array(30 * 64), [1, 30, 64]) }), 'E_SHAPE')
    await expectFailure(() => cap.logits(ids([Array.from({ length: 61 }, () => 5)]), tensor(new Float32Array(32), [1, 32])), 'E_SHAPE')
    await expectStillWorks()
  })

  it('wrong dtype or rank of ids', async () => {
    await expectFailure(() => clip.textFeatures(tensor(new Float32Array(4), [1, 4])), ['E_DTYPE', TypeError])
    await expectFailure(() => gpt2.logits(tensor(new Float32Array(4), [1, 4])), ['E_DTYPE', TypeError])
    await expectFailure(() => gpt2.logits(tensor(new BigInt64Array(4), [4])), 'E_SHAPE')
    await expectFailure(() => gpt2.logits([1, 2, 3] as unknown as Tensor), TypeError)
    await expectFailure(() => gpt2.logits(ids([[1]]), { prefix: tensor(new Float32Array(63), [1, 1, 63]) }), 'E_SHAPE')
    await expectStillWorks()
  })
})

describe('model folders', () => {
  it('a missing folder: E_CONFIG naming the path', async () => {
    const nowhere = join(tmp, 'no-such-model')
    await expectFailure(() => Clip.load(nowhere), 'E_CONFIG', /no-such-model/)
    await expectFailure(() => Gpt2.load(nowhere), 'E_CONFIG', /no-such-model/)
    await expectFailure(() => Captioner.load(nowhere), 'E_CONFIG', /no-such-model/)
    await expectFailure(() => Captioner.create({ clip: models.clipDir, gpt2: nowhere }), 'E_CONFIG', /no-such-model/)
    await expectFailure(() => Captioner.create({ clip: nowhere, gpt2: models.gpt2Dir }), 'E_CONFIG', /no-such-model/)
    await expectFailure(() => Clip.load(42 as unknown as string), TypeError)
  })

  it('config.json without n_embd: E_CONFIG naming the field', async () => {
    const dir = join(tmp, 'gpt2-no-n_embd')
    cpSync(models.gpt2Dir, dir, { recursive: true })
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
    delete cfg.n_embd
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg))
    await expectFailure(() => Gpt2.load(dir), 'E_CONFIG', /'n_embd'/)
    await expectFailure(() => Captioner.create({ clip: models.clipDir, gpt2: dir }), 'E_CONFIG', /'n_embd'/)
    cfg.n_embd = 'sixty-four'
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg))
    await expectFailure(() => Gpt2.load(dir), 'E_CONFIG', /'n_embd' must be an integer/)
    writeFileSync(join(dir, 'config.json'), '{"n_embd": 64,')
    await expectFailure(() => Gpt2.load(dir), 'E_CONFIG', /not valid JSON/)
    // A config that disagrees with the weights is a checkpoint error naming the tensors.
    cfg.n_embd = 32
    cfg.n_head = 4
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg))
    await expectFailure(() => Gpt2.load(dir), 'E_CHECKPOINT', /wte\.weight/)
    await expectStillWorks()
  })

  it('a Captioner folder that is not one: E_CONFIG', async () => {
    await expectFailure(() => Captioner.load(models.gpt2Dir), 'E_CONFIG', /semicap/)
  })

  it('a bad mapper or device option', async () => {
    await expectFailure(() => Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'lstm' as 'mlp' } }), RangeError)
    await expectFailure(() => Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { prefixLength: 0 } }), RangeError)
    await expectFailure(() => Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'transformer', heads: 5 } }), 'E_CONFIG')
    await expectFailure(() => Clip.load(models.clipDir, { device: 'tpu' as 'cpu' }), TypeError)
  })
})

describe('decode options', () => {
  const bad: [DecodeOptions, typeof RangeError | typeof TypeError][] = [
    [{ decoding: 'beam', beams: 0 }, RangeError],
    [{ beams: 65 }, RangeError],
    [{ decoding: 'sample', topP: 2 }, RangeError],
    [{ topP: 0 }, RangeError],
    [{ decoding: 'sample', temperature: -1 }, RangeError],
    [{ temperature: 0 }, RangeError],
    [{ temperature: Number.NaN }, RangeError],
    [{ maxTokens: 0 }, RangeError],
    [{ maxTokens: 2.5 }, RangeError],
    [{ minTokens: 40, maxTokens: 30 }, RangeError],
    [{ topK: -1 }, RangeError],
    [{ seed: -1 }, RangeError],
    [{ decoding: 'nucleus' as 'sample' }, RangeError],
    [{ stop: '' }, TypeError],
    [{ stopAtEos: 'yes' as unknown as boolean }, TypeError],
  ]
  it.each(bad)('%j is refused', async (o, type) => {
    await expectFailure(() => cap.caption(pixels, o), type)
    await expectFailure(() => cap.caption(images, o), type)
    await expectFailure(() => cap.captionFeatures(tensor(new Float32Array(32), [1, 32]), o), type)
    await expectFailure(() => gpt2.generate(tensor(new Float32Array(64), [1, 1, 64]), o), type)
  })
  it('the model works after all of them', expectStillWorks)
})

describe('errors are SemicapErrors with codes', () => {
  it('SemicapError is an Error with name, code, message and cause', async () => {
    const err = await expectFailure(() => Gpt2.load(join(tmp, 'nope')), 'E_CONFIG')
    expect(err).toBeInstanceOf(Error)
    expect(err.name).toBe('SemicapError')
    expect((err as SemicapError).cause).toBeDefined()
    expect(String(err)).toMatch(/^SemicapError: /)
  })
})
