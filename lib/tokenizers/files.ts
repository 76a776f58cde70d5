/** Reading Hugging Face tokenizer files (vocab.json + merges.txt, or tokenizer.json) into plain tables. */
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { SemicapError } from '../errors.js'
import { mergePair, parseMergesTxt, type Merge } from './bpe.js'

export interface BpeTables {
  vocab: Map<string, number>
  merges: [string, string][]
  /** Where the tables came from, for error messages. */
  source: string
}

export function folderPath(dir: string | URL, what: string): string {
  if (dir instanceof URL) return fileURLToPath(dir)
  if (typeof dir !== 'string' || dir === '') throw new TypeError(`${what}: folder must be a non-empty string or file: URL`)
  return dir
}

export async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile()
  } catch {
    return false
  }
}

async function readText(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    throw new SemicapError('E_TOKENIZER', `cannot read ${path}: ${(err as Error).message}`, { cause: err })
  }
}

async function readJson(path: string): Promise<unknown> {
  const text = await readText(path)
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new SemicapError('E_TOKENIZER', `${path} is not valid JSON: ${(err as Error).message}`, { cause: err })
  }
}

/** Validates a token -> id object (vocab.json or tokenizer.json's model.vocab). */
export function vocabFromObject(obj: unknown, where: string): Map<string, number> {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new SemicapError('E_TOKENIZER', `${where}: vocab must be an object of token -> id`)
  }
  const vocab = new Map<string, number>()
  for (const [token, id] of Object.entries(obj)) {
    if (!Number.isInteger(id) || (id as number) < 0) {
      throw new SemicapError('E_TOKENIZER', `${where}: token ${JSON.stringify(token)} has invalid id ${JSON.stringify(id)}`)
    }
    vocab.set(token, id as number)
  }
  return vocab
}

export async function readVocabMerges(dir: string): Promise<BpeTables> {
  const vocabPath = join(dir, 'vocab.json')
  const mergesPath = join(dir, 'merges.txt')
  const vocab = vocabFromObject(await readJson(vocabPath), vocabPath)
  const merges = parseMergesTxt(await readText(mergesPath), mergesPath)
  return { vocab, merges, source: dir }
}

/** tokenizer.json (HF tokenizers): model.vocab, model.merges, and added_tokens (specials) merged into the vocab. */
export async function readTokenizerJson(path: string): Promise<BpeTables> {
  const json = (await readJson(path)) as { model?: { type?: string; vocab?: unknown; merges?: unknown }; added_tokens?: unknown }
  const model = json?.model
  if (!model || (model.type !== undefined && model.type !== 'BPE')) {
    throw new SemicapError('E_TOKENIZER', `${path}: expected a BPE model, got ${JSON.stringify(model?.type)}`)
  }
  const vocab = vocabFromObject(model.vocab, `${path} model.vocab`)
  if (!Array.isArray(model.merges)) throw new SemicapError('E_TOKENIZER', `${path}: model.merges must be an array`)
  const merges = (model.merges as Merge[]).map((m, i) => mergePair(m, `${path} model.merges[${i}]`))
  if (Array.isArray(json.added_tokens)) {
    for (const t of json.added_tokens as { id?: unknown; content?: unknown }[]) {
      if (typeof t?.content === 'string' && Number.isInteger(t.id)) vocab.set(t.content, t.id as number)
    }
  }
  return { vocab, merges, source: path }
}

/** tokenizer.json when present, else vocab.json + merges.txt; undefined when the folder has neither. */
export async function readBpeFolder(dir: string): Promise<BpeTables | undefined> {
  const tokenizerJson = join(dir, 'tokenizer.json')
  if (await isFile(tokenizerJson)) return readTokenizerJson(tokenizerJson)
  const hasVocab = await isFile(join(dir, 'vocab.json'))
  const hasMerges = await isFile(join(dir, 'merges.txt'))
  if (hasVocab && hasMerges) return readVocabMerges(dir)
  if (hasVocab || hasMerges) {
    throw new SemicapError('E_TOKENIZER', `${dir}: has ${hasVocab ? 'vocab.json but no merges.txt' : 'merges.txt but no vocab.json'}`)
  }
  return undefined
}

/**
 * Ids may run past the number of tokens by this much (a sparse vocabulary, a GPT-2 end token at 50256 in a small
 * test vocab), no more: a hostile id of 1e9 would otherwise make a billion-slot id -> token table (seconds to
 * minutes, gigabytes), and ids past 2^32 - 2 are not array indices at all.
 */
const MAX_ID_SLACK = 1 << 20

/** id -> token, checking that ids are unique, non-negative integers and not far past the vocabulary's size. */
export function invertVocab(vocab: ReadonlyMap<string, number>, where: string): string[] {
  const tokens: string[] = []
  const limit = vocab.size + MAX_ID_SLACK
  for (const [token, id] of vocab) {
    if (!Number.isInteger(id) || id < 0 || id >= limit) {
      throw new SemicapError('E_TOKENIZER', `${where}: token ${JSON.stringify(token)} has id ${JSON.stringify(id)}, outside [0, ${limit}) for ${vocab.size} tokens`)
    }
    if (tokens[id] !== undefined && tokens[id] !== token) {
      throw new SemicapError('E_TOKENIZER', `${where}: id ${id} is used by both ${JSON.stringify(tokens[id])} and ${JSON.stringify(token)}`)
    }
    tokens[id] = token
  }
  return tokens
}
