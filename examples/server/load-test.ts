// A bounded load test of examples/server/server.ts over 127.0.0.1 only: a fixed number of requests at a fixed
// concurrency, under a time limit. Starts the server as a child process (so that its RSS is its own), sends PNG/JPEG
// images (and a share of deliberately bad ones, which must get 400 E_IMAGE), and reports latency percentiles, status
// counts, throughput and the server's RSS before and after. Every request must be answered: none lost.
//
//   node --import tsx examples/server/load-test.ts [--requests 500] [--concurrency 16] [--time-limit 120]
//        [--bad-ratio 0.05] [--server-args "--tiny"]
//
// Exit status 0 when every request got an answer and no answer was unexpected (5xx, or 4xx for a good image).
import { spawn } from 'node:child_process'
import { Agent, request } from 'node:http'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import sharp from 'sharp'

const here = dirname(fileURLToPath(import.meta.url))
const repoRoot = join(here, '..', '..')

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '500' },
    concurrency: { type: 'string', default: '16' },
    'time-limit': { type: 'string', default: '120' },
    'bad-ratio': { type: 'string', default: '0.05' },
    'server-args': { type: 'string', default: '--tiny' },
  },
})
const total = Number(values.requests)
const concurrency = Number(values.concurrency)
const timeLimitMs = Number(values['time-limit']) * 1000
const badRatio = Number(values['bad-ratio'])

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

interface Answer {
  status: number
  code?: string
  ms: number
}

const agent = new Agent({ keepAlive: true, maxSockets: concurrency })

function post(port: number, body: Buffer, path: string): Promise<Answer> {
  const t0 = performance.now()
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method: 'POST', path, agent, headers: { 'content-type': 'application/octet-stream', 'content-length': body.length } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        let code: string | undefined
        try {
          code = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error?: { code?: string } }).error?.code
        } catch {
          code = 'E_BAD_JSON'
        }
        resolve({ status: res.statusCode ?? 0, code, ms: performance.now() - t0 })
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

async function health(port: number): Promise<{ rssMb: number; served: number }> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: '/health', agent }, (res) => {
      let s = ''
      res.on('data', (c) => (s += c))
      res.on('end', () => resolve(JSON.parse(s) as { rssMb: number; served: number }))
    })
      .on('error', reject)
      .end()
  })
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

async function main(): Promise<void> {
  const serverArgs = values['server-args']!.split(/\s+/).filter(Boolean)
  const server = spawn(process.execPath, ['--import', 'tsx', join(here, 'server.ts'), '--port', '0', '--host', '127.0.0.1', ...serverArgs], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const port = await new Promise<number>((resolve, reject) => {
    let out = ''
    server.stdout!.on('data', (d: Buffer) => {
      out += d
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)
      if (m) resolve(Number(m[1]))
    })
    server.on('exit', (code) => reject(new Error(`server exited (${code}) before listening`)))
    setTimeout(() => reject(new Error('server did not start within 60 s')), 60_000).unref()
  })
  const imgs = await images()
  const bad = Buffer.from('this is not an image')
  // Warm-up: the first calls pay for allocator and thread start-up.
  for (let i = 0; i < 8; i++) await post(port, imgs[i % imgs.length]!, '/caption')
  const before = await health(port)

  const answers: (Answer & { good: boolean })[] = []
  const failures: string[] = []
  let next = 0
  let lost = 0
  const t0 = performance.now()
  const deadline = t0 + timeLimitMs
  // Deterministic choice of bad requests: every 1/badRatio-th.
  const isBad = (i: number) => badRatio > 0 && i % Math.round(1 / badRatio) === 7
  const worker = async () => {
    while (next < total && performance.now() < deadline) {
      const i = next++
      const good = !isBad(i)
      try {
        answers.push({ ...(await post(port, good ? imgs[i % imgs.length]! : bad, `/caption?maxTokens=${10 + (i % 10)}`)), good })
      } catch (err) {
        lost++
        failures.push(`request ${i}: ${(err as Error).message}`)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  const seconds = (performance.now() - t0) / 1000
  const after = await health(port)
  server.kill('SIGTERM')
  await new Promise((r) => server.once('exit', r))
  agent.destroy()

  const sent = answers.length + lost
  const byStatus: Record<string, number> = {}
  for (const a of answers) byStatus[`${a.status}${a.code ? ` ${a.code}` : ''}`] = (byStatus[`${a.status}${a.code ? ` ${a.code}` : ''}`] ?? 0) + 1
  const goodLatency = answers.filter((a) => a.good && a.status === 200).map((a) => a.ms).sort((a, b) => a - b)
  // 503 (queue full) is a correct answer for any request; a bad image must otherwise get 400 E_IMAGE.
  const unexpected = answers.filter((a) => a.status !== 503 && (a.good ? a.status !== 200 : a.status !== 400 || a.code !== 'E_IMAGE'))
  const report = {
    requests: { planned: total, sent, answered: answers.length, lost, notSentBeforeTimeLimit: total - sent },
    concurrency,
    seconds: Number(seconds.toFixed(2)),
    throughputPerS: Number((answers.length / seconds).toFixed(1)),
    latencyMs: { p50: Number(percentile(goodLatency, 50).toFixed(1)), p90: Number(percentile(goodLatency, 90).toFixed(1)), p99: Number(percentile(goodLatency, 99).toFixed(1)), max: Number((goodLatency.at(-1) ?? NaN).toFixed(1)) },
    statuses: byStatus,
    unexpected: unexpected.length,
    serverRssMb: { before: before.rssMb, after: after.rssMb },
    served: after.served - before.served,
  }
  console.log(JSON.stringify(report, null, 2))
  if (failures.length) console.error(failures.slice(0, 10).join('\n'))
  process.exitCode = lost === 0 && unexpected.length === 0 && sent === total ? 0 : 1
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
