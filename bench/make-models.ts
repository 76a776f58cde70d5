// Generates random-weight checkpoints with the exact Hugging Face layouts the benchmark needs:
//   <out>/clip/{config.json,model.safetensors}   openai/clip-vit-base-patch32 (CLIPModel key names)
//   <out>/gpt2/{config.json,model.safetensors}   gpt2 124M (official key names, no "transformer." prefix,
//                                                 Conv1D weights stored [in, out], lm_head tied to wte)
//   <out>/mapper.safetensors                     ClipCap MLP mapper: Linear(clip -> gpt*P/2), Tanh, Linear(-> gpt*P)
//
// Usage: npx tsx bench/make-models.ts --out bench/out/models [--small] [--seed N] [--prefix 10] [--std S] [--hf-buffers]
//   --small       tiny versions of all three (same key names, image size 224, vocabularies kept)
//   --hf-buffers  also write the non-parameter buffers found in the hub files
//                 (CLIP *.embeddings.position_ids as I64 [1, n], GPT-2 h.N.attn.bias causal masks [1,1,n,n])
//
// Initialisation: matrices/embeddings N(0, 0.02) (--small: 0.07, override with --std); LayerNorm weights 1 + N(0, 0.02); biases N(0, 0.01);
// logit_scale = 2.6592. Every tensor has its own xorshift32 stream seeded from (seed, name), so a
// tensor's values do not depend on which other tensors exist or their order.
import * as fs from 'node:fs'
import * as path from 'node:path'
import { numel, writeSafetensors, type TensorSpec } from './safetensors.js'

type Init =
  | { kind: 'normal'; mean: number; std: number }
  | { kind: 'const'; value: number }
  | { kind: 'arange' } // I64 0..n-1 (position_ids)
  | { kind: 'tril' } // causal mask of ones/zeros, last two dims square

interface Spec extends TensorSpec {
  init: Init
}

// Std of matrices/embeddings: 0.02 for the full models; the tiny --small models default to 0.07 so
// that their (narrower) activations keep a similar scale and greedy ids still depend on the image.
let MATRIX_STD = 0.02
const W = (name: string, shape: number[]): Spec => ({ name, dtype: 'F32', shape, init: { kind: 'normal', mean: 0, std: MATRIX_STD } })
const B = (name: string, shape: number[]): Spec => ({ name, dtype: 'F32', shape, init: { kind: 'normal', mean: 0, std: 0.01 } })
const LN = (prefix: string, dim: number): Spec[] => [
  { name: `${prefix}.weight`, dtype: 'F32', shape: [dim], init: { kind: 'normal', mean: 1, std: 0.02 } },
  B(`${prefix}.bias`, [dim]),
]
const Lin = (prefix: string, out: number, inp: number, bias = true): Spec[] =>
  bias ? [W(`${prefix}.weight`, [out, inp]), B(`${prefix}.bias`, [out])] : [W(`${prefix}.weight`, [out, inp])]
// GPT-2 Conv1D: weight [in, out]
const Conv1D = (prefix: string, inp: number, out: number): Spec[] => [W(`${prefix}.weight`, [inp, out]), B(`${prefix}.bias`, [out])]

// ---------------------------------------------------------------------------------------------
// Configs

interface ClipSizes {
  vision: { hidden: number; layers: number; heads: number; mlp: number; patch: number; image: number }
  text: { hidden: number; layers: number; heads: number; mlp: number; vocab: number; positions: number }
  projection: number
}
interface Gpt2Sizes {
  embd: number
  layers: number
  heads: number
  positions: number
  vocab: number
}

const FULL_CLIP: ClipSizes = {
  vision: { hidden: 768, layers: 12, heads: 12, mlp: 3072, patch: 32, image: 224 },
  text: { hidden: 512, layers: 12, heads: 8, mlp: 2048, vocab: 49408, positions: 77 },
  projection: 512,
}
const SMALL_CLIP: ClipSizes = {
  vision: { hidden: 64, layers: 2, heads: 4, mlp: 256, patch: 32, image: 224 },
  text: { hidden: 32, layers: 2, heads: 4, mlp: 128, vocab: 49408, positions: 77 },
  projection: 32,
}
const FULL_GPT2: Gpt2Sizes = { embd: 768, layers: 12, heads: 12, positions: 1024, vocab: 50257 }
const SMALL_GPT2: Gpt2Sizes = { embd: 64, layers: 2, heads: 4, positions: 1024, vocab: 50257 }

function clipConfig(c: ClipSizes): object {
  // Shaped like the hub's openai/clip-vit-base-patch32 config.json (legacy eos_token_id 2 included).
  return {
    _name_or_path: 'openai/clip-vit-base-patch32',
    architectures: ['CLIPModel'],
    initializer_factor: 1.0,
    logit_scale_init_value: 2.6592,
    model_type: 'clip',
    projection_dim: c.projection,
    text_config: {
      _name_or_path: '',
      add_cross_attention: false,
      architectures: null,
      attention_dropout: 0.0,
      bos_token_id: 0,
      dropout: 0.0,
      eos_token_id: 2,
      hidden_act: 'quick_gelu',
      hidden_size: c.text.hidden,
      initializer_factor: 1.0,
      initializer_range: 0.02,
      intermediate_size: c.text.mlp,
      layer_norm_eps: 1e-5,
      max_position_embeddings: c.text.positions,
      model_type: 'clip_text_model',
      num_attention_heads: c.text.heads,
      num_hidden_layers: c.text.layers,
      pad_token_id: 1,
      projection_dim: c.projection,
      torch_dtype: null,
      vocab_size: c.text.vocab,
    },
    text_config_dict: null,
    torch_dtype: 'float32',
    transformers_version: null,
    vision_config: {
      _name_or_path: '',
      architectures: null,
      attention_dropout: 0.0,
      dropout: 0.0,
      hidden_act: 'quick_gelu',
      hidden_size: c.vision.hidden,
      image_size: c.vision.image,
      initializer_factor: 1.0,
      initializer_range: 0.02,
      intermediate_size: c.vision.mlp,
      layer_norm_eps: 1e-5,
      model_type: 'clip_vision_model',
      num_attention_heads: c.vision.heads,
      num_channels: 3,
      num_hidden_layers: c.vision.layers,
      patch_size: c.vision.patch,
      projection_dim: c.projection,
      torch_dtype: null,
    },
    vision_config_dict: null,
  }
}

function gpt2Config(g: Gpt2Sizes): object {
  // Shaped like the hub's gpt2 config.json.
  return {
    activation_function: 'gelu_new',
    architectures: ['GPT2LMHeadModel'],
    attn_pdrop: 0.1,
    bos_token_id: 50256,
    embd_pdrop: 0.1,
    eos_token_id: 50256,
    initializer_range: 0.02,
    layer_norm_epsilon: 1e-5,
    model_type: 'gpt2',
    n_ctx: g.positions,
    n_embd: g.embd,
    n_head: g.heads,
    n_layer: g.layers,
    n_positions: g.positions,
    resid_pdrop: 0.1,
    summary_activation: null,
    summary_first_dropout: 0.1,
    summary_proj_to_labels: true,
    summary_type: 'cls_index',
    summary_use_proj: true,
    task_specific_params: { 'text-generation': { do_sample: true, max_length: 50 } },
    vocab_size: g.vocab,
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor lists

function clipSpecs(c: ClipSizes, hfBuffers: boolean): Spec[] {
  const v = c.vision
  const t = c.text
  const nPos = (v.image / v.patch) ** 2 + 1
  const s: Spec[] = []
  const encoder = (prefix: string, d: number, m: number, layers: number) => {
    for (let i = 0; i < layers; i++) {
      const p = `${prefix}.encoder.layers.${i}`
      for (const proj of ['k_proj', 'v_proj', 'q_proj', 'out_proj']) s.push(...Lin(`${p}.self_attn.${proj}`, d, d))
      s.push(...LN(`${p}.layer_norm1`, d))
      s.push(...Lin(`${p}.mlp.fc1`, m, d))
      s.push(...Lin(`${p}.mlp.fc2`, d, m))
      s.push(...LN(`${p}.layer_norm2`, d))
    }
  }
  s.push({ name: 'logit_scale', dtype: 'F32', shape: [], init: { kind: 'const', value: 2.6592 } })
  // text tower
  s.push(W('text_model.embeddings.token_embedding.weight', [t.vocab, t.hidden]))
  s.push(W('text_model.embeddings.position_embedding.weight', [t.positions, t.hidden]))
  if (hfBuffers) s.push({ name: 'text_model.embeddings.position_ids', dtype: 'I64', shape: [1, t.positions], init: { kind: 'arange' } })
  encoder('text_model', t.hidden, t.mlp, t.layers)
  s.push(...LN('text_model.final_layer_norm', t.hidden))
  // vision tower
  s.push(W('vision_model.embeddings.class_embedding', [v.hidden]))
  s.push(W('vision_model.embeddings.patch_embedding.weight', [v.hidden, 3, v.patch, v.patch]))
  s.push(W('vision_model.embeddings.position_embedding.weight', [nPos, v.hidden]))
  if (hfBuffers) s.push({ name: 'vision_model.embeddings.position_ids', dtype: 'I64', shape: [1, nPos], init: { kind: 'arange' } })
  s.push(...LN('vision_model.pre_layrnorm', v.hidden))
  encoder('vision_model', v.hidden, v.mlp, v.layers)
  s.push(...LN('vision_model.post_layernorm', v.hidden))
  // projections (no bias)
  s.push(W('visual_projection.weight', [c.projection, v.hidden]))
  s.push(W('text_projection.weight', [c.projection, t.hidden]))
  return s
}

function gpt2Specs(g: Gpt2Sizes, hfBuffers: boolean): Spec[] {
  const d = g.embd
  const s: Spec[] = [W('wte.weight', [g.vocab, d]), W('wpe.weight', [g.positions, d])]
  for (let i = 0; i < g.layers; i++) {
    const p = `h.${i}`
    s.push(...LN(`${p}.ln_1`, d))
    if (hfBuffers) s.push({ name: `${p}.attn.bias`, dtype: 'F32', shape: [1, 1, g.positions, g.positions], init: { kind: 'tril' } })
    s.push(...Conv1D(`${p}.attn.c_attn`, d, 3 * d))
    s.push(...Conv1D(`${p}.attn.c_proj`, d, d))
    s.push(...LN(`${p}.ln_2`, d))
    s.push(...Conv1D(`${p}.mlp.c_fc`, d, 4 * d))
    s.push(...Conv1D(`${p}.mlp.c_proj`, 4 * d, d))
  }
  s.push(...LN('ln_f', d))
  return s
}

function mapperSpecs(clipDim: number, gptDim: number, prefix: number): Spec[] {
  const hidden = Math.floor((gptDim * prefix) / 2)
  return [...Lin('mapper.0', hidden, clipDim), ...Lin('mapper.2', gptDim * prefix, hidden)]
}

// ---------------------------------------------------------------------------------------------
// Random numbers: xorshift32 + Box-Muller, one stream per tensor.

function fnv1a(str: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) >>> 0
  for (let i = 0; i < str.length; i++) {
    h ^= str.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h === 0 ? 0x9e3779b9 : h
}

class NormalStream {
  private s: number
  private spare = 0
  private hasSpare = false
  constructor(seed: number) {
    this.s = seed | 0 || 0x2545f491
  }
  /** Fills `out` with mean + std * N(0, 1). */
  fill(out: Float32Array, mean: number, std: number): void {
    let s = this.s
    let i = 0
    const n = out.length
    if (this.hasSpare && n > 0) {
      out[i++] = mean + std * this.spare
      this.hasSpare = false
    }
    const TWO_PI = 2 * Math.PI
    const INV = 1 / 4294967296
    while (i < n) {
      s ^= s << 13
      s ^= s >>> 17
      s ^= s << 5
      const u1 = ((s >>> 0) + 1) * INV // (0, 1]
      s ^= s << 13
      s ^= s >>> 17
      s ^= s << 5
      const u2 = (s >>> 0) * INV // [0, 1)
      const r = Math.sqrt(-2 * Math.log(u1))
      const a = TWO_PI * u2
      out[i++] = mean + std * r * Math.cos(a)
      const z1 = r * Math.sin(a)
      if (i < n) out[i++] = mean + std * z1
      else {
        this.spare = z1
        this.hasSpare = true
      }
    }
    this.s = s
  }
}

function writeModel(file: string, specs: Spec[], seed: number, metadata: Record<string, string>): number {
  const streams = new Map<string, NormalStream>()
  const byName = new Map(specs.map((s) => [s.name, s]))
  return writeSafetensors(
    file,
    specs,
    (spec, chunk, start) => {
      const init = byName.get(spec.name)!.init
      if (init.kind === 'normal') {
        let st = streams.get(spec.name)
        if (!st) streams.set(spec.name, (st = new NormalStream(fnv1a(spec.name, seed))))
        st.fill(chunk as Float32Array, init.mean, init.std)
      } else if (init.kind === 'const') {
        ;(chunk as Float32Array).fill(init.value)
      } else if (init.kind === 'arange') {
        const c = chunk as BigInt64Array
        for (let i = 0; i < c.length; i++) c[i] = BigInt(start + i)
      } else {
        const n = spec.shape[spec.shape.length - 1]
        const c = chunk as Float32Array
        for (let i = 0; i < c.length; i++) {
          const flat = start + i
          const row = Math.floor(flat / n) % n
          c[i] = flat % n <= row ? 1 : 0
        }
      }
    },
    { metadata },
  )
}

// ---------------------------------------------------------------------------------------------

function parseArgs(argv: string[]) {
  const opts = { out: '', small: false, seed: 1234, prefix: 10, hfBuffers: false, std: NaN }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      const v = argv[++i]
      if (v === undefined) throw new Error(`${a} needs a value`)
      return v
    }
    if (a === '--out') opts.out = next()
    else if (a === '--small') opts.small = true
    else if (a === '--seed') opts.seed = Number(next())
    else if (a === '--prefix') opts.prefix = Number(next())
    else if (a === '--std') opts.std = Number(next())
    else if (a === '--hf-buffers') opts.hfBuffers = true
    else if (a === '-h' || a === '--help') {
      console.log('usage: npx tsx bench/make-models.ts --out DIR [--small] [--seed N] [--prefix 10] [--std S] [--hf-buffers]')
      process.exit(0)
    } else throw new Error(`unknown argument ${a}`)
  }
  if (!opts.out) throw new Error('--out DIR is required')
  if (Number.isNaN(opts.std)) opts.std = opts.small ? 0.07 : 0.02
  if (!(opts.std > 0)) throw new Error('bad --std')
  if (!Number.isInteger(opts.seed) || !Number.isInteger(opts.prefix) || opts.prefix < 1) throw new Error('bad --seed/--prefix')
  return opts
}

function main() {
  const opts = parseArgs(process.argv.slice(2))
  MATRIX_STD = opts.std
  const clip = opts.small ? SMALL_CLIP : FULL_CLIP
  const gpt2 = opts.small ? SMALL_GPT2 : FULL_GPT2
  const t0 = performance.now()
  const summary: Record<string, unknown> = { out: opts.out, small: opts.small, seed: opts.seed, prefix: opts.prefix, std: opts.std }

  fs.mkdirSync(path.join(opts.out, 'clip'), { recursive: true })
  fs.mkdirSync(path.join(opts.out, 'gpt2'), { recursive: true })

  const jobs: [string, string, Spec[], object | null, Record<string, string>][] = [
    ['clip', path.join(opts.out, 'clip', 'model.safetensors'), clipSpecs(clip, opts.hfBuffers), clipConfig(clip), { format: 'pt' }],
    ['gpt2', path.join(opts.out, 'gpt2', 'model.safetensors'), gpt2Specs(gpt2, opts.hfBuffers), gpt2Config(gpt2), { format: 'pt' }],
    [
      'mapper',
      path.join(opts.out, 'mapper.safetensors'),
      mapperSpecs(clip.projection, gpt2.embd, opts.prefix),
      null,
      { format: 'pt', kind: 'clipcap-mlp', prefix_length: String(opts.prefix), clip_dim: String(clip.projection), gpt_dim: String(gpt2.embd) },
    ],
  ]
  for (const [key, file, specs, config, metadata] of jobs) {
    const t = performance.now()
    if (config) fs.writeFileSync(path.join(path.dirname(file), 'config.json'), JSON.stringify(config, null, 2) + '\n')
    const bytes = writeModel(file, specs, opts.seed, metadata)
    const params = specs.filter((s) => s.dtype === 'F32' && s.init.kind !== 'tril').reduce((a, s) => a + numel(s.shape), 0)
    summary[key] = { file, tensors: specs.length, params, bytes, ms: Math.round(performance.now() - t) }
  }
  summary.total_ms = Math.round(performance.now() - t0)
  console.log(JSON.stringify(summary))
}

main()
