// Builders for torch.save-style zip checkpoints (zip container + protocol-2 pickle) and the hostile cases of
// test/torch-checkpoint.test.ts. Run as a script it writes the torch fuzz target's seeds: the committed fixtures
// of test/fixtures/torch (real torch.save output) plus every valid and hostile case built here, one file each.
//
//   node --import tsx fuzz/torch-seeds.ts [out-dir]     (default fuzz/seeds-torch)
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

// ------------------------------------------------------------------ pickle

const b = (...xs: number[]) => Buffer.from(xs)
const u16 = (v: number) => { const x = Buffer.alloc(2); x.writeUInt16LE(v); return x }
const u32 = (v: number) => { const x = Buffer.alloc(4); x.writeUInt32LE(v >>> 0); return x }
const u64 = (v: bigint | number) => { const x = Buffer.alloc(8); x.writeBigUInt64LE(BigInt(v)); return x }

/** Pickle pieces (protocol 2 unless PROTO says otherwise). */
export const P = {
  proto: (v = 2) => b(0x80, v),
  stop: b(0x2e),
  mark: b(0x28),
  emptyDict: b(0x7d),
  emptyList: b(0x5d),
  emptyTuple: b(0x29),
  tuple: b(0x74),
  setitem: b(0x73),
  setitems: b(0x75),
  append: b(0x61),
  reduce: b(0x52),
  build: b(0x62),
  persid: b(0x51),
  none: b(0x4e),
  false: b(0x89),
  true: b(0x88),
  str: (s: string) => { const d = Buffer.from(s, 'utf8'); return Buffer.concat([b(0x58), u32(d.length), d]) },
  int: (n: number | bigint): Buffer => {
    const v = BigInt(n)
    if (v >= 0n && v < 256n) return b(0x4b, Number(v))
    if (v >= 0n && v < 65536n) return Buffer.concat([b(0x4d), u16(Number(v))])
    if (v >= -(2n ** 31n) && v < 2n ** 31n) { const x = Buffer.alloc(4); x.writeInt32LE(Number(v)); return Buffer.concat([b(0x4a), x]) }
    const x = Buffer.alloc(8)
    x.writeBigInt64LE(v)
    return Buffer.concat([b(0x8a, 8), x])
  },
  global: (module: string, name: string) => Buffer.from(`c${module}\n${name}\n`, 'latin1'),
  binput: (i: number) => b(0x71, i),
  binget: (i: number) => b(0x68, i),
  tupleOf: (...items: Buffer[]) => (items.length === 0 ? b(0x29) : Buffer.concat([b(0x28), ...items, b(0x74)])),
}

export interface TensorSpec {
  storage: { type?: string; key: string; numel: number | bigint; location?: string }
  offset?: number | bigint
  shape: (number | bigint)[]
  stride?: (number | bigint)[]
  /** Wrap in torch._utils._rebuild_parameter. */
  parameter?: boolean
}

/** The pickle of one tensor as torch.save writes it (_rebuild_tensor_v2 over a BINPERSID storage). */
export function tensorPickle(t: TensorSpec): Buffer {
  const stride = t.stride ?? contiguousStrides(t.shape.map(Number))
  const pid = P.tupleOf(P.str('storage'), P.global('torch', t.storage.type ?? 'FloatStorage'), P.str(t.storage.key), P.str(t.storage.location ?? 'cpu'), P.int(t.storage.numel))
  const hooks = Buffer.concat([P.global('collections', 'OrderedDict'), P.emptyTuple, P.reduce])
  const rebuilt = Buffer.concat([
    P.global('torch._utils', '_rebuild_tensor_v2'),
    P.tupleOf(Buffer.concat([pid, P.persid]), P.int(t.offset ?? 0), P.tupleOf(...t.shape.map(P.int)), P.tupleOf(...stride.map(P.int)), P.false, hooks),
    P.reduce,
  ])
  if (!t.parameter) return rebuilt
  return Buffer.concat([P.global('torch._utils', '_rebuild_parameter'), P.tupleOf(rebuilt, P.false, hooks), P.reduce])
}

export function contiguousStrides(shape: number[]): number[] {
  const s = new Array<number>(shape.length)
  let acc = 1
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc
    acc *= shape[i]!
  }
  return s
}

/** An OrderedDict pickle of `items` (values already pickled). */
export function dictPickle(items: [string, Buffer][], proto = 2): Buffer {
  const parts: Buffer[] = [P.proto(proto), P.global('collections', 'OrderedDict'), P.emptyTuple, P.reduce]
  if (items.length) parts.push(P.mark, ...items.flatMap(([k, v]) => [P.str(k), v]), P.setitems)
  parts.push(P.stop)
  return Buffer.concat(parts)
}

// ------------------------------------------------------------------ zip

export interface ZipEntry {
  name: string
  data: Buffer
  /** zip method written in both headers (0 = stored). */
  method?: number
}
export interface ZipOptions {
  /** zip64 records and extra fields for every entry, even small ones. */
  zip64?: boolean
  /** Data alignment through an "FB" extra field in the local header (torch: 64). */
  align?: number
}
export interface BuiltZip {
  buf: Buffer
  /** Byte offset of each entry's local header and of its central directory record; of the directory and the EOCD. */
  local: number[]
  central: number[]
  cdOffset: number
  eocd: number
}

export function zip(entries: ZipEntry[], o: ZipOptions = {}): BuiltZip {
  const parts: Buffer[] = []
  const local: number[] = []
  let off = 0
  const align = o.align ?? 64
  for (const e of entries) {
    local.push(off)
    const name = Buffer.from(e.name, 'utf8')
    let extra = o.zip64 ? Buffer.concat([u16(1), u16(16), u64(e.data.length), u64(e.data.length)]) : Buffer.alloc(0)
    if (align > 1) {
      const base = off + 30 + name.length + extra.length + 4
      const pad = (align - (base % align)) % align
      extra = Buffer.concat([extra, u16(0x4246), u16(pad), Buffer.alloc(pad, 0x5a)])
    }
    const size = o.zip64 ? 0xffffffff : e.data.length
    const h = Buffer.concat([u32(0x04034b50), u16(o.zip64 ? 45 : 20), u16(0), u16(e.method ?? 0), u16(0), u16(33), u32(0), u32(size), u32(size), u16(name.length), u16(extra.length), name, extra])
    parts.push(h, e.data)
    off += h.length + e.data.length
  }
  const cdOffset = off
  const central: number[] = []
  for (const [i, e] of entries.entries()) {
    central.push(off)
    const name = Buffer.from(e.name, 'utf8')
    const extra = o.zip64 ? Buffer.concat([u16(1), u16(24), u64(e.data.length), u64(e.data.length), u64(local[i]!)]) : Buffer.alloc(0)
    const size = o.zip64 ? 0xffffffff : e.data.length
    const c = Buffer.concat([
      u32(0x02014b50), u16(45), u16(o.zip64 ? 45 : 20), u16(0), u16(e.method ?? 0), u16(0), u16(33), u32(0), u32(size), u32(size),
      u16(name.length), u16(extra.length), u16(0), u16(0), u16(0), u32(0), u32(o.zip64 ? 0xffffffff : local[i]!), name, extra,
    ])
    parts.push(c)
    off += c.length
  }
  const cdSize = off - cdOffset
  if (o.zip64) {
    const rec = off
    const r = Buffer.concat([u32(0x06064b50), u64(44), u16(45), u16(45), u32(0), u32(0), u64(entries.length), u64(entries.length), u64(cdSize), u64(cdOffset)])
    const loc = Buffer.concat([u32(0x07064b50), u32(0), u64(rec), u32(1)])
    parts.push(r, loc)
    off += r.length + loc.length
  }
  const n = o.zip64 ? 0xffff : entries.length
  const eocd = Buffer.concat([u32(0x06054b50), u16(0), u16(0), u16(n), u16(n), u32(o.zip64 ? 0xffffffff : cdSize), u32(o.zip64 ? 0xffffffff : cdOffset), u16(0)])
  parts.push(eocd)
  return { buf: Buffer.concat(parts), local, central, cdOffset, eocd: off }
}

/** A checkpoint zip: `<root>/data.pkl` + storages `<root>/data/<key>` (+ byteorder / version unless null). */
export function checkpoint(pickle: Buffer, storages: Record<string, Buffer>, o: ZipOptions & { root?: string; byteorder?: string | null; extra?: ZipEntry[] } = {}): BuiltZip {
  const root = o.root ?? 'archive'
  const entries: ZipEntry[] = [{ name: `${root}/data.pkl`, data: pickle }]
  if (o.byteorder !== null) entries.push({ name: `${root}/byteorder`, data: Buffer.from(o.byteorder ?? 'little') })
  for (const [k, v] of Object.entries(storages)) entries.push({ name: `${root}/data/${k}`, data: v })
  entries.push({ name: `${root}/version`, data: Buffer.from('3\n') }, ...(o.extra ?? []))
  return zip(entries, o)
}

/** float32 little-endian bytes. */
export const f32 = (xs: number[]) => Buffer.from(new Float32Array(xs).buffer)

/** A small valid checkpoint: w [2,3] float32 (0..5) and its transpose, b [3] (sharing storage 1). */
export function smallCheckpoint(o: ZipOptions = {}): Buffer {
  const p = dictPickle([
    ['w', tensorPickle({ storage: { key: '0', numel: 6 }, shape: [2, 3] })],
    ['wt', tensorPickle({ storage: { key: '0', numel: 6 }, shape: [3, 2], stride: [1, 3] })],
    ['b', tensorPickle({ storage: { key: '1', numel: 3 }, shape: [3], parameter: true })],
  ])
  return checkpoint(p, { 0: f32([0, 1, 2, 3, 4, 5]), 1: f32([7, 8, 9]) }, o).buf
}

// ------------------------------------------------------------------ hostile cases

/** Wraps a raw pickle (a list of pieces) into an otherwise valid checkpoint with one float storage of 4 elements. */
const wrap = (...pieces: Buffer[]) => checkpoint(Buffer.concat(pieces), { 0: f32([1, 2, 3, 4]) }).buf
const one = (t: TensorSpec) => wrap(dictPickle([['t', tensorPickle(t)]]))

/** [name, file bytes, a piece of the message it must be refused with]. */
export function hostileCases(): [string, Buffer, RegExp][] {
  const cases: [string, Buffer, RegExp][] = []
  const call = (mod: string, name: string, arg: Buffer) => wrap(P.proto(), P.global(mod, name), P.tupleOf(arg), P.reduce, P.stop)
  cases.push(['global-os-system', call('os', 'system', P.str('echo pwned > /tmp/semicap-pwned')), /global 'os\.system'.*not a plain state_dict.*state_dict\(\)/])
  cases.push(['global-posix-system', call('posix', 'system', P.str('true')), /global 'posix\.system'/])
  cases.push(['global-builtins-eval', call('builtins', 'eval', P.str('1+1')), /global 'builtins\.eval'/])
  cases.push(['global-torch-load', call('torch', 'load', P.str('/etc/passwd')), /global 'torch\.load'/])
  cases.push(['global-builtin-getattr', call('__builtin__', 'getattr', P.str('x')), /global '__builtin__\.getattr'/])
  cases.push(['stack-global-os-system', wrap(P.proto(4), b(0x8c, 2), Buffer.from('os'), b(0x8c, 6), Buffer.from('system'), b(0x93), P.str('true'), b(0x85), P.reduce, P.stop), /global 'os\.system'/])
  cases.push(['untyped-storage', one({ storage: { type: 'UntypedStorage', key: '0', numel: 16 }, shape: [16] }), /UntypedStorage/])
  cases.push(['complex-storage', one({ storage: { type: 'ComplexFloatStorage', key: '0', numel: 2 }, shape: [2] }), /unsupported storage type torch\.ComplexFloatStorage/])
  cases.push(['memo-out-of-range', wrap(P.proto(), P.emptyDict, P.binput(0), P.binget(5), P.stop), /memo index 5 is not defined/])
  cases.push(['long-binget-huge', wrap(P.proto(), P.emptyDict, b(0x6a, 0xff, 0xff, 0xff, 0xff), P.stop), /memo index 4294967295/])
  cases.push(['huge-binunicode', wrap(P.proto(), b(0x58, 0xff, 0xff, 0xff, 0x7f), P.stop), /ends inside an opcode's argument/])
  cases.push(['huge-binunicode8', wrap(P.proto(4), b(0x8d), u64(2n ** 63n), P.stop), /ends inside an opcode's argument/])
  cases.push(['huge-binbytes', wrap(P.proto(3), b(0x42, 0xff, 0xff, 0xff, 0xff), P.stop), /ends inside an opcode's argument/])
  cases.push(['huge-frame', wrap(P.proto(4), b(0x95), u64(2n ** 40n), P.stop), /FRAME runs past the end/])
  cases.push(['deep-marks', wrap(P.proto(), Buffer.alloc(100_000, 0x28), P.stop), /nesting deeper than/])
  cases.push(['deep-lists', wrap(P.proto(), Buffer.alloc(100_000, 0x5d), Buffer.alloc(99_999, 0x61), P.stop), /holds a list, not a dict/])
  cases.push(['stack-underflow', wrap(P.proto(), P.setitem, P.stop), /stack underflow/])
  cases.push(['no-stop', wrap(P.proto(), P.emptyDict), /without STOP/])
  cases.push(['unknown-opcode', wrap(P.proto(), b(0x69), Buffer.from('os\nsystem\n'), P.stop), /unsupported pickle opcode 0x69/])
  cases.push(['top-level-list', wrap(P.proto(), P.emptyList, P.stop), /holds a list, not a dict/])
  cases.push(['bad-protocol', wrap(b(0x80, 9), P.emptyDict, P.stop), /pickle protocol 9/])
  cases.push(['long1-too-long', wrap(P.proto(), P.emptyDict, P.str('x'), b(0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9), P.setitem, P.stop), /does not fit in 64 bits/])
  cases.push(['key-not-utf8', wrap(P.proto(), P.emptyDict, b(0x58, 3, 0, 0, 0, 0x61, 0xff, 0x62), P.int(2), P.setitem, P.stop), /key is not valid UTF-8 \('a\\xffb'\)/])
  cases.push(['key-not-string', wrap(P.proto(), P.emptyDict, P.tupleOf(P.int(1)), P.int(2), P.setitem, P.stop), /key is a tuple/])
  cases.push(['reduce-on-storage-type', wrap(P.proto(), P.global('torch', 'FloatStorage'), P.tupleOf(P.int(4)), P.reduce, P.stop), /REDUCE on torch\.FloatStorage/])
  cases.push(['ordered-dict-args', wrap(P.proto(), P.global('collections', 'OrderedDict'), P.tupleOf(P.emptyList), P.reduce, P.stop), /OrderedDict called with arguments/])
  cases.push(['build-on-tensor', wrap(dictPickle([]).subarray(0, -1), P.str('t'), tensorPickle({ storage: { key: '0', numel: 4 }, shape: [4] }), P.emptyDict, P.build, P.setitem, P.stop), /BUILD on a tensor/])
  cases.push(['parameter-with-state', wrap(P.proto(), P.emptyDict, P.str('p'), P.global('torch._utils', '_rebuild_parameter_with_state'),
    P.tupleOf(tensorPickle({ storage: { key: '0', numel: 4 }, shape: [4] }), P.false, P.emptyDict, Buffer.concat([P.emptyDict, P.str('attr'), P.int(1), P.setitem])), P.reduce, P.setitem, P.stop), /Parameter with attributes/])
  cases.push(['duplicate-flattened-name', wrap(P.proto(), P.emptyDict, P.mark,
    P.str('a.b'), tensorPickle({ storage: { key: '0', numel: 4 }, shape: [4] }),
    P.str('a'), Buffer.concat([P.emptyDict, P.str('b'), tensorPickle({ storage: { key: '0', numel: 4 }, shape: [4] }), P.setitem]), P.setitems, P.stop), /duplicate tensor name 'a\.b'/])
  {
    // A DAG of dicts, each holding the previous one twice: 2^40 paths from the top.
    const parts: Buffer[] = [P.proto(), P.emptyDict, P.str('x'), P.int(1), P.setitem, P.binput(0)]
    for (let i = 1; i <= 40; i++) parts.push(P.emptyDict, P.mark, P.str('a'), P.binget(i - 1), P.str('b'), P.binget(i - 1), P.setitems, P.binput(i))
    parts.push(P.stop) // the stack holds d0..d40; STOP takes d40
    cases.push(['dict-dag-blowup', wrap(...parts), /the same dict appears twice/])
  }
  {
    // One 60 KB key above a thousand leaves: every flattened name repeats it.
    const inner: Buffer[] = [P.emptyDict, P.mark]
    for (let i = 0; i < 1000; i++) inner.push(P.str(`k${i}`), P.int(i))
    inner.push(P.setitems)
    cases.push(['name-bytes-blowup', wrap(P.proto(), P.emptyDict, P.str('k'.repeat(60_000)), ...inner, P.setitem, P.stop), /flattened names take more than/])
  }
  cases.push(['storage-missing', one({ storage: { key: '7', numel: 4 }, shape: [4] }), /storage record 'archive\/data\/7' is missing/])
  cases.push(['storage-short', one({ storage: { key: '0', numel: 1000 }, shape: [1000] }), /holds 1000 FloatStorage elements .* only 16 bytes/])
  cases.push(['extent-past-storage', one({ storage: { key: '0', numel: 4 }, shape: [10] }), /reaches element 9 of storage '0', which holds 4 elements/])
  cases.push(['offset-past-storage', one({ storage: { key: '0', numel: 4 }, offset: 3, shape: [2] }), /reaches element 4/])
  cases.push(['stride-past-storage', one({ storage: { key: '0', numel: 4 }, shape: [2, 2], stride: [3, 1] }), /reaches element 4/])
  cases.push(['negative-dim', one({ storage: { key: '0', numel: 4 }, shape: [-1], stride: [1] }), /negative value -1/])
  cases.push(['negative-stride', one({ storage: { key: '0', numel: 4 }, shape: [2], stride: [-1] }), /negative value -1/])
  cases.push(['negative-offset', one({ storage: { key: '0', numel: 4 }, offset: -2, shape: [2] }), /negative tensor storage offset/])
  cases.push(['size-overflow', one({ storage: { key: '0', numel: 4 }, shape: [2n ** 62n, 2n ** 62n], stride: [0, 0] }), /overflows/])
  cases.push(['expand-bomb', one({ storage: { key: '0', numel: 4 }, shape: [2n ** 40n], stride: [0] }), /non-contiguous view of 4398046511104 bytes/])
  cases.push(['too-many-dims', one({ storage: { key: '0', numel: 4 }, shape: Array(70).fill(1) }), /more than 64 dimensions/])
  cases.push(['storage-negative-numel', one({ storage: { key: '0', numel: -4 }, shape: [0] }), /negative size/])
  // zip container
  const good = smallCheckpoint()
  {
    const z = zip([{ name: 'archive/data.pkl', data: dictPickle([]) }], {})
    const bad = Buffer.from(z.buf)
    bad.writeUInt32LE(bad.length + 1000, z.eocd + 16) // central directory offset past the end
    cases.push(['cd-offset-past-end', bad, /central directory .* runs past the end of the file/])
  }
  {
    const z = zip([{ name: 'archive/data.pkl', data: dictPickle([]) }], {})
    const bad = Buffer.from(z.buf)
    bad.writeUInt32LE(1 << 30, z.central[0]! + 42) // local header offset past the end
    cases.push(['local-header-past-end', bad, /local header at 1073741824 is missing or past the end/])
  }
  {
    const z = zip([{ name: 'archive/data.pkl', data: dictPickle([]) }], {})
    const bad = Buffer.from(z.buf)
    bad.writeUInt32LE(1 << 30, z.central[0]! + 20) // sizes past the end
    bad.writeUInt32LE(1 << 30, z.central[0]! + 24)
    cases.push(['record-past-end', bad, /runs past the end of the file/])
  }
  {
    // Entry B's local header and data sit inside entry A's data: overlapping records.
    const inner = zip([{ name: 'archive/data/0', data: f32([1, 2, 3, 4]) }], { align: 1 })
    const innerLocal = inner.buf.subarray(0, inner.cdOffset)
    const pkl = dictPickle([['t', tensorPickle({ storage: { key: '0', numel: 4 }, shape: [4] })]])
    const outer = zip([{ name: 'archive/data.pkl', data: pkl }, { name: 'archive/blob', data: innerLocal }, { name: 'archive/data/0', data: f32([1, 2, 3, 4]) }], {})
    const bad = Buffer.from(outer.buf)
    const blobData = outer.local[1]! + 30 + 'archive/blob'.length + bad.readUInt16LE(outer.local[1]! + 28)
    bad.writeUInt32LE(blobData, outer.central[2]! + 42)
    cases.push(['overlapping-records', bad, /overlapping zip records/])
  }
  cases.push(['compressed-record', checkpoint(dictPickle([]), {}, { extra: [{ name: 'archive/data/9', data: Buffer.alloc(64), method: 8 }] }).buf, /compressed record 'archive\/data\/9' \(zip method 8\): torch\.save never compresses; re-save with torch\.save/])
  {
    // A "zip bomb": a deflated record claiming 4 GB.
    const z = zip([{ name: 'archive/data.pkl', data: Buffer.from([0x03, 0x00]), method: 8 }], {})
    const bad = Buffer.from(z.buf)
    bad.writeUInt32LE(0xfffffff0, z.central[0]! + 24)
    cases.push(['zip-bomb', bad, /compressed record 'archive\/data\.pkl'/])
  }
  cases.push(['big-endian', checkpoint(dictPickle([]), {}, { byteorder: 'big' }).buf, /big-endian checkpoint/])
  cases.push(['no-data-pkl', zip([{ name: 'archive/version', data: Buffer.from('3\n') }]).buf, /without '<name>\/data\.pkl'/])
  cases.push(['two-data-pkl', zip([{ name: 'a/data.pkl', data: dictPickle([]) }, { name: 'b/data.pkl', data: dictPickle([]) }]).buf, /several '<name>\/data\.pkl'/])
  cases.push(['torchscript', checkpoint(dictPickle([]), {}, { extra: [{ name: 'archive/code/__torch__.py', data: Buffer.from('x') }, { name: 'archive/constants.pkl', data: dictPickle([]) }] }).buf, /TorchScript archive/])
  cases.push(['duplicate-record', zip([{ name: 'archive/data.pkl', data: dictPickle([]) }, { name: 'archive/data.pkl', data: dictPickle([]) }]).buf, /holds 'archive\/data\.pkl' twice/])
  {
    const z = zip([{ name: 'archive/data.pkl', data: dictPickle([]) }])
    const bad = Buffer.from(z.buf)
    bad.writeUInt16LE(0xfffe, z.eocd + 8)
    bad.writeUInt16LE(0xfffe, z.eocd + 10)
    cases.push(['entry-count-huge', bad, /too small for 65534 records/])
  }
  {
    const z = zip([{ name: 'archive/data.pkl', data: dictPickle([]) }], { zip64: true })
    const bad = Buffer.from(z.buf)
    bad.writeBigUInt64LE(2n ** 50n, z.eocd - 20 + 8)
    cases.push(['zip64-locator-past-end', bad, /zip64 end of central directory record at .* outside the file/])
    const bad2 = Buffer.from(z.buf)
    bad2.writeUInt16LE(0, z.central[0]! + 30) // no zip64 extra although the fields say 0xFFFFFFFF
    cases.push(['zip64-extra-missing', bad2, /needs a zip64 extra field|damaged/])
  }
  cases.push(['empty-file', Buffer.alloc(0), /not a torch\.save zip|too short|not a safetensors file/])
  cases.push(['pk-only', Buffer.from('PK\x03\x04'), /too short|no zip end of central directory/])
  for (const cut of [good.length - 1, good.length - 22, Math.floor(good.length / 2), 100, 30])
    cases.push([`truncated-${cut}`, good.subarray(0, cut), /truncated|no zip end of central directory|central directory|not a torch\.save/])
  {
    // Legacy formats: the pickled magic number, and the tar layout.
    const legacy = Buffer.concat([P.proto(2), b(0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19), b(0x2e)])
    cases.push(['legacy-magic', legacy, /legacy torch\.save format.*re-save with torch >= 1\.6 \(torch\.save\(torch\.load\(f\), f2\)\)/])
    const tar = Buffer.alloc(1024)
    tar.write('storages', 0)
    tar.write('ustar', 257)
    cases.push(['legacy-tar', tar, /legacy torch\.save format/])
  }
  return cases
}

/** Valid inputs built here (beside the real torch.save fixtures). */
export function validCases(): [string, Buffer][] {
  return [
    ['valid-small', smallCheckpoint()],
    ['valid-small-zip64', smallCheckpoint({ zip64: true })],
    ['valid-small-unaligned', smallCheckpoint({ align: 1 })],
    ['valid-cuda-location', checkpoint(dictPickle([['t', tensorPickle({ storage: { key: '0', numel: 4, location: 'cuda:0' }, shape: [2, 2] })]]), { 0: f32([1, 2, 3, 4]) }).buf],
    ['valid-nul-name', checkpoint(dictPickle([['a\u0000b', tensorPickle({ storage: { key: '0', numel: 1 }, shape: [] })]]), { 0: f32([5]) }).buf],
    ['valid-empty-dict', checkpoint(dictPickle([]), {}, { byteorder: null }).buf],
    ['valid-proto4-memo', checkpoint(Buffer.concat([P.proto(4), b(0x95), u64(0), P.emptyDict, b(0x94), P.str('s'), b(0x94), P.int(3), P.setitem, P.stop]), {}).buf],
  ]
}

export function torchSeeds(): [string, Buffer][] {
  const out: [string, Buffer][] = []
  const fixtures = resolve(fileURLToPath(new URL('../test/fixtures/torch', import.meta.url)))
  const walk = (dir: string, prefix: string) => {
    for (const n of readdirSync(dir).sort()) {
      const p = join(dir, n)
      if (statSync(p).isDirectory()) walk(p, `${prefix}${n}-`)
      else if (/\.(pt|bin)$/.test(n)) out.push([`fixture-${prefix}${n}`, readFileSync(p)])
    }
  }
  walk(fixtures, '')
  out.push(...validCases())
  for (const [n, buf] of hostileCases()) out.push([`hostile-${n}`, buf])
  return out
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dir = resolve(process.argv[2] ?? join(fileURLToPath(new URL('.', import.meta.url)), 'seeds-torch'))
  mkdirSync(dir, { recursive: true })
  // Inputs over 32 KB (the 100k-deep nesting cases) stay in the test only: the fuzzer's max_len is 16 KB.
  const seeds = torchSeeds().filter(([, buf]) => buf.length <= 32 * 1024)
  for (const [n, buf] of seeds) writeFileSync(join(dir, n), buf)
  console.log(`wrote ${seeds.length} seeds to ${dir}`)
}
