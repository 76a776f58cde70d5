// What a trainable model class (Captioner, Clip, Gpt2) shares with lib/training/: the public option and progress
// types, the run handle, and the slot where lib/training/ registers itself. Model classes import this module and
// nothing from lib/training/ (training sits above the models); lib/training/index.ts fills the slot when it is
// imported, which the package entry (lib/index.ts), the CLI and the demo do.
import { EventEmitter } from 'node:events'
import { SemicapError } from './errors.js'
import type { Dataset, Example } from './data/types.js'
import type { ProgressWire } from './native.js'
import type { Tensor } from './tensor.js'

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
  /**
   * custom: rewards for captions (one number each); imageIds say whose image each caption is. May be async (return
   * a Promise): the training step waits for it; a rejection fails the run with E_VALUE (the reason as its cause).
   */
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
  /** Longest training caption in tokens (longer ones are cut). Default 40, or n_positions - prefix length + 1 when that is less. */
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

export interface PretrainOptions {
  steps: number
  batchSize?: number
  lr?: number
  weightDecay?: number
  warmupSteps?: number
  schedule?: 'linear' | 'cosine' | 'constant'
  gradClip?: number
  seed?: number
  signal?: AbortSignal
}

/** One progress event of a training run (what the native trainer reports; undefined where it has no value). */
export type TrainProgress = ProgressWire

export interface TrainSummary {
  steps: number
  lastLoss?: number
  meanReward?: number
  seconds: number
  checkpoint?: string
}

const isDisposal = (r: unknown): r is SemicapError => r instanceof SemicapError && r.code === 'E_DISPOSED'

/**
 * A training run: an EventEmitter ('progress', 'prepare', 'checkpoint') that is also a Promise of the summary.
 * It rejects with an AbortError (E_ABORTED) when aborted, and with E_DISPOSED when its model was disposed.
 */
export class TrainingRun extends EventEmitter implements PromiseLike<TrainSummary> {
  readonly #promise: Promise<TrainSummary>
  readonly #controller = new AbortController()

  constructor(start: (run: TrainingRun, signal: AbortSignal) => Promise<TrainSummary>) {
    super()
    // Start after listeners have been attached in the caller's tick.
    this.#promise = Promise.resolve()
      .then(() => start(this, this.#controller.signal))
      .catch((err: unknown) => {
        // Disposal stops the run through abort(): say why it stopped rather than "aborted".
        const reason = this.#controller.signal.reason
        if (isDisposal(reason)) throw new SemicapError('E_DISPOSED', `training stopped: ${reason.message}`, { cause: err })
        throw err
      })
    this.#promise.catch(() => undefined)
  }

  /** Stops the run within one step. A SemicapError with code E_DISPOSED as the reason makes the run reject with E_DISPOSED. */
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

/** Runs a job on the model's queue (after the calls before it, before the ones after it). */
export type Enqueue = <T>(job: () => Promise<T>) => Promise<T>

/**
 * What lib/training/ registers: one entry per model kind. The model is passed as the class instance (typed
 * `never` here so that this module needs no model types; lib/training/ knows them).
 */
export interface TrainingBackend {
  captioner(model: never, options: TrainOptions, enqueue: Enqueue): TrainingRun
  clip(model: never, data: { pixels: Tensor; texts: string[] }, options: PretrainOptions, enqueue: Enqueue): TrainingRun
  gpt2(model: never, data: { texts: string[]; maxLength?: number }, options: PretrainOptions, enqueue: Enqueue): TrainingRun
}

let backend: TrainingBackend | undefined

/** @internal called once by lib/training/index.ts. */
export function registerTraining(b: TrainingBackend): void {
  backend = b
}

/** @internal the registered training code (lib/training/), for the models' train() methods. */
export function trainingBackend(): TrainingBackend {
  if (!backend) throw new SemicapError('E_CONFIG', 'training is not loaded: import semicap (lib/index.js) or lib/training/index.js before calling train()')
  return backend
}
