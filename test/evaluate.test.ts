// evaluate() and renderEvaluationReport() on a tiny captioner trained until it reproduces its references, and on an
// untrained one (arbitrary captions): exact-match values, metrics recomputed in the test from their definitions, the
// feature-cache path, and the HTML report.
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner } from '../lib/index.js'
import type { Example } from '../lib/data/index.js'
import { AbortError, SemicapError } from '../lib/errors.js'
import { CLIP_S_PREFIX, evaluate, makeThumbnails, renderEvaluationReport, type EvaluationResult } from '../lib/evaluate.js'
import { ciderDocumentFrequency, scoreCaptions, tokenizeCaption } from '../lib/metrics/index.js'
import type { Tensor } from '../lib/tensor.js'
import { makeColourSquares, makeTinyCaptionModels } from './helpers/models.js'
import { tempDir } from './helpers/paths.js'

const COLOURS: [string, [number, number, number]][] = [
  ['red', [230, 20, 20]],
  ['green', [20, 200, 40]],
  ['blue', [20, 40, 230]],
  ['yellow', [240, 230, 30]],
]

let work: string
let examples: Example[]
let trained: Captioner
let untrained: Captioner
let exact: EvaluationResult
let arbitrary: EvaluationResult

beforeAll(async () => {
  work = tempDir('semicap-eval-')
  const tiny = await makeTinyCaptionModels(work)
  const clipDir = tiny.clipDir
  // Five words: every n-gram order up to 4 has a match, so an exact copy scores BLEU-4 = 1.
  examples = await makeColourSquares(work, COLOURS, (name) => `a ${name} square on grey.`)
  const create = () => Captioner.create({ clip: clipDir, gpt2: tiny.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  trained = await create()
  await trained.train({ stage: 'supervised', labeled: examples, steps: 80, batchSize: 4, lr: 3e-3, schedule: 'constant', featureCache: join(work, 'train-cache'), seed: 1 })
  untrained = await create()
  exact = await evaluate(trained, { examples, decoding: { maxTokens: 12 } })
  arbitrary = await evaluate(untrained, { examples, decoding: { maxTokens: 8 } })
})

afterAll(() => {
  trained?.dispose()
  untrained?.dispose()
  if (work) rmSync(work, { recursive: true, force: true })
})

/** Rows of a [N, D] tensor scaled to unit length, in float64. */
const unitRows = (t: Tensor): Float64Array[] => {
  const [N, D] = t.shape as [number, number]
  return Array.from({ length: N }, (_, i) => {
    const r = Float64Array.from((t.data as Float32Array).subarray(i * D, (i + 1) * D))
    const n = Math.hypot(...r)
    return r.map((x) => x / n)
  })
}
const dot = (a: Float64Array, b: Float64Array): number => a.reduce((s, x, i) => s + x * b[i]!, 0)
const splitWords = (s: string): string[] => (s.trim() === '' ? [] : s.trim().split(/\s+/))

describe('evaluate: captions equal to the references', () => {
  it('the trained captioner reproduces its references', () => {
    expect(exact.perImage.map((p) => p.caption)).toEqual(examples.map((e) => e.captions[0]))
    expect(exact.perImage.map((p) => p.id)).toEqual(examples.map((e) => e.id))
    expect(exact.perImage.map((p) => p.image)).toEqual(examples.map((e) => e.image))
  })

  it('BLEU-1..4 = 1 and ROUGE-L = 1', () => {
    const m = exact.metrics
    // pycocoevalcap: (correct + 1e-15) / (guess + 1e-9) per order, so an exact match is 1 - O(1e-10).
    for (const b of [m.bleu1, m.bleu2, m.bleu3, m.bleu4]) expect(b).toBeCloseTo(1, 8)
    expect(m.rougeL).toBeCloseTo(1, 12)
    for (const p of exact.perImage) expect(p.scores.bleu4).toBeCloseTo(1, 8)
  })

  it('CIDEr-D = 10: every order has n-grams only this image has, the shared ones weigh idf 0', () => {
    // One reference per image: sim_n = 1 for n = 1..4 (vectors equal and non-zero), no length penalty,
    // mean over n = 1, times 10.
    expect(exact.metrics.ciderD).toBeCloseTo(10, 9)
    for (const p of exact.perImage) expect(p.scores.ciderD).toBeCloseTo(10, 9)
  })

  it('RefCLIP-S is the harmonic mean of CLIP-S and a reference similarity of 1', () => {
    for (const p of exact.perImage) {
      const c = p.scores.clipS
      expect(c).toBeGreaterThanOrEqual(0)
      expect(c).toBeLessThanOrEqual(2.5)
      // The caption's text features are the reference's (same prefixed text): cos = 1.
      expect(p.scores.refClipS).toBeCloseTo(c === 0 ? 0 : (2 * c) / (c + 1), 5)
      expect(p.scores.refClipS).toBeGreaterThanOrEqual(Math.min(c, 1) - 1e-6)
      expect(p.scores.refClipS).toBeLessThanOrEqual(Math.max(c, 1) + 1e-6)
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
    expect(exact.metrics.clipS).toBeCloseTo(mean(exact.perImage.map((p) => p.scores.clipS)), 12)
    expect(exact.metrics.refClipS).toBeCloseTo(mean(exact.perImage.map((p) => p.scores.refClipS)), 12)
  })

  it('recall@1 and recall@5 are the ranks of each caption\'s own image, counted here (6 images: recall@5 can miss)', async () => {
    // Six images (the most makeColourSquares draws), so recall@5 is not 1 by construction; ties count against the caption.
    mkdirSync(join(work, 'six'), { recursive: true })
    const six = await makeColourSquares(join(work, 'six'), [...COLOURS, ['white', [250, 250, 250]], ['black', [5, 5, 5]]], (n) => `a ${n} square on grey.`)
    for (const cap of [trained, untrained]) {
      const r = await evaluate(cap, { examples: six, decoding: { maxTokens: 8 } })
      const img = unitRows(await cap.clip.imageFeatures(await cap.clip.preprocess(six.map((e) => e.image))))
      const txt = unitRows(await cap.clip.encodeTexts(r.perImage.map((p) => CLIP_S_PREFIX + p.caption)))
      const ranks = txt.map((t, i) => 1 + img.filter((m, j) => j !== i && dot(t, m) >= dot(t, img[i]!)).length)
      expect(r.metrics.recallAt1).toBeCloseTo(ranks.filter((k) => k <= 1).length / 6, 12)
      expect(r.metrics.recallAt5).toBeCloseTo(ranks.filter((k) => k <= 5).length / 6, 12)
    }
  })

  it('diversity: vocabulary, mean length, no repetition, novelty against training captions', async () => {
    // a, red, green, blue, yellow, square, on, grey.
    expect(exact.metrics.vocabulary).toBe(8)
    expect(exact.metrics.meanLength).toBe(5)
    expect(exact.metrics.repetitionRate).toBe(0)
    expect(exact.metrics.novelty).toBeUndefined()
    const seen = await evaluate(trained, { examples, decoding: { maxTokens: 12 }, trainingCaptions: ['A red square on grey', 'a blue square on grey .'] })
    expect(seen.metrics.novelty).toBe(0.5)
  })
})

describe('evaluate: metrics recomputed here from their definitions', () => {
  for (const which of ['trained', 'untrained'] as const) {
    it(`${which} captioner`, async () => {
      const result = which === 'trained' ? exact : arbitrary
      const cap = which === 'trained' ? trained : untrained
      const captions = result.perImage.map((p) => p.caption)
      // The captions are what caption() gives for the images.
      expect(captions).toEqual((await cap.caption(examples.map((e) => e.image), { maxTokens: which === 'trained' ? 12 : 8 })).map((c) => c.text))

      // n-gram metrics on the PTB tokens (the tokenizer is shared; the arithmetic below is not): one reference each.
      const cand = captions.map((c) => splitWords(tokenizeCaption(c)))
      const ref = examples.map((e) => splitWords(tokenizeCaption(e.captions[0]!)))
      const m = result.metrics
      // BLEU-1 (corpus): clipped unigram matches / candidate unigrams, times the brevity penalty.
      let correct = 0
      let guess = 0
      let refLen = 0
      cand.forEach((c, i) => {
        const left = new Map<string, number>()
        for (const w of ref[i]!) left.set(w, (left.get(w) ?? 0) + 1)
        for (const w of c) if ((left.get(w) ?? 0) > 0) (correct++, left.set(w, left.get(w)! - 1))
        guess += c.length
        refLen += ref[i]!.length
      })
      const bp = guess < refLen ? Math.exp(1 - refLen / guess) : 1
      expect(m.bleu1).toBeCloseTo((correct / guess) * bp, 8)
      // ROUGE-L: LCS-based F with beta = 1.2, mean over images.
      const lcs = (a: string[], b: string[]): number => {
        const row = new Array<number>(b.length + 1).fill(0)
        for (const x of a) {
          let diag = 0
          for (let j = 1; j <= b.length; j++) {
            const up = row[j]!
            row[j] = x === b[j - 1] ? diag + 1 : Math.max(row[j]!, row[j - 1]!)
            diag = up
          }
        }
        return row[b.length]!
      }
      const rouge = cand.map((c, i) => {
        const l = lcs(c, ref[i]!)
        if (l === 0) return 0
        const P = l / c.length
        const R = l / ref[i]!.length
        return ((1 + 1.44) * P * R) / (R + 1.44 * P)
      })
      result.perImage.forEach((p, i) => expect(p.scores.rougeL).toBeCloseTo(rouge[i]!, 12))
      expect(m.rougeL).toBeCloseTo(rouge.reduce((a, b) => a + b, 0) / rouge.length, 12)

      // CLIP-S = 2.5 max(cos(image, caption), 0); RefCLIP-S = harmonic mean of it and max(cos(caption, reference), 0).
      const clip = cap.clip
      const img = unitRows(await clip.imageFeatures(await clip.preprocess(examples.map((e) => e.image))))
      const txt = unitRows(await clip.encodeTexts(captions.map((c) => CLIP_S_PREFIX + c)))
      const refs = unitRows(await clip.encodeTexts(examples.map((e) => CLIP_S_PREFIX + e.captions[0])))
      const clipS = txt.map((t, i) => 2.5 * Math.max(dot(t, img[i]!), 0))
      const refClipS = txt.map((t, i) => {
        const c = clipS[i]!
        const s = Math.max(dot(t, refs[i]!), 0)
        return c + s === 0 ? 0 : (2 * c * s) / (c + s)
      })
      result.perImage.forEach((p, i) => {
        expect(p.scores.clipS).toBeCloseTo(clipS[i]!, 5)
        expect(p.scores.refClipS).toBeCloseTo(refClipS[i]!, 5)
      })

      // Diversity: distinct words, mean words per caption.
      expect(m.vocabulary).toBe(new Set(cand.flat()).size)
      expect(m.meanLength).toBeCloseTo(cand.reduce((a, c) => a + c.length, 0) / cand.length, 12)
    })
  }

  it('the untrained captioner scores below the exact copy', () => {
    expect(arbitrary.metrics.ciderD).toBeLessThan(exact.metrics.ciderD)
    expect(arbitrary.metrics.bleu1).toBeLessThan(1)
  })

  it('an external CIDEr-D document frequency is used', async () => {
    // References that differ from the captions (an exact copy scores 10 whatever the weights).
    const other = examples.map((e) => ({ ...e, captions: [`a ${e.id} square on the grey table.`, `the ${e.id} square.`] }))
    const corpus = [...other.map((e) => e.captions), ['a dog on a beach'], ['a cat on the table'], ['two cars'], ['a man']].map((refs) => refs.map(tokenizeCaption))
    const df = ciderDocumentFrequency(corpus)
    const own = await evaluate(trained, { examples: other, decoding: { maxTokens: 12 } })
    const ext = await evaluate(trained, { examples: other, decoding: { maxTokens: 12 }, ciderDocumentFrequency: df })
    const direct = (documentFrequency?: typeof df) =>
      scoreCaptions({
        candidates: Object.fromEntries(other.map((e, i) => [e.id, exact.perImage[i]!.caption])),
        references: Object.fromEntries(other.map((e) => [e.id, e.captions])),
        ciderDocumentFrequency: documentFrequency,
      }).ciderD
    expect(own.metrics.ciderD).toBe(direct())
    expect(ext.metrics.ciderD).toBe(direct(df))
    expect(ext.metrics.ciderD).not.toBeCloseTo(own.metrics.ciderD, 3)
    expect(own.metrics.bleu4).toBeLessThan(1)
  })
})

describe('evaluate: paths and options', () => {
  it('the feature-cache path gives the captions and scores of the image path', async () => {
    const cache = join(work, 'eval-cache')
    for (const [cap, ref, maxTokens] of [[trained, exact, 12], [untrained, arbitrary, 8]] as const) {
      const viaCache = await evaluate(cap, { examples, decoding: { maxTokens }, featureCache: cache })
      expect(viaCache.perImage.map((p) => p.caption)).toEqual(ref.perImage.map((p) => p.caption))
      expect(viaCache.metrics.ciderD).toBe(ref.metrics.ciderD)
      expect(viaCache.metrics.clipS).toBeCloseTo(ref.metrics.clipS, 5)
      // Again, now read from the cache file.
      const again = await evaluate(cap, { examples, decoding: { maxTokens }, featureCache: cache, batchSize: 3 })
      expect(again.perImage.map((p) => p.caption)).toEqual(ref.perImage.map((p) => p.caption))
    }
  })

  it('reports progress per batch and honours batchSize', async () => {
    const seen: [number, number][] = []
    const r = await evaluate(trained, { examples, decoding: { maxTokens: 12 }, batchSize: 3, onProgress: (d, t) => seen.push([d, t]) })
    expect(seen).toEqual([[0, 4], [3, 4], [4, 4]])
    expect(r.perImage.map((p) => p.caption)).toEqual(exact.perImage.map((p) => p.caption))
  })

  it('the image path runs the vision tower once per batch (features serve both the captions and CLIP-S)', async () => {
    const clip = trained.clip
    const imageFeatures = clip.imageFeatures.bind(clip)
    const caption = trained.caption.bind(trained)
    let featureCalls = 0
    let captionCalls = 0
    clip.imageFeatures = (...a: Parameters<typeof imageFeatures>) => (featureCalls++, imageFeatures(...a))
    trained.caption = (...a: Parameters<typeof caption>) => (captionCalls++, caption(...a))
    try {
      const r = await evaluate(trained, { examples, decoding: { maxTokens: 12 }, batchSize: 3 })
      expect(r.perImage.map((p) => p.caption)).toEqual(exact.perImage.map((p) => p.caption))
      expect(r.metrics.clipS).toBeCloseTo(exact.metrics.clipS, 6)
    } finally {
      delete (clip as { imageFeatures?: unknown }).imageFeatures
      delete (trained as { caption?: unknown }).caption
    }
    expect(featureCalls).toBe(2)
    expect(captionCalls).toBe(0)
  })

  it('rejects bad input and honours an aborted signal', async () => {
    await expect(evaluate(trained, { examples: [] })).rejects.toBeInstanceOf(TypeError)
    const noRefs = [{ ...examples[0]!, captions: [] }]
    await expect(evaluate(trained, { examples: noRefs })).rejects.toMatchObject({ code: 'E_DATA' })
    await expect(evaluate(trained, { examples: [examples[0]!, examples[0]!] })).rejects.toBeInstanceOf(SemicapError)
    await expect(evaluate(trained, { examples, batchSize: 0 })).rejects.toBeInstanceOf(RangeError)
    await expect(evaluate(trained, { examples, signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortError)
  })
})

describe('renderEvaluationReport', () => {
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;')

  it('shows every caption escaped, the thumbnails, both captioners side by side, worst first', async () => {
    const thumbs = await makeThumbnails([...examples, { id: 'missing', image: join(work, 'nope.png') }])
    expect([...thumbs.keys()]).toEqual(examples.map((e) => e.id))
    for (const uri of thumbs.values()) {
      expect(uri).toMatch(/^data:image\/png;base64,/)
      const meta = await sharp(Buffer.from(uri.split(',')[1]!, 'base64')).metadata()
      expect(Math.max(meta.width!, meta.height!)).toBe(96)
    }
    // An untrusted caption with markup must come out as text.
    const evil: EvaluationResult = { ...arbitrary, perImage: arbitrary.perImage.map((p, i) => (i === 1 ? { ...p, caption: `<img src=x onerror="alert(1)"> & 'q'` } : p)) }
    const html = renderEvaluationReport({
      title: 'Tiny <eval>',
      results: { trained: exact, untrained: evil },
      thumbnails: thumbs,
      trainingLog: [
        { step: 1, loss: 3 },
        { step: 2, loss: 2 },
      ],
    })
    expect(html).toContain('<title>Tiny &lt;eval&gt;</title>')
    for (const p of [...exact.perImage, ...evil.perImage]) expect(html).toContain(esc(p.caption))
    expect(html).not.toContain('<img src=x')
    for (const uri of thumbs.values()) expect(html).toContain(uri)
    expect(html).toContain('trained CIDEr-D')
    expect(html).toContain('untrained CIDEr-D')
    expect(html).toContain('RefCLIP-S')
    expect(html).toContain('<svg')
    // Rows come sorted by the first captioner's CIDEr-D, ascending.
    const body = html.slice(html.indexOf('<table id="rows"'))
    const order = [...body.matchAll(/<tr><td>([a-z]+)<\/td>/g)].map((m) => m[1])
    const cider = new Map(exact.perImage.map((p) => [p.id, p.scores.ciderD]))
    const sorted = [...order].sort((a, b) => cider.get(a!)! - cider.get(b!)!)
    expect(order).toEqual(sorted)
    expect(order).toHaveLength(4)
  })

  it('one captioner: plain column names, sorted worst first by CIDEr-D', () => {
    const html = renderEvaluationReport({ title: 'one', results: { only: arbitrary } })
    expect(html).toMatch(/<th data-col="3" aria-sort="ascending">CIDEr-D<\/th>/)
    const body = html.slice(html.indexOf('<table id="rows"'))
    const order = [...body.matchAll(/<tr><td>([a-z]+)<\/td>/g)].map((m) => m[1]!)
    const cider = new Map(arbitrary.perImage.map((p) => [p.id, p.scores.ciderD]))
    for (let i = 1; i < order.length; i++) expect(cider.get(order[i]!)!).toBeGreaterThanOrEqual(cider.get(order[i - 1]!)!)
    expect(() => renderEvaluationReport({ title: 'x', results: {} })).toThrow(TypeError)
  })
})
