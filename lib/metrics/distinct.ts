/**
 * Diversity statistics of generated captions. Captions are normalised with tokenizeCaption (the
 * pycocoevalcap normalisation) unless `tokenized: true` says they already are.
 *
 * Repetition: a caption counts as repetitive when some word n-gram (n = 2 by default) occurs twice
 * or more in it, or when a word directly repeats itself ("a dog dog"). Bigrams catch the usual
 * degenerate loops ("a man and a man and a man") while ordinary captions ("a man and a woman",
 * repeated "a") are not flagged; the consecutive-word check catches stutters a bigram count misses.
 */
import { splitTokens, tokenizeCaption } from './tokenize.js'

export interface DistinctOptions {
  /** Captions are already tokenized (tokens separated by whitespace). Default false. */
  tokenized?: boolean
}

function toTokens(captions: readonly string[], fn: string, opts: DistinctOptions): string[][] {
  if (!Array.isArray(captions)) throw new TypeError(`${fn}: captions must be an array of strings`)
  return captions.map((c, i) => {
    if (typeof c !== 'string') throw new TypeError(`${fn}: caption ${i} is not a string`)
    return splitTokens(opts.tokenized ? c : tokenizeCaption(c))
  })
}

/** Number of distinct tokens over all captions. */
export function vocabularySize(captions: readonly string[], opts: DistinctOptions = {}): number {
  const vocab = new Set<string>()
  for (const toks of toTokens(captions, 'vocabularySize', opts)) for (const t of toks) vocab.add(t)
  return vocab.size
}

/** Share of captions whose normalised form is not among the (normalised) training captions. */
export function novelCaptionShare(
  captions: readonly string[],
  trainingCaptions: Iterable<string>,
  opts: DistinctOptions = {},
): number {
  const train = new Set<string>()
  for (const t of trainingCaptions) train.add(splitTokens(opts.tokenized ? t : tokenizeCaption(t)).join(' '))
  const toks = toTokens(captions, 'novelCaptionShare', opts)
  if (toks.length === 0) return NaN
  return toks.filter((t) => !train.has(t.join(' '))).length / toks.length
}

/** Whether a token list repeats an n-gram or a word back to back (see the file comment). */
export function hasRepetition(tokens: readonly string[], n = 2, consecutive = true): boolean {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`hasRepetition: n must be a positive integer, got ${n}`)
  if (consecutive) for (let i = 1; i < tokens.length; i++) if (tokens[i] === tokens[i - 1]) return true
  const seen = new Set<string>()
  for (let i = 0; i + n <= tokens.length; i++) {
    const g = tokens.slice(i, i + n).join(' ')
    if (seen.has(g)) return true
    seen.add(g)
  }
  return false
}

/** Share of captions with a repetition (see hasRepetition). */
export function repetitionRate(
  captions: readonly string[],
  opts: DistinctOptions & { n?: number; consecutive?: boolean } = {},
): number {
  const toks = toTokens(captions, 'repetitionRate', opts)
  if (toks.length === 0) return NaN
  return toks.filter((t) => hasRepetition(t, opts.n ?? 2, opts.consecutive ?? true)).length / toks.length
}

/** Mean caption length in tokens. */
export function meanLength(captions: readonly string[], opts: DistinctOptions = {}): number {
  const toks = toTokens(captions, 'meanLength', opts)
  return toks.length ? toks.reduce((s, t) => s + t.length, 0) / toks.length : NaN
}

export interface DiversityStats {
  vocabularySize: number
  /** Only when training captions were given. */
  novelShare?: number
  repetitionRate: number
  meanLength: number
}

/** All of the above at once (captions are tokenized once). */
export function diversityStats(
  captions: readonly string[],
  opts: DistinctOptions & { trainingCaptions?: Iterable<string>; n?: number; consecutive?: boolean } = {},
): DiversityStats {
  const tokenized = toTokens(captions, 'diversityStats', opts).map((t) => t.join(' '))
  const o = { ...opts, tokenized: true }
  const stats: DiversityStats = {
    vocabularySize: vocabularySize(tokenized, o),
    repetitionRate: repetitionRate(tokenized, o),
    meanLength: meanLength(tokenized, o),
  }
  if (opts.trainingCaptions !== undefined) {
    const train = [...opts.trainingCaptions].map((t) => (opts.tokenized ? t : tokenizeCaption(t)))
    stats.novelShare = novelCaptionShare(tokenized, train, o)
  }
  return stats
}
