// JSON Lines datasets: {"image", "captions", "id"?} per line.
import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { SemicapError } from '../errors.js'
import type { Dataset, Example } from './types.js'
import { checkPath, io, isObject } from './util.js'

/**
 * Reads a JSONL file: one `{"image": path, "captions": [...], "id"?: string}` per line. `image` is relative to the
 * JSONL file's folder (or absolute); an empty `captions` array marks an unlabeled image; `id` defaults to `image` as
 * written. Blank lines are skipped. Errors are E_DATA and name file:line.
 */
export async function readJsonl(path: string): Promise<Dataset> {
  checkPath(path, 'readJsonl', 'path')
  const text = await io(`readJsonl: reading ${path}`, () => readFile(path, 'utf8'))
  const dir = dirname(resolve(path))
  const examples: Example[] = []
  const seen = new Map<string, number>()
  const lines = (text.charCodeAt(0) === 0xfeff ? text.slice(1) : text).split('\n')
  lines.forEach((line, i) => {
    if (line.trim() === '') return
    const where = `readJsonl: ${path}:${i + 1}`
    let rec: unknown
    try {
      rec = JSON.parse(line)
    } catch (err) {
      throw new SemicapError('E_DATA', `${where}: invalid JSON: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
    }
    if (!isObject(rec)) throw new SemicapError('E_DATA', `${where}: expected an object {"image", "captions"}`)
    const { image, captions, id } = rec
    if (typeof image !== 'string' || image === '') throw new SemicapError('E_DATA', `${where}: missing "image" (a path string)`)
    if (!Array.isArray(captions)) throw new SemicapError('E_DATA', `${where}: missing "captions" (an array of strings; [] when unlabeled)`)
    const bad = captions.findIndex((c) => typeof c !== 'string')
    if (bad >= 0) throw new SemicapError('E_DATA', `${where}: captions[${bad}] is not a string`)
    if (id !== undefined && typeof id !== 'string' && typeof id !== 'number') throw new SemicapError('E_DATA', `${where}: "id" must be a string`)
    const exId = id === undefined ? image : String(id)
    const prev = seen.get(exId)
    if (prev !== undefined) throw new SemicapError('E_DATA', `${where}: duplicate id '${exId}' (also line ${prev})`)
    seen.set(exId, i + 1)
    examples.push({ id: exId, image: resolve(dir, image), captions: (captions as string[]).map((c) => c.trim()).filter((c) => c !== '') })
  })
  return { examples, source: resolve(path) }
}
