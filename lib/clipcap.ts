// ClipCap (Mokady et al. 2021) checkpoints in and out. A released ClipCap file (`coco_weights.pt`,
// `conceptual_weights.pt`) is a torch.save'd state_dict of ClipCaptionModel: `clip_project.*` (the mapper) and `gpt.*`
// (a whole GPT2LMHeadModel, with its `attn.bias` / `attn.masked_bias` buffers and the tied `lm_head.weight`). Its keys
// already are semicap's captioner keys (semicap writes `gpt.` without `transformer.`; the native loader accepts both), so
// loading is: infer the mapper from the keys' shapes, build the captioner, load the file. This module only infers and
// validates; captioner.ts builds.
import type { BatchingOptions } from './batcher.js'
import { SemicapError } from './errors.js'
import type { DecodeOptions } from './decoding.js'
import type { Gpt2ConfigWire, SafetensorsHeader } from './native.js'
import type { Gpt2Tokenizer } from './tokenizers/gpt2.js'

/** What Captioner.fromClipCap needs besides the weights file. */
export interface ClipCapOptions extends BatchingOptions {
  /** The Hugging Face CLIP folder (or a loaded Clip) whose image features the checkpoint was trained on. */
  clip: string | import('./clip.js').Clip
  /** A Hugging Face GPT-2 folder: its config.json and tokenizer (the weights come from the ClipCap file). */
  gpt2: string
  /** Transformer mapper heads: not recoverable from the weights. Default 8 (ClipCap's). */
  heads?: number
  /** L2-normalise CLIP features before the mapper. Default false, as ClipCap's released models were trained. */
  normalizePrefix?: boolean
  device?: import('./device.js').DeviceOption
  dtype?: import('./device.js').InferenceDtype
}

/** The mapper a ClipCap file holds, read off its tensor shapes. */
export interface ClipCapLayout {
  mapper: { type: 'mlp' | 'transformer'; prefixLength: number; clipLength?: number; layers?: number; heads?: number; mlpRatio?: number }
  /** CLIP feature size the mapper expects (ClipCap's prefix_size). */
  clipDim: number
}

/** ClipCap's generation settings: entry_length 67, stop at the '.' token (kept), no end-of-text stop. */
export const CLIPCAP_MAX_TOKENS = 67

function shapeOf(header: SafetensorsHeader, name: string): number[] | undefined {
  return header.tensors[name]?.shape
}

/** Infers ClipCap's mapper from a checkpoint's header; throws E_CHECKPOINT naming what does not fit. */
export function inferClipCapLayout(header: SafetensorsHeader, path: string, gpt2: Gpt2ConfigWire, heads = 8): ClipCapLayout {
  const bad = (msg: string): never => {
    throw new SemicapError('E_CHECKPOINT', `${path}: ${msg}`)
  }
  const shape = (name: string, rank: number): number[] => {
    const s = shapeOf(header, name) ?? bad(`missing tensor '${name}'`)
    if (s.length !== rank) bad(`'${name}' has shape [${s.join(', ')}], expected rank ${rank}`)
    return s
  }
  if (!header.names.some((n) => n.startsWith('clip_project.'))) bad('no clip_project.* tensors: not a ClipCap checkpoint (ClipCaptionModel.state_dict())')
  if (!header.names.some((n) => n.startsWith('gpt.'))) bad('no gpt.* tensors: ClipCap checkpoints carry the whole GPT-2 state_dict')
  const C = gpt2.nEmbd
  const wte = shape(header.names.includes('gpt.transformer.wte.weight') ? 'gpt.transformer.wte.weight' : 'gpt.wte.weight', 2)
  if (wte[1] !== C) bad(`GPT-2 n_embd is ${wte[1]} in the file but ${C} in the gpt2 folder's config.json`)
  if (wte[0] !== gpt2.vocabSize) bad(`GPT-2 vocabulary is ${wte[0]} in the file but ${gpt2.vocabSize} in the gpt2 folder's config.json`)

  if (header.tensors['clip_project.model.0.weight']) {
    const [hidden, clipDim] = shape('clip_project.model.0.weight', 2)
    const [out, hidden2] = shape('clip_project.model.2.weight', 2)
    if (hidden2 !== hidden) bad(`clip_project.model.2.weight takes ${hidden2} inputs, model.0 gives ${hidden}`)
    if (header.tensors['clip_project.model.4.weight']) bad('MLP mappers with more than two linear layers are not supported')
    if (out % C !== 0) bad(`the MLP mapper's output (${out}) is not a multiple of GPT-2's n_embd (${C})`)
    const K = out / C
    if (hidden !== Math.floor((C * K) / 2)) bad(`the MLP mapper's hidden size is ${hidden}; ClipCap's is n_embd*prefix_length/2 = ${Math.floor((C * K) / 2)}`)
    return { mapper: { type: 'mlp', prefixLength: K }, clipDim }
  }
  if (header.tensors['clip_project.linear.weight']) {
    const [lin, clipDim] = shape('clip_project.linear.weight', 2)
    const [K, C2] = shape('clip_project.prefix_const', 2)
    if (C2 !== C) bad(`clip_project.prefix_const has width ${C2}, GPT-2's n_embd is ${C}`)
    if (lin % C !== 0) bad(`clip_project.linear's output (${lin}) is not a multiple of n_embd (${C})`)
    let layers = 0
    while (header.tensors[`clip_project.transformer.layers.${layers}.norm1.weight`]) layers++
    if (layers === 0) bad('transformer mapper without clip_project.transformer.layers.0.*')
    const [fc1] = shape('clip_project.transformer.layers.0.mlp.fc1.weight', 2)
    if (!Number.isInteger(heads) || heads < 1 || C % heads !== 0) throw new RangeError(`heads must be a positive divisor of n_embd (${C}), got ${String(heads)}`)
    return { mapper: { type: 'transformer', prefixLength: K, clipLength: lin / C, layers, heads, mlpRatio: fc1 / C }, clipDim }
  }
  return bad('clip_project.* holds neither an MLP (model.0/model.2) nor a transformer mapper (linear, prefix_const, transformer.layers)')
}

/** ClipCap's decoding: greedy (beam on request), at most 67 tokens, ending at the token tokenizer.encode('.')[0]. */
export function clipCapDecodeDefaults(tokenizer: Gpt2Tokenizer | undefined, gpt2: Gpt2ConfigWire, prefixLength: number): DecodeOptions {
  if (!tokenizer) throw new SemicapError('E_TOKENIZER', 'ClipCap decoding needs the GPT-2 tokenizer (vocab.json + merges.txt in the gpt2 folder)')
  const dot = tokenizer.encode('.')[0]
  return {
    decoding: 'greedy',
    maxTokens: Math.max(1, Math.min(CLIPCAP_MAX_TOKENS, gpt2.nPositions - prefixLength)),
    stopIds: [dot],
    stopAtEos: false,
  }
}

/**
 * semicap captioner keys -> ClipCap's: `gpt.X` -> `gpt.transformer.X`; the tied head becomes `gpt.lm_head.weight`
 * sharing wte's storage (as GPT2LMHeadModel.state_dict() has it). With `gpt2Buffers`, each layer's `attn.bias`
 * (causal mask, all layers sharing one storage) and `attn.masked_bias` as transformers < 4.31 saved them.
 */
export function clipCapKeys(names: string[]): { rename: Map<string, string>; aliases: Record<string, string> } {
  const rename = new Map<string, string>()
  for (const n of names) {
    if (!n.startsWith('gpt.')) rename.set(n, n)
    else if (n === 'gpt.lm_head.weight') rename.set(n, n)
    else rename.set(n, 'gpt.transformer.' + n.slice(4))
  }
  const aliases: Record<string, string> = {}
  if (!names.includes('gpt.lm_head.weight')) aliases['gpt.lm_head.weight'] = 'gpt.transformer.wte.weight'
  return { rename, aliases }
}
