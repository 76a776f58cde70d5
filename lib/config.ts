// Hugging Face config.json -> the plain structs native code takes. Structural fields must be present and be
// positive integers; optional ones get Hugging Face's defaults. Errors name the file and the field.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { SemicapError } from './errors.js'
import type { ClipConfigWire, ClipTowerWire, Gpt2ConfigWire } from './native.js'

type Json = Record<string, unknown>

export async function readJson(path: string): Promise<Json> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new SemicapError('E_CONFIG', `${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
  }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new SemicapError('E_CONFIG', `${path}: not valid JSON (${(err as Error).message})`, { cause: err })
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new SemicapError('E_CONFIG', `${path}: expected a JSON object`)
  return value as Json
}

class Fields {
  constructor(readonly obj: Json, readonly where: string) {}
  int(key: string, fallback?: number, min = 1): number {
    const v = this.obj[key]
    if (v === undefined || v === null) {
      if (fallback === undefined) throw new SemicapError('E_CONFIG', `${this.where}: missing field '${key}'`)
      return fallback
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new SemicapError('E_CONFIG', `${this.where}: '${key}' must be an integer >= ${min}, got ${JSON.stringify(v)}`)
    return v
  }
  num(key: string, fallback: number): number {
    const v = this.obj[key]
    if (v === undefined || v === null) return fallback
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new SemicapError('E_CONFIG', `${this.where}: '${key}' must be a number`)
    return v
  }
  str(key: string, fallback: string): string {
    const v = this.obj[key]
    if (v === undefined || v === null) return fallback
    if (typeof v !== 'string') throw new SemicapError('E_CONFIG', `${this.where}: '${key}' must be a string`)
    return v
  }
  section(key: string): Fields {
    const v = this.obj[key]
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new SemicapError('E_CONFIG', `${this.where}: missing section '${key}'`)
    return new Fields(v as Json, `${this.where} ${key}`)
  }
}

const ACTS = new Set(['quick_gelu', 'gelu_new', 'gelu_pytorch_tanh', 'gelu_fast', 'gelu', 'relu', 'tanh'])
function act(f: Fields, key: string, fallback: string): string {
  const a = f.str(key, fallback)
  if (!ACTS.has(a)) throw new SemicapError('E_CONFIG', `${f.where}: unsupported ${key} '${a}' (supported: ${[...ACTS].join(', ')})`)
  return a
}

function tower(f: Fields, d: { hidden: number; intermediate: number; heads: number; layers: number }): ClipTowerWire {
  return {
    hidden: f.int('hidden_size', d.hidden),
    intermediate: f.int('intermediate_size', d.intermediate),
    heads: f.int('num_attention_heads', d.heads),
    layers: f.int('num_hidden_layers', d.layers),
    act: act(f, 'hidden_act', 'quick_gelu'),
    eps: f.num('layer_norm_eps', 1e-5),
  }
}

export interface ClipFolderConfig {
  wire: ClipConfigWire
  raw: Json
  /** Tokenizer the folder asks for: CLIP BPE by default; 'gpt2' lets a tiny model use the GPT-2 tokenizer. */
  tokenizer: 'clip' | 'gpt2'
  bosTokenId: number
  padTokenId: number
}

export async function readClipConfig(dir: string): Promise<ClipFolderConfig> {
  const path = join(dir, 'config.json')
  return clipConfigFromJson(await readJson(path), path)
}

export function clipConfigFromJson(raw: Json, path: string): ClipFolderConfig {
  const f = new Fields(raw, path)
  const v = f.section('vision_config')
  const t = f.section('text_config')
  // Hugging Face's CLIPConfig defaults (ViT-B/32) for what a saved config may omit.
  const wire: ClipConfigWire = {
    vision: tower(v, { hidden: 768, intermediate: 3072, heads: 12, layers: 12 }),
    text: tower(t, { hidden: 512, intermediate: 2048, heads: 8, layers: 12 }),
    imageSize: v.int('image_size', 224),
    patchSize: v.int('patch_size', 32),
    numChannels: v.int('num_channels', 3),
    vocabSize: t.int('vocab_size', 49408),
    maxPositions: t.int('max_position_embeddings', 77),
    eosTokenId: t.int('eos_token_id', 2, 0),
    projectionDim: f.int('projection_dim', 512),
  }
  const semicap = (raw.semicap ?? {}) as Json
  const tok = semicap.tokenizer === 'gpt2' ? 'gpt2' : 'clip'
  return { wire, raw, tokenizer: tok, bosTokenId: t.int('bos_token_id', 49406, 0), padTokenId: t.int('pad_token_id', 1, 0) }
}

export function gpt2ConfigFromJson(raw: Json, where: string): Gpt2ConfigWire {
  const f = new Fields(raw, where)
  return {
    nEmbd: f.int('n_embd'),
    nHead: f.int('n_head'),
    nLayer: f.int('n_layer'),
    nPositions: f.int('n_positions', 1024),
    vocabSize: f.int('vocab_size'),
    nInner: f.int('n_inner', 0, 0),
    eps: f.num('layer_norm_epsilon', 1e-5),
    act: act(f, 'activation_function', 'gelu_new'),
    eosTokenId: f.int('eos_token_id', 50256, 0),
    // Hugging Face's default is tied; false gives GPT-2 its own lm_head.weight.
    tieWordEmbeddings: raw.tie_word_embeddings !== false,
  }
}

export async function readGpt2Config(dir: string): Promise<{ wire: Gpt2ConfigWire; raw: Json }> {
  const path = join(dir, 'config.json')
  const raw = await readJson(path)
  return { wire: gpt2ConfigFromJson(raw, path), raw }
}
