/**
 * A small seeded PRNG (mulberry32) for the synthetic world. Everything in lib/world is a pure
 * function of integer seeds, so scenes, captions and pixels are reproducible across runs and
 * machines (Math.random is never used).
 */
import { SemicapError } from '../errors.js'

/** Murmur3's 32-bit finaliser: spreads nearby seeds (0, 1, 2...) into unrelated streams. */
function fmix32(h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/**
 * A child seed from a parent seed and labels (split names, indices, purposes). Lets each scene and
 * each caption set have its own stream, so e.g. adding train images never changes the test set.
 */
export function deriveSeed(seed: number, ...parts: Array<number | string>): number {
  let h = fmix32((seed >>> 0) ^ 0x9e3779b9)
  for (const part of parts) {
    const s = typeof part === 'number' ? `#${part}` : part
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193)
    h = fmix32(h ^ 0x7f4a7c15)
  }
  return h
}

export class Rng {
  private state: number

  constructor(seed: number) {
    if (!Number.isInteger(seed)) {
      throw new SemicapError('E_VALUE', `Rng: seed must be an integer, got ${seed}`)
    }
    this.state = fmix32(seed >>> 0)
  }

  /** Uniform float in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0)
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  /** Uniform integer in [min, max], both inclusive. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1))
  }

  /** Uniform float in [min, max). */
  uniform(min: number, max: number): number {
    return min + this.next() * (max - min)
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new SemicapError('E_VALUE', 'Rng.pick: empty array')
    return items[Math.floor(this.next() * items.length)] as T
  }

  /** A shuffled copy (Fisher-Yates); the input is left alone. */
  shuffle<T>(items: readonly T[]): T[] {
    const out = items.slice()
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1))
      const tmp = out[i] as T
      out[i] = out[j] as T
      out[j] = tmp
    }
    return out
  }

  /** An independent generator seeded from this one's next draw and the given labels. */
  fork(...parts: Array<number | string>): Rng {
    return new Rng(deriveSeed(Math.floor(this.next() * 4294967296), ...parts))
  }
}
