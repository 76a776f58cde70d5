// CLIP from a Hugging Face folder: image and text features with HF semantics, preprocessing and tokenization.
import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { clipConfigFromJson, readClipConfig, type ClipFolderConfig } from './config.js'
import { loadedWeights, resolveDevice, resolveDtype, type DeviceOption, type InferenceDtype, type LoadedWeights } from './device.js'
import { SemicapError } from './errors.js'
import { preprocessImages, type ImageInput } from './image.js'
import { call, callSync, native, type AddonClip, type TowerOutputWire, type WireTensor } from './native.js'
import { saveHfFolder } from './hf-folder.js'
import { findWeights } from './weights-files.js'
import { Lifecycle } from './lifecycle.js'
import { Tensor } from './tensor.js'
import { ClipTokenizer } from './tokenizers/clip.js'
import { Gpt2Tokenizer } from './tokenizers/gpt2.js'
import { trainingBackend, type PretrainOptions, type TrainingRun } from './trainable.js'

export interface ModelLoadOptions {
  device?: DeviceOption
  /**
   * CPU inference weights: 'float32' (default), 'bfloat16' (half the bytes, float32 arithmetic) or 'int8'
   * (weight-only, one scale per output channel: a quarter of the bytes). Converted once at load; training a model
   * uses its float32 weights and the converted copy follows. A CPU without AVX2 keeps float32 and says so.
   */
  dtype?: InferenceDtype
}

export interface ClipLoadOptions extends ModelLoadOptions {
  /**
   * The towers whose CPU weights are laid out for the kernels at load: 'all' (default), 'vision' or 'text'. The
   * other tower is laid out by its first call (which then takes longer), and until then its weights stay in the
   * file, out of memory: a captioner loads CLIP with 'vision' and saves the text tower's ~250 MB (ViT-B/32) unless
   * training's CLIP rewards use it.
   */
  prepare?: 'all' | 'vision' | 'text'
}

export interface TowerOutput {
  lastHidden: Tensor
  pooled: Tensor
  features: Tensor
}

const towerOut = (o: TowerOutputWire): TowerOutput => ({
  lastHidden: Tensor.fromWire(o.lastHidden),
  pooled: Tensor.fromWire(o.pooled),
  features: Tensor.fromWire(o.features),
})

export interface TextTokenizer {
  encode(text: string): number[]
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  )
}

export class Clip {
  readonly dir: string | undefined
  /** The weights file load() read (undefined for a created model). */
  weightsPath: string | undefined
  readonly config: ClipFolderConfig
  readonly device: string
  /** How the weights are held for CPU inference (set by load). */
  weights: LoadedWeights = { dtype: 'float32', isa: 'none', packedBytes: 0 }
  /** @internal */ readonly addon: AddonClip
  readonly #life: Lifecycle
  #tokenizer: ClipTokenizer | Gpt2Tokenizer | undefined
  /** exp(logit_scale), read on the JS thread only when no native job can hold the model (see #readLogitScale). */
  #logitScale: number

  private constructor(dir: string | undefined, config: ClipFolderConfig, device: string, addon: AddonClip, tokenizer: ClipTokenizer | Gpt2Tokenizer | undefined) {
    this.dir = dir
    this.config = config
    this.device = device
    this.addon = addon
    this.#tokenizer = tokenizer
    this.#life = new Lifecycle('Clip', () => addon.dispose())
    this.#logitScale = Clip.#readLogitScale(addon)
  }

  // Native logitScale() takes the model's lock, which a job or a whole training run holds: read it only where none can
  // run (right after loading, and inside the queue slot of a pretraining run once it has stopped).
  static #readLogitScale(addon: AddonClip): number {
    return callSync(() => addon.logitScale())
  }

  /**
   * Loads a Hugging Face CLIP folder: `config.json`, the weights (model.safetensors, else a sharded safetensors index,
   * pytorch_model.bin or a sharded .bin index: see WEIGHTS_FILE_NAMES) and the tokenizer files, when present.
   */
  static async load(dir: string, options: ClipLoadOptions = {}): Promise<Clip> {
    if (typeof dir !== 'string') throw new TypeError('Clip.load: dir must be a string')
    const device = resolveDevice(options.device)
    const dtype = resolveDtype(options.dtype, device)
    const prepare = options.prepare ?? 'all'
    if (prepare !== 'all' && prepare !== 'vision' && prepare !== 'text')
      throw new SemicapError('E_CONFIG', `Clip.load: prepare must be 'all', 'vision' or 'text', got ${JSON.stringify(options.prepare)}`)
    const config = await readClipConfig(dir)
    const addon = await call(() => new (native().AddonClip)(config.wire))
    // The weights load on a worker thread while this thread parses the tokenizer (~0.3 s for CLIP's BPE).
    const loadTokenizer = async (): Promise<ClipTokenizer | Gpt2Tokenizer | undefined> => {
      if (config.tokenizer === 'gpt2') return Gpt2Tokenizer.load(dir, { packageFallback: false })
      if ((await exists(join(dir, 'tokenizer.json'))) || (await exists(join(dir, 'vocab.json')))) return ClipTokenizer.load(dir)
      return undefined
    }
    const weightsPath = await findWeights(dir)
    const [loaded, tokenizer] = await Promise.all([call(() => addon.load(weightsPath, device, dtype, prepare)), loadTokenizer()])
    const clip = new Clip(dir, config, device, addon, tokenizer)
    clip.weightsPath = weightsPath
    clip.weights = loadedWeights(loaded, dtype)
    return clip
  }

  /**
   * A new, randomly initialised CLIP from a Hugging Face config object (for pretraining a small one). A tokenizer
   * may be given: a CLIP BPE, or a GPT-2 tokenizer (then `semicap.tokenizer = 'gpt2'` is recorded in the config).
   */
  static async create(rawConfig: Record<string, unknown>, options: ModelLoadOptions & { seed?: number; tokenizer?: ClipTokenizer | Gpt2Tokenizer } = {}): Promise<Clip> {
    const device = resolveDevice(options.device)
    const raw = { ...rawConfig } as Record<string, unknown>
    if (options.tokenizer instanceof Gpt2Tokenizer) raw.semicap = { ...((raw.semicap as object) ?? {}), tokenizer: 'gpt2' }
    const config = clipConfigFromJson(raw, 'CLIP config')
    const addon = await call(() => new (native().AddonClip)({ ...config.wire, seed: options.seed ?? 0 }))
    await call(() => addon.load(null, device))
    return new Clip(undefined, config, device, addon, options.tokenizer)
  }

  /** Writes a Hugging Face CLIP folder: config.json, model.safetensors and the tokenizer files. */
  async save(dir: string): Promise<void> {
    this.#life.live()
    await saveHfFolder(dir, this.config.raw, (p) => this.#life.job(() => call(() => this.addon.save(p, { format: 'pt' }))), this.#tokenizer)
  }

  /**
   * Contrastive pretraining (symmetric InfoNCE with the learned logit scale) on image-text pairs: pixels
   * [N,3,S,S] and one text per image.
   */
  train(data: { pixels: Tensor; texts: string[] }, options: PretrainOptions): TrainingRun {
    this.#life.live()
    // The run's queue slot re-reads the logit scale once the native run has stopped (it is what pretraining learns).
    const enqueue = <T>(job: () => Promise<T>) =>
      this.#life.job(async () => {
        try {
          return await job()
        } finally {
          try {
            this.#logitScale = Clip.#readLogitScale(this.addon)
          } catch {
            // the run's own error says what went wrong; the cached value stays
          }
        }
      })
    return this.#life.track(trainingBackend().clip(this as never, data, options, enqueue))
  }

  get imageSize(): number {
    return this.config.wire.imageSize
  }
  get projectionDim(): number {
    return this.config.wire.projectionDim
  }
  /** exp of the learned logit scale (cached: read at load and after pretraining, never while a job runs). */
  get logitScale(): number {
    this.#life.live()
    return this.#logitScale
  }
  get tokenizer(): ClipTokenizer | Gpt2Tokenizer {
    if (!this.#tokenizer) throw new SemicapError('E_TOKENIZER', `${this.dir ?? 'CLIP'}: the folder has no tokenizer files (tokenizer.json or vocab.json + merges.txt)`)
    return this.#tokenizer
  }

  #check(t: unknown, what: string): Tensor {
    this.#life.live()
    if (!(t instanceof Tensor)) throw new TypeError(`${what} must be a Tensor`)
    return t
  }

  /** Vision tower: last hidden state (before post_layernorm), pooled class token, projected features. */
  vision(pixels: Tensor): Promise<TowerOutput> {
    return this.#pixelsJob(pixels, (w) => this.addon.vision(w)).then(towerOut)
  }

  /** Runs `fn` on float32 pixels on the model's queue (E_DTYPE otherwise). */
  #pixelsJob<T>(pixels: Tensor, fn: (w: WireTensor) => Promise<T>): Promise<T> {
    const p = this.#check(pixels, 'pixels')
    if (p.dtype !== 'float32') return Promise.reject(new SemicapError('E_DTYPE', `pixels must be float32, got ${p.dtype}`))
    return call(() => {
      const w = p.toAsyncWire() // copied now: the caller may reuse or transfer its buffer once this returns
      return this.#life.job(() => fn(w))
    })
  }

  /** Text tower: last hidden state (after final_layer_norm), pooled at the end token, projected features. */
  text(ids: Tensor): Promise<TowerOutput> {
    const t = this.#check(ids, 'ids')
    if (t.dtype !== 'int64' && t.dtype !== 'int32') return Promise.reject(new SemicapError('E_DTYPE', `ids must be int64, got ${t.dtype}`))
    return call(() => {
      const w = t.toAsyncWire()
      return this.#life.job(() => this.addon.text(w))
    }).then(towerOut)
  }

  /**
   * [B,3,H,W] float32 -> [B, projection_dim], like Hugging Face get_image_features. Faster than `vision()`: the last
   * layer computes the class token alone (the features read nothing else); equal to `vision().features` up to float
   * rounding.
   */
  async imageFeatures(pixels: Tensor): Promise<Tensor> {
    return Tensor.fromWire(await this.#pixelsJob(pixels, (w) => this.addon.imageFeatures(w)))
  }

  /** [B,T] int64 -> [B, projection_dim], like Hugging Face get_text_features. */
  async textFeatures(ids: Tensor): Promise<Tensor> {
    return (await this.text(ids)).features
  }

  /** Images (paths, Buffers, raw RGB) -> [B,3,S,S] float32, like CLIPImageProcessor. */
  async preprocess(inputs: ImageInput[], options: { maxPixels?: number } = {}): Promise<Tensor> {
    if (!Array.isArray(inputs) || inputs.length === 0) throw new TypeError('preprocess: inputs must be a non-empty array')
    const { data, shape } = await preprocessImages(inputs, { size: this.imageSize, cropSize: this.imageSize, maxPixels: options.maxPixels })
    return new Tensor('float32', shape, data)
  }

  /** Texts -> [B,T] int64 with start and end tokens, padded with the end token to the longest text (or maxLength). */
  tokenize(texts: string[], options: { maxLength?: number; padding?: 'longest' | 'max_length' } = {}): Tensor {
    if (!Array.isArray(texts) || texts.length === 0 || texts.some((t) => typeof t !== 'string')) throw new TypeError('tokenize: texts must be a non-empty array of strings')
    const maxLength = options.maxLength ?? this.config.wire.maxPositions
    const tok = this.tokenizer
    if (tok instanceof ClipTokenizer) {
      const b = tok.encodeBatch(texts, { maxLength, padding: options.padding ?? 'longest' })
      return new Tensor('int64', b.shape, b.ids)
    }
    // A tiny CLIP may use the GPT-2 tokenizer (config semicap.tokenizer = 'gpt2'): bos + ids + eos, eos padding.
    const bos = this.config.bosTokenId
    const eos = this.config.wire.eosTokenId
    // The text tower pools at the first end token, so a start token equal to it (GPT-2 style) is left out.
    const start = bos === eos ? [] : [bos]
    const rows = texts.map((t) => [...start, ...tok.encode(t).slice(0, maxLength - 1 - start.length), eos])
    const T = options.padding === 'max_length' ? maxLength : Math.max(...rows.map((r) => r.length))
    const ids = new BigInt64Array(rows.length * T).fill(BigInt(eos))
    rows.forEach((r, i) => r.forEach((x, j) => (ids[i * T + j] = BigInt(x))))
    return new Tensor('int64', [rows.length, T], ids)
  }

  /** Convenience: texts -> projected text features. */
  encodeTexts(texts: string[]): Promise<Tensor> {
    return this.textFeatures(this.tokenize(texts))
  }

  /**
   * Frees the model. Never blocks the JS thread: later calls fail with E_DISPOSED, a pretraining run in progress is
   * aborted (it rejects with E_DISPOSED), calls queued behind the running one fail with E_DISPOSED, and native memory
   * is released once the running call or run has stopped (at once when idle). A Captioner using this Clip fails
   * with E_DISPOSED from then on. Idempotent; the promise resolves after the release.
   */
  dispose(): Promise<void> {
    return this.#life.dispose()
  }
  /** `await using`: waits for the calls queued so far, then disposes. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#life.drain()
    await this.dispose()
  }
}
