// Data preparation, done once per run before the native trainer starts: one CLIP feature row per distinct image
// (cached on disk), tokenised captions, reference text features, index tensors; and the resume point on disk.
import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import type { Captioner } from '../captioner.js'
import { cachedImageFeatures, dataset, type Dataset, type Example } from '../data/index.js'
import { SemicapError } from '../errors.js'
import type { TrainDataWire } from '../native.js'
import { Tensor } from '../tensor.js'
import type { TrainingRun } from '../trainable.js'
import { defaultMaxCaptionTokens, posInt, type TrainPlan } from './options.js'

export async function examplesOf(v: Example[] | Dataset | string | undefined, what: string): Promise<Example[]> {
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
export function padRows(rows: number[][]): Tensor {
  const L = Math.max(1, ...rows.map((r) => r.length))
  const out = new BigInt64Array(rows.length * L).fill(-1n)
  rows.forEach((r, i) => r.forEach((x, j) => (out[i * L + j] = BigInt(x))))
  return new Tensor('int64', [rows.length, L], out)
}
const indexTensor = (xs: number[]): Tensor => new Tensor('int64', [xs.length], BigInt64Array.from(xs, (x) => BigInt(x)))

/** Token rows (-1-padded int64) from texts: bos + ids + eos, cut to maxLength. */
export function textRows(texts: string[], encode: (t: string) => number[], bos: number, eos: number, maxLength: number, padWith: number): Tensor {
  if (!Array.isArray(texts) || texts.length === 0 || texts.some((t) => typeof t !== 'string')) throw new TypeError('texts must be a non-empty array of strings')
  const rows = texts.map((t) => [bos, ...encode(t).slice(0, maxLength - 2), eos])
  const L = Math.max(...rows.map((r) => r.length))
  const out = new BigInt64Array(rows.length * L).fill(BigInt(padWith))
  rows.forEach((r, i) => r.forEach((x, j) => (out[i * L + j] = BigInt(x))))
  return new Tensor('int64', [rows.length, L], out)
}

/**
 * Optimizer steps for `epochs` passes over `examples`: each step consumes batchSize (per rank) x gradAccumulation x
 * worldSize examples, so `--epochs 1 --nproc 4` is one epoch, not four.
 */
export function stepsForEpochs(epochs: number, examples: number, batchSize: number, gradAccumulation = 1, worldSize = 1): number {
  return Math.max(1, Math.ceil((epochs * examples) / (batchSize * gradAccumulation * worldSize)))
}

export interface PreparedData {
  /** The tensors the trainer's constructor clones (built fresh here: nobody else holds their buffers). */
  data: TrainDataWire
  /** Image id of each feature row (what a custom reward is told). */
  imageIds: string[]
  steps: number
}

/** Reads the examples, computes (or loads cached) image features, tokenises captions, encodes references. */
export async function prepareTrainData(captioner: Captioner, p: TrainPlan, run: TrainingRun, signal: AbortSignal): Promise<PreparedData> {
  const { o, objective, rewardType, tokenizer } = p
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

  const maxCaptionTokens = posInt(o.maxCaptionTokens, 'maxCaptionTokens', defaultMaxCaptionTokens(captioner.mapper.prefixLength, captioner.gpt2Config.nPositions))!
  const capRows: number[][] = []
  const capImages: number[] = []
  for (const e of labeled)
    for (const c of e.captions) {
      capRows.push([...tokenizer.encode(c).slice(0, maxCaptionTokens - 1), tokenizer.eosId])
      capImages.push(rowOf.get(e.image)!)
    }
  let refFeatures: Tensor | undefined
  const refImages: number[] = []
  if (objective === 'scst' && (rewardType === 'refText' || rewardType === 'refContrastive')) {
    const texts: string[] = []
    for (const e of labeled) for (const c of e.captions) (texts.push(c), refImages.push(rowOf.get(e.image)!))
    const parts: Tensor[] = []
    for (let i = 0; i < texts.length; i += 256) parts.push(await captioner.clip.encodeTexts(texts.slice(i, i + 256)))
    const D = captioner.clip.projectionDim
    const all = new Float32Array(texts.length * D)
    let off = 0
    for (const t of parts) (all.set(t.data as Float32Array, off), (off += t.size))
    refFeatures = new Tensor('float32', [texts.length, D], all)
  }

  const perStep = o.stage === 'supervised' && objective === 'ce' ? capRows.length : o.stage === 'supervised' ? labeled.length : unlabeled.length
  const steps = o.steps !== undefined ? posInt(o.steps, 'steps', 1)! : stepsForEpochs(o.epochs!, perStep, p.batchSize, posInt(o.gradAccumulation, 'gradAccumulation', 1)!, p.distributed?.worldSize ?? 1)

  const data: TrainDataWire = {
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
  return { data, imageIds: images.map((e) => e.id), steps }
}

/** `resume`: the checkpoint folder to continue from ('' for none) and the step it was written at. */
export async function resumePoint(o: { resume?: boolean | string; checkpointDir?: string }): Promise<{ resumeDir: string; startStep: number }> {
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
  return { resumeDir, startStep }
}
