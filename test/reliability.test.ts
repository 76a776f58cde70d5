// Reliability under load and faults: many concurrent callers, captioning while training, native memory freed on
// dispose and flat over 10,000 calls, kill -9 in the middle of checkpoint saves, a full disk during a save, aborts.
// Whatever must die or be measured alone runs in a child process (node --import tsx, the same library sources).
import { spawn, type ChildProcess } from 'node:child_process'
import { request } from 'node:http'
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner, Tensor, readSafetensorsHeader, type Caption, type DecodeOptions } from '../lib/index.js'
import type { Example } from '../lib/data/index.js'
import type { TrainProgress } from '../lib/index.js'
import { createCaptionServer } from '../examples/server/server.js'
import { mulberry32 } from '../lib/data/split.js'
import { makeColourSquares, makePngs, makeTinyCaptionModels, type TinyModels } from './helpers/models.js'
import { repoRoot, tempDir } from './helpers/paths.js'

let models: TinyModels
let work: string
let examples: Example[]
let cap: Captioner
let images: Buffer[]
let pixels: Tensor

// ------------------------------------------------------------------ child processes

/**
 * The child program. Modes: train (prints CKPT <step> per checkpoint, DONE <json> at the end, ERROR <code> <msg> on
 * failure), calls (N caption calls, prints RSS figures), dispose (RSS around a ~120 MB GPT-2's create / dispose).
 */
const CHILD = String.raw`
const lib = await import(${JSON.stringify(`file://${repoRoot}/lib/index.js`)})
const { Captioner, Gpt2, Tensor } = lib
const args = JSON.parse(process.argv[2])
const out = (line) => process.stdout.write(line + '\n')
const gc = globalThis.gc ?? (() => undefined)
const rssMb = () => { gc(); gc(); return process.memoryUsage().rss / 2 ** 20 }
try {
  if (args.mode === 'train') {
    const cap = await Captioner.create({ clip: args.clipDir, gpt2: args.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
    const run = cap.train({ stage: 'supervised', labeled: args.examples, steps: args.steps, batchSize: 2, lr: 1e-3, schedule: 'constant',
      featureCache: args.cache, checkpointDir: args.ckDir, checkpointEvery: args.checkpointEvery ?? 1, checkpointKeep: 2, resume: args.resume ?? false, seed: 1 })
    run.on('checkpoint', (c) => out('CKPT ' + c.step))
    const summary = await run
    out('DONE ' + JSON.stringify(summary))
  } else if (args.mode === 'exit') {
    // process.exit() from a progress listener while training (saving a checkpoint every step) and while a second
    // captioner's caption() calls run on libuv's threads.
    const cap = await Captioner.create({ clip: args.clipDir, gpt2: args.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
    const other = await Captioner.create({ clip: args.clipDir, gpt2: args.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
    const S = cap.clip.imageSize
    const px = new Tensor('float32', [2, 3, S, S], Float32Array.from({ length: 6 * S * S }, (_, i) => Math.sin(i)))
    const run = cap.train({ stage: 'supervised', labeled: args.examples, steps: 100_000, batchSize: 2, lr: 1e-3, featureCache: args.cache,
      checkpointDir: args.ckDir, checkpointEvery: 1, checkpointKeep: 2, resume: true, seed: 1 })
    let steps = 0
    run.on('progress', () => {
      if (++steps === args.exitAfter) {
        for (let i = 0; i < 4; i++) other.caption(px, { maxTokens: 8 })
        out('EXIT')
        process.exit(7)
      }
    })
    await run
  } else if (args.mode === 'calls') {
    const cap = await Captioner.create({ clip: args.clipDir, gpt2: args.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
    const S = cap.clip.imageSize
    const px = new Tensor('float32', [1, 3, S, S], Float32Array.from({ length: 3 * S * S }, (_, i) => Math.sin(i)))
    const first = await cap.caption(px, { maxTokens: 5 })
    for (let i = 0; i < args.warmup; i++) await cap.caption(px, { maxTokens: 5 })
    const before = rssMb()
    const t0 = performance.now()
    const samples = []
    for (let i = 0; i < args.calls; i++) {
      const c = await cap.caption(px, { maxTokens: 5 })
      if (c[0].text !== first[0].text) throw new Error('caption changed at call ' + i)
      if (i % 1000 === 999) samples.push(Math.round(process.memoryUsage().rss / 2 ** 20))
    }
    const ms = performance.now() - t0
    const after = rssMb()
    out('RESULT ' + JSON.stringify({ before, after, growthMb: after - before, msPerCall: ms / args.calls, samples }))
  } else if (args.mode === 'dispose') {
    const ids = new Tensor('int64', [1, 8], BigInt64Array.from({ length: 8 }, (_, i) => BigInt(i)))
    // Warm up first (libtorch's thread pools and allocator), so that the baseline holds the library itself.
    const small = await Gpt2.create({ n_embd: 64, n_layer: 1, n_head: 4, vocab_size: 8192, n_positions: 512 }, { device: 'cpu' })
    await small.logits(ids)
    small.dispose()
    const base = rssMb()
    const g = await Gpt2.create({ n_embd: 512, n_layer: 8, n_head: 8, vocab_size: 8192, n_positions: 512 }, { device: 'cpu' })
    await g.logits(ids)
    const loaded = rssMb()
    g.dispose()
    const disposed = rssMb()
    out('RESULT ' + JSON.stringify({ base, loaded, disposed }))
  }
} catch (err) {
  out('ERROR ' + (err?.code ?? err?.name) + ' ' + String(err?.message).split('\n')[0])
  process.exitCode = 3
}
`

let childFile: string

interface ChildResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  ms: number
}

/** Starts the child; `shell` wraps it in bash (for ulimit / trap) when given. */
function startChild(args: object, opts: { shell?: string; env?: Record<string, string>; expose?: boolean } = {}): { child: ChildProcess; done: Promise<ChildResult>; lines: AsyncIterable<string> } {
  const nodeArgs = ['--import', 'tsx', ...(opts.expose ? ['--expose-gc'] : []), childFile, JSON.stringify(args)]
  const env = { ...process.env, SEMICAP_THREADS: '1', ...opts.env }
  const t0 = performance.now()
  const child = opts.shell
    ? spawn('bash', ['-c', `${opts.shell}; exec "$0" "$@"`, process.execPath, ...nodeArgs], { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(process.execPath, nodeArgs, { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  const waiting: ((line: string | null) => void)[] = []
  const queued: (string | null)[] = []
  let partial = ''
  const push = (line: string | null) => {
    const w = waiting.shift()
    if (w) w(line)
    else queued.push(line)
  }
  child.stdout!.on('data', (d: Buffer) => {
    stdout += d
    partial += d
    const parts = partial.split('\n')
    partial = parts.pop()!
    for (const p of parts) push(p)
  })
  child.stderr!.on('data', (d: Buffer) => (stderr += d))
  const done = new Promise<ChildResult>((resolve) => {
    child.on('close', (code, signal) => {
      push(null)
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 })
    })
  })
  const lines: AsyncIterable<string> = {
    [Symbol.asyncIterator]: () => ({
      next: () =>
        new Promise((resolve) => {
          const take = (line: string | null) => resolve(line === null ? { done: true, value: undefined } : { done: false, value: line })
          if (queued.length) take(queued.shift()!)
          else waiting.push(take)
        }),
    }),
  }
  return { child, done, lines }
}

const resultOf = (r: ChildResult): Record<string, number> => {
  const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '))
  if (!line) throw new Error(`child gave no result (exit ${r.code}, signal ${r.signal}):\n${r.stdout}\n${r.stderr.slice(-2000)}`)
  return JSON.parse(line.slice(7)) as Record<string, number>
}

// ------------------------------------------------------------------ setup

const COLOURS: [string, [number, number, number]][] = [
  ['red', [230, 20, 20]],
  ['green', [20, 200, 40]],
  ['blue', [20, 40, 230]],
  ['yellow', [240, 230, 30]],
]

let memChild: ReturnType<typeof startChild> | undefined

/** Under scripts/asan.sh (ASan preloaded): freed memory sits in ASan's quarantine, and everything runs 3-5x slower. */
const underAsan = /libasan/.test(process.env.LD_PRELOAD ?? '')

beforeAll(async () => {
  work = tempDir('semicap-rel-')
  // The tiny CLIP reads text with the GPT-2 tokenizer, as in test/training.test.ts.
  models = await makeTinyCaptionModels(work)
  examples = await makeColourSquares(work, COLOURS, (name) => `a ${name} square.`)
  childFile = join(work, 'child.mts')
  writeFileSync(childFile, CHILD)
  cap = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  images = await makePngs(6)
  pixels = await cap.clip.preprocess(images)
  // The 10,000-call memory run is long and single-threaded: it runs beside the other tests (two cores).
  memChild = startChild({ mode: 'calls', clipDir: models.clipDir, gpt2Dir: models.gpt2Dir, warmup: 300, calls: underAsan ? 2_000 : 10_000 }, { expose: true })
})
afterAll(() => {
  cap?.dispose()
  memChild?.child.kill('SIGKILL')
  // Checkpoints of the kill rounds add up to tens of MB.
  if (work) rmSync(work, { recursive: true, force: true })
})

// ------------------------------------------------------------------ concurrency

describe('concurrency', () => {
  it('100 concurrent caption() calls on one Captioner equal the same calls made one by one', async () => {
    const opts = (i: number): DecodeOptions =>
      i % 4 === 0 ? { maxTokens: 4 + (i % 7) } : i % 4 === 1 ? { decoding: 'beam', beams: 2 + (i % 3), maxTokens: 6 } : i % 4 === 2 ? { decoding: 'sample', seed: i, maxTokens: 8 } : { decoding: 'sample', seed: i, topK: 5, temperature: 0.7, maxTokens: 6 }
    const inputs = (i: number) => (i % 3 === 0 ? images.slice(i % 6, (i % 6) + 1) : i % 3 === 1 ? pixels : [images[i % 6]!, images[(i + 1) % 6]!])
    const sequential: Caption[][] = []
    for (let i = 0; i < 100; i++) sequential.push(await cap.caption(inputs(i), opts(i)))
    const concurrent = await Promise.all(Array.from({ length: 100 }, (_, i) => cap.caption(inputs(i), opts(i))))
    // Same tokens and text; scores may differ in the last bits: concurrent calls share decode steps (continuous
    // batching), and a matrix product's summation order depends on how many rows it holds.
    expect(concurrent.map((r) => r.map((c) => [c.ids, c.text]))).toEqual(sequential.map((r) => r.map((c) => [c.ids, c.text])))
    concurrent.forEach((r, i) => r.forEach((c, j) => expect(c.score).toBeCloseTo(sequential[i]![j]!.score, 5)))
  })

  it('caption() during train() on the same Captioner waits for the run to end, then sees the trained weights', async () => {
    const c = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
    try {
      const img = [examples[0]!.image]
      const before = await c.caption(img, { maxTokens: 8 })
      const events: string[] = []
      const run = c.train({ stage: 'supervised', labeled: examples, steps: 40, batchSize: 4, lr: 3e-3, schedule: 'constant', featureCache: join(work, 'cache-q'), seed: 2 })
      let during: Promise<Caption[]> | undefined
      let lastStep = 0
      run.on('progress', (p: TrainProgress) => {
        lastStep = p.step
        // Issued while the native run is in progress (after its first step).
        if (p.step === 2 && !during) {
          events.push('caption-issued@2')
          during = c.caption(img, { maxTokens: 8 }).then((r) => {
            events.push(`caption-settled@${lastStep}`)
            return r
          })
        }
      })
      const summary = await run.then((s) => (events.push(`train-settled@${lastStep}`), s))
      expect(summary.steps).toBe(40)
      const got = await during!
      // Queued behind the run: it settled after the run did, never in between.
      expect(events.map((e) => e.split('@')[0])).toEqual(['caption-issued', 'train-settled', 'caption-settled'])
      expect(Number(events[2]!.split('@')[1])).toBeGreaterThanOrEqual(39)
      // And it captioned with the weights the run ended with, not those it started with.
      expect(got).toEqual(await c.caption(img, { maxTokens: 8 }))
      expect(got).not.toEqual(before)
    } finally {
      c.dispose()
    }
  })
})

// ------------------------------------------------------------------ memory

describe('memory', () => {
  it('dispose() returns a ~120 MB GPT-2 to the OS at once (RSS, in a child with --expose-gc)', async () => {
    const r = resultOf(await startChild({ mode: 'dispose' }, { expose: true }).done)
    const grew = r.loaded! - r.base!
    const freed = r.loaded! - r.disposed!
    console.log(`GPT-2 512x8: RSS ${r.base!.toFixed(0)} MB -> ${r.loaded!.toFixed(0)} MB after create -> ${r.disposed!.toFixed(0)} MB after dispose + gc`)
    expect(grew).toBeGreaterThan(100)
    if (!underAsan) expect(freed).toBeGreaterThan(grew * 0.85)
  })

  it('10,000 caption calls (1 image, maxTokens 5) grow RSS by < 50 MB after warm-up', async () => {
    const r = await memChild!.done
    const m = resultOf(r)
    console.log(`${underAsan ? '2,000 (ASan)' : '10,000'} calls: RSS ${m.before!.toFixed(1)} MB -> ${m.after!.toFixed(1)} MB (+${m.growthMb!.toFixed(1)} MB), ${m.msPerCall!.toFixed(2)} ms/call; per 1000 calls: ${(m.samples as unknown as number[]).join(', ')} MB`)
    expect(r.code).toBe(0)
    // Under ASan freed blocks go to its quarantine first (256 MB), so RSS climbs regardless: only the plain build counts.
    if (!underAsan) expect(m.growthMb).toBeLessThan(50)
  }, 240_000)
})

// ------------------------------------------------------------------ faults

/** `latest` names a complete checkpoint folder that loads and captions; returns its step. */
async function checkLatest(ckDir: string, what: string): Promise<number> {
  const name = readFileSync(join(ckDir, 'latest'), 'utf8').trim()
  expect(name, what).toMatch(/^step-\d{8}$/)
  const dir = join(ckDir, name)
  for (const f of ['config.json', 'model.safetensors', 'optimizer.safetensors', 'trainer_state.json', 'clip/model.safetensors']) {
    expect(existsSync(join(dir, f)), `${what}: ${name}/${f}`).toBe(true)
  }
  const state = JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')) as { step: number }
  expect(state.step, what).toBe(Number(name.slice(5)))
  expect((await readSafetensorsHeader(join(dir, 'optimizer.safetensors'))).metadata.step, what).toBeDefined()
  const loaded = await Captioner.load(dir, { device: 'cpu' })
  try {
    const c = await loaded.caption([examples[1]!.image], { maxTokens: 6 })
    expect(c, what).toHaveLength(1)
  } finally {
    loaded.dispose()
  }
  return state.step
}

describe('faults', () => {
  const trainArgs = () => ({ mode: 'train', clipDir: models.clipDir, gpt2Dir: models.gpt2Dir, examples, cache: join(work, 'cache-k') })

  it('kill -9 at random points during checkpoint saves (checkpointEvery: 1): latest always loads; the next run resumes', async () => {
    const ckDir = join(work, 'ck-kill')
    const rounds = Number(process.env.SEMICAP_KILL_ROUNDS ?? (underAsan ? 3 : 8))
    const random = mulberry32(0x5eed)
    const log: string[] = []
    let lastStep = 0
    for (let round = 0; round < rounds; round++) {
      const { child, done, lines } = startChild({ ...trainArgs(), ckDir, steps: 100_000, resume: round > 0 })
      // Wait for the first checkpoint of this run, then kill after a random delay (the saves are back to back).
      let first = -1
      for await (const line of lines) {
        if (line.startsWith('CKPT ')) {
          first = Number(line.slice(5))
          break
        }
        if (line.startsWith('ERROR') || line.startsWith('DONE')) break
      }
      expect(first, `round ${round}: no checkpoint`).toBeGreaterThan(0)
      const delay = Math.floor(random() * 250)
      await new Promise((r) => setTimeout(r, delay))
      child.kill('SIGKILL')
      const r = await done
      expect(r.signal, `round ${round}: ${r.stderr.slice(-500)}`).toBe('SIGKILL')
      const step = await checkLatest(ckDir, `round ${round}`)
      // Resume continued from the previous latest: steps only go forward.
      expect(step).toBeGreaterThanOrEqual(Math.max(first, lastStep))
      const leftovers = readdirSync(ckDir).filter((n) => n.endsWith('.tmp'))
      log.push(`round ${round}: killed ${delay} ms after step ${first}'s checkpoint, latest step ${step}${leftovers.length ? `, leftover ${leftovers.join(' ')}` : ''}`)
      lastStep = step
    }
    console.log(log.join('\n'))
  }, 240_000)

  // checkpointKeep counts every complete step folder in the directory, also those killed runs wrote (checked on the
  // folder the kill rounds above left). A kill between a save's rename and its pruning leaves one extra folder,
  // which the next run prunes when it starts.
  it('process.exit(7) while training, saving and captioning exits with 7 (no signal), and latest still loads', async () => {
    const ckDir = join(work, 'ck-exit')
    for (const exitAfter of [1, 2, 3]) {
      const r = await startChild({ ...trainArgs(), mode: 'exit', ckDir, exitAfter }).done
      expect(r.stdout, r.stderr.slice(-1000)).toContain('EXIT')
      expect({ code: r.code, signal: r.signal }, r.stderr.slice(-1000)).toEqual({ code: 7, signal: null })
    }
    await checkLatest(ckDir, 'after the exits')
  }, 120_000)

  it('checkpointKeep (2) bounds the checkpoint folders across killed and resumed runs', () => {
    const kept = readdirSync(join(work, 'ck-kill')).filter((n) => /^step-\d{8}$/.test(n))
    expect(kept.length).toBeLessThanOrEqual(3)
  })

  it('a failed save (full disk: EFBIG under a file size limit; an injected failure) fails the run with E_IO and keeps the previous checkpoint', async () => {
    const ckDir = join(work, 'ck-full')
    // A first run with no limit writes step 2.
    const ok = await startChild({ ...trainArgs(), ckDir, steps: 2, checkpointEvery: 2 }).done
    expect(ok.stdout, ok.stderr).toContain('DONE')
    expect(await checkLatest(ckDir, 'before')).toBe(2)
    const modelBytes = readFileSync(join(ckDir, 'step-00000002', 'model.safetensors')).length
    // Resumed under a file-size limit below the weights' size: writes past it fail with EFBIG ("File too large"),
    // as on a full disk (SIGXFSZ ignored, so write() returns the error instead of killing the process).
    const limitKb = Math.floor(modelBytes / 1024 / 2)
    const full = await startChild({ ...trainArgs(), ckDir, steps: 4, checkpointEvery: 2, resume: true }, { shell: `trap '' XFSZ; ulimit -f ${limitKb}` }).done
    expect(full.code, full.stdout + full.stderr).toBe(3)
    expect(full.stdout).toMatch(/ERROR E_IO .*(File too large|write failed)/)
    expect(readFileSync(join(ckDir, 'latest'), 'utf8').trim()).toBe('step-00000002')
    expect(existsSync(join(ckDir, 'step-00000004'))).toBe(false)
    expect(await checkLatest(ckDir, 'after EFBIG')).toBe(2)
    // The same resume with a failure injected at the save (SEMICAP_TEST_FAIL_CHECKPOINT): the same outcome.
    const injected = await startChild({ ...trainArgs(), ckDir, steps: 4, checkpointEvery: 2, resume: true }, { env: { SEMICAP_TEST_FAIL_CHECKPOINT: '4' } }).done
    expect(injected.stdout).toMatch(/ERROR E_IO injected checkpoint failure at step 4/)
    expect(await checkLatest(ckDir, 'after injected failure')).toBe(2)
    // Without either, the resume succeeds (the failed attempts left nothing in the way).
    const again = await startChild({ ...trainArgs(), ckDir, steps: 4, checkpointEvery: 2, resume: true }).done
    expect(again.stdout, again.stderr).toContain('DONE')
    expect(await checkLatest(ckDir, 'after retry')).toBe(4)
  })

  it('abort in the middle of checkpointing (abort on every checkpoint event) leaves a usable model and a loadable latest', async () => {
    const c = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
    try {
      const ckDir = join(work, 'ck-abort')
      const run = c.train({ stage: 'supervised', labeled: examples, steps: 1000, batchSize: 2, featureCache: join(work, 'cache-k'), checkpointDir: ckDir, checkpointEvery: 1 })
      run.on('checkpoint', (e: { step: number }) => e.step >= 3 && run.abort())
      await expect(run).rejects.toMatchObject({ name: 'AbortError', code: 'E_ABORTED' })
      expect(await c.caption([examples[2]!.image], { maxTokens: 5 })).toHaveLength(1)
      expect(await checkLatest(ckDir, 'after abort')).toBeGreaterThanOrEqual(3)
    } finally {
      c.dispose()
    }
  })
})

// ------------------------------------------------------------------ the example server

/** One HTTP request over loopback; `chunked` sends the body without a Content-Length. */
function http(port: number, method: string, path: string, body?: Buffer, chunked = false): Promise<{ status: number; json: Record<string, unknown>; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { 'content-type': 'application/octet-stream' }
    if (body && !chunked) headers['content-length'] = body.length
    const req = request({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      let text = ''
      res.on('data', (c) => (text += c))
      res.on('end', () => resolve({ status: res.statusCode!, json: JSON.parse(text) as Record<string, unknown>, headers: res.headers }))
    })
    // The server may answer (413) and close before the whole body is written: that is not a client error here.
    req.on('error', (err: NodeJS.ErrnoException) => (err.code === 'EPIPE' || err.code === 'ECONNRESET' ? undefined : reject(err)))
    if (body && chunked) {
      for (let i = 0; i < body.length; i += 16384) req.write(body.subarray(i, i + 16384))
      req.end()
    } else req.end(body)
  })
}

describe('examples/server', () => {
  it('on an ephemeral loopback port: captions, 413 for oversize bodies, 400 E_IMAGE, 503 past the queue, every request answered', async () => {
    const s = createCaptionServer({ captioner: cap, maxBodyBytes: 64 * 1024, maxActive: 2, maxQueued: 3, decode: { maxTokens: 8 } })
    const port = await s.listen(0, '127.0.0.1')
    try {
      const health = await http(port, 'GET', '/health')
      expect(health.status).toBe(200)
      expect(health.json.status).toBe('ok')
      const good = await http(port, 'POST', '/caption?maxTokens=6', images[0]!)
      expect(good.status).toBe(200)
      expect(typeof good.json.caption).toBe('string')
      // Same answer as the library gives directly.
      expect(good.json.caption).toBe((await cap.caption([images[0]!], { maxTokens: 6, decoding: 'greedy' }))[0]!.text)

      const big = Buffer.alloc(200 * 1024, 7)
      expect((await http(port, 'POST', '/caption', big)).status).toBe(413) // refused from Content-Length
      const chunked = await http(port, 'POST', '/caption', big, true) // refused while streaming
      expect(chunked.status).toBe(413)
      expect(chunked.json.error).toMatchObject({ code: 'E_TOO_LARGE' })

      const notImage = await http(port, 'POST', '/caption', Buffer.from('definitely not an image'))
      expect(notImage.status).toBe(400)
      expect(notImage.json.error).toMatchObject({ code: 'E_IMAGE' })
      expect(String((notImage.json.error as { message: string }).message)).not.toContain(repoRoot)
      const bomb = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.from('0000000d49484452', 'hex'), Buffer.from([0, 0, 0x75, 0x30, 0, 0, 0x75, 0x30, 8, 0, 0, 0, 0]), Buffer.alloc(4)])
      expect((await http(port, 'POST', '/caption', bomb)).json.error).toMatchObject({ code: 'E_IMAGE' })
      expect((await http(port, 'POST', '/caption', Buffer.alloc(0))).status).toBe(400)
      expect((await http(port, 'POST', '/caption?maxTokens=abc', images[0]!)).json.error).toMatchObject({ code: 'E_VALUE' })
      expect((await http(port, 'POST', '/caption?maxTokens=1000', images[0]!)).status).toBe(400)
      expect((await http(port, 'GET', '/nope')).status).toBe(404)
      expect((await http(port, 'GET', '/caption')).status).toBe(405)

      // 24 at once against 2 running + 3 queued: the rest get 503 with Retry-After, and every one is answered.
      const burst = await Promise.all(Array.from({ length: 24 }, (_, i) => http(port, 'POST', '/caption?maxTokens=20', images[i % 6]!)))
      const statuses = burst.map((r) => r.status)
      expect(statuses.length).toBe(24)
      expect(statuses.every((x) => x === 200 || x === 503)).toBe(true)
      expect(statuses.filter((x) => x === 200).length).toBeGreaterThanOrEqual(5)
      expect(statuses).toContain(503)
      expect(burst.find((r) => r.status === 503)!.headers['retry-after']).toBe('1')
      // Afterwards the queue is empty and it serves again.
      expect(s.stats()).toMatchObject({ active: 0, queued: 0 })
      expect((await http(port, 'POST', '/caption', images[1]!)).status).toBe(200)
    } finally {
      await s.close()
    }
  })
})
