// The one place that loads the addon and types its surface. Everything native is reached through `native()`.
import { createRequire } from 'node:module'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { SemicapError, type ErrorCode } from './errors.js'

/** A tensor as it crosses the boundary: host data (borrowed, not copied) or a handle to device memory. */
export interface WireTensor {
  dtype: string
  shape: number[]
  device?: string
  data?: ArrayBufferView
  native?: AddonTensor
}

export interface AddonTensor {
  toHost(): WireTensor
  dispose(): void
}

export interface ClipTowerWire { hidden: number; intermediate: number; heads: number; layers: number; act: string; eps: number }
export interface ClipConfigWire {
  vision: ClipTowerWire
  text: ClipTowerWire
  imageSize: number
  patchSize: number
  numChannels: number
  vocabSize: number
  maxPositions: number
  eosTokenId: number
  projectionDim: number
}
export interface Gpt2ConfigWire {
  nEmbd: number; nHead: number; nLayer: number; nPositions: number; vocabSize: number; nInner: number; eps: number; act: string; eosTokenId: number
}
export interface MapperConfigWire {
  type: 'mlp' | 'transformer'; clipDim: number; nEmbd: number; prefixLength: number; clipLength: number; layers: number; heads: number; mlpRatio: number
}
export interface DecodeWire {
  method: 'greedy' | 'sample' | 'beam'
  maxTokens: number
  minTokens: number
  beams: number
  topK: number
  temperature: number
  topP: number
  seed: number
  stopIds: number[]
  eosId: number
  bf16: boolean
}
export interface TowerOutputWire { lastHidden: WireTensor; pooled: WireTensor; features: WireTensor }
export interface DecodeOutputWire { ids: WireTensor; scores: WireTensor; features?: WireTensor }

export interface AddonClip {
  load(path: string | null, device: string): Promise<void>
  vision(pixels: WireTensor): Promise<TowerOutputWire>
  text(ids: WireTensor): Promise<TowerOutputWire>
  logitScale(): number
  save(path: string, metadata?: Record<string, string>): Promise<void>
  dispose(): void
}
export interface AddonGpt2 {
  load(path: string | null, device: string): Promise<void>
  logits(ids: WireTensor, prefix?: WireTensor | null): Promise<WireTensor>
  generate(prefix: WireTensor, opts: DecodeWire): Promise<DecodeOutputWire>
  save(path: string, metadata?: Record<string, string>): Promise<void>
  dispose(): void
}
export interface AddonCaptioner {
  loadGpt2(path: string | null, device: string): Promise<void>
  load(path: string, device: string): Promise<void>
  save(path: string, metadata: Record<string, string>): Promise<void>
  caption(pixels: WireTensor, opts: DecodeWire): Promise<DecodeOutputWire>
  captionFeatures(features: WireTensor, opts: DecodeWire): Promise<DecodeOutputWire>
  logits(ids: WireTensor, features: WireTensor): Promise<WireTensor>
  numParams(): number
  dispose(): void
}

export interface AddonTrainer {
  start(): Promise<unknown>
  abort(): void
}

export interface LossesAddon {
  tokenLogprobs(logits: WireTensor, ids: WireTensor): WireTensor
  ceLoss(logits: WireTensor, ids: WireTensor): WireTensor
  scstLoss(logits: WireTensor, ids: WireTensor, reward: WireTensor, baseline: WireTensor): WireTensor
  klPenalty(policyLogits: WireTensor, referenceLogits: WireTensor, ids: WireTensor): WireTensor
  repeatedNgrams(ids: WireTensor, n: number): WireTensor
  clipSReward(text: WireTensor, image: WireTensor, w: number): WireTensor
  refTextReward(text: WireTensor, textImage: WireTensor, refs: WireTensor, refOwner: WireTensor, useMax: boolean): WireTensor
  refContrastiveReward(text: WireTensor, textImage: WireTensor, refs: WireTensor, refOwner: WireTensor, batchImages: WireTensor, tau: number): WireTensor
}

export interface SafetensorsHeader {
  names: string[]
  metadata: Record<string, string>
  tensors: Record<string, { dtype: string; shape: number[] }>
}

export interface NativeInfo {
  torchVersion: string
  cuda: boolean
  threads: number
  interopThreads: number
  parallelInfo: string
  bridge: { external: number; copied: number }
  cpuCache: CpuCacheStats
  /** Whether CPU inference products use the addon's AVX-512 kernels (native/cpu_gemm.h) instead of BLAS. */
  cpuGemm: boolean
}

/** The CPU caching allocator's counters (blocks of 1 MiB and more are kept on free and reused). */
export interface CpuCacheStats {
  installed: boolean
  /** Large allocations served from the cache / from the system. */
  hits: number
  misses: number
  /** Free bytes held for reuse, large blocks in use, and the most free bytes kept. */
  cachedBytes: number
  inUseBytes: number
  limitBytes: number
}

export interface Addon {
  AddonClip: new (config: ClipConfigWire & { seed?: number }) => AddonClip
  AddonGpt2: new (config: Gpt2ConfigWire & { seed?: number }) => AddonGpt2
  AddonCaptioner: new (clip: AddonClip, config: { gpt2: Gpt2ConfigWire; mapper: MapperConfigWire; normalizePrefix: boolean; seed?: number }) => AddonCaptioner
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  AddonTrainer: new (model: AddonCaptioner | AddonClip | AddonGpt2, config: object, data: Record<string, WireTensor>, onProgress: (p: any) => void, onScore: (ids: WireTensor, images: WireTensor) => object) => AddonTrainer
  losses: LossesAddon
  setNumThreads(n: number): void
  info(): NativeInfo
  setCpuCacheLimit(bytes: number): CpuCacheStats
  emptyCpuCache(): CpuCacheStats
  readSafetensorsHeader(path: string): Promise<SafetensorsHeader>
  loadSafetensors(path: string): Promise<Record<string, WireTensor>>
  writeSafetensors(path: string, tensors: Record<string, WireTensor>, metadata?: Record<string, string>): Promise<void>
}

export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..')

let addon: Addon | undefined

/** Loads the addon once. Sets thread defaults first: they are read when libtorch's OpenMP starts. */
export function native(): Addon {
  if (addon) return addon
  // Spinning OpenMP workers starve OpenBLAS's threads (measured 2-4x slower on 2 cores): wait passively unless
  // the user chose otherwise.
  process.env.OMP_WAIT_POLICY ??= 'PASSIVE'
  const require = createRequire(import.meta.url)
  const load = require('node-gyp-build') as (dir: string) => Addon
  try {
    // SEMICAP_ADDON points at another build of the addon (a sanitizer build, say) instead of build/Release.
    const override = process.env.SEMICAP_ADDON
    addon = override ? (require(resolve(override)) as Addon) : load(packageRoot)
  } catch (err) {
    throw new SemicapError('E_NATIVE', `semicap: the native addon could not be loaded (${(err as Error).message}). Build it with \`npm rebuild semicap\`; it needs libtorch (see README).`, { cause: err })
  }
  const threads = Number(process.env.SEMICAP_THREADS ?? '')
  if (Number.isInteger(threads) && threads > 0) addon.setNumThreads(threads)
  return addon
}

/** Turns an error thrown by native code (an Error with `.code`) into a SemicapError with the same code. */
export function nativeError(err: unknown): unknown {
  if (err instanceof SemicapError || !(err instanceof Error)) return err
  const code = (err as Error & { code?: string }).code
  if (typeof code === 'string' && code.startsWith('E_')) return new SemicapError(code as ErrorCode, err.message)
  return err
}

/** Awaits a native promise (or runs a sync native call), keeping the caller's stack and mapping error codes. */
export async function call<T>(fn: () => Promise<T> | T): Promise<T> {
  const holder: { stack?: string } = {}
  Error.captureStackTrace(holder, call)
  try {
    return await fn()
  } catch (err) {
    const mapped = nativeError(err)
    if (mapped instanceof Error && holder.stack) mapped.stack = `${mapped.name}: ${mapped.message}\n${holder.stack.split('\n').slice(1).join('\n')}`
    throw mapped
  }
}

/** Runs a synchronous native call, mapping error codes. */
export function callSync<T>(fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    throw nativeError(err)
  }
}
