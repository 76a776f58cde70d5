// Minimal streaming safetensors writer (and header reader) for the benchmark's model generator.
//
// Format: 8-byte little-endian header length N, then N bytes of JSON
//   {"__metadata__": {k: "v"}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}
// padded with spaces so that N is a multiple of 8 (as the official writer does), then the raw
// little-endian tensor bytes; data_offsets are relative to the first byte after the header.
//
// Tensors are written one after another in `specs` order, each generated chunk by chunk through a
// fill callback, so a 600 MB checkpoint never needs more than one chunk in memory.
import * as fs from 'node:fs'

export type Dtype = 'F32' | 'I64'

export interface TensorSpec {
  name: string
  dtype: Dtype
  shape: number[]
}

/** Fills `chunk` with elements [start, start + chunk.length) of the flattened tensor. */
export type FillFn = (spec: TensorSpec, chunk: Float32Array | BigInt64Array, start: number) => void

const DTYPE_BYTES: Record<Dtype, number> = { F32: 4, I64: 8 }

export function numel(shape: readonly number[]): number {
  let n = 1
  for (const d of shape) n *= d
  return n
}

export function tensorBytes(spec: TensorSpec): number {
  return numel(spec.shape) * DTYPE_BYTES[spec.dtype]
}

/** Serialises the header (length prefix + padded JSON) for tensors laid out in `specs` order. */
export function buildHeader(specs: readonly TensorSpec[], metadata?: Record<string, string>): Buffer {
  const obj: Record<string, unknown> = {}
  if (metadata && Object.keys(metadata).length > 0) obj.__metadata__ = metadata
  const seen = new Set<string>()
  let offset = 0
  for (const s of specs) {
    if (s.name === '__metadata__' || seen.has(s.name)) throw new Error(`bad or duplicate tensor name '${s.name}'`)
    seen.add(s.name)
    const end = offset + tensorBytes(s)
    obj[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [offset, end] }
    offset = end
  }
  let json = JSON.stringify(obj)
  const pad = (8 - (Buffer.byteLength(json, 'utf8') % 8)) % 8
  json += ' '.repeat(pad)
  const body = Buffer.from(json, 'utf8')
  const out = Buffer.alloc(8 + body.length)
  out.writeBigUInt64LE(BigInt(body.length), 0)
  body.copy(out, 8)
  return out
}

/**
 * Writes `specs` to `path`, generating each tensor's data with `fill` in chunks of at most
 * `chunkElems` elements. Returns the total file size in bytes.
 */
export function writeSafetensors(
  path: string,
  specs: readonly TensorSpec[],
  fill: FillFn,
  opts: { metadata?: Record<string, string>; chunkElems?: number } = {},
): number {
  const chunkElems = opts.chunkElems ?? 1 << 22
  const header = buildHeader(specs, opts.metadata)
  const tmp = `${path}.tmp-${process.pid}`
  const fd = fs.openSync(tmp, 'w')
  let total = 0
  try {
    const writeAll = (buf: Uint8Array) => {
      let off = 0
      while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off)
      total += buf.length
    }
    writeAll(header)
    const f32 = new Float32Array(chunkElems)
    const i64 = new BigInt64Array(chunkElems)
    for (const s of specs) {
      const n = numel(s.shape)
      for (let start = 0; start < n; start += chunkElems) {
        const len = Math.min(chunkElems, n - start)
        const chunk = s.dtype === 'F32' ? f32.subarray(0, len) : i64.subarray(0, len)
        fill(s, chunk, start)
        // Typed arrays are little-endian on every platform Node supports in practice (x86-64, arm64).
        writeAll(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength))
      }
    }
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, path)
  return total
}

export interface HeaderEntry {
  dtype: string
  shape: number[]
  data_offsets: [number, number]
}

/** Reads only the header of a safetensors file (for checks; the addon has its own loader). */
export function readSafetensorsHeader(path: string): {
  tensors: Record<string, HeaderEntry>
  metadata: Record<string, string>
  dataStart: number
} {
  const fd = fs.openSync(path, 'r')
  try {
    const lenBuf = Buffer.alloc(8)
    if (fs.readSync(fd, lenBuf, 0, 8, 0) !== 8) throw new Error(`${path}: too short`)
    const n = Number(lenBuf.readBigUInt64LE(0))
    const body = Buffer.alloc(n)
    if (fs.readSync(fd, body, 0, n, 8) !== n) throw new Error(`${path}: truncated header`)
    const obj = JSON.parse(body.toString('utf8')) as Record<string, unknown>
    const metadata = (obj.__metadata__ ?? {}) as Record<string, string>
    delete obj.__metadata__
    return { tensors: obj as Record<string, HeaderEntry>, metadata, dataStart: 8 + n }
  } finally {
    fs.closeSync(fd)
  }
}
