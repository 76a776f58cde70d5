// A bounded load test of examples/server/server.ts over 127.0.0.1 only. Starts the server as a child process (so
// that its RSS is its own) and measures, per concurrency level and per batching mode (continuous batching on, and
// `--max-batch 1`), throughput and latency percentiles, as a markdown table. Every level is bounded in requests and
// in time. The requests mix plain captions (POST /caption), streams (POST /caption/stream, read to their `done`
// event), deliberately bad images (which must get 400 E_IMAGE) and clients that disconnect mid-request: the server
// must survive those, abort their rows (nothing left in flight afterwards), and every other request must get exactly
// one answer, its own (checked through X-Request-Id).
//
//   node --import tsx examples/server/load-test.ts [--levels 1,4,16,64] [--modes batch,nobatch] [--max-batch 16]
//        [--requests 200] [--time-limit 60] [--bad-ratio 0.05] [--disconnect-ratio 0.05] [--stream-ratio 0.25]
//        [--max-tokens 10-19] [--server-args="--tiny"] [--json out.json]
//   node --import tsx examples/server/load-test.ts --concurrency 16 --requests 500     (one level)
//   node --import tsx examples/server/load-test.ts --soak 300 [--sample-every 5] [--concurrency 16]
//
// --requests and --time-limit (seconds) apply to each level. The soak mode runs at one concurrency (16) for the given
// seconds with batching on, samples the server's RSS every --sample-every seconds, and reports its growth.
// Exit status 0 when no request was lost, duplicated or answered unexpectedly (5xx other than 503, 4xx for a good
// image), the server stayed up, and nothing was left in flight after each level.
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import sharp from 'sharp'

const here = dirname(fileURLToPath(import.meta.url))
const repoRoot = join(here, '..', '..')

const { values } = parseArgs({
  options: {
    levels: { type: 'string', default: '1,4,16,64' },
    concurrency: { type: 'string' },
    modes: { type: 'string', default: 'batch,nobatch' },
    'max-batch': { type: 'string', default: '16' },
    requests: { type: 'string', default: '200' },
    'time-limit': { type: 'string', default: '60' },
    'bad-ratio': { type: 'string', default: '0.05' },
    'disconnect-ratio': { type: 'string', default: '0.05' },
    'stream-ratio': { type: 'string', default: '0.25' },
    'max-tokens': { type: 'string', default: '10-19' },
    'server-args': { type: 'string', default: '--tiny --max-queued 256' },
    soak: { type: 'string' },
    'sample-every': { type: 'string', default: '5' },
    json: { type: 'string' },
  },
})
const perLevel = Number(values.requests)
const timeLimitMs = Number(values['time-limit']) * 1000
const badRatio = Number(values['bad-ratio'])
const disconnectRatio = Number(values['disconnect-ratio'])
const streamRatio = Number(values['stream-ratio'])
const [minTok, maxTok] = values['max-tokens']!.split('-').map(Number) as [number, number?]
const maxBatch = Number(values['max-batch'])

/** A few distinct test images (PNG and JPEG, various sizes). */
async function images(): Promise<Buffer[]> {
  const out: Buffer[] = []
  for (let i = 0; i < 8; i++) {
    const w = 64 + i * 40
    const h = 48 + ((i * 37) % 200)
    const raw = Buffer.alloc(w * h * 3)
    for (let k = 0; k < raw.length; k++) raw[k] = (k * (i + 3) + (k >> 7) * 11) & 0xff
    const img = sharp(raw, { raw: { width: w, height: h, channels: 3 } })
    out.push(await (i % 2 ? img.jpeg({ quality: 85 }) : img.png()).toBuffer())
  }
  return out
}

type Kind = 'plain' | 'stream' | 'bad' | 'disconnect'

interface Answer {
  id: string
  kind: Kind
  status: number
  code?: string
  ms: number
  /** Streams: time to the first token event. */
  firstMs?: number
  /** The response carried another request's id, or a stream did not end with `done`. */
  mismatch?: string
}

// ------------------------------------------------------------------ server child

interface ServerChild {
  child: ChildProcess
  port: number
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

async function startServer(extra: string[]): Promise<ServerChild> {
  const serverArgs = values['server-args']!.split(/\s+/).filter(Boolean)
  const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'server.ts'), '--port', '0', '--host', '127.0.0.1', ...serverArgs, ...extra], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  const port = await new Promise<number>((resolve, reject) => {
    let out = ''
    child.stdout!.on('data', (d: Buffer) => {
      out += d
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)
      if (m) resolve(Number(m[1]))
    })
    void exited.then(({ code }) => reject(new Error(`server exited (${code}) before listening`)))
    setTimeout(() => reject(new Error('server did not start within 60 s')), 60_000).unref()
  })
  return { child, port, exited }
}

async function stopServer(s: ServerChild): Promise<{ clean: boolean; ms: number }> {
  const t0 = performance.now()
  s.child.kill('SIGTERM')
  const timeout = setTimeout(() => s.child.kill('SIGKILL'), 30_000)
  const { code } = await s.exited
  clearTimeout(timeout)
  return { clean: code === 0, ms: Math.round(performance.now() - t0) }
}

// ------------------------------------------------------------------ clients

function getJson<T>(port: number, path: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let s = ''
      res.on('data', (c) => (s += c))
      res.on('end', () => {
        try {
          resolve(JSON.parse(s) as T)
        } catch (err) {
          reject(err)
        }
      })
    })
    req.on('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${path}: no answer in 10 s`)))
    req.end()
  })
}

function getText(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let s = ''
      res.on('data', (c) => (s += c))
      res.on('end', () => resolve(s))
    })
    req.on('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${path}: no answer in 10 s`)))
    req.end()
  })
}

/** Samples of a Prometheus text page, keyed by `name{labels}`. */
async function metrics(port: number): Promise<Map<string, number>> {
  const m = new Map<string, number>()
  for (const line of (await getText(port, '/metrics')).split('\n')) {
    if (!line || line.startsWith('#')) continue
    const i = line.lastIndexOf(' ')
    m.set(line.slice(0, i), Number(line.slice(i + 1)))
  }
  return m
}

interface Health {
  rssMb: number
  served: number
  inFlight: number
  active: number
  queued: number
  activeRows?: number
  batching: boolean
  maxBatch: number
}

/** One request. Disconnecting clients send the image, then drop the connection after `dropAfterMs`. */
function send(port: number, agent: Agent, kind: Kind, id: string, body: Buffer, maxTokens: number, dropAfterMs: number): Promise<Answer | 'dropped'> {
  const t0 = performance.now()
  const path = kind === 'stream' || (kind === 'disconnect' && id.endsWith('s')) ? `/caption/stream?maxTokens=${maxTokens}` : `/caption?maxTokens=${maxTokens}`
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method: 'POST', path, agent: kind === 'disconnect' ? false : agent, headers: { 'content-type': 'application/octet-stream', 'content-length': body.length, 'x-request-id': id } },
      (res) => {
        const chunks: Buffer[] = []
        let firstMs: number | undefined
        res.on('data', (c: Buffer) => {
          firstMs ??= performance.now() - t0
          chunks.push(c)
        })
        res.on('end', () => {
          const ms = performance.now() - t0
          const text = Buffer.concat(chunks).toString('utf8')
          const a: Answer = { id, kind, status: res.statusCode ?? 0, ms }
          if (res.headers['x-request-id'] !== id) a.mismatch = `answer carries id ${String(res.headers['x-request-id'])}`
          if (res.headers['content-type']?.startsWith('text/event-stream')) {
            a.firstMs = firstMs
            const last = text.trimEnd().split('\n\n').at(-1) ?? ''
            if (!last.startsWith('event: done')) {
              a.code = /event: error\ndata: (.*)/.exec(last)?.[1] ? (JSON.parse(/event: error\ndata: (.*)/.exec(last)![1]!) as { code: string }).code : 'E_STREAM_CUT'
              a.mismatch ??= `stream ended with: ${last.slice(0, 80)}`
            }
          } else {
            try {
              a.code = (JSON.parse(text) as { error?: { code?: string } }).error?.code
            } catch {
              a.code = 'E_BAD_JSON'
            }
          }
          resolve(a)
        })
        res.on('error', (err) => (kind === 'disconnect' ? resolve('dropped') : reject(err)))
        // Destroyed mid-answer: no 'end' (a settled promise ignores this).
        res.on('close', () => (kind === 'disconnect' ? resolve('dropped') : reject(new Error('the connection closed before the end of the answer'))))
      },
    )
    req.on('error', (err) => (kind === 'disconnect' ? resolve('dropped') : reject(err)))
    req.setTimeout(60_000, () => req.destroy(new Error('no answer within 60 s')))
    req.end(body)
    if (kind === 'disconnect') setTimeout(() => req.destroy(), dropAfterMs)
  })
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!
}

interface LevelResult {
  mode: string
  concurrency: number
  planned: number
  sent: number
  ok: number
  busy: number
  badAnswered: number
  unexpected: number
  lost: number
  duplicated: number
  mismatched: number
  disconnects: number
  seconds: number
  captionsPerS: number
  p50: number
  p90: number
  p99: number
  ttftP50: number
  rowsPerStep: number
  leftInFlight: boolean
  rssMb: number
  failures: string[]
}

/** Deterministic request plan: which kind the i-th request is. */
function kindOf(i: number): Kind {
  const every = (ratio: number) => (ratio > 0 ? Math.max(1, Math.round(1 / ratio)) : 0)
  const b = every(badRatio)
  const d = every(disconnectRatio)
  const s = every(streamRatio)
  if (b && i % b === 7 % b) return 'bad'
  if (d && i % d === 3 % d) return 'disconnect'
  if (s && i % s === 1 % s) return 'stream'
  return 'plain'
}

async function runLevel(port: number, mode: string, concurrency: number, imgs: Buffer[], opts: { total: number; timeMs: number; tag: string }): Promise<LevelResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency })
  const bad = Buffer.from('this is not an image')
  const before = await metrics(port)
  const answers: Answer[] = []
  const failures: string[] = []
  const seen = new Map<string, number>()
  let next = 0
  let lost = 0
  let disconnects = 0
  const t0 = performance.now()
  const deadline = t0 + opts.timeMs
  const worker = async () => {
    while (next < opts.total && performance.now() < deadline) {
      const i = next++
      const kind = kindOf(i)
      const id = `${opts.tag}-${i}${kind === 'disconnect' && i % 2 ? 's' : ''}`
      const maxTokens = minTok + (maxTok !== undefined ? i % (maxTok - minTok + 1) : 0)
      try {
        const a = await send(port, agent, kind, id, kind === 'bad' ? bad : imgs[i % imgs.length]!, maxTokens, (i * 7) % 40)
        if (a === 'dropped') {
          disconnects++
          continue
        }
        seen.set(a.id, (seen.get(a.id) ?? 0) + 1)
        answers.push(a)
      } catch (err) {
        lost++
        if (failures.length < 10) failures.push(`${id} (${kind}): ${(err as Error).message}`)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  const seconds = (performance.now() - t0) / 1000
  agent.destroy()
  // Nothing may be left running once every client is gone: the server's own view, polled for up to 5 s.
  let leftInFlight = true
  for (let k = 0; k < 50 && leftInFlight; k++) {
    const h = await getJson<Health>(port, '/healthz')
    leftInFlight = h.inFlight > 1 || h.active > 0 || h.queued > 0 || (h.activeRows ?? 0) > 0
    if (leftInFlight) await new Promise((r) => setTimeout(r, 100))
  }
  const after = await metrics(port)
  const health = await getJson<Health>(port, '/healthz')
  const sent = answers.length + lost + disconnects
  const duplicated = [...seen.values()].filter((n) => n > 1).length
  const mismatched = answers.filter((a) => a.mismatch && a.kind !== 'disconnect')
  for (const a of mismatched.slice(0, 5)) failures.push(`${a.id}: ${a.mismatch}`)
  // A disconnecting client that got its whole answer before leaving is fine; judge the others.
  const judged = answers.filter((a) => a.kind !== 'disconnect')
  const unexpected = judged.filter((a) => a.status !== 503 && (a.kind === 'bad' ? a.status !== 400 || a.code !== 'E_IMAGE' : a.status !== 200 || a.mismatch))
  for (const a of unexpected.slice(0, 5)) failures.push(`${a.id} (${a.kind}): ${a.status} ${a.code ?? ''} ${a.mismatch ?? ''}`)
  const good = judged.filter((a) => a.kind !== 'bad' && a.status === 200 && !a.mismatch)
  const lat = good.map((a) => a.ms).sort((x, y) => x - y)
  const ttft = good.filter((a) => a.firstMs !== undefined).map((a) => a.firstMs!).sort((x, y) => x - y)
  const d = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0)
  const steps = d('semicap_batch_steps_total')
  return {
    mode,
    concurrency,
    planned: opts.total,
    sent,
    ok: good.length,
    busy: judged.filter((a) => a.status === 503).length,
    badAnswered: judged.filter((a) => a.kind === 'bad' && a.status === 400).length,
    unexpected: unexpected.length,
    lost,
    duplicated,
    mismatched: mismatched.length,
    disconnects: disconnects + answers.filter((a) => a.kind === 'disconnect').length,
    seconds,
    captionsPerS: good.length / seconds,
    p50: percentile(lat, 50),
    p90: percentile(lat, 90),
    p99: percentile(lat, 99),
    ttftP50: percentile(ttft, 50),
    rowsPerStep: steps > 0 ? d('semicap_batch_row_steps_total') / steps : NaN,
    leftInFlight,
    rssMb: health.rssMb,
    failures,
  }
}

const f = (v: number, digits = 0) => (Number.isFinite(v) ? v.toFixed(digits) : '-')

function table(rows: LevelResult[]): string {
  const head = '| mode | clients | sent | ok | 503 | bad->400 | disconnects | lost | dup | unexpected | captions/s | p50 ms | p90 ms | p99 ms | stream TTFT p50 ms | rows/step | RSS MB |'
  const sep = '|' + head.split('|').slice(1, -1).map(() => ' --- ').join('|') + '|'
  const lines = rows.map((r) => `| ${r.mode} | ${r.concurrency} | ${r.sent}/${r.planned} | ${r.ok} | ${r.busy} | ${r.badAnswered} | ${r.disconnects} | ${r.lost} | ${r.duplicated} | ${r.unexpected} | ${f(r.captionsPerS, 1)} | ${f(r.p50)} | ${f(r.p90)} | ${f(r.p99)} | ${f(r.ttftP50)} | ${f(r.rowsPerStep, 2)} | ${r.rssMb} |`)
  return [head, sep, ...lines].join('\n')
}

async function warmUp(port: number, imgs: Buffer[]): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 4 })
  await Promise.all(Array.from({ length: 16 }, (_, i) => send(port, agent, 'plain', `warm-${i}`, imgs[i % imgs.length]!, minTok, 0)))
  agent.destroy()
}

async function levels(): Promise<number> {
  const levelList = values.concurrency ? [Number(values.concurrency)] : values.levels!.split(',').map(Number)
  const modes = values.modes!.split(',').map((m) => m.trim())
  const imgs = await images()
  const rows: LevelResult[] = []
  let ok = true
  for (const mode of modes) {
    if (mode !== 'batch' && mode !== 'nobatch') throw new Error(`--modes: batch or nobatch, got ${mode}`)
    const server = await startServer(['--max-batch', mode === 'batch' ? String(maxBatch) : '1'])
    const h = await getJson<Health>(server.port, '/healthz')
    const label = h.batching ? `batch ${h.maxBatch}` : mode === 'batch' ? 'batch (unavailable)' : 'max-batch 1'
    await warmUp(server.port, imgs)
    for (const c of levelList) {
      const r = await runLevel(server.port, label, c, imgs, { total: perLevel, timeMs: timeLimitMs, tag: `${mode}-${c}` })
      rows.push(r)
      console.error(`${label}, ${c} clients: ${r.ok} ok in ${r.seconds.toFixed(1)} s, p50 ${f(r.p50)} ms, p99 ${f(r.p99)} ms, ${r.lost} lost, ${r.duplicated} dup, ${r.unexpected} unexpected${r.leftInFlight ? ', LEFT IN FLIGHT' : ''}`)
      for (const x of r.failures) console.error(`  ${x}`)
      if (r.lost || r.duplicated || r.unexpected || r.mismatched || r.leftInFlight) ok = false
    }
    const stop = await stopServer(server)
    console.error(`${label}: SIGTERM -> exit ${stop.clean ? 'clean' : 'NOT CLEAN'} in ${stop.ms} ms`)
    if (!stop.clean) ok = false
  }
  console.log(table(rows))
  if (values.json) writeFileSync(values.json, JSON.stringify(rows, null, 2) + '\n')
  return ok ? 0 : 1
}

async function soak(seconds: number): Promise<number> {
  const concurrency = Number(values.concurrency ?? 16)
  const every = Number(values['sample-every']) * 1000
  const imgs = await images()
  const server = await startServer(['--max-batch', String(maxBatch)])
  await warmUp(server.port, imgs)
  const samples: { s: number; rssMb: number; served: number }[] = []
  const t0 = performance.now()
  const sample = async () => {
    const h = await getJson<Health>(server.port, '/healthz')
    samples.push({ s: (performance.now() - t0) / 1000, rssMb: h.rssMb, served: h.served })
  }
  await sample()
  const timer = setInterval(() => void sample().catch(() => undefined), every)
  // One long level, bounded by time only (the request bound is set out of reach).
  const r = await runLevel(server.port, 'soak', concurrency, imgs, { total: Number.MAX_SAFE_INTEGER, timeMs: seconds * 1000, tag: 'soak' })
  r.planned = r.sent
  clearInterval(timer)
  await sample()
  const stop = await stopServer(server)
  // Least-squares slope of RSS over time, after the first quarter (allocator warm-up).
  const tail = samples.filter((x) => x.s >= seconds / 4)
  const n = tail.length
  const mx = tail.reduce((a, x) => a + x.s, 0) / n
  const my = tail.reduce((a, x) => a + x.rssMb, 0) / n
  const slope = tail.reduce((a, x) => a + (x.s - mx) * (x.rssMb - my), 0) / Math.max(1e-9, tail.reduce((a, x) => a + (x.s - mx) ** 2, 0))
  const first = samples[0]!
  const last = samples.at(-1)!
  console.log(table([r]))
  console.log()
  console.log(`| t (s) | RSS MB | served |\n| --- | --- | --- |\n${samples.map((x) => `| ${x.s.toFixed(0)} | ${x.rssMb} | ${x.served} |`).join('\n')}`)
  console.log()
  console.log(`soak: ${seconds} s at ${concurrency} clients, ${r.ok} captions; RSS ${first.rssMb} -> ${last.rssMb} MB (min ${Math.min(...samples.map((x) => x.rssMb))}, max ${Math.max(...samples.map((x) => x.rssMb))}); growth ${last.rssMb - first.rssMb} MB; slope after warm-up ${f(slope * 60, 2)} MB/min; shutdown ${stop.clean ? 'clean' : 'NOT CLEAN'} in ${stop.ms} ms`)
  for (const x of r.failures) console.error(`  ${x}`)
  if (values.json) writeFileSync(values.json, JSON.stringify({ level: r, samples, slopeMbPerMin: slope * 60 }, null, 2) + '\n')
  return r.lost || r.duplicated || r.unexpected || r.mismatched || r.leftInFlight || !stop.clean ? 1 : 0
}

const main = values.soak !== undefined ? () => soak(Number(values.soak)) : levels
main().then(
  (code) => (process.exitCode = code),
  (err) => {
    console.error(err)
    process.exit(1)
  },
)
