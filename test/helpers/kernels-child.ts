// Child process of test/kernels.test.ts: kernel paths, BLAS core and the dtype are fixed when the addon loads, so
// each configuration runs in its own process. Prints one JSON line.
//   node --import tsx test/helpers/kernels-child.ts <dtype> [train]
import { join } from 'node:path'
import { Captioner, Clip, Gpt2, Tensor, int64, loadSafetensors, runtimeInfo } from '../../lib/index.js'
import { makeColourSquares, makeTinyCaptionModels } from './models.js'
import { goldenDir, tempDir } from './paths.js'

const dtype = (process.argv[2] ?? 'float32') as 'float32' | 'bfloat16' | 'int8'
const train = process.argv[3] === 'train'
const floats = (t: Tensor) => Array.from(t.data as Float32Array)

// Widths that exercise whole panels, a column tail (1000 columns) and row remainders (60 and 130 rows).
const g = await Gpt2.create({ vocab_size: 1000, n_positions: 32, n_embd: 256, n_layer: 2, n_head: 4 }, { device: 'cpu', seed: 5 })
const ids = int64(Array.from({ length: 3 }, (_, r) => Array.from({ length: 20 }, (_, i) => (r * 131 + i * 17) % 1000)))
const logits = floats(await g.logits(ids))
// One row at a time (the decoding shapes: 1 row, then 3 rows).
const step1 = floats(await g.logits(int64([[7]])))
const step3 = floats(await g.logits(int64([[7], [99], [512]])))
const clip = await Clip.create(
  {
    projection_dim: 64,
    text_config: { hidden_size: 64, intermediate_size: 128, num_attention_heads: 2, num_hidden_layers: 1, vocab_size: 100, max_position_embeddings: 8 },
    vision_config: { hidden_size: 128, intermediate_size: 512, num_attention_heads: 4, num_hidden_layers: 2, image_size: 64, patch_size: 8 },
  },
  { device: 'cpu', seed: 6 },
)
const px = new Float32Array(2 * 3 * 64 * 64).map((_, i) => Math.sin(i * 0.37))
const features = floats(await clip.imageFeatures(new Tensor('float32', [2, 3, 64, 64], px)))
// 8 images: 520 rows of 128, enough for the layer norms and residual adds to be shared between threads too.
const px8 = new Float32Array(8 * 3 * 64 * 64).map((_, i) => Math.cos(i * 0.29))
const features8 = floats(await clip.imageFeatures(new Tensor('float32', [8, 3, 64, 64], px8)))

// Batched decoding at the sizes where work is shared between threads: 16 rows of the GPT-2 above over a cache of
// 10-30 positions (the attention's heads are shared once a step has 2^16 multiply-adds), and a captioner's batch of
// 8 rows (their greedy picks are shared).
const prefix16 = new Tensor('float32', [16, 10, 256], new Float32Array(16 * 10 * 256).map((_, i) => Math.sin(i * 0.013)))
const gen16 = await g.generate(prefix16, { maxTokens: 20, minTokens: 20, stop: null, stopAtEos: false })
const batch16 = { ids: Array.from(gen16.ids.data as BigInt64Array, Number), scores: floats(gen16.scores) }
const captioner = await Captioner.create({ clip: join(goldenDir, 'clip'), gpt2: join(goldenDir, 'gpt2'), mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
const feats8 = new Tensor('float32', [8, 32], new Float32Array(8 * 32).map((_, i) => Math.cos(i * 0.7)))
const batch8 = (await captioner.captionFeatures(feats8, { maxTokens: 12, minTokens: 12 })).map((c) => c.ids)

// The golden models, loaded in the asked dtype.
const ref = await loadSafetensors(join(goldenDir, 'reference.safetensors'))
const gold = await Gpt2.load(join(goldenDir, 'gpt2'), { device: 'cpu', dtype })
const goldClip = await Clip.load(join(goldenDir, 'clip'), { device: 'cpu', dtype })
const goldLogits = floats(await gold.logits(ref['inputs.gpt2_ids']!))
const { ids: greedy } = await gold.generate(ref['inputs.prefix']!, { maxTokens: 10, stop: null, stopAtEos: false })
const goldFeatures = floats(await goldClip.imageFeatures(ref['inputs.pixel_values']!))
// Training (autograd on), float32, when asked: CE steps of a tiny captioner. Its forward products take the kernels through the
// layers' packed copies (default, SEMICAP_CPU_GEMM=kernel) or BLAS (=blas, the portable ISA); gradients are BLAS's.
const trainLosses: number[] = []
if (train && dtype === 'float32') {
  const work = tempDir('semicap-kernels-train-')
  const tiny = await makeTinyCaptionModels(work)
  const squares = await makeColourSquares(work, [['red', [230, 30, 30]], ['blue', [20, 40, 230]], ['yellow', [240, 230, 30]]], (n) => `a ${n} square.`)
  const trainee = await Captioner.create({ clip: tiny.clipDir, gpt2: tiny.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  const run = trainee.train({ stage: 'supervised', labeled: squares, steps: 5, batchSize: 3, lr: 3e-3 })
  run.on('progress', (p: { loss: number }) => trainLosses.push(p.loss))
  await run
  trainee.dispose()
}
const info = runtimeInfo()
console.log(
  JSON.stringify({
    info: { cpu: info.cpu, cpuGemm: info.cpuGemm, blas: info.blas, blasCoreType: info.blasCoreType, choices: info.kernelChoices.length, choiceList: info.kernelChoices, threads: info.threads, pool: info.pool },
    weights: gold.weights,
    clipWeights: goldClip.weights,
    logits,
    step1,
    step3,
    features,
    features8,
    goldLogits,
    goldFeatures,
    greedy: Array.from(greedy.data as BigInt64Array, Number),
    batch16,
    batch8,
    trainLosses,
  }),
)
