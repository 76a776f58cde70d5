// A folder of images: unlabeled examples.
import { readdir, stat } from 'node:fs/promises'
import { extname, join, resolve } from 'node:path'
import { SemicapError } from '../errors.js'
import type { Dataset, Example } from './types.js'
import { checkPath, compareStrings, io } from './util.js'

/** Extensions of the formats the prebuilt sharp decodes (lower case, with the dot). */
export const IMAGE_EXTENSIONS: ReadonlySet<string> = new Set(['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif'])

export interface ImageFolderOptions {
  /** Descend into subfolders (default false). Symlinked folders are not followed. */
  recursive?: boolean
}

/**
 * Every image file in `dir` (by extension, case-insensitive: jpg, jpeg, png, webp, gif, tif, tiff, avif) as an
 * Example with no captions. Hidden entries (names starting with '.') are skipped. Sorted by relative path in plain
 * code-unit order; the id is the relative path with '/' separators.
 */
export async function readImageFolder(dir: string, options: ImageFolderOptions = {}): Promise<Dataset> {
  checkPath(dir, 'readImageFolder', 'dir')
  if (options === null || typeof options !== 'object') throw new TypeError('readImageFolder: options must be an object')
  const { recursive = false } = options
  if (typeof recursive !== 'boolean') throw new TypeError('readImageFolder: recursive must be a boolean')
  const root = resolve(dir)
  const st = await io(`readImageFolder: ${root}`, () => stat(root))
  if (!st.isDirectory()) throw new SemicapError('E_IO', `readImageFolder: ${root} is not a directory`)
  const found: string[] = []
  const walk = async (rel: string): Promise<void> => {
    const abs = rel === '' ? root : join(root, rel)
    const entries = await io(`readImageFolder: reading ${abs}`, () => readdir(abs, { withFileTypes: true }))
    for (const entry of entries) {
      if (entry.name.startsWith('.')) continue
      const childRel = rel === '' ? entry.name : `${rel}/${entry.name}`
      let isFile = entry.isFile()
      if (entry.isSymbolicLink()) {
        const target = await stat(join(abs, entry.name)).catch(() => undefined)
        isFile = target?.isFile() ?? false
      }
      if (entry.isDirectory()) {
        if (recursive) await walk(childRel)
      } else if (isFile && IMAGE_EXTENSIONS.has(extname(entry.name).toLowerCase())) {
        found.push(childRel)
      }
    }
  }
  await walk('')
  found.sort(compareStrings)
  const examples: Example[] = found.map((rel) => ({ id: rel, image: join(root, ...rel.split('/')), captions: [] }))
  return { examples, source: root }
}
