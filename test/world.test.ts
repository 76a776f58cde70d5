import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import sharp from 'sharp'
import { afterAll, describe, expect, it } from 'vitest'
import { SemicapError } from '../lib/errors.js'
import {
  BACKGROUND_RGB,
  COLOURS,
  COLOUR_RGB,
  Rng,
  SHAPES,
  SIZE_RADIUS,
  altTexts,
  buildWorld,
  captionVocabulary,
  fullCaption,
  generateScenes,
  lmCorpus,
  parseCaption,
  readJsonl,
  readWorld,
  referenceCaptions,
  renderPng,
  renderScene,
  scoreObjects,
  tokenize,
  writeWorld,
  type Scene,
} from '../lib/world/index.js'

const pixel = (img: { data: Uint8Array; width: number }, x: number, y: number) => {
  const i = (y * img.width + x) * 3
  return [img.data[i], img.data[i + 1], img.data[i + 2]]
}

/** A hand-made scene: large red circle top-left, small blue square top-right, large green star bottom-middle. */
const SCENE: Scene = {
  background: 'light',
  objects: [
    { shape: 'circle', colour: 'red', size: 'large', row: 0, col: 0, x: 1 / 6, y: 1 / 6 },
    { shape: 'star', colour: 'green', size: 'large', row: 2, col: 1, x: 0.5, y: 5 / 6 },
    { shape: 'square', colour: 'blue', size: 'small', row: 0, col: 2, x: 5 / 6, y: 1 / 6 },
  ],
}

describe('rng', () => {
  it('is deterministic per seed and differs across seeds', () => {
    const draw = (seed: number) => {
      const r = new Rng(seed)
      return Array.from({ length: 20 }, () => r.next())
    }
    expect(draw(7)).toEqual(draw(7))
    expect(draw(7)).not.toEqual(draw(8))
    const r = new Rng(1)
    for (let i = 0; i < 1000; i++) {
      const v = r.int(2, 5)
      expect(v).toBeGreaterThanOrEqual(2)
      expect(v).toBeLessThanOrEqual(5)
    }
    expect(r.shuffle([1, 2, 3, 4, 5]).sort()).toEqual([1, 2, 3, 4, 5])
    expect(() => new Rng(1.5)).toThrow(SemicapError)
  })
})

describe('scenes', () => {
  const scenes = generateScenes(42, 1000)

  it('are deterministic from the seed', () => {
    expect(generateScenes(42, 50)).toEqual(scenes.slice(0, 50))
    expect(generateScenes(43, 50)).not.toEqual(scenes.slice(0, 50))
  })

  it('respect the world rules', () => {
    const counts = [0, 0, 0, 0]
    const shapes = new Set<string>()
    const colours = new Set<string>()
    for (const scene of scenes) {
      const objs = scene.objects
      counts[objs.length]!++
      expect(objs.length).toBeGreaterThanOrEqual(1)
      expect(objs.length).toBeLessThanOrEqual(3)
      expect(new Set(objs.map((o) => o.row * 3 + o.col)).size).toBe(objs.length)
      expect(new Set(objs.map((o) => `${o.colour} ${o.shape}`)).size).toBe(objs.length)
      // The salient object is a largest one.
      if (objs.some((o) => o.size === 'large')) expect(objs[0]!.size).toBe('large')
      for (const o of objs) {
        shapes.add(o.shape)
        colours.add(o.colour)
        const r = SIZE_RADIUS[o.size]
        expect(o.x - r).toBeGreaterThan(0)
        expect(o.x + r).toBeLessThan(1)
      }
      for (let i = 0; i < objs.length; i++) {
        for (let j = i + 1; j < objs.length; j++) {
          const a = objs[i]!
          const b = objs[j]!
          const reach = SIZE_RADIUS[a.size] + SIZE_RADIUS[b.size]
          expect(Math.abs(a.x - b.x) >= reach || Math.abs(a.y - b.y) >= reach).toBe(true)
        }
      }
    }
    expect(counts.slice(1).every((c) => c > 150)).toBe(true)
    expect(shapes.size).toBe(SHAPES.length)
    expect(colours.size).toBe(COLOURS.length)
    expect(() => generateScenes(1, -1)).toThrow(SemicapError)
  })

  it('can be restricted to some backgrounds and a smaller object count', () => {
    const plain = generateScenes(42, 300, { backgrounds: ['light'], maxObjects: 2 })
    expect(plain.every((s) => s.background === 'light')).toBe(true)
    expect(Math.max(...plain.map((s) => s.objects.length))).toBe(2)
    // Capping keeps the objects a scene would have had: the first ones drawn, in the same cells.
    plain.forEach((s, i) => {
      const full = scenes[i]!
      if (full.objects.length <= 2) expect(s.objects).toEqual(full.objects)
    })
    expect(generateScenes(42, 300, { backgrounds: ['light', 'dark'] })).toEqual(scenes.slice(0, 300))
    expect(() => generateScenes(1, 1, { backgrounds: [] })).toThrow(SemicapError)
    expect(() => generateScenes(1, 1, { maxObjects: 4 })).toThrow(SemicapError)
    const palette = { circle: ['red', 'yellow'], star: ['pink'] } as const
    const typical = generateScenes(42, 300, { palette })
    for (const s of typical) {
      for (const o of s.objects) if (o.shape === 'circle' || o.shape === 'star') expect(palette[o.shape] as readonly string[]).toContain(o.colour)
    }
    expect(typical.flatMap((s) => s.objects).some((o) => o.shape === 'square' && !['red', 'yellow', 'pink'].includes(o.colour))).toBe(true)
    expect(() => generateScenes(1, 1, { palette: { circle: [] } })).toThrow(SemicapError)
    const w = buildWorld({ seed: 3, trainImages: 50, valImages: 5, testImages: 5, backgrounds: ['dark'], maxObjects: 1 })
    expect([...w.train, ...w.test].every((e) => e.scene.background === 'dark' && e.scene.objects.length === 1)).toBe(true)
    expect(lmCorpus(1, 50, { maxObjects: 1 }).every((c) => parseCaption(c).mentions.length === 1)).toBe(true)
  })
})

describe('render', () => {
  it('draws object colours at centres and background at corners, deterministically', async () => {
    const scenes = generateScenes(5, 100)
    for (const size of [64, 32, 128]) {
      for (const scene of scenes) {
        const img = renderScene(scene, size)
        expect(img.data.length).toBe(size * size * 3)
        const bg = [...BACKGROUND_RGB[scene.background]]
        expect(pixel(img, 0, 0)).toEqual(bg)
        expect(pixel(img, size - 1, size - 1)).toEqual(bg)
        for (const o of scene.objects) {
          expect(pixel(img, Math.floor(o.x * size), Math.floor(o.y * size))).toEqual([...COLOUR_RGB[o.colour]])
        }
      }
    }
    const a = renderScene(scenes[0]!)
    expect(Buffer.from(renderScene(generateScenes(5, 1)[0]!).data).equals(Buffer.from(a.data))).toBe(true)
    expect(Buffer.from(renderScene(generateScenes(6, 1)[0]!).data).equals(Buffer.from(a.data))).toBe(false)
    // PNG is lossless.
    const png = await renderPng(scenes[0]!)
    const decoded = await sharp(png).raw().toBuffer({ resolveWithObject: true })
    expect(decoded.info.width).toBe(64)
    expect(decoded.info.channels).toBe(3)
    expect(decoded.data.equals(Buffer.from(a.data))).toBe(true)
    expect(() => renderScene(scenes[0]!, 3)).toThrow(SemicapError)
  })

  it('gives different shapes different masks', () => {
    const masks = SHAPES.map((shape) => {
      const img = renderScene({ background: 'dark', objects: [{ ...SCENE.objects[0]!, shape, x: 0.5, y: 0.5 }] }, 64)
      let on = 0
      for (let i = 0; i < img.data.length; i += 3) if (img.data[i] !== BACKGROUND_RGB.dark[0]) on++
      return `${on}:${Buffer.from(img.data).toString('base64')}`
    })
    expect(new Set(masks).size).toBe(SHAPES.length)
  })
})

describe('captions', () => {
  const scenes = generateScenes(9, 600)
  const refs = scenes.map((s, i) => referenceCaptions(s, new Rng(i)))
  const vocab = new Set(captionVocabulary())

  it('are deterministic and well-formed', () => {
    expect(scenes.map((s, i) => referenceCaptions(s, new Rng(i)))).toEqual(refs)
    expect(referenceCaptions(scenes[0]!, new Rng(1000))).not.toEqual(refs[0])
    for (const [i, r] of refs.entries()) {
      expect(r).toHaveLength(5)
      for (const c of [...r, fullCaption(scenes[i]!), ...altTexts(scenes[i]!, new Rng(i))]) {
        expect(c).toBe(c.toLowerCase())
        expect(c).not.toMatch(/[.\s]$/)
        for (const w of tokenize(c)) expect(vocab.has(w)).toBe(true)
      }
    }
    expect(lmCorpus(3, 20)).toEqual(lmCorpus(3, 20))
    expect(lmCorpus(3, 20)).not.toEqual(lmCorpus(4, 20))
  })

  it('never state anything false; the full caption is complete, references often are not', () => {
    let incompleteMulti = 0
    for (const [i, scene] of scenes.entries()) {
      for (const c of [...refs[i]!, fullCaption(scene)]) {
        const s = scoreObjects(c, scene)
        expect(s.precision, c).toBe(1)
        expect(s.matched).toBe(s.mentioned)
        expect(s.relations.correct).toBe(s.relations.stated)
        expect(s.counts.correct).toBe(s.counts.stated)
      }
      expect(scoreObjects(fullCaption(scene), scene).recall).toBe(1)
      if (scene.objects.length > 1) incompleteMulti += refs[i]!.filter((c) => scoreObjects(c, scene).recall < 1).length
      // Alt texts are true too (a bare "two shapes" states no object fact at all).
      for (const t of altTexts(scene, new Rng(i + 1))) {
        const s = scoreObjects(t, scene)
        expect(s.precision === 1 || s.statedFacts === 0, t).toBe(true)
      }
    }
    expect(incompleteMulti).toBeGreaterThan(100)
  })

  it('prints the reference distribution', () => {
    const all = refs.flat()
    const recalls = scenes.flatMap((s, i) => refs[i]!.map((c) => scoreObjects(c, s).recall))
    const words = new Set(all.flatMap(tokenize))
    const stats = {
      meanReferenceRecall: +(recalls.reduce((a, b) => a + b, 0) / recalls.length).toFixed(3),
      fullCaptionRecall: 1,
      vocabularySize: words.size,
      grammarVocabularySize: vocab.size,
      meanCaptionWords: +(all.reduce((a, c) => a + tokenize(c).length, 0) / all.length).toFixed(2),
    }
    console.log('world reference distribution (600 scenes x 5 refs):', stats)
    expect(stats.meanReferenceRecall).toBeGreaterThan(0.4)
    expect(stats.meanReferenceRecall).toBeLessThan(0.8)
  })
})

describe('parser and scoring', () => {
  it('handles synonyms and word order', () => {
    const variants = [
      'a large red circle above a big green star and a little blue square',
      'a big green star, a small blue box and a large red disc',
      'three objects: a disc that is red and large, a star that is big and green and a blue square that is small',
      'there is a small blue box to the right of a large red circle and a large green star',
      'a green large star below a red big circle, a tiny blue square',
    ]
    for (const v of variants) {
      const s = scoreObjects(v, SCENE)
      expect([s.precision, s.recall, s.mentioned], v).toEqual([1, 1, 3])
    }
    expect(parseCaption('a circle that is red and small').mentions).toEqual([{ shape: 'circle', colour: 'red', size: 'small' }])
    expect(parseCaption('a big purple rhombus').mentions).toEqual([{ shape: 'diamond', colour: 'purple', size: 'large' }])
    expect(parseCaption('two red discs').mentions).toHaveLength(2)
  })

  it('checks binding, relations, counts and repetition', () => {
    // "blue circle": both objects exist, but not as one object.
    expect(scoreObjects('a blue circle', SCENE).precision).toBe(0)
    const partial = scoreObjects('a red circle and a yellow star', SCENE)
    expect(partial.precision).toBe(0.5)
    expect(partial.recall).toBeCloseTo(2 / 9)
    // Repeating a mention does not count twice.
    expect(scoreObjects('a red circle and a red circle', SCENE).precision).toBe(0.5)
    // Generic noun with attributes states colour only.
    expect(scoreObjects('a red shape', SCENE)).toMatchObject({ precision: 1, statedFacts: 1 })
    expect(scoreObjects('a red circle to the left of a blue square', SCENE).relations).toEqual({ stated: 1, correct: 1 })
    expect(scoreObjects('a red circle below a blue square', SCENE).relations).toEqual({ stated: 1, correct: 0 })
    expect(scoreObjects('a red circle above a green star', SCENE).relations).toEqual({ stated: 1, correct: 1 })
    expect(scoreObjects('three shapes', SCENE).counts).toEqual({ stated: 1, correct: 1 })
    expect(scoreObjects('two shapes', SCENE).counts).toEqual({ stated: 1, correct: 0 })
  })

  it('scores garbage and empty captions 0, never NaN', () => {
    for (const c of ['', '   ', 'zxq blorp the of and', 'purple', '. , :']) {
      const s = scoreObjects(c, SCENE)
      expect([s.precision, s.recall, s.f1], c).toEqual([0, 0, 0])
    }
    const noisy = scoreObjects('qq a zz red ww circle xx', SCENE)
    expect([noisy.precision, noisy.recall]).toEqual([1, 2 / 9])
    expect(scoreObjects('a red circle', { background: 'dark', objects: [] }).recall).toBe(0)
  })
})

describe('dataset', () => {
  const dirs: string[] = []
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true })
  })

  it('splits train into a 2% labeled subset and a disjoint unlabeled pool', () => {
    const w = buildWorld({ seed: 3, trainImages: 1234, valImages: 20, testImages: 30 })
    expect(w.labeled).toHaveLength(Math.round(0.02 * 1234))
    expect(w.labeled.length + w.unlabeled.length).toBe(1234)
    const labeled = new Set(w.labeled.map((e) => e.id))
    expect(w.unlabeled.some((e) => labeled.has(e.id))).toBe(false)
    expect(new Set([...w.labeled, ...w.unlabeled].map((e) => e.id)).size).toBe(1234)
    expect([w.val.length, w.test.length]).toEqual([20, 30])
    for (const e of [...w.train, ...w.test]) expect(e.references).toHaveLength(5)

    expect(buildWorld({ seed: 3, trainImages: 1234, valImages: 20, testImages: 30 })).toEqual(w)
    // Val/test don't depend on the train size; another seed gives another world.
    expect(buildWorld({ seed: 3, trainImages: 10, valImages: 20, testImages: 30 }).test).toEqual(w.test)
    expect(buildWorld({ seed: 4, trainImages: 10, valImages: 0, testImages: 30 }).test).not.toEqual(w.test)
    expect(buildWorld({ seed: 3, trainImages: 100, valImages: 0, testImages: 0, labeledFraction: 1 }).unlabeled).toEqual([])
    expect(() => buildWorld({ seed: 3, trainImages: -1, valImages: 0, testImages: 0 })).toThrow(SemicapError)
    expect(() => buildWorld({ seed: 3, trainImages: 1, valImages: 0, testImages: 0, labeledFraction: 2 })).toThrow(
      expect.objectContaining({ code: 'E_CONFIG' }),
    )
  })

  it('writeWorld round-trips through PNG + JSONL + scenes.json', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'semicap-world-'))
    dirs.push(dir)
    const w = buildWorld({ seed: 11, trainImages: 100, valImages: 5, testImages: 7, imageSize: 48 })
    const progress: number[] = []
    const files = await writeWorld(dir, w, { onProgress: (done, total) => progress.push(done / total) })
    expect(files.images).toBe(112)
    expect(progress).toHaveLength(112)
    expect(progress.at(-1)).toBe(1)
    expect(await readWorld(dir)).toEqual(w)

    const labeled = await readJsonl(files.jsonl.labeled)
    expect(labeled.map((r) => r.captions)).toEqual(w.labeled.map((e) => e.references))
    const unlabeled = await readJsonl(files.jsonl.unlabeled)
    expect(unlabeled).toHaveLength(98)
    expect(unlabeled.every((r) => r.captions.length === 0)).toBe(true)
    const test = await readJsonl(files.jsonl.test)
    expect(test).toHaveLength(7)
    for (const [i, rec] of test.entries()) {
      const { data, info } = await sharp(join(dir, rec.image)).raw().toBuffer({ resolveWithObject: true })
      expect([info.width, info.height, info.channels]).toEqual([48, 48, 3])
      expect(data.equals(Buffer.from(renderScene(w.test[i]!.scene, 48).data))).toBe(true)
    }
    await expect(readWorld(join(dir, 'missing'))).rejects.toMatchObject({ code: 'E_IO' })
    await expect(readJsonl(join(dir, 'images', `${w.test[0]!.id}.png`))).rejects.toMatchObject({ code: 'E_DATA' })
  })
})
