// Rewards that need JS: the native trainer hands over sampled GPT-2 ids once per SCST step (a blocking call from
// its thread); JS answers with CLIP token ids (refText / refContrastive / clipS, scored natively) or, for a custom
// reward, with the rewards themselves, synchronously or through a Promise (native/training_binding.cc attaches
// then/catch and the training thread waits until it settles).
import type { ScoreCallback, WireTensor } from '../native.js'
import { Tensor } from '../tensor.js'
import type { Gpt2Tokenizer } from '../tokenizers/gpt2.js'
import type { TrainPlan } from './options.js'

/** Sampled rows (-1-padded, ended by the end token) -> caption texts. */
export function decodeRows(w: WireTensor, tokenizer: Gpt2Tokenizer): string[] {
  const [N, L] = w.shape
  const d = w.data as BigInt64Array
  const out: string[] = []
  for (let i = 0; i < N; i++) {
    const row: number[] = []
    for (let t = 0; t < L; t++) {
      const id = Number(d[i * L + t])
      if (id < 0 || id === tokenizer.eosId) break
      // A model may have more ids than its tokenizer (padded vocabularies): those carry no text.
      if (id < tokenizer.vocabSize) row.push(id)
    }
    out.push(tokenizer.decode(row).trim())
  }
  return out
}

const isThenable = (x: unknown): boolean => x !== null && (typeof x === 'object' || typeof x === 'function') && typeof (x as { then?: unknown }).then === 'function'

export interface Scorer {
  onScore: ScoreCallback
  /** The JS error a reward function threw (the native side reports only its message). */
  error(): unknown
}

/** The reward callback of a run: custom rewards call reward.fn; CLIP rewards tokenise the captions for CLIP. */
export function makeScorer(p: TrainPlan, imageIds: string[], clipTokenize: (texts: string[]) => Tensor): Scorer {
  const { reward, rewardType, prefixText, tokenizer } = p
  let failure: unknown
  const record = (err: unknown): never => {
    failure ??= err
    throw err
  }
  const toRewards = (r: unknown, n: number) => {
    if (!Array.isArray(r) || r.length !== n) throw new TypeError('reward.fn must return one number per caption')
    return { rewards: new Tensor('float32', [r.length], Float32Array.from(r as number[])).toWire() }
  }
  const onScore: ScoreCallback = (ids, owners) => {
    try {
      const texts = decodeRows(ids, tokenizer)
      if (rewardType === 'custom') {
        const imgIds = Array.from(owners.data as BigInt64Array, (x) => imageIds[Number(x)]!)
        const r: unknown = reward.fn!(texts, imgIds)
        if (isThenable(r)) return Promise.resolve(r as PromiseLike<unknown>).then((v) => toRewards(v, texts.length)).catch(record)
        return toRewards(r, texts.length)
      }
      const withPrefix = rewardType === 'clipS' ? texts.map((t) => prefixText + t) : texts
      return { clipIds: clipTokenize(withPrefix).toWire() }
    } catch (err) {
      return record(err)
    }
  }
  return { onScore, error: () => failure }
}
