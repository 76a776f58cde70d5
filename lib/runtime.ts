// Process-wide runtime controls and safetensors file access.
import { blasCoreChoice, call, native, setThreadsChoice, threadsChoice, type CpuCacheStats, type NativeInfo, type SafetensorsHeader } from './native.js'
import type { BlasCoreChoice, ThreadsChoice } from './cpu.js'
import { Tensor } from './tensor.js'

/**
 * libtorch's version, CUDA availability, thread counts, how tensors crossed the boundary so far, the BLAS and its
 * core type (and whether semicap chose it: `blas.coreType`), the CPU's features and the kernels' choices.
 */
export function runtimeInfo(): NativeInfo & { blasCoreType: BlasCoreChoice; threadsChoice: ThreadsChoice } {
  const info = native().info()
  return { ...info, blasCoreType: blasCoreChoice, threadsChoice }
}

/** Intra-op threads for libtorch (process-wide). `SEMICAP_THREADS` sets it at load time. */
export function setThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw new RangeError('threads must be an integer in [1, 1024]')
  native().setNumThreads(n)
  setThreadsChoice({ threads: n, source: 'setThreads' })
}

/**
 * CPU tensors of 1 MiB and more are allocated through a cache: freed blocks are kept and reused, because first
 * touching fresh memory (page faults) cost more than the arithmetic in training steps and batched captioning.
 * The cache keeps at most `SEMICAP_CPU_CACHE_MB` (default: a quarter of RAM, at most 4 GiB) of free memory;
 * `dispose()` and the end of a training run empty it.
 */
export function cpuCacheStats(): CpuCacheStats {
  return native().info().cpuCache
}

/** Sets the most free memory the CPU cache keeps, in bytes (0: no caching; what is cached beyond it is freed). */
export function setCpuCacheLimit(bytes: number): CpuCacheStats {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes) || bytes < 0 || bytes > 9e15) throw new RangeError('bytes must be a number in [0, 9e15]')
  return native().setCpuCacheLimit(Math.floor(bytes))
}

/** Frees every cached block now (memory in use is untouched). */
export function emptyCpuCache(): CpuCacheStats {
  return native().emptyCpuCache()
}

export function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  if (typeof path !== 'string') throw new TypeError('path must be a string')
  return call(() => native().readSafetensorsHeader(path))
}

export async function loadSafetensors(path: string): Promise<Record<string, Tensor>> {
  if (typeof path !== 'string') throw new TypeError('path must be a string')
  const raw = await call(() => native().loadSafetensors(path))
  return Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, Tensor.fromWire(v)]))
}

/** Each tensor's wire for an async native call (host data copied now: see Tensor.toAsyncWire). */
function asyncWires(tensors: Record<string, Tensor>): Record<string, ReturnType<Tensor['toAsyncWire']>> {
  return Object.fromEntries(
    Object.entries(tensors).map(([k, t]) => {
      if (!(t instanceof Tensor)) throw new TypeError(`tensor '${k}' must be a Tensor`)
      return [k, t.toAsyncWire()]
    }),
  )
}

/** Writes tensors atomically (temp file + rename). Host data is copied when the call starts (see Tensor.toAsyncWire). */
export function writeSafetensors(path: string, tensors: Record<string, Tensor>, metadata: Record<string, string> = {}): Promise<void> {
  if (typeof path !== 'string') throw new TypeError('path must be a string')
  const wire = asyncWires(tensors)
  return call(() => native().writeSafetensors(path, wire, metadata))
}

/**
 * Writes any weights file the loader reads (safetensors, a torch.save zip such as pytorch_model.bin, a sharded
 * `*.index.json`) as a safetensors file, atomically, streaming tensor by tensor. The output's metadata is the
 * source's (a torch checkpoint lists its non-tensor leaves there) with `metadata`'s entries added. `onProgress`
 * gets (bytesWritten, totalBytes), in order, the last call (total, total) before the promise resolves.
 */
export function convertWeights(
  inPath: string,
  outPath: string,
  options: { metadata?: Record<string, string>; onProgress?: (bytesWritten: number, totalBytes: number) => void } = {},
): Promise<{ tensors: number; bytes: number }> {
  if (typeof inPath !== 'string' || typeof outPath !== 'string') throw new TypeError('inPath and outPath must be strings')
  return call(() => native().convertWeights(inPath, outPath, options.metadata ?? null, options.onProgress ?? null))
}

/**
 * Writes tensors as a torch.save-compatible checkpoint (zip format; `torch.load(path, weights_only=True)` reads it),
 * atomically. `aliases` maps extra names to a tensor of `tensors` whose storage they share (a tied lm_head.weight ->
 * transformer.wte.weight), as torch.save writes tied weights. Host data is copied when the call starts.
 */
export function writeTorchCheckpoint(path: string, tensors: Record<string, Tensor>, aliases: Record<string, string> = {}): Promise<void> {
  if (typeof path !== 'string') throw new TypeError('path must be a string')
  const wire = asyncWires(tensors)
  return call(() => native().writeTorchCheckpoint(path, wire, aliases))
}
