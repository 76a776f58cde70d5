// Captioner: frozen CLIP -> mapping network -> GPT-2. Create from Hugging Face folders, caption images, and
// save / load one self-contained folder (config.json + model.safetensors + clip/ + tokenizer files).
import { copyFile, link, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { Clip, type ModelLoadOptions } from './clip.js'
import { gpt2ConfigFromJson, readGpt2Config, readJson } from './config.js'
import { decodeWire, type DecodeOptions } from './decoding.js'
import { loadedWeights, resolveDtype, type DeviceOption, type InferenceDtype, type LoadedWeights } from './device.js'
import { SemicapError } from './errors.js'
import { loadGpt2Tokenizer } from './gpt2.js'
import type { ImageInput } from './image.js'
import { call, native, type AddonCaptioner, type Gpt2ConfigWire, type MapperConfigWire } from './native.js'
import { Tensor } from './tensor.js'
import type { Gpt2Tokenizer } from './tokenizers/gpt2.js'
import { Lifecycle } from './lifecycle.js'
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

export interface CaptionerCreateOptions {
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

export interface Caption {
  text: string
  ids: number[]
  /** Mean log-probability per generated token. */
  score: number
}

const FORMAT = 1
const TOKENIZER_FILES = ['tokenizer.json', 'vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json']
const CLIP_FILES = ['config.json', 'model.safetensors', ...TOKENIZER_FILES]

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
    mlpRatio: 2,
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  )
}

/** Hard-links (or copies) `names` that exist in `from` into `to`; CLIP is frozen, so a link is a safe copy. */
async function linkFiles(from: string, to: string, names: string[]): Promise<void> {
  await mkdir(to, { recursive: true })
  for (const n of names) {
    const src = join(from, n)
    if (!(await exists(src))) continue
    const dst = join(to, n)
    if (resolve(src) === resolve(dst)) continue
    const tmp = `${dst}.tmp-${process.pid}`
    await rm(tmp, { force: true })
    await link(src, tmp).catch(() => copyFile(src, tmp))
    await rename(tmp, dst)
  }
}

async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`
  await writeFile(tmp, text)
  await rename(tmp, path)
}

export class Captioner {
  /** How the mapper's and GPT-2's weights are held for CPU inference (set by create / load; CLIP's: clip.weights). */
  weights: LoadedWeights = { dtype: 'float32', isa: 'none', packedBytes: 0 }
  readonly #life: Lifecycle

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
    const ownsClip = !(options.clip instanceof Clip)
    const clip = options.clip instanceof Clip ? options.clip : await Clip.load(options.clip, { device: options.device, dtype: options.dtype })
    const dtype = resolveDtype(options.dtype, clip.device)
    const { wire: g, raw } = await readGpt2Config(options.gpt2)
    const mapper = mapperWire(options.mapper, clip.projectionDim, g.nEmbd)
    const normalizePrefix = options.normalizePrefix ?? false
    const seed = options.seed ?? 0
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError('seed must be a non-negative integer')
    const addon = await call(() => new (native().AddonCaptioner)(clip.addon, { gpt2: g, mapper, normalizePrefix, seed }))
    const [loaded, tokenizer] = await Promise.all([call(() => addon.loadGpt2(join(options.gpt2, 'model.safetensors'), clip.device, dtype)), loadGpt2Tokenizer(options.gpt2, g)])
    const captioner = new Captioner(clip, addon, g, raw, mapper, normalizePrefix, tokenizer, options.gpt2, ownsClip)
    captioner.weights = loadedWeights(loaded, dtype)
    return captioner
  }

  /** Loads a folder written by `save()`. */
  static async load(dir: string, options: ModelLoadOptions = {}): Promise<Captioner> {
    if (typeof dir !== 'string') throw new TypeError('Captioner.load: dir must be a string')
    const path = join(dir, 'config.json')
    const cfg = await readJson(path)
    const s = cfg.semicap as Record<string, unknown> | undefined
    if (!s || typeof s !== 'object' || s.format !== FORMAT) throw new SemicapError('E_CONFIG', `${path}: not a semicap captioner folder (no semicap.format ${FORMAT})`)
    const rawGpt2 = cfg.gpt2 as Record<string, unknown>
    if (!rawGpt2 || typeof rawGpt2 !== 'object') throw new SemicapError('E_CONFIG', `${path}: missing section 'gpt2'`)
    const g = gpt2ConfigFromJson(rawGpt2, `${path} gpt2`)
    const clip = await Clip.load(join(dir, typeof s.clip === 'string' ? s.clip : 'clip'), options)
    const dtype = resolveDtype(options.dtype, clip.device)
    try {
      const mapper = mapperWire(s.mapper as MapperOptions, clip.projectionDim, g.nEmbd)
      const normalizePrefix = s.normalizePrefix === true
      const addon = await call(() => new (native().AddonCaptioner)(clip.addon, { gpt2: g, mapper, normalizePrefix }))
      const [loaded, tokenizer] = await Promise.all([call(() => addon.load(join(dir, 'model.safetensors'), clip.device, dtype)), loadGpt2Tokenizer(dir, g)])
      const captioner = new Captioner(clip, addon, g, rawGpt2, mapper, normalizePrefix, tokenizer, dir, true)
      captioner.weights = loadedWeights(loaded, dtype)
      return captioner
    } catch (err) {
      clip.dispose()
      throw err
    }
  }

  /** Writes config.json, model.safetensors (mapper + GPT-2), clip/ (linked when possible) and tokenizer files. */
  async save(dir: string): Promise<void> {
    this.#live()
    if (typeof dir !== 'string') throw new TypeError('save: dir must be a string')
    await mkdir(dir, { recursive: true })
    if (this.clip.dir) await linkFiles(this.clip.dir, join(dir, 'clip'), CLIP_FILES)
    if (this.tokenizerDir) await linkFiles(this.tokenizerDir, dir, TOKENIZER_FILES)
    await call(() => this.#life.job(() => this.addon.save(join(dir, 'model.safetensors'), { format: 'pt', semicap: String(FORMAT) })))
    await writeFileAtomic(join(dir, 'config.json'), JSON.stringify(this.#configJson(), null, 2) + '\n')
  }

  #live(): void {
    this.#life.live()
  }

  /** Decoded token rows -> captions. */
  #texts(ids: Tensor, scores: Tensor): Caption[] {
    const [B, L] = ids.shape as [number, number]
    const data = ids.data as BigInt64Array
    const sc = scores.data as Float32Array
    const eos = this.tokenizer?.eosId ?? this.gpt2Config.eosTokenId
    const out: Caption[] = []
    for (let b = 0; b < B; b++) {
      const row: number[] = []
      for (let t = 0; t < L; t++) {
        const id = Number(data[b * L + t])
        if (id < 0 || id === eos) break
        row.push(id)
      }
      // Ids past the tokenizer's vocabulary (a padded embedding table) carry no text.
      const text = this.tokenizer ? this.tokenizer.decode(row.filter((id) => id < this.tokenizer!.vocabSize)).trim() : row.join(' ')
      out.push({ text, ids: row, score: sc[b] })
    }
    return out
  }

  /** Captions images (paths, Buffers, raw RGB) or a preprocessed pixel tensor [B,3,S,S]; one batch, decoded together. */
  async caption(images: ImageInput[] | Tensor, options: DecodeOptions = {}): Promise<Caption[]> {
    this.#live()
    const wire = decodeWire(options, this.tokenizer, this.gpt2Config)
    // A caller's tensor is copied now (see Tensor.toAsyncWire); pixels made here are borrowed (nobody else holds them).
    const pixels = images instanceof Tensor ? images : await this.clip.preprocess(images)
    if (pixels.dtype !== 'float32') throw new SemicapError('E_DTYPE', `pixels must be float32, got ${pixels.dtype}`)
    const w = images instanceof Tensor ? pixels.toAsyncWire() : pixels.toWire()
    const out = await call(() => this.#life.job(() => this.addon.caption(w, wire)))
    return this.#texts(Tensor.fromWire(out.ids), Tensor.fromWire(out.scores))
  }

  /** Captions from precomputed CLIP image features [B, projection_dim]. */
  async captionFeatures(features: Tensor, options: DecodeOptions = {}): Promise<Caption[]> {
    this.#live()
    if (!(features instanceof Tensor)) throw new TypeError('features must be a Tensor')
    const wire = decodeWire(options, this.tokenizer, this.gpt2Config)
    const w = features.toAsyncWire()
    const out = await call(() => this.#life.job(() => this.addon.captionFeatures(w, wire)))
    return this.#texts(Tensor.fromWire(out.ids), Tensor.fromWire(out.scores))
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
    await add(this.clip.dir, 'clip/', CLIP_FILES)
    await add(this.tokenizerDir, '', TOKENIZER_FILES)
    return { configJson: JSON.stringify(this.#configJson(), null, 2) + '\n', links }
  }

  #configJson(): object {
    return {
      semicap: { format: FORMAT, clip: 'clip', mapper: this.mapper, normalizePrefix: this.normalizePrefix },
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
    return this.#life.dispose()
  }
  /** `await using`: waits for the calls queued so far, then disposes. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.#life.drain()
    await this.dispose()
  }
}
