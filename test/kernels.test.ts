// The CPU inference kernels (native/cpu_kernels.h, native/packed.h) against BLAS, through every instruction-set
// path this CPU runs; the reduced-precision weights against float32 on the golden models; OpenBLAS's core choice.
// Paths and the BLAS core are fixed when the addon loads, so each configuration runs in a child process.
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { beforeAll, describe, expect, it } from 'vitest'
import { blasCoreFor, chooseBlasCore, cpuFlags } from '../lib/cpu.js'
import { loadSafetensors, type Tensor } from '../lib/index.js'
import { goldenDir, repoRoot } from './helpers/paths.js'

const run = promisify(execFile)

interface ChildOut {
  info: {
    cpu: { isa: string; features: string[] }
    cpuGemm: boolean
    blas: { library: string; core: string }
    blasCoreType: { coreType: string | null; source: string }
    choices: number
    choiceList: Array<{ type: string; rows: string; K: number; N: number; threads: number; choice: string; kernelUs: number | null; kernel1Us: number | null; blasUs: number | null }>
    threads: number
    pool: { helpers: number; jobs: number; alone: number; wakes: number; rests: number; spinUs: number }
  }
  weights: { dtype: string; isa: string; packedBytes: number }
  clipWeights: { dtype: string; isa: string; packedBytes: number }
  logits: number[]
  step1: number[]
  step3: number[]
  features: number[]
  features8: number[]
  goldLogits: number[]
  goldFeatures: number[]
  greedy: number[]
  batch16: { ids: number[]; scores: number[] }
  batch8: number[][]
  trainLosses: number[]
}

async function child(env: Record<string, string>, dtype = 'float32', train = false): Promise<ChildOut> {
  const clean = { ...process.env }
  for (const k of ['SEMICAP_CPU_GEMM', 'SEMICAP_CPU_ISA', 'SEMICAP_NO_CPU_GEMM', 'OPENBLAS_CORETYPE', 'SEMICAP_BLAS_CORE']) delete clean[k]
  const out = await run(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'kernels-child.ts'), dtype, ...(train ? ['train'] : [])], {
    cwd: repoRoot,
    env: { ...clean, SEMICAP_THREADS: '1', ...env },
    maxBuffer: 64 << 20,
  })
  return JSON.parse(out.stdout.trim().split('\n').pop()!) as ChildOut
}

/** max |a - b| / max |b| */
function relErr(a: number[], b: number[]): number {
  expect(a).toHaveLength(b.length)
  let worst = 0
  let scale = 0
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!))
    scale = Math.max(scale, Math.abs(b[i]!))
  }
  return worst / scale
}
function maxAbsDiff(a: number[], b: number[]): number {
  let worst = 0
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!))
  return worst
}

const ISAS = ['portable', 'avx2', 'avx512', 'avx512bf16'] as const
let blas: ChildOut
let ref: Record<string, Tensor>
const byIsa: Partial<Record<(typeof ISAS)[number], ChildOut>> = {}

describe('the kernels on their own (test/native: every ISA this CPU runs, every weight type, odd shapes)', () => {
  it('build and pass test/native/cpu_kernels_test (and the AVX2 loops with the AVX-512 tiling) and cpu_pool_test', async () => {
    await run('bash', [join(repoRoot, 'test', 'native', 'build.sh')], { cwd: repoRoot, maxBuffer: 16 << 20 })
    for (const bin of ['cpu_kernels_test', 'cpu_kernels_test_wide', 'cpu_pool_test']) {
      const out = await run(join(repoRoot, 'test', 'native', 'out', bin), [], { cwd: repoRoot, maxBuffer: 16 << 20 })
      const summary = /(\d+) checks, (\d+) failures/.exec(out.stdout)
      expect(summary, `${bin}: ${out.stdout.slice(-500)}`).not.toBeNull()
      expect(Number(summary![1])).toBeGreaterThan(1000)
      expect(Number(summary![2])).toBe(0)
    }
  }, 600_000)
})

describe('float32 kernels against BLAS, forced through each instruction set', () => {
  beforeAll(async () => {
    ref = await loadSafetensors(join(goldenDir, 'reference.safetensors'))
    blas = await child({ SEMICAP_CPU_GEMM: 'blas' }, 'float32', true)
    for (const isa of ISAS) byIsa[isa] = await child({ SEMICAP_CPU_GEMM: 'kernel', SEMICAP_CPU_ISA: isa }, 'float32', true)
  }, 180_000)

  it('BLAS-only run says so and still matches the golden reference', () => {
    expect(blas.info.cpuGemm).toBe(false)
    expect(relErr(blas.goldLogits, Array.from(ref['outputs.gpt2_logits']!.data as Float32Array))).toBeLessThan(5e-5)
  })

  for (const isa of ISAS) {
    it(`${isa}: logits (1, 3 and 60 rows, a 1000-column tail), CLIP vision (130 rows) equal BLAS to float32 rounding; golden greedy ids identical`, () => {
      const k = byIsa[isa]!
      const features = new Set(k.info.cpu.features)
      // The kernels of an instruction set the CPU lacks never run: the request is lowered.
      const has = (...f: string[]) => f.every((x) => features.has(x))
      const best = has('avx2', 'fma') ? (has('avx512f', 'avx512bw', 'avx512vl', 'avx512dq') ? (has('avx512_bf16') ? 3 : 2) : 1) : 0
      const runs = ISAS[Math.min(ISAS.indexOf(isa), best)]
      expect(k.info.cpu.isa).toBe(runs)
      for (const key of ['logits', 'step1', 'step3', 'features', 'goldLogits', 'goldFeatures'] as const) {
        const e = relErr(k[key], blas[key])
        expect(e, `${isa} ${key}`).toBeLessThan(1e-5)
      }
      // The kernels really ran: their rounding differs from BLAS somewhere.
      expect(maxAbsDiff(k.logits, blas.logits) + maxAbsDiff(k.features, blas.features)).toBeGreaterThan(0)
      expect(k.greedy).toEqual(Array.from(ref['outputs.greedy_ids']!.data as BigInt64Array, Number))
      expect(relErr(k.goldLogits, Array.from(ref['outputs.gpt2_logits']!.data as Float32Array))).toBeLessThan(5e-5)
    })
  }

  it('training: CE losses over 5 steps with the forward products through the kernels (autograd on) equal the BLAS run\'s, and fall', () => {
    expect(blas.trainLosses).toHaveLength(5)
    expect(blas.trainLosses[4]!).toBeLessThan(blas.trainLosses[0]! - 0.05)
    for (const isa of ISAS) expect(relErr(byIsa[isa]!.trainLosses, blas.trainLosses), isa).toBeLessThan(2e-5)
  })

  it('default (auto) chooses per shape by measurement, keeps the choices in a file, and a second process reuses them', async () => {
    const { tempDir } = await import('./helpers/paths.js')
    const { readFileSync } = await import('node:fs')
    const file = join(tempDir('semicap-choices-'), 'choices.tsv')
    const first = await child({ SEMICAP_KERNEL_CACHE: file })
    expect(first.info.cpuGemm).toBe(true)
    expect(first.info.choices).toBeGreaterThan(0)
    for (const key of ['logits', 'features', 'goldLogits'] as const) expect(relErr(first[key], blas[key]), key).toBeLessThan(1e-5)
    expect(first.greedy).toEqual(Array.from(ref['outputs.greedy_ids']!.data as BigInt64Array, Number))
    const lines = readFileSync(file, 'utf8').trim().split('\n')
    expect(lines.length).toBe(first.info.choices)
    // One thread: nothing to split, so every choice is settled at once (checks 3) and written once.
    expect(lines.every((l) => /^v3\t[^\t]*\tfloat32\t[0-9+-]+\t\d+\t\d+\t1\t(kernel1|blas)\t.*\t3$/.test(l))).toBe(true)
    // Same machine, same file: nothing is measured again and every product takes the same path (bitwise equal).
    const second = await child({ SEMICAP_KERNEL_CACHE: file })
    expect(readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(lines.length)
    expect(second.logits).toEqual(first.logits)
    expect(second.features).toEqual(first.features)
    expect(second.goldLogits).toEqual(first.goldLogits)
  }, 90_000)

  it('with 2 threads each product is split between them or left to one thread by measurement, recorded, and every output is bitwise the one-thread output', async () => {
    const { tempDir } = await import('./helpers/paths.js')
    const { readFileSync, writeFileSync } = await import('node:fs')
    const file = join(tempDir('semicap-split-'), 'choices.tsv')
    // Kernels forced (no BLAS side), so the only choice is the split; one thread makes none.
    const one = await child({ SEMICAP_CPU_GEMM: 'kernel', SEMICAP_KERNEL_CACHE: 'off' })
    const two = await child({ SEMICAP_CPU_GEMM: 'kernel', SEMICAP_KERNEL_CACHE: file, SEMICAP_THREADS: '2' })
    expect(one.info.choices).toBe(0)
    expect(two.info.threads).toBe(2)
    // One thread never hands work to a helper; two start one helper and share products, attention and picks with it.
    expect(one.info.pool).toMatchObject({ helpers: 0, jobs: 0 })
    expect(two.info.pool.helpers).toBe(1)
    expect(two.info.pool.jobs).toBeGreaterThan(0)
    const choices = two.info.choiceList
    expect(choices.length).toBeGreaterThan(0)
    for (const c of choices) {
      expect(c.type).toBe('float32')
      expect(c.threads).toBe(2)
      expect(['kernel', 'kernel1']).toContain(c.choice)
      expect(c.kernelUs).toBeGreaterThan(0)
      expect(c.kernel1Us).toBeGreaterThan(0)
      expect(c.blasUs).toBeNull()
      // The faster side wins, one thread on near ties (within 5%).
      expect(c.choice === 'kernel').toBe(c.kernelUs! * 1.05 < c.kernel1Us!)
    }
    const lines = readFileSync(file, 'utf8').trim().split('\n')
    expect(lines.every((l) => /^v3\t[^\t]*\tfloat32\t[0-9+-]+\t\d+\t\d+\t2\t(kernel|kernel1)\t[0-9.e+-]+\t[0-9.e+-]+\tnan\t[123]$/.test(l))).toBe(true)
    // A line per timing session of a shape (re-timed ones append), the last one what the process reports.
    const keyOf = (f: string[]) => f.slice(2, 7).join(' ')
    const last = new Map(lines.map((l) => l.split('\t')).map((f) => [keyOf(f), f]))
    expect(last.size).toBe(choices.length)
    for (const c of choices) {
      const f = last.get([c.type, c.rows, c.K, c.N, c.threads].join(' '))!
      expect(f[7]).toBe(c.choice)
      expect(Number(f[11])).toBe(c.checks)
    }
    for (const key of ['logits', 'step1', 'step3', 'features', 'goldLogits', 'goldFeatures', 'greedy', 'batch16', 'batch8', 'features8'] as const) expect(two[key], key).toEqual(one[key])

    // A file that says the split is hopeless everywhere (one timing session, the split 1000x slower than one thread):
    // a new process times the split again at each shape's first call, keeps the fastest time per side, and decides
    // from those; the outputs stay bitwise the one-thread outputs.
    const machine = lines[0]!.split('\t')[1]!
    const bad = join(tempDir('semicap-split-bad-'), 'choices.tsv')
    writeFileSync(bad, choices.map((c) => ['v3', machine, c.type, c.rows, c.K, c.N, 2, 'kernel1', c.kernel1Us! * 1000, c.kernel1Us!, 'nan', 1].join('\t') + '\n').join(''))
    const again = await child({ SEMICAP_CPU_GEMM: 'kernel', SEMICAP_KERNEL_CACHE: bad, SEMICAP_THREADS: '2' })
    const before = new Map(choices.map((c) => [[c.rows, c.K, c.N].join(' '), c]))
    let retimed = 0
    for (const c of again.info.choiceList) {
      const old = before.get([c.rows, c.K, c.N].join(' '))
      if (!old) continue
      expect(c.checks).toBeGreaterThanOrEqual(2)
      expect(c.checks).toBeLessThanOrEqual(3)
      expect(c.kernelUs!).toBeLessThan(old.kernel1Us! * 1000)  // the split's real time replaced the file's
      expect(c.kernel1Us!).toBeLessThanOrEqual(old.kernel1Us!)  // the fastest of the file's and the new runs
      expect(c.choice === 'kernel').toBe(c.kernelUs! * 1.05 < c.kernel1Us!)
      retimed++
    }
    expect(retimed).toBe(choices.length)
    expect(readFileSync(bad, 'utf8').trim().split('\n').length).toBeGreaterThanOrEqual(2 * choices.length)
    for (const key of ['logits', 'step1', 'step3', 'features', 'goldLogits', 'goldFeatures', 'greedy', 'batch16', 'batch8', 'features8'] as const) expect(again[key], key).toEqual(one[key])
  }, 120_000)
})

describe('bfloat16 and int8 weights on the golden models', () => {
  // Measured on the golden models (AMD EPYC, AVX2): bf16 logits ~2e-3 relative, int8 ~1e-2; bounds leave room.
  const bounds = { bfloat16: { logits: 1e-2, features: 1e-2 }, int8: { logits: 4e-2, features: 4e-2 } }
  for (const dtype of ['bfloat16', 'int8'] as const) {
    it(`${dtype}: loads as ${dtype}, packs a fraction of the float32 bytes, logits and features within tolerance, greedy ids vs float32 reported`, async () => {
      const f32 = await child({}, 'float32')
      const low = await child({}, dtype)
      if (f32.info.cpu.isa === 'portable') {
        // No fast kernels for reduced types: float32 is used and the load says so.
        expect(low.weights.dtype).toBe('float32')
        return
      }
      expect(low.weights.dtype).toBe(dtype)
      expect(low.clipWeights.dtype).toBe(dtype)
      const ratio = low.weights.packedBytes / f32.weights.packedBytes
      expect(ratio).toBeLessThan(dtype === 'int8' ? 0.3 : 0.55)
      const eL = relErr(low.goldLogits, f32.goldLogits)
      const eF = relErr(low.goldFeatures, f32.goldFeatures)
      console.log(`${dtype}: golden logits rel err ${eL.toExponential(2)}, CLIP features ${eF.toExponential(2)}, packed bytes ${ratio.toFixed(3)}x float32`)
      expect(eL).toBeLessThan(bounds[dtype].logits)
      expect(eF).toBeLessThan(bounds[dtype].features)
      expect(eL).toBeGreaterThan(0) // the reduced weights were really used
      const same = low.greedy.filter((id, i) => id === f32.greedy[i]).length
      console.log(`${dtype}: golden greedy ids equal to float32's: ${same}/${f32.greedy.length}`)
      if (f32.info.cpu.isa === 'avx512bf16') {
        // There VDPBF16PS (x rounded to bf16 as well) multiplies bfloat16 weights and CLIP's int8 ones: within the
        // same bounds as the widening avx512 loops over the same weights, and really a different path (its rounding
        // differs). GPT-2's int8 products stay widened to float32, bit for bit what the avx512 loops give.
        const widen = await child({ SEMICAP_CPU_ISA: 'avx512' }, dtype)
        expect(widen.info.cpu.isa).toBe('avx512')
        const wL = relErr(widen.goldLogits, f32.goldLogits)
        const wF = relErr(widen.goldFeatures, f32.goldFeatures)
        console.log(`${dtype} avx512 (widened to float32): logits ${wL.toExponential(2)}, features ${wF.toExponential(2)}; avx512bf16 (VDPBF16PS): ${eL.toExponential(2)}, ${eF.toExponential(2)}`)
        expect(wF).toBeLessThan(bounds[dtype].features)
        expect(maxAbsDiff(widen.goldFeatures, low.goldFeatures)).toBeGreaterThan(0)
        if (dtype === 'bfloat16') {
          expect(wL).toBeLessThan(bounds[dtype].logits)
          expect(maxAbsDiff(widen.goldLogits, low.goldLogits)).toBeGreaterThan(0)
          expect(widen.weights.packedBytes).toBe(low.weights.packedBytes)
        } else {
          expect(widen.goldLogits).toEqual(low.goldLogits)
        }
      }
    }, 120_000)
  }

  it('a bad dtype is a TypeError; a reduced dtype on CUDA is E_CONFIG', async () => {
    const { resolveDtype } = await import('../lib/device.js')
    expect(() => resolveDtype('fp8', 'cpu')).toThrow(TypeError)
    expect(() => resolveDtype('int8', 'cuda')).toThrow(expect.objectContaining({ code: 'E_CONFIG' }))
    expect(resolveDtype(undefined, 'cuda')).toBe('float32')
  })
})

describe('OpenBLAS core type', () => {
  const intelSpr = 'vendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 amx_tile\n'
  const amdGenoa = 'vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl\n'
  const intelHaswell = 'vendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 avx avx2 fma\n'
  const old = 'vendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 sse4_2 avx\n'

  it('maps CPU flags to the core OpenBLAS picks on CPUs it knows', () => {
    const core = (t: string) => {
      const { vendor, flags } = cpuFlags(t)
      return blasCoreFor(vendor, flags)
    }
    expect(core(intelSpr)).toBe('SkylakeX')
    expect(core(amdGenoa)).toBe('Zen')
    expect(core(intelHaswell)).toBe('Haswell')
    expect(core(old)).toBeNull()
  })

  it('sets OPENBLAS_CORETYPE only when the user has not', () => {
    if (process.arch !== 'x64') return
    const env: NodeJS.ProcessEnv = {}
    expect(chooseBlasCore(env, intelSpr)).toEqual({ coreType: 'SkylakeX', source: 'semicap' })
    expect(env.OPENBLAS_CORETYPE).toBe('SkylakeX')
    const user: NodeJS.ProcessEnv = { OPENBLAS_CORETYPE: 'Haswell' }
    expect(chooseBlasCore(user, intelSpr)).toEqual({ coreType: 'Haswell', source: 'user' })
    expect(user.OPENBLAS_CORETYPE).toBe('Haswell')
    const off: NodeJS.ProcessEnv = { SEMICAP_BLAS_CORE: 'off' }
    expect(chooseBlasCore(off, intelSpr).source).toBe('none')
    expect(off.OPENBLAS_CORETYPE).toBeUndefined()
  })

  it('in a real process: the library sets the core before BLAS loads; a user setting is kept', async () => {
    const mine = await child({})
    const user = await child({ OPENBLAS_CORETYPE: 'Haswell' })
    expect(user.info.blasCoreType).toEqual({ coreType: 'Haswell', source: 'user' })
    if (!mine.info.blas.library.startsWith('OpenBLAS')) return // another BLAS: nothing to choose
    expect(user.info.blas.core).toBe('Haswell')
    const { vendor, flags } = cpuFlags()
    const expected = process.arch === 'x64' ? blasCoreFor(vendor, flags) : null
    if (expected) {
      expect(mine.info.blasCoreType).toEqual({ coreType: expected, source: 'semicap' })
      expect(mine.info.blas.core).toBe(expected)
    }
  }, 60_000)
})

describe('weights laid out once, without doubling resident memory', () => {
  it('loading a GPT-2 folder grows RSS by about the packed bytes, not by file + packed', async () => {
    if (process.platform !== 'linux') return
    const { Gpt2 } = await import('../lib/index.js')
    const { tempDir } = await import('./helpers/paths.js')
    const { statSync } = await import('node:fs')
    const dir = tempDir('semicap-rss-')
    const g = await Gpt2.create({ vocab_size: 16000, n_positions: 64, n_embd: 512, n_layer: 4, n_head: 8 }, { device: 'cpu', seed: 3 })
    await g.save(dir)
    g.dispose()
    const fileBytes = statSync(join(dir, 'model.safetensors')).size
    const clean = { ...process.env }
    for (const k of ['SEMICAP_CPU_GEMM', 'SEMICAP_CPU_ISA', 'SEMICAP_NO_CPU_GEMM', 'SEMICAP_NO_MMAP']) delete clean[k]
    for (const dtype of ['float32', 'int8'] as const) {
      const out = await run(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'rss-child.ts'), dir, dtype], { cwd: repoRoot, env: { ...clean, SEMICAP_THREADS: '1', SEMICAP_CPU_GEMM: 'kernel' } })
      const r = JSON.parse(out.stdout.trim().split('\n').pop()!) as { before: Record<string, number>; loaded: Record<string, number>; used: Record<string, number>; cachedAfterLoad: number; packedBytes: number; dtype: string }
      // The parameters' placeholder storage, replaced by the file mapping, went back to the system, not into the CPU
      // cache (where later tensors would have touched it page by page: RSS creeping up while serving).
      expect(r.cachedAfterLoad).toBeLessThan(0.05 * fileBytes)
      // The load's peak stays near where it ends: each weight's original is read by its packing, largest first, and
      // paged out after it (read in all at once first, they had all been resident beside the growing packed copies:
      // float32 peak +32.6 MB over the end). int8's end is a quarter of the file, so the largest original (wte,
      // 32.8 MB), resident while its copy is made, stays above it.
      const wte = 16000 * 512 * 4
      expect(r.loaded.peak - r.loaded.total).toBeLessThan((dtype === 'float32' ? 0 : wte) + 0.1 * fileBytes)
      const grew = r.used.total - r.before.total
      const mb = (x: number) => (x / 2 ** 20).toFixed(1)
      console.log(`${dtype}: file ${mb(fileBytes)} MB, packed ${mb(r.packedBytes)} MB, RSS +${mb(r.loaded.total - r.before.total)} MB after load (peak +${mb(r.loaded.peak - r.before.total)}), +${mb(grew)} MB after decoding (file-backed +${mb(r.used.file - r.before.file)} MB); CPU cache after load ${mb(r.cachedAfterLoad)} MB`)
      if (r.dtype !== dtype) continue // a CPU without AVX2 keeps float32
      // Without the page-out, float32 would hold file + packed (2x); int8 file + a quarter.
      expect(grew).toBeLessThan(r.packedBytes + 0.25 * fileBytes)
      expect(r.packedBytes).toBeGreaterThan((dtype === 'int8' ? 0.2 : 0.9) * fileBytes)
    }
  }, 120_000)

  it("Clip.load prepare: one tower laid out at load, the other at its first call, with the same results", async () => {
    const { Clip, Tensor, int64 } = await import('../lib/index.js')
    const dir = join(goldenDir, 'clip')
    const clips = Object.fromEntries(await Promise.all((['all', 'vision', 'text'] as const).map(async (p) => [p, await Clip.load(dir, { device: 'cpu', prepare: p })])))
    try {
      const [all, vision, text] = [clips.all!, clips.vision!, clips.text!]
      expect(vision.weights.packedBytes).toBeGreaterThan(0)
      expect(text.weights.packedBytes).toBeGreaterThan(0)
      expect(vision.weights.packedBytes + text.weights.packedBytes).toBe(all.weights.packedBytes)
      const S = all.imageSize
      const px = new Tensor('float32', [2, 3, S, S], Float32Array.from({ length: 2 * 3 * S * S }, (_, i) => Math.sin(i * 0.37)))
      const V = all.config.wire.vocabSize
      const ids = int64([[V - 2, 5, 6, 7, V - 1], [V - 2, 9, V - 1, V - 1, V - 1]])
      const bits = (t: InstanceType<typeof Tensor>) => Array.from(new Uint32Array((t.data as Float32Array).slice().buffer))
      for (const c of [vision, text]) {
        expect(bits(await c.textFeatures(ids))).toEqual(bits(await all.textFeatures(ids)))
        expect(bits(await c.imageFeatures(px))).toEqual(bits(await all.imageFeatures(px)))
      }
      await expect(Clip.load(dir, { device: 'cpu', prepare: 'both' as never })).rejects.toMatchObject({ code: 'E_CONFIG' })
    } finally {
      for (const c of Object.values(clips)) c!.dispose()
    }
  })

  it("a tower left for later stays out of memory until its first call (a captioner's CLIP text tower)", async () => {
    if (process.platform !== 'linux') return
    const { Clip } = await import('../lib/index.js')
    const { tempDir } = await import('./helpers/paths.js')
    type Rss = import('./helpers/rss.js').Rss
    const dir = tempDir('semicap-clip-rss-')
    const text_config = { hidden_size: 512, intermediate_size: 2048, num_attention_heads: 8, num_hidden_layers: 4, vocab_size: 20000, max_position_embeddings: 16, eos_token_id: 19999, bos_token_id: 19998 }
    const vision_config = { hidden_size: 512, intermediate_size: 2048, num_attention_heads: 8, num_hidden_layers: 4, image_size: 64, patch_size: 16 }
    const c = await Clip.create({ projection_dim: 256, text_config, vision_config }, { device: 'cpu', seed: 5 })
    await c.save(dir)
    c.dispose()
    const clean = { ...process.env }
    for (const k of ['SEMICAP_CPU_GEMM', 'SEMICAP_CPU_ISA', 'SEMICAP_NO_CPU_GEMM', 'SEMICAP_NO_MMAP']) delete clean[k]
    const measure = async (prepare: string) => {
      const out = await run(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'clip-rss-child.ts'), dir, prepare], { cwd: repoRoot, env: { ...clean, SEMICAP_THREADS: '1', SEMICAP_CPU_GEMM: 'kernel' } })
      return JSON.parse(out.stdout.trim().split('\n').pop()!) as { before: Rss; loaded: Rss; texted: Rss; packedBytes: number }
    }
    const all = await measure('all')
    const vision = await measure('vision')
    const tokenTable = 20000 * 512 * 4
    const textPacked = all.packedBytes - vision.packedBytes
    const mb = (x: number) => (x / 2 ** 20).toFixed(1)
    const grew = (r: { before: Rss; loaded: Rss }) => r.loaded.total - r.before.total
    console.log(`CLIP load RSS: prepare 'all' +${mb(grew(all))} MB, 'vision' +${mb(grew(vision))} MB (text tower packed ${mb(textPacked)} MB, token table ${mb(tokenTable)} MB); after a text call: +${mb(all.texted.total - all.before.total)} / +${mb(vision.texted.total - vision.before.total)} MB`)
    expect(textPacked).toBeGreaterThan(0.9 * 4 * (4 * 512 * 512 + 2 * 512 * 2048) * 4)
    // Left for later: neither the text tower's packed copy nor its token table is resident after the load.
    expect(grew(all) - grew(vision)).toBeGreaterThan(0.8 * (textPacked + tokenTable))
    // The first text call lays the tower out (its packed copy appears; the float32 originals go back out).
    expect(vision.texted.total - vision.loaded.total).toBeGreaterThan(0.8 * textPacked)
    expect(vision.texted.total - vision.before.total).toBeLessThan(all.texted.total - all.before.total + 0.1 * textPacked)
  }, 120_000)
})
