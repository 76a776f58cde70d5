// Continuous batching on its slab path (native/batch_decode.h: every row's keys and values in one shared slab per
// layer, a slot per row, attention over all rows at once with each row's later positions masked): the path CUDA
// takes, forced on the CPU with SEMICAP_BATCH_SLOTS=1. The whole batching suite runs again on it (its references,
// maxBatch: 1, decode without the batcher, so the two paths are checked against each other), and the slab itself
// is checked here: slots held while rows decode, grown as rows join, released when the last row leaves.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner } from '../lib/index.js'
import { native, type AddonDecodeBatch, type BatchRowWire } from '../lib/native.js'
import { makeTinyModels } from './helpers/models.js'

// Read by the addon when a row joins an empty batch, and by the Captioner when its batcher starts (forks pool: this
// file's process alone). Bursts of 4 tokens per step call while nobody waits, as CUDA runs them (8 there).
process.env.SEMICAP_BATCH_SLOTS = '1'
process.env.SEMICAP_BATCH_BURST = '4'
await import('./batching.test.js')

describe('the KV slab', () => {
  let cap: Captioner
  beforeAll(async () => {
    const models = await makeTinyModels()
    cap = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  })
  afterAll(async () => {
    await cap?.dispose()
  })
  const batch = (): AddonDecodeBatch => new (native().AddonDecodeBatch)(cap.addon)
  const row = (o: Partial<BatchRowWire> = {}): BatchRowWire => ({
    method: 'greedy', maxTokens: 5, minTokens: 0, beams: 1, topK: 0, temperature: 1, topP: 1, seed: 0, stopIds: [], eosId: -1, bf16: false, row: 0, ...o,
  })

  it('holds a slot per active row, grows as rows join mid-decode, and is released when the last row leaves', async () => {
    const b = batch()
    const f = (n: number, fill: number) => ({ dtype: 'float32', shape: [n, 32], data: new Float32Array(n * 32).map((_, i) => Math.sin(i * fill)) })
    // The same rows alone (each its own batch) are the reference for the rows decoded together.
    const alone = async (fill: number, o: Partial<BatchRowWire>) => {
      const a = batch()
      const ids = [(await a.add(f(1, fill), [row(o)]))[0]!.token]
      while (a.size > 0) ids.push(...(await a.step()).map((t) => t.token))
      expect(a.slots).toBe(0)
      a.dispose()
      return ids
    }
    const want = [await alone(0.3, { maxTokens: 6 }), await alone(0.7, { maxTokens: 20 }), await alone(1.1, { maxTokens: 40 })]
    const got = new Map<number, number[]>()
    const track = (ts: { rowId: number; token: number }[]) => ts.forEach((t) => got.set(t.rowId, [...(got.get(t.rowId) ?? []), t.token]))
    expect(b.slots).toBe(0)
    const first = await b.add(f(1, 0.3), [row({ maxTokens: 6 })])
    track(first)
    expect(b.slots).toBeGreaterThanOrEqual(1)
    track(await b.step())
    // Two more rows join mid-decode, one needing a longer capacity than the slab has: the slab grows, keeping row 1.
    const more = await b.add({ dtype: 'float32', shape: [2, 32], data: new Float32Array([...f(1, 0.7).data, ...f(1, 1.1).data]) }, [row({ maxTokens: 20 }), row({ maxTokens: 40 })])
    track(more)
    expect(b.size).toBe(3)
    expect(b.slots).toBeGreaterThanOrEqual(3)
    while (b.size > 0) track(await b.step())
    expect([first[0]!, ...more].map((t) => got.get(t.rowId))).toEqual(want)
    expect(b.slots).toBe(0)
    // A removed row gives its slot back too.
    const r = await b.add(f(1, 0.5), [row({ maxTokens: 30 })])
    expect(b.slots).toBeGreaterThanOrEqual(1)
    expect(await b.remove([r[0]!.rowId])).toBe(1)
    expect(b.slots).toBe(0)
    b.dispose()
  })

  it('bursts: several tokens per step call equal the same rows stepped one token at a time, ending where they end', async () => {
    const feats = (n: number) => ({ dtype: 'float32', shape: [n, 32], data: new Float32Array(n * 32).map((_, i) => Math.sin(i * 0.37 + Math.floor(i / 32))) })
    // Runs rows (one feature row each) to their ends with step(burst); returns each row's tokens and the most tokens
    // one row got from one call.
    const decodeAll = async (rows: BatchRowWire[], burst: number) => {
      const b = batch()
      const first = await b.add(feats(rows.length), rows)
      const got = new Map<number, number[]>(first.map((t) => [t.rowId, [t.token]]))
      let most = 0
      while (b.size > 0) {
        const out = await b.step(burst)
        const per = new Map<number, number>()
        for (const t of out) {
          got.get(t.rowId)!.push(t.token)
          per.set(t.rowId, (per.get(t.rowId) ?? 0) + 1)
        }
        most = Math.max(most, ...per.values())
      }
      expect(b.slots).toBe(0)
      b.dispose()
      return { ids: first.map((t) => got.get(t.rowId)!), most }
    }
    const rows = [row({ maxTokens: 9 }), row({ maxTokens: 30 }), row({ minTokens: 5, maxTokens: 12, eosId: 7 }), row({ maxTokens: 2 })]
    const one = await decodeAll(rows, 1)
    expect(one.most).toBe(1)
    const four = await decodeAll(rows, 4)
    expect(four.most).toBe(4)
    expect(four.ids).toEqual(one.ids)
    expect(four.ids.map((t) => t.length)).toEqual([9, 30, one.ids[2]!.length, 2])
    // A row whose end token comes inside a burst ends there (row 1 again, its third token made its end token); the
    // row beside it (row 0, now with maxTokens 30) goes on.
    const eos = one.ids[1]![2]!
    const ended = await decodeAll([row({ maxTokens: 30 }), row({ maxTokens: 30, eosId: eos })], 8)
    expect(ended.ids[1]).toEqual(one.ids[1]!.slice(0, one.ids[1]!.indexOf(eos) + 1))
    expect(ended.ids[1]!.length).toBeLessThanOrEqual(3)
    expect(ended.ids[0]!.slice(0, 9)).toEqual(one.ids[0])
    expect(ended.ids[0]!.length).toBe(30)
    // Bad bursts.
    const b = batch()
    for (const bad of [0, 1.5, 257, Number.NaN, '2' as unknown as number]) {
      const err = await (async () => b.step(bad))().then(() => undefined, (e: { code?: string }) => e)
      expect(err?.code, String(bad)).toBe('E_VALUE')
    }
    b.dispose()
  })
})
