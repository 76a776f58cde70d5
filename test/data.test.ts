// Dataset readers (COCO, Karpathy, JSONL, image folders), the labeled/unlabeled split, and the CLIP feature cache.
import { cp, mkdir, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Clip } from '../lib/clip.js'
import {
  cachedImageFeatures,
  dataset,
  fileSha256,
  mulberry32,
  readCocoCaptions,
  readImageFolder,
  readJsonl,
  readKarpathy,
  splitLabeled,
  type Example,
  type FeatureEncoder,
} from '../lib/data/index.js'
import { AbortError, SemicapError } from '../lib/errors.js'
import { loadSafetensors, readSafetensorsHeader, writeSafetensors } from '../lib/runtime.js'
import { Tensor } from '../lib/tensor.js'
import { goldenDir, tempDir } from './helpers/paths.js'

let tmp: string
beforeAll(() => {
  tmp = tempDir('semicap-data-')
})
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true })
})

let fixtureCount = 0
/** A fresh folder under tmp. */
async function fresh(name: string): Promise<string> {
  const dir = join(tmp, `${name}-${fixtureCount++}`)
  await mkdir(dir, { recursive: true })
  return dir
}

async function png(path: string, rgb: [number, number, number], width = 40, height = 36): Promise<string> {
  // A colour plus a diagonal gradient, so that images differ in more than their mean.
  const data = Buffer.alloc(width * height * 3)
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++)
      for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = Math.min(255, rgb[c]! + ((x + y) * (c + 1)) % 40)
  await sharp(data, { raw: { width, height, channels: 3 } }).png().toFile(path)
  return path
}

/** Expects `p` to reject with a SemicapError of `code` whose message matches every pattern. */
async function rejectsData(p: Promise<unknown>, code: string, ...patterns: Array<string | RegExp>): Promise<SemicapError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(SemicapError)
  const e = err as SemicapError
  expect(e.code).toBe(code)
  for (const pat of patterns) expect(e.message).toMatch(pat)
  return e
}

const COCO = {
  info: {},
  images: [
    { id: 30, file_name: 'c.jpg', width: 1, height: 1 },
    { id: 4, file_name: 'a.jpg', width: 1, height: 1 },
    { id: 12, file_name: 'b.jpg', width: 1, height: 1 },
  ],
  annotations: [
    { id: 1, image_id: 30, caption: 'A cat on a mat. ' },
    { id: 2, image_id: 4, caption: 'A dog.' },
    { id: 3, image_id: 30, caption: 'A cat sleeping.\n' },
    { id: 4, image_id: 4, caption: 'A brown dog runs.' },
  ],
}

const KARPATHY = {
  dataset: 'coco',
  images: [
    { filepath: 'val2014', filename: 'v1.jpg', split: 'val', cocoid: 101, sentences: [{ raw: 'Val one.', tokens: ['val', 'one'] }] },
    { filepath: 'train2014', filename: 't1.jpg', split: 'train', cocoid: 7, sentences: [{ raw: 'Train one.' }, { raw: ' Train one again. ' }] },
    { filepath: 'val2014', filename: 'r1.jpg', split: 'restval', cocoid: 55, sentences: [{ raw: 'Restval one.' }] },
    { filepath: 'val2014', filename: 'x1.jpg', split: 'test', cocoid: 9, sentences: [{ raw: 'Test one.' }] },
    { filepath: 'train2014', filename: 't2.jpg', split: 'train', cocoid: 3, sentences: [{ raw: 'Train two.' }] },
  ],
}

describe('readCocoCaptions', () => {
  it('one example per image with all its captions, ordered by image id', async () => {
    const dir = await fresh('coco')
    const file = join(dir, 'captions_train2017.json')
    await writeFile(file, JSON.stringify(COCO))
    const ds = await readCocoCaptions(file, join(dir, 'train2017'))
    expect(ds.source).toBe(file)
    expect(ds.examples).toEqual([
      { id: '4', image: join(dir, 'train2017', 'a.jpg'), captions: ['A dog.', 'A brown dog runs.'] },
      { id: '12', image: join(dir, 'train2017', 'b.jpg'), captions: [] },
      { id: '30', image: join(dir, 'train2017', 'c.jpg'), captions: ['A cat on a mat.', 'A cat sleeping.'] },
    ])
  })

  it('errors: malformed JSON, missing keys, unknown image ids, missing file', async () => {
    const dir = await fresh('coco-bad')
    const broken = join(dir, 'broken.json')
    await writeFile(broken, '{"images": [],\n "annotations": [\n  {"image_id": 1,, "caption": "x"}]}')
    const e = await rejectsData(readCocoCaptions(broken, dir), 'E_DATA', broken, /invalid JSON/)
    expect(e.message).toMatch(/line 3/)

    const noAnn = join(dir, 'no-ann.json')
    await writeFile(noAnn, JSON.stringify({ images: [] }))
    await rejectsData(readCocoCaptions(noAnn, dir), 'E_DATA', noAnn, /annotations/)

    const noCaption = join(dir, 'no-caption.json')
    await writeFile(noCaption, JSON.stringify({ ...COCO, annotations: [COCO.annotations[0], { id: 9, image_id: 4 }] }))
    await rejectsData(readCocoCaptions(noCaption, dir), 'E_DATA', noCaption, /annotations\[1\]/, /caption/)

    const noFileName = join(dir, 'no-file-name.json')
    await writeFile(noFileName, JSON.stringify({ ...COCO, images: [{ id: 1 }] }))
    await rejectsData(readCocoCaptions(noFileName, dir), 'E_DATA', /images\[0\]/, /file_name/)

    const unknown = join(dir, 'unknown.json')
    await writeFile(unknown, JSON.stringify({ ...COCO, annotations: [{ image_id: 999, caption: 'x' }] }))
    await rejectsData(readCocoCaptions(unknown, dir), 'E_DATA', /annotations\[0\]/, /999/)

    await rejectsData(readCocoCaptions(join(dir, 'missing.json'), dir), 'E_IO', /missing\.json/)
    await expect(readCocoCaptions(42 as unknown as string, dir)).rejects.toThrow(TypeError)
  })
})

describe('readKarpathy', () => {
  it('keeps one split, in file order, with captions from raw', async () => {
    const dir = await fresh('karpathy')
    const file = join(dir, 'dataset_coco.json')
    await writeFile(file, JSON.stringify(KARPATHY))
    const root = join(dir, 'coco')
    const train = await readKarpathy(file, root, 'train')
    expect(train.examples).toEqual([
      { id: '7', image: join(root, 'train2014', 't1.jpg'), captions: ['Train one.', 'Train one again.'] },
      { id: '3', image: join(root, 'train2014', 't2.jpg'), captions: ['Train two.'] },
    ])
    expect((await readKarpathy(file, root, 'train+restval')).examples.map((e) => e.id)).toEqual(['7', '55', '3'])
    expect((await readKarpathy(file, root, 'restval')).examples.map((e) => e.id)).toEqual(['55'])
    expect((await readKarpathy(file, root, 'val')).examples).toEqual([{ id: '101', image: join(root, 'val2014', 'v1.jpg'), captions: ['Val one.'] }])
    expect((await readKarpathy(file, root, 'test')).examples.map((e) => e.image)).toEqual([join(root, 'val2014', 'x1.jpg')])
  })

  it('errors: bad split argument, missing sentences, malformed JSON', async () => {
    const dir = await fresh('karpathy-bad')
    const file = join(dir, 'dataset_coco.json')
    await writeFile(file, JSON.stringify(KARPATHY))
    await expect(readKarpathy(file, dir, 'training' as 'train')).rejects.toThrow(RangeError)
    const noSentences = join(dir, 'no-sentences.json')
    await writeFile(noSentences, JSON.stringify({ images: [KARPATHY.images[0], { filename: 'a.jpg', split: 'train', cocoid: 1 }] }))
    await rejectsData(readKarpathy(noSentences, dir, 'train'), 'E_DATA', noSentences, /images\[1\]/, /sentences/)
    const noRaw = join(dir, 'no-raw.json')
    await writeFile(noRaw, JSON.stringify({ images: [{ filename: 'a.jpg', split: 'train', cocoid: 1, sentences: [{ tokens: [] }] }] }))
    await rejectsData(readKarpathy(noRaw, dir, 'train'), 'E_DATA', /images\[0\]\.sentences\[0\]/, /raw/)
    const broken = join(dir, 'broken.json')
    await writeFile(broken, '{"images": [')
    await rejectsData(readKarpathy(broken, dir, 'train'), 'E_DATA', broken, /invalid JSON/)
  })
})

describe('readJsonl', () => {
  it('reads relative and absolute paths, ids, unlabeled lines, skipping blank lines', async () => {
    const dir = await fresh('jsonl')
    const file = join(dir, 'train.jsonl')
    const abs = join(tmp, 'elsewhere', 'z.png')
    const lines = [
      JSON.stringify({ image: 'images/a.png', captions: ['a red square', 'red'] }),
      '',
      JSON.stringify({ image: abs, captions: [], id: 'zed' }),
      '   ',
      JSON.stringify({ image: './images/b.png', captions: ['blue'] }),
    ]
    await writeFile(file, lines.join('\n') + '\n')
    const ds = await readJsonl(file)
    expect(ds.source).toBe(file)
    expect(ds.examples).toEqual([
      { id: 'images/a.png', image: join(dir, 'images', 'a.png'), captions: ['a red square', 'red'] },
      { id: 'zed', image: abs, captions: [] },
      { id: './images/b.png', image: join(dir, 'images', 'b.png'), captions: ['blue'] },
    ])
  })

  it('errors name file:line', async () => {
    const dir = await fresh('jsonl-bad')
    const file = join(dir, 'bad.jsonl')
    await writeFile(file, [JSON.stringify({ image: 'a.png', captions: [] }), JSON.stringify({ image: 'b.png', captions: ['b'] }), '{"image": "c.png", "captions": [}'].join('\n'))
    await rejectsData(readJsonl(file), 'E_DATA', `${file}:3`, /invalid JSON/)

    await writeFile(file, `${JSON.stringify({ image: 'a.png', captions: [] })}\n\n${JSON.stringify({ captions: [] })}\n`)
    await rejectsData(readJsonl(file), 'E_DATA', `${file}:3`, /"image"/)
    await writeFile(file, JSON.stringify({ image: 'a.png' }))
    await rejectsData(readJsonl(file), 'E_DATA', `${file}:1`, /"captions"/)
    await writeFile(file, JSON.stringify({ image: 'a.png', captions: ['ok', 3] }))
    await rejectsData(readJsonl(file), 'E_DATA', `${file}:1`, /captions\[1\]/)
    await writeFile(file, `${JSON.stringify({ image: 'a.png', captions: [] })}\n${JSON.stringify({ image: 'a.png', captions: [] })}`)
    await rejectsData(readJsonl(file), 'E_DATA', `${file}:2`, /duplicate/, /line 1/)
    await writeFile(file, '[1, 2]')
    await rejectsData(readJsonl(file), 'E_DATA', `${file}:1`)
    await rejectsData(readJsonl(join(dir, 'missing.jsonl')), 'E_IO', /missing\.jsonl/)
  })
})

describe('readImageFolder', () => {
  let dir: string
  beforeAll(async () => {
    dir = await fresh('folder')
    await mkdir(join(dir, 'sub', 'deeper'), { recursive: true })
    await png(join(dir, 'b.png'), [200, 10, 10])
    await png(join(dir, 'a.PNG'), [10, 200, 10])
    await sharp({ create: { width: 8, height: 8, channels: 3, background: '#123456' } }).jpeg().toFile(join(dir, 'c.jpg'))
    await sharp({ create: { width: 8, height: 8, channels: 3, background: '#654321' } }).webp().toFile(join(dir, 'sub', 'd.webp'))
    await png(join(dir, 'sub', 'deeper', 'e.png'), [10, 10, 200])
    await writeFile(join(dir, 'notes.txt'), 'not an image')
    await writeFile(join(dir, '.hidden.png'), 'resource fork')
  })

  it('lists image files sorted by path, with no captions', async () => {
    const ds = await readImageFolder(dir)
    expect(ds.source).toBe(dir)
    expect(ds.examples).toEqual([
      { id: 'a.PNG', image: join(dir, 'a.PNG'), captions: [] },
      { id: 'b.png', image: join(dir, 'b.png'), captions: [] },
      { id: 'c.jpg', image: join(dir, 'c.jpg'), captions: [] },
    ])
    const rec = await readImageFolder(dir, { recursive: true })
    expect(rec.examples.map((e) => e.id)).toEqual(['a.PNG', 'b.png', 'c.jpg', 'sub/d.webp', 'sub/deeper/e.png'])
    expect(rec.examples[4]!.image).toBe(join(dir, 'sub', 'deeper', 'e.png'))
  })

  it('errors: missing folder, a file, bad options', async () => {
    await rejectsData(readImageFolder(join(dir, 'nope')), 'E_IO', /nope/)
    await rejectsData(readImageFolder(join(dir, 'notes.txt')), 'E_IO', /not a directory/)
    await expect(readImageFolder(dir, { recursive: 'yes' as unknown as boolean })).rejects.toThrow(TypeError)
  })
})

describe('dataset() autodetection', () => {
  it('folder, JSONL, COCO and Karpathy JSON', async () => {
    const dir = await fresh('detect')
    await png(join(dir, 'x.png'), [1, 2, 3])
    await writeFile(join(dir, 'd.jsonl'), JSON.stringify({ image: 'x.png', captions: ['c'] }))
    await writeFile(join(dir, 'coco.json'), JSON.stringify(COCO))
    await writeFile(join(dir, 'karpathy.json'), JSON.stringify(KARPATHY))
    await writeFile(join(dir, 'other.json'), JSON.stringify({ images: [{ id: 1 }] }))
    await writeFile(join(dir, 'data.csv'), 'image,caption\n')

    expect((await dataset(dir)).examples).toEqual([{ id: 'x.png', image: join(dir, 'x.png'), captions: [] }])
    expect((await dataset(join(dir, 'd.jsonl'))).examples).toEqual([{ id: 'x.png', image: join(dir, 'x.png'), captions: ['c'] }])
    const coco = await dataset(join(dir, 'coco.json'))
    expect(coco.examples.map((e) => e.image)).toEqual(['a.jpg', 'b.jpg', 'c.jpg'].map((f) => join(dir, f)))
    const cocoElsewhere = await dataset(join(dir, 'coco.json'), { imagesDir: join(tmp, 'imgs') })
    expect(cocoElsewhere.examples[0]!.image).toBe(join(tmp, 'imgs', 'a.jpg'))
    expect((await dataset(join(dir, 'karpathy.json'))).examples.map((e) => e.id)).toEqual(['7', '55', '3'])
    const val = await dataset(join(dir, 'karpathy.json'), { split: 'val', imagesDir: join(tmp, 'coco') })
    expect(val.examples).toEqual([{ id: '101', image: join(tmp, 'coco', 'val2014', 'v1.jpg'), captions: ['Val one.'] }])

    await rejectsData(dataset(join(dir, 'other.json')), 'E_DATA', /other\.json/)
    await rejectsData(dataset(join(dir, 'data.csv')), 'E_DATA', /unknown format/)
    await rejectsData(dataset(join(dir, 'missing.jsonl')), 'E_IO', /missing\.jsonl/)
  })
})

describe('splitLabeled', () => {
  const make = (n: number, uncaptioned: Set<number> = new Set()): Example[] =>
    Array.from({ length: n }, (_, i) => ({ id: `e${i}`, image: `/img/${i}.png`, captions: uncaptioned.has(i) ? [] : [`caption ${i}`] }))
  const ids = (xs: Example[]) => xs.map((e) => e.id)

  it('labels exactly round(fraction * captioned) or labeledCount examples that have captions', () => {
    const ex = make(103, new Set([0, 5, 50]))
    const a = splitLabeled(ex, { labeledFraction: 0.1, seed: 1 })
    expect(a.labeled).toHaveLength(10) // round(0.1 * 100)
    expect(a.unlabeled).toHaveLength(93)
    expect(a.labeled.every((e) => e.captions.length > 0)).toBe(true)
    expect(splitLabeled(ex, { labeledFraction: 0.125, seed: 1 }).labeled).toHaveLength(13) // round(12.5)
    expect(splitLabeled(ex, { labeledCount: 37, seed: 9 }).labeled).toHaveLength(37)
    expect(splitLabeled(ex, { labeledFraction: 0, seed: 9 }).labeled).toHaveLength(0)
    const all = splitLabeled(ex, { labeledFraction: 1, seed: 9 })
    expect(all.labeled).toHaveLength(100)
    expect(ids(all.unlabeled)).toEqual(['e0', 'e5', 'e50'])
  })

  it('is a partition: disjoint, union = all, input order kept, unlabeled captions removed', () => {
    const ex = make(50, new Set([3, 4]))
    const { labeled, unlabeled } = splitLabeled(ex, { labeledFraction: 0.3, seed: 123 })
    const L = new Set(ids(labeled))
    expect(ids(unlabeled).filter((id) => L.has(id))).toEqual([])
    expect([...ids(labeled), ...ids(unlabeled)].sort()).toEqual(ids(ex).sort())
    const pos = (id: string) => Number(id.slice(1))
    expect(ids(labeled).map(pos)).toEqual([...ids(labeled).map(pos)].sort((a, b) => a - b))
    expect(ids(unlabeled).map(pos)).toEqual([...ids(unlabeled).map(pos)].sort((a, b) => a - b))
    expect(labeled.every((e) => ex.includes(e))).toBe(true)
    expect(unlabeled.every((e) => e.captions.length === 0)).toBe(true)
    expect(ex.every((e, i) => (i === 3 || i === 4 ? e.captions.length === 0 : e.captions.length === 1))).toBe(true) // input untouched
    const kept = splitLabeled(ex, { labeledFraction: 0.3, seed: 123, keepUnlabeledCaptions: true })
    expect(ids(kept.labeled)).toEqual(ids(labeled))
    expect(kept.unlabeled.filter((e) => e.captions.length > 0)).toHaveLength(48 - 14)
  })

  it('is deterministic for a seed, differs between seeds, and is pinned across versions', () => {
    const ex = make(200)
    const a = splitLabeled(ex, { labeledFraction: 0.05, seed: 42 })
    const b = splitLabeled(make(200), { labeledFraction: 0.05, seed: 42 })
    expect(ids(a.labeled)).toEqual(ids(b.labeled))
    const c = splitLabeled(ex, { labeledFraction: 0.05, seed: 43 })
    expect(ids(c.labeled)).not.toEqual(ids(a.labeled))
    // mulberry32 is integer arithmetic: these values hold on every Node version and machine.
    const r = mulberry32(42)
    expect([r(), r(), r()]).toEqual(PINNED_MULBERRY32_42)
    expect(ids(splitLabeled(make(20), { labeledCount: 4, seed: 7 }).labeled)).toEqual(PINNED_SPLIT_20_4_7)
  })

  it('rejects bad arguments', () => {
    const ex = make(10, new Set([0]))
    expect(() => splitLabeled(ex, { seed: 1 })).toThrow(TypeError)
    expect(() => splitLabeled(ex, { seed: 1, labeledFraction: 0.5, labeledCount: 2 })).toThrow(TypeError)
    expect(() => splitLabeled(ex, { seed: 1, labeledFraction: 1.5 })).toThrow(RangeError)
    expect(() => splitLabeled(ex, { seed: 1, labeledFraction: Number.NaN })).toThrow(RangeError)
    expect(() => splitLabeled(ex, { seed: 1, labeledCount: 10 })).toThrow(RangeError) // only 9 have captions
    expect(() => splitLabeled(ex, { seed: 1, labeledCount: 2.5 })).toThrow(RangeError)
    expect(() => splitLabeled(ex, { seed: 1.5, labeledCount: 2 })).toThrow(RangeError)
    expect(() => splitLabeled(ex, { seed: '1' as unknown as number, labeledCount: 2 })).toThrow(TypeError)
    expect(() => splitLabeled('x' as unknown as Example[], { seed: 1, labeledCount: 0 })).toThrow(TypeError)
  })
})

const PINNED_MULBERRY32_42 = [0.6011037519201636, 0.44829055899754167, 0.8524657934904099]
const PINNED_SPLIT_20_4_7 = ['e0', 'e2', 'e14', 'e19']

describe('cachedImageFeatures', () => {
  let clip: Clip
  let imgDir: string
  let examples: Example[]
  beforeAll(async () => {
    clip = await Clip.load(join(goldenDir, 'clip'), { device: 'cpu' })
    imgDir = await fresh('feat-images')
    const colours: Array<[number, number, number]> = [
      [220, 20, 20],
      [20, 220, 20],
      [20, 20, 220],
      [220, 220, 20],
      [20, 220, 220],
      [128, 128, 128],
      [250, 120, 0],
    ]
    examples = []
    for (const [i, rgb] of colours.entries()) {
      const path = await png(join(imgDir, `img${i}.png`), rgb, 40 + i * 3, 36)
      examples.push({ id: `img${i}`, image: path, captions: i % 2 === 0 ? [`colour ${i}`] : [] })
    }
  })
  afterAll(() => clip?.dispose())

  it('the real Clip is a FeatureEncoder', () => {
    const enc: FeatureEncoder = clip
    expect(enc.imageSize).toBe(32)
  })

  it('misses first, hits next, bitwise identical, equal to direct features; one new image is one miss', async () => {
    const cacheDir = join(await fresh('feat-cache'), 'nested', 'cache')
    const six = examples.slice(0, 6)
    const progress: Array<[number, number]> = []
    const first = await cachedImageFeatures(clip, six, { cacheDir, batchSize: 4, onProgress: (d, t) => progress.push([d, t]) })
    expect(first.hits).toBe(0)
    expect(first.misses).toBe(6)
    expect(first.features.dtype).toBe('float32')
    expect(first.features.shape).toEqual([6, 32])
    expect(progress).toEqual([
      [0, 6],
      [4, 6],
      [6, 6],
    ])
    const header = await readSafetensorsHeader(first.cacheFile)
    expect(header.names).toHaveLength(6)
    expect(header.metadata.clipHash).toBe(await fileSha256(join(goldenDir, 'clip', 'model.safetensors')))
    expect(header.metadata.imageSize).toBe('32')
    expect(header.metadata.format).toMatch(/semicap/)

    // Direct features, one batch: the cached rows match (batching may change the last bits, hence the tolerance).
    const direct = await clip.imageFeatures(await clip.preprocess(six.map((e) => e.image)))
    const got = first.features.data as Float32Array
    const want = direct.data as Float32Array
    let worst = 0
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!))
    expect(worst).toBeLessThan(1e-5)
    // Rows differ between images (different colours).
    expect(first.features.row(0).toArray()).not.toEqual(first.features.row(1).toArray())

    const second = await cachedImageFeatures(clip, six, { cacheDir })
    expect(second.hits).toBe(6)
    expect(second.misses).toBe(0)
    expect(Buffer.from((second.features.data as Float32Array).buffer, (second.features.data as Float32Array).byteOffset, 6 * 32 * 4)).toEqual(
      Buffer.from(got.buffer, got.byteOffset, 6 * 32 * 4),
    )

    // Order follows the examples; one new image is one miss; duplicates share a row.
    const seven = [examples[6]!, ...six.slice().reverse(), six[0]!]
    const third = await cachedImageFeatures(clip, seven, { cacheDir, batchSize: 2 })
    expect(third.hits).toBe(7)
    expect(third.misses).toBe(1)
    expect(third.features.shape).toEqual([8, 32])
    for (let i = 0; i < 6; i++) expect(third.features.row(6 - i).toArray()).toEqual(first.features.row(i).toArray())
    expect(third.features.row(7).toArray()).toEqual(first.features.row(0).toArray())
    expect((await readSafetensorsHeader(third.cacheFile)).names).toHaveLength(7)
    const fourth = await cachedImageFeatures(clip, seven, { cacheDir })
    expect([fourth.hits, fourth.misses]).toEqual([8, 0])

    // A rewritten image (new size/mtime) is recomputed.
    await png(examples[2]!.image, [0, 0, 0], 44, 36)
    const fifth = await cachedImageFeatures(clip, six, { cacheDir })
    expect([fifth.hits, fifth.misses]).toEqual([5, 1])
    expect(fifth.features.row(2).toArray()).not.toEqual(first.features.row(2).toArray())
    await png(examples[2]!.image, [20, 20, 220], 46, 36) // restore the original image (size as written at first)
  })

  it('other CLIP weights: a different hash and cache file, all misses', async () => {
    const cacheDir = await fresh('feat-cache-weights')
    const six = examples.slice(0, 6)
    const a = await cachedImageFeatures(clip, six, { cacheDir })
    expect(a.misses).toBe(6)

    const copy = await fresh('clip-copy')
    await cp(join(goldenDir, 'clip'), copy, { recursive: true })
    const weightsFile = join(copy, 'model.safetensors')
    const header = await readSafetensorsHeader(weightsFile)
    const tensors = await loadSafetensors(weightsFile)
    const name = header.names.find((n) => tensors[n]!.dtype === 'float32' && n.includes('vision') && n.includes('proj'))!
    const t = tensors[name]!
    const data = (t.data as Float32Array).slice()
    data[0] = data[0]! + 0.25
    tensors[name] = new Tensor('float32', t.shape, data)
    await writeSafetensors(weightsFile, tensors, header.metadata)
    expect(await fileSha256(weightsFile)).not.toBe(await fileSha256(join(goldenDir, 'clip', 'model.safetensors')))

    const clip2 = await Clip.load(copy, { device: 'cpu' })
    try {
      const b = await cachedImageFeatures(clip2, six, { cacheDir })
      expect([b.hits, b.misses]).toEqual([0, 6])
      expect(b.cacheFile).not.toBe(a.cacheFile)
      expect(b.features.toArray()).not.toEqual(a.features.toArray())
      // Both caches stay valid side by side.
      expect((await cachedImageFeatures(clip, six, { cacheDir })).hits).toBe(6)
      expect((await cachedImageFeatures(clip2, six, { cacheDir })).hits).toBe(6)
    } finally {
      clip2.dispose()
    }
  })

  it('abort: an aborted signal throws AbortError; an abort mid-way keeps finished batches', async () => {
    const cacheDir = await fresh('feat-cache-abort')
    const controller = new AbortController()
    controller.abort()
    const err = await cachedImageFeatures(clip, examples, { cacheDir, signal: controller.signal }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AbortError)
    expect((err as AbortError).name).toBe('AbortError')
    expect((err as AbortError).code).toBe('E_ABORTED')

    const mid = new AbortController()
    const err2 = await cachedImageFeatures(clip, examples, {
      cacheDir,
      batchSize: 2,
      signal: mid.signal,
      onProgress: (done) => {
        if (done >= 2) mid.abort()
      },
    }).catch((e: unknown) => e)
    expect(err2).toBeInstanceOf(AbortError)
    const after = await cachedImageFeatures(clip, examples, { cacheDir })
    expect([after.hits, after.misses]).toEqual([2, 5])
  })

  it('rejects bad arguments; a missing image is an error that saves nothing wrong', async () => {
    const cacheDir = await fresh('feat-cache-args')
    await expect(cachedImageFeatures(clip, examples, { cacheDir, batchSize: 0 })).rejects.toThrow(RangeError)
    await expect(cachedImageFeatures(clip, examples, {} as { cacheDir: string })).rejects.toThrow(TypeError)
    await expect(cachedImageFeatures({} as FeatureEncoder, examples, { cacheDir })).rejects.toThrow(TypeError)
    await rejectsData(cachedImageFeatures(clip, [{ id: 'x', image: join(imgDir, 'nope.png'), captions: [] }], { cacheDir }), 'E_IO', /nope\.png/)
    const empty = await cachedImageFeatures(clip, [], { cacheDir })
    expect(empty.features.shape).toEqual([0, 32])
    expect([empty.hits, empty.misses]).toEqual([0, 0])
    await expect(stat(empty.cacheFile)).rejects.toThrow()
  })
})
