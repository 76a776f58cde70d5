/**
 * Merge-rank BPE shared by the GPT-2 and CLIP tokenizers. A word is an array of symbols; the adjacent pair with the
 * lowest merge rank is merged (leftmost first on ties) until no pair has a rank. This is exactly the rule of
 * openai/gpt-2's `bpe()` and Hugging Face's BPE, done with a heap over a linked list so long words stay O(n log n).
 */
import { SemicapError } from '../errors.js'

/** A merge as stored in merges.txt ("a b") or in newer tokenizer.json files (["a", "b"]). */
export type Merge = string | readonly [string, string]

/** Splits a merge into its two symbols, or throws E_TOKENIZER. */
export function mergePair(merge: Merge, where: string): [string, string] {
  if (typeof merge !== 'string') {
    if (Array.isArray(merge) && merge.length === 2 && typeof merge[0] === 'string' && typeof merge[1] === 'string') {
      return [merge[0], merge[1]]
    }
    throw new SemicapError('E_TOKENIZER', `${where}: a merge must be "a b" or ["a", "b"], got ${JSON.stringify(merge)}`)
  }
  const parts = merge.split(' ')
  if (parts.length !== 2 || !parts[0] || !parts[1]) {
    throw new SemicapError('E_TOKENIZER', `${where}: malformed merge ${JSON.stringify(merge)}`)
  }
  return [parts[0], parts[1]]
}

/** Parses merges.txt: an optional "#version" header, then one "a b" merge per line. */
export function parseMergesTxt(text: string, where: string): [string, string][] {
  const lines = text.split(/\r?\n/)
  const merges: [string, string][] = []
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    if (line === '' || (i === 0 && line.startsWith('#version'))) continue
    merges.push(mergePair(line, `${where} line ${i + 1}`))
  }
  return merges
}

// Pair keys join with NUL: no byte-level symbol contains it (byte 0 maps to 'Ā'), and it cannot clash like a space could.
const pairKey = (a: string, b: string) => a + '\u0000' + b

export class BytePairEncoding {
  private readonly ranks = new Map<string, number>()
  private tokenRanks: ReadonlyMap<string, number> | undefined

  /** `merges` in priority order: index = rank. A repeated merge keeps its first (best) rank. */
  constructor(merges: Iterable<readonly [string, string]>) {
    let rank = 0
    for (const [a, b] of merges) {
      const key = pairKey(a, b)
      if (!this.ranks.has(key)) this.ranks.set(key, rank)
      rank++
    }
  }

  /**
   * tiktoken-style ranks: a pair's rank is the rank of the token it spells. This is how gpt-tokenizer ships GPT-2, and
   * it needs no merges table (deriving one costs ~0.5 s for GPT-2's 50k tokens).
   */
  static fromTokenRanks(tokenRanks: ReadonlyMap<string, number>): BytePairEncoding {
    const bpe = new BytePairEncoding([])
    bpe.tokenRanks = tokenRanks
    return bpe
  }

  rank(a: string, b: string): number | undefined {
    return this.tokenRanks ? this.tokenRanks.get(a + b) : this.ranks.get(pairKey(a, b))
  }

  /** Applies the merges to a word given as its initial symbols; returns the final symbols. */
  apply(symbols: readonly string[]): string[] {
    const n = symbols.length
    if (n < 2) return symbols.slice()
    const sym = symbols.slice()
    const next = new Int32Array(n)
    const prev = new Int32Array(n)
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1
      prev[i] = i - 1
    }
    const heap = new PairHeap()
    for (let i = 0; i + 1 < n; i++) {
      const r = this.rank(sym[i]!, sym[i + 1]!)
      if (r !== undefined) heap.push(r, i, sym[i]!, sym[i + 1]!)
    }
    while (heap.length > 0) {
      const { left, a, b } = heap.pop()
      const right = next[left]!
      // Stale entry: a neighbour was merged since it was pushed (symbols only grow, so equality means unchanged).
      if (right < 0 || sym[left] !== a || sym[right] !== b) continue
      sym[left] = a + b
      sym[right] = ''
      const after = next[right]!
      next[left] = after
      if (after >= 0) prev[after] = left
      const before = prev[left]!
      if (before >= 0) {
        const r = this.rank(sym[before]!, sym[left]!)
        if (r !== undefined) heap.push(r, before, sym[before]!, sym[left]!)
      }
      if (after >= 0) {
        const r = this.rank(sym[left]!, sym[after]!)
        if (r !== undefined) heap.push(r, left, sym[left]!, sym[after]!)
      }
    }
    const out: string[] = []
    for (let i = 0; i >= 0; i = next[i]!) out.push(sym[i]!)
    return out
  }
}

interface PairEntry {
  rank: number
  left: number
  a: string
  b: string
}

/** Min-heap on (rank, left position): lowest rank first, leftmost first among equal ranks. */
class PairHeap {
  private readonly items: PairEntry[] = []

  get length(): number {
    return this.items.length
  }

  push(rank: number, left: number, a: string, b: string): void {
    const items = this.items
    items.push({ rank, left, a, b })
    let i = items.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!less(items[i]!, items[parent]!)) break
      ;[items[i], items[parent]] = [items[parent]!, items[i]!]
      i = parent
    }
  }

  pop(): PairEntry {
    const items = this.items
    const top = items[0]!
    const last = items.pop()!
    if (items.length > 0) {
      items[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < items.length && less(items[l]!, items[m]!)) m = l
        if (r < items.length && less(items[r]!, items[m]!)) m = r
        if (m === i) break
        ;[items[i], items[m]] = [items[m]!, items[i]!]
        i = m
      }
    }
    return top
  }
}

function less(x: PairEntry, y: PairEntry): boolean {
  return x.rank < y.rank || (x.rank === y.rank && x.left < y.left)
}

/** A bounded word -> ids cache; drops the oldest entries when full (insertion order of Map). */
export class WordCache<V> {
  private readonly map = new Map<string, V>()
  constructor(private readonly capacity = 100_000) {}

  get(key: string): V | undefined {
    return this.map.get(key)
  }

  set(key: string, value: V): void {
    if (this.capacity <= 0) return
    if (this.map.size >= this.capacity) {
      const oldest = this.map.keys().next()
      if (!oldest.done) this.map.delete(oldest.value)
    }
    this.map.set(key, value)
  }

  clear(): void {
    this.map.clear()
  }
}
