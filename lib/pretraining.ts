// Pretraining stand-ins for the web-scale models with the library's own code: a CLIP trained contrastively on
// image-text pairs, a GPT-2 trained as a language model on text. Both save as Hugging Face folders.
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Clip } from './clip.js'
import { SemicapError } from './errors.js'
import type { Gpt2 } from './gpt2.js'
import type { AddonClip, AddonGpt2 } from './native.js'
import { Tensor } from './tensor.js'
import type { ClipTokenizer } from './tokenizers/clip.js'
import { Gpt2Tokenizer } from './tokenizers/gpt2.js'
import { runNativeTrainer, TrainingRun } from './training.js'

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

export function pretrainConfig(o: PretrainOptions, defaults: { batchSize: number; lr: number }): object {
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

/** Runs a pretraining job on a CLIP or GPT-2 addon, queued on the model. */
export function pretrainRun(
  addon: AddonClip | AddonGpt2,
  config: object,
  data: () => Promise<Record<string, Tensor>>,
  signal: AbortSignal | undefined,
  enqueue: <T>(job: () => Promise<T>) => Promise<T>,
): TrainingRun {
  return new TrainingRun(async (run, runSignal) => {
    const s = signal ? AbortSignal.any([signal, runSignal]) : runSignal
    const tensors = await data()
    const wire = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, t.toWire()]))
    return enqueue(() => runNativeTrainer(addon, config, wire, run, s))
  })
}

/** Token rows (-1-padded int64) from texts: bos + ids + eos, cut to maxLength. */
export function textRows(texts: string[], encode: (t: string) => number[], bos: number, eos: number, maxLength: number, padWith: number): Tensor {
  if (!Array.isArray(texts) || texts.length === 0 || texts.some((t) => typeof t !== 'string')) throw new TypeError('texts must be a non-empty array of strings')
  const rows = texts.map((t) => [bos, ...encode(t).slice(0, maxLength - 2), eos])
  const L = Math.max(...rows.map((r) => r.length))
  const out = new BigInt64Array(rows.length * L).fill(BigInt(padWith))
  rows.forEach((r, i) => r.forEach((x, j) => (out[i * L + j] = BigInt(x))))
  return new Tensor('int64', [rows.length, L], out)
}

/** vocab.json + merges.txt of a byte-level BPE, as Hugging Face writes them. */
export async function writeBpeFiles(dir: string, tok: Gpt2Tokenizer | ClipTokenizer): Promise<void> {
  const entries = [...tok.vocab.entries()].sort((a, b) => a[1] - b[1])
  const vocabJson = '{' + entries.map(([t, id]) => `${JSON.stringify(t)}: ${id}`).join(', ') + '}\n'
  const merges = tok instanceof Gpt2Tokenizer ? tok.merges : tok.merges
  await writeFile(join(dir, 'vocab.json'), vocabJson)
  await writeFile(join(dir, 'merges.txt'), ['#version: 0.2', ...merges.map((m) => `${m[0]} ${m[1]}`)].join('\n') + '\n')
}

/** config.json + model.safetensors (+ tokenizer files) for a CLIP or GPT-2 folder. */
export async function saveHfFolder(
  dir: string,
  rawConfig: object,
  save: (path: string) => Promise<void>,
  tokenizer: Gpt2Tokenizer | ClipTokenizer | undefined,
): Promise<void> {
  if (typeof dir !== 'string' || !dir) throw new TypeError('dir must be a non-empty string')
  try {
    await mkdir(dir, { recursive: true })
  } catch (err) {
    throw new SemicapError('E_IO', `${dir}: cannot create (${(err as Error).message})`, { cause: err })
  }
  await save(join(dir, 'model.safetensors'))
  if (tokenizer) await writeBpeFiles(dir, tokenizer)
  await writeFile(join(dir, 'config.json'), JSON.stringify(rawConfig, null, 2) + '\n')
}

export type { Clip, Gpt2 }
