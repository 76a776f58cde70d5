/**
 * Builds the synthetic COCO stand-in: train/val/test splits of scenes with five references each,
 * a small labeled subset of train (2% by default, as in the paper's low-label setting) and the
 * unlabeled rest. Written to disk as PNGs + the library's JSONL format + scenes.json (the ground
 * truth, which the JSONL files can't carry).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { SemicapError } from '../errors.js'
import { referenceCaptions } from './captions.js'
import { renderPng } from './render.js'
import { Rng, deriveSeed } from './rng.js'
import { BACKGROUNDS, COLOURS, SHAPES, SIZES, generateScene, type Background, type Scene, type SceneOptions } from './scene.js'

export const SPLITS = ['train', 'val', 'test'] as const
export type Split = (typeof SPLITS)[number]

export interface WorldExample {
  /** e.g. "train-000042"; also the PNG's file stem. */
  id: string
  split: Split
  scene: Scene
  /** Five annotator captions. */
  references: string[]
}

export interface WorldOptions {
  seed: number
  trainImages: number
  valImages: number
  testImages: number
  /** Share of train that keeps its references; default 0.02. */
  labeledFraction?: number
  /** Image side in pixels; default 64. */
  imageSize?: number
  /** Backgrounds scenes draw from (default both; see SceneOptions). */
  backgrounds?: readonly Background[]
  /** Most objects per scene (default 3; see SceneOptions). */
  maxObjects?: number
  /** The colours each shape comes in (default all; see SceneOptions). */
  palette?: SceneOptions['palette']
}

export interface World {
  seed: number
  imageSize: number
  labeledFraction: number
  train: WorldExample[]
  val: WorldExample[]
  test: WorldExample[]
  /** round(labeledFraction x train) train examples, in train order. */
  labeled: WorldExample[]
  /** The other train examples, in train order. */
  unlabeled: WorldExample[]
}

function checkCount(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0) {
    throw new SemicapError('E_CONFIG', `buildWorld: ${name} must be a non-negative integer, got ${value}`)
  }
}

/** Example i of a split depends only on (seed, split, i): growing train leaves val/test alone. */
function makeSplit(seed: number, split: Split, count: number, sceneOptions: SceneOptions): WorldExample[] {
  return Array.from({ length: count }, (_, i) => {
    const scene = generateScene(deriveSeed(seed, split, 'scene', i), sceneOptions)
    const references = referenceCaptions(scene, new Rng(deriveSeed(seed, split, 'refs', i)))
    return { id: `${split}-${String(i).padStart(6, '0')}`, split, scene, references }
  })
}

function partition(train: WorldExample[], labeledIds: ReadonlySet<string>): Pick<World, 'labeled' | 'unlabeled'> {
  return {
    labeled: train.filter((e) => labeledIds.has(e.id)),
    unlabeled: train.filter((e) => !labeledIds.has(e.id)),
  }
}

export function buildWorld(options: WorldOptions): World {
  const { seed, trainImages, valImages, testImages, labeledFraction = 0.02, imageSize = 64, backgrounds, maxObjects, palette } = options
  if (!Number.isInteger(seed)) throw new SemicapError('E_CONFIG', `buildWorld: seed must be an integer, got ${seed}`)
  checkCount('trainImages', trainImages)
  checkCount('valImages', valImages)
  checkCount('testImages', testImages)
  if (!(labeledFraction >= 0 && labeledFraction <= 1)) {
    throw new SemicapError('E_CONFIG', `buildWorld: labeledFraction must be in [0, 1], got ${labeledFraction}`)
  }
  if (!Number.isInteger(imageSize) || imageSize < 8 || imageSize > 4096) {
    throw new SemicapError('E_CONFIG', `buildWorld: imageSize must be an integer in [8, 4096], got ${imageSize}`)
  }
  const sceneOptions: SceneOptions = { ...(backgrounds ? { backgrounds } : {}), ...(maxObjects !== undefined ? { maxObjects } : {}), ...(palette ? { palette } : {}) }
  const train = makeSplit(seed, 'train', trainImages, sceneOptions)
  const labeledCount = Math.round(labeledFraction * trainImages)
  const picked = new Rng(deriveSeed(seed, 'labeled')).shuffle(train).slice(0, labeledCount)
  return {
    seed,
    imageSize,
    labeledFraction,
    train,
    val: makeSplit(seed, 'val', valImages, sceneOptions),
    test: makeSplit(seed, 'test', testImages, sceneOptions),
    ...partition(train, new Set(picked.map((e) => e.id))),
  }
}

/** One line of the library's JSONL data format. */
export interface JsonlRecord {
  /** Path relative to the JSONL file's folder. */
  image: string
  captions: string[]
}

export interface WorldFiles {
  dir: string
  scenes: string
  /** train (all references), labeled, unlabeled (captions: []), val, test. */
  jsonl: Record<Split | 'labeled' | 'unlabeled', string>
  images: number
}

const imagePath = (e: WorldExample) => `images/${e.id}.png`
const SCENES_FORMAT = 'semicap-world'
const SCENES_VERSION = 1

async function io<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    throw new SemicapError('E_IO', `${what}: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * Writes images/<id>.png for every example, <name>.jsonl for train/labeled/unlabeled/val/test and
 * scenes.json. Unlabeled lines carry `captions: []`: their references exist only in scenes.json,
 * for evaluation, so stage 2 can't see them by accident.
 */
export async function writeWorld(
  dir: string,
  world: World,
  options: { concurrency?: number; onProgress?: (done: number, total: number) => void } = {},
): Promise<WorldFiles> {
  const concurrency = Math.max(1, options.concurrency ?? 4)
  await io(`writeWorld: creating ${dir}`, () => mkdir(join(dir, 'images'), { recursive: true }))

  const all = [...world.train, ...world.val, ...world.test]
  let next = 0
  let done = 0
  const worker = async () => {
    while (next < all.length) {
      const example = all[next++] as WorldExample
      const png = await renderPng(example.scene, world.imageSize)
      await io(`writeWorld: writing ${imagePath(example)}`, () => writeFile(join(dir, imagePath(example)), png))
      options.onProgress?.(++done, all.length)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))

  const lines = (examples: WorldExample[], withCaptions: boolean) =>
    examples
      .map((e) => JSON.stringify({ image: imagePath(e), captions: withCaptions ? e.references : [] } satisfies JsonlRecord))
      .map((l) => `${l}\n`)
      .join('')
  const jsonl = {
    train: join(dir, 'train.jsonl'),
    labeled: join(dir, 'labeled.jsonl'),
    unlabeled: join(dir, 'unlabeled.jsonl'),
    val: join(dir, 'val.jsonl'),
    test: join(dir, 'test.jsonl'),
  }
  const contents: Record<keyof typeof jsonl, string> = {
    train: lines(world.train, true),
    labeled: lines(world.labeled, true),
    unlabeled: lines(world.unlabeled, false),
    val: lines(world.val, true),
    test: lines(world.test, true),
  }
  for (const key of Object.keys(jsonl) as Array<keyof typeof jsonl>) {
    await io(`writeWorld: writing ${jsonl[key]}`, () => writeFile(jsonl[key], contents[key]))
  }

  const scenes = join(dir, 'scenes.json')
  const strip = (e: WorldExample) => ({ id: e.id, scene: e.scene, references: e.references })
  const payload = {
    format: SCENES_FORMAT,
    version: SCENES_VERSION,
    seed: world.seed,
    imageSize: world.imageSize,
    labeledFraction: world.labeledFraction,
    labeledIds: world.labeled.map((e) => e.id),
    splits: { train: world.train.map(strip), val: world.val.map(strip), test: world.test.map(strip) },
  }
  await io(`writeWorld: writing ${scenes}`, () => writeFile(scenes, JSON.stringify(payload)))
  return { dir, scenes, jsonl, images: all.length }
}

function isScene(value: unknown): value is Scene {
  const s = value as Scene
  const inGrid = (v: unknown) => v === 0 || v === 1 || v === 2
  return (
    typeof s === 'object' &&
    s !== null &&
    (BACKGROUNDS as readonly string[]).includes(s.background) &&
    Array.isArray(s.objects) &&
    s.objects.every(
      (o) =>
        (SHAPES as readonly string[]).includes(o.shape) &&
        (COLOURS as readonly string[]).includes(o.colour) &&
        (SIZES as readonly string[]).includes(o.size) &&
        inGrid(o.row) &&
        inGrid(o.col) &&
        typeof o.x === 'number' &&
        typeof o.y === 'number',
    )
  )
}

/** Reads a world written by writeWorld (from scenes.json; the PNGs and JSONL are derived data). */
export async function readWorld(dir: string): Promise<World> {
  const file = join(dir, 'scenes.json')
  const text = await io(`readWorld: reading ${file}`, () => readFile(file, 'utf8'))
  let raw: any
  try {
    raw = JSON.parse(text)
  } catch (err) {
    throw new SemicapError('E_DATA', `readWorld: ${file} is not valid JSON`, { cause: err })
  }
  if (raw?.format !== SCENES_FORMAT || raw.version !== SCENES_VERSION) {
    throw new SemicapError('E_DATA', `readWorld: ${file} is not a ${SCENES_FORMAT} v${SCENES_VERSION} file`)
  }
  if (![raw.seed, raw.imageSize, raw.labeledFraction].every((v) => typeof v === 'number')) {
    throw new SemicapError('E_DATA', `readWorld: ${file} lacks seed, imageSize or labeledFraction`)
  }
  const splits = {} as Record<Split, WorldExample[]>
  for (const split of SPLITS) {
    const list: unknown = raw.splits?.[split]
    if (!Array.isArray(list)) throw new SemicapError('E_DATA', `readWorld: ${file} has no ${split} split`)
    splits[split] = list.map((e: any, i: number) => {
      const ok =
        typeof e?.id === 'string' &&
        isScene(e.scene) &&
        Array.isArray(e.references) &&
        e.references.every((r: unknown) => typeof r === 'string')
      if (!ok) throw new SemicapError('E_DATA', `readWorld: ${file}: ${split}[${i}] is malformed`)
      return { id: e.id, split, scene: e.scene, references: e.references }
    })
  }
  if (!Array.isArray(raw.labeledIds)) throw new SemicapError('E_DATA', `readWorld: ${file} has no labeledIds`)
  return {
    seed: raw.seed,
    imageSize: raw.imageSize,
    labeledFraction: raw.labeledFraction,
    ...splits,
    ...partition(splits.train, new Set<string>(raw.labeledIds)),
  }
}

/** Reads a JSONL data file ({"image", "captions"} per line; blank lines skipped). */
export async function readJsonl(file: string): Promise<JsonlRecord[]> {
  const text = await io(`readJsonl: reading ${file}`, () => readFile(file, 'utf8'))
  const records: JsonlRecord[] = []
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return
    let rec: any
    try {
      rec = JSON.parse(line)
    } catch (err) {
      throw new SemicapError('E_DATA', `readJsonl: ${file}:${i + 1} is not valid JSON`, { cause: err })
    }
    if (typeof rec?.image !== 'string' || !Array.isArray(rec.captions)) {
      throw new SemicapError('E_DATA', `readJsonl: ${file}:${i + 1} needs "image" and "captions"`)
    }
    records.push({ image: rec.image, captions: rec.captions })
  })
  return records
}
