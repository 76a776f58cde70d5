// safetensors: round trips for every dtype, and hostile files that must each fail with E_CHECKPOINT and a reason
// (never a crash, never a silent misread).
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Clip, Gpt2, SemicapError, loadSafetensors, readSafetensorsHeader, tensor, writeSafetensors, type Tensor } from '../lib/index.js'
import { relError } from './helpers/numeric.js'
import { goldenDir, tempDir } from './helpers/paths.js'

let tmp: string
beforeAll(() => {
  tmp = tempDir('semicap-st-')
})

/** 8-byte little-endian header length, the header bytes, the data bytes. */
function stFile(header: string | Buffer, data: Buffer = Buffer.alloc(0), headerLength?: bigint): Buffer {
  const h = typeof header === 'string' ? Buffer.from(header, 'utf8') : header
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(headerLength ?? BigInt(h.length))
  return Buffer.concat([len, h, data])
}

let n = 0
function put(bytes: Buffer): string {
  const path = join(tmp, `f${n++}.safetensors`)
  writeFileSync(path, bytes)
  return path
}

const bytes = (t: Tensor) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)

describe('round trip', () => {
  it('every dtype, with shapes from scalars to empty tensors, and metadata', async () => {
    const tensors: Record<string, Tensor> = {
      f32: tensor(Float32Array.from([1.5, -0, Number.POSITIVE_INFINITY, Number.NaN, 3.4e38, 1e-45]), [2, 3]),
      f16: tensor(Uint16Array.from([0x3c00, 0x8000, 0x7c00, 0x7e00, 0x0001, 0xfbff]), [3, 2], 'float16'),
      bf16: tensor(Uint16Array.from([0x3f80, 0xbf80, 0x7f80, 0x0001]), [4], 'bfloat16'),
      i64: tensor(BigInt64Array.from([-(2n ** 63n), 2n ** 63n - 1n, 0n, -1n]), [2, 2], 'int64'),
      i32: tensor(Int32Array.from([-(2 ** 31), 2 ** 31 - 1, 7]), [3]),
      u8: tensor(Uint8Array.from([0, 255, 128, 1, 2, 3, 4, 5]), [2, 2, 2], 'uint8'),
      bool: tensor(Uint8Array.from([1, 0, 0, 1, 1]), [5], 'bool'),
      scalar: tensor(Float32Array.from([42]), []),
      empty: tensor(new Float32Array(0), [0, 3]),
    }
    const metadata = { format: 'pt', note: 'quotes " and \\ backslash,\nnewline, ünïcødé, 🙂', empty: '' }
    const path = join(tmp, 'all.safetensors')
    await writeSafetensors(path, tensors, metadata)

    const header = await readSafetensorsHeader(path)
    expect(header.metadata).toEqual(metadata)
    expect(header.names.sort()).toEqual(Object.keys(tensors).sort())
    const stDtype = { f32: 'F32', f16: 'F16', bf16: 'BF16', i64: 'I64', i32: 'I32', u8: 'U8', bool: 'BOOL', scalar: 'F32', empty: 'F32' }
    for (const [k, t] of Object.entries(tensors)) {
      expect(header.tensors[k], k).toEqual({ dtype: stDtype[k as keyof typeof stDtype], shape: [...t.shape] })
    }

    const back = await loadSafetensors(path)
    for (const [k, t] of Object.entries(tensors)) {
      expect(back[k]!.dtype, k).toBe(t.dtype)
      expect(back[k]!.shape, k).toEqual(t.shape)
      expect(back[k]!.data.constructor, k).toBe(t.data.constructor)
      expect(bytes(back[k]!).equals(bytes(t)), k).toBe(true) // bit-exact, NaN payloads and -0 included
    }
    // Writing what was read gives the same file.
    const again = join(tmp, 'all-again.safetensors')
    await writeSafetensors(again, back, metadata)
    expect((await readSafetensorsHeader(again)).tensors).toEqual(header.tensors)
  })

  it('the data section starts 8-byte aligned and the layout is what the format says', async () => {
    const path = join(tmp, 'layout.safetensors')
    await writeSafetensors(path, { a: tensor(Float32Array.from([1, 2])), b: tensor(BigInt64Array.from([3n])) }, { k: 'v' })
    const { readFileSync } = await import('node:fs')
    const raw = readFileSync(path)
    const hl = Number(raw.readBigUInt64LE(0))
    expect((8 + hl) % 8).toBe(0)
    const json = JSON.parse(raw.subarray(8, 8 + hl).toString('utf8'))
    expect(json.__metadata__).toEqual({ k: 'v' })
    expect(json.a).toEqual({ dtype: 'F32', shape: [2], data_offsets: [0, 8] })
    expect(json.b).toEqual({ dtype: 'I64', shape: [1], data_offsets: [8, 16] })
    expect(raw.length).toBe(8 + hl + 16)
    expect(raw.readFloatLE(8 + hl + 4)).toBe(2)
    expect(raw.readBigInt64LE(8 + hl + 8)).toBe(3n)
  })

  // (Numbers and literals inside unknown fields are refused by the native parser; the reference reader skips any
  // JSON there. Only string/array/object extras are exercised here.)
  it('reads files from other writers: unpadded headers, any key order, no metadata, extra fields', async () => {
    const data = Buffer.alloc(12)
    data.writeFloatLE(1, 0)
    data.writeFloatLE(2, 4)
    data.writeInt32LE(-3, 8)
    const path = put(stFile('{"b":{"shape":[1],"data_offsets":[8,12],"dtype":"I32","extra":{"x":["y"]}}, "a" : {"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', data))
    const t = await loadSafetensors(path)
    expect(t.a!.toArray()).toEqual([1, 2])
    expect(t.b!.toArray()).toEqual([-3])
    expect((await readSafetensorsHeader(path)).metadata).toEqual({})
    // An empty file of tensors is valid too.
    expect(await loadSafetensors(put(stFile('{}')))).toEqual({})
  })

  it('the golden checkpoint reads; writer errors are reported', async () => {
    const hdr = await readSafetensorsHeader(join(goldenDir, 'gpt2', 'model.safetensors'))
    expect(hdr.tensors['wte.weight']).toEqual({ dtype: 'F32', shape: [1000, 64] })
    await expect(writeSafetensors(join(tmp, 'no', 'such', 'dir.safetensors'), { a: tensor([1]) })).rejects.toMatchObject({ code: 'E_IO' })
    expect(() => writeSafetensors(join(tmp, 'x.safetensors'), { a: [1, 2] as unknown as Tensor })).toThrow(TypeError)
    await expect(readSafetensorsHeader(join(tmp, 'missing.safetensors'))).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringMatching(/cannot open/) })
    await expect(loadSafetensors(tmp)).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringMatching(/not a regular file/) })
  })
})

const f32 = (name: string, begin: number, end: number, shape = `[${(end - begin) / 4}]`) => `"${name}":{"dtype":"F32","shape":${shape},"data_offsets":[${begin},${end}]}`

const HOSTILE: [string, () => Buffer, RegExp][] = [
  ['an empty file', () => Buffer.alloc(0), /0 bytes/],
  ['7 bytes', () => Buffer.from([1, 0, 0, 0, 0, 0, 0]), /7 bytes/],
  ['a header length past the end', () => stFile('{}', Buffer.alloc(0), 1000n), /header length 1000 runs past the end/],
  ['a header length over 100 MB', () => stFile('{}', Buffer.alloc(16), 200_000_000n), /exceeds the 100 MB limit/],
  ['a header length of 2^64 - 1', () => stFile('{}', Buffer.alloc(16), 2n ** 64n - 1n), /exceeds the 100 MB limit/],
  ['a header that is not JSON', () => stFile('hello, world'), /invalid safetensors header: expected '\{'/],
  ['a truncated JSON header', () => stFile(`{${f32('a', 0, 4)}`, Buffer.alloc(4)), /invalid safetensors header/],
  ['a header that is not UTF-8', () => stFile(Buffer.concat([Buffer.from('{"a'), Buffer.from([0xff, 0xfe]), Buffer.from('":{}}')])), /invalid UTF-8/],
  ['an overlong UTF-8 sequence', () => stFile(Buffer.concat([Buffer.from('{"'), Buffer.from([0xc0, 0xaf]), Buffer.from(`":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}`)]), Buffer.alloc(4)), /invalid UTF-8/],
  ['a lone surrogate escape', () => stFile(`{"\\ud800x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, Buffer.alloc(4)), /surrogate/],
  ['duplicate names', () => stFile(`{${f32('w', 0, 4)},${f32('w', 4, 8)}}`, Buffer.alloc(8)), /duplicate name 'w'/],
  ['overlapping offsets', () => stFile(`{${f32('a', 0, 8)},${f32('b', 4, 12)}}`, Buffer.alloc(12)), /overlapping/],
  ['gapped offsets', () => stFile(`{${f32('a', 0, 4)},${f32('b', 8, 12)}}`, Buffer.alloc(12)), /a gap between buffers/],
  ['offsets past the end', () => stFile(`{${f32('a', 0, 8)}}`, Buffer.alloc(4)), /past the end of the data \(4 bytes\)/],
  ['data left over after the last tensor', () => stFile(`{${f32('a', 0, 4)}}`, Buffer.alloc(12)), /cover 4 bytes of data but the file holds 12/],
  ['data_offsets ending before they begin', () => stFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, Buffer.alloc(8)), /end before they begin/],
  ['data_offsets with 3 entries', () => stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, Buffer.alloc(8)), /data_offsets must have 2 entries/],
  ['a negative offset', () => stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, Buffer.alloc(4)), /non-negative integer/],
  ['an offset beyond 2^64', () => stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551620]}}`, Buffer.alloc(4)), /integer overflow/],
  ['a shape whose element count overflows 64 bits', () => stFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,4]}}`, Buffer.alloc(4)), /overflows 64 bits/],
  ['a dimension beyond int64', () => stFile(`{"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,4]}}`, Buffer.alloc(4)), /dimension too large/],
  ['a fractional dimension', () => stFile(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, Buffer.alloc(4)), /expected an integer/],
  ['dtype and byte length disagreeing', () => stFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, Buffer.alloc(8)), /need 12 bytes but data_offsets span 8/],
  ['an unknown dtype', () => stFile(`{"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}`, Buffer.alloc(4)), /unknown dtype 'F8_E4M3'/],
  ['a tensor entry without data_offsets', () => stFile(`{"a":{"dtype":"F32","shape":[1]}}`, Buffer.alloc(4)), /lacks dtype, shape or data_offsets/],
  ['non-string metadata', () => stFile(`{"__metadata__":{"n":1}}`), /__metadata__ values must be strings/],
  ['trailing garbage after the JSON', () => stFile(`{${f32('a', 0, 4)}}xyz`, Buffer.alloc(4)), /trailing bytes after the header object/],
  ['a header that is a JSON array', () => stFile(`[${f32('a', 0, 4).slice(4)}]`, Buffer.alloc(4)), /expected '\{'/],
  ['a header nested too deep', () => stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":${'['.repeat(100)}${']'.repeat(100)}}}`, Buffer.alloc(4)), /nesting too deep/],
  ['a control character in a name', () => stFile(`{"a\u0001":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, Buffer.alloc(4)), /control character/],
]

describe('hostile files', () => {
  it.each(HOSTILE)('%s: E_CHECKPOINT with the reason, from the header reader and the loader', async (_label, make, reason) => {
    const path = put(make())
    for (const read of [readSafetensorsHeader, loadSafetensors] as const) {
      const err = await read(path).then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(err).toBeInstanceOf(SemicapError)
      expect((err as SemicapError).code).toBe('E_CHECKPOINT')
      expect((err as Error).message).toContain(path)
      expect((err as Error).message).toMatch(reason)
    }
  })

  it('a hostile model.safetensors in a model folder fails the model load the same way', async () => {
    const { cpSync } = await import('node:fs')
    for (const [i, [, make, reason]] of HOSTILE.entries()) {
      if (i % 4 !== 0) continue
      const dir = join(tmp, `gpt2-hostile-${i}`)
      cpSync(join(goldenDir, 'gpt2'), dir, { recursive: true })
      writeFileSync(join(dir, 'model.safetensors'), make())
      await expect(Gpt2.load(dir, { device: 'cpu' })).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringMatching(reason) })
    }
  })

  describe('afterwards the process still works', () => {
    let clip: Clip
    let gpt2: Gpt2
    afterAll(() => {
      clip?.dispose()
      gpt2?.dispose()
    })
    it('the golden models load and match the reference', async () => {
      const ref = await loadSafetensors(join(goldenDir, 'reference.safetensors'))
      clip = await Clip.load(join(goldenDir, 'clip'), { device: 'cpu' })
      gpt2 = await Gpt2.load(join(goldenDir, 'gpt2'), { device: 'cpu' })
      expect(relError((await clip.imageFeatures(ref['inputs.pixel_values']!)).data as Float32Array, ref['outputs.image_features']!.data as Float32Array)).toBeLessThan(5e-5)
      expect(relError((await gpt2.logits(ref['inputs.gpt2_ids']!)).data as Float32Array, ref['outputs.gpt2_logits']!.data as Float32Array)).toBeLessThan(5e-5)
    })
  })
})
