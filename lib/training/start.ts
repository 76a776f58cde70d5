// The three kinds of training run: a captioner stage (supervised / clip-reward), CLIP contrastive pretraining and
// GPT-2 language-model pretraining. Each validates its options, prepares its data, and runs the native trainer on
// the model's queue.
import type { Captioner } from '../captioner.js'
import type { Clip } from '../clip.js'
import { AbortError, SemicapError } from '../errors.js'
import type { Gpt2 } from '../gpt2.js'
import { native } from '../native.js'
import { Tensor } from '../tensor.js'
import { TrainingRun, type Enqueue, type PretrainOptions, type TrainOptions } from '../trainable.js'
import { prepareTrainData, resumePoint, textRows } from './data.js'
import { checkTrainOptions, pretrainConfig, trainConfig } from './options.js'
import { makeScorer } from './rewards.js'
import { runNativeTrainer } from './runner.js'

export function startTraining(captioner: Captioner, options: TrainOptions, enqueue: Enqueue): TrainingRun {
  const plan = checkTrainOptions(options, {
    tokenizer: captioner.tokenizer,
    device: captioner.device,
    prefixLength: captioner.mapper.prefixLength,
    nPositions: captioner.gpt2Config.nPositions,
  })
  const o = plan.o
  return new TrainingRun(async (run, runSignal) => {
    const signal = o.signal ? AbortSignal.any([o.signal, runSignal]) : runSignal
    if (signal.aborted) throw new AbortError('training was aborted before it started')
    const prepared = await prepareTrainData(captioner, plan, run, signal)
    const { resumeDir, startStep } = await resumePoint(o)
    const template = o.checkpointDir ? await captioner.checkpointTemplate() : { configJson: '{}', links: [] as [string, string][] }
    const config = trainConfig(plan, {
      steps: prepared.steps,
      device: captioner.device,
      resumeDir,
      startStep,
      checkpointConfigJson: template.configJson,
      checkpointLinks: template.links,
    })
    const scorer = makeScorer(plan, prepared.imageIds, (texts) => captioner.clip.tokenize(texts))
    return enqueue(() =>
      runNativeTrainer((onProgress) => new (native().AddonTrainer)(captioner.addon, config, prepared.data, onProgress, scorer.onScore), run, signal, scorer.error),
    )
  })
}

const noScore = () => ({})

/** Contrastive pretraining (symmetric InfoNCE with the learned logit scale) on pixels [N,3,S,S] and one text per image. */
export function startClipPretraining(clip: Clip, data: { pixels: Tensor; texts: string[] }, options: PretrainOptions, enqueue: Enqueue): TrainingRun {
  if (!data || !(data.pixels instanceof Tensor) || !Array.isArray(data.texts)) throw new TypeError('train: data needs pixels (a Tensor) and texts')
  if (data.pixels.shape[0] !== data.texts.length) throw new RangeError('train: one text per image')
  const config = pretrainConfig(options, { batchSize: 64, lr: 5e-4 })
  return new TrainingRun(async (run, runSignal) => {
    const signal = options.signal ? AbortSignal.any([options.signal, runSignal]) : runSignal
    const ids = clip.tokenize(data.texts)
    // The wires are made inside the job, right before the (synchronous, cloning) constructor reads them.
    return enqueue(() =>
      runNativeTrainer((onProgress) => new (native().AddonTrainer)(clip.addon, config, { pixels: data.pixels.toWire(), ids: ids.toWire() }, onProgress, noScore), run, signal),
    )
  })
}

/** Language-model pretraining on texts (each becomes eos + tokens + eos; next-token cross-entropy). */
export function startGpt2Pretraining(gpt2: Gpt2, data: { texts: string[]; maxLength?: number }, options: PretrainOptions, enqueue: Enqueue): TrainingRun {
  const tok = gpt2.tokenizer
  if (!tok) throw new SemicapError('E_TOKENIZER', 'pretraining needs a tokenizer')
  if (!data || !Array.isArray(data.texts)) throw new TypeError('train: data needs texts')
  const config = pretrainConfig(options, { batchSize: 32, lr: 1e-3 })
  const maxLength = data.maxLength ?? gpt2.config.nPositions
  return new TrainingRun(async (run, runSignal) => {
    const signal = options.signal ? AbortSignal.any([options.signal, runSignal]) : runSignal
    const ids = textRows(data.texts, (t) => tok.encode(t), tok.eosId, tok.eosId, maxLength, -1)
    return enqueue(() => runNativeTrainer((onProgress) => new (native().AddonTrainer)(gpt2.addon, config, { ids: ids.toWire() }, onProgress, noScore), run, signal))
  })
}
