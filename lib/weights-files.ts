// Which weights file a model folder holds. Hugging Face folders come with one of: model.safetensors, a sharded
// safetensors set (model.safetensors.index.json + shards), pytorch_model.bin (torch.save's zip format), or a sharded
// .bin set. The native loader reads every one of these from one path; this module only picks the path, preferring
// safetensors (no pickle to parse, and what the folder's authors converted to last).
import { createHash } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { SemicapError } from './errors.js'

/** In order of preference. */
export const WEIGHTS_FILE_NAMES = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json'] as const

async function isFile(p: string): Promise<boolean> {
  return stat(p).then(
    (s) => s.isFile(),
    () => false,
  )
}

/** The weights file of a model folder (see WEIGHTS_FILE_NAMES), or E_CHECKPOINT saying what was looked for. */
export async function findWeights(dir: string): Promise<string> {
  for (const name of WEIGHTS_FILE_NAMES) {
    const p = join(dir, name)
    if (await isFile(p)) return p
  }
  throw new SemicapError('E_CHECKPOINT', `${dir}: no weights found (looked for ${WEIGHTS_FILE_NAMES.join(', ')})`)
}

/**
 * The files a weights path stands for: itself, plus its shards when it is an index. Shard names must be plain file
 * names in the index's folder (the native loader enforces the same).
 */
export async function weightsFileSet(path: string): Promise<string[]> {
  if (!path.endsWith('.index.json')) return [path]
  let index: unknown
  try {
    index = JSON.parse(await readFile(path, 'utf8'))
  } catch (err) {
    throw new SemicapError('E_CHECKPOINT', `${path}: not a readable JSON index (${(err as Error).message})`, { cause: err })
  }
  const map = (index as { weight_map?: unknown })?.weight_map
  if (map === null || typeof map !== 'object' || Array.isArray(map)) throw new SemicapError('E_CHECKPOINT', `${path}: no "weight_map" object`)
  const shards = new Set<string>()
  for (const [name, file] of Object.entries(map)) {
    if (typeof file !== 'string' || file === '' || file !== basename(file) || file === '.' || file === '..') {
      throw new SemicapError('E_CHECKPOINT', `${path}: weight_map["${name}"] must name a file in the same folder, got ${JSON.stringify(file)}`)
    }
    shards.add(file)
  }
  return [path, ...[...shards].map((f) => join(dirname(path), f))]
}

/**
 * A content hash of the weights a path stands for (an index and all its shards), for caches keyed by weights;
 * `fileHash` hashes one file (callers pass their memoised one).
 */
export async function weightsHash(path: string, fileHash: (file: string) => Promise<string>): Promise<string> {
  const files = await weightsFileSet(path)
  if (files.length === 1) return fileHash(path)
  const h = createHash('sha256')
  for (const f of files) h.update(`${basename(f)}:${await fileHash(f)}\n`)
  return h.digest('hex')
}
