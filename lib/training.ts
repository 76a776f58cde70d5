// captioner.train(): validates options into one plain config, prepares the data once (cached CLIP features,
// tokenised captions, reference text features), then hands everything to the native trainer, which runs on its
// own thread. Progress arrives as events; an AbortSignal stops the run within one step.
import { EventEmitter } from 'node:events'
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import type { Captioner } from './captioner.js'
import { cachedImageFeatures, dataset, type Dataset, type Example } from './data/index.js'
import { stopTokenIds } from './decoding.js'
import { AbortError, SemicapError } from './errors.js'
import { call, native, type WireTensor } from './native.js'
import { Tensor } from './tensor.js'

export interface RewardOptions {
  /** refText (stage 1 default), refContrastive, clipS (stage 2 default), or custom with `fn`. */
  type?: 'refText' | 'refContrastive' | 'clipS' | 'custom'
  /** refText: mean (default) or max cosine over the image's references. */
  aggregate?: 'mean' | 'max'
  /** CLIP-S weight w (default 2.5). */
  w?: number
  /** Text put before each caption for CLIP-S (default "A photo depicts "). */
  prefix?: string
  /** Multiplies rewards and baselines (default 1). */
  scale?: number
  /** refContrastive temperature (default 0.1). */
  tau?: number
  /** custom: rewards for captions (one number each); imageIds say whose image each caption is. */
  fn?: (captions: string[], imageIds: string[]) => number[] | Promise<number[]>
}

/** Data-parallel training over processes (c10d: Gloo for CPU tensors, NCCL for CUDA). */
export interface DistributedOptions {
  rank?: number
  worldSize?: number
  masterAddr?: string
  masterPort?: number
  backend?: 'gloo' | 'nccl'
  /** How long a collective waits for a peer before failing (default 60 s). */
  timeoutMs?: number
}

/** torchrun-style: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the environment fill what `o` leaves out. */
export function resolveDistributed(o: boolean | DistributedOptions | undefined, device: string): Required<DistributedOptions> | undefined {
  if (o === undefined || o === false) return undefined
  if (o !== true && (o === null || typeof o !== 'object')) throw new TypeError('distributed must be true or an object')
  const given = o === true ? {} : o
  const env = process.env
  const int = (v: unknown, name: string, min: number, max: number): number => {
    const n = typeof v === 'string' ? Number(v) : v
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) throw new RangeError(`distributed.${name} must be an integer in [${min}, ${max}], got ${String(v)}`)
    return n
  }
  const worldSize = int(given.worldSize ?? env.WORLD_SIZE ?? 1, 'worldSize', 1, 4096)
  const rank = int(given.rank ?? env.RANK ?? 0, 'rank', 0, worldSize - 1)
  const backend = given.backend ?? (device.startsWith('cuda') ? 'nccl' : 'gloo')
  if (backend !== 'gloo' && backend !== 'nccl') throw new RangeError(`distributed.backend must be 'gloo' or 'nccl'`)
  return {
    rank,
    worldSize,
    masterAddr: given.masterAddr ?? env.MASTER_ADDR ?? '127.0.0.1',
    masterPort: int(given.masterPort ?? env.MASTER_PORT ?? 29500, 'masterPort', 1, 65535),
    backend,
    timeoutMs: int(given.timeoutMs ?? 60_000, 'timeoutMs', 100, 86_400_000),
  }
}

export interface TrainOptions {
  stage: 'supervised' | 'clip-reward'
  /** Examples with captions: an array, a Dataset, or a path dataset() reads. */
  labeled?: Example[] | Dataset | string
  /** Images without captions (stage 2). */
  unlabeled?: Example[] | Dataset | string
  steps?: number
  epochs?: number
  batchSize?: number
  lr?: number
  weightDecay?: number
  betas?: [number, number]
  warmupSteps?: number
  schedule?: 'linear' | 'cosine' | 'constant'
  gradClip?: number
  gradAccumulation?: number
  /** Stage 1: 'ce' (teacher forcing, default) or 'scst' (contrast generated captions with the references). */
  objective?: 'ce' | 'scst'
  /** Stage 1 scst: this many CE steps first (CE then reward, in sequence). */
  ceSteps?: number
  /** Stage 1 scst: + ceWeight * CE on the same images' captions (mixed). */
  ceWeight?: number
  /** Samples per image for SCST (default 5). */
  samples?: number
  temperature?: number
  /** Longest sampled caption in tokens (the length limit). Default 20. */
  maxTokens?: number
  /** Longest training caption in tokens (longer ones are cut). Default 40. */
  maxCaptionTokens?: number
  reward?: RewardOptions
  /** Per-token KL penalty to a frozen copy of the starting model (stage 2 against reward hacking). */
  klCoef?: number
  /** Reward minus this times the number of repeated n-grams. */
  repetitionPenalty?: number
  repetitionNgram?: number
  /** Stage 2: + weight * CE on labeled batches. */
  ceMix?: { weight: number }
  trainLm?: boolean
  seed?: number
  /** bf16 autocast (CUDA only). Default: on for CUDA. */
  bf16?: boolean
  checkpointDir?: string
  checkpointEvery?: number
  checkpointKeep?: number
  /** true: continue from checkpointDir's latest checkpoint; a string: from that checkpoint folder. */
  resume?: boolean | string
  /**
   * Data-parallel training: true takes RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from the environment (as
   * torchrun sets them). batchSize is per rank; rank 0 alone writes checkpoints.
   */
  distributed?: boolean | DistributedOptions
  /** Where CLIP image features are cached (default $SEMICAP_CACHE or ~/.cache/semicap/features). */
  featureCache?: string
  signal?: AbortSignal
}

export interface TrainProgress {
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

export interface TrainSummary {
  steps: number
  lastLoss?: number
  meanReward?: number
  seconds: number
  checkpoint?: string
}

/** A training run: an EventEmitter ('progress', 'prepare', 'checkpoint') that is also a Promise of the summary. */
export class TrainingRun extends EventEmitter implements PromiseLike<TrainSummary> {
  readonly #promise: Promise<TrainSummary>
  readonly #controller = new AbortController()

  constructor(start: (run: TrainingRun, signal: AbortSignal) => Promise<TrainSummary>) {
    super()
    // Start after listeners have been attached in the caller's tick.
    this.#promise = Promise.resolve().then(() => start(this, this.#controller.signal))
    this.#promise.catch(() => undefined)
  }

  abort(reason?: unknown): void {
    this.#controller.abort(reason)
  }

  then<A = TrainSummary, B = never>(ok?: ((v: TrainSummary) => A | PromiseLike<A>) | null, bad?: ((e: unknown) => B | PromiseLike<B>) | null): Promise<A | B> {
    return this.#promise.then(ok, bad)
  }
  catch<B = never>(bad?: ((e: unknown) => B | PromiseLike<B>) | null): Promise<TrainSummary | B> {
    return this.#promise.catch(bad)
  }
}

function posInt(v: unknown, name: string, fallback: number | undefined, min = 1): number | undefined {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${String(v)}`)
  return v
}
function posNum(v: unknown, name: string, fallback: number, allowZero = false): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) throw new RangeError(`${name} must be a ${allowZero ? 'non-negative' : 'positive'} number, got ${String(v)}`)
  return v
}

async function examplesOf(v: Example[] | Dataset | string | undefined, what: string): Promise<Example[]> {
  if (v === undefined) return []
  if (typeof v === 'string') return (await dataset(v)).examples
  if (Array.isArray(v)) return v
  if (v && typeof v === 'object' && Array.isArray((v as Dataset).examples)) return (v as Dataset).examples
  throw new TypeError(`${what} must be an array of examples, a Dataset or a path`)
}

function defaultCacheDir(): string {
  return process.env.SEMICAP_CACHE ? join(process.env.SEMICAP_CACHE, 'features') : join(homedir(), '.cache', 'semicap', 'features')
}

/** Int64 rows padded with -1. */
function padRows(rows: number[][]): Tensor {
  const L = Math.max(1, ...rows.map((r) => r.length))
  const out = new BigInt64Array(rows.length * L).fill(-1n)
  rows.forEach((r, i) => r.forEach((x, j) => (out[i * L + j] = BigInt(x))))
  return new Tensor('int64', [rows.length, L], out)
}
const indexTensor = (xs: number[]): Tensor => new Tensor('int64', [xs.length], BigInt64Array.from(xs, (x) => BigInt(x)))

export function startTraining(captioner: Captioner, options: TrainOptions, enqueue: <T>(job: () => Promise<T>) => Promise<T>): TrainingRun {
  if (!options || typeof options !== 'object') throw new TypeError('train: options must be an object')
  const o = options
  if (o.stage !== 'supervised' && o.stage !== 'clip-reward') throw new RangeError(`stage must be 'supervised' or 'clip-reward', got ${String(o.stage)}`)
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new TypeError('signal must be an AbortSignal')
  const objective = o.stage === 'clip-reward' ? 'scst' : (o.objective ?? 'ce')
  if (objective !== 'ce' && objective !== 'scst') throw new RangeError(`objective must be 'ce' or 'scst'`)
  const reward = o.reward ?? {}
  const rewardType = reward.type ?? (o.stage === 'clip-reward' ? 'clipS' : 'refText')
  if (!['refText', 'refContrastive', 'clipS', 'custom'].includes(rewardType)) throw new RangeError(`reward.type must be refText, refContrastive, clipS or custom`)
  if (rewardType === 'custom' && typeof reward.fn !== 'function') throw new TypeError('a custom reward needs reward.fn')
  if (reward.aggregate !== undefined && reward.aggregate !== 'mean' && reward.aggregate !== 'max') throw new RangeError(`reward.aggregate must be 'mean' or 'max'`)
  const batchSize = posInt(o.batchSize, 'batchSize', 8)!
  const betas = o.betas ?? [0.9, 0.999]
  if (!Array.isArray(betas) || betas.length !== 2 || betas.some((b) => typeof b !== 'number' || !(b >= 0 && b < 1))) throw new RangeError('betas must be two numbers in [0, 1)')
  if (o.steps === undefined && o.epochs === undefined) throw new TypeError('train: give steps or epochs')
  if (o.epochs !== undefined && (typeof o.epochs !== 'number' || !(o.epochs > 0))) throw new RangeError('epochs must be > 0')
  const prefixText = reward.prefix ?? 'A photo depicts '
  if (typeof prefixText !== 'string') throw new TypeError('reward.prefix must be a string')
  const tokenizer = captioner.tokenizer
  if (!tokenizer) throw new SemicapError('E_TOKENIZER', 'training needs a GPT-2 tokenizer (tokenizer files in the GPT-2 folder)')
  const distributed = resolveDistributed(o.distributed, captioner.device)

  return new TrainingRun(async (run, runSignal) => {
    const signal = o.signal ? AbortSignal.any([o.signal, runSignal]) : runSignal
    if (signal.aborted) throw new AbortError('training was aborted before it started')
    const labeled = (await examplesOf(o.labeled, 'labeled')).filter((e) => e.captions.length > 0)
    const unlabeled = await examplesOf(o.unlabeled, 'unlabeled')
    const needsCaptions = o.stage === 'supervised' || (o.ceMix?.weight ?? 0) > 0
    if (needsCaptions && labeled.length === 0) throw new SemicapError('E_DATA', `${o.stage === 'supervised' ? 'the supervised stage' : 'ceMix'} needs labeled examples with captions`)
    if (o.stage === 'clip-reward' && unlabeled.length === 0) throw new SemicapError('E_DATA', 'the clip-reward stage needs unlabeled images')

    // One feature row per distinct image.
    const images: Example[] = []
    const rowOf = new Map<string, number>()
    for (const e of [...labeled, ...unlabeled]) {
      if (!rowOf.has(e.image)) {
        rowOf.set(e.image, images.length)
        images.push(e)
      }
    }
    run.emit('prepare', { phase: 'features', done: 0, total: images.length })
    const { features, hits, misses } = await cachedImageFeatures(captioner.clip, images, {
      cacheDir: o.featureCache ?? defaultCacheDir(),
      signal,
      onProgress: (done, total) => run.emit('prepare', { phase: 'features', done, total }),
    })
    run.emit('prepare', { phase: 'features-done', hits, misses })

    const maxCaptionTokens = posInt(o.maxCaptionTokens, 'maxCaptionTokens', 40)!
    const capRows: number[][] = []
    const capImages: number[] = []
    for (const e of labeled)
      for (const c of e.captions) {
        capRows.push([...tokenizer.encode(c).slice(0, maxCaptionTokens - 1), tokenizer.eosId])
        capImages.push(rowOf.get(e.image)!)
      }
    let refFeatures: Tensor | undefined
    let refImages: number[] = []
    if (objective === 'scst' && (rewardType === 'refText' || rewardType === 'refContrastive')) {
      const texts: string[] = []
      for (const e of labeled) for (const c of e.captions) (texts.push(c), refImages.push(rowOf.get(e.image)!))
      const parts: Tensor[] = []
      for (let i = 0; i < texts.length; i += 256) parts.push(await captioner.clip.encodeTexts(texts.slice(i, i + 256)))
      const D = captioner.clip.projectionDim
      const all = new Float32Array(texts.length * D)
      let off = 0
      for (const p of parts) (all.set(p.data as Float32Array, off), (off += p.size))
      refFeatures = new Tensor('float32', [texts.length, D], all)
    }
    const idOf = images.map((e) => e.id)

    const perStep = o.stage === 'supervised' && objective === 'ce' ? capRows.length : o.stage === 'supervised' ? labeled.length : unlabeled.length
    const steps = o.steps !== undefined ? posInt(o.steps, 'steps', 1)! : Math.max(1, Math.ceil((o.epochs! * perStep) / batchSize))

    let resumeDir = ''
    let startStep = 0
    if (o.resume) {
      if (typeof o.resume === 'string') resumeDir = o.resume
      else {
        if (!o.checkpointDir) throw new TypeError('resume: true needs checkpointDir')
        const latest = await readFile(join(o.checkpointDir, 'latest'), 'utf8').catch(() => '')
        if (latest.trim()) resumeDir = join(o.checkpointDir, latest.trim())
      }
      if (resumeDir) {
        const state = JSON.parse(await readFile(join(resumeDir, 'trainer_state.json'), 'utf8').catch(() => '{}')) as { step?: number }
        if (!Number.isInteger(state.step)) throw new SemicapError('E_CHECKPOINT', `${resumeDir}: no trainer_state.json with a step`)
        startStep = state.step!
      }
    }
    const template = o.checkpointDir ? await captioner.checkpointTemplate() : { configJson: '{}', links: [] as [string, string][] }

    const config = {
      stage: o.stage,
      objective,
      steps,
      batchSize,
      gradAccumulation: posInt(o.gradAccumulation, 'gradAccumulation', 1)!,
      samples: posInt(o.samples, 'samples', 5)!,
      maxTokens: posInt(o.maxTokens, 'maxTokens', 20)!,
      ceSteps: posInt(o.ceSteps, 'ceSteps', 0, 0)!,
      lr: posNum(o.lr, 'lr', o.stage === 'supervised' && objective === 'ce' ? 2e-5 : 1e-5),
      weightDecay: posNum(o.weightDecay, 'weightDecay', 0.01, true),
      beta1: betas[0],
      beta2: betas[1],
      gradClip: posNum(o.gradClip, 'gradClip', 1, true),
      warmupSteps: posInt(o.warmupSteps, 'warmupSteps', 0, 0)!,
      schedule: o.schedule ?? 'linear',
      temperature: posNum(o.temperature, 'temperature', 1),
      reward: rewardType,
      refMax: reward.aggregate === 'max',
      clipW: posNum(reward.w, 'reward.w', 2.5),
      rewardScale: posNum(reward.scale, 'reward.scale', 1),
      contrastiveTau: posNum(reward.tau, 'reward.tau', 0.1),
      klCoef: posNum(o.klCoef, 'klCoef', 0, true),
      repetitionPenalty: posNum(o.repetitionPenalty, 'repetitionPenalty', 0, true),
      repetitionNgram: posInt(o.repetitionNgram, 'repetitionNgram', 2)!,
      ceWeight: posNum(o.ceWeight, 'ceWeight', 0, true),
      ceMixWeight: posNum(o.ceMix?.weight, 'ceMix.weight', 0, true),
      seed: posInt(o.seed, 'seed', 0, 0)!,
      trainLm: o.trainLm ?? true,
      bf16: o.bf16 ?? captioner.device.startsWith('cuda'),
      eosId: tokenizer.eosId,
      stopIds: stopTokenIds(tokenizer, '.'),
      checkpointDir: o.checkpointDir ?? '',
      checkpointEvery: posInt(o.checkpointEvery, 'checkpointEvery', 0, 0)!,
      checkpointKeep: posInt(o.checkpointKeep, 'checkpointKeep', 2)!,
      checkpointConfigJson: template.configJson,
      checkpointLinks: template.links,
      checkpointStateJson: JSON.stringify({ stage: o.stage, totalSteps: steps, seed: o.seed ?? 0 }),
      resumeDir,
      startStep,
      distributed: distributed && distributed.worldSize > 1 ? distributed : undefined,
    }
    if (!['linear', 'cosine', 'constant'].includes(config.schedule)) throw new RangeError(`schedule must be linear, cosine or constant`)
    const data: Record<string, WireTensor> = {
      features: features.toWire(),
      labeledImages: indexTensor(labeled.map((e) => rowOf.get(e.image)!)).toWire(),
      unlabeledImages: indexTensor(unlabeled.map((e) => rowOf.get(e.image)!)).toWire(),
    }
    if (capRows.length) {
      data.captionIds = padRows(capRows).toWire()
      data.captionImages = indexTensor(capImages).toWire()
    }
    if (refFeatures) {
      data.referenceFeatures = refFeatures.toWire()
      data.referenceImages = indexTensor(refImages).toWire()
    }

    const decodeRows = (w: WireTensor): string[] => {
      const [N, L] = w.shape
      const d = w.data as BigInt64Array
      const out: string[] = []
      for (let i = 0; i < N; i++) {
        const row: number[] = []
        for (let t = 0; t < L; t++) {
          const id = Number(d[i * L + t])
          if (id < 0 || id === tokenizer.eosId) break
          // A model may have more ids than its tokenizer (padded vocabularies): those carry no text.
          if (id < tokenizer.vocabSize) row.push(id)
        }
        out.push(tokenizer.decode(row).trim())
      }
      return out
    }
    let customError: unknown
    const onScore = (ids: WireTensor, owners: WireTensor): { clipIds?: WireTensor; rewards?: WireTensor } => {
      const texts = decodeRows(ids)
      if (rewardType === 'custom') {
        const imgIds = Array.from(owners.data as BigInt64Array, (x) => idOf[Number(x)])
        const r = reward.fn!(texts, imgIds)
        if (r instanceof Promise) {
          customError = new TypeError('reward.fn must return numbers synchronously')
          throw customError
        }
        if (!Array.isArray(r) || r.length !== texts.length) throw new TypeError('reward.fn must return one number per caption')
        return { rewards: new Tensor('float32', [r.length], Float32Array.from(r)).toWire() }
      }
      const withPrefix = rewardType === 'clipS' ? texts.map((t) => prefixText + t) : texts
      return { clipIds: captioner.clip.tokenize(withPrefix).toWire() }
    }

    return enqueue(() => runNativeTrainer(captioner.addon, config, data, run, signal, onScore))
  })
}

/** Starts a native trainer on `target` and settles with its summary; aborts map to AbortError. */
export async function runNativeTrainer(
  target: object,
  config: object,
  data: Record<string, WireTensor>,
  run: TrainingRun,
  signal: AbortSignal,
  onScore: (ids: WireTensor, owners: WireTensor) => object = () => ({}),
): Promise<TrainSummary> {
  if (signal.aborted) throw new AbortError('training was aborted before it started')
  const trainer = await call(() => new (native().AddonTrainer)(target as never, config, data, (p: TrainProgress) => {
    run.emit('progress', p)
    if (p.checkpoint) run.emit('checkpoint', { step: p.step, path: p.checkpoint })
  }, onScore))
  const onAbort = () => trainer.abort()
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    return (await call(() => trainer.start())) as TrainSummary
  } catch (err) {
    if (err instanceof SemicapError && err.code === 'E_ABORTED') throw new AbortError(err.message, { cause: signal.reason })
    throw err
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}
