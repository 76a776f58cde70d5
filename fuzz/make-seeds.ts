// Writes the fuzzer's seed corpus: small valid safetensors files (every dtype, metadata, empty tensors, odd
// spacing and key orders) and the hostile cases of test/safetensors.test.ts, one file each.
//
//   node --import tsx fuzz/make-seeds.ts [out-dir]     (default fuzz/seeds)
import { mkdirSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/** 8-byte little-endian header length, the header bytes, the data bytes. */
export function stFile(header: string | Buffer, data: Buffer = Buffer.alloc(0), headerLength?: bigint): Buffer {
  const h = typeof header === 'string' ? Buffer.from(header, 'utf8') : header
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(headerLength ?? BigInt(h.length))
  return Buffer.concat([len, h, data])
}

const f32 = (name: string, begin: number, end: number, shape = `[${(end - begin) / 4}]`) => `"${name}":{"dtype":"F32","shape":${shape},"data_offsets":[${begin},${end}]}`

const SIZES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 }

/** A valid file in the reference writer's layout (header padded to 8 with spaces). */
export function validFile(tensors: [string, string, number[]][], metadata?: Record<string, string>, pad = true): Buffer {
  const h: Record<string, unknown> = {}
  if (metadata) h.__metadata__ = metadata
  let off = 0
  const parts: Buffer[] = []
  for (const [name, dtype, shape] of tensors) {
    const n = shape.reduce((a, b) => a * b, 1) * SIZES[dtype]!
    h[name] = { dtype, shape, data_offsets: [off, off + n] }
    parts.push(Buffer.from(Array.from({ length: n }, (_, i) => (i * 37 + off) & 0xff)))
    off += n
  }
  let text = JSON.stringify(h)
  if (pad) while (text.length % 8) text += ' '
  return stFile(text, Buffer.concat(parts))
}

export function seeds(): [string, Buffer][] {
  const out: [string, Buffer][] = []
  // Valid files.
  out.push(['valid-empty', stFile('{}')])
  out.push(['valid-metadata-only', validFile([], { format: 'pt', step: '12' })])
  out.push(['valid-every-dtype', validFile(Object.keys(SIZES).map((d, i) => [d.toLowerCase(), d, [i % 3 + 1, 2]]), { format: 'pt' })])
  out.push(['valid-scalar-and-empty', validFile([['s', 'F32', []], ['e', 'F32', [0, 3]], ['z', 'I64', [0]]])])
  out.push(['valid-unpadded-keys-reordered', stFile('{"b":{"shape":[1],"data_offsets":[8,12],"dtype":"I32","extra":{"x":["y"]}}, "a" : {"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', Buffer.alloc(12))])
  out.push(['valid-escapes', validFile([['w\\"\\u00e9\\ud83d\\ude00', 'U8', [3]]], { 'k\n': 'v\t"\\', 'ü': '🙂' })])
  out.push(['valid-spaces', stFile(' \n\t{ "a" :\r{ "dtype" : "U8" , "shape" : [ 2 , 1 ] , "data_offsets" : [ 0 , 2 ] } }  ', Buffer.alloc(2))])
  out.push(['valid-extra-literals', stFile('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":true,"y":null,"z":-1.5e3,"w":[false,{}]}}', Buffer.alloc(1))])
  out.push(['valid-4d', validFile([['conv', 'F16', [2, 3, 2, 2]], ['bias', 'BF16', [2]]])])
  // Hostile files (as in test/safetensors.test.ts).
  const hostile: [string, Buffer][] = [
    ['empty-file', Buffer.alloc(0)],
    ['seven-bytes', Buffer.from([1, 0, 0, 0, 0, 0, 0])],
    ['header-past-end', stFile('{}', Buffer.alloc(0), 1000n)],
    ['header-over-100mb', stFile('{}', Buffer.alloc(16), 200_000_000n)],
    ['header-2p64', stFile('{}', Buffer.alloc(16), 2n ** 64n - 1n)],
    ['not-json', stFile('hello, world')],
    ['truncated-json', stFile(`{${f32('a', 0, 4)}`, Buffer.alloc(4))],
    ['not-utf8', stFile(Buffer.concat([Buffer.from('{"a'), Buffer.from([0xff, 0xfe]), Buffer.from('":{}}')]))],
    ['overlong-utf8', stFile(Buffer.concat([Buffer.from('{"'), Buffer.from([0xc0, 0xaf]), Buffer.from(`":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}`)]), Buffer.alloc(4))],
    ['lone-surrogate', stFile(`{"\\ud800x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, Buffer.alloc(4))],
    ['duplicate-names', stFile(`{${f32('w', 0, 4)},${f32('w', 4, 8)}}`, Buffer.alloc(8))],
    ['overlapping', stFile(`{${f32('a', 0, 8)},${f32('b', 4, 12)}}`, Buffer.alloc(12))],
    ['gapped', stFile(`{${f32('a', 0, 4)},${f32('b', 8, 12)}}`, Buffer.alloc(12))],
    ['offsets-past-end', stFile(`{${f32('a', 0, 8)}}`, Buffer.alloc(4))],
    ['data-left-over', stFile(`{${f32('a', 0, 4)}}`, Buffer.alloc(12))],
    ['offsets-reversed', stFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, Buffer.alloc(8))],
    ['offsets-3-entries', stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, Buffer.alloc(8))],
    ['negative-offset', stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, Buffer.alloc(4))],
    ['offset-beyond-2p64', stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551620]}}`, Buffer.alloc(4))],
    ['shape-overflow', stFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,4]}}`, Buffer.alloc(4))],
    ['dim-beyond-int64', stFile(`{"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,4]}}`, Buffer.alloc(4))],
    ['fractional-dim', stFile(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, Buffer.alloc(4))],
    ['dtype-length-mismatch', stFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, Buffer.alloc(8))],
    ['unknown-dtype', stFile(`{"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}`, Buffer.alloc(4))],
    ['no-data-offsets', stFile(`{"a":{"dtype":"F32","shape":[1]}}`, Buffer.alloc(4))],
    ['non-string-metadata', stFile(`{"__metadata__":{"n":1}}`)],
    ['trailing-garbage', stFile(`{${f32('a', 0, 4)}}xyz`, Buffer.alloc(4))],
    ['json-array', stFile(`[${f32('a', 0, 4).slice(4)}]`, Buffer.alloc(4))],
    ['nested-too-deep', stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":${'['.repeat(100)}${']'.repeat(100)}}}`, Buffer.alloc(4))],
    ['control-char', stFile(`{"a\u0001":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, Buffer.alloc(4))],
    ['shape-65-dims', stFile(`{"a":{"dtype":"U8","shape":[${Array(65).fill(1).join(',')}],"data_offsets":[0,1]}}`, Buffer.alloc(1))],
    ['zero-dim-huge-others', stFile(`{"a":{"dtype":"F64","shape":[0,18446744073709551615],"data_offsets":[0,0]}}`)],
    ['metadata-duplicate', stFile(`{"__metadata__":{"a":"b"},"__metadata__":{}}`)],
  ]
  for (const [name, b] of hostile) out.push([`hostile-${name}`, b])
  return out
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dir = resolve(process.argv[2] ?? join(fileURLToPath(new URL('.', import.meta.url)), 'seeds'))
  mkdirSync(dir, { recursive: true })
  const all = seeds()
  for (const [name, b] of all) writeFileSync(join(dir, `${name}.safetensors`), b)
  console.log(`wrote ${all.length} seeds to ${dir}`)
}
