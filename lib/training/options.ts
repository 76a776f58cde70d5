// Options -> one plain config object for the native trainer. Validation happens in two places, as before the split:
// checkTrainOptions() when train() is called (a bad option throws there), trainConfig() once the data is known.
import { stopTokenIds } from '../decoding.js'
import { SemicapError } from '../errors.js'
import type { DistributedConfigWire, PretrainConfigWire, TrainConfigWire } from '../native.js'
import type { DistributedOptions, PretrainOptions, RewardOptions, TrainOptions } from '../trainable.js'
import type { Gpt2Tokenizer } from '../tokenizers/gpt2.js'

export function posInt(v: unknown, name: string, fallback: number | undefined, min = 1): number | undefined {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${String(v)}`)
  return v
}
export function posNum(v: unknown, name: string, fallback: number, allowZero = false): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (!allowZero && v === 0)) throw new RangeError(`${name} must be a ${allowZero ? 'non-negative' : 'positive'} number, got ${String(v)}`)
  return v
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

/** What train() settles from the options alone, before any data is read. */
export interface TrainPlan {
  o: TrainOptions
  objective: 'ce' | 'scst'
  reward: RewardOptions
  rewardType: NonNullable<RewardOptions['type']>
  batchSize: number
  betas: [number, number]
  prefixText: string
  tokenizer: Gpt2Tokenizer
  distributed: Required<DistributedOptions> | undefined
}

/** The checks train() makes before it returns (they throw synchronously). */
export function checkTrainOptions(
  options: TrainOptions,
  model: { tokenizer: Gpt2Tokenizer | undefined; device: string; prefixLength?: number; nPositions?: number },
): TrainPlan {
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
  const tokenizer = model.tokenizer
  if (!tokenizer) throw new SemicapError('E_TOKENIZER', 'training needs a GPT-2 tokenizer (tokenizer files in the GPT-2 folder)')
  const distributed = resolveDistributed(o.distributed, model.device)
  if (model.prefixLength !== undefined && model.nPositions !== undefined) checkSequenceLengths(o, objective, model.prefixLength, model.nPositions)
  return { o, objective, reward, rewardType, batchSize, betas, prefixText, tokenizer, distributed }
}

/** maxCaptionTokens when not given: 40, or fewer when the prefix leaves GPT-2 less room (a small model). */
export function defaultMaxCaptionTokens(prefixLength: number, nPositions: number): number {
  return Math.max(1, Math.min(40, nPositions - prefixLength + 1))
}

/**
 * The prefix plus the longest sequence a step feeds GPT-2 must fit its n_positions: checked here, before any
 * feature is computed, instead of failing at the first step.
 */
export function checkSequenceLengths(o: TrainOptions, objective: 'ce' | 'scst', prefixLength: number, nPositions: number): void {
  const usesCe = (o.stage === 'supervised' && (objective === 'ce' || (o.ceSteps ?? 0) > 0 || (o.ceWeight ?? 0) > 0)) || (o.ceMix?.weight ?? 0) > 0
  const usesScst = objective === 'scst' && !(o.stage === 'supervised' && o.steps !== undefined && (o.ceSteps ?? 0) >= o.steps)
  if (usesCe) {
    const maxCaptionTokens = posInt(o.maxCaptionTokens, 'maxCaptionTokens', defaultMaxCaptionTokens(prefixLength, nPositions))!
    // Teacher forcing feeds the prefix and all caption tokens but the last.
    if (prefixLength + maxCaptionTokens - 1 > nPositions)
      throw new SemicapError('E_CONFIG', `prefix length ${prefixLength} + maxCaptionTokens ${maxCaptionTokens} - 1 exceeds GPT-2's n_positions ${nPositions}: lower maxCaptionTokens to at most ${nPositions - prefixLength + 1}`)
  }
  if (usesScst) {
    const maxTokens = posInt(o.maxTokens, 'maxTokens', 20)!
    if (prefixLength + maxTokens > nPositions)
      throw new SemicapError('E_CONFIG', `prefix length ${prefixLength} + maxTokens ${maxTokens} exceeds GPT-2's n_positions ${nPositions}: lower maxTokens to at most ${nPositions - prefixLength}`)
  }
}

/** What the run learned from the data and the files before it builds the config. */
export interface TrainFacts {
  steps: number
  device: string
  resumeDir: string
  startStep: number
  checkpointConfigJson: string
  checkpointLinks: [string, string][]
}

/** The native trainer's config (validated numbers, defaults filled in). */
export function trainConfig(p: TrainPlan, f: TrainFacts): TrainConfigWire {
  const { o, objective, reward, tokenizer } = p
  const config: TrainConfigWire = {
    stage: o.stage,
    objective,
    steps: f.steps,
    batchSize: p.batchSize,
    gradAccumulation: posInt(o.gradAccumulation, 'gradAccumulation', 1)!,
    samples: posInt(o.samples, 'samples', 5)!,
    maxTokens: posInt(o.maxTokens, 'maxTokens', 20)!,
    ceSteps: posInt(o.ceSteps, 'ceSteps', 0, 0)!,
    lr: posNum(o.lr, 'lr', o.stage === 'supervised' && objective === 'ce' ? 2e-5 : 1e-5),
    weightDecay: posNum(o.weightDecay, 'weightDecay', 0.01, true),
    beta1: p.betas[0],
    beta2: p.betas[1],
    gradClip: posNum(o.gradClip, 'gradClip', 1, true),
    warmupSteps: posInt(o.warmupSteps, 'warmupSteps', 0, 0)!,
    schedule: o.schedule ?? 'linear',
    temperature: posNum(o.temperature, 'temperature', 1),
    reward: p.rewardType,
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
    bf16: o.bf16 ?? f.device.startsWith('cuda'),
    eosId: tokenizer.eosId,
    stopIds: stopTokenIds(tokenizer, '.'),
    checkpointDir: o.checkpointDir ?? '',
    checkpointEvery: posInt(o.checkpointEvery, 'checkpointEvery', 0, 0)!,
    checkpointKeep: posInt(o.checkpointKeep, 'checkpointKeep', 2)!,
    checkpointConfigJson: f.checkpointConfigJson,
    checkpointLinks: f.checkpointLinks,
    checkpointStateJson: JSON.stringify({ stage: o.stage, totalSteps: f.steps, seed: o.seed ?? 0 }),
    resumeDir: f.resumeDir,
    startStep: f.startStep,
    distributed: p.distributed && p.distributed.worldSize > 1 ? (p.distributed as DistributedConfigWire) : undefined,
  }
  if (!['linear', 'cosine', 'constant'].includes(config.schedule)) throw new RangeError(`schedule must be linear, cosine or constant`)
  return config
}

/** CLIP / GPT-2 pretraining options -> the native config. */
export function pretrainConfig(o: PretrainOptions, defaults: { batchSize: number; lr: number }): PretrainConfigWire {
  if (!o || typeof o !== 'object') throw new TypeError('options must be an object')
  const int = (v: unknown, name: string, d: number | undefined, min: number) => {
    if (v === undefined && d !== undefined) return d
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}`)
    return v
  }
  const num = (v: unknown, name: string, d: number) => {
    if (v === undefined) return d
    if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v)) throw new RangeError(`${name} must be a non-negative number`)
    return v
  }
  const schedule = o.schedule ?? 'cosine'
  if (!['linear', 'cosine', 'constant'].includes(schedule)) throw new RangeError('schedule must be linear, cosine or constant')
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new TypeError('signal must be an AbortSignal')
  return {
    steps: int(o.steps, 'steps', undefined, 1),
    batchSize: int(o.batchSize, 'batchSize', defaults.batchSize, 1),
    lr: num(o.lr, 'lr', defaults.lr),
    weightDecay: num(o.weightDecay, 'weightDecay', 0.01),
    warmupSteps: int(o.warmupSteps, 'warmupSteps', 0, 0),
    schedule,
    gradClip: num(o.gradClip, 'gradClip', 1),
    seed: int(o.seed, 'seed', 0, 0),
  }
}
