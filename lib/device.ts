import { SemicapError } from './errors.js'
import { native } from './native.js'

export type DeviceOption = 'cpu' | 'cuda' | 'auto' | `cuda:${number}`

/**
 * The type CPU inference weights are converted to at load, accumulated in float32. Where the CPU has AVX512-BF16,
 * bfloat16 products (and CLIP's int8 ones) multiply in bfloat16 (activations rounded too); elsewhere in float32.
 */
export type InferenceDtype = 'float32' | 'bfloat16' | 'int8'

/** Validates a `dtype` option: undefined means float32; reduced types are for CPU inference only. */
export function resolveDtype(dtype: unknown, device: string): InferenceDtype {
  if (dtype === undefined) return 'float32'
  if (dtype !== 'float32' && dtype !== 'bfloat16' && dtype !== 'int8') throw new TypeError(`dtype must be 'float32', 'bfloat16' or 'int8', got ${JSON.stringify(dtype)}`)
  if (dtype !== 'float32' && device !== 'cpu') throw new SemicapError('E_CONFIG', `dtype '${dtype}' converts weights for CPU inference; on ${device} load float32`)
  return dtype
}

/** What a native load reported: the weights' inference type (which may fall back to float32) and the kernels. */
export interface LoadedWeights {
  dtype: InferenceDtype
  isa: string
  packedBytes: number
  note?: string
}

/** Records a load's report; a fallback from the asked type is announced once as a process warning. */
export function loadedWeights(r: LoadedWeights | undefined, asked: InferenceDtype): LoadedWeights {
  const out = r ?? { dtype: asked, isa: 'none', packedBytes: 0 }
  if (out.note) process.emitWarning(`semicap: ${out.note}`, { code: 'SEMICAP_DTYPE_FALLBACK' })
  return out
}

/** 'auto' means CUDA when this libtorch has it and a GPU is visible, else the CPU. */
export function resolveDevice(device: DeviceOption | undefined): string {
  const d = device ?? 'auto'
  if (d === 'auto') return native().info().cuda ? 'cuda' : 'cpu'
  if (d === 'cpu' || d === 'cuda' || /^cuda:\d+$/.test(d)) {
    if (d !== 'cpu' && !native().info().cuda) throw new SemicapError('E_DEVICE', `device '${d}' requested but this libtorch has no CUDA (or no GPU is visible)`)
    return d
  }
  throw new TypeError(`device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got ${JSON.stringify(device)}`)
}
