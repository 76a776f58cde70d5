/**
 * A small GPT-2-style byte-level BPE trainer: words from GPT-2's pre-tokenizer, an alphabet of all 256 byte symbols,
 * then the most frequent adjacent pair is merged until the vocabulary is full; special tokens take the last ids.
 * Meant for tiny vocabularies (hundreds to a few thousand tokens) over caption corpora.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { SemicapError } from '../errors.js'
import { BYTE_ORDER, BYTE_TO_UNICODE, textToSymbols } from './bytes.js'
import { GPT2_EOS_TOKEN, GPT2_PATTERN } from './gpt2.js'

export interface TrainBpeOptions {
  /** Final vocabulary size including the 256 byte tokens and the special tokens. */
  vocabSize: number
  /** Appended after the merges, in order (default ['<|endoftext|>']). */
  specialTokens?: string[]
  /** Stop early when the best pair occurs fewer times than this (default 2), so rare words are not memorised. */
  minFrequency?: number
}

export interface TrainedBpe {
  /** token -> id: bytes 0..255 (GPT-2's order), merged tokens, then the special tokens. */
  vocab: Record<string, number>
  /** "a b" merges in priority order. */
  merges: string[]
}

export function trainByteLevelBpe(texts: readonly string[], options: TrainBpeOptions): TrainedBpe {
  if (!Array.isArray(texts)) throw new TypeError('trainByteLevelBpe: texts must be an array of strings')
  const specials = options.specialTokens ?? [GPT2_EOS_TOKEN]
  if (!Array.isArray(specials) || specials.some((s) => typeof s !== 'string' || s === '')) {
    throw new TypeError('trainByteLevelBpe: specialTokens must be non-empty strings')
  }
  if (new Set(specials).size !== specials.length) throw new RangeError('trainByteLevelBpe: specialTokens has duplicates')
  const { vocabSize, minFrequency = 2 } = options
  if (!Number.isInteger(vocabSize) || vocabSize < 256 + specials.length) {
    throw new RangeError(`trainByteLevelBpe: vocabSize must be an integer >= ${256 + specials.length}, got ${vocabSize}`)
  }
  if (!Number.isInteger(minFrequency) || minFrequency < 1) throw new RangeError('trainByteLevelBpe: minFrequency must be an integer >= 1')

  const tokens: string[] = BYTE_ORDER.map((b) => BYTE_TO_UNICODE[b]!)
  const idOf = new Map(tokens.map((t, i) => [t, i]))

  // Distinct words with their counts, each as an array of token ids.
  const wordCounts = new Map<string, number>()
  texts.forEach((text, i) => {
    if (typeof text !== 'string') throw new TypeError(`trainByteLevelBpe: texts[${i}] is not a string`)
    for (const m of text.matchAll(GPT2_PATTERN)) {
      const w = textToSymbols(m[0])
      wordCounts.set(w, (wordCounts.get(w) ?? 0) + 1)
    }
  })
  const words: number[][] = []
  const counts: number[] = []
  for (const [w, c] of wordCounts) {
    words.push(Array.from(w, (ch) => idOf.get(ch)!))
    counts.push(c)
  }

  // Pair key a * K + b orders pairs like (a, b) tuples, which breaks count ties deterministically (smallest first).
  const K = vocabSize
  const pairCounts = new Map<number, number>()
  const pairWords = new Map<number, Set<number>>()
  const addPairs = (w: number, sign: 1 | -1) => {
    const word = words[w]!
    for (let i = 0; i + 1 < word.length; i++) {
      const key = word[i]! * K + word[i + 1]!
      const c = (pairCounts.get(key) ?? 0) + sign * counts[w]!
      if (c > 0) pairCounts.set(key, c)
      else pairCounts.delete(key)
      if (sign > 0) {
        let set = pairWords.get(key)
        if (!set) pairWords.set(key, (set = new Set()))
        set.add(w)
      }
    }
  }
  for (let w = 0; w < words.length; w++) addPairs(w, 1)

  const merges: string[] = []
  const maxTokens = vocabSize - specials.length
  while (tokens.length < maxTokens) {
    let bestKey = -1
    let bestCount = 0
    for (const [key, c] of pairCounts) {
      if (c > bestCount || (c === bestCount && key < bestKey)) {
        bestKey = key
        bestCount = c
      }
    }
    if (bestKey < 0 || bestCount < minFrequency) break
    const a = Math.floor(bestKey / K)
    const b = bestKey % K
    const merged = tokens[a]! + tokens[b]!
    merges.push(`${tokens[a]} ${tokens[b]}`)
    // Two different merges can spell the same token; it keeps its first id, as in Hugging Face's trainer.
    let id = idOf.get(merged)
    if (id === undefined) {
      id = tokens.length
      tokens.push(merged)
      idOf.set(merged, id)
    }
    for (const w of pairWords.get(bestKey) ?? []) {
      const word = words[w]!
      if (!containsPair(word, a, b)) continue // stale: an earlier merge already consumed this pair here
      addPairs(w, -1)
      const out: number[] = []
      for (let i = 0; i < word.length; i++) {
        if (i + 1 < word.length && word[i] === a && word[i + 1] === b) {
          out.push(id)
          i++
        } else out.push(word[i]!)
      }
      words[w] = out
      addPairs(w, 1)
    }
    pairWords.delete(bestKey)
    pairCounts.delete(bestKey)
  }

  const vocab: Record<string, number> = {}
  tokens.forEach((t, i) => (vocab[t] = i))
  specials.forEach((s, i) => {
    if (Object.hasOwn(vocab, s)) throw new SemicapError('E_TOKENIZER', `trainByteLevelBpe: special token ${JSON.stringify(s)} is also a learned token`)
    vocab[s] = tokens.length + i
  })
  return { vocab, merges }
}

function containsPair(word: readonly number[], a: number, b: number): boolean {
  for (let i = 0; i + 1 < word.length; i++) if (word[i] === a && word[i + 1] === b) return true
  return false
}

/** Writes `vocab.json` (ordered by id) and `merges.txt` (with HF's `#version: 0.2` header) into `dir`. */
export async function saveGpt2TokenizerFiles(dir: string, trained: TrainedBpe): Promise<void> {
  if (typeof dir !== 'string' || dir === '') throw new TypeError('saveGpt2TokenizerFiles: dir must be a non-empty string')
  const entries = Object.entries(trained.vocab).sort((x, y) => x[1] - y[1])
  // Built by hand: a plain object would list integer-like keys ("0".."9") first, out of id order.
  const vocabJson = '{' + entries.map(([t, id]) => `${JSON.stringify(t)}: ${id}`).join(', ') + '}\n'
  const mergesTxt = ['#version: 0.2', ...trained.merges].join('\n') + '\n'
  try {
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'vocab.json'), vocabJson)
    await writeFile(join(dir, 'merges.txt'), mergesTxt)
  } catch (err) {
    throw new SemicapError('E_IO', `cannot write tokenizer files to ${dir}: ${(err as Error).message}`, { cause: err })
  }
}
