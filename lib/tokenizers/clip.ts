/**
 * CLIP's text tokenizer (OpenAI simple_tokenizer / Hugging Face CLIPTokenizer): clean + lower-case, split into words,
 * byte-level BPE where each word's last symbol carries `</w>`, wrapped in <|startoftext|> ... <|endoftext|>.
 */
import { SemicapError } from '../errors.js'
import { BytePairEncoding, mergePair, WordCache, type Merge } from './bpe.js'
import { concatBytes, symbolsToBytes, textToSymbols, utf8Decode, utf8Encode } from './bytes.js'
import { folderPath, invertVocab, readBpeFolder } from './files.js'
import { checkText, toIdArray } from './ids.js'

export const CLIP_PATTERN = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu

const END_OF_WORD = '</w>'
const SPACE = Uint8Array.of(0x20)

const NAMED_ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: '\u00a0' }

/** The basic HTML entities and numeric references; others stay as they are. */
export function htmlUnescape(text: string): string {
  return text.replace(/&(#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z]+);/g, (whole, body: string) => {
    if (body[0] === '#') {
      const code = body[1] === 'x' || body[1] === 'X' ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10)
      return code > 0 && code <= 0x10ffff && !(code >= 0xd800 && code <= 0xdfff) ? String.fromCodePoint(code) : '\ufffd'
    }
    return NAMED_ENTITIES[body] ?? whole
  })
}

/** CLIP's text cleaning: HTML-unescape (twice, as OpenAI does), NFC, collapse whitespace, strip, lower-case. */
export function clipNormalize(text: string): string {
  return htmlUnescape(htmlUnescape(text)).normalize('NFC').replace(/\s+/g, ' ').trim().toLowerCase()
}

export interface ClipEncodeBatchOptions {
  /** Tokens per row including start and end (default 77, CLIP's context). Longer texts are cut, keeping eos last. */
  maxLength?: number
  /** Padding id (default eos, as Hugging Face pads OpenAI's CLIP). */
  padId?: number
  /** 'max_length' (default): every row has maxLength tokens; 'longest': rows as long as the longest text. */
  padding?: 'max_length' | 'longest'
}

export interface ClipBatch {
  /** Row-major [B, T] int64 ids. */
  ids: BigInt64Array
  shape: [number, number]
  /** Tokens per row before padding, start and end included. */
  lengths: number[]
}

export class ClipTokenizer {
  readonly bosId: number
  readonly eosId: number
  /** Largest id + 1. */
  readonly vocabSize: number
  readonly source: string

  private readonly bpe: BytePairEncoding
  private readonly tokens: string[]
  private readonly cache: WordCache<number[]>

  constructor(
    readonly vocab: ReadonlyMap<string, number>,
    readonly merges: readonly (readonly [string, string])[],
    options: { source?: string; cacheSize?: number } = {},
  ) {
    this.source = options.source ?? 'memory'
    this.tokens = invertVocab(vocab, this.source)
    this.vocabSize = this.tokens.length
    this.bpe = new BytePairEncoding(merges)
    this.cache = new WordCache(options.cacheSize)
    const bos = vocab.get('<|startoftext|>')
    const eos = vocab.get('<|endoftext|>')
    if (bos === undefined || eos === undefined) {
      throw new SemicapError('E_TOKENIZER', `${this.source}: vocab needs <|startoftext|> and <|endoftext|>`)
    }
    this.bosId = bos
    this.eosId = eos
  }

  /** From a Hugging Face CLIP folder: tokenizer.json, else vocab.json + merges.txt. */
  static async load(dir: string | URL): Promise<ClipTokenizer> {
    const path = folderPath(dir, 'ClipTokenizer.load')
    const tables = await readBpeFolder(path)
    if (!tables) throw new SemicapError('E_TOKENIZER', `${path}: no tokenizer.json or vocab.json + merges.txt`)
    return new ClipTokenizer(tables.vocab, tables.merges, { source: tables.source })
  }

  static fromVocabMerges(vocab: ReadonlyMap<string, number> | Record<string, number>, merges: readonly Merge[]): ClipTokenizer {
    const map = vocab instanceof Map ? vocab : new Map(Object.entries(vocab))
    return new ClipTokenizer(map, merges.map((m, i) => mergePair(m, `merges[${i}]`)))
  }

  /**
   * Text -> ids with start and end tokens. Special-token text in the input is tokenized as ordinary text, so user text
   * cannot inject control tokens (this is what the reference encodings do).
   */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    checkText(text, 'ClipTokenizer.encode')
    const addSpecial = options.addSpecialTokens ?? true
    const ids: number[] = addSpecial ? [this.bosId] : []
    for (const m of clipNormalize(text).matchAll(CLIP_PATTERN)) {
      const word = textToSymbols(m[0])
      let wordIds = this.cache.get(word)
      if (wordIds === undefined) {
        const symbols = Array.from(word)
        symbols[symbols.length - 1] += END_OF_WORD
        // A piece missing from the vocab maps to <|endoftext|>, CLIP's unk token.
        wordIds = this.bpe.apply(symbols).map((piece) => this.vocab.get(piece) ?? this.eosId)
        this.cache.set(word, wordIds)
      }
      for (const id of wordIds) ids.push(id)
    }
    if (addSpecial) ids.push(this.eosId)
    return ids
  }

  /** Ids -> text: `</w>` becomes a space; start/end/pad tokens are skipped unless `skipSpecialTokens: false`. */
  decode(ids: ArrayLike<number | bigint> | Iterable<number | bigint>, options: { skipSpecialTokens?: boolean } = {}): string {
    const skip = options.skipSpecialTokens ?? true
    const parts: Uint8Array[] = []
    for (const id of toIdArray(ids, 'ClipTokenizer.decode')) {
      if (skip && (id === this.bosId || id === this.eosId)) continue
      const token = this.tokens[id]
      if (token === undefined) throw new RangeError(`ClipTokenizer: id ${id} is not in the vocabulary (size ${this.vocabSize})`)
      const endsWord = token.endsWith(END_OF_WORD)
      const body = endsWord ? token.slice(0, -END_OF_WORD.length) : token
      parts.push(symbolsToBytes(body) ?? utf8Encode(body))
      if (endsWord) parts.push(SPACE)
    }
    return utf8Decode(concatBytes(parts)).trim()
  }

  /** A batch as one int64 [B, T] array; rows longer than maxLength are cut to maxLength with eos kept last. */
  encodeBatch(texts: readonly string[], options: ClipEncodeBatchOptions = {}): ClipBatch {
    if (!Array.isArray(texts)) throw new TypeError('ClipTokenizer.encodeBatch: texts must be an array of strings')
    const maxLength = options.maxLength ?? 77
    if (!Number.isInteger(maxLength) || maxLength < 2) throw new RangeError(`ClipTokenizer.encodeBatch: maxLength must be an integer >= 2, got ${maxLength}`)
    const padId = options.padId ?? this.eosId
    if (!Number.isInteger(padId)) throw new TypeError(`ClipTokenizer.encodeBatch: padId must be an integer, got ${padId}`)
    const padding = options.padding ?? 'max_length'
    if (padding !== 'max_length' && padding !== 'longest') throw new TypeError(`ClipTokenizer.encodeBatch: padding must be 'max_length' or 'longest'`)

    const rows = texts.map((text, i) => {
      const ids = this.encode(checkText(text, `ClipTokenizer.encodeBatch: texts[${i}]`))
      if (ids.length > maxLength) {
        ids.length = maxLength
        ids[maxLength - 1] = this.eosId
      }
      return ids
    })
    const lengths = rows.map((r) => r.length)
    const width = padding === 'max_length' ? maxLength : lengths.reduce((a, b) => Math.max(a, b), 0)
    const out = new BigInt64Array(rows.length * width).fill(BigInt(padId))
    rows.forEach((row, b) => row.forEach((id, t) => (out[b * width + t] = BigInt(id))))
    return { ids: out, shape: [rows.length, width], lengths }
  }
}
