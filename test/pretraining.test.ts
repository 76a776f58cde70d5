// Pretraining the stand-in models with the library's own code: contrastive CLIP and a GPT-2 language model.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Clip, Gpt2, Gpt2Tokenizer, Tensor } from '../lib/index.js'
import type { TrainProgress } from '../lib/index.js'
import { makeTinyModels } from './helpers/models.js'
import { tempDir } from './helpers/paths.js'

let tokenizer: Gpt2Tokenizer
let work: string
const disposables: { dispose(): void }[] = []
afterAll(() => disposables.forEach((d) => d.dispose()))

beforeAll(async () => {
  const tiny = await makeTinyModels()
  tokenizer = await Gpt2Tokenizer.load(tiny.gpt2Dir, { packageFallback: false })
  work = tempDir('semicap-pretrain-')
})

const clipConfig = {
  projection_dim: 16,
  logit_scale_init_value: 2.6592,
  text_config: { hidden_size: 32, intermediate_size: 64, num_attention_heads: 2, num_hidden_layers: 1, vocab_size: 1000, max_position_embeddings: 16, eos_token_id: 999, bos_token_id: 999 },
  vision_config: { hidden_size: 32, intermediate_size: 64, num_attention_heads: 2, num_hidden_layers: 1, image_size: 16, patch_size: 8 },
}

/** Solid-colour images as preprocessed pixels: image i is colour i. */
function pixels(n: number): Tensor {
  const S = 16
  const data = new Float32Array(n * 3 * S * S)
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) data.fill(((i >> c) & 1) * 2 - 1, (i * 3 + c) * S * S, (i * 3 + c + 1) * S * S)
  return new Tensor('float32', [n, 3, S, S], data)
}
const WORDS = ['black', 'red', 'green', 'yellow', 'blue', 'purple', 'cyan', 'white']

describe('contrastive CLIP pretraining', () => {
  it('learns to match images and texts, and saves a folder that loads identically', async () => {
    const clip = await Clip.create(clipConfig, { device: 'cpu', tokenizer, seed: 3 })
    disposables.push(clip)
    const px = pixels(8)
    const texts = WORDS.map((w) => `a ${w} picture`)
    const retrieval = async () => {
      const img = (await clip.imageFeatures(px)).data as Float32Array
      const txt = (await clip.encodeTexts(texts)).data as Float32Array
      let correct = 0
      for (let i = 0; i < 8; i++) {
        let best = -Infinity, arg = -1
        for (let j = 0; j < 8; j++) {
          let s = 0, ni = 0, nj = 0
          for (let k = 0; k < 16; k++) (s += img[i * 16 + k] * txt[j * 16 + k]), (ni += img[i * 16 + k] ** 2), (nj += txt[j * 16 + k] ** 2)
          const cos = s / Math.sqrt(ni * nj)
          if (cos > best) (best = cos), (arg = j)
        }
        if (arg === i) correct++
      }
      return correct
    }
    const run = clip.train({ pixels: px, texts }, { steps: 300, batchSize: 8, lr: 3e-3, seed: 1 })
    const progress: TrainProgress[] = []
    run.on('progress', (p: TrainProgress) => progress.push(p))
    await run
    expect(progress).toHaveLength(300)
    expect(progress.at(-1)!.loss).toBeLessThan(progress[0].loss * 0.2)
    expect(await retrieval()).toBe(8)
    const dir = join(work, 'clip')
    await clip.save(dir)
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
    expect(cfg.semicap.tokenizer).toBe('gpt2')
    const loaded = await Clip.load(dir, { device: 'cpu' })
    disposables.push(loaded)
    expect((await loaded.imageFeatures(px)).data).toEqual((await clip.imageFeatures(px)).data)
    expect(loaded.tokenize(texts).data).toEqual(clip.tokenize(texts).data)
    expect(loaded.logitScale).toBeCloseTo(clip.logitScale, 6)
  })
})

describe('GPT-2 language-model pretraining', () => {
  it('learns a tiny corpus, generates from it, and round-trips through a folder', async () => {
    const gpt = await Gpt2.create(
      { n_embd: 32, n_head: 2, n_layer: 2, n_positions: 32, vocab_size: 1000, eos_token_id: 999, bos_token_id: 999 },
      { device: 'cpu', tokenizer, seed: 2 },
    )
    disposables.push(gpt)
    const texts = ['a red square.', 'a blue circle.', 'a green star.']
    const run = gpt.train({ texts }, { steps: 120, batchSize: 3, lr: 1e-2, seed: 0 })
    const progress: TrainProgress[] = []
    run.on('progress', (p: TrainProgress) => progress.push(p))
    await run
    expect(progress.at(-1)!.loss).toBeLessThan(0.5)
    // After eos the model continues with one of the corpus sentences.
    const eos = gpt.tokenizer!.eosId
    const ids = new Tensor('int64', [1, 1], BigInt64Array.from([BigInt(eos)]))
    const logits = await gpt.logits(ids)
    const row = logits.data as Float32Array
    let arg = 0
    for (let v = 1; v < 1000; v++) if (row[v] > row[arg]) arg = v
    expect(gpt.tokenizer!.decode([arg]).trim()).toBe('a')
    const dir = join(work, 'gpt2')
    await gpt.save(dir)
    const loaded = await Gpt2.load(dir, { device: 'cpu' })
    disposables.push(loaded)
    expect((await loaded.logits(ids)).data).toEqual(logits.data)
    expect(loaded.tokenizer!.encode('a red square.')).toEqual(gpt.tokenizer!.encode('a red square.'))
  })
})
