/** Shared helpers of the n-gram metrics. */
import { SemicapError } from '../errors.js'

/**
 * Counts of the 1..n-grams of a token list, one Map per order (index n-1), keyed by the tokens
 * joined with single spaces (tokens never contain whitespace, so the key is unambiguous).
 * Keys are grown by appending one token, which is much cheaper than slicing and joining.
 */
export function ngramCountsByOrder(words: readonly string[], n: number): Map<string, number>[] {
  const byOrder = Array.from({ length: n }, () => new Map<string, number>())
  for (let i = 0; i < words.length; i++) {
    let g = words[i]!
    for (let k = 0; k < n && i + k < words.length; k++) {
      if (k > 0) g += ' ' + words[i + k]!
      const m = byOrder[k]!
      m.set(g, (m.get(g) ?? 0) + 1)
    }
  }
  return byOrder
}

/** Counts of all 1..n-grams in one Map (the key's n is its number of spaces + 1). */
export function ngramCounts(words: readonly string[], n: number): Map<string, number> {
  const all = new Map<string, number>()
  for (const m of ngramCountsByOrder(words, n)) for (const [g, c] of m) all.set(g, c)
  return all
}

/** Validates parallel candidate / reference arrays as pycocoevalcap's asserts do. */
export function checkPairs(
  fn: string,
  candidates: readonly string[],
  references: readonly (readonly string[])[],
): void {
  if (!Array.isArray(candidates)) throw new TypeError(`${fn}: candidates must be an array of strings`)
  if (!Array.isArray(references)) throw new TypeError(`${fn}: references must be an array of string arrays`)
  if (candidates.length !== references.length) {
    throw new SemicapError(
      'E_VALUE',
      `${fn}: ${candidates.length} candidates but ${references.length} reference lists; they must pair up`,
    )
  }
  for (let i = 0; i < candidates.length; i++) {
    if (typeof candidates[i] !== 'string') throw new TypeError(`${fn}: candidate ${i} is not a string`)
    const refs = references[i]
    if (!Array.isArray(refs)) throw new TypeError(`${fn}: references[${i}] is not an array`)
    if (refs.length === 0) throw new SemicapError('E_VALUE', `${fn}: image ${i} has no reference captions`)
    for (const r of refs) if (typeof r !== 'string') throw new TypeError(`${fn}: references[${i}] has a non-string`)
  }
}
