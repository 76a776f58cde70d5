/**
 * GPT-2's byte-level BPE tokenizer. Loads a Hugging Face gpt2 folder (tokenizer.json, or vocab.json + merges.txt);
 * without one it uses GPT-2's own vocabulary as shipped by the gpt-tokenizer package (its r50k_base ranks).
 */
import { join } from 'node:path'
import { SemicapError } from '../errors.js'
import { BytePairEncoding, mergePair, WordCache, type Merge } from './bpe.js'
import { bytesToSymbols, concatBytes, symbolsToBytes, textToSymbols, utf8Decode, utf8Encode } from './bytes.js'
import { folderPath, invertVocab, readBpeFolder } from './files.js'
import { checkText, escapeRegExp, toIdArray } from './ids.js'

/** GPT-2's pre-tokenizer: contractions, letter runs, number runs, other runs, each with an optional leading space. */
export const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu

export const GPT2_EOS_TOKEN = '<|endoftext|>'

export interface Gpt2TokenizerOptions {
  /** The end-of-text token (default `<|endoftext|>`); it must be in the vocab. */
  eosToken?: string
  /** Extra tokens to treat as special (never produced by BPE; matched in text only with `allowSpecial`). */
  specialTokens?: string[]
  /** Words whose ids are cached (default 100k). */
  cacheSize?: number
}

export interface Gpt2LoadOptions extends Gpt2TokenizerOptions {
  /** Use the gpt-tokenizer package's GPT-2 vocabulary when the folder has no tokenizer files (default true). */
  packageFallback?: boolean
}

export interface EncodeOptions {
  /** Match special tokens such as `<|endoftext|>` in the text (default false: they are encoded as plain text). */
  allowSpecial?: boolean
}

export interface DecodeOptions {
  /** Leave special tokens out of the text (default false, as in Hugging Face). */
  skipSpecialTokens?: boolean
}

export class Gpt2Tokenizer {
  readonly eosId: number
  /** GPT-2 starts and ends text with the same token. */
  readonly bosId: number
  /** Largest id + 1. */
  readonly vocabSize: number
  /** Where the vocabulary came from: a file path, or 'gpt-tokenizer:r50k_base'. */
  readonly source: string

  private readonly bpe: BytePairEncoding
  private readonly tokens: string[]
  private readonly tokenByteTable: (Uint8Array | undefined)[]
  private readonly specialIds: Set<number>
  private readonly specialPattern: RegExp
  private readonly cache: WordCache<number[]>
  private mergeTable: readonly (readonly [string, string])[] | undefined

  /**
   * `merges` in priority order, or 'token-ranks' when the vocab's ids are tiktoken ranks (a pair merges at the rank of
   * the token it spells; the merges table is then derived only if asked for).
   */
  constructor(
    readonly vocab: ReadonlyMap<string, number>,
    merges: readonly (readonly [string, string])[] | 'token-ranks',
    options: Gpt2TokenizerOptions & { source?: string } = {},
  ) {
    this.source = options.source ?? 'memory'
    this.tokens = invertVocab(vocab, this.source)
    this.vocabSize = this.tokens.length
    if (merges === 'token-ranks') {
      this.bpe = BytePairEncoding.fromTokenRanks(vocab)
    } else {
      this.bpe = new BytePairEncoding(merges)
      this.mergeTable = merges
    }
    this.cache = new WordCache(options.cacheSize)
    const eosToken = options.eosToken ?? GPT2_EOS_TOKEN
    const eos = vocab.get(eosToken)
    if (eos === undefined) throw new SemicapError('E_TOKENIZER', `${this.source}: vocab has no ${JSON.stringify(eosToken)}`)
    this.eosId = eos
    this.bosId = eos
    const specials = new Set([eosToken, ...(options.specialTokens ?? [])])
    // `<|...|>` tokens are GPT-2-style specials even when a plain vocab.json does not say so.
    for (const token of vocab.keys()) if (/^<\|[^|\s]+\|>$/.test(token)) specials.add(token)
    this.specialIds = new Set()
    for (const token of specials) {
      const id = vocab.get(token)
      if (id === undefined) throw new SemicapError('E_TOKENIZER', `${this.source}: special token ${JSON.stringify(token)} is not in the vocab`)
      this.specialIds.add(id)
    }
    this.specialPattern = new RegExp(
      [...specials].sort((a, b) => b.length - a.length).map(escapeRegExp).join('|'),
      'g',
    )
    // Bytes of each token for decode; specials (and anything outside the byte table) decode as their UTF-8 text.
    this.tokenByteTable = this.tokens.map((token, id) =>
      this.specialIds.has(id) ? utf8Encode(token) : (symbolsToBytes(token) ?? utf8Encode(token)),
    )
  }

  /**
   * tokenizer.json, else vocab.json + merges.txt from `dir`; with no `dir`, or a folder without either, GPT-2's own
   * vocabulary from the gpt-tokenizer package (unless `packageFallback: false`).
   */
  static async load(dir?: string | URL, options: Gpt2LoadOptions = {}): Promise<Gpt2Tokenizer> {
    if (dir !== undefined) {
      const path = folderPath(dir, 'Gpt2Tokenizer.load')
      const tables = await readBpeFolder(path)
      if (tables) return new Gpt2Tokenizer(tables.vocab, tables.merges, { ...options, source: tables.source })
      if (options.packageFallback === false) {
        throw new SemicapError('E_TOKENIZER', `${path}: no tokenizer.json or vocab.json + merges.txt (looked for ${join(path, 'tokenizer.json')})`)
      }
    }
    return Gpt2Tokenizer.fromPackage()
  }

  /** From a token -> id table and merges in priority order ("a b" strings or pairs). */
  static fromVocabMerges(
    vocab: ReadonlyMap<string, number> | Record<string, number>,
    merges: readonly Merge[],
    options: Gpt2TokenizerOptions = {},
  ): Gpt2Tokenizer {
    const map = vocab instanceof Map ? vocab : new Map(Object.entries(vocab))
    return new Gpt2Tokenizer(map, merges.map((m, i) => mergePair(m, `merges[${i}]`)), options)
  }

  /** GPT-2's vocabulary (50,257 tokens) from the gpt-tokenizer package; loaded once and shared. */
  static fromPackage(): Promise<Gpt2Tokenizer> {
    packageTokenizer ??= loadPackageTokenizer().catch((err: unknown) => {
      packageTokenizer = undefined
      throw err
    })
    return packageTokenizer
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    checkText(text, 'Gpt2Tokenizer.encode')
    const ids: number[] = []
    if (!options.allowSpecial) {
      this.encodeOrdinary(text, ids)
      return ids
    }
    let at = 0
    for (const m of text.matchAll(this.specialPattern)) {
      this.encodeOrdinary(text.slice(at, m.index), ids)
      ids.push(this.vocab.get(m[0])!)
      at = m.index + m[0].length
    }
    this.encodeOrdinary(text.slice(at), ids)
    return ids
  }

  /** Token ids -> text; invalid UTF-8 (e.g. a multi-byte character cut between tokens) becomes U+FFFD. */
  decode(ids: ArrayLike<number | bigint> | Iterable<number | bigint>, options: DecodeOptions = {}): string {
    return utf8Decode(this.decodeBytes(ids, options))
  }

  decodeBytes(ids: ArrayLike<number | bigint> | Iterable<number | bigint>, options: DecodeOptions = {}): Uint8Array {
    const parts: Uint8Array[] = []
    for (const id of toIdArray(ids, 'Gpt2Tokenizer.decode')) {
      if (options.skipSpecialTokens && this.specialIds.has(id)) continue
      parts.push(this.tokenBytes(id))
    }
    return concatBytes(parts)
  }

  /** The bytes a token stands for (the table a native decoder needs). */
  tokenBytes(id: number): Uint8Array {
    const bytes = this.tokenByteTable[id]
    if (bytes === undefined) throw new RangeError(`Gpt2Tokenizer: id ${id} is not in the vocabulary (size ${this.vocabSize})`)
    return bytes
  }

  /** Merges in priority order, e.g. to save as merges.txt or to hand to native code. */
  get merges(): readonly (readonly [string, string])[] {
    this.mergeTable ??= mergesFromRanks(this.tokens, this.vocab, this.specialIds)
    return this.mergeTable
  }

  idToToken(id: number): string | undefined {
    return this.tokens[id]
  }

  tokenToId(token: string): number | undefined {
    return this.vocab.get(token)
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id)
  }

  private encodeOrdinary(text: string, out: number[]): void {
    for (const m of text.matchAll(GPT2_PATTERN)) {
      const word = m[0]
      let ids = this.cache.get(word)
      if (ids === undefined) {
        ids = this.bpe.apply(Array.from(textToSymbols(word))).map((piece) => {
          const id = this.vocab.get(piece)
          if (id === undefined) throw new SemicapError('E_TOKENIZER', `${this.source}: BPE piece ${JSON.stringify(piece)} is not in the vocab`)
          return id
        })
        this.cache.set(word, ids)
      }
      for (const id of ids) out.push(id)
    }
  }
}

let packageTokenizer: Promise<Gpt2Tokenizer> | undefined

async function loadPackageTokenizer(): Promise<Gpt2Tokenizer> {
  let ranks: (string | number[])[]
  try {
    ranks = (await import('gpt-tokenizer/bpeRanks/r50k_base')).default
  } catch (err) {
    throw new SemicapError('E_TOKENIZER', `cannot load GPT-2 ranks from gpt-tokenizer: ${(err as Error).message}`, { cause: err })
  }
  const tokens: string[] = []
  ranks.forEach((value, rank) => {
    tokens[rank] = bytesToSymbols(typeof value === 'string' ? utf8Encode(value) : Uint8Array.from(value))
  })
  const vocab = new Map<string, number>()
  tokens.forEach((token, rank) => vocab.set(token, rank))
  vocab.set(GPT2_EOS_TOKEN, tokens.length)
  return new Gpt2Tokenizer(vocab, 'token-ranks', { source: 'gpt-tokenizer:r50k_base' })
}

/**
 * Recovers merges from tiktoken-style ranks: a token of rank r is the merge of the two pieces that rank-BPE over its
 * bytes, restricted to ranks below r, ends with. Merge order = token rank, which is how GPT-2's vocab was built.
 */
export function mergesFromRanks(
  tokens: readonly string[],
  vocab: ReadonlyMap<string, number>,
  skipIds: ReadonlySet<number> = new Set(),
): [string, string][] {
  const merges: [string, string][] = []
  tokens.forEach((token, rank) => {
    if (token.length < 2 || skipIds.has(rank)) return
    const parts = Array.from(token)
    while (parts.length > 2) {
      let best = -1
      let bestRank = rank
      for (let i = 0; i + 1 < parts.length; i++) {
        const r = vocab.get(parts[i]! + parts[i + 1]!)
        if (r !== undefined && r < bestRank) {
          best = i
          bestRank = r
        }
      }
      if (best < 0) break
      parts.splice(best, 2, parts[best]! + parts[best + 1]!)
    }
    if (parts.length !== 2) throw new SemicapError('E_TOKENIZER', `token ${JSON.stringify(token)} (rank ${rank}) is not a merge of two lower-ranked tokens`)
    merges.push([parts[0]!, parts[1]!])
  })
  return merges
}
