// Caption evaluation as papers report it: captions for a set of images with references, then BLEU-1..4, ROUGE-L and
// CIDEr-D (pycocoevalcap semantics, PTB-tokenised), CLIP-S and RefCLIP-S with the captioner's own CLIP (Hessel et
// al.), CLIP self-retrieval recall@1/@5, and diversity statistics; and an HTML report comparing captioners.
import sharp from 'sharp'
import type { Captioner } from './captioner.js'
import { cachedImageFeatures, type Example } from './data/index.js'
import type { DecodeOptions } from './decoding.js'
import { AbortError, SemicapError } from './errors.js'
import {
  diversityStats,
  refClipScore,
  renderReport,
  retrievalRecallAtK,
  scoreCaptions,
  type CiderDocumentFrequency,
  type ReportRow,
  type TrainingLogEntry,
} from './metrics/index.js'
import { Tensor } from './tensor.js'

/** The text put before captions (and references) for CLIP-S / RefCLIP-S, as the official clipscore code does. */
export const CLIP_S_PREFIX = 'A photo depicts '

export interface EvaluateOptions {
  /** Images with their reference captions (every example needs at least one). */
  examples: Example[]
  /** Passed to caption() / captionFeatures(); default greedy. */
  decoding?: DecodeOptions
  /** Images per caption() call (default 32). */
  batchSize?: number
  /** Training captions: when given, the share of generated captions not among them is reported (`novelty`). */
  trainingCaptions?: string[]
  /** External CIDEr-D document frequencies (e.g. over the training set); default: the evaluated references. */
  ciderDocumentFrequency?: CiderDocumentFrequency
  /** A feature cache folder: image features come from cachedImageFeatures and captions from captionFeatures(). */
  featureCache?: string
  /** CLIP-S weight w (default 2.5). */
  clipWeight?: number
  signal?: AbortSignal
  /** Images captioned so far, out of all. */
  onProgress?: (done: number, total: number) => void
}

export interface EvaluationMetrics {
  bleu1: number
  bleu2: number
  bleu3: number
  bleu4: number
  rougeL: number
  ciderD: number
  /** Mean CLIP-S: 2.5 * max(cos(image, "A photo depicts " + caption), 0). */
  clipS: number
  /** Mean RefCLIP-S: harmonic mean of CLIP-S and max over references of cos(caption, reference). */
  refClipS: number
  /** Share of captions whose own image is the most similar one (CLIP) among the evaluated images. */
  recallAt1: number
  /** ... among the 5 most similar. */
  recallAt5: number
  /** Distinct words over all captions. */
  vocabulary: number
  /** Share of captions not among the training captions (only when trainingCaptions were given). */
  novelty?: number
  /** Share of captions that repeat a bigram or a word back to back. */
  repetitionRate: number
  /** Mean caption length in words (PTB tokens). */
  meanLength: number
}

export interface PerImageScores {
  bleu4?: number
  rougeL?: number
  ciderD: number
  clipS: number
  refClipS: number
}

export interface PerImageResult {
  id: string
  image: string
  caption: string
  references: string[]
  scores: PerImageScores
}

export interface EvaluationResult {
  metrics: EvaluationMetrics
  perImage: PerImageResult[]
}

/** Display names of the metrics, in table order. */
export const METRIC_LABELS: Readonly<Record<keyof EvaluationMetrics, string>> = {
  bleu1: 'BLEU-1',
  bleu2: 'BLEU-2',
  bleu3: 'BLEU-3',
  bleu4: 'BLEU-4',
  rougeL: 'ROUGE-L',
  ciderD: 'CIDEr-D',
  clipS: 'CLIP-S',
  refClipS: 'RefCLIP-S',
  recallAt1: 'R@1',
  recallAt5: 'R@5',
  vocabulary: 'vocabulary',
  novelty: 'novel',
  repetitionRate: 'repetition',
  meanLength: 'mean length',
}

function rowsOf(t: Tensor, what: string): Float32Array[] {
  if (t.dtype !== 'float32' || t.shape.length !== 2) throw new SemicapError('E_SHAPE', `evaluate: ${what} must be float32 [N, D], got ${t.dtype} [${t.shape.join(', ')}]`)
  const [N, D] = t.shape as [number, number]
  const data = t.data as Float32Array
  return Array.from({ length: N }, (_, i) => data.subarray(i * D, (i + 1) * D))
}

/** Projected CLIP text features of `texts`, one row each, encoded in chunks. */
async function textRows(captioner: Captioner, texts: string[], signal: AbortSignal | undefined): Promise<Float32Array[]> {
  const out: Float32Array[] = []
  for (let i = 0; i < texts.length; i += 256) {
    if (signal?.aborted) throw new AbortError('evaluate was aborted', { cause: signal.reason })
    out.push(...rowsOf(await captioner.clip.encodeTexts(texts.slice(i, i + 256)), 'text features'))
  }
  return out
}

/** Captions `options.examples` with `captioner` and scores them (see EvaluationMetrics). */
export async function evaluate(captioner: Captioner, options: EvaluateOptions): Promise<EvaluationResult> {
  if (captioner === null || typeof captioner !== 'object' || typeof captioner.caption !== 'function') throw new TypeError('evaluate: captioner must be a Captioner')
  if (options === null || typeof options !== 'object') throw new TypeError('evaluate: options must be an object')
  const { examples, decoding = {}, batchSize = 32, trainingCaptions, ciderDocumentFrequency, featureCache, clipWeight = 2.5, signal, onProgress } = options
  if (!Array.isArray(examples) || examples.length === 0) throw new TypeError('evaluate: examples must be a non-empty array')
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`evaluate: batchSize must be an integer >= 1, got ${String(batchSize)}`)
  if (trainingCaptions !== undefined && (!Array.isArray(trainingCaptions) || trainingCaptions.some((c) => typeof c !== 'string'))) {
    throw new TypeError('evaluate: trainingCaptions must be an array of strings')
  }
  if (featureCache !== undefined && (typeof featureCache !== 'string' || featureCache === '')) throw new TypeError('evaluate: featureCache must be a folder path')
  if (!(typeof clipWeight === 'number' && clipWeight > 0 && Number.isFinite(clipWeight))) throw new RangeError('evaluate: clipWeight must be a positive number')
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new TypeError('evaluate: signal must be an AbortSignal')
  if (onProgress !== undefined && typeof onProgress !== 'function') throw new TypeError('evaluate: onProgress must be a function')
  const seen = new Set<string>()
  examples.forEach((e, i) => {
    if (e === null || typeof e !== 'object' || typeof e.id !== 'string' || typeof e.image !== 'string' || !Array.isArray(e.captions)) {
      throw new TypeError(`evaluate: examples[${i}] is not an Example {id, image, captions}`)
    }
    if (e.captions.length === 0 || e.captions.some((c) => typeof c !== 'string')) {
      throw new SemicapError('E_DATA', `evaluate: example '${e.id}' has no reference captions (evaluation needs references)`)
    }
    if (seen.has(e.id)) throw new SemicapError('E_DATA', `evaluate: duplicate example id '${e.id}'`)
    seen.add(e.id)
  })
  const aborted = () => new AbortError('evaluate was aborted', { cause: signal?.reason })
  if (signal?.aborted) throw aborted()
  const clip = captioner.clip
  const total = examples.length

  // 1. Captions and image features, batch by batch.
  const captions: string[] = []
  const imageRows: Float32Array[] = []
  onProgress?.(0, total)
  if (featureCache !== undefined) {
    const { features } = await cachedImageFeatures(clip, examples, { cacheDir: featureCache, batchSize, signal })
    const rows = rowsOf(features, 'cached image features')
    const D = features.shape[1]!
    const data = features.data as Float32Array
    for (let i = 0; i < total; i += batchSize) {
      if (signal?.aborted) throw aborted()
      const n = Math.min(batchSize, total - i)
      const batch = new Tensor('float32', [n, D], data.slice(i * D, (i + n) * D))
      for (const c of await captioner.captionFeatures(batch, decoding)) captions.push(c.text)
      onProgress?.(i + n, total)
    }
    imageRows.push(...rows)
  } else {
    for (let i = 0; i < total; i += batchSize) {
      if (signal?.aborted) throw aborted()
      const batch = examples.slice(i, i + batchSize)
      const pixels = await clip.preprocess(batch.map((e) => e.image))
      // One pass of the vision tower per batch: the features serve both the captions and CLIP-S.
      const features = await clip.imageFeatures(pixels)
      imageRows.push(...rowsOf(features, 'image features'))
      for (const c of await captioner.captionFeatures(features, decoding)) captions.push(c.text)
      onProgress?.(i + batch.length, total)
    }
  }
  if (captions.length !== total || imageRows.length !== total) throw new SemicapError('E_SHAPE', `evaluate: got ${captions.length} captions and ${imageRows.length} image features for ${total} images`)

  // 2. CLIP text features: captions and references both with the prefix, as the official clipscore code encodes
  //    them (its CLIPCapDataset prefixes every text it encodes), so an exact match has a reference similarity of 1.
  const captionRows = await textRows(captioner, captions.map((c) => CLIP_S_PREFIX + c), signal)
  const refTexts: string[] = []
  const refOwner: number[] = []
  examples.forEach((e, i) => e.captions.forEach((r) => (refTexts.push(CLIP_S_PREFIX + r), refOwner.push(i))))
  const refRowsFlat = await textRows(captioner, refTexts, signal)
  const refRows: Float32Array[][] = examples.map(() => [])
  refRowsFlat.forEach((r, j) => refRows[refOwner[j]!]!.push(r))

  const clipPer = examples.map((_, i) => refClipScore(imageRows[i]!, captionRows[i]!, refRows[i]!, clipWeight))
  const [recallAt1, recallAt5] = retrievalRecallAtK(captionRows, imageRows, [1, 5]) as [number, number]

  // 3. n-gram metrics on PTB-tokenised text (keyed by example id).
  const cands = new Map<string, string>()
  const refs = new Map<string, string[]>()
  examples.forEach((e, i) => (cands.set(e.id, captions[i]!), refs.set(e.id, e.captions)))
  const scores = scoreCaptions({ candidates: cands, references: refs, ciderDocumentFrequency })
  const div = diversityStats(captions, trainingCaptions !== undefined ? { trainingCaptions } : {})

  const mean = (xs: number[]): number => xs.reduce((s, v) => s + v, 0) / xs.length
  const metrics: EvaluationMetrics = {
    bleu1: scores.bleu[0],
    bleu2: scores.bleu[1],
    bleu3: scores.bleu[2],
    bleu4: scores.bleu[3],
    rougeL: scores.rougeL,
    ciderD: scores.ciderD,
    clipS: mean(clipPer.map((p) => p.clipS)),
    refClipS: mean(clipPer.map((p) => p.refClipS)),
    recallAt1,
    recallAt5,
    vocabulary: div.vocabularySize,
    ...(div.novelShare !== undefined ? { novelty: div.novelShare } : {}),
    repetitionRate: div.repetitionRate,
    meanLength: div.meanLength,
  }
  const perImage: PerImageResult[] = examples.map((e, i) => {
    const s = scores.perImage[e.id]!
    return {
      id: e.id,
      image: e.image,
      caption: captions[i]!,
      references: [...e.captions],
      scores: { bleu4: s.bleu[3], rougeL: s.rougeL, ciderD: s.ciderD, clipS: clipPer[i]!.clipS, refClipS: clipPer[i]!.refClipS },
    }
  })
  return { metrics, perImage }
}

/**
 * Small PNG thumbnails (longest side `size`, default 96 px) of the examples' images as data: URIs, keyed by example
 * id. Unreadable images are skipped (the report shows no picture for them).
 */
export async function makeThumbnails(examples: readonly Pick<Example, 'id' | 'image'>[], options: { size?: number; concurrency?: number } = {}): Promise<Map<string, string>> {
  const size = options.size ?? 96
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`makeThumbnails: size must be a positive integer, got ${String(size)}`)
  const uris = new Array<string | undefined>(examples.length)
  let next = 0
  const worker = async () => {
    while (next < examples.length) {
      const i = next++
      try {
        const png = await sharp(examples[i]!.image).rotate().resize(size, size, { fit: 'inside' }).png().toBuffer()
        uris[i] = `data:image/png;base64,${png.toString('base64')}`
      } catch {
        // An image sharp cannot read gets no thumbnail.
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(options.concurrency ?? 4, examples.length)) }, worker))
  // In the examples' order; the first of duplicate ids wins.
  const out = new Map<string, string>()
  examples.forEach((e, i) => {
    if (uris[i] !== undefined && !out.has(e.id)) out.set(e.id, uris[i]!)
  })
  return out
}

export interface EvaluationReportInput {
  title: string
  /** Captioner name -> its evaluation (several captioners appear side by side). */
  results: Readonly<Record<string, EvaluationResult>>
  /** Example id -> data:image URI (see makeThumbnails). */
  thumbnails?: ReadonlyMap<string, string>
  /** Training progress (one entry per step) plotted over steps. */
  trainingLog?: readonly TrainingLogEntry[]
}

const PER_IMAGE_COLUMNS: [keyof PerImageScores, string][] = [
  ['ciderD', 'CIDEr-D'],
  ['bleu4', 'BLEU-4'],
  ['rougeL', 'ROUGE-L'],
  ['clipS', 'CLIP-S'],
  ['refClipS', 'RefCLIP-S'],
]

/**
 * One self-contained HTML page: corpus metrics per captioner, training curves (when a log is given) and one row per
 * image with every captioner's caption, the references and per-image scores; sortable, worst first by the first
 * captioner's CIDEr-D.
 */
export function renderEvaluationReport(input: EvaluationReportInput): string {
  if (input === null || typeof input !== 'object') throw new TypeError('renderEvaluationReport: input must be an object')
  const names = Object.keys(input.results ?? {})
  if (names.length === 0) throw new TypeError('renderEvaluationReport: results must name at least one captioner')
  const summary: Record<string, Record<string, number>> = {}
  const rows = new Map<string, ReportRow & { captions: Record<string, string>; scores: Record<string, number> }>()
  for (const name of names) {
    const r = input.results[name]!
    const s: Record<string, number> = {}
    for (const [k, label] of Object.entries(METRIC_LABELS) as [keyof EvaluationMetrics, string][]) {
      const v = r.metrics[k]
      if (typeof v === 'number') s[label] = v
    }
    summary[name] = s
    for (const p of r.perImage) {
      let row = rows.get(p.id)
      if (!row) {
        const thumb = input.thumbnails?.get(p.id)
        row = { id: p.id, captions: {}, references: p.references, scores: {}, ...(thumb ? { thumbnail: thumb } : {}) }
        rows.set(p.id, row)
      }
      row.captions[name] = p.caption
      for (const [k, label] of PER_IMAGE_COLUMNS) {
        const v = p.scores[k]
        if (typeof v === 'number') row.scores[names.length > 1 ? `${name} ${label}` : label] = v
      }
    }
  }
  // Columns in a stable order: per metric, the captioners side by side.
  const allRows = [...rows.values()]
  const colOrder: string[] = []
  for (const [, label] of PER_IMAGE_COLUMNS) for (const n of names) colOrder.push(names.length > 1 ? `${n} ${label}` : label)
  for (const row of allRows) {
    const ordered: Record<string, number> = {}
    for (const c of colOrder) if (c in row.scores) ordered[c] = row.scores[c]!
    row.scores = ordered
  }
  const sortBy = names.length > 1 ? `${names[0]} CIDEr-D` : 'CIDEr-D'
  return renderReport({
    title: input.title,
    summary,
    rows: allRows,
    trainingLog: input.trainingLog,
    sortBy: allRows.some((r) => sortBy in r.scores) ? sortBy : undefined,
    ascending: true,
  })
}
