// Memory handed to native code stays valid: the host data of an async call is copied when the call starts, so a
// buffer transferred (structuredClone / postMessage with a transfer list) or resized right after the call cannot
// change what native code reads, or free it under a worker. Detached data at call start fails with E_DETACHED.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MessageChannel } from 'node:worker_threads'
import { join } from 'node:path'
import { Clip, SemicapError, Tensor, loadSafetensors, writeSafetensors } from '../lib/index.js'
import { makeTinyModels } from './helpers/models.js'
import { tempDir } from './helpers/paths.js'

let clip: Clip
let work: string
const SHAPE = [2, 3, 32, 32]
const N = 2 * 3 * 32 * 32
const values = Float32Array.from({ length: N }, (_, i) => Math.sin(i * 0.37))
let reference: number[]

beforeAll(async () => {
  work = tempDir('semicap-buffers-')
  clip = await Clip.load((await makeTinyModels()).clipDir, { device: 'cpu' })
  reference = (await clip.imageFeatures(new Tensor('float32', SHAPE, values.slice()))).toArray()
})
afterAll(() => clip?.dispose())

/** A Float32Array with `values` over a fresh buffer of the given kind. */
function over(kind: 'plain' | 'resizable' | 'growable-shared'): { view: Float32Array; buf: ArrayBuffer | SharedArrayBuffer } {
  const bytes = N * 4
  const buf =
    kind === 'plain'
      ? new ArrayBuffer(bytes)
      : kind === 'resizable'
        ? new (ArrayBuffer as unknown as new (n: number, o: object) => ArrayBuffer)(bytes, { maxByteLength: bytes * 2 })
        : new (SharedArrayBuffer as unknown as new (n: number, o: object) => SharedArrayBuffer)(bytes, { maxByteLength: bytes * 2 })
  const view = new Float32Array(buf) // length-tracking for the resizable kinds
  view.set(values)
  return { view, buf }
}

describe('buffers handed to async native calls', () => {
  it('detached at call start: rejects with E_DETACHED', async () => {
    const { view, buf } = over('plain')
    const t = new Tensor('float32', SHAPE, view)
    structuredClone(buf, { transfer: [buf as ArrayBuffer] })
    const err = await clip.imageFeatures(t).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(SemicapError)
    expect(err).toMatchObject({ code: 'E_DETACHED' })
    expect((err as Error).message).toMatch(/detached/)
  })

  it('transferred right after the call (structuredClone), its memory overwritten: the result is unchanged', async () => {
    const { view, buf } = over('plain')
    const pending = clip.imageFeatures(new Tensor('float32', SHAPE, view))
    // The backing store moves to `moved`; write garbage through it (what a new owner would do, or free it).
    const moved = structuredClone(buf, { transfer: [buf as ArrayBuffer] }) as ArrayBuffer
    new Float32Array(moved).fill(Number.NaN)
    expect(view.length).toBe(0) // detached
    expect((await pending).toArray()).toEqual(reference)
  })

  it('transferred right after the call (postMessage with a transfer list): the result is unchanged', async () => {
    const { view, buf } = over('plain')
    const pending = clip.imageFeatures(new Tensor('float32', SHAPE, view))
    const { port1, port2 } = new MessageChannel()
    const received = new Promise<ArrayBuffer>((ok) => port2.once('message', ok))
    port1.postMessage(buf, [buf as ArrayBuffer])
    new Float32Array(await received).fill(1e30)
    port1.close()
    expect((await pending).toArray()).toEqual(reference)
  })

  it('a resizable ArrayBuffer shrunk right after the call: the result is unchanged; shrunk before: E_DETACHED', async () => {
    const a = over('resizable')
    const pending = clip.imageFeatures(new Tensor('float32', SHAPE, a.view))
    ;(a.buf as ArrayBuffer & { resize(n: number): void }).resize(0)
    expect((await pending).toArray()).toEqual(reference)

    const b = over('resizable')
    const t = new Tensor('float32', SHAPE, b.view)
    ;(b.buf as ArrayBuffer & { resize(n: number): void }).resize(8)
    await expect(clip.imageFeatures(t)).rejects.toMatchObject({ code: 'E_DETACHED' })
  })

  it('a growable SharedArrayBuffer grown and overwritten right after the call: the result is unchanged', async () => {
    const { view, buf } = over('growable-shared')
    const pending = clip.imageFeatures(new Tensor('float32', SHAPE, view))
    ;(buf as SharedArrayBuffer & { grow(n: number): void }).grow(N * 8)
    view.fill(-7)
    expect((await pending).toArray()).toEqual(reference)
  })

  it('writeSafetensors: a tensor transferred right after the call is written as it was', async () => {
    const { view, buf } = over('plain')
    const path = join(work, 'x.safetensors')
    const pending = writeSafetensors(path, { x: new Tensor('float32', SHAPE, view) })
    new Float32Array(structuredClone(buf, { transfer: [buf as ArrayBuffer] }) as ArrayBuffer).fill(0)
    await pending
    expect(Array.from((await loadSafetensors(path)).x!.data as Float32Array)).toEqual(Array.from(values))
  })

  it('synchronous calls borrow plain buffers and copy resizable ones (same values either way)', async () => {
    const plain = new Tensor('float32', SHAPE, values)
    expect(plain.toWire().data).toBe(values)
    const r = over('resizable')
    const w = new Tensor('float32', SHAPE, r.view).toWire()
    expect(w.data).not.toBe(r.view)
    expect((w.data!.buffer as ArrayBuffer & { resizable?: boolean }).resizable).toBe(false)
    expect(Array.from(w.data as Float32Array)).toEqual(Array.from(values))
  })
})
