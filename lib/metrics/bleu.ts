/**
 * BLEU-1..n exactly as pycocoevalcap's BleuScorer computes it (option 'closest', as its Bleu class
 * calls it): clipped n-gram matches and guesses summed over the corpus, one brevity penalty on the
 * summed lengths, effective reference length per sentence = the reference length closest to the
 * candidate's (ties: the shorter), and the constants small = 1e-9 (denominators) and tiny = 1e-15
 * (numerators) that keep an empty caption from dividing by zero.
 */
import { checkPairs, ngramCounts, ngramCountsByOrder } from './ngrams.js'
import { splitTokens } from './tokenize.js'

const SMALL = 1e-9
const TINY = 1e-15

export interface BleuResult {
  /** Corpus BLEU-1..n. */
  bleu: number[]
  /** Per-image BLEU, indexed [n-1][image] as pycocoevalcap returns it (each with its own brevity penalty). */
  perImage: number[][]
  /** Summed candidate and effective reference lengths (the brevity penalty's inputs). */
  testLength: number
  referenceLength: number
}

/**
 * BLEU over tokenized captions (tokens separated by whitespace; see tokenizeCaption).
 * @param candidates one caption per image
 * @param references one or more references per image, same order as candidates
 */
export function bleu(
  candidates: readonly string[],
  references: readonly (readonly string[])[],
  options: { n?: number } = {},
): BleuResult {
  const n = options.n ?? 4
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`bleu: n must be a positive integer, got ${n}`)
  checkPairs('bleu', candidates, references)
  const guess = new Array<number>(n).fill(0)
  const correct = new Array<number>(n).fill(0)
  const perImage: number[][] = Array.from({ length: n }, () => [])
  let testLength = 0
  let referenceLength = 0

  for (let img = 0; img < candidates.length; img++) {
    const words = splitTokens(candidates[img]!)
    const testLen = words.length
    // Max count of each n-gram over the references (clipping), and the reference lengths.
    const maxRef = new Map<string, number>()
    let refLen = -1
    for (const ref of references[img]!) {
      const rw = splitTokens(ref)
      const d = Math.abs(rw.length - testLen)
      if (refLen < 0 || d < Math.abs(refLen - testLen) || (d === Math.abs(refLen - testLen) && rw.length < refLen)) {
        refLen = rw.length
      }
      for (const [g, c] of ngramCounts(rw, n)) if (c > (maxRef.get(g) ?? 0)) maxRef.set(g, c)
    }
    const sentCorrect = new Array<number>(n).fill(0)
    ngramCountsByOrder(words, n).forEach((m, k) => {
      for (const [g, c] of m) sentCorrect[k] += Math.min(c, maxRef.get(g) ?? 0)
    })
    testLength += testLen
    referenceLength += refLen
    let prod = 1
    for (let k = 0; k < n; k++) {
      const g = Math.max(0, testLen - k)
      guess[k] += g
      correct[k] += sentCorrect[k]!
      prod *= (sentCorrect[k]! + TINY) / (g + SMALL)
      perImage[k]!.push(prod ** (1 / (k + 1)))
    }
    const ratio = (testLen + TINY) / (refLen + SMALL)
    if (ratio < 1) for (let k = 0; k < n; k++) perImage[k]![img]! *= Math.exp(1 - 1 / ratio)
  }

  const scores: number[] = []
  let prod = 1
  for (let k = 0; k < n; k++) {
    prod *= (correct[k]! + TINY) / (guess[k]! + SMALL)
    scores.push(prod ** (1 / (k + 1)))
  }
  const ratio = (testLength + TINY) / (referenceLength + SMALL)
  if (ratio < 1) for (let k = 0; k < n; k++) scores[k]! *= Math.exp(1 - 1 / ratio)
  return { bleu: scores, perImage, testLength, referenceLength }
}
