// GPT-2 from a Hugging Face folder: logits (with an optional prefix of embeddings) and batched generation.
import { gpt2ConfigFromJson, readGpt2Config } from './config.js'
import { loadedWeights, resolveDevice, resolveDtype, type LoadedWeights } from './device.js'
import type { ModelLoadOptions } from './clip.js'
import { decodeWire, type DecodeOptions } from './decoding.js'
import { SemicapError } from './errors.js'
import { call, native, type AddonGpt2, type Gpt2ConfigWire } from './native.js'
import { saveHfFolder } from './hf-folder.js'
import { findWeights } from './weights-files.js'
import { Lifecycle } from './lifecycle.js'
import { trainingBackend, type PretrainOptions, type TrainingRun } from './trainable.js'
import { Tensor } from './tensor.js'
import { Gpt2Tokenizer } from './tokenizers/gpt2.js'

export interface Generation {
  /** [B, L] int64, -1 after each sequence's end. */
  ids: Tensor
  /** [B] mean log-probability per generated token. */
  scores: Tensor
}

export class Gpt2 {
  readonly #life: Lifecycle
  /** How the weights are held for CPU inference (set by load). */
  weights: LoadedWeights = { dtype: 'float32', isa: 'none', packedBytes: 0 }

  private constructor(
    readonly dir: string | undefined,
    readonly config: Gpt2ConfigWire,
    readonly device: string,
    /** @internal */ readonly addon: AddonGpt2,
    /** Undefined when the folder has no tokenizer files and the vocabulary is not GPT-2's own. */
    readonly tokenizer: Gpt2Tokenizer | undefined,
    readonly rawConfig: Record<string, unknown> = {},
  ) {
    this.#life = new Lifecycle('Gpt2', () => this.addon.dispose())
  }

  /** A new, randomly initialised GPT-2 from a Hugging Face config object (for pretraining a small one). */
  static async create(rawConfig: Record<string, unknown>, options: ModelLoadOptions & { seed?: number; tokenizer?: Gpt2Tokenizer } = {}): Promise<Gpt2> {
    const device = resolveDevice(options.device)
    const wire = gpt2ConfigFromJson(rawConfig, 'GPT-2 config')
    const addon = await call(() => new (native().AddonGpt2)({ ...wire, seed: options.seed ?? 0 }))
    await call(() => addon.load(null, device))
    return new Gpt2(undefined, wire, device, addon, options.tokenizer, rawConfig)
  }

  /** Writes a Hugging Face GPT-2 folder: config.json, model.safetensors and the tokenizer files. */
  async save(dir: string): Promise<void> {
    this.#live()
    await saveHfFolder(dir, this.rawConfig, (p) => this.#life.job(() => call(() => this.addon.save(p, { format: 'pt' }))), this.tokenizer)
  }

  /** Language-model pretraining on texts (each becomes eos + tokens + eos; next-token cross-entropy). */
  train(data: { texts: string[]; maxLength?: number }, options: PretrainOptions): TrainingRun {
    this.#live()
    return this.#life.track(trainingBackend().gpt2(this as never, data, options, (job) => this.#life.job(job)))
  }

  /**
   * Loads `config.json`, the weights (model.safetensors, else a sharded index or pytorch_model.bin: see
   * WEIGHTS_FILE_NAMES) and the tokenizer (folder files, else GPT-2's own vocabulary).
   */
  static async load(dir: string, options: ModelLoadOptions = {}): Promise<Gpt2> {
    if (typeof dir !== 'string') throw new TypeError('Gpt2.load: dir must be a string')
    const device = resolveDevice(options.device)
    const dtype = resolveDtype(options.dtype, device)
    const { wire, raw } = await readGpt2Config(dir)
    const addon = await call(() => new (native().AddonGpt2)(wire))
    const weightsPath = await findWeights(dir)
    const loaded = await call(() => addon.load(weightsPath, device, dtype))
    const tokenizer = await loadGpt2Tokenizer(dir, wire)
    const gpt2 = new Gpt2(dir, wire, device, addon, tokenizer, raw)
    gpt2.weights = loadedWeights(loaded, dtype)
    return gpt2
  }

  #live(): void {
    this.#life.live()
  }

  /** ids [B,T] int64 (T may be 0 with a prefix), optional prefix [B,P,n_embd] float32 -> logits [B,P+T,vocab]. */
  logits(ids: Tensor, options: { prefix?: Tensor } = {}): Promise<Tensor> {
    this.#live()
    if (!(ids instanceof Tensor)) throw new TypeError('ids must be a Tensor')
    const prefix = options.prefix
    if (prefix !== undefined && !(prefix instanceof Tensor)) throw new TypeError('prefix must be a Tensor')
    return call(() => {
      // Copied now (see Tensor.toAsyncWire): the caller may reuse or transfer its buffers once this returns.
      const w = ids.toAsyncWire()
      const p = prefix?.toAsyncWire() ?? null
      return this.#life.job(() => this.addon.logits(w, p))
    }).then(Tensor.fromWire)
  }

  /** Generates from a prefix of embeddings [B,P,n_embd]; batched over B. */
  async generate(prefix: Tensor, options: DecodeOptions = {}): Promise<Generation> {
    this.#live()
    if (!(prefix instanceof Tensor)) throw new TypeError('prefix must be a Tensor')
    const wire = decodeWire(options, this.tokenizer, this.config)
    const w = prefix.toAsyncWire()
    const out = await call(() => this.#life.job(() => this.addon.generate(w, wire)))
    return { ids: Tensor.fromWire(out.ids), scores: Tensor.fromWire(out.scores) }
  }

  /**
   * Frees the model. Never blocks: later calls fail with E_DISPOSED, a training run in progress is aborted (it
   * rejects with E_DISPOSED), calls queued behind the running one fail with E_DISPOSED, and native memory is released
   * once the running call or run has stopped (at once when idle). The promise resolves after the release.
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

/** The folder's tokenizer files, else GPT-2's own vocabulary when the model has GPT-2's vocab size, else none. */
export async function loadGpt2Tokenizer(dir: string, cfg: Gpt2ConfigWire): Promise<Gpt2Tokenizer | undefined> {
  try {
    return await Gpt2Tokenizer.load(dir, { packageFallback: cfg.vocabSize === 50257 })
  } catch (err) {
    if (err instanceof SemicapError && err.code === 'E_TOKENIZER' && /no tokenizer|not found|no vocab/i.test(err.message)) return undefined
    throw err
  }
}
