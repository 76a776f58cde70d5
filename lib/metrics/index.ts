/**
 * Caption evaluation metrics matching the coco-caption toolkit (pycocoevalcap), CLIP-based scores
 * on precomputed features, diversity statistics and an HTML report.
 */
import { SemicapError } from '../errors.js'
import { bleu } from './bleu.js'
import { CiderD, type CiderDocumentFrequency } from './cider.js'
import { rougeL } from './rouge.js'
import { tokenizeCaption } from './tokenize.js'

export { bleu, type BleuResult } from './bleu.js'
export { rougeL, rougeLSentence, lcsLength, type RougeResult } from './rouge.js'
export {
  CiderD,
  ciderD,
  ciderDocumentFrequency,
  type CiderDocumentFrequency,
  type CiderOptions,
  type CiderResult,
} from './cider.js'
export { ptbTokenize, tokenizeCaption, splitTokens, PTB_PUNCTUATION } from './tokenize.js'
export { cosine, clipScore, refClipScore, clipScores, retrievalRecallAtK, type RefClipScore } from './clipscore.js'
export {
  vocabularySize,
  novelCaptionShare,
  hasRepetition,
  repetitionRate,
  meanLength,
  diversityStats,
  type DiversityStats,
  type DistinctOptions,
} from './distinct.js'
export {
  renderReport,
  type ReportInput,
  type ReportRow,
  type ReportFact,
  type ReportFilter,
  type ReportClaim,
  type TrainingLogEntry,
} from './report.js'

type Keyed<T> = ReadonlyMap<string | number, T> | Readonly<Record<string, T>>

export interface ScoreCaptionsInput {
  /** imageId -> generated caption (raw text). */
  candidates: Keyed<string>
  /** imageId -> reference captions (raw text). References of images without a candidate are ignored,
   *  as COCOEvalCap restricts the ground truth to the result's images. */
  references: Keyed<readonly string[]>
  /** Apply the PTB normalisation (default true); false if the captions are already tokenized. */
  tokenize?: boolean
  /** External CIDEr-D document frequencies (e.g. over the training set); default: the references. */
  ciderDocumentFrequency?: CiderDocumentFrequency
}

export interface PerImageScores {
  bleu: number[]
  rougeL: number
  ciderD: number
}

export interface CaptionScores {
  /** Corpus BLEU-1..4. */
  bleu: [number, number, number, number]
  rougeL: number
  ciderD: number
  perImage: Record<string, PerImageScores>
}

function entries<T>(m: Keyed<T>, what: string): [string, T][] {
  if (m instanceof Map) return [...m.entries()].map(([k, v]) => [String(k), v])
  if (m === null || typeof m !== 'object') throw new TypeError(`scoreCaptions: ${what} must be a Map or an object`)
  return Object.entries(m as Record<string, T>)
}

/** BLEU-1..4, ROUGE-L and CIDEr-D of one caption per image, as COCOEvalCap reports them. */
export function scoreCaptions(input: ScoreCaptionsInput): CaptionScores {
  const norm = input.tokenize === false ? (s: string): string => s : tokenizeCaption
  const refs = new Map(entries(input.references, 'references'))
  const ids: string[] = []
  const cands: string[] = []
  const refLists: string[][] = []
  for (const [id, cand] of entries(input.candidates, 'candidates')) {
    if (typeof cand !== 'string') throw new TypeError(`scoreCaptions: candidate for image ${id} is not a string`)
    const r = refs.get(id)
    if (!Array.isArray(r) || r.length === 0) {
      throw new SemicapError('E_VALUE', `scoreCaptions: image ${id} has a candidate but no references`)
    }
    ids.push(id)
    cands.push(norm(cand))
    refLists.push(r.map((x, j) => {
      if (typeof x !== 'string') throw new TypeError(`scoreCaptions: reference ${j} of image ${id} is not a string`)
      return norm(x)
    }))
  }
  if (ids.length === 0) throw new SemicapError('E_VALUE', 'scoreCaptions: no candidates to score')

  const b = bleu(cands, refLists, { n: 4 })
  const r = rougeL(cands, refLists)
  const docFreq = input.ciderDocumentFrequency
  const c = new CiderD(refLists, docFreq ? { documentFrequency: docFreq } : {}).score(cands)
  // No prototype, so an image id like "__proto__" is just a key.
  const perImage = Object.create(null) as Record<string, PerImageScores>
  ids.forEach((id, i) => {
    perImage[id] = { bleu: b.perImage.map((col) => col[i]!), rougeL: r.perImage[i]!, ciderD: c.perImage[i]! }
  })
  return { bleu: b.bleu as CaptionScores['bleu'], rougeL: r.rougeL, ciderD: c.ciderD, perImage }
}
