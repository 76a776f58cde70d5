// A disk cache of CLIP image features, keyed by the CLIP weights and the preprocessing.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { access, mkdir, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { AbortError, SemicapError } from '../errors.js'
import { loadSafetensors, readSafetensorsHeader, writeSafetensors } from '../runtime.js'
import { Tensor } from '../tensor.js'
import type { Example } from './types.js'
import { io } from './util.js'
import { findWeights, weightsHash } from '../weights-files.js'

/**
 * What the cache needs of a CLIP model; `Clip` from lib/clip.ts satisfies it. The weights file is `weightsPath`
 * when given, else `dir/model.safetensors`.
 */
export interface FeatureEncoder {
  imageFeatures(pixels: Tensor): Promise<Tensor>
  preprocess(inputs: string[]): Promise<Tensor>
  readonly imageSize: number
  readonly dir?: string | undefined
  readonly weightsPath?: string
  readonly projectionDim?: number
}

export interface FeatureCacheOptions {
  /** Folder of the cache files (created when missing). */
  cacheDir: string
  /** Images encoded per forward pass (default 32). */
  batchSize?: number
  /** Checked before each batch; on abort, what was computed so far is saved and an AbortError is thrown. */
  signal?: AbortSignal
  /** Examples whose features are ready (cache hits first, then after each batch), out of all examples. */
  onProgress?: (done: number, total: number) => void
}

export interface CachedFeatures {
  /** [N, D] float32, row i for examples[i]. */
  features: Tensor
  /** Examples whose features were read from the cache. */
  hits: number
  /** Examples whose features were computed now. */
  misses: number
  /** The cache file used. */
  cacheFile: string
}

/** Written into every cache file's metadata; a file with other values is ignored. */
export const FEATURE_CACHE_FORMAT = 'semicap-clip-image-features/1 (hf-clip-preprocess: bicubic shortest edge, center crop, clip mean/std)'

const hashMemo = new Map<string, Promise<string>>()

/** sha256 (hex) of a file's bytes, streamed; memoised per path + size + mtime. */
export async function fileSha256(path: string): Promise<string> {
  if (typeof path !== 'string' || path === '') throw new TypeError('fileSha256: path must be a non-empty string')
  const abs = resolve(path)
  const st = await io(`fileSha256: ${abs}`, () => stat(abs, { bigint: true }))
  const memoKey = `${abs}\0${st.size}\0${st.mtimeNs}`
  let p = hashMemo.get(memoKey)
  if (!p) {
    p = io(`fileSha256: reading ${abs}`, async () => {
      const hash = createHash('sha256')
      for await (const chunk of createReadStream(abs)) hash.update(chunk as Buffer)
      return hash.digest('hex')
    })
    hashMemo.set(memoKey, p)
    p.catch(() => hashMemo.delete(memoKey))
  }
  return p
}

/** The cache key of an image file: a hash of its absolute path, size and modification time. */
async function imageKey(path: string): Promise<string> {
  const st = await io(`cachedImageFeatures: ${path}`, () => stat(path, { bigint: true }))
  return createHash('sha256').update(`${path}\0${st.size}\0${st.mtimeNs}`).digest('hex').slice(0, 32)
}

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length)
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return out
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  )

/** Reads the cache file's rows when its metadata matches; a missing, foreign or unreadable file is an empty cache. */
async function readCache(file: string, metadata: Record<string, string>): Promise<Map<string, Float32Array>> {
  const rows = new Map<string, Float32Array>()
  if (!(await exists(file))) return rows
  try {
    const header = await readSafetensorsHeader(file)
    if (Object.entries(metadata).some(([k, v]) => header.metadata[k] !== v)) return rows
    const tensors = await loadSafetensors(file)
    for (const [k, t] of Object.entries(tensors)) {
      if (t.dtype === 'float32' && t.shape.length === 1) rows.set(k, t.data as Float32Array)
    }
  } catch (err) {
    process.emitWarning(`cachedImageFeatures: ignoring unreadable cache file ${file}: ${err instanceof Error ? err.message : String(err)}`)
    rows.clear()
  }
  return rows
}

async function writeCache(file: string, rows: Map<string, Float32Array>, metadata: Record<string, string>): Promise<void> {
  const tensors: Record<string, Tensor> = {}
  for (const [k, v] of rows) tensors[k] = new Tensor('float32', [v.length], v)
  try {
    await writeSafetensors(file, tensors, metadata)
  } catch (err) {
    if (err instanceof SemicapError && err.code === 'E_IO') throw err
    throw new SemicapError('E_IO', `cachedImageFeatures: writing ${file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
  }
}

/**
 * CLIP image features of `examples` (row i for examples[i]), through a safetensors cache in `cacheDir`. The cache
 * file is named after the sha256 of the CLIP weights file and the preprocessing (image size) and holds one [D]
 * float32 tensor per image, keyed by a hash of the image's absolute path, size and mtime (a changed image is
 * recomputed). Images already cached are read, the others are computed in batches; the file is then rewritten
 * atomically (temp + rename), also when aborted or when a batch fails, so finished batches are kept.
 */
export async function cachedImageFeatures(clip: FeatureEncoder, examples: readonly Example[], options: FeatureCacheOptions): Promise<CachedFeatures> {
  if (clip === null || typeof clip !== 'object' || typeof clip.imageFeatures !== 'function' || typeof clip.preprocess !== 'function') {
    throw new TypeError('cachedImageFeatures: clip must have imageFeatures() and preprocess()')
  }
  if (!Array.isArray(examples)) throw new TypeError('cachedImageFeatures: examples must be an array')
  if (options === null || typeof options !== 'object') throw new TypeError('cachedImageFeatures: options must be an object')
  const { cacheDir, batchSize = 32, signal, onProgress } = options
  if (typeof cacheDir !== 'string' || cacheDir === '') throw new TypeError('cachedImageFeatures: cacheDir must be a non-empty string')
  if (typeof batchSize !== 'number') throw new TypeError('cachedImageFeatures: batchSize must be an integer')
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`cachedImageFeatures: batchSize must be an integer >= 1, got ${batchSize}`)
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new TypeError('cachedImageFeatures: signal must be an AbortSignal')
  if (onProgress !== undefined && typeof onProgress !== 'function') throw new TypeError('cachedImageFeatures: onProgress must be a function')
  const paths = examples.map((e, i) => {
    if (e === null || typeof e !== 'object' || typeof e.image !== 'string' || e.image === '') {
      throw new TypeError(`cachedImageFeatures: examples[${i}] has no image path`)
    }
    return resolve(e.image)
  })
  const aborted = () => new AbortError('cachedImageFeatures was aborted', { cause: signal?.reason })
  if (signal?.aborted) throw aborted()

  const weightsPath = clip.weightsPath ?? (typeof clip.dir === 'string' ? await findWeights(clip.dir) : undefined)
  if (weightsPath === undefined) throw new TypeError('cachedImageFeatures: clip has neither weightsPath nor dir (a model loaded from a folder)')
  const imageSize = clip.imageSize
  if (!Number.isInteger(imageSize) || imageSize < 1) throw new TypeError('cachedImageFeatures: clip.imageSize must be a positive integer')
  const clipHash = await weightsHash(weightsPath, fileSha256)
  const metadata = { clipHash, imageSize: String(imageSize), format: FEATURE_CACHE_FORMAT }
  const dir = resolve(cacheDir)
  const cacheFile = join(dir, `clip-${clipHash.slice(0, 16)}-${imageSize}px.safetensors`)

  const keys = await mapLimit(paths, 64, imageKey)
  const rows = await readCache(cacheFile, metadata)
  const total = examples.length
  let D = rows.size > 0 ? rows.values().next().value!.length : clip.projectionDim
  // Rows of another width cannot be ours: recompute them.
  if (D !== undefined) for (const [k, v] of rows) if (v.length !== D) rows.delete(k)

  const pending = new Map<string, string>() // key -> path, in first-use order
  const uses = new Map<string, number>()
  let hits = 0
  keys.forEach((k, i) => {
    if (rows.has(k)) hits++
    else {
      if (!pending.has(k)) pending.set(k, paths[i]!)
      uses.set(k, (uses.get(k) ?? 0) + 1)
    }
  })
  const misses = total - hits
  let done = hits
  onProgress?.(done, total)

  if (pending.size > 0) {
    const todo = [...pending]
    let computed = 0
    try {
      for (let start = 0; start < todo.length; start += batchSize) {
        if (signal?.aborted) throw aborted()
        const batch = todo.slice(start, start + batchSize)
        const pixels = await clip.preprocess(batch.map(([, p]) => p))
        const feats = await clip.imageFeatures(pixels)
        if (feats.dtype !== 'float32' || feats.shape.length !== 2 || feats.shape[0] !== batch.length) {
          throw new SemicapError('E_SHAPE', `cachedImageFeatures: imageFeatures returned ${feats.dtype} [${feats.shape.join(', ')}], expected float32 [${batch.length}, D]`)
        }
        const width = feats.shape[1]!
        if (D === undefined || (rows.size === 0 && computed === 0)) D = width
        if (width !== D) throw new SemicapError('E_SHAPE', `cachedImageFeatures: imageFeatures returned width ${width}, expected ${D}`)
        const data = feats.data as Float32Array
        batch.forEach(([k], b) => {
          rows.set(k, data.slice(b * width, (b + 1) * width))
          done += uses.get(k)!
        })
        computed += batch.length
        onProgress?.(done, total)
      }
    } catch (err) {
      if (computed > 0) {
        await mkdir(dir, { recursive: true })
          .then(() => writeCache(cacheFile, rows, metadata))
          .catch((saveErr: unknown) => process.emitWarning(`cachedImageFeatures: could not save progress to ${cacheFile}: ${String(saveErr)}`))
      }
      throw err
    }
    await io(`cachedImageFeatures: creating ${dir}`, () => mkdir(dir, { recursive: true }))
    await writeCache(cacheFile, rows, metadata)
  }

  const width = D ?? 0
  const out = new Float32Array(total * width)
  keys.forEach((k, i) => out.set(rows.get(k)!, i * width))
  return { features: new Tensor('float32', [total, width], out), hits, misses, cacheFile }
}
