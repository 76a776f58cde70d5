// Decoding options: validated here, handed to native code as one plain object.
import { SemicapError } from './errors.js'
import type { DecodeWire, Gpt2ConfigWire } from './native.js'
import type { Gpt2Tokenizer } from './tokenizers/gpt2.js'

export interface DecodeOptions {
  decoding?: 'greedy' | 'beam' | 'sample'
  /** Beam width (beam search). Default 5. */
  beams?: number
  /** Most tokens generated per caption. Default 30. */
  maxTokens?: number
  /** End and stop tokens are suppressed before this many tokens. Default 0. */
  minTokens?: number
  temperature?: number
  topP?: number
  topK?: number
  /** Seed for sampling. Default 0. */
  seed?: number
  /** A caption ends after a token containing this text (kept), or at the end token. Default '.'; null for none. */
  stop?: string | null
  /**
   * Explicit token ids that end a caption and are kept (e.g. ClipCap's "stop at the '.' token"). When given, `stop`
   * is not used.
   */
  stopIds?: number[]
  /** End at the end-of-text token (not kept). Default true. */
  stopAtEos?: boolean
  /** bf16 autocast for the models' matrix products (CUDA only; ignored on the CPU). Default false. */
  bf16?: boolean
}

const stopCache = new WeakMap<Gpt2Tokenizer, Map<string, number[]>>()

/** Ids of every token whose text contains `stop`: computed once per tokenizer. */
export function stopTokenIds(tokenizer: Gpt2Tokenizer, stop: string): number[] {
  let byStop = stopCache.get(tokenizer)
  if (!byStop) stopCache.set(tokenizer, (byStop = new Map()))
  let ids = byStop.get(stop)
  if (!ids) {
    ids = []
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      if (tokenizer.isSpecial(id)) continue
      if (tokenizer.decode([id]).includes(stop)) ids.push(id)
    }
    byStop.set(stop, ids)
  }
  return ids
}

function int(v: unknown, name: string, min: number, max: number, fallback: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new RangeError(`${name} must be an integer in [${min}, ${max}], got ${String(v)}`)
  return v
}
function num(v: unknown, name: string, ok: (x: number) => boolean, fallback: number, range: string): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new RangeError(`${name} must be ${range}, got ${String(v)}`)
  return v
}

/**
 * `options` over `defaults` (a captioner's decode defaults): an option the call leaves undefined takes the default.
 * A call that gives `stop` overrides default `stopIds` (and the other way round), since stopIds replaces stop.
 */
export function withDecodeDefaults<T extends DecodeOptions>(options: T, defaults: DecodeOptions | undefined): T {
  if (options === null || typeof options !== 'object') throw new TypeError('options must be an object')
  if (!defaults) return options
  const out: Record<string, unknown> = { ...defaults }
  if (options.stop !== undefined && options.stopIds === undefined) delete out.stopIds
  if (options.stopIds !== undefined && options.stop === undefined) delete out.stop
  for (const [k, v] of Object.entries(options)) if (v !== undefined) out[k] = v
  return out as T
}

function tokenIds(v: unknown, name: string, vocabSize: number): number[] {
  if (!Array.isArray(v)) throw new TypeError(`${name} must be an array of token ids`)
  return v.map((x, i) => {
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x >= vocabSize) throw new RangeError(`${name}[${i}] must be a token id in [0, ${vocabSize}), got ${String(x)}`)
    return x
  })
}

export function decodeWire(o: DecodeOptions, tokenizer: Gpt2Tokenizer | undefined, cfg: Gpt2ConfigWire): DecodeWire {
  if (o === null || typeof o !== 'object') throw new TypeError('options must be an object')
  const explicitStops = o.stopIds === undefined ? undefined : tokenIds(o.stopIds, 'stopIds', cfg.vocabSize)
  const method = o.decoding ?? 'greedy'
  if (method !== 'greedy' && method !== 'beam' && method !== 'sample') throw new RangeError(`decoding must be 'greedy', 'beam' or 'sample', got ${String(method)}`)
  const maxTokens = int(o.maxTokens, 'maxTokens', 1, cfg.nPositions, 30)
  // Without a tokenizer there is no text to find the default stop string in; an explicit one is an error.
  // Explicit stopIds replace the stop string.
  const stop = explicitStops ? null : o.stop === undefined ? (tokenizer ? '.' : null) : o.stop
  if (!explicitStops && stop !== null && (typeof stop !== 'string' || stop.length === 0)) throw new TypeError('stop must be a non-empty string or null')
  if (stop !== null && !tokenizer) throw new SemicapError('E_TOKENIZER', 'a stop string needs a tokenizer; this model has none')
  if (o.stopAtEos !== undefined && typeof o.stopAtEos !== 'boolean') throw new TypeError('stopAtEos must be a boolean')
  if (o.bf16 !== undefined && typeof o.bf16 !== 'boolean') throw new TypeError('bf16 must be a boolean')
  const eos = tokenizer?.eosId ?? cfg.eosTokenId
  return {
    method,
    maxTokens,
    minTokens: int(o.minTokens, 'minTokens', 0, maxTokens, 0),
    beams: int(o.beams, 'beams', 1, 64, 5),
    topK: int(o.topK, 'topK', 0, cfg.vocabSize, 0),
    temperature: num(o.temperature, 'temperature', (x) => x > 0, 1, '> 0'),
    topP: num(o.topP, 'topP', (x) => x > 0 && x <= 1, 1, 'in (0, 1]'),
    seed: int(o.seed, 'seed', 0, Number.MAX_SAFE_INTEGER, 0),
    stopIds: explicitStops ?? (stop === null || !tokenizer ? [] : stopTokenIds(tokenizer, stop)),
    eosId: o.stopAtEos === false || eos >= cfg.vocabSize ? -1 : eos,
    bf16: o.bf16 ?? false,
  }
}
