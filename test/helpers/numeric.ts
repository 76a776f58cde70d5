import type { Tensor } from '../../lib/tensor.js'

/** max |a - b| / max |ref|: the relative error the golden README specifies. */
export function relError(actual: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (actual.length !== ref.length) throw new Error(`length ${actual.length} != ${ref.length}`)
  let diff = 0
  let scale = 0
  for (let i = 0; i < ref.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - ref[i]))
    scale = Math.max(scale, Math.abs(ref[i]))
  }
  return diff / scale
}

export function floats(t: Tensor): Float32Array {
  return t.data as Float32Array
}

/** Columns [from, to) of dimension 1 of a [B, T, V] tensor, flattened. */
export function slice3(t: Tensor, from: number, to: number): Float32Array {
  const [B, T, V] = t.shape
  const d = t.data as Float32Array
  const out = new Float32Array(B * (to - from) * V)
  for (let b = 0; b < B; b++) out.set(d.subarray((b * T + from) * V, (b * T + to) * V), b * (to - from) * V)
  return out
}
