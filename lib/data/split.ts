// Labeled/unlabeled split for the two-stage method, and format autodetection.
import { stat } from 'node:fs/promises'
import { dirname, extname, resolve } from 'node:path'
import { SemicapError } from '../errors.js'
import { cocoFromJson, karpathyFromJson, type KarpathySplit } from './coco.js'
import { readImageFolder } from './folder.js'
import { readJsonl } from './jsonl.js'
import type { Dataset, Example } from './types.js'
import { checkPath, io, isObject, readJsonFile } from './util.js'

/** mulberry32: a 32-bit seeded PRNG built from integer ops only, so the stream is the same on every Node version. */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export interface SplitOptions {
  /** Fraction of the captioned examples to label, in [0, 1]: round(fraction * captioned). */
  labeledFraction?: number
  /** Exact number of captioned examples to label (instead of labeledFraction). */
  labeledCount?: number
  /** Integer seed of the draw. */
  seed: number
  /** Keep the captions of unlabeled examples (default false: they get `captions: []`, as stage 2 must not see them). */
  keepUnlabeledCaptions?: boolean
}

export interface LabeledSplit {
  /** The drawn examples, in input order. */
  labeled: Example[]
  /** Everything else (the examples not drawn, and those without captions), in input order. */
  unlabeled: Example[]
}

/**
 * Draws the labeled subset: exactly round(labeledFraction * C) (or labeledCount) of the C examples that have
 * captions, chosen by a Fisher-Yates shuffle driven by mulberry32(seed), so the same seed gives the same subset on
 * every machine. Both lists keep the input order; the unlabeled pool's examples are copies with no captions unless
 * keepUnlabeledCaptions is set.
 */
export function splitLabeled(examples: readonly Example[], options: SplitOptions): LabeledSplit {
  if (!Array.isArray(examples)) throw new TypeError('splitLabeled: examples must be an array')
  if (options === null || typeof options !== 'object') throw new TypeError('splitLabeled: options must be an object')
  const { labeledFraction, labeledCount, seed, keepUnlabeledCaptions = false } = options
  if (typeof seed !== 'number') throw new TypeError('splitLabeled: seed must be an integer')
  if (!Number.isSafeInteger(seed)) throw new RangeError(`splitLabeled: seed must be an integer, got ${seed}`)
  examples.forEach((e, i) => {
    if (e === null || typeof e !== 'object' || !Array.isArray(e.captions)) throw new TypeError(`splitLabeled: examples[${i}] is not an Example`)
  })
  const captioned: number[] = []
  examples.forEach((e, i) => {
    if (e.captions.length > 0) captioned.push(i)
  })
  let k: number
  if (labeledFraction !== undefined && labeledCount !== undefined) throw new TypeError('splitLabeled: give labeledFraction or labeledCount, not both')
  if (labeledFraction !== undefined) {
    if (typeof labeledFraction !== 'number') throw new TypeError('splitLabeled: labeledFraction must be a number')
    if (!(labeledFraction >= 0 && labeledFraction <= 1)) throw new RangeError(`splitLabeled: labeledFraction must be in [0, 1], got ${labeledFraction}`)
    k = Math.round(labeledFraction * captioned.length)
  } else if (labeledCount !== undefined) {
    if (typeof labeledCount !== 'number') throw new TypeError('splitLabeled: labeledCount must be an integer')
    if (!Number.isInteger(labeledCount) || labeledCount < 0 || labeledCount > captioned.length) {
      throw new RangeError(`splitLabeled: labeledCount must be an integer in [0, ${captioned.length}] (the examples with captions), got ${labeledCount}`)
    }
    k = labeledCount
  } else {
    throw new TypeError('splitLabeled: give labeledFraction or labeledCount')
  }
  const rng = mulberry32(seed)
  const order = captioned.slice()
  // Partial Fisher-Yates from the front: the first k slots are a uniform k-subset.
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(rng() * (order.length - i))
    const t = order[i]!
    order[i] = order[j]!
    order[j] = t
  }
  const chosen = new Set(order.slice(0, k))
  const labeled: Example[] = []
  const unlabeled: Example[] = []
  examples.forEach((e, i) => {
    if (chosen.has(i)) labeled.push(e)
    else unlabeled.push(keepUnlabeledCaptions || e.captions.length === 0 ? e : { ...e, captions: [] })
  })
  return { labeled, unlabeled }
}

export interface DatasetOptions {
  /** Images folder of a COCO or Karpathy JSON (default: the JSON file's folder). */
  imagesDir?: string
  /** Karpathy split (default 'train+restval', the usual training set). */
  split?: KarpathySplit
  /** For a folder: descend into subfolders (default false). */
  recursive?: boolean
}

/**
 * Reads a dataset, detecting its format: a directory is an image folder; `.jsonl` is JSON Lines; `.json` with
 * `annotations` is an official COCO captions file; `.json` whose `images[0]` has `sentences` is a Karpathy split file.
 */
export async function dataset(path: string, options: DatasetOptions = {}): Promise<Dataset> {
  checkPath(path, 'dataset', 'path')
  if (options === null || typeof options !== 'object') throw new TypeError('dataset: options must be an object')
  const abs = resolve(path)
  const st = await io(`dataset: ${abs}`, () => stat(abs))
  if (st.isDirectory()) return readImageFolder(abs, { recursive: options.recursive })
  const ext = extname(abs).toLowerCase()
  if (ext === '.jsonl') return readJsonl(abs)
  if (ext === '.json') {
    const json = await readJsonFile(abs, 'dataset')
    const imagesDir = options.imagesDir ?? dirname(abs)
    if (isObject(json) && 'annotations' in json) return cocoFromJson(json, abs, imagesDir)
    if (isObject(json) && Array.isArray(json.images) && isObject(json.images[0]) && 'sentences' in json.images[0]) {
      return karpathyFromJson(json, abs, imagesDir, options.split ?? 'train+restval')
    }
    throw new SemicapError('E_DATA', `dataset: ${abs}: not a COCO captions file ("annotations") nor a Karpathy split file ("images[0].sentences")`)
  }
  throw new SemicapError('E_DATA', `dataset: ${abs}: unknown format (expected a folder, .jsonl or .json)`)
}
