// The addon in worker_threads (it is context-aware: per-environment state, cleaned up when a worker ends) and in
// processes that end with work still in flight. Each scenario runs in a child process (node --import tsx, the same
// library sources), so that a crash shows up as the child's exit signal instead of taking the test runner down.
import { spawn } from 'node:child_process'
import { rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Example } from '../lib/data/index.js'
import { makeTinyCaptionModels } from './helpers/models.js'
import { repoRoot, tempDir } from './helpers/paths.js'

let work: string
let childFile: string
let setup: { clipDir: string; gpt2Dir: string; examples: Example[]; cache: string }

/**
 * One program, three roles: the main thread of a scenario (args.mode), and a worker (workerData.role). Workers
 * post { type: 'captions' } when they have captioned, { type: 'busy' } once training and captioning are in flight.
 */
const CHILD = String.raw`
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
// Workers do not get the main thread's --import tsx hooks in time on Node 20: register them here (this file is
// plain JS, only the library it imports is TypeScript).
if (!isMainThread) {
  const api = await import(${JSON.stringify(pathToFileURL(createRequire(join(repoRoot, 'package.json')).resolve('tsx/esm/api').replace(/\.cjs$/, '.mjs')).href)})
  ;(api.register ?? api.default.register)()
}
const lib = await import(${JSON.stringify(`file://${repoRoot}/lib/index.js`)})
const { Captioner, Tensor } = lib
const out = (line) => process.stdout.write(line + '\n')

function pixels(S, n = 2) {
  return new Tensor('float32', [n, 3, S, S], Float32Array.from({ length: n * 3 * S * S }, (_, i) => Math.sin(i * 0.37)))
}
async function captioner(s) {
  return Captioner.create({ clip: s.clipDir, gpt2: s.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
}
/**
 * Work in flight: 'train' (a long training run on its native thread), 'caption' (beam-search batches back to back on
 * the libuv pool) or 'both' (two captioners). onBusy() once it is all running.
 */
async function busy(s, what, onBusy) {
  let pending = what === 'both' ? 2 : 1
  const ready = () => --pending === 0 && onBusy()
  if (what !== 'caption') {
    const a = await captioner(s)
    const run = a.train({ stage: 'supervised', labeled: s.examples, steps: 100000, batchSize: 2, featureCache: s.cache, checkpointDir: s.ckDir, checkpointEvery: s.ckDir ? 5 : undefined })
    run.catch(() => undefined)
    let started = false
    run.on('progress', (p) => {
      if (p.step >= 2 && !started) {
        started = true
        ready()
      }
    })
  }
  if (what !== 'train') {
    const b = await captioner(s)
    const px = pixels(b.clip.imageSize, 4)
    ;(async () => {
      for (let i = 0; ; i++) {
        if (i === 1) ready()
        await b.caption(px, { decoding: 'beam', beams: 3, maxTokens: 30, stop: null, stopAtEos: false })
      }
    })().catch(() => undefined)
  }
}

if (!isMainThread) {
  const s = workerData
  if (s.role === 'caption') {
    const cap = await captioner(s)
    const caps = await cap.caption(pixels(cap.clip.imageSize), { maxTokens: 6 })
    parentPort.postMessage({ type: 'captions', texts: caps.map((c) => c.text) })
    // Left undisposed on purpose: the environment's cleanup must release it.
  } else if (s.role === 'busy') {
    await busy(s, s.what, () => parentPort.postMessage({ type: 'busy' }))
  }
} else {
  const s = JSON.parse(process.argv[2])
  const spawnWorker = (role, extra = {}) => new Worker(new URL(import.meta.url), { workerData: { ...s, ...extra, role } })
  const message = (w, type) => new Promise((resolve, reject) => {
    w.on('message', (m) => m.type === type && resolve(m))
    w.on('error', reject)
    w.on('exit', (code) => reject(new Error('worker exited (' + code + ') before ' + type)))
  })
  const main = await captioner(s)
  const want = (await main.caption(pixels(main.clip.imageSize), { maxTokens: 6 })).map((c) => c.text)
  const check = async (what) => {
    const got = (await main.caption(pixels(main.clip.imageSize), { maxTokens: 6 })).map((c) => c.text)
    if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(what + ': main thread captions changed')
    out('MAIN-OK ' + what)
  }
  if (s.mode === 'workers') {
    // Two workers at once, each loading the models and captioning.
    const ws = [spawnWorker('caption'), spawnWorker('caption')]
    const got = await Promise.all(ws.map((w) => message(w, 'captions')))
    for (const m of got) if (JSON.stringify(m.texts) !== JSON.stringify(want)) throw new Error('worker captions differ: ' + JSON.stringify(m.texts))
    out('WORKERS-CAPTIONED ' + JSON.stringify(got[0].texts))
    await Promise.all(ws.map((w) => w.terminate()))
    await check('after terminating idle workers')
    // A fresh worker after that still loads the addon and works.
    const again = spawnWorker('caption')
    const m = await message(again, 'captions')
    if (JSON.stringify(m.texts) !== JSON.stringify(want)) throw new Error('a later worker captions differently')
    await again.terminate()
    await check('after a later worker')
    main.dispose()
    out('DONE')
  } else if (s.mode === 'terminate-busy') {
    // terminate() while native work is in flight in the worker (s.what: 'train' or 'caption').
    const w = spawnWorker('busy', { what: s.what, ckDir: s.ckDir })
    await message(w, 'busy')
    await new Promise((r) => setTimeout(r, 150))
    const watchdog = setTimeout(() => out('TERMINATE-HUNG'), 5000)
    const code = await w.terminate()
    clearTimeout(watchdog)
    out('TERMINATED ' + code)
    await check('after terminating a busy worker')
    main.dispose()
    out('DONE')
  } else if (s.mode === 'exit-mid-work') {
    // process.exit(0) while a caption batch and a training run are in flight (and, with s.worker, a busy worker).
    if (s.worker) await message(spawnWorker('busy', { what: 'caption' }), 'busy')
    await busy(s, 'both', () => {
      out('EXITING')
      process.exit(0)
    })
  } else if (s.mode === 'return-with-work') {
    // Main returns with a caption batch and a short training run pending: the process ends once they have.
    const t = await captioner(s)
    const run = t.train({ stage: 'supervised', labeled: s.examples, steps: 15, batchSize: 2, featureCache: s.cache })
    run.then((r) => out('TRAINED ' + r.steps))
    main.caption(pixels(main.clip.imageSize, 8), { maxTokens: 20 }).then((c) => out('CAPTIONED ' + c.length))
    out('RETURNING')
  } else if (s.mode === 'throw-mid-work') {
    await busy(s, 'both', () => {
      setTimeout(() => { throw new Error('boom (uncaught, on purpose)') }, 0)
    })
  }
}
`

interface ChildResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  ms: number
}

function runChild(mode: string, timeoutMs: number, extra: object = {}): Promise<ChildResult> {
  const t0 = performance.now()
  const child = spawn(process.execPath, ['--import', 'tsx', childFile, JSON.stringify({ ...setup, ...extra, mode })], {
    cwd: repoRoot,
    env: { ...process.env, SEMICAP_THREADS: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d))
  child.stderr.on('data', (d: Buffer) => (stderr += d))
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 })
    })
  })
}

/** No sign of a native crash in the output (the exit code and signal are checked separately). */
function expectNoCrashOutput(r: ChildResult): void {
  expect(r.stderr).not.toMatch(/Segmentation fault|Aborted|terminate called|core dumped|FATAL ERROR|Assertion .* failed|double free|corrupted/)
}

beforeAll(async () => {
  work = tempDir('semicap-worker-')
  const { clipDir, gpt2Dir } = await makeTinyCaptionModels(work)
  const examples: Example[] = []
  for (const [i, name] of ['red', 'green', 'blue', 'yellow'].entries()) {
    const file = join(work, `${name}.png`)
    await sharp({ create: { width: 36, height: 36, channels: 3, background: { r: 60 * i, g: 200 - 40 * i, b: 30 + 50 * i } } }).png().toFile(file)
    examples.push({ id: name, image: file, captions: [`a ${name} square.`] })
  }
  setup = { clipDir, gpt2Dir, examples, cache: join(work, 'cache') }
  childFile = join(work, 'child.mjs')
  writeFileSync(childFile, CHILD)
})
afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true })
})

describe('worker_threads', () => {
  it('two workers load the models and caption at once (same captions as the main thread); terminate(); the main thread and a later worker still work', async () => {
    const r = await runChild('workers', 40_000)
    expect(r.stdout, r.stderr.slice(-3000)).toContain('DONE')
    expect(r.code).toBe(0)
    expect(r.signal).toBeNull()
    expectNoCrashOutput(r)
    expect(r.stdout).toContain('WORKERS-CAPTIONED')
    expect(r.stdout).toContain('MAIN-OK after terminating idle workers')
    expect(r.stdout).toContain('MAIN-OK after a later worker')
  })

  // Regressions of two fixed native bugs: a caption settling into a terminating environment used to abort the
  // process (an exception out of the completion callback); terminate() during training used to wait for the whole run.
  it('terminate() a worker in the middle of a caption batch: the process survives', async () => {
    const r = await runChild('terminate-busy', 15_000, { what: 'caption' })
    expect(r.signal, r.stderr.slice(-1000)).toBeNull()
    expect(r.stdout).toContain('DONE')
  })

  it('terminate() a worker in the middle of training: it ends within a step', async () => {
    const r = await runChild('terminate-busy', 12_000, { what: 'train' })
    expect(r.stdout, r.stderr.slice(-1000)).not.toContain('TERMINATE-HUNG')
    expect(r.stdout).toContain('DONE')
  })
})

describe('process exit with work in flight', () => {
  it('process.exit(0) mid-caption and mid-training: exit code 0, quickly, no crash', async () => {
    const r = await runChild('exit-mid-work', 30_000)
    expect(r.stdout, r.stderr.slice(-3000)).toContain('EXITING')
    expect(r.signal).toBeNull()
    expect(r.code).toBe(0)
    expectNoCrashOutput(r)
  })

  it('process.exit(0) with a worker mid-caption: exit code 0', async () => {
    const r = await runChild('exit-mid-work', 30_000, { worker: true })
    expect(r.stdout, r.stderr.slice(-3000)).toContain('EXITING')
    expect(r.signal).toBeNull()
    expect(r.code).toBe(0)
  })

  it('main returns with a caption batch and a training run pending: both finish, then exit code 0', async () => {
    const r = await runChild('return-with-work', 30_000)
    expect(r.stdout, r.stderr.slice(-3000)).toContain('RETURNING')
    expect(r.stdout).toContain('CAPTIONED 8')
    expect(r.stdout).toContain('TRAINED 15')
    expect(r.signal).toBeNull()
    expect(r.code).toBe(0)
    expectNoCrashOutput(r)
  })

  it('an uncaught exception during training and captioning: exit code 1 with the error, not an abort', async () => {
    const r = await runChild('throw-mid-work', 30_000)
    expect(r.stderr).toContain('boom (uncaught, on purpose)')
    expect(r.signal).toBeNull()
    expect(r.code).toBe(1)
    expectNoCrashOutput(r)
  })
})
