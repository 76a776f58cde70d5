// Shared helpers of the dataset readers: file reading with E_IO errors, JSON parsing with E_DATA errors.
import { readFile } from 'node:fs/promises'
import { SemicapError } from '../errors.js'

/** Runs a filesystem operation; a failure becomes E_IO naming `what`. */
export async function io<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    if (err instanceof SemicapError) throw err
    const code = (err as NodeJS.ErrnoException)?.code
    const msg = err instanceof Error ? err.message : String(err)
    throw new SemicapError('E_IO', `${what}: ${code ? `${code}: ` : ''}${msg}`, { cause: err })
  }
}

export function checkPath(value: unknown, fn: string, name: string): string {
  if (typeof value !== 'string' || value === '') throw new TypeError(`${fn}: ${name} must be a non-empty string`)
  return value
}

/** 1-based line of a character offset. */
export function lineOf(text: string, offset: number): number {
  let line = 1
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++
  return line
}

/** JSON.parse with an E_DATA error that names the file (and the line, when V8 gives a position). */
export function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text)
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err)
    const pos = /at position (\d+)/.exec(msg)
    const line = pos && !/\bline \d+/.test(msg) ? ` (line ${lineOf(text, Number(pos[1]))})` : ''
    throw new SemicapError('E_DATA', `${where}: invalid JSON: ${msg}${line}`, { cause: err })
  }
}

/** Reads and parses a JSON file: E_IO when it cannot be read, E_DATA when it is not JSON. */
export async function readJsonFile(file: string, fn: string): Promise<unknown> {
  const text = await io(`${fn}: reading ${file}`, () => readFile(file, 'utf8'))
  return parseJson(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text, `${fn}: ${file}`)
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Plain code-unit order: the same on every machine and locale. */
export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
