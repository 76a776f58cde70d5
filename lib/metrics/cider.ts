/**
 * CIDEr-D as pycocoevalcap's Cider (= the CiderD of the cider repository) computes it:
 * - n-grams n = 1..4 as tf-idf vectors: tf * (refLen - log(max(1, df))), where df counts the images
 *   whose references contain the n-gram and refLen = log(number of images);
 * - per reference and per n: sum over the candidate's n-grams of min(v_cand, v_ref) * v_ref
 *   (the "clipping"), divided by both norms when neither is zero, times the gaussian length
 *   penalty exp(-delta^2 / (2 sigma^2)), sigma = 6;
 * - image score = mean over n, summed over references, divided by their number, times 10.
 * Quirk kept: the "length" in delta is the number of bigrams (the Python adds term frequencies when
 * its 0-based n == 1), i.e. words - 1 for non-empty captions.
 *
 * Reference vectors are built once per CiderD instance, so repeated scoring (SCST rewards) only pays
 * for the candidates. Internally n-grams are interned to integer ids (a trie over token ids) and
 * vectors are sorted id arrays, so a similarity is a merge instead of string-keyed map lookups. Document frequencies default to the evaluated references (pycocoevalcap's
 * behaviour); SCST usually passes frequencies precomputed over the training corpus instead.
 */
import { SemicapError } from '../errors.js'
import { checkPairs, ngramCountsByOrder } from './ngrams.js'
import { splitTokens } from './tokenize.js'

export interface CiderDocumentFrequency {
  /** n-gram (tokens joined by single spaces) -> number of images whose references contain it. */
  readonly df: ReadonlyMap<string, number>
  /** log(number of images the frequencies were counted over). */
  readonly refLen: number
}

export interface CiderOptions {
  /** Largest n-gram order (default 4). */
  n?: number
  /** Width of the gaussian length penalty (default 6). */
  sigma?: number
  /** External document frequencies (e.g. over the training set); default: the given references. */
  documentFrequency?: CiderDocumentFrequency
}

export interface CiderResult {
  /** Mean CIDEr-D over images. */
  ciderD: number
  perImage: number[]
}

/**
 * One sentence's tf-idf vector. All orders share two flat arrays; order k (n = k + 1) occupies
 * [start[k], start[k + 1]) with ascending n-gram ids (few allocations: this is built 25,000 times
 * for a 5,000 x 5 corpus).
 */
interface Vec {
  ids: Int32Array
  w: Float64Array
  start: Int32Array
  norm: Float64Array
  /** Bigram count (the Python's "length"). */
  length: number
}

/** murmur3's 32-bit finaliser over a (parent, token) pair: every input bit reaches the low bits. */
function hashPair(parent: number, token: number): number {
  let h = (Math.imul(parent, 0x9e3779b1) + token) | 0
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b)
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35)
  return h ^ (h >>> 16)
}

/**
 * Interns tokens and n-grams to dense positive ids: an n-gram is a path of token ids from the root 0,
 * and (parent id, token id) -> child id lives in an open-addressing table on typed arrays (a Map with
 * numeric pair keys boxes doubles and spends most of its time in the garbage collector).
 */
class NgramIds {
  readonly #tokens = new Map<string, number>()
  /** Slots of [parent, token, id] side by side (one cache line per probe); id 0 = empty. */
  #table = new Int32Array(3 << 16)
  size = 0

  /** Makes room for about `count` n-grams up front, so that building does not rehash. */
  reserve(count: number): void {
    let cap = this.#table.length / 3
    while (cap < 2 * count && cap < 2 ** 28) cap *= 2
    if (cap > this.#table.length / 3) this.#rehash(cap)
  }

  /** Id of the n-gram `parent` + `word`; 0 when unknown and `add` is false. */
  next(parent: number, word: string, add: boolean): number {
    let t = this.#tokens.get(word)
    if (t === undefined) {
      if (!add) return 0
      this.#tokens.set(word, (t = this.#tokens.size + 1))
    }
    const tab = this.#table
    const mask = tab.length / 3 - 1
    let slot = hashPair(parent, t) & mask
    for (; tab[3 * slot + 2] !== 0; slot = (slot + 1) & mask) {
      if (tab[3 * slot] === parent && tab[3 * slot + 1] === t) return tab[3 * slot + 2]!
    }
    if (!add) return 0
    tab[3 * slot] = parent
    tab[3 * slot + 1] = t
    tab[3 * slot + 2] = ++this.size
    if (this.size * 2 > mask + 1) this.#rehash(2 * (mask + 1))
    return this.size
  }

  #rehash(cap: number): void {
    if (cap > 2 ** 28) throw new SemicapError('E_VALUE', 'CiderD: too many distinct n-grams')
    const old = this.#table
    const tab = (this.#table = new Int32Array(3 * cap))
    const mask = cap - 1
    for (let i = 0; i < old.length; i += 3) {
      if (old[i + 2] === 0) continue
      let slot = hashPair(old[i]!, old[i + 1]!) & mask
      while (tab[3 * slot + 2] !== 0) slot = (slot + 1) & mask
      tab.set(old.subarray(i, i + 3), 3 * slot)
    }
  }
}

/**
 * Document frequencies of all 1..n-grams over a corpus (one reference list per image), as
 * CiderScorer.compute_doc_freq counts them, with refLen = log(number of images).
 */
export function ciderDocumentFrequency(
  references: readonly (readonly string[])[],
  n = 4,
): CiderDocumentFrequency {
  if (!Array.isArray(references)) throw new TypeError('ciderDocumentFrequency: references must be an array')
  const df = new Map<string, number>()
  for (const refs of references as readonly (readonly string[])[]) {
    const seen = new Set<string>()
    for (const r of refs) for (const m of ngramCountsByOrder(splitTokens(r), n)) for (const g of m.keys()) seen.add(g)
    for (const g of seen) df.set(g, (df.get(g) ?? 0) + 1)
  }
  return { df, refLen: Math.log(references.length) }
}

/** CIDEr-D scorer with precomputed reference vectors. */
export class CiderD {
  readonly n: number
  readonly sigma: number
  readonly numImages: number
  readonly #ids = new NgramIds()
  /** Document frequency by n-gram id (undefined = 0). */
  readonly #df: number[] = []
  readonly #refLen: number
  readonly #refs: Vec[][]
  #scratch = new Int32Array(256)

  constructor(references: readonly (readonly string[])[], options: CiderOptions = {}) {
    this.n = options.n ?? 4
    this.sigma = options.sigma ?? 6
    if (!Number.isInteger(this.n) || this.n < 1) throw new RangeError(`CiderD: n must be a positive integer`)
    if (!(this.sigma > 0)) throw new RangeError(`CiderD: sigma must be positive, got ${this.sigma}`)
    checkPairs('CiderD', references.map(() => ''), references)
    const ext = options.documentFrequency
    if (ext !== undefined && (!(ext.df instanceof Map) || !Number.isFinite(ext.refLen))) {
      throw new SemicapError('E_VALUE', 'CiderD: documentFrequency needs a Map df and a finite refLen')
    }
    this.numImages = references.length
    // Term frequencies of every reference, counted once; weights are filled in below.
    const tokens = references.map((rs) => rs.map(splitTokens))
    let positions = 0
    for (const rs of tokens) for (const t of rs) positions += this.n * t.length
    // Captions repeat n-grams a lot, so half the positions is plenty; the table grows if not.
    this.#ids.reserve(positions / 2 + (ext?.df.size ?? 0))
    const refs = tokens.map((rs) => rs.map((t) => this.#counts(t, true)))
    if (ext) {
      for (const [g, v] of ext.df) {
        let id = 0
        for (const w of g.split(' ')) id = this.#ids.next(id, w, true)
        this.#df[id] = v
      }
      this.#refLen = ext.refLen
    } else {
      // An n-gram counts once per image however many of its references contain it.
      const lastImage = new Int32Array(this.#ids.size + 1)
      refs.forEach((rs, img) => {
        for (const { ids } of rs) {
          for (const id of ids) {
            if (lastImage[id] === img + 1) continue
            lastImage[id] = img + 1
            this.#df[id] = (this.#df[id] ?? 0) + 1
          }
        }
      })
      this.#refLen = Math.log(references.length)
    }
    for (const rs of refs) for (const v of rs) this.#weigh(v)
    this.#refs = refs
  }

  /** CIDEr-D of one tokenized candidate for image `index` (its position in the references). */
  scoreImage(index: number, candidate: string): number {
    const refs = this.#refs[index]
    if (refs === undefined) throw new RangeError(`CiderD: image index ${index} out of range 0..${this.numImages - 1}`)
    if (typeof candidate !== 'string') throw new TypeError('CiderD: candidate must be a string')
    const hyp = this.#weigh(this.#counts(splitTokens(candidate), false))
    const penaltyDen = 2 * this.sigma ** 2
    let total = 0
    for (const ref of refs) {
      const gauss = Math.E ** (-((hyp.length - ref.length) ** 2) / penaltyDen)
      for (let k = 0; k < this.n; k++) {
        // Both id lists ascend: walk them together; ids only the candidate has contribute 0.
        const { ids: hi, w: hw } = hyp
        const { ids: ri, w: rw } = ref
        let val = 0
        for (let a = hyp.start[k]!, b = ref.start[k]!, ae = hyp.start[k + 1]!, be = ref.start[k + 1]!; a < ae && b < be; ) {
          if (hi[a]! < ri[b]!) a++
          else if (hi[a]! > ri[b]!) b++
          else {
            val += Math.min(hw[a]!, rw[b]!) * rw[b]!
            a++
            b++
          }
        }
        if (hyp.norm[k] !== 0 && ref.norm[k] !== 0) val /= hyp.norm[k]! * ref.norm[k]!
        total += val * gauss
      }
    }
    return ((total / this.n) / refs.length) * 10
  }

  /** Scores one candidate per image, in the references' order. */
  score(candidates: readonly string[]): CiderResult {
    if (!Array.isArray(candidates) || candidates.length !== this.numImages) {
      throw new SemicapError('E_VALUE', `CiderD: expected ${this.numImages} candidates, got ${candidates?.length}`)
    }
    const perImage = candidates.map((c, i) => this.scoreImage(i, c))
    const mean = perImage.length ? perImage.reduce((s, v) => s + v, 0) / perImage.length : NaN
    return { ciderD: mean, perImage }
  }

  /**
   * N-gram ids and term frequencies (in `w`, weighed later) of one sentence. Candidates do not
   * grow the interner (`add` false): their unseen n-grams get negative ids local to the sentence,
   * which match nothing and have document frequency 0.
   */
  #counts(words: readonly string[], add: boolean): Vec {
    const n = this.n
    const len = words.length
    // Raw ids of order k go to scratch[k * len ...]; then each order is sorted and run-length coded.
    if (this.#scratch.length < n * len) this.#scratch = new Int32Array(2 * n * len)
    const raw = this.#scratch
    let unseen: Map<string, number> | undefined
    for (let i = 0; i < len; i++) {
      let id = 0
      for (let k = 0; k < n && i + k < len; k++) {
        id = id > 0 || k === 0 ? this.#ids.next(id, words[i + k]!, add) : 0
        if (id <= 0) {
          unseen ??= new Map()
          const g = words.slice(i, i + k + 1).join(' ')
          let u = unseen.get(g)
          if (u === undefined) unseen.set(g, (u = -unseen.size - 1))
          raw[k * len + i] = u
          id = -1 // every extension is unseen too
        } else {
          raw[k * len + i] = id
        }
      }
    }
    let total = 0
    for (let k = 0; k < n; k++) total += Math.max(0, len - k)
    const ids = new Int32Array(total)
    const w = new Float64Array(total)
    const start = new Int32Array(n + 1)
    let u = 0
    for (let k = 0; k < n; k++) {
      start[k] = u
      const seg = raw.subarray(k * len, k * len + Math.max(0, len - k)).sort()
      for (let j = 0; j < seg.length; j++) {
        if (j > 0 && seg[j] === seg[j - 1]) w[u - 1]!++
        else {
          ids[u] = seg[j]!
          w[u++] = 1
        }
      }
    }
    start[n] = u
    const length = n >= 2 ? Math.max(0, len - 1) : 0 // the Python's bigram "length"
    return { ids: ids.subarray(0, u), w: w.subarray(0, u), start, norm: new Float64Array(n), length }
  }

  /** counts2vec: term frequencies -> tf * (refLen - log(max(1, df))) in place, and the norms. */
  #weigh(v: Vec): Vec {
    const { ids, w } = v
    for (let k = 0; k < this.n; k++) {
      let sq = 0
      for (let j = v.start[k]!; j < v.start[k + 1]!; j++) {
        const df = ids[j]! > 0 ? (this.#df[ids[j]!] ?? 0) : 0
        w[j] = w[j]! * (this.#refLen - Math.log(Math.max(1, df)))
        sq += w[j]! * w[j]!
      }
      v.norm[k] = Math.sqrt(sq)
    }
    return v
  }
}

/** One-shot CIDEr-D over tokenized captions (see tokenizeCaption). */
export function ciderD(
  candidates: readonly string[],
  references: readonly (readonly string[])[],
  options: CiderOptions = {},
): CiderResult {
  checkPairs('ciderD', candidates, references)
  return new CiderD(references, options).score(candidates)
}
