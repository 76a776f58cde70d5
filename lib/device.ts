import { SemicapError } from './errors.js'
import { native } from './native.js'

export type DeviceOption = 'cpu' | 'cuda' | 'auto' | `cuda:${number}`

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
