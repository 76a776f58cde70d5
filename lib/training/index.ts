// Training: options -> plain configs for the native trainer (options.ts), data preparation (data.ts), rewards
// (rewards.ts), the native runner (runner.ts) and the three kinds of run (start.ts). Importing this module registers
// it with the model classes' train() methods (lib/trainable.ts); the models import nothing from here.
import type { Captioner } from '../captioner.js'
import type { Clip } from '../clip.js'
import type { Gpt2 } from '../gpt2.js'
import { registerTraining } from '../trainable.js'
import { startClipPretraining, startGpt2Pretraining, startTraining } from './start.js'

registerTraining({
  captioner: (model: Captioner, options, enqueue) => startTraining(model, options, enqueue),
  clip: (model: Clip, data, options, enqueue) => startClipPretraining(model, data, options, enqueue),
  gpt2: (model: Gpt2, data, options, enqueue) => startGpt2Pretraining(model, data, options, enqueue),
})

export {
  TrainingRun,
  type TrainOptions,
  type TrainProgress,
  type TrainSummary,
  type RewardOptions,
  type DistributedOptions,
  type PretrainOptions,
} from '../trainable.js'
export { resolveDistributed, checkTrainOptions, trainConfig, pretrainConfig } from './options.js'
export { runNativeTrainer } from './runner.js'
export { startTraining, startClipPretraining, startGpt2Pretraining } from './start.js'
export { textRows } from './data.js'
