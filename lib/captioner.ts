// Captioner: frozen CLIP -> mapping network -> GPT-2. Create from Hugging Face folders, caption images, and
// save / load one self-contained folder (config.json + model.safetensors + clip/ + tokenizer files).
import { copyFile, link, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { Clip, type ModelLoadOptions } from './clip.js'
import { gpt2ConfigFromJson, readGpt2Config, readJson } from './config.js'
import { decodeWire, withDecodeDefaults, type DecodeOptions } from './decoding.js'
import { Batcher, batchingSettings, defaultBurst, guardRequest, onDevice, requestOptions, type BatchStats, type BatchingOptions, type RequestOptions } from './batcher.js'
import { loadedWeights, resolveDtype, type DeviceOption, type InferenceDtype, type LoadedWeights } from './device.js'
import { SemicapError } from './errors.js'
import { loadGpt2Tokenizer } from './gpt2.js'
import type { ImageInput } from './image.js'
import { call, native, type AddonCaptioner, type AddonDecodeBatch, type DecodeWire, type Gpt2ConfigWire, type LoadedWeightsWire, type MapperConfigWire } from './native.js'
import { Tensor, tensor } from './tensor.js'
import type { Gpt2Tokenizer } from './tokenizers/gpt2.js'
import { Lifecycle } from './lifecycle.js'
import { clipCapDecodeDefaults, clipCapKeys, inferClipCapLayout, type ClipCapOptions } from './clipcap.js'
import { loadSafetensors, readSafetensorsHeader, writeTorchCheckpoint } from './runtime.js'
import { findWeights, weightsFileSet } from './weights-files.js'
import { trainingBackend, type TrainOptions, type TrainingRun } from './trainable.js'

export interface MapperOptions {
  type?: 'mlp' | 'transformer'
  /** Prefix tokens K (ClipCap default 10). */
  prefixLength?: number
  /** Transformer mapper: CLIP tokens the embedding is expanded into, layers, heads. */
  clipLength?: number
  layers?: number
  heads?: number
}

export interface CaptionerCreateOptions extends BatchingOptions {
  /** A Hugging Face CLIP folder, or a loaded Clip (shared, not copied). */
  clip: string | Clip
  /** A Hugging Face GPT-2 folder. */
  gpt2: string
  mapper?: MapperOptions
  /** L2-normalise CLIP features before the mapper. Default false (ClipCap feeds raw features). */
  normalizePrefix?: boolean
  device?: DeviceOption
  /** CPU inference weights of CLIP, the mapper and GPT-2 (see ModelLoadOptions.dtype). */
  dtype?: InferenceDtype
  /** Seed of the mapper's random initialisation (default 0: every new captioner starts the same). */
  seed?: number
}

/** Captioner.load options: the models' device and CPU weights, and the batching of concurrent calls. */
export interface CaptionerLoadOptions extends ModelLoadOptions, BatchingOptions {}

/** Options of caption() / captionFeatures() / stream(): decoding, plus an AbortSignal and a deadline. */
export interface CaptionOptions extends DecodeOptions, RequestOptions {}

export interface Caption {
  text: string
  ids: number[]
  /** Mean log-probability per generated token. */
  score: number
}

const FORMAT = 1
const TOKENIZER_FILES = ['tokenizer.json', 'vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json']
const CLIP_FILES = ['config.json', ...TOKENIZER_FILES]

/** CLIP_FILES plus the weights file(s) of the CLIP folder (any format Clip.load reads; shards with their index). */
async function clipFiles(clip: Clip): Promise<string[]> {
  const weights = clip.weightsPath ?? (clip.dir ? await findWeights(clip.dir) : undefined)
  return weights ? [...CLIP_FILES, ...(await weightsFileSet(weights)).map((p) => basename(p))] : CLIP_FILES
}

function mlpRatioOf(o: MapperOptions): number {
  const r = (o as { mlpRatio?: unknown }).mlpRatio
  if (r === undefined) return 2
  if (typeof r !== 'number' || !(r > 0) || r > 64) throw new RangeError(`mapper.mlpRatio must be a number in (0, 64], got ${String(r)}`)
  return r
}

function mapperWire(o: MapperOptions = {}, clipDim: number, nEmbd: number): MapperConfigWire {
  if (o === null || typeof o !== 'object') throw new TypeError('mapper must be an object')
  const type = o.type ?? 'mlp'
  if (type !== 'mlp' && type !== 'transformer') throw new RangeError(`mapper.type must be 'mlp' or 'transformer', got ${String(type)}`)
  const pos = (v: unknown, name: string, d: number): number => {
    if (v === undefined) return d
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 4096) throw new RangeError(`mapper.${name} must be a positive integer, got ${String(v)}`)
    return v
  }
  return {
    type,
    clipDim,
    nEmbd,
    prefixLength: pos(o.prefixLength, 'prefixLength', 10),
    clipLength: pos(o.clipLength, 'clipLength', 10),
    layers: pos(o.layers, 'layers', 8),
    heads: pos(o.heads, 'heads', 8),
    // Not a user option: ClipCap's transformer mapper always uses 2; a ClipCap file's fc1 width is read as is.
    mlpRatio: mlpRatioOf(o),
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  )
}

/** A temporary name beside `path`, unique in this process too (concurrent saves into one folder must not share it). */
let tmpSeq = 0
const tmpName = (path: string): string => `${path}.tmp-${process.pid}-${++tmpSeq}`

/** Hard-links (or copies) `names` that exist in `from` into `to`; CLIP is frozen, so a link is a safe copy. */
async function linkFiles(from: string, to: string, names: string[]): Promise<void> {
  await mkdir(to, { recursive: true })
  for (const n of names) {
    const src = join(from, n)
    const dst = join(to, n)
    if (resolve(src) === resolve(dst)) continue
    const [s, d] = await Promise.all([stat(src).catch(() => undefined), stat(dst).catch(() => undefined)])
    if (!s) continue // (not in this folder)
    // Already this very file (linked by an earlier save): nothing to do. Linked again, the rename below would be a
    // no-op (rename(2) of a link onto another link of the same file succeeds and leaves both names).
    if (d && d.dev === s.dev && d.ino === s.ino) continue
    const tmp = tmpName(dst)
    await link(src, tmp).catch(() => copyFile(src, tmp))
    await rename(tmp, dst)
    await rm(tmp, { force: true }) // (a rename that found the same file, linked meanwhile, left it)
  }
}

async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = tmpName(path)
  await writeFile(tmp, text)
  await rename(tmp, path)
}

export class Captioner {
  /** How the mapper's and GPT-2's weights are held for CPU inference (set by create / load; CLIP's: clip.weights). */
  weights: LoadedWeights = { dtype: 'float32', isa: 'none', packedBytes: 0 }
  readonly #life: Lifecycle
  /**
   * @internal Decode options merged under every call's own (an option the call leaves undefined takes these); set
   * for captioners whose checkpoint implies a decoding (ClipCap's: stop at the '.' token).
   */
  decodeDefaults: DecodeOptions = {}
  #batching: Required<BatchingOptions> = { maxBatch: 16, maxQueue: 256 }
  #batcher: Batcher | undefined
  #nativeBatch: AddonDecodeBatch | undefined

  private constructor(
    readonly clip: Clip,
    /** @internal */ readonly addon: AddonCaptioner,
    readonly gpt2Config: Gpt2ConfigWire,
    readonly gpt2RawConfig: Record<string, unknown>,
    readonly mapper: MapperConfigWire,
    readonly normalizePrefix: boolean,
    readonly tokenizer: Gpt2Tokenizer | undefined,
    /** Where GPT-2's tokenizer files are (copied on save). */
    private readonly tokenizerDir: string | undefined,
    private readonly ownsClip: boolean,
  ) {
    // Released once nothing native holds the model (see dispose()); an owned CLIP after the captioner.
    this.#life = new Lifecycle('Captioner', () => {
      this.addon.dispose()
      if (this.ownsClip) return this.clip.dispose()
    })
  }

  get device(): string {
    return this.clip.device
  }

  /** A new captioner: CLIP and GPT-2 from Hugging Face folders, a freshly initialised mapper. */
  static async create(options: CaptionerCreateOptions): Promise<Captioner> {
    if (!options || typeof options !== 'object') throw new TypeError('Captioner.create: options must be an object')
    if (typeof options.gpt2 !== 'string') throw new TypeError('Captioner.create: gpt2 must be a folder path')
    if (options.normalizePrefix !== undefined && typeof options.normalizePrefix !== 'boolean') throw new TypeError('normalizePrefix must be a boolean')
    const seed = options.seed ?? 0
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError('seed must be a non-negative integer')
    const { wire: g, raw } = await readGpt2Config(options.gpt2)
    const gpt2Weights = await findWeights(options.gpt2)
    return Captioner.#assemble(options, g, raw, seed, (clip) => mapperWire(options.mapper, clip.projectionDim, g.nEmbd), (addon, device, dtype) => addon.loadGpt2(gpt2Weights, device, dtype))
  }

  /**
   * What create() and fromClipCap() share: CLIP (loaded unless given), the native captioner, its weights (`load`)
   * and GPT-2's tokenizer, in parallel; an owned CLIP is disposed again if any of it fails.
   */
  static async #assemble(
    options: CaptionerCreateOptions | ClipCapOptions,
    g: Gpt2ConfigWire,
    raw: Record<string, unknown>,
    seed: number | undefined,
    mapperFor: (clip: Clip) => MapperConfigWire,
    load: (addon: AddonCaptioner, device: string, dtype: InferenceDtype) => Promise<LoadedWeightsWire>,
  ): Promise<Captioner> {
    const batching = batchingSettings(options)
    const ownsClip = !(options.clip instanceof Clip)
    const clip = options.clip instanceof Clip ? options.clip : await Clip.load(options.clip, { device: options.device, dtype: options.dtype, prepare: 'vision' })
    try {
      const dtype = resolveDtype(options.dtype, clip.device)
      const mapper = mapperFor(clip)
      const normalizePrefix = options.normalizePrefix ?? false
      const addon = await call(() => new (native().AddonCaptioner)(clip.addon, { gpt2: g, mapper, normalizePrefix, ...(seed === undefined ? {} : { seed }) }))
      const [loaded, tokenizer] = await Promise.all([call(() => load(addon, clip.device, dtype)), loadGpt2Tokenizer(options.gpt2, g)])
      const captioner = new Captioner(clip, addon, g, raw, mapper, normalizePrefix, tokenizer, options.gpt2, ownsClip)
      captioner.weights = loadedWeights(loaded, dtype)
      captioner.#batching = onDevice(batching, captioner.device)
      return captioner
    } catch (err) {
      if (ownsClip) await clip.dispose()
      throw err
    }
  }

  /**
   * A captioner from a ClipCap checkpoint (`coco_weights.pt`, `conceptual_weights.pt`: torch.save'd
   * ClipCaptionModel state_dicts, read by semicap's restricted checkpoint reader, never by pickle). `clip` is the
   * Hugging Face CLIP folder whose image features the checkpoint was trained on, `gpt2` a GPT-2 folder for config and
   * tokenizer; the mapper (MLP or transformer) is inferred from the file. Captions default to ClipCap's decoding:
   * greedy to the '.' token, at most 67 tokens (`decoding: 'beam'` is ClipCap's generate_beam).
   */
  static async fromClipCap(weightsPath: string, options: ClipCapOptions): Promise<Captioner> {
    if (typeof weightsPath !== 'string' || weightsPath === '') throw new TypeError('Captioner.fromClipCap: weightsPath must be a non-empty string')
    if (!options || typeof options !== 'object') throw new TypeError('Captioner.fromClipCap: options must be an object')
    if (typeof options.gpt2 !== 'string') throw new TypeError('Captioner.fromClipCap: gpt2 must be a folder path')
    if (options.normalizePrefix !== undefined && typeof options.normalizePrefix !== 'boolean') throw new TypeError('normalizePrefix must be a boolean')
    const [header, { wire: g, raw }] = await Promise.all([readSafetensorsHeader(weightsPath), readGpt2Config(options.gpt2)])
    const layout = inferClipCapLayout(header, weightsPath, g, options.heads ?? 8)
    const mapperFor = (clip: Clip) => {
      if (layout.clipDim !== clip.projectionDim) {
        throw new SemicapError('E_CHECKPOINT', `${weightsPath}: the mapper takes ${layout.clipDim}-dim CLIP features but the CLIP model gives ${clip.projectionDim}: pass the CLIP the checkpoint was trained on`)
      }
      return mapperWire(layout.mapper, clip.projectionDim, g.nEmbd)
    }
    const captioner = await Captioner.#assemble(options, g, raw, undefined, mapperFor, (addon, device, dtype) => addon.load(weightsPath, device, dtype))
    captioner.decodeDefaults = clipCapDecodeDefaults(captioner.tokenizer, g, captioner.mapper.prefixLength)
    return captioner
  }

  /** Loads a folder written by `save()`. */
  static async load(dir: string, options: CaptionerLoadOptions = {}): Promise<Captioner> {
    if (typeof dir !== 'string') throw new TypeError('Captioner.load: dir must be a string')
    const batching = batchingSettings(options)
    const path = join(dir, 'config.json')
    const cfg = await readJson(path)
    const s = cfg.semicap as Record<string, unknown> | undefined
    if (!s || typeof s !== 'object' || s.format !== FORMAT) throw new SemicapError('E_CONFIG', `${path}: not a semicap captioner folder (no semicap.format ${FORMAT})`)
    const rawGpt2 = cfg.gpt2 as Record<string, unknown>
    if (!rawGpt2 || typeof rawGpt2 !== 'object') throw new SemicapError('E_CONFIG', `${path}: missing section 'gpt2'`)
    const g = gpt2ConfigFromJson(rawGpt2, `${path} gpt2`)
    const clip = await Clip.load(join(dir, typeof s.clip === 'string' ? s.clip : 'clip'), { device: options.device, dtype: options.dtype, prepare: 'vision' })
    const dtype = resolveDtype(options.dtype, clip.device)
    try {
      const mapper = mapperWire(s.mapper as MapperOptions, clip.projectionDim, g.nEmbd)
      const normalizePrefix = s.normalizePrefix === true
      const addon = await call(() => new (native().AddonCaptioner)(clip.addon, { gpt2: g, mapper, normalizePrefix }))
      const [loaded, tokenizer] = await Promise.all([call(() => addon.load(join(dir, 'model.safetensors'), clip.device, dtype)), loadGpt2Tokenizer(dir, g)])
      const captioner = new Captioner(clip, addon, g, rawGpt2, mapper, normalizePrefix, tokenizer, dir, true)
      captioner.weights = loadedWeights(loaded, dtype)
      captioner.#batching = onDevice(batching, captioner.device)
      if (s.decode !== undefined) {
        // Decoding the checkpoint implies (ClipCap's), checked now rather than at the first caption() call.
        if (s.decode === null || typeof s.decode !== 'object' || Array.isArray(s.decode)) throw new SemicapError('E_CONFIG', `${path}: semicap.decode must be an object`)
        try {
          decodeWire(s.decode as DecodeOptions, tokenizer, g)
        } catch (err) {
          throw new SemicapError('E_CONFIG', `${path}: semicap.decode: ${(err as Error).message}`, { cause: err })
        }
        captioner.decodeDefaults = s.decode as DecodeOptions
      }
      return captioner
    } catch (err) {
      clip.dispose()
      throw err
    }
  }

  /**
   * Writes config.json, model.safetensors (mapper + GPT-2), clip/ (linked when possible) and tokenizer files.
   * `format: 'clipcap'` writes instead `clipcap.pt`, a torch.save-format state_dict with ClipCap's key names (load it
   * with `model.load_state_dict(torch.load(path, weights_only=True))`), and `clipcap.json` with ClipCap's model
   * arguments. GPT-2's attn.bias / attn.masked_bias buffers are left out, as transformers >= 4.31 expects; set
   * `gpt2Buffers: true` for older transformers (ClipCap's own pinned version), whose strict loading requires them.
   */
  async save(dir: string, options: { format?: 'semicap' | 'clipcap'; gpt2Buffers?: boolean } = {}): Promise<void> {
    this.#live()
    if (typeof dir !== 'string') throw new TypeError('save: dir must be a string')
    if (options === null || typeof options !== 'object') throw new TypeError('save: options must be an object')
    const format = options.format ?? 'semicap'
    if (format !== 'semicap' && format !== 'clipcap') throw new RangeError(`save: format must be 'semicap' or 'clipcap', got ${String(format)}`)
    if (options.gpt2Buffers !== undefined && typeof options.gpt2Buffers !== 'boolean') throw new TypeError('save: gpt2Buffers must be a boolean')
    await mkdir(dir, { recursive: true })
    if (format === 'clipcap') return this.#saveClipCap(dir, options.gpt2Buffers ?? false)
    if (this.clip.dir) await linkFiles(this.clip.dir, join(dir, 'clip'), await clipFiles(this.clip))
    if (this.tokenizerDir) await linkFiles(this.tokenizerDir, dir, TOKENIZER_FILES)
    await call(() => this.#life.job(() => this.addon.save(join(dir, 'model.safetensors'), { format: 'pt', semicap: String(FORMAT) })))
    await writeFileAtomic(join(dir, 'config.json'), JSON.stringify(this.#configJson(), null, 2) + '\n')
  }

  #live(): void {
    this.#life.live()
  }

  async #saveClipCap(dir: string, gpt2Buffers: boolean): Promise<void> {
    // The weights pass through a temporary safetensors file: the native save takes the model's lock and copies
    // nothing else, and the rename to ClipCap's keys is plain JS.
    const tmp = join(dir, `.clipcap-${process.pid}-${Date.now()}.safetensors`)
    try {
      await call(() => this.#life.job(() => this.addon.save(tmp, { format: 'pt' })))
      const tensors = await loadSafetensors(tmp)
      const { rename, aliases } = clipCapKeys(Object.keys(tensors))
      const out: Record<string, Tensor> = {}
      for (const [k, t] of Object.entries(tensors)) out[rename.get(k)!] = t
      if (gpt2Buffers) {
        const n = this.gpt2Config.nPositions
        const mask = new Uint8Array(n * n)
        for (let i = 0; i < n; i++) mask.fill(1, i * n, i * n + i + 1)
        out['gpt.transformer.h.0.attn.bias'] = tensor(mask, [1, 1, n, n], 'bool')
        for (let l = 0; l < this.gpt2Config.nLayer; l++) {
          if (l > 0) aliases[`gpt.transformer.h.${l}.attn.bias`] = 'gpt.transformer.h.0.attn.bias'
          out[`gpt.transformer.h.${l}.attn.masked_bias`] = tensor(new Float32Array([-1e4]), [])
        }
      }
      await writeTorchCheckpoint(join(dir, 'clipcap.pt'), out, aliases)
    } finally {
      await rm(tmp, { force: true })
    }
    const m = this.mapper
    const args = {
      prefix_length: m.prefixLength,
      prefix_size: this.clip.projectionDim,
      mapping_type: m.type,
      ...(m.type === 'transformer' ? { clip_length: m.clipLength, num_layers: m.layers, heads: m.heads } : {}),
      normalize_prefix: this.normalizePrefix,
      gpt2: { n_embd: this.gpt2Config.nEmbd, n_layer: this.gpt2Config.nLayer, n_head: this.gpt2Config.nHead, vocab_size: this.gpt2Config.vocabSize },
    }
    await writeFileAtomic(join(dir, 'clipcap.json'), JSON.stringify(args, null, 2) + '\n')
  }

  /** Decoded token rows -> captions; `eos` is the end token the decoding stopped at (-1: none, an ordinary token). */
  #texts(ids: Tensor, scores: Tensor, eos: number): Caption[] {
    const [B, L] = ids.shape as [number, number]
    const data = ids.data as BigInt64Array
    const sc = scores.data as Float32Array
    const out: Caption[] = []
    for (let b = 0; b < B; b++) out.push(this.#caption(Array.from(data.subarray(b * L, (b + 1) * L), Number), sc[b]!, eos))
    return out
  }

  /** One decoded row (ending at -1 padding or the end token `eos`, when it is one) -> a caption. */
  #caption(ids: readonly number[], score: number, eos: number): Caption {
    const row: number[] = []
    for (const id of ids) {
      if (id < 0 || (eos >= 0 && id === eos)) break
      row.push(id)
    }
    return { text: this.#text(row), ids: row, score }
  }

  /** A caption's text: ids past the tokenizer's vocabulary (a padded embedding table) carry no text. */
  #text(row: readonly number[]): string {
    const t = this.tokenizer
    return t ? t.decode(row.filter((id) => id < t.vocabSize)).trim() : row.join(' ')
  }

  /** Greedy and sampled calls share decode steps unless maxBatch is 1; beam search and bf16 decode call by call. */
  #batched(wire: DecodeWire): boolean {
    return this.#batching.maxBatch > 1 && wire.method !== 'beam' && !wire.bf16
  }

  #batcherFor(): Batcher {
    this.#batcher ??= new Batcher(
      {
        batch: () => (this.#nativeBatch ??= new (native().AddonDecodeBatch)(this.addon)),
        job: (fn) => call(() => this.#life.job(fn)),
        burst: defaultBurst(this.device),
      },
      this.#batching,
    )
    return this.#batcher
  }

  /**
   * Captions images (paths, Buffers, raw RGB) or a preprocessed pixel tensor [B,3,S,S]. Greedy and sampled calls
   * made concurrently decode together (continuous batching: each image is a row that joins the running decode at
   * the next token boundary and leaves when it ends; see `maxBatch`), with the same tokens as alone. Beam search
   * and bf16 calls decode call by call, the images of one call together. `signal` / `deadline` reject the call
   * (AbortError / DeadlineError, both code E_ABORTED) and take its rows out of the batch.
   */
  async caption(images: ImageInput[] | Tensor, options: CaptionOptions = {}): Promise<Caption[]> {
    this.#live()
    const opts = withDecodeDefaults(options, this.decodeDefaults)
    const wire = decodeWire(opts, this.tokenizer, this.gpt2Config)
    const request = requestOptions(options)
    // A caller's tensor is copied now (see Tensor.toAsyncWire); pixels made here are borrowed (nobody else holds them).
    const pixels = images instanceof Tensor ? images : await this.clip.preprocess(images)
    if (pixels.dtype !== 'float32') throw new SemicapError('E_DTYPE', `pixels must be float32, got ${pixels.dtype}`)
    if (this.#batched(wire) && pixels.shape.length === 4 && pixels.shape[0]! > 0) {
      const rows = await call(() => this.#batcherFor().submit(pixels, wire, request))
      return rows.map((r) => this.#caption(r.ids, r.score, wire.eosId))
    }
    const w = images instanceof Tensor ? pixels.toAsyncWire() : pixels.toWire()
    const out = await guardRequest(request, () => call(() => this.#life.job(() => this.addon.caption(w, wire))))
    return this.#texts(Tensor.fromWire(out.ids), Tensor.fromWire(out.scores), wire.eosId)
  }

  /** Captions from precomputed CLIP image features [B, projection_dim] (batched like caption()). */
  async captionFeatures(features: Tensor, options: CaptionOptions = {}): Promise<Caption[]> {
    this.#live()
    if (!(features instanceof Tensor)) throw new TypeError('features must be a Tensor')
    const opts = withDecodeDefaults(options, this.decodeDefaults)
    const wire = decodeWire(opts, this.tokenizer, this.gpt2Config)
    const request = requestOptions(options)
    if (this.#batched(wire) && features.dtype === 'float32' && features.shape.length === 2 && features.shape[0]! > 0) {
      const rows = await call(() => this.#batcherFor().submit(features, wire, request))
      return rows.map((r) => this.#caption(r.ids, r.score, wire.eosId))
    }
    const w = features.toAsyncWire()
    const out = await guardRequest(request, () => call(() => this.#life.job(() => this.addon.captionFeatures(w, wire))))
    return this.#texts(Tensor.fromWire(out.ids), Tensor.fromWire(out.scores), wire.eosId)
  }

  /**
   * Captions one image (a path, Buffer, raw RGB, or pixels [1,3,S,S]) and yields its text in pieces as tokens are
   * decoded, batched with other calls like caption(). The pieces joined equal caption()'s text: leading and
   * trailing spaces are trimmed as there, and a UTF-8 character split between byte-level tokens is held back until
   * it is complete. Leaving the iteration early (break, return()) takes the row out of the batch at the next token
   * boundary. Beam search and bf16 decode the whole caption first and yield it as one piece.
   */
  async *stream(image: ImageInput | Tensor, options: CaptionOptions = {}): AsyncGenerator<string, void, undefined> {
    this.#live()
    const opts = withDecodeDefaults(options, this.decodeDefaults)
    const wire = decodeWire(opts, this.tokenizer, this.gpt2Config)
    const request = requestOptions(options)
    const pixels = image instanceof Tensor ? image : await this.clip.preprocess([image])
    if (pixels.shape.length !== 4 || pixels.shape[0] !== 1) throw new SemicapError('E_SHAPE', `stream() captions one image: pixels must have shape [1, 3, S, S], got [${pixels.shape.join(', ')}]`)
    if (!this.#batched(wire)) {
      const [c] = await this.caption(pixels, options)
      if (c!.text) yield c!.text
      return
    }
    const eos = wire.eosId
    const stop = new AbortController()
    const signal = request.signal ? AbortSignal.any([request.signal, stop.signal]) : stop.signal
    const tokens: number[] = []
    let wake: (() => void) | undefined
    let settled = false
    let failure: unknown
    let result: { ids: number[]; score: number } | undefined
    const done = call(() =>
      this.#batcherFor().submit(pixels, wire, {
        deadline: request.deadline,
        signal,
        onToken: (_row, token) => {
          tokens.push(token)
          wake?.()
        },
      }),
    ).then(
      (rows) => {
        result = rows[0]
        settled = true
        wake?.()
      },
      (err: unknown) => {
        failure = err
        settled = true
        wake?.()
      },
    )
    const ids: number[] = []
    let ended = false
    let emitted = ''
    try {
      for (;;) {
        if (tokens.length > 0) {
          for (const id of tokens.splice(0)) {
            if (ended || id < 0 || (eos >= 0 && id === eos)) ended = true
            else ids.push(id)
          }
          // What is certain of the final text: no incomplete character at the end, no trailing space yet.
          const text = this.tokenizer ? this.#text(ids).replace(/\uFFFD+$/, '').trim() : this.#text(ids)
          if (text.length > emitted.length && text.startsWith(emitted)) {
            const piece = text.slice(emitted.length)
            emitted = text
            yield piece
          }
          continue
        }
        if (settled) break
        await new Promise<void>((ok) => (wake = ok))
        wake = undefined
      }
      await done
      if (failure !== undefined) throw failure
      const final = this.#caption(result!.ids, result!.score, eos).text
      if (final.length > emitted.length) yield final.slice(emitted.length)
    } finally {
      if (!settled) stop.abort()
    }
  }

  /** Counters of the continuous batching (steps, rows per step, queue), e.g. for a server's /metrics. */
  batchStats(): BatchStats {
    return this.#batcherFor().stats()
  }

  /** Teacher-forced logits [B, K+T, vocab] for ids [B,T] after the prefix mapped from features [B, D]. */
  logits(ids: Tensor, features: Tensor): Promise<Tensor> {
    this.#live()
    if (!(ids instanceof Tensor) || !(features instanceof Tensor)) throw new TypeError('ids and features must be Tensors')
    return call(() => {
      const i = ids.toAsyncWire()
      const f = features.toAsyncWire()
      return this.#life.job(() => this.addon.logits(i, f))
    }).then(Tensor.fromWire)
  }

  /**
   * Trains the mapper (and GPT-2 unless trainLm is false) on its own native thread. Captioning calls made
   * meanwhile wait until the run ends (they are queued behind it). dispose() during the run aborts it.
   */
  train(options: TrainOptions): TrainingRun {
    this.#live()
    return this.#life.track(trainingBackend().captioner(this as never, options, (job) => this.#life.job(job)))
  }

  /** @internal what a training checkpoint folder holds besides the weights: config.json text, files to link. */
  async checkpointTemplate(): Promise<{ configJson: string; links: [string, string][] }> {
    const links: [string, string][] = []
    const add = async (from: string | undefined, prefix: string, names: string[]) => {
      if (!from) return
      for (const n of names) if (await exists(join(from, n))) links.push([resolve(from, n), prefix + n])
    }
    await add(this.clip.dir, 'clip/', await clipFiles(this.clip))
    await add(this.tokenizerDir, '', TOKENIZER_FILES)
    return { configJson: JSON.stringify(this.#configJson(), null, 2) + '\n', links }
  }

  #configJson(): object {
    return {
      semicap: {
        format: FORMAT,
        clip: 'clip',
        mapper: this.mapper,
        normalizePrefix: this.normalizePrefix,
        ...(Object.keys(this.decodeDefaults).length > 0 ? { decode: this.decodeDefaults } : {}),
      },
      gpt2: this.gpt2RawConfig,
    }
  }

  /** Trainable parameters (mapper + GPT-2). */
  get numParams(): number {
    return this.addon.numParams()
  }

  /**
   * Frees the captioner (and its CLIP when it loaded that itself). Never blocks the JS thread, so it is safe
   * anywhere, a training run's 'progress' handler included: later calls fail with E_DISPOSED at once, a training run
   * in progress is aborted (its promise rejects with E_DISPOSED), calls queued behind the running one fail with
   * E_DISPOSED, and native memory is released once the running call or run has stopped (at once when idle).
   * Idempotent; the promise resolves after the release (awaiting it is optional).
   */
  dispose(): Promise<void> {
    // Batched calls, queued or decoding, fail with E_DISPOSED now; a step in flight ends, then the rows are freed.
    this.#batcher?.close(new SemicapError('E_DISPOSED', 'Captioner was disposed'), this.#nativeBatch)
    return this.#life.dispose()
  }
  /** `await using`: waits for the calls queued so far, then disposes. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#batcher?.idle()
    await this.#life.drain()
    await this.dispose()
  }
}
