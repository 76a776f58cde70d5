// examples/server as a service: multipart uploads, server-sent event streams (and clients that leave mid-stream),
// /metrics in Prometheus text format, graceful close, and the web page driven by a real headless Chromium over the
// DevTools protocol (CDP over --remote-debugging-pipe: no WebSocket client needed, no port to find).
import type { ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { request, type IncomingHttpHeaders } from 'node:http'
import { join } from 'node:path'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createCaptionServer, type CaptionServer } from '../examples/server/server.js'
import { parseMultipart } from '../examples/server/multipart.js'
import { Captioner } from '../lib/index.js'
import { makePngs, makeTinyCaptionModels } from './helpers/models.js'
import { closeChromium, launchChromium, type Cdp } from './helpers/cdp.js'
import { repoRoot, tempDir } from './helpers/paths.js'

const CHROMIUM = '/usr/bin/chromium'

let work: string
let cap: Captioner
let images: Buffer[]
let srv: CaptionServer
let port: number

beforeAll(async () => {
  work = tempDir('semicap-server-')
  const models = await makeTinyCaptionModels(work)
  cap = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  images = await makePngs(6)
  srv = createCaptionServer({ captioner: cap, maxBodyBytes: 64 * 1024, maxMultipartBytes: 256 * 1024, maxParts: 4, decode: { maxTokens: 12 } })
  port = await srv.listen(0, '127.0.0.1')
})

afterAll(async () => {
  await srv?.close()
  await cap?.dispose()
  if (work) rmSync(work, { recursive: true, force: true })
})

// ------------------------------------------------------------------ helpers

interface Answer {
  status: number
  headers: IncomingHttpHeaders
  body: Buffer
  json: Record<string, unknown>
}

function http(method: string, path: string, body?: Buffer, headers: Record<string, string | number> = {}, p = port): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: p, method, path, headers: body ? { 'content-length': body.length, ...headers } : headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const b = Buffer.concat(chunks)
        let json: Record<string, unknown> = {}
        try {
          json = JSON.parse(b.toString('utf8')) as Record<string, unknown>
        } catch {
          /* not JSON */
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: b, json })
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${path}: no answer within 30 s`)))
    req.end(body)
  })
}

function multipart(parts: { name: string; filename?: string; type?: string; data: Buffer }[], boundary = 'semicap-test-boundary-7f3a'): { body: Buffer; contentType: string } {
  const chunks: Buffer[] = []
  for (const p of parts) {
    const disp = `form-data; name="${p.name}"${p.filename !== undefined ? `; filename="${p.filename}"` : ''}`
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disp}\r\n${p.type ? `Content-Type: ${p.type}\r\n` : ''}\r\n`), p.data, Buffer.from('\r\n'))
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`))
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` }
}

interface SseEvent {
  event: string
  data: Record<string, unknown>
}

function parseSse(text: string): SseEvent[] {
  const out: SseEvent[] = []
  for (const block of text.split('\n\n')) {
    if (!block.trim()) continue
    let event = 'message'
    const data: string[] = []
    for (const line of block.split('\n')) {
      if (line.startsWith('event: ')) event = line.slice(7)
      else if (line.startsWith('data: ')) data.push(line.slice(6))
    }
    if (data.length) out.push({ event, data: JSON.parse(data.join('\n')) as Record<string, unknown> })
  }
  return out
}

/** Prometheus text: every line a comment or `name{labels} value`; returns samples keyed by `name{labels}`. */
function parseProm(text: string): Map<string, number> {
  const samples = new Map<string, number>()
  const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*")*)?\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$/
  const lines = text.split('\n')
  expect(lines.at(-1)).toBe('') // ends with a newline
  for (const line of lines.slice(0, -1)) {
    if (line.startsWith('# HELP ') || line.startsWith('# TYPE ')) {
      if (line.startsWith('# TYPE ')) expect(line).toMatch(/^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$/)
      continue
    }
    const m = sample.exec(line)
    expect(m, `not a Prometheus sample line: ${line}`).not.toBeNull()
    samples.set(`${m![1]}${m![2] ?? ''}`, Number(m![3]!.replace('+Inf', 'Infinity')))
  }
  return samples
}

async function metrics(): Promise<Map<string, number>> {
  const r = await http('GET', '/metrics')
  expect(r.status).toBe(200)
  expect(r.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/)
  return parseProm(r.body.toString('utf8'))
}

async function until(what: string, ok: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const alone = async (img: Buffer, maxTokens = 12): Promise<string> => (await cap.caption([img], { maxTokens, decoding: 'greedy' }))[0]!.text

// ------------------------------------------------------------------ multipart

describe('multipart parser', () => {
  it('takes quoted boundaries, a preamble, an epilogue, transport padding and empty parts', () => {
    const body = Buffer.from('preamble to ignore\r\n--b"x\r\nContent-Disposition: form-data; name="a"; filename="x \\"y\\".png"\r\nContent-Type: IMAGE/PNG\r\n\r\nAB\r\nCD\r\n--b"x  \r\ncontent-disposition: form-data; name=b\r\n\r\n\r\n--b"x--\r\nepilogue')
    const parts = parseMultipart(body, 'b"x')
    expect(parts.map((p) => [p.field, p.filename, p.contentType, p.data.toString()])).toEqual([
      ['a', 'x "y".png', 'image/png', 'AB\r\nCD'],
      ['b', undefined, undefined, ''],
    ])
  })
})

describe('POST /caption multipart', () => {
  it('3 images -> 3 captions, each equal to caption() of that image alone', async () => {
    const { body, contentType } = multipart([
      { name: 'image', filename: 'first.png', type: 'image/png', data: images[0]! },
      { name: 'image', filename: 'second.png', type: 'image/png', data: images[1]! },
      { name: 'third', data: images[2]! },
    ])
    const r = await http('POST', '/caption', body, { 'content-type': contentType })
    expect(r.status, r.body.toString()).toBe(200)
    const captions = r.json.captions as { name: string; caption: string; score: number; ms: number }[]
    expect(captions.map((c) => c.name)).toEqual(['first.png', 'second.png', 'third'])
    for (let i = 0; i < 3; i++) {
      expect(captions[i]!.caption).toBe(await alone(images[i]!))
      expect(typeof captions[i]!.score).toBe('number')
      expect(captions[i]!.ms).toBeGreaterThanOrEqual(0)
    }
    // The raw-body answer keeps its single-image shape.
    const raw = await http('POST', '/caption', images[3]!, { 'content-type': 'image/png' })
    expect(raw.status).toBe(200)
    expect(Object.keys(raw.json).sort()).toEqual(['caption', 'ms', 'score'])
    expect(raw.json.caption).toBe(await alone(images[3]!))
  })

  it('malformed multipart -> 400, too many parts / too large -> 413, a bad image part -> 400 naming it', async () => {
    const good = multipart([{ name: 'a', filename: 'a.png', data: images[0]! }])
    const cases: [string, Buffer, string][] = [
      ['no boundary parameter', good.body, 'multipart/form-data'],
      ['boundary with a character outside bchars', good.body, 'multipart/form-data; boundary="a@b"'],
      ['boundary over 70 characters', good.body, `multipart/form-data; boundary=${'x'.repeat(71)}`],
      ['boundary not in the body', Buffer.from('hello there'), good.contentType],
      ['no close delimiter', good.body.subarray(0, good.body.length - 30), good.contentType],
      ['header line without a colon', Buffer.from('--b\r\nContent-Disposition form-data; name="a"\r\n\r\nxx\r\n--b--\r\n'), 'multipart/form-data; boundary=b'],
      ['no Content-Disposition', Buffer.from('--b\r\nContent-Type: image/png\r\n\r\nxx\r\n--b--\r\n'), 'multipart/form-data; boundary=b'],
      ['not form-data', Buffer.from('--b\r\nContent-Disposition: attachment; name="a"\r\n\r\nxx\r\n--b--\r\n'), 'multipart/form-data; boundary=b'],
      ['junk after a delimiter', Buffer.from('--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nxx\r\n--bjunk\r\n--b--\r\n'), 'multipart/form-data; boundary=b'],
      ['no parts', Buffer.from('--b--\r\n'), 'multipart/form-data; boundary=b'],
    ]
    for (const [what, body, ct] of cases) {
      const r = await http('POST', '/caption', body, { 'content-type': ct })
      expect(r.status, what).toBe(400)
      expect(typeof (r.json.error as { code?: unknown })?.code, what).toBe('string')
    }
    const five = multipart(Array.from({ length: 5 }, (_, i) => ({ name: `p${i}`, filename: `${i}.png`, data: images[i]! })))
    const tooMany = await http('POST', '/caption', five.body, { 'content-type': five.contentType })
    expect(tooMany.status).toBe(413)
    expect(tooMany.json.error).toMatchObject({ code: 'E_TOO_MANY_PARTS' })
    const bigPart = multipart([{ name: 'a', filename: 'big.png', data: Buffer.alloc(100 * 1024, 1) }])
    const tooLarge = await http('POST', '/caption', bigPart.body, { 'content-type': bigPart.contentType })
    expect(tooLarge.status).toBe(413)
    expect(tooLarge.json.error).toMatchObject({ code: 'E_TOO_LARGE' })
    // 4 parts each under the part limit (64 KiB), over the body limit (256 KiB) in all.
    const huge = multipart(Array.from({ length: 4 }, (_, i) => ({ name: `p${i}`, data: Buffer.alloc(65_500, 2) })))
    expect(huge.body.length).toBeGreaterThan(256 * 1024)
    const tooLargeInAll = await http('POST', '/caption', huge.body, { 'content-type': huge.contentType })
    expect(tooLargeInAll.status).toBe(413)
    expect(tooLargeInAll.json.error).toMatchObject({ code: 'E_TOO_LARGE' })
    const badPart = multipart([
      { name: 'a', filename: 'ok.png', data: images[0]! },
      { name: 'b', filename: 'not-an-image.png', data: Buffer.from('nope, text') },
    ])
    const bad = await http('POST', '/caption', badPart.body, { 'content-type': badPart.contentType })
    expect(bad.status).toBe(400)
    expect(bad.json.error).toMatchObject({ code: 'E_IMAGE' })
    expect((bad.json.error as { message: string }).message).toContain('not-an-image.png')
    expect((bad.json.error as { message: string }).message).not.toContain(repoRoot)
    // The server is fine afterwards, and every slot came back.
    expect(srv.stats()).toMatchObject({ active: 0, queued: 0 })
    expect((await http('POST', '/caption', good.body, { 'content-type': good.contentType })).status).toBe(200)
  })
})

// ------------------------------------------------------------------ streaming

describe('POST /caption/stream', () => {
  it('streams token events whose text joins to the done caption (= caption() alone)', async () => {
    for (const i of [0, 4, 5]) {
      const r = await http('POST', '/caption/stream?maxTokens=12', images[i]!)
      expect(r.status).toBe(200)
      expect(r.headers['content-type']).toMatch(/^text\/event-stream/)
      const events = parseSse(r.body.toString('utf8'))
      const done = events.filter((e) => e.event === 'done')
      expect(done).toHaveLength(1)
      expect(events.at(-1)!.event).toBe('done')
      const tokens = events.filter((e) => e.event === 'token').map((e) => e.data.text as string)
      const caption = done[0]!.data.caption as string
      expect(tokens.join('')).toBe(caption)
      expect(caption).toBe(await alone(images[i]!))
      expect(done[0]!.data.ms).toBeGreaterThanOrEqual(0)
      // The library streams: one event per decoded piece, not the caption in one go.
      if (cap.batchStats().maxBatch > 1 && caption.split(' ').length > 2) expect(tokens.length).toBeGreaterThan(1)
    }
    // Errors before the stream starts are plain JSON answers with a status.
    const bad = await http('POST', '/caption/stream', Buffer.from('not an image'))
    expect(bad.status).toBe(400)
    expect(bad.json.error).toMatchObject({ code: 'E_IMAGE' })
    const mp = multipart([{ name: 'a', data: images[0]! }])
    expect((await http('POST', '/caption/stream', mp.body, { 'content-type': mp.contentType })).status).toBe(415)
    expect((await http('GET', '/caption/stream')).status).toBe(405)
  })

  it('clients that disconnect mid-stream abort their rows; the server carries on', async () => {
    const before = await metrics()
    const disconnects = () => (before.get('semicap_streams_total{outcome="disconnect"}') ?? 0)
    const n = 8
    const gone = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        new Promise<string>((resolve, reject) => {
          const body = images[i % 6]!
          const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/caption/stream?maxTokens=40', headers: { 'content-length': body.length } }, (res) => {
            // Leave after the first event (or right after the headers for odd i).
            if (i % 2) {
              req.destroy()
              return resolve('headers')
            }
            res.once('data', () => {
              req.destroy()
              resolve('token')
            })
            res.on('end', () => resolve('end'))
          })
          req.on('error', (e) => (String(e).includes('socket hang up') ? resolve('hangup') : reject(e)))
          req.end(body)
        }),
      ),
    )
    expect(gone).toHaveLength(n)
    // Every stream ended one way or the other, nothing is left in the batch or in flight.
    await until('the streams to end', async () => {
      const m = await metrics()
      const ended = ['done', 'disconnect', 'error'].reduce((s, o) => s + (m.get(`semicap_streams_total{outcome="${o}"}`) ?? 0) - (before.get(`semicap_streams_total{outcome="${o}"}`) ?? 0), 0)
      return ended === n && m.get('semicap_active_rows') === 0 && m.get('semicap_images_in_flight') === 0 && m.get('semicap_requests_in_flight') === 1
    })
    const after = await metrics()
    const cut = (after.get('semicap_streams_total{outcome="disconnect"}') ?? 0) - disconnects()
    console.log(`disconnect test: ${cut} of ${n} streams were cut mid-stream (the others had finished first)`)
    expect(after.get('semicap_streams_total{outcome="error"}') ?? 0).toBe(before.get('semicap_streams_total{outcome="error"}') ?? 0)
    if (cut > 0) expect(after.get('semicap_http_requests_total{route="/caption/stream",method="POST",code="499"}')).toBeGreaterThanOrEqual(cut)
    // Each stream cut short was aborted in the library (its row taken out of the batch), none failed.
    const batch = (m: Map<string, number>, outcome: string) => m.get(`semicap_batch_requests_total{outcome="${outcome}"}`) ?? 0
    expect(batch(after, 'aborted') - batch(before, 'aborted')).toBe(cut)
    expect(batch(after, 'failed')).toBe(batch(before, 'failed'))
    const stats = cap.batchStats()
    expect(stats.active).toBe(0)
    expect(stats.queued).toBe(0)
    expect(srv.stats()).toMatchObject({ active: 0, queued: 0 })
    // And it still captions, the same as before.
    const r = await http('POST', '/caption/stream?maxTokens=12', images[2]!)
    expect(parseSse(r.body.toString()).at(-1)!.data.caption).toBe(await alone(images[2]!))
  })
})

// ------------------------------------------------------------------ health, metrics, routes

describe('health, metrics and routes', () => {
  it('/healthz and /health answer; 404 / 405 with Allow', async () => {
    for (const path of ['/healthz', '/health']) {
      const h = await http('GET', path)
      expect(h.status).toBe(200)
      expect(h.json).toMatchObject({ status: 'ok', live: true, ready: true, batching: true })
      expect(h.json.rssMb).toBeGreaterThan(0)
    }
    expect((await http('GET', '/nope')).status).toBe(404)
    const wrong = await http('DELETE', '/metrics')
    expect(wrong.status).toBe(405)
    expect(wrong.headers.allow).toBe('GET, HEAD')
    expect((await http('GET', '/caption')).status).toBe(405)
    const page = await http('GET', '/')
    expect(page.status).toBe(200)
    expect(page.headers['content-type']).toMatch(/text\/html/)
    expect(page.headers['content-security-policy']).toContain("default-src 'self'")
  })

  it('/metrics is Prometheus text and its counters move with requests', async () => {
    const before = await metrics()
    for (const name of ['semicap_queue_depth{stage="server"}', 'semicap_queue_depth{stage="batch"}', 'semicap_active_rows', 'process_resident_memory_bytes', 'semicap_batch_max_rows']) {
      expect(before.has(name), name).toBe(true)
    }
    expect(before.get('process_resident_memory_bytes')).toBeGreaterThan(10 * 2 ** 20)
    const ok = '{route="/caption",method="POST",code="200"}'
    const bad = '{route="/caption",method="POST",code="400"}'
    await Promise.all(images.slice(0, 4).map((img) => http('POST', '/caption', img)))
    await http('POST', '/caption', Buffer.from('not an image'))
    const after = await metrics()
    expect((after.get(`semicap_http_requests_total${ok}`) ?? 0) - (before.get(`semicap_http_requests_total${ok}`) ?? 0)).toBe(4)
    expect((after.get(`semicap_http_requests_total${bad}`) ?? 0) - (before.get(`semicap_http_requests_total${bad}`) ?? 0)).toBe(1)
    expect(after.get('semicap_http_request_duration_seconds_count')! - (before.get('semicap_http_request_duration_seconds_count') ?? 0)).toBe(4)
    expect(after.get('semicap_http_request_duration_seconds_bucket{le="+Inf"}')).toBe(after.get('semicap_http_request_duration_seconds_count'))
    for (const q of ['0.5', '0.9', '0.99']) expect(after.get(`semicap_http_request_latency_seconds{quantile="${q}"}`)).toBeGreaterThan(0)
    // The batch-size histogram comes from the captioner's own counters.
    const steps = after.get('semicap_batch_steps_total')!
    expect(steps).toBeGreaterThan(before.get('semicap_batch_steps_total') ?? 0)
    expect(after.get('semicap_batch_rows_count')).toBe(steps)
    expect(after.get('semicap_batch_rows_bucket{le="+Inf"}')).toBe(steps)
    expect(after.get('semicap_batch_rows_sum')).toBe(after.get('semicap_batch_row_steps_total'))
    // Buckets are cumulative.
    let prev = 0
    for (const le of ['1', '2', '4', '8', '16', '32', '64', '128', '256']) {
      const v = after.get(`semicap_batch_rows_bucket{le="${le}"}`)!
      expect(v).toBeGreaterThanOrEqual(prev)
      prev = v
    }
  })

  it('close() lets requests in flight finish, then refuses new connections', async () => {
    const s = createCaptionServer({ captioner: cap, decode: { maxTokens: 12 } })
    const p = await s.listen(0, '127.0.0.1')
    // Two requests whose bodies are half sent when close() is called: a stream and a plain caption.
    const started = [
      ['/caption/stream?maxTokens=30', images[0]!],
      ['/caption?maxTokens=30', images[1]!],
    ].map(([path, body]) => {
      const b = body as Buffer
      let req!: ReturnType<typeof request>
      const answer = new Promise<Answer>((resolve, reject) => {
        req = request({ host: '127.0.0.1', port: p, method: 'POST', path: path as string, headers: { 'content-length': b.length } }, (res) => {
          const chunks: Buffer[] = []
          res.on('data', (c: Buffer) => chunks.push(c))
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString()
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.from(text), json: text.startsWith('{') ? (JSON.parse(text) as Record<string, unknown>) : {} })
          })
        })
        req.on('error', reject)
      })
      req.write(b.subarray(0, b.length >> 1))
      return { req, b, answer }
    })
    await until('the requests to be in flight', () => s.stats().inFlight === 2, 5_000)
    const closed = s.close()
    await new Promise((r) => setTimeout(r, 100))
    // Not accepting any more, already.
    await expect(http('GET', '/healthz', undefined, {}, p)).rejects.toThrow(/ECONNREFUSED/)
    for (const { req, b } of started) req.end(b.subarray(b.length >> 1))
    const [stream, plain] = await Promise.all(started.map((x) => x.answer))
    await closed
    expect(stream.status).toBe(200)
    expect(parseSse(stream.body.toString()).at(-1)).toMatchObject({ event: 'done', data: { caption: await alone(images[0]!, 30) } })
    expect(plain.status).toBe(200)
    expect(plain.json.caption).toBe(await alone(images[1]!, 30))
    expect(plain.headers.connection).toBe('close')
  })
})

// ------------------------------------------------------------------ the page in Chromium

describe('the web page in headless Chromium', () => {
  let chromium: ChildProcess | undefined
  let cdp: Cdp | undefined
  let profile: string | undefined
  afterAll(async () => {
    await closeChromium(chromium, cdp)
    if (profile) {
      try {
        rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 })
      } catch (err) {
        console.warn(`could not remove ${profile}: ${(err as Error).message}`)
      }
    }
  })

  it('picking 4 images shows 4 cards whose captions stream in and equal the server captions, with times; screenshot', async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: install it (apt-get install -y chromium); this test needs a browser`)
    // Thumbnails worth looking at: gradients and shapes, plus two of the test PNGs.
    const dir = join(work, 'uploads')
    mkdirSync(dir, { recursive: true })
    const files: { path: string; data: Buffer }[] = []
    const colours = [
      ['sunset.png', '#ff7e5f', '#feb47b'],
      ['sea.png', '#2b5876', '#4e4376'],
    ]
    for (const [name, a, b] of colours) {
      const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120"><defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="${a}"/><stop offset="1" stop-color="${b}"/></linearGradient></defs><rect width="160" height="120" fill="url(#g)"/><circle cx="110" cy="45" r="22" fill="#fff8"/></svg>`
      files.push({ path: join(dir, name!), data: await sharp(Buffer.from(svg)).png().toBuffer() })
    }
    files.push({ path: join(dir, 'noise.png'), data: images[0]! }, { path: join(dir, 'stripes.png'), data: images[1]! })
    for (const f of files) writeFileSync(f.path, f.data)
    const expected = new Map<string, string>()
    for (const f of files) expected.set(f.path.split('/').at(-1)!, await alone(f.data, 20))

    profile = tempDir('semicap-chromium-')
    const launched = launchChromium(CHROMIUM, profile, '1000,900')
    chromium = launched.process
    const exited = launched.exited
    cdp = launched.cdp
    const c = cdp
    const go = async () => {
      const { targetId } = (await c.send('Target.createTarget', { url: 'about:blank' })) as { targetId: string }
      const { sessionId } = (await c.send('Target.attachToTarget', { targetId, flatten: true })) as { sessionId: string }
      const s = (method: string, params: Record<string, unknown> = {}) => c.send(method, params, sessionId)
      await s('Page.enable')
      await s('Runtime.enable')
      await s('Emulation.setDeviceMetricsOverride', { width: 1000, height: 900, deviceScaleFactor: 1, mobile: false })
      const loaded = c.waitFor('Page.loadEventFired', sessionId)
      await s('Page.navigate', { url: `http://127.0.0.1:${port}/` })
      await loaded
      const evaluate = async <T>(expression: string): Promise<T> => {
        const r = (await s('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true })) as { result: { value: T }; exceptionDetails?: unknown }
        if (r.exceptionDetails) throw new Error(`page: ${JSON.stringify(r.exceptionDetails)}`)
        return r.result.value
      }
      await until('the page to load its script', async () => (await evaluate<string>('document.getElementById("server-info").textContent')) !== 'connecting…', 10_000)
      const { root } = (await s('DOM.getDocument')) as { root: { nodeId: number } }
      const { nodeId } = (await s('DOM.querySelector', { nodeId: root.nodeId, selector: 'input[type=file]' })) as { nodeId: number }
      await s('DOM.setFileInputFiles', { nodeId, files: files.map((f) => f.path) })
      type Card = { name: string; state: string; caption: string; dataCaption: string | undefined; pieces: number; time: string; thumbLoaded: boolean }
      const read = () =>
        evaluate<Card[]>(`[...document.querySelectorAll('.card')].map((c) => ({ name: c.dataset.name, state: c.dataset.state, caption: c.querySelector('.caption').textContent,
          dataCaption: c.dataset.caption, pieces: Number(c.dataset.pieces ?? 0), time: c.querySelector('.time').textContent, thumbLoaded: c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0 }))`)
      let cards: Card[] = []
      await until('4 captions', async () => {
        cards = await read()
        return cards.length === files.length && cards.every((c) => c.state === 'done' || c.state === 'error')
      }, 30_000)
      await until('the thumbnails', async () => (await read()).every((c) => c.thumbLoaded), 5_000)
      const info = await evaluate<string>('document.getElementById("server-info").textContent')
      const shot = (await s('Page.captureScreenshot', { format: 'png' })) as { data: string }
      return { cards, info, shot: Buffer.from(shot.data, 'base64') }
    }
    const { cards, info, shot } = await Promise.race([go(), exited])

    const out = join(repoRoot, 'test', '.tmp')
    mkdirSync(out, { recursive: true })
    const path = join(out, 'server-page.png')
    writeFileSync(path, shot)
    console.log(`page screenshot: ${path}`)
    const meta = await sharp(shot).stats()
    expect((await sharp(shot).metadata()).width).toBe(1000)
    // Not blank: the channels vary.
    expect(meta.channels.some((ch) => ch.stdev > 10)).toBe(true)
    expect(info).toMatch(/^ok · continuous batching/)
    expect(cards).toHaveLength(files.length)
    for (const c of cards) {
      expect(c.state, `${c.name}: ${c.caption}`).toBe('done')
      expect(c.caption.length).toBeGreaterThan(0)
      expect(c.caption).toBe(expected.get(c.name))
      expect(c.dataCaption).toBe(c.caption)
      // It arrived in pieces (token events), not in one go.
      if (c.caption.split(' ').length > 2) expect(c.pieces).toBeGreaterThan(1)
      expect(c.time).toMatch(/^\d+ ms$/)
    }
    expect(new Set(cards.map((c) => c.name))).toEqual(new Set(expected.keys()))
  })
})
