// `semicap train` and `semicap eval` as separate processes (node --import tsx lib/cli.ts) on tiny models and a JSONL
// dataset of four PNGs: the log, the saved captioner, the JSON and HTML results, bad flags, Ctrl-C and resume.
import { execFile, spawn } from 'node:child_process'
import { cpSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ProgressBar, formatDuration } from '../lib/progress.js'
import { Captioner } from '../lib/index.js'
import { makeTinyModels } from './helpers/models.js'
import { repoRoot, tempDir } from './helpers/paths.js'

const exec = promisify(execFile)
const CLI = join(repoRoot, 'lib', 'cli.ts')

interface Run {
  code: number
  stdout: string
  stderr: string
}

async function semicap(args: string[]): Promise<Run> {
  try {
    const r = await exec(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: repoRoot, env: { ...process.env, SEMICAP_DEBUG: '' }, maxBuffer: 16 << 20 })
    return { code: 0, stdout: r.stdout, stderr: r.stderr }
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string }
    if (typeof e.code !== 'number') throw err
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}

const COLOURS: [string, [number, number, number]][] = [
  ['red', [230, 20, 20]],
  ['green', [20, 200, 40]],
  ['blue', [20, 40, 230]],
  ['yellow', [240, 230, 30]],
]

let tmp: string
let clipDir: string
let gpt2Dir: string
let data: string
let common: string[]

beforeAll(async () => {
  tmp = tempDir('semicap-cli-train-')
  const tiny = await makeTinyModels()
  // CLIP-S in eval needs CLIP to read text: the tiny CLIP uses the GPT-2 tokenizer (as in training.test.ts).
  clipDir = join(tmp, 'clip')
  cpSync(tiny.clipDir, clipDir, { recursive: true })
  for (const f of ['vocab.json', 'merges.txt']) cpSync(join(tiny.gpt2Dir, f), join(clipDir, f))
  const cfg = JSON.parse(readFileSync(join(clipDir, 'config.json'), 'utf8'))
  writeFileSync(join(clipDir, 'config.json'), JSON.stringify({ ...cfg, semicap: { tokenizer: 'gpt2' } }))
  gpt2Dir = tiny.gpt2Dir
  const lines: string[] = []
  for (const [i, [name, rgb]] of COLOURS.entries()) {
    const raw = Buffer.alloc(40 * 40 * 3, 128)
    for (let y = 5 + i * 3; y < 25 + i * 3; y++) for (let x = 8; x < 30; x++) raw.set(rgb, (y * 40 + x) * 3)
    await sharp(raw, { raw: { width: 40, height: 40, channels: 3 } }).png().toFile(join(tmp, `${name}.png`))
    // One caption with markup, which the report must escape.
    lines.push(JSON.stringify({ id: name, image: `${name}.png`, captions: [`a ${name} square.`, i === 0 ? 'a <b>red</b> & "square"' : `the ${name} one.`] }))
  }
  data = join(tmp, 'data.jsonl')
  writeFileSync(data, lines.join('\n') + '\n')
  common = ['--feature-cache', join(tmp, 'cache'), '--device', 'cpu']
})

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true })
})

const readLog = (path: string) =>
  readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as { step: number; totalSteps: number; loss: number; reward?: number; stage: string })

describe('semicap train', () => {
  it('trains 5 steps, logs one JSON line per step, saves a loadable captioner', async () => {
    const out = join(tmp, 'out')
    const log = join(tmp, 'log.jsonl')
    const r = await semicap(['train', '--clip', clipDir, '--gpt2', gpt2Dir, '--mapper', 'mlp', '--prefix-length', '4', '--labeled', data, '--steps', '5', '--batch-size', '2', '--lr', '1e-3', '--out', out, '--log', log, '--seed', '1', ...common])
    expect(r.stderr).not.toMatch(/semicap: (?!training)/)
    expect(r.code).toBe(0)
    const entries = readLog(log)
    expect(entries.map((e) => e.step)).toEqual([1, 2, 3, 4, 5])
    for (const e of entries) {
      expect(Number.isFinite(e.loss)).toBe(true)
      expect(e.totalSteps).toBe(5)
      expect(e.stage).toBe('supervised')
    }
    expect(r.stdout).toMatch(/trained 5 steps/)
    // Not a TTY: plain progress lines, the last one complete.
    expect(r.stderr).toMatch(/train .*5\/5/)
    const cap = await Captioner.load(out, { device: 'cpu' })
    try {
      expect(cap.mapper.prefixLength).toBe(4)
      const [c] = await cap.caption([join(tmp, 'red.png')], { maxTokens: 5 })
      expect(typeof c!.text).toBe('string')
    } finally {
      cap.dispose()
    }
  })

  it('--data with --labeled-count splits one dataset; the clip-reward stage logs rewards; the default log is <out>/train-log.jsonl', async () => {
    const out = join(tmp, 'out-reward')
    const r = await semicap(['train', '--model', join(tmp, 'out'), '--stage', 'clip-reward', '--data', data, '--labeled-count', '1', '--steps', '2', '--batch-size', '2', '--samples', '2', '--max-tokens', '6', '--kl', '0.1', '--out', out, '--no-progress', ...common])
    expect(r.stderr).toMatch(/split .*data\.jsonl: 1 labeled, 3 unlabeled/)
    expect(r.stderr).toMatch(/training clip-reward on cpu with 3 unlabeled images/)
    expect(r.code).toBe(0)
    const entries = readLog(join(out, 'train-log.jsonl'))
    expect(entries.map((e) => e.step)).toEqual([1, 2])
    for (const e of entries) expect(Number.isFinite(e.reward)).toBe(true)
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true)
  })

  it('bad flags exit 1 with a semicap: message', async () => {
    const out = join(tmp, 'never')
    const base = ['train', '--clip', clipDir, '--gpt2', gpt2Dir, '--labeled', data, '--out', out, ...common]
    const cases: [string[], RegExp][] = [
      [[...base, '--steps', '0'], /^semicap: .*--steps.*'0'/m],
      [[...base, '--steps', 'abc'], /^semicap: .*--steps/m],
      [[...base], /^semicap: give exactly one of --steps and --epochs/m],
      [[...base, '--steps', '2', '--epochs', '1'], /^semicap: give exactly one of --steps and --epochs/m],
      [[...base, '--steps', '2', '--model', join(tmp, 'out')], /^semicap: give --model or --clip/m],
      [[...base, '--steps', '2', '--labeled-fraction', '1.5'], /^semicap: .*--labeled-fraction/m],
      [[...base, '--steps', '2', '--stage', 'nope'], /^semicap: .*--stage/m],
      [[...base, '--steps', '2', '--resume'], /^semicap: --resume .*--checkpoint-dir/m],
      // Data-parallel on CUDA needs a GPU per process: refused before any process starts (no GPU here at all).
      [[...base, '--steps', '2', '--nproc', '2', '--device', 'cuda'], /^semicap: .*(CUDA|GPU)/m],
      [['train', '--clip', clipDir, '--gpt2', gpt2Dir, '--labeled', data, '--steps', '2', ...common], /^semicap: .*--out/m],
      [['train', '--clip', clipDir, '--gpt2', gpt2Dir, '--stage', 'clip-reward', '--labeled', data, '--steps', '2', '--out', out, ...common], /^semicap: the clip-reward stage needs unlabeled images/m],
    ]
    const runs = await Promise.all(cases.map(([args]) => semicap(args)))
    runs.forEach((r, i) => {
      expect(r.code, cases[i]![0].join(' ')).toBe(1)
      expect(r.stderr).toMatch(cases[i]![1])
    })
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
  })

  it('Ctrl-C stops cleanly (exit 130, nothing saved, the checkpoint stays); --resume continues the log without repeats', async () => {
    const out = join(tmp, 'out-int')
    const ck = join(tmp, 'ck')
    const log = join(out, 'train-log.jsonl')
    const args = ['--import', 'tsx', CLI, 'train', '--clip', clipDir, '--gpt2', gpt2Dir, '--prefix-length', '4', '--labeled', data, '--steps', '1000000', '--batch-size', '2', '--lr', '1e-4', '--checkpoint-dir', ck, '--checkpoint-every', '20', '--out', out, ...common]
    const child = spawn(process.execPath, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const code = await new Promise<number | null>((res, rej) => {
      const timer = setInterval(() => {
        // After the first checkpoint, interrupt.
        if (existsSync(join(ck, 'latest')) && existsSync(log) && readLog(log).length > 25) {
          clearInterval(timer)
          child.kill('SIGINT')
        }
      }, 50)
      child.on('error', rej)
      child.on('exit', (c) => (clearInterval(timer), res(c)))
    })
    expect(stderr).toMatch(/semicap: training interrupted after step \d+; nothing was saved/)
    expect(code).toBe(130)
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
    const latest = readFileSync(join(ck, 'latest'), 'utf8').trim()
    const ckStep = Number(latest.replace('step-', ''))
    expect(ckStep % 20).toBe(0)
    const before = readLog(log)
    // The interrupt can land right at a checkpoint step, so the log ends at or after it.
    expect(before.at(-1)!.step).toBeGreaterThanOrEqual(ckStep)

    // Resume to the checkpoint's step + 3: the steps after the checkpoint are logged once, in order.
    const r = await semicap(['train', '--clip', clipDir, '--gpt2', gpt2Dir, '--prefix-length', '4', '--labeled', data, '--steps', String(ckStep + 3), '--batch-size', '2', '--lr', '1e-4', '--checkpoint-dir', ck, '--resume', '--out', out, ...common])
    expect(r.code, r.stderr).toBe(0)
    const after = readLog(log).map((e) => e.step)
    expect(after).toEqual(Array.from({ length: ckStep + 3 }, (_, i) => i + 1))
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true)
  })
})

describe('semicap eval', () => {
  it('prints the metrics table and writes JSON and a self-contained HTML report', async () => {
    const json = join(tmp, 'eval', 'results.json')
    const html = join(tmp, 'eval', 'report.html')
    const r = await semicap(['eval', '--model', join(tmp, 'out'), '--data', data, '--json', json, '--report', html, '--log', join(tmp, 'log.jsonl'), '--max-tokens', '8', ...common])
    expect(r.code, r.stderr).toBe(0)
    for (const label of ['BLEU-4', 'CIDEr-D', 'CLIP-S', 'RefCLIP-S', 'R@1', 'R@5', 'vocabulary']) expect(r.stdout).toContain(label)
    const res = JSON.parse(readFileSync(json, 'utf8')) as { images: number; results: Record<string, { metrics: Record<string, number>; perImage: { id: string; caption: string; references: string[] }[] }> }
    expect(res.images).toBe(4)
    const one = res.results.out!
    expect(one.perImage.map((p) => p.id)).toEqual(['red', 'green', 'blue', 'yellow'])
    for (const k of ['bleu1', 'bleu4', 'rougeL', 'ciderD', 'clipS', 'refClipS', 'recallAt1', 'recallAt5', 'vocabulary', 'repetitionRate', 'meanLength']) {
      expect(Number.isFinite(one.metrics[k]), k).toBe(true)
    }
    expect(one.metrics.recallAt5).toBe(1)
    const page = readFileSync(html, 'utf8')
    expect(page).toContain('a &lt;b&gt;red&lt;/b&gt; &amp; &quot;square&quot;')
    expect(page).not.toContain('<b>red</b>')
    expect(page.match(/src="data:image\/png;base64,/g)).toHaveLength(4)
    expect(page).toContain('<svg') // the training curves
    expect(page).not.toMatch(/(src|href)="(https?:)?\/\//)
  })

  it('compares two captioners side by side, with beam search', async () => {
    const html = join(tmp, 'eval', 'two.html')
    const r = await semicap(['eval', '-m', `first=${join(tmp, 'out')}`, '-m', `second=${join(tmp, 'out-reward')}`, '--data', data, '--report', html, '--beams', '2', '--max-tokens', '6', '--no-thumbnails', ...common])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/metric\s+first\s+second/)
    const page = readFileSync(html, 'utf8')
    expect(page).toContain('first CIDEr-D')
    expect(page).toContain('second CIDEr-D')
    expect(page).not.toContain('data:image/png')
  })

  it('bad input exits 1 with a semicap: message', async () => {
    const r = await semicap(['eval', '--model', join(tmp, 'out'), '--data', join(tmp, 'missing.jsonl'), ...common])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/^semicap: /m)
    const r2 = await semicap(['eval', '--data', data, ...common])
    expect(r2.code).toBe(1)
    expect(r2.stderr).toMatch(/^semicap: .*--model/m)
  })
})

describe('progress bar', () => {
  const sink = (isTTY: boolean) => {
    const chunks: string[] = []
    return { chunks, stream: { isTTY, columns: 100, write: (s: string) => chunks.push(s) } }
  }

  it('not a TTY: a line per 10% or per 5 s, with rate and ETA', () => {
    let t = 0
    const { chunks, stream } = sink(false)
    const bar = new ProgressBar('train', 100, { stream, unit: 'step', now: () => t })
    for (let i = 1; i <= 100; i++) {
      t += 100
      bar.update(i, `loss ${(1 / i).toFixed(2)}`)
    }
    bar.finish()
    // The first update, then one line per tenth (the last one is not repeated by finish()).
    expect(chunks).toHaveLength(11)
    expect(chunks[0]).toMatch(/^train +1% 1\/100 - step\/s ETA \? loss 1\.00\n$/)
    expect(chunks[1]).toMatch(/^train +10% 10\/100 10\.0 step\/s ETA 9s loss 0\.10\n$/)
    expect(chunks.at(-1)).toMatch(/100% 100\/100 10\.0 step\/s in 10s/)
    // A slow run still shows it is alive every 5 s.
    const slow = sink(false)
    t = 0
    const b2 = new ProgressBar('x', 1000, { stream: slow.stream, now: () => t })
    for (let i = 1; i <= 3; i++) {
      t += 6000
      b2.update(i)
    }
    expect(slow.chunks).toHaveLength(3)
    expect(slow.chunks[2]).toMatch(/6\.0 s\/it ETA 1h39m/)
    // The rate counts from the first update: a bar resumed at 500 is not credited with 500 steps.
    const resumed = sink(false)
    t = 0
    const b3 = new ProgressBar('r', 1000, { stream: resumed.stream, now: () => t })
    t = 10
    b3.update(500)
    t = 6010
    b3.update(560)
    expect(resumed.chunks).toHaveLength(2)
    expect(resumed.chunks[1]).toMatch(/56% 560\/1000 10\.0 it\/s ETA 44s/)
  })

  it('a TTY: redraws in place, ends the line on finish', () => {
    let t = 0
    const { chunks, stream } = sink(true)
    const bar = new ProgressBar('eval', 4, { stream, now: () => t })
    for (let i = 1; i <= 4; i++) {
      t += 500
      bar.update(i)
    }
    bar.log('checkpoint: x')
    bar.finish()
    expect(chunks.every((c) => c.startsWith('\r\x1b[K') || c === 'checkpoint: x\n')).toBe(true)
    expect(chunks.at(-1)).toMatch(/\[#+\] 100% 4\/4 .*\n$/)
    expect(chunks.join('')).toContain('checkpoint: x\n')
    expect(formatDuration(3725)).toBe('1h02m')
    expect(formatDuration(65)).toBe('1m05s')
    expect(formatDuration(NaN)).toBe('?')
  })
})
