// The Tensor type and the data boundary: validation in tensor()/int64()/row(), zero-copy outputs (external buffers)
// and the copying fallback, and inputs handed over as views.
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Clip, Gpt2, Tensor, cpuCacheStats, emptyCpuCache, int64, loadSafetensors, runtimeInfo, setCpuCacheLimit, tensor, writeSafetensors, type DType, type TypedArray } from '../lib/index.js'
import { goldenDir, repoRoot, tempDir } from './helpers/paths.js'

const run = promisify(execFile)

describe('tensor()', () => {
  it('infers the dtype from the TypedArray and the shape from its length', () => {
    const cases: [TypedArray, DType][] = [
      [new Float32Array(3), 'float32'],
      [new BigInt64Array(3), 'int64'],
      [new Int32Array(3), 'int32'],
      [new Uint8Array(3), 'uint8'],
      [new Uint16Array(3), 'float16'],
    ]
    for (const [data, dtype] of cases) {
      const t = tensor(data)
      expect(t.dtype).toBe(dtype)
      expect(t.shape).toEqual([3])
      expect(t.size).toBe(3)
      expect(t.device).toBe('cpu')
      expect(t.data).toBe(data) // wrapped, not copied
    }
    expect(tensor(new Uint16Array(2), [2], 'bfloat16').dtype).toBe('bfloat16')
    expect(tensor(new Uint8Array([0, 1]), [2], 'bool').dtype).toBe('bool')
    expect(tensor(new Float32Array(6), [2, 3]).shape).toEqual([2, 3])
    expect(tensor(new Float32Array(1), []).shape).toEqual([])
    expect(tensor(new Float32Array(0), [0, 5]).size).toBe(0)
  })

  it('turns number arrays into the requested dtype', () => {
    const f = tensor([1.5, -2, 3], [3])
    expect(f.dtype).toBe('float32')
    expect(f.data).toBeInstanceOf(Float32Array)
    expect(f.toArray()).toEqual([1.5, -2, 3])
    const i = tensor([1, 2, 3, 4], [2, 2], 'int64')
    expect(i.data).toBeInstanceOf(BigInt64Array)
    expect(Array.from(i.data as BigInt64Array)).toEqual([1n, 2n, 3n, 4n])
    expect(i.toArray()).toEqual([1, 2, 3, 4])
    expect(tensor([7, 8], [2], 'int32').data).toBeInstanceOf(Int32Array)
  })

  it('rejects a shape that does not hold the data with a RangeError', () => {
    expect(() => tensor(new Float32Array(6), [2, 2])).toThrow(RangeError)
    expect(() => tensor(new Float32Array(6), [2, 2])).toThrow(/4 elements but data has 6/)
    expect(() => tensor([1, 2, 3], [4])).toThrow(RangeError)
    expect(() => tensor(new Float32Array(0), [1, 0, 2])).not.toThrow()
  })

  it('rejects negative, fractional and non-numeric dims with a RangeError', () => {
    expect(() => tensor(new Float32Array(2), [-1, -2])).toThrow(RangeError)
    expect(() => tensor(new Float32Array(2), [2, -1])).toThrow(/non-negative integers/)
    expect(() => tensor(new Float32Array(2), [0.5, 4])).toThrow(RangeError)
    expect(() => tensor(new Float32Array(2), [Number.NaN])).toThrow(RangeError)
    expect(() => tensor(new Float32Array(2), ['2' as unknown as number])).toThrow(RangeError)
    expect(() => tensor(new Float32Array(2), 2 as unknown as number[])).toThrow(TypeError)
  })

  it('rejects a TypedArray that does not match the dtype with a TypeError', () => {
    expect(() => tensor(new Float32Array(4), [4], 'int64')).toThrow(TypeError)
    expect(() => tensor(new Float32Array(4), [4], 'int64')).toThrow(/int64 tensor needs a BigInt64Array, got Float32Array/)
    expect(() => tensor(new Int32Array(4), [4], 'float32')).toThrow(TypeError)
    expect(() => tensor(new Uint8Array(4), [4], 'float16')).toThrow(TypeError)
    expect(() => tensor(new Float64Array(4) as unknown as Float32Array)).toThrow(TypeError)
    expect(() => tensor(new Float32Array(4), [4], 'float64' as never)).toThrow(/unknown dtype/)
    expect(() => tensor([1, 2], [2], 'complex' as never)).toThrow(TypeError)
  })

  it('shape is a frozen copy', () => {
    const shape = [2, 3]
    const t = tensor(new Float32Array(6), shape)
    shape[0] = 99
    expect(t.shape).toEqual([2, 3])
    expect(Object.isFrozen(t.shape)).toBe(true)
  })
})

describe('int64()', () => {
  it('builds [rows, cols] int64 from nested arrays', () => {
    const t = int64([
      [1, 2, 3],
      [4, 5, 2 ** 40],
    ])
    expect(t.dtype).toBe('int64')
    expect(t.shape).toEqual([2, 3])
    expect(Array.from(t.data as BigInt64Array)).toEqual([1n, 2n, 3n, 4n, 5n, 2n ** 40n])
    expect(int64([]).shape).toEqual([0, 0])
    expect(int64([[]]).shape).toEqual([1, 0])
  })
  it('rejects ragged rows with a RangeError', () => {
    expect(() => int64([[1, 2], [3]])).toThrow(RangeError)
  })
  it('rejects non-integers (BigInt conversion)', () => {
    expect(() => int64([[1.5]])).toThrow(RangeError)
  })
})

describe('row()', () => {
  it('is row i of the first dimension and shares memory', () => {
    const t = tensor(Float32Array.from({ length: 24 }, (_, i) => i), [2, 3, 4])
    const r = t.row(1)
    expect(r.shape).toEqual([3, 4])
    expect(r.dtype).toBe('float32')
    expect(r.toArray()).toEqual(Array.from({ length: 12 }, (_, i) => i + 12))
    expect(r.data.buffer).toBe(t.data.buffer)
    ;(r.data as Float32Array)[0] = -1
    expect((t.data as Float32Array)[12]).toBe(-1)
    expect(t.row(0).row(2).toArray()).toEqual([8, 9, 10, 11])
    expect(int64([[5, 6], [7, 8]]).row(1).toArray()).toEqual([7, 8])
  })
  it('rejects out-of-range and non-integer rows', () => {
    const t = tensor(new Float32Array(6), [2, 3])
    expect(() => t.row(2)).toThrow(RangeError)
    expect(() => t.row(-1)).toThrow(RangeError)
    expect(() => t.row(0.5)).toThrow(RangeError)
    expect(() => tensor(new Float32Array(1), []).row(0)).toThrow(RangeError)
  })
})

describe('the native boundary', () => {
  let clip: Clip
  let gpt2: Gpt2
  let ref: Record<string, Tensor>
  let tmp: string
  beforeAll(async () => {
    ref = await loadSafetensors(join(goldenDir, 'reference.safetensors'))
    clip = await Clip.load(join(goldenDir, 'clip'), { device: 'cpu' })
    gpt2 = await Gpt2.load(join(goldenDir, 'gpt2'), { device: 'cpu' })
    tmp = tempDir('semicap-tensor-')
  })
  afterAll(() => {
    clip?.dispose()
    gpt2?.dispose()
  })

  it('outputs come back as external buffers over native memory (no copy)', async () => {
    const before = runtimeInfo().bridge
    const out = await clip.vision(ref['inputs.pixel_values']!)
    const after = runtimeInfo().bridge
    expect(after.external - before.external).toBe(3) // lastHidden, pooled, features
    expect(after.copied).toBe(before.copied)
    for (const t of [out.lastHidden, out.pooled, out.features]) {
      expect(t.data).toBeInstanceOf(Float32Array)
      // Each output owns its whole buffer: the storage of one native tensor, exactly.
      expect(t.data.byteOffset).toBe(0)
      expect(t.data.buffer.byteLength).toBe(t.size * 4)
    }
    // Outputs are ordinary tensors: they can be written to and fed back in.
    const logits = await gpt2.logits(ref['inputs.gpt2_ids']!)
    expect(runtimeInfo().bridge.external).toBe(after.external + 1)
    expect(logits.data.buffer.byteLength).toBe(logits.size * 4)
    const copy = Float32Array.from(out.features.data as Float32Array)
    ;(out.features.data as Float32Array)[0]! += 1
    expect((out.features.data as Float32Array)[0]).toBe(copy[0]! + 1)
  })

  it('with SEMICAP_NO_EXTERNAL_BUFFERS=1 (a child process) outputs are copied instead, with identical values', async () => {
    const script = join(tmp, 'copy-mode.mts')
    writeFileSync(
      script,
      `import { join } from 'node:path'
import { Clip, loadSafetensors, runtimeInfo } from ${JSON.stringify(pathToFileURL(join(repoRoot, 'lib', 'index.ts')).href)}
const golden = ${JSON.stringify(goldenDir)}
const ref = await loadSafetensors(join(golden, 'reference.safetensors'))
const clip = await Clip.load(join(golden, 'clip'), { device: 'cpu' })
const before = runtimeInfo().bridge
const out = await clip.vision(ref['inputs.pixel_values'])
const after = runtimeInfo().bridge
clip.dispose()
console.log(JSON.stringify({ before, after, features: Array.from(out.features.data), hidden: Array.from(out.lastHidden.data) }))
`,
    )
    const child = await run(process.execPath, ['--import', 'tsx', script], {
      cwd: repoRoot,
      env: { ...process.env, SEMICAP_NO_EXTERNAL_BUFFERS: '1' },
      maxBuffer: 64 << 20,
    })
    const r = JSON.parse(child.stdout.trim().split('\n').pop()!) as {
      before: { external: number; copied: number }
      after: { external: number; copied: number }
      features: number[]
      hidden: number[]
    }
    expect(r.after.copied - r.before.copied).toBe(3)
    expect(r.after.external).toBe(0) // nothing in that process used external buffers, not even loadSafetensors
    const here = await clip.vision(ref['inputs.pixel_values']!)
    expect(r.features).toEqual(Array.from(here.features.data as Float32Array))
    expect(r.hidden).toEqual(Array.from(here.lastHidden.data as Float32Array))
  })

  it('inputs may be views into larger buffers (at any offset); only the view is read', async () => {
    const px = ref['inputs.pixel_values']!
    const want = await clip.imageFeatures(px)
    // The pixels one element into a bigger array whose other elements are NaN: reading outside the view would
    // either fail the finiteness check or change the features.
    const big = new Float32Array(px.size + 7).fill(Number.NaN)
    big.set(px.data as Float32Array, 1)
    const view = big.subarray(1, 1 + px.size)
    expect(view.byteOffset).toBe(4)
    const got = await clip.imageFeatures(new Tensor('float32', px.shape, view))
    expect(Array.from(got.data as Float32Array)).toEqual(Array.from(want.data as Float32Array))
    expect(Array.from(big.subarray(1, 1 + px.size))).toEqual(Array.from(px.data as Float32Array)) // inputs are not written

    const ids = ref['inputs.text_ids']!
    const wantText = await clip.textFeatures(ids)
    const bigIds = new BigInt64Array(ids.size + 3).fill(-5n)
    bigIds.set(ids.data as BigInt64Array, 3)
    const gotText = await clip.textFeatures(new Tensor('int64', ids.shape, bigIds.subarray(3)))
    expect(Array.from(gotText.data as Float32Array)).toEqual(Array.from(wantText.data as Float32Array))

    // Bytes at an odd byte offset (Buffer pool slices are often odd): uint8 and bool round-trip through a file.
    const pool = Buffer.alloc(64)
    for (let i = 0; i < 64; i++) pool[i] = (i * 37) & 0xff
    const odd = pool.subarray(3, 3 + 12)
    expect(odd.byteOffset % 2).toBe(1)
    const bits = new Uint8Array(pool.buffer, pool.byteOffset + 5, 6).map((x) => x & 1)
    const oddBool = new Uint8Array(bits.buffer.byteLength + 1)
    oddBool.set(bits, 1)
    const path = join(tmp, 'odd.safetensors')
    await writeSafetensors(path, { u8: tensor(odd, [3, 4], 'uint8'), b: tensor(oddBool.subarray(1), [6], 'bool') })
    const back = await loadSafetensors(path)
    expect(Array.from(back.u8!.data as Uint8Array)).toEqual(Array.from(odd))
    expect(back.u8!.shape).toEqual([3, 4])
    expect(Array.from(back.b!.data as Uint8Array)).toEqual(Array.from(bits))
  })

  it('the same input array can be used by several concurrent calls and stays untouched', async () => {
    const px = ref['inputs.pixel_values']!
    const snapshot = Float32Array.from(px.data as Float32Array)
    const outs = await Promise.all([clip.imageFeatures(px), clip.imageFeatures(px), clip.imageFeatures(px)])
    for (const o of outs) expect(Array.from(o.data as Float32Array)).toEqual(Array.from(outs[0]!.data as Float32Array))
    expect(Array.from(px.data as Float32Array)).toEqual(Array.from(snapshot))
    // Distinct outputs own distinct memory.
    expect(outs[0]!.data.buffer).not.toBe(outs[1]!.data.buffer)
  })

  it('the boundary re-checks what tensor() checks, for tensors built by hand', async () => {
    const px = ref['inputs.pixel_values']!
    // A Tensor constructed directly (bypassing tensor()) with a shape that does not match its data.
    const lying = new Tensor('float32', [px.shape[0]!, 3, 32, 31], px.data)
    await expect(clip.imageFeatures(lying)).rejects.toMatchObject({ code: 'E_SHAPE' })
    const wrongArray = new Tensor('float32', [3], new Int32Array(3) as unknown as Float32Array)
    await expect(writeSafetensors(join(tmp, 'bad.safetensors'), { x: wrongArray })).rejects.toMatchObject({ code: 'E_DTYPE' })
  })
})

describe('the CPU caching allocator', () => {
  it('reuses freed blocks of 1 MiB and more across calls; with caching off the results are identical', async () => {
    // 4 x 64 tokens, n_embd 512: each layer's MLP activations are 2 MiB, freed within the call.
    const g = await Gpt2.create({ vocab_size: 4096, n_positions: 64, n_embd: 512, n_layer: 2, n_head: 4 }, { device: 'cpu', seed: 3 })
    try {
      const ids = int64(Array.from({ length: 4 }, (_, r) => Array.from({ length: 64 }, (_, i) => ((r * 64 + i) * 7919) % 4096)))
      const limit = cpuCacheStats().limitBytes
      expect(cpuCacheStats().installed).toBe(true)
      expect(limit).toBeGreaterThan(0)
      const first = (await g.logits(ids)).data as Float32Array
      const before = cpuCacheStats()
      for (let i = 0; i < 3; i++) await g.logits(ids)
      const after = cpuCacheStats()
      // Every large intermediate of a repeated call comes from the cache; only each call's output (4 MiB of logits,
      // alive in JS until collected) may need a new block.
      expect(after.hits - before.hits).toBeGreaterThanOrEqual(3)
      expect(after.misses - before.misses).toBeLessThanOrEqual(3)
      expect(after.cachedBytes).toBeGreaterThanOrEqual(1 << 20)
      expect(after.cachedBytes).toBeLessThanOrEqual(limit)
      // Off: nothing is kept, and the numbers do not change.
      expect(setCpuCacheLimit(0).cachedBytes).toBe(0)
      const off0 = cpuCacheStats()
      const uncached = (await g.logits(ids)).data as Float32Array
      expect(cpuCacheStats().hits).toBe(off0.hits)
      expect(cpuCacheStats().cachedBytes).toBe(0)
      expect(uncached).toEqual(first)
      setCpuCacheLimit(limit)
      await g.logits(ids)
      expect(cpuCacheStats().cachedBytes).toBeGreaterThan(0)
      expect(emptyCpuCache().cachedBytes).toBe(0)
      expect(() => setCpuCacheLimit(-1)).toThrow(RangeError)
      expect(() => setCpuCacheLimit(Number.NaN)).toThrow(RangeError)
    } finally {
      g.dispose()
    }
  })
})
