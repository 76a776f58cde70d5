/**
 * ROUGE-L as pycocoevalcap's Rouge computes it: per reference, LCS precision (over the candidate's
 * length) and recall (over the reference's length); the best precision and the best recall over the
 * references (possibly from different references) combine into
 * F = (1 + beta^2) P R / (R + beta^2 P) with beta = 1.2; the corpus score is the mean over images.
 * Tokens come from splitting on single spaces, as its `split(" ")` does.
 */
import { checkPairs } from './ngrams.js'

/** Length of the longest common subsequence of two token lists (two-row dynamic programme). */
export function lcsLength(a: readonly string[], b: readonly string[]): number {
  if (a.length < b.length) [a, b] = [b, a]
  let prev = new Int32Array(b.length + 1)
  let cur = new Int32Array(b.length + 1)
  for (let i = 1; i <= a.length; i++) {
    const ai = a[i - 1]
    for (let j = 1; j <= b.length; j++) {
      cur[j] = ai === b[j - 1] ? prev[j - 1]! + 1 : Math.max(prev[j]!, cur[j - 1]!)
    }
    ;[prev, cur] = [cur, prev]
  }
  return prev[b.length]!
}

/** ROUGE-L F of one tokenized candidate against its tokenized references. */
export function rougeLSentence(candidate: string, references: readonly string[], beta = 1.2): number {
  const c = candidate.split(' ')
  let precMax = 0
  let recMax = 0
  for (const ref of references) {
    const r = ref.split(' ')
    const lcs = lcsLength(r, c)
    precMax = Math.max(precMax, lcs / c.length)
    recMax = Math.max(recMax, lcs / r.length)
  }
  if (precMax === 0 || recMax === 0) return 0
  return ((1 + beta ** 2) * precMax * recMax) / (recMax + beta ** 2 * precMax)
}

export interface RougeResult {
  /** Mean ROUGE-L F over images. */
  rougeL: number
  perImage: number[]
}

/** Corpus ROUGE-L over tokenized captions (see tokenizeCaption). */
export function rougeL(
  candidates: readonly string[],
  references: readonly (readonly string[])[],
  options: { beta?: number } = {},
): RougeResult {
  const beta = options.beta ?? 1.2
  if (!(beta > 0)) throw new RangeError(`rougeL: beta must be positive, got ${beta}`)
  checkPairs('rougeL', candidates, references)
  const perImage = candidates.map((c, i) => rougeLSentence(c, references[i]!, beta))
  // np.mean of an empty array is nan; an empty corpus has no score either.
  const rouge = perImage.length ? perImage.reduce((s, v) => s + v, 0) / perImage.length : NaN
  return { rougeL: rouge, perImage }
}
