/**
 * CLIPScore and RefCLIPScore (Hessel et al., EMNLP 2021) and self-retrieval recall@k, as plain math
 * on CLIP features (one Float32Array per row; they need not be normalised).
 *
 * Semantics, checked against the official jmhessel/clipscore code:
 * - CLIP-S = w * max(cos(image, caption), 0), w = 2.5;
 * - the reference part is max over references of cos(caption, ref), WITHOUT w;
 * - RefCLIP-S = 2 * clipS * refS / (clipS + refS) (harmonic mean of the two).
 * The paper clips the reference part at 0 (max(max_r cos, 0)); the official code does not, which
 * only matters when every reference cosine is negative. We follow the paper; 0 / 0 gives 0.
 * To reproduce published numbers, caption features must come from "A photo depicts " + caption,
 * as the official code prefixes it.
 */
import { SemicapError } from '../errors.js'

function checkRow(fn: string, v: unknown, what: string): asserts v is Float32Array {
  if (!(v instanceof Float32Array)) throw new TypeError(`${fn}: ${what} must be a Float32Array`)
}

/** Cosine similarity; 0 when either vector is all zeros. */
export function cosine(a: Float32Array, b: Float32Array): number {
  checkRow('cosine', a, 'a')
  checkRow('cosine', b, 'b')
  if (a.length !== b.length) throw new SemicapError('E_SHAPE', `cosine: lengths differ (${a.length} vs ${b.length})`)
  let dot = 0
  let na = 0
  let nb = 0
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!
    na += a[i]! * a[i]!
    nb += b[i]! * b[i]!
  }
  return na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb)
}

/** CLIP-S of one caption for one image. */
export function clipScore(image: Float32Array, caption: Float32Array, w = 2.5): number {
  return w * Math.max(cosine(image, caption), 0)
}

export interface RefClipScore {
  clipS: number
  /** max over references of max(cos(caption, ref), 0), unscaled. */
  refS: number
  refClipS: number
}

/** CLIP-S, the reference part and RefCLIP-S of one caption. */
export function refClipScore(
  image: Float32Array,
  caption: Float32Array,
  references: readonly Float32Array[],
  w = 2.5,
): RefClipScore {
  if (!Array.isArray(references) || references.length === 0) {
    throw new SemicapError('E_VALUE', 'refClipScore: at least one reference feature is needed')
  }
  const clipS = clipScore(image, caption, w)
  let refS = 0
  for (const r of references) refS = Math.max(refS, cosine(caption, r))
  const refClipS = clipS + refS === 0 ? 0 : (2 * clipS * refS) / (clipS + refS)
  return { clipS, refS, refClipS }
}

/** Mean and per-image CLIP-S (and RefCLIP-S when references are given), rows paired by index. */
export function clipScores(
  images: readonly Float32Array[],
  captions: readonly Float32Array[],
  options: { references?: readonly (readonly Float32Array[])[]; w?: number } = {},
): { clipS: number; refClipS?: number; perImage: (RefClipScore | { clipS: number })[] } {
  if (images.length !== captions.length) {
    throw new SemicapError('E_SHAPE', `clipScores: ${images.length} images but ${captions.length} captions`)
  }
  const { references, w = 2.5 } = options
  const mean = (xs: number[]): number => (xs.length ? xs.reduce((s, v) => s + v, 0) / xs.length : NaN)
  if (references === undefined) {
    const per = images.map((img, i) => ({ clipS: clipScore(img, captions[i]!, w) }))
    return { clipS: mean(per.map((p) => p.clipS)), perImage: per }
  }
  if (references.length !== images.length) {
    throw new SemicapError('E_SHAPE', `clipScores: ${images.length} images but ${references.length} reference lists`)
  }
  const per = images.map((img, i) => refClipScore(img, captions[i]!, references[i]!, w))
  return { clipS: mean(per.map((p) => p.clipS)), refClipS: mean(per.map((p) => p.refClipS)), perImage: per }
}

/**
 * Self-retrieval recall@k: the share of captions whose own image (same index) is among the k images
 * most cosine-similar to the caption. Ties count against the caption (rank = 1 + number of other
 * images at least as similar), so degenerate features (all equal) cannot score well.
 * @returns one recall per k, in the order given
 */
export function retrievalRecallAtK(
  captions: readonly Float32Array[],
  images: readonly Float32Array[],
  ks: readonly number[] = [1, 5, 10],
): number[] {
  if (captions.length !== images.length) {
    throw new SemicapError('E_SHAPE', `retrievalRecallAtK: ${captions.length} captions but ${images.length} images`)
  }
  for (const k of ks) if (!Number.isInteger(k) || k < 1) throw new RangeError(`retrievalRecallAtK: bad k ${k}`)
  const unit = (v: Float32Array): Float64Array => {
    checkRow('retrievalRecallAtK', v, 'each row')
    let s = 0
    for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!
    const inv = s === 0 ? 0 : 1 / Math.sqrt(s)
    return Float64Array.from(v, (x) => x * inv)
  }
  const C = captions.map(unit)
  const I = images.map(unit)
  const dim = C[0]?.length ?? 0
  for (const v of [...C, ...I]) {
    if (v.length !== dim) throw new SemicapError('E_SHAPE', 'retrievalRecallAtK: rows differ in length')
  }
  const hits = new Array<number>(ks.length).fill(0)
  const sims = new Float64Array(images.length)
  for (let c = 0; c < C.length; c++) {
    for (let j = 0; j < I.length; j++) {
      let d = 0
      const a = C[c]!
      const b = I[j]!
      for (let t = 0; t < dim; t++) d += a[t]! * b[t]!
      sims[j] = d
    }
    let rank = 1
    for (let j = 0; j < I.length; j++) if (j !== c && sims[j]! >= sims[c]!) rank++
    ks.forEach((k, i) => {
      if (rank <= k) hits[i]!++
    })
  }
  return hits.map((h) => (captions.length ? h / captions.length : NaN))
}
