// Data-parallel training over c10d Gloo on loopback: two ranks with batch 2 end with the parameters of one
// process with batch 4; a rank that dies makes the other fail with a clear error instead of hanging.
import { spawn } from 'node:child_process'
import { cpSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import sharp from 'sharp'
import { beforeAll, describe, expect, it } from 'vitest'
import { loadSafetensors, type Tensor } from '../lib/index.js'
import { makeTinyModels } from './helpers/models.js'
import { repoRoot, tempDir } from './helpers/paths.js'

let base: Record<string, unknown>
let work: string

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port
      s.close(() => res(p))
    })
  })
}

type RankOut = { losses?: number[]; metrics?: (number | null)[][]; error?: { code: string; message: string } }
function rank(cfg: object): Promise<{ code: number | null; out: RankOut; ms: number }> {
  const t0 = Date.now()
  return new Promise((res) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'test/helpers/dist-worker.ts'), JSON.stringify(cfg)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('exit', (code) => {
      const line = stdout.trim().split('\n').at(-1) ?? '{}'
      let out = {}
      try {
        out = JSON.parse(line)
      } catch {
        out = { error: { code: 'PARSE', message: stdout + stderr } }
      }
      res({ code, out, ms: Date.now() - t0 })
    })
  })
}

beforeAll(async () => {
  const tiny = await makeTinyModels()
  work = tempDir('semicap-dist-')
  const clipDir = join(work, 'clip')
  cpSync(tiny.clipDir, clipDir, { recursive: true })
  // CLIP rewards need CLIP to read text: the tiny CLIP uses the GPT-2 tokenizer (as in cli-train.test.ts).
  for (const f of ['vocab.json', 'merges.txt']) cpSync(join(tiny.gpt2Dir, f), join(clipDir, f))
  const clipConfig = JSON.parse(readFileSync(join(clipDir, 'config.json'), 'utf8'))
  writeFileSync(join(clipDir, 'config.json'), JSON.stringify({ ...clipConfig, semicap: { tokenizer: 'gpt2' } }))
  const examples = []
  for (let i = 0; i < 8; i++) {
    const raw = Buffer.alloc(32 * 32 * 3, 40 + i * 20)
    for (let p = 0; p < 32 * 8; p++) raw.set([(i * 70) % 256, (i * 130) % 256, (i * 30) % 256], (p + i * 32) * 3)
    const file = join(work, `img${i}.png`)
    await sharp(raw, { raw: { width: 32, height: 32, channels: 3 } }).png().toFile(file)
    examples.push({ id: `img${i}`, image: file, captions: [`a picture number ${i} with ${'many '.repeat(i % 3)}things.`] })
  }
  base = { clipDir, gpt2Dir: tiny.gpt2Dir, examples, steps: 3, cache: join(work, 'cache') }
})

/**
 * Single process (a) against rank 0 (b) and rank 1 (c): the largest and summed |a - b|, the largest |b - c|, and how
 * far training moved GPT-2's weights from `init` (the largest |a - init|).
 */
function weightDiffs(a: Record<string, Tensor>, b: Record<string, Tensor>, c: Record<string, Tensor>, init: Record<string, Tensor>) {
  let maxDiff = 0, sumDiff = 0, n = 0, maxRankDiff = 0, maxMove = 0
  for (const k of Object.keys(a)) {
    const x = a[k]!.data as Float32Array, y = b[k]!.data as Float32Array, z = c[k]!.data as Float32Array
    const x0 = k.startsWith('gpt.') ? (init[k.slice(4)]?.data as Float32Array | undefined) : undefined
    for (let i = 0; i < x.length; i++) {
      const d = Math.abs(x[i]! - y[i]!)
      maxDiff = Math.max(maxDiff, d)
      sumDiff += d
      n++
      maxRankDiff = Math.max(maxRankDiff, Math.abs(y[i]! - z[i]!))
      if (x0) maxMove = Math.max(maxMove, Math.abs(x[i]! - x0[i]!))
    }
  }
  return { maxDiff, sumDiff, n, maxRankDiff, maxMove }
}

describe('data-parallel training (Gloo over loopback)', () => {
  it('2 ranks x batch 2 give the parameters of 1 process x batch 4', async () => {
    const port = await freePort()
    const single = await rank({ ...base, batchSize: 4, out: join(work, 'single') })
    expect(single.code).toBe(0)
    const dist = { worldSize: 2, masterPort: port, timeoutMs: 20_000 }
    const [r0, r1] = await Promise.all([
      rank({ ...base, batchSize: 2, out: join(work, 'rank0'), distributed: { ...dist, rank: 0 } }),
      rank({ ...base, batchSize: 2, out: join(work, 'rank1'), distributed: { ...dist, rank: 1 } }),
    ])
    expect([r0.code, r1.code], JSON.stringify([r0.out, r1.out])).toEqual([0, 0])
    // Reported losses are global (reduced over ranks) and match the single process's.
    r0.out.losses!.forEach((l, i) => expect(l).toBeCloseTo(single.out.losses![i], 4))
    expect(r1.out.losses).toEqual(r0.out.losses)
    const a = await loadSafetensors(join(work, 'single', 'model.safetensors'))
    const b = await loadSafetensors(join(work, 'rank0', 'model.safetensors'))
    const c = await loadSafetensors(join(work, 'rank1', 'model.safetensors'))
    // AdamW divides by sqrt(v): for near-zero gradients, float summation order alone moves an update by up to
    // lr, so parameters are compared against how far training moved them, not against an absolute 1e-5.
    const init = await loadSafetensors(join(base.gpt2Dir as string, 'model.safetensors'))
    const { maxDiff, sumDiff, n, maxRankDiff, maxMove } = weightDiffs(a, b, c, init)
    console.log(`max |single - rank0| = ${maxDiff.toExponential(2)} (mean ${(sumDiff / n).toExponential(2)}), training moved weights by up to ${maxMove.toExponential(2)}; max |rank0 - rank1| = ${maxRankDiff}`)
    expect(maxRankDiff).toBe(0)
    expect(maxMove).toBeGreaterThan(1e-3)
    // AdamW divides by sqrt(v): on a parameter whose gradient is ~0, a rounding-level difference between the
    // all-reduced and the single-process gradient (summation order) still moves it by up to ~lr per step, so the
    // largest single difference is bounded loosely and the mean tightly (a KL or loss weighted by world size, or
    // samples that depend on it, move the mean by orders of magnitude more).
    expect(maxDiff).toBeLessThan(0.1 * maxMove)
    expect(sumDiff / n).toBeLessThan(1e-6)
  })

  /**
   * 2 ranks x batch 2 against 1 process x batch 4 with `options`: every reported metric (reduced over ranks) matches,
   * both ranks agree exactly, and parameters differ by far less than training moved them.
   */
  async function expectSameAsSingle(name: string, options: Record<string, unknown>): Promise<RankOut> {
    const port = await freePort()
    const single = await rank({ ...base, options, batchSize: 4, out: join(work, `${name}-single`) })
    expect(single.code, JSON.stringify(single.out)).toBe(0)
    const dist = { worldSize: 2, masterPort: port, timeoutMs: 20_000 }
    const [r0, r1] = await Promise.all([
      rank({ ...base, options, batchSize: 2, out: join(work, `${name}-rank0`), distributed: { ...dist, rank: 0 } }),
      rank({ ...base, options, batchSize: 2, out: join(work, `${name}-rank1`), distributed: { ...dist, rank: 1 } }),
    ])
    expect([r0.code, r1.code], JSON.stringify([r0.out, r1.out])).toEqual([0, 0])
    expect(r1.out.metrics).toEqual(r0.out.metrics)
    single.out.metrics!.forEach((row, i) =>
      row.forEach((v, j) => {
        const d = r0.out.metrics![i]![j]
        if (v === null || v === undefined) expect(d ?? null, `${name} step ${i + 1} metric ${j}`).toBeNull()
        else expect(d!, `${name} step ${i + 1} metric ${j}`).toBeCloseTo(v, 4)
      }),
    )
    const a = await loadSafetensors(join(work, `${name}-single`, 'model.safetensors'))
    const b = await loadSafetensors(join(work, `${name}-rank0`, 'model.safetensors'))
    const c = await loadSafetensors(join(work, `${name}-rank1`, 'model.safetensors'))
    const init = await loadSafetensors(join(base.gpt2Dir as string, 'model.safetensors'))
    const { maxDiff, sumDiff, n, maxRankDiff, maxMove } = weightDiffs(a, b, c, init)
    console.log(`${name}: max |single - rank0| = ${maxDiff.toExponential(2)} (mean ${(sumDiff / n).toExponential(2)}), moved up to ${maxMove.toExponential(2)}`)
    expect(maxRankDiff).toBe(0)
    expect(maxMove).toBeGreaterThan(1e-4)
    // AdamW divides by sqrt(v): on a parameter whose gradient is ~0, a rounding-level difference between the
    // all-reduced and the single-process gradient (summation order) still moves it by up to ~lr per step, so the
    // largest single difference is bounded loosely and the mean tightly (a KL or loss weighted by world size, or
    // samples that depend on it, move the mean by orders of magnitude more).
    expect(maxDiff).toBeLessThan(0.1 * maxMove)
    expect(sumDiff / n).toBeLessThan(1e-6)
    return single.out
  }

  it('SCST (refText, CE on the same images, repetition penalty) and CLIP-S + KL + CE mixing: 2 ranks equal 1 process', async () => {
    await expectSameAsSingle('scst', { objective: 'scst', samples: 2, maxTokens: 8, reward: { type: 'refText' }, ceWeight: 0.5, repetitionPenalty: 0.2, lr: 3e-3 })
    const out = await expectSameAsSingle('clips', { stage: 'clip-reward', samples: 2, maxTokens: 8, reward: { type: 'clipS' }, klCoef: 0.5, ceMix: { weight: 0.3 }, lr: 3e-3 })
    // KL is a global per-token mean (not world size x klCoef), live after the first step.
    expect(out.metrics![2]![4]!).toBeGreaterThan(0)
  })

  it('a rank that dies makes the other fail with E_DISTRIBUTED within the timeout', async () => {
    const port = await freePort()
    const dist = { worldSize: 2, masterPort: port, timeoutMs: 4000 }
    const [r0, r1] = await Promise.all([
      rank({ ...base, steps: 50, batchSize: 2, out: join(work, 'd0'), distributed: { ...dist, rank: 0 } }),
      rank({ ...base, steps: 50, batchSize: 2, out: join(work, 'd1'), distributed: { ...dist, rank: 1 }, dieAfterStep: 1 }),
    ])
    expect(r1.code).toBe(3)
    expect(r0.code).toBe(1)
    expect(r0.out.error?.code).toBe('E_DISTRIBUTED')
    expect(r0.out.error?.message).toMatch(/rank 0/)
    expect(r0.ms).toBeLessThan(30_000)
  })

  it('a missing peer fails the rendezvous with E_DISTRIBUTED', async () => {
    const port = await freePort()
    const r0 = await rank({ ...base, batchSize: 2, out: join(work, 'lonely'), distributed: { rank: 0, worldSize: 2, masterPort: port, timeoutMs: 1500 } })
    expect(r0.code).toBe(1)
    expect(r0.out.error?.code).toBe('E_DISTRIBUTED')
  })
})
