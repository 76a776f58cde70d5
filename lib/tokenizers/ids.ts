/** Argument checks shared by the tokenizers' decode methods. */

/** Token ids as numbers: accepts number arrays and typed arrays, including BigInt64Array from int64 tensors. */
export function toIdArray(ids: ArrayLike<number | bigint> | Iterable<number | bigint>, what: string): number[] {
  if (ids === null || typeof ids !== 'object') throw new TypeError(`${what}: ids must be an array of integers`)
  const out: number[] = []
  for (const v of Array.from(ids as ArrayLike<number | bigint>)) {
    const id = typeof v === 'bigint' ? Number(v) : v
    if (typeof id !== 'number' || !Number.isInteger(id)) throw new TypeError(`${what}: id ${String(v)} is not an integer`)
    out.push(id)
  }
  return out
}

export function checkText(text: unknown, what: string): string {
  if (typeof text !== 'string') throw new TypeError(`${what}: text must be a string, got ${typeof text}`)
  return text
}

export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
