// The one place that loads the addon and types its surface. Everything native is reached through `native()`.
import { createRequire } from 'node:module'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chooseBlasCore, physicalCores, type BlasCoreChoice, type ThreadsChoice } from './cpu.js'
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
  /** false: a separate lm_head.weight (default true: logits against wte). */
  tieWordEmbeddings?: boolean
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
/** What a load reports: the CPU inference type actually used (a fallback says why in `note`), the kernels, packed bytes. */
export interface LoadedWeightsWire { dtype: 'float32' | 'bfloat16' | 'int8'; isa: string; packedBytes: number; note?: string }
export interface TowerOutputWire { lastHidden: WireTensor; pooled: WireTensor; features: WireTensor }
export interface DecodeOutputWire { ids: WireTensor; scores: WireTensor; features?: WireTensor }

export interface AddonClip {
  /** prepare: the towers laid out for the CPU kernels at load (default 'all'); the other one at its first call. */
  load(path: string | null, device: string, dtype?: string, prepare?: 'all' | 'vision' | 'text'): Promise<LoadedWeightsWire>
  vision(pixels: WireTensor): Promise<TowerOutputWire>
  imageFeatures(pixels: WireTensor): Promise<WireTensor>
  text(ids: WireTensor): Promise<TowerOutputWire>
  logitScale(): number
  save(path: string, metadata?: Record<string, string>): Promise<void>
  dispose(): void
}
export interface AddonGpt2 {
  load(path: string | null, device: string, dtype?: string): Promise<LoadedWeightsWire>
  logits(ids: WireTensor, prefix?: WireTensor | null): Promise<WireTensor>
  generate(prefix: WireTensor, opts: DecodeWire): Promise<DecodeOutputWire>
  save(path: string, metadata?: Record<string, string>): Promise<void>
  dispose(): void
}
export interface AddonCaptioner {
  loadGpt2(path: string | null, device: string, dtype?: string): Promise<LoadedWeightsWire>
  load(path: string, device: string, dtype?: string): Promise<LoadedWeightsWire>
  save(path: string, metadata: Record<string, string>): Promise<void>
  caption(pixels: WireTensor, opts: DecodeWire): Promise<DecodeOutputWire>
  captionFeatures(features: WireTensor, opts: DecodeWire): Promise<DecodeOutputWire>
  logits(ids: WireTensor, features: WireTensor): Promise<WireTensor>
  numParams(): number
  dispose(): void
}

/** One row's decode options in a decode batch: the decode wire plus its index in its request (with seed: its sampling seed). */
export interface BatchRowWire extends DecodeWire {
  row: number
}
/** What a row produced at a token boundary (native/batch_decode.h RowToken); `score` once finished. */
export interface RowTokenWire { rowId: number; token: number; finished: boolean; logp: number; score?: number }
/** Continuous batching over a captioner's GPT-2 (native/batch_binding.cc). */
export interface AddonDecodeBatch {
  /** Pixels [n,3,S,S] or CLIP features [n,clipDim], one options object per row: prefills them and returns their first tokens. */
  add(input: WireTensor, rows: BatchRowWire[]): Promise<RowTokenWire[]>
  /**
   * One token for every active row, or with burst > 1 (the slab path, all rows greedy) up to `burst` tokens per row
   * with one host sync: the tokens come step by step, rows in batch order within a step.
   */
  step(burst?: number): Promise<RowTokenWire[]>
  remove(rowIds: number[]): Promise<number>
  readonly size: number
  /** Rows the shared KV slab holds room for (the slab path: CUDA, or SEMICAP_BATCH_SLOTS=1); 0 on the CPU's per-row path and when no row is active. */
  readonly slots: number
  dispose(): void
}

export interface AddonTrainer {
  start(): Promise<TrainSummaryWire>
  abort(): void
}

// The trainer's configs: every field native/training_binding.cc reads (a missing one takes the native default; a
// misspelled one is a compile error in an object literal typed with these).
/** Steps, batch and the optimizer / schedule fields both trainer configs share (read_optimizer_fields). */
export interface OptimizerConfigWire {
  steps: number
  batchSize: number
  lr: number
  weightDecay: number
  beta1?: number
  beta2?: number
  adamEps?: number
  gradClip: number
  warmupSteps: number
  schedule: 'linear' | 'cosine' | 'constant'
}
/** CLIP contrastive / GPT-2 language-model pretraining (pretrain_config_from_js). */
export interface PretrainConfigWire extends OptimizerConfigWire {
  seed: number
}
/** c10d process group of a data-parallel run. */
export interface DistributedConfigWire {
  rank: number
  worldSize: number
  masterAddr: string
  masterPort: number
  backend: 'gloo' | 'nccl'
  timeoutMs: number
}
/** A captioner training stage (train_config_from_js; native/trainer.h TrainConfig). */
export interface TrainConfigWire extends OptimizerConfigWire {
  stage: 'supervised' | 'clip-reward'
  objective: 'ce' | 'scst'
  gradAccumulation: number
  samples: number
  maxTokens: number
  ceSteps: number
  temperature: number
  reward: 'refText' | 'refContrastive' | 'clipS' | 'custom'
  refMax: boolean
  clipW: number
  rewardScale: number
  contrastiveTau: number
  klCoef: number
  repetitionPenalty: number
  repetitionNgram: number
  ceWeight: number
  ceMixWeight: number
  seed: number
  trainLm: boolean
  bf16: boolean
  eosId: number
  stopIds: number[]
  checkpointDir: string
  checkpointEvery: number
  checkpointKeep: number
  checkpointConfigJson: string
  checkpointStateJson: string
  /** (source path, name in the checkpoint folder) */
  checkpointLinks: [string, string][]
  resumeDir: string
  startStep: number
  distributed?: DistributedConfigWire
}
/** A captioner stage's data (cloned by the trainer's constructor, on the JS thread). Index tensors are int64. */
export interface TrainDataWire {
  /** [N, D] cached CLIP image features */
  features: WireTensor
  /** images stage-1 SCST samples from, and the stage-2 pool */
  labeledImages: WireTensor
  unlabeledImages: WireTensor
  /** [M, L] GPT-2 ids of labeled captions, -1-padded, and each caption's image [M] */
  captionIds?: WireTensor
  captionImages?: WireTensor
  /** [R, D] CLIP text features of reference captions and each one's image [R] */
  referenceFeatures?: WireTensor
  referenceImages?: WireTensor
}
export interface ClipPretrainDataWire { pixels: WireTensor; ids: WireTensor }
export interface LmPretrainDataWire { ids: WireTensor }
/** One progress event (undefined where the native value is NaN). */
export interface ProgressWire {
  stage: string
  step: number
  totalSteps: number
  loss: number
  ce?: number
  reward?: number
  baselineReward?: number
  kl?: number
  lr: number
  gradNorm: number
  examplesPerSec: number
  seconds: number
  checkpoint?: string
}
export interface TrainSummaryWire { steps: number; lastLoss?: number; meanReward?: number; seconds: number; checkpoint?: string }
/**
 * The reward callback, called synchronously on the JS thread once per SCST step while the trainer thread waits:
 * sampled GPT-2 ids [N, L] (-1-padded) and their images [N] -> CLIP ids [N, T] to score natively, or rewards [N].
 */
export type ScoreAnswer = { clipIds?: WireTensor; rewards?: WireTensor }
/** May answer through a Promise: the native trainer's step waits until it settles. */
export type ScoreCallback = (ids: WireTensor, images: WireTensor) => ScoreAnswer | Promise<ScoreAnswer>
export interface AddonTrainerConstructor {
  /** GPUs this process sees (0 without CUDA). */
  cudaDeviceCount(): number
  new (model: AddonCaptioner, config: TrainConfigWire, data: TrainDataWire, onProgress: (p: ProgressWire) => void, onScore: ScoreCallback): AddonTrainer
  new (model: AddonClip, config: PretrainConfigWire, data: ClipPretrainDataWire, onProgress: (p: ProgressWire) => void, onScore: ScoreCallback): AddonTrainer
  new (model: AddonGpt2, config: PretrainConfigWire, data: LmPretrainDataWire, onProgress: (p: ProgressWire) => void, onScore: ScoreCallback): AddonTrainer
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
  /** Whether CPU inference products may use the addon's packed-weight kernels (native/cpu_kernels.h) instead of BLAS. */
  cpuGemm: boolean
  /** The BLAS libtorch calls, as that library reports itself (OpenBLAS: its config and the core it runs). */
  blas: { library: string; core: string }
  /** CPU features detected at run time and the kernels' instruction set (SEMICAP_CPU_ISA lowers it). */
  cpu: { isa: 'portable' | 'avx2' | 'avx512' | 'avx512bf16'; features: string[] }
  /**
   * The per-shape choices made so far (measured on a product's first call, kept in the choices file): for float32,
   * the addon's kernels or BLAS; for every type, when several threads could share a product, whether they do
   * ('kernel') or the calling thread runs it alone ('kernel1'). Times in microseconds, the fastest run seen;
   * null where that path was not a candidate. The split is timed again (at a shape's 1st, 16th and 256th call in a
   * process, in this process or later ones) until `checks` sessions reach 3; BLAS against the kernels is decided once.
   */
  kernelChoices: Array<{ type: 'float32' | 'bfloat16' | 'int8'; rows: string; K: number; N: number; threads: number; choice: 'kernel' | 'kernel1' | 'blas'; kernelUs: number | null; kernel1Us: number | null; blasUs: number | null; checks: number }>
  /**
   * The helper threads that share split products, attention and greedy picks with the calling thread
   * (native/cpu_pool.h): how many were started, jobs shared with them, jobs run alone because another caller had
   * them, how often a caller woke a sleeping helper, how often a helper slept right after a job because its caller
   * (training's products) asked it to, and how long a helper otherwise looks for the next job before sleeping
   * (SEMICAP_SPIN_US, default 200).
   */
  pool: { helpers: number; jobs: number; alone: number; wakes: number; rests: number; spinUs: number }
  /**
   * Products that SCST's forward over its samples took from the sampled decoding instead of computing them again
   * (native/packed.h, ProductTape; SEMICAP_SCST_REPLAY=0 turns it off), counted over the process.
   */
  replayedProducts: number
}

/** What the library decided about OpenBLAS's core type before libtorch loaded (see lib/cpu.ts). */
export let blasCoreChoice: BlasCoreChoice = { coreType: null, source: 'none' }
export let threadsChoice: ThreadsChoice = { threads: 1, source: 'libtorch' }
/** setThreads() records its choice here. */
export function setThreadsChoice(c: ThreadsChoice): void {
  threadsChoice = c
}

/** SEMICAP_THREADS, else OMP_NUM_THREADS (libtorch read it), else one thread per physical core (see physicalCores). */
function chooseThreads(a: Addon): ThreadsChoice {
  const threads = Number(process.env.SEMICAP_THREADS ?? '')
  if (Number.isInteger(threads) && threads > 0) {
    a.setNumThreads(threads)
    return { threads, source: 'SEMICAP_THREADS' }
  }
  const current = a.info().threads
  if (process.env.OMP_NUM_THREADS) return { threads: current, source: 'OMP_NUM_THREADS' }
  const cores = physicalCores()
  if (cores !== undefined && cores > current && cores <= 1024) {
    a.setNumThreads(cores)
    return { threads: cores, source: 'physical cores' }
  }
  return { threads: current, source: 'libtorch' }
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
  AddonTrainer: AddonTrainerConstructor
  AddonDecodeBatch: new (captioner: AddonCaptioner) => AddonDecodeBatch
  losses: LossesAddon
  /** AdamW with gradient clipping on small tensors (native/optim_binding.cc), for tests. */
  optim: { adamwSteps(params: WireTensor[], gradsPerStep: WireTensor[][], opts: { lr: number; maxNorm: number; weightDecay: number }): { params: WireTensor[]; norms: number[] } }
  setNumThreads(n: number): void
  info(): NativeInfo
  setCpuCacheLimit(bytes: number): CpuCacheStats
  emptyCpuCache(): CpuCacheStats
  /** Any weights format (native/safetensors.h WeightsFile): safetensors, a torch.save zip, a sharded `*.index.json`. */
  readSafetensorsHeader(path: string): Promise<SafetensorsHeader>
  /** Any weights format, like readSafetensorsHeader. */
  loadSafetensors(path: string): Promise<Record<string, WireTensor>>
  writeSafetensors(path: string, tensors: Record<string, WireTensor>, metadata?: Record<string, string>): Promise<void>
  /**
   * Reads any weights format and writes it as a safetensors file (atomic, streamed tensor by tensor). Metadata: the
   * source's, overridden by `metadata`. `onProgress(bytesWritten, totalBytes)` events arrive in order; the last one,
   * (total, total), before the promise resolves.
   */
  convertWeights(inPath: string, outPath: string, metadata?: Record<string, string> | null, onProgress?: ((bytesWritten: number, totalBytes: number) => void) | null): Promise<{ tensors: number; bytes: number }>
  /** A torch.save-compatible zip checkpoint (atomic). `aliases`: extra name -> tensor name whose storage it shares. */
  writeTorchCheckpoint(path: string, tensors: Record<string, WireTensor>, aliases?: Record<string, string> | null): Promise<void>
}

export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..')

let addon: Addon | undefined

/** Loads the addon once. Sets thread defaults first: they are read when libtorch's OpenMP starts. */
export function native(): Addon {
  if (addon) return addon
  // Spinning OpenMP workers starve OpenBLAS's threads (measured 2-4x slower on 2 cores): wait passively unless
  // the user chose otherwise.
  process.env.OMP_WAIT_POLICY ??= 'PASSIVE'
  // OpenBLAS reads its core type once, when libtorch loads it: unknown CPUs would get SSE3 kernels.
  blasCoreChoice = chooseBlasCore()
  const require = createRequire(import.meta.url)
  const load = require('node-gyp-build') as (dir: string) => Addon
  try {
    // SEMICAP_ADDON points at another build of the addon (a sanitizer build, say) instead of build/Release.
    const override = process.env.SEMICAP_ADDON
    addon = override ? (require(resolve(override)) as Addon) : load(packageRoot)
  } catch (err) {
    throw new SemicapError('E_NATIVE', `semicap: the native addon could not be loaded (${(err as Error).message}). Build it with \`npm rebuild semicap\`; it needs libtorch (see README).`, { cause: err })
  }
  threadsChoice = chooseThreads(addon)
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
