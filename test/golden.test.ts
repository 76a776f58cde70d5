// Parity with an independent reference implementation of Hugging Face's semantics (../shared/golden).
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Clip, Gpt2, Tensor, loadSafetensors } from '../lib/index.js'
import { goldenDir } from './helpers/paths.js'
import { floats, relError, slice3 } from './helpers/numeric.js'

const TOL = 5e-5
let ref: Record<string, Tensor>
let clip: Clip
let gpt2: Gpt2

beforeAll(async () => {
  ref = await loadSafetensors(join(goldenDir, 'reference.safetensors'))
  clip = await Clip.load(join(goldenDir, 'clip'), { device: 'cpu' })
  gpt2 = await Gpt2.load(join(goldenDir, 'gpt2'), { device: 'cpu' })
})
afterAll(() => {
  clip?.dispose()
  gpt2?.dispose()
})

function l2normRows(t: Tensor): Float32Array {
  const [B, D] = t.shape
  const d = floats(t)
  const out = new Float32Array(d.length)
  for (let b = 0; b < B; b++) {
    let s = 0
    for (let i = 0; i < D; i++) s += d[b * D + i] ** 2
    const n = Math.sqrt(s)
    for (let i = 0; i < D; i++) out[b * D + i] = d[b * D + i] / n
  }
  return out
}

describe('CLIP matches the reference', () => {
  it('vision tower: last hidden state, pooled output, image features', async () => {
    const out = await clip.vision(ref['inputs.pixel_values'])
    expect(out.lastHidden.shape).toEqual(ref['outputs.vision_last_hidden_state'].shape)
    expect(relError(floats(out.lastHidden), floats(ref['outputs.vision_last_hidden_state']))).toBeLessThan(TOL)
    expect(relError(floats(out.pooled), floats(ref['outputs.vision_pooled']))).toBeLessThan(TOL)
    expect(relError(floats(out.features), floats(ref['outputs.image_features']))).toBeLessThan(TOL)
    // imageFeatures runs the last layer for the class token alone: the same features up to float rounding.
    const fast = floats(await clip.imageFeatures(ref['inputs.pixel_values']))
    expect(relError(fast, floats(ref['outputs.image_features']))).toBeLessThan(TOL)
    expect(relError(fast, floats(out.features))).toBeLessThan(1e-5)
  })

  it('text tower: pooling at the first eos, padded rows, features', async () => {
    const out = await clip.text(ref['inputs.text_ids'])
    expect(relError(floats(out.lastHidden), floats(ref['outputs.text_last_hidden_state']))).toBeLessThan(TOL)
    expect(relError(floats(out.pooled), floats(ref['outputs.text_pooled']))).toBeLessThan(TOL)
    expect(relError(floats(out.features), floats(ref['outputs.text_features']))).toBeLessThan(TOL)
  })

  it('normalised embeddings and logits_per_image = exp(logit_scale) * cosine', async () => {
    const img = l2normRows(await clip.imageFeatures(ref['inputs.pixel_values']))
    const txt = l2normRows(await clip.textFeatures(ref['inputs.text_ids']))
    expect(relError(img, floats(ref['outputs.image_embeds']))).toBeLessThan(TOL)
    expect(relError(txt, floats(ref['outputs.text_embeds']))).toBeLessThan(TOL)
    const scale = Math.exp(clip.logitScale)
    const [I, D] = ref['outputs.image_embeds'].shape
    const T = ref['outputs.text_embeds'].shape[0]
    const logits = new Float32Array(I * T)
    for (let i = 0; i < I; i++) for (let t = 0; t < T; t++) {
      let s = 0
      for (let k = 0; k < D; k++) s += img[i * D + k] * txt[t * D + k]
      logits[i * T + t] = scale * s
    }
    expect(relError(logits, floats(ref['outputs.logits_per_image']))).toBeLessThan(TOL)
  })
})

describe('GPT-2 matches the reference', () => {
  it('logits for token ids', async () => {
    const logits = await gpt2.logits(ref['inputs.gpt2_ids'])
    expect(logits.shape).toEqual(ref['outputs.gpt2_logits'].shape)
    expect(relError(floats(logits), floats(ref['outputs.gpt2_logits']))).toBeLessThan(TOL)
  })

  it('logits with a prefix of embeddings before the tokens', async () => {
    const logits = await gpt2.logits(ref['inputs.gpt2_ids'], { prefix: ref['inputs.prefix'] })
    expect(logits.shape).toEqual(ref['outputs.gpt2_prefix_logits'].shape)
    expect(relError(floats(logits), floats(ref['outputs.gpt2_prefix_logits']))).toBeLessThan(TOL)
  })

  it('greedy decoding from the prefix alone: ids and per-step logits (KV cache path)', async () => {
    const want = ref['outputs.greedy_ids']
    const { ids } = await gpt2.generate(ref['inputs.prefix'], { maxTokens: 10, stop: null, stopAtEos: false })
    expect(ids.toArray()).toEqual(want.toArray())
    // Teacher-forcing the greedy ids reproduces the logits seen at each step.
    const [B, L] = want.shape
    const P = ref['inputs.prefix'].shape[1]
    const prev = new BigInt64Array(B * (L - 1))
    for (let b = 0; b < B; b++) for (let t = 0; t < L - 1; t++) prev[b * (L - 1) + t] = (want.data as BigInt64Array)[b * L + t]
    const logits = await gpt2.logits(new Tensor('int64', [B, L - 1], prev), { prefix: ref['inputs.prefix'] })
    expect(relError(slice3(logits, P - 1, P - 1 + L), floats(ref['outputs.greedy_logits']))).toBeLessThan(TOL)
  })
})
