// PyTorch checkpoints (torch.save's zip format), sharded folders and the torch-zip writer, through the addon's one
// weights loader (native/weights_file.cc -> native/torch_checkpoint.cc). Fixtures: test/fixtures/torch, written by
// scripts/make-torch-fixtures.py with real torch.save; expected.json holds what torch.load returned for them.
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { convertWeights, loadSafetensors, readSafetensorsHeader, writeSafetensors, writeTorchCheckpoint } from '../lib/runtime.js'
import { native } from '../lib/native.js'
import { readClipConfig, readGpt2Config } from '../lib/config.js'
import { SemicapError } from '../lib/errors.js'
import { Tensor, tensor } from '../lib/tensor.js'
import { hostileCases, smallCheckpoint, validCases } from '../fuzz/torch-seeds.js'
import { goldenDir, repoRoot, tempDir } from './helpers/paths.js'

const FIX = join(repoRoot, 'test', 'fixtures', 'torch')
interface Expected {
  names: string[]
  tensors: Record<string, { dtype: string; shape: number[]; values: number[] }>
  metadata: Record<string, string>
}
const expected = JSON.parse(readFileSync(join(FIX, 'expected.json'), 'utf8')) as Record<string, Expected> & { _torch_version: string }

let tmp: string
beforeAll(() => {
  tmp = tempDir('semicap-torch-')
})
afterAll(() => rmSync(tmp, { recursive: true, force: true }))

// The first Python that imports torch: the one on PATH, else Debian's (python3-torch installs into /usr/bin/python3,
// which a pyenv or venv python3 earlier on PATH hides).
const python = ['python3', '/usr/bin/python3'].find((py) => spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0)
const hasTorch = python !== undefined

/** Element values as plain numbers: 16-bit floats decoded, int64 as numbers. */
function values(t: Tensor): number[] {
  const d = t.data
  if (t.dtype === 'bfloat16') {
    const u = new Uint32Array(d.length)
    for (let i = 0; i < d.length; i++) u[i] = (d[i] as number) << 16
    return Array.from(new Float32Array(u.buffer))
  }
  if (t.dtype === 'float16') return Array.from(d as Uint16Array, halfToFloat)
  return Array.from(d as ArrayLike<number | bigint>, Number)
}
function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1
  const e = (h >> 10) & 0x1f
  const m = h & 0x3ff
  if (e === 0) return s * m * 2 ** -24
  if (e === 31) return m ? NaN : s * Infinity
  return s * (1 + m / 1024) * 2 ** (e - 15)
}

function fixturePath(key: string): string {
  if (key === 'sharded-torch') return join(FIX, key, 'pytorch_model.bin.index.json')
  if (key === 'sharded-safetensors') return join(FIX, key, 'model.safetensors.index.json')
  return join(FIX, key)
}

async function rejection(p: Promise<unknown>): Promise<SemicapError> {
  const r = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(r, 'expected a rejection').toBeInstanceOf(SemicapError)
  return r as SemicapError
}

describe('torch.save fixtures load with the values torch.load returns', () => {
  const keys = Object.keys(expected).filter((k) => !k.startsWith('_'))

  it('covers every dtype, views, shared storage, parameters, nested dicts, protocols 2/4/5 and both sharded kinds', () => {
    expect(keys.sort()).toEqual(
      ['dtypes.pt', 'module.pt', 'nested.pt', 'params.pt', 'proto2.pt', 'proto4.pt', 'proto5.pt', 'shared.pt', 'sharded-safetensors', 'sharded-torch', 'views.pt'].sort(),
    )
    expect(new Set(Object.values(expected['dtypes.pt']!.tensors).map((t) => t.dtype))).toEqual(new Set(['F32', 'F64', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL']))
    // Committed fixtures stay small.
    let bytes = 0
    const walk = (d: string) => {
      for (const n of readdirSync(d)) {
        const p = join(d, n)
        if (statSync(p).isDirectory()) walk(p)
        else bytes += statSync(p).size
      }
    }
    walk(FIX)
    expect(bytes).toBeLessThan(300_000)
  })

  for (const key of Object.keys(expected).filter((k) => !k.startsWith('_'))) {
    it(`${key}: names, dtypes, shapes, metadata and exact values`, async () => {
      const want = expected[key]!
      const path = fixturePath(key)
      const header = await readSafetensorsHeader(path)
      expect(header.names).toEqual(want.names)
      expect(header.metadata).toEqual(want.metadata)
      const loaded = await loadSafetensors(path)
      expect(Object.keys(loaded)).toEqual(want.names)
      for (const n of want.names) {
        const w = want.tensors[n]!
        expect(header.tensors[n], n).toEqual({ dtype: w.dtype, shape: w.shape })
        const t = loaded[n]!
        expect(t.shape, n).toEqual(w.shape)
        expect(values(t), n).toEqual(w.values)
      }
    })
  }

  it('nested dicts join with dots; ints, floats, strings, bools, None, lists and tuples are listed in metadata', async () => {
    const h = await readSafetensorsHeader(join(FIX, 'nested.pt'))
    expect(h.names).toEqual(['model.linear.weight', 'model.linear.bias', 'ema.inner.w'])
    expect(h.metadata).toEqual({ epoch: '3', step: '1200', lr: '0.001', name: "'run-1'", flags: 'list[2]', shape: 'tuple[2]', ok: 'True', none: 'None' })
  })

  it('tensors sharing a storage (a tied head, a view of half of it) all appear with the shared values', async () => {
    const t = await loadSafetensors(join(FIX, 'shared.pt'))
    expect(values(t['lm_head.weight']!)).toEqual(values(t['transformer.wte.weight']!))
    expect(values(t.half!)).toEqual(values(t['transformer.wte.weight']!).slice(20))
  })

  it('the legacy format (_use_new_zipfile_serialization=False) is refused with a re-save hint', async () => {
    const path = join(FIX, 'legacy.pt')
    for (const load of [readSafetensorsHeader, loadSafetensors]) {
      const e = await rejection(load(path))
      expect(e.code).toBe('E_CHECKPOINT')
      expect(e.message).toContain(path)
      expect(e.message).toMatch(/legacy torch\.save format.*re-save with torch >= 1\.6 \(torch\.save\(torch\.load\(f\), f2\)\)/)
    }
  })

  it('zip64 records, unaligned data and protocol-4 memo opcodes built here read too', async () => {
    for (const [name, buf] of validCases()) {
      const p = join(tmp, `${name}.pt`)
      writeFileSync(p, buf)
      const h = await readSafetensorsHeader(p)
      if (name.startsWith('valid-small')) {
        const t = await loadSafetensors(p)
        expect(h.names, name).toEqual(['w', 'wt', 'b'])
        expect(values(t.w!)).toEqual([0, 1, 2, 3, 4, 5])
        expect(t.wt!.shape).toEqual([3, 2])
        expect(values(t.wt!)).toEqual([0, 3, 1, 4, 2, 5]) // the transpose, materialised
        expect(values(t.b!)).toEqual([7, 8, 9])
      }
    }
  })
})

describe('hostile checkpoints are refused with E_CHECKPOINT naming the problem; nothing runs', () => {
  const cases = hostileCases()
  it(`${cases.length} cases: each rejects (header and full load) and the process stays alive`, async () => {
    const marker = '/tmp/semicap-pwned'
    rmSync(marker, { force: true })
    for (const [name, buf, re] of cases) {
      const path = join(tmp, `${name}.pt`)
      writeFileSync(path, buf)
      const t0 = performance.now()
      for (const load of [readSafetensorsHeader, loadSafetensors]) {
        const e = await rejection(load(path))
        expect(e.code, `${name}: ${e.message}`).toBe('E_CHECKPOINT')
        expect(e.message, name).toContain(path)
        expect(e.message, name).toMatch(re)
      }
      expect(performance.now() - t0, name).toBeLessThan(5000)
    }
    expect(existsSync(marker)).toBe(false)
    // Still alive and working.
    const p = join(tmp, 'after.pt')
    writeFileSync(p, smallCheckpoint())
    expect((await readSafetensorsHeader(p)).names).toEqual(['w', 'wt', 'b'])
  })

  it('sharded folders: shard names must be plain files; every mapped name present; no strays or duplicates', async () => {
    const src = join(FIX, 'sharded-torch')
    const shards = ['pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin']
    const index = JSON.parse(readFileSync(join(src, 'pytorch_model.bin.index.json'), 'utf8')) as { weight_map: Record<string, string> }
    const variants: [string, unknown, RegExp][] = [
      ['escape', { weight_map: { ...index.weight_map, 'h.0.w': '../pytorch_model-00001-of-00002.bin' } }, /not a plain file name/],
      ['absolute', { weight_map: { ...index.weight_map, 'h.0.w': '/etc/passwd' } }, /not a plain file name/],
      ['dotdot', { weight_map: { ...index.weight_map, 'h.0.w': '..' } }, /not a plain file name/],
      ['missing-name', { weight_map: { ...index.weight_map, 'h.9.w': shards[0] } }, /places 'h\.9\.w' in .* which does not hold it/],
      ['stray-name', { weight_map: Object.fromEntries(Object.entries(index.weight_map).filter(([k]) => k !== 'h.1.b')) }, /holds 'h\.1\.b', which the weight_map does not list/],
      ['wrong-shard', { weight_map: { ...index.weight_map, 'h.1.b': shards[0] } }, /holds 'h\.1\.b', which the weight_map places in/],
      ['no-map', { metadata: {} }, /needs a weight_map/],
      ['map-not-object', { weight_map: [] }, /weight_map must be an object/],
      ['missing-shard', { weight_map: { ...index.weight_map, 'h.0.w': 'nope.bin' } }, /nope\.bin: cannot open/],
      ['not-json', '{"weight_map": {', /invalid index JSON/],
    ]
    for (const [name, body, re] of variants) {
      const dir = join(tmp, `shard-${name}`)
      mkdirSync(dir, { recursive: true })
      for (const s of shards) copyFileSync(join(src, s), join(dir, s))
      const idx = join(dir, 'pytorch_model.bin.index.json')
      writeFileSync(idx, typeof body === 'string' ? body : JSON.stringify(body))
      const e = await rejection(readSafetensorsHeader(idx))
      expect(e.code, `${name}: ${e.message}`).toBe('E_CHECKPOINT')
      expect(e.message, name).toMatch(re)
    }
    // The same tensor in two shards.
    const dir = join(tmp, 'shard-dup')
    mkdirSync(dir, { recursive: true })
    copyFileSync(join(src, shards[0]!), join(dir, 'a.bin'))
    copyFileSync(join(src, shards[0]!), join(dir, 'b.bin'))
    writeFileSync(join(dir, 'x.index.json'), JSON.stringify({ weight_map: { 'h.0.w': 'a.bin', 'h.0.b': 'b.bin' } }))
    const e = await rejection(readSafetensorsHeader(join(dir, 'x.index.json')))
    expect(e.message).toMatch(/shard b\.bin holds 'h\.0\.w', which the weight_map places in a\.bin|shard a\.bin holds 'h\.0\.b'/)
  })
})

describe('writeTorchCheckpoint', () => {
  function sample(): Record<string, Tensor> {
    return {
      'transformer.wte.weight': tensor(new Float32Array([0.5, -1.25, 3, 4e-8, 1e30, -0]), [3, 2]),
      f16: tensor(new Uint16Array([0x3c00, 0xc000, 0x7bff]), [3], 'float16'),
      bf16: tensor(new Uint16Array([0x3f80, 0xc040]), [2], 'bfloat16'),
      i64: tensor(new BigInt64Array([-(2n ** 40n), 7n, 2n ** 62n]), [3]),
      i32: tensor(new Int32Array([-5, 2 ** 31 - 1]), [2]),
      u8: tensor(new Uint8Array([0, 255, 7]), [3]),
      mask: tensor(new Uint8Array([1, 0, 0, 1]), [1, 1, 2, 2], 'bool'),
      scalar: tensor(new Float32Array([-1e4]), []),
      empty: tensor(new Float32Array(0), [0, 4]),
    }
  }

  it('round-trips through the reader: every dtype, scalars, empty tensors, an alias sharing a storage', async () => {
    const path = join(tmp, 'written.bin')
    const src = sample()
    await writeTorchCheckpoint(path, src, { 'lm_head.weight': 'transformer.wte.weight' })
    const buf = readFileSync(path)
    expect(buf.subarray(0, 4).toString('latin1')).toBe('PK\x03\x04')
    const h = await readSafetensorsHeader(path)
    expect(h.names).toEqual([...Object.keys(src), 'lm_head.weight'])
    const back = await loadSafetensors(path)
    for (const [n, t] of Object.entries(src)) {
      expect(back[n]!.shape, n).toEqual(t.shape)
      expect(back[n]!.dtype, n).toBe(t.dtype)
      expect(values(back[n]!), n).toEqual(values(t))
    }
    expect(values(back['lm_head.weight']!)).toEqual(values(src['transformer.wte.weight']!))
    // One storage record for the pair: the file holds the data once.
    expect(buf.includes(Buffer.from('archive/data/9'))).toBe(false)
    expect(buf.includes(Buffer.from('archive/data/8'))).toBe(true)
    // Data records start 64-byte aligned, as PyTorchStreamWriter writes them.
    const wte = Buffer.from(new Float32Array([0.5, -1.25, 3, 4e-8, 1e30, -0]).buffer)
    expect(buf.indexOf(wte) % 64).toBe(0)
  })

  it('refuses aliases of missing tensors and aliases that shadow a tensor', async () => {
    const path = join(tmp, 'alias-bad.bin')
    const t = { a: tensor(new Float32Array([1, 2]), [2]) }
    await expect(writeTorchCheckpoint(path, t, { b: 'nope' })).rejects.toMatchObject({ code: 'E_CONFIG' })
    await expect(writeTorchCheckpoint(path, t, { a: 'a' })).rejects.toMatchObject({ code: 'E_CONFIG' })
    expect(existsSync(path)).toBe(false)
  })

  it.skipIf(!hasTorch)('python torch.load(path, weights_only=True) reads it with the same values and a shared storage (skipped when python3 with torch is absent)', async () => {
    const path = join(tmp, 'for-python.bin')
    const src = sample()
    await writeTorchCheckpoint(path, src, { 'lm_head.weight': 'transformer.wte.weight' })
    const script = [
      'import json, sys, torch',
      'sd = torch.load(sys.argv[1], weights_only=True)',
      'out = {}',
      'for k, v in sd.items():',
      '    f = v.contiguous().reshape(-1)',
      "    vals = [float(x) for x in f.double().tolist()] if v.is_floating_point() else [int(x) for x in f.tolist()]",
      "    out[k] = {'dtype': str(v.dtype), 'shape': list(v.shape), 'values': vals}",
      "out['_shared'] = sd['lm_head.weight'].data_ptr() == sd['transformer.wte.weight'].data_ptr()",
      "out['_type'] = type(sd).__name__",
      'print(json.dumps(out))',
    ].join('\n')
    const r = spawnSync(python!, ['-c', script, path], { encoding: 'utf8' })
    expect(r.status, r.stderr).toBe(0)
    const py = JSON.parse(r.stdout) as Record<string, { dtype: string; shape: number[]; values: number[] }> & { _shared: boolean; _type: string }
    expect(py._type).toBe('OrderedDict')
    expect(py._shared).toBe(true)
    const torchDtype: Record<string, string> = { float32: 'torch.float32', float16: 'torch.float16', bfloat16: 'torch.bfloat16', int64: 'torch.int64', int32: 'torch.int32', uint8: 'torch.uint8', bool: 'torch.bool' }
    for (const [n, t] of Object.entries(src)) {
      expect(py[n]!.dtype, n).toBe(torchDtype[t.dtype])
      expect(py[n]!.shape, n).toEqual(t.shape)
      if (t.dtype === 'int64') expect(py[n]!.values.map(BigInt), n).toEqual(Array.from(t.data as BigInt64Array))
      else expect(py[n]!.values, n).toEqual(values(t))
    }
    expect(py['lm_head.weight']!.values).toEqual(values(src['transformer.wte.weight']!))
  })
})

describe('convertWeights', () => {
  it('writes any format as safetensors, streaming progress in order up to (total, total) before it resolves', async () => {
    for (const key of ['views.pt', 'nested.pt', 'sharded-torch', 'sharded-safetensors']) {
      const out = join(tmp, `${key}.safetensors`)
      const events: [number, number][] = []
      const r = await convertWeights(fixturePath(key), out, { metadata: { format: 'pt' }, onProgress: (a, b) => events.push([a, b]) })
      const size = statSync(out).size
      expect(r).toEqual({ tensors: expected[key]!.names.length, bytes: size })
      expect(events.length).toBeGreaterThan(1)
      expect(events.at(-1)).toEqual([size, size])
      for (let i = 1; i < events.length; i++) expect(events[i]![0]).toBeGreaterThanOrEqual(events[i - 1]![0])
      for (const [, total] of events) expect(total).toBe(size)
      // A real safetensors file now, with the source's metadata plus ours, and the same values.
      expect(readFileSync(out).readBigUInt64LE(0)).toBeLessThan(BigInt(size))
      const h = await readSafetensorsHeader(out)
      expect(h.names).toEqual(expected[key]!.names)
      expect(h.metadata).toEqual({ ...expected[key]!.metadata, format: 'pt' })
      const t = await loadSafetensors(out)
      for (const n of h.names) expect(values(t[n]!), `${key} ${n}`).toEqual(expected[key]!.tensors[n]!.values)
    }
  })

  it('works without a progress callback, and refuses a hostile input without writing', async () => {
    const out = join(tmp, 'plain.safetensors')
    await expect(convertWeights(join(FIX, 'dtypes.pt'), out)).resolves.toMatchObject({ tensors: 12 })
    const bad = join(tmp, 'bad.pt')
    writeFileSync(bad, hostileCases().find(([n]) => n === 'global-os-system')![1])
    const e = await rejection(convertWeights(bad, join(tmp, 'never.safetensors')))
    expect(e.code).toBe('E_CHECKPOINT')
    expect(existsSync(join(tmp, 'never.safetensors'))).toBe(false)
  })
})

describe('GPT-2 and captioner checkpoints in torch format load through the native model path', () => {
  it('a GPT-2 pytorch_model.bin (transformer. prefix, attn.bias / masked_bias buffers, tied lm_head) gives the same logits as the safetensors file', async () => {
    const st = join(goldenDir, 'gpt2', 'model.safetensors')
    const weights = await loadSafetensors(st)
    const { wire } = await readGpt2Config(join(goldenDir, 'gpt2'))
    const n = wire.nPositions
    const mask = new Uint8Array(n * n)
    for (let i = 0; i < n; i++) mask.fill(1, i * n, i * n + i + 1)
    const out: Record<string, Tensor> = {}
    for (const [k, t] of Object.entries(weights)) out[`transformer.${k}`] = t
    const aliases: Record<string, string> = { 'lm_head.weight': 'transformer.wte.weight' }
    for (let l = 0; l < wire.nLayer; l++) {
      if (l === 0) out['transformer.h.0.attn.bias'] = tensor(mask, [1, 1, n, n], 'bool')
      else aliases[`transformer.h.${l}.attn.bias`] = 'transformer.h.0.attn.bias'
      out[`transformer.h.${l}.attn.masked_bias`] = tensor(new Float32Array([-1e4]), [])
    }
    const dir = join(tmp, 'gpt2-bin')
    mkdirSync(dir, { recursive: true })
    const bin = join(dir, 'pytorch_model.bin')
    await writeTorchCheckpoint(bin, out, aliases)
    const a = new (native().AddonGpt2)({ ...wire, seed: 1 })
    const b = new (native().AddonGpt2)({ ...wire, seed: 2 })
    try {
      await a.load(st, 'cpu')
      await b.load(bin, 'cpu')
      const ids = tensor(new BigInt64Array([5n, 17n, 3n, 999n, 42n]), [1, 5], 'int64').toAsyncWire()
      const la = Tensor.fromWire(await a.logits(ids))
      const lb = Tensor.fromWire(await b.logits(ids))
      expect(lb.shape).toEqual([1, 5, wire.vocabSize])
      expect(Array.from(lb.data as Float32Array)).toEqual(Array.from(la.data as Float32Array))
    } finally {
      a.dispose()
      b.dispose()
    }
  })

  it("a ClipCap-style captioner checkpoint (gpt.transformer.* keys, gpt.lm_head.weight) loads like semicap's own gpt.* keys", async () => {
    const clipCfg = await readClipConfig(join(goldenDir, 'clip'))
    const { wire: g } = await readGpt2Config(join(goldenDir, 'gpt2'))
    const clip = new (native().AddonClip)({ ...clipCfg.wire })
    const mapper = { type: 'mlp' as const, clipDim: clipCfg.wire.projectionDim, nEmbd: g.nEmbd, prefixLength: 2, clipLength: 2, layers: 1, heads: 4, mlpRatio: 2 }
    const src = new (native().AddonCaptioner)(clip, { gpt2: g, mapper, normalizePrefix: false, seed: 3 })
    const dst = new (native().AddonCaptioner)(clip, { gpt2: g, mapper, normalizePrefix: false, seed: 4 })
    try {
      await src.loadGpt2(null, 'cpu')
      const ownPath = join(tmp, 'cap-own.safetensors')
      await src.save(ownPath, { format: 'pt' })
      const own = await loadSafetensors(ownPath)
      const out: Record<string, Tensor> = {}
      for (const [k, t] of Object.entries(own)) out[k.startsWith('gpt.') ? `gpt.transformer.${k.slice(4)}` : k] = t
      out['gpt.transformer.h.0.attn.masked_bias'] = tensor(new Float32Array([-1e4]), [])
      const pt = join(tmp, 'coco_weights.pt')
      await writeTorchCheckpoint(pt, out, { 'gpt.lm_head.weight': 'gpt.transformer.wte.weight' })
      await dst.load(pt, 'cpu')
      const againPath = join(tmp, 'cap-again.safetensors')
      await dst.save(againPath, { format: 'pt' })
      const again = await loadSafetensors(againPath)
      expect(Object.keys(again).sort()).toEqual(Object.keys(own).sort())
      for (const k of Object.keys(own)) expect(values(again[k]!), k).toEqual(values(own[k]!))
    } finally {
      src.dispose()
      dst.dispose()
      clip.dispose()
    }
  })
})

describe('writeSafetensors output is still read by the one loader', () => {
  it('a safetensors file that starts with 0x80 0x02 (header length 640) is not mistaken for a pickle', async () => {
    // A header of 0x280 bytes starts the file with the bytes a protocol-2 pickle starts with.
    const base = JSON.stringify({ '': { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }).length
    const name = 'x'.repeat(0x280 - base)
    const path = join(tmp, 'pickle-like.safetensors')
    await writeSafetensors(path, { [name]: tensor(new Float32Array([1, 2]), [2]) })
    const buf = readFileSync(path)
    expect([buf[0], buf[1]]).toEqual([0x80, 0x02])
    expect((await readSafetensorsHeader(path)).names).toEqual([name])
    expect(values((await loadSafetensors(path))[name]!)).toEqual([1, 2])
  })
})
