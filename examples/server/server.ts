// A small HTTP captioning service over one Captioner (node:http, no framework).
//
//   POST /caption            body: the image bytes (JPEG, PNG, WebP, GIF, TIFF...)  -> 200 { caption, score, ms }
//        ?maxTokens=20&decoding=greedy|beam&beams=3
//   GET  /health             -> 200 { status, active, queued, served, rssMb, uptimeS }
//
// Guards: bodies over maxBodyBytes -> 413 (from Content-Length before reading, or while streaming); more than
// maxActive + maxQueued requests at once -> 503 with Retry-After; images over maxPixels -> 400 E_IMAGE before they
// are decoded; a request that takes longer than requestTimeoutMs -> 408. Library errors -> 400 with the
// SemicapError code (500 for E_NATIVE and other server-side failures); the message never includes a server path.
//
// Run: node --import tsx examples/server/server.ts --model <captioner folder> [--port 8080] [--host 127.0.0.1]
//      node --import tsx examples/server/server.ts --clip <hf clip> --gpt2 <hf gpt2>
//      node --import tsx examples/server/server.ts --tiny        (the test suite's tiny random models; needs ../shared)
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Captioner, SemicapError, type DecodeOptions } from '../../lib/index.js'

export interface CaptionServerOptions {
  captioner: Captioner
  /** Largest request body (default 8 MiB). */
  maxBodyBytes?: number
  /** Requests captioned at once (default 4: image decoding overlaps; the model itself runs one batch at a time). */
  maxActive?: number
  /** Requests waiting beyond those (default 32); more get 503. */
  maxQueued?: number
  /** Decompression-bomb guard for uploaded images (default 40 Mpx). */
  maxPixels?: number
  /** Longest maxTokens a client may ask for (default 40). */
  maxTokensLimit?: number
  /** Whole-request deadline (default 30 s). */
  requestTimeoutMs?: number
  /** Decoding defaults (greedy, maxTokens 20). */
  decode?: DecodeOptions
}

export interface CaptionServer {
  server: Server
  /** Resolves once listening; the bound port (0 picks a free one). */
  listen(port: number, host?: string): Promise<number>
  /** Stops accepting, waits for requests in flight, closes idle keep-alive sockets. */
  close(): Promise<void>
  stats(): { active: number; queued: number; served: number; rejected: number }
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

/** Client-side problems: the request's image or options. Everything else is the server's fault (500). */
const CLIENT_CODES = new Set(['E_IMAGE', 'E_VALUE', 'E_SHAPE', 'E_DTYPE', 'E_CONFIG'])

function send(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return
  const text = JSON.stringify(body) + '\n'
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), ...headers })
  res.end(text)
}

/** Reads the body up to `limit` bytes; past it, rejects with 413 (the caller answers and closes the connection). */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'])
    if (Number.isFinite(declared) && declared > limit) return reject(new HttpError(413, 'E_TOO_LARGE', `body of ${declared} bytes exceeds the limit of ${limit}`))
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > limit) {
        reject(new HttpError(413, 'E_TOO_LARGE', `body exceeds the limit of ${limit} bytes`))
        req.pause()
        return
      }
      chunks.push(c)
    })
    req.on('end', () => resolve(Buffer.concat(chunks, size)))
    req.on('error', reject)
    req.on('aborted', () => reject(new HttpError(400, 'E_ABORTED', 'request aborted')))
  })
}

function decodeOptions(url: URL, defaults: DecodeOptions, maxTokensLimit: number): DecodeOptions {
  const o: DecodeOptions = { ...defaults }
  const int = (name: string, min: number, max: number): number | undefined => {
    const v = url.searchParams.get(name)
    if (v === null) return undefined
    const n = Number(v)
    if (!/^\d+$/.test(v) || n < min || n > max) throw new HttpError(400, 'E_VALUE', `${name} must be an integer in [${min}, ${max}]`)
    return n
  }
  o.maxTokens = int('maxTokens', 1, maxTokensLimit) ?? o.maxTokens
  const decoding = url.searchParams.get('decoding')
  if (decoding !== null) {
    if (decoding !== 'greedy' && decoding !== 'beam') throw new HttpError(400, 'E_VALUE', `decoding must be greedy or beam`)
    o.decoding = decoding
  }
  o.beams = int('beams', 1, 8) ?? o.beams
  return o
}

export function createCaptionServer(options: CaptionServerOptions): CaptionServer {
  const cap = options.captioner
  const maxBodyBytes = options.maxBodyBytes ?? 8 << 20
  const maxActive = options.maxActive ?? 4
  const maxQueued = options.maxQueued ?? 32
  const maxPixels = options.maxPixels ?? 40e6
  const maxTokensLimit = options.maxTokensLimit ?? 40
  const requestTimeoutMs = options.requestTimeoutMs ?? 30_000
  const defaults: DecodeOptions = { decoding: 'greedy', maxTokens: 20, ...options.decode }
  const started = Date.now()
  let active = 0
  let served = 0
  let rejected = 0
  const waiting: (() => void)[] = []

  /** Admission: run now, wait in a bounded queue, or refuse (503). */
  async function admit<T>(job: () => Promise<T>): Promise<T> {
    if (active >= maxActive) {
      if (waiting.length >= maxQueued) throw new HttpError(503, 'E_BUSY', `server busy: ${active} requests running and ${waiting.length} queued`)
      await new Promise<void>((resolve) => waiting.push(resolve))
    } else {
      active++
    }
    try {
      return await job()
    } finally {
      const next = waiting.shift()
      if (next) next() // hand the slot over: `active` stays the same
      else active--
    }
  }

  async function caption(req: IncomingMessage, url: URL): Promise<object> {
    const opts = decodeOptions(url, defaults, maxTokensLimit)
    const body = await readBody(req, maxBodyBytes)
    if (body.length === 0) throw new HttpError(400, 'E_IMAGE', 'empty body: send the image bytes')
    return admit(async () => {
      const t0 = performance.now()
      const pixels = await cap.clip.preprocess([body], { maxPixels })
      const [c] = await cap.caption(pixels, opts)
      return { caption: c!.text, score: c!.score, ms: Math.round(performance.now() - t0) }
    })
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost')
    res.setTimeout(requestTimeoutMs, () => {
      send(res, 408, { error: { code: 'E_TIMEOUT', message: `request took longer than ${requestTimeoutMs} ms` } }, { connection: 'close' })
      req.destroy()
    })
    const route = `${req.method} ${url.pathname}`
    if (route === 'GET /health') {
      return send(res, 200, { status: 'ok', active, queued: waiting.length, served, rejected, rssMb: Math.round(process.memoryUsage().rss / 2 ** 20), uptimeS: Math.round((Date.now() - started) / 1000) })
    }
    if (route !== 'POST /caption') {
      const known = url.pathname === '/caption' || url.pathname === '/health'
      req.resume()
      return send(res, known ? 405 : 404, { error: { code: known ? 'E_METHOD' : 'E_NOT_FOUND', message: `${route} is not served` } })
    }
    caption(req, url).then(
      (body) => {
        served++
        send(res, 200, body)
      },
      (err: unknown) => {
        let status = 500
        let code = 'E_INTERNAL'
        let message = 'internal error'
        if (err instanceof HttpError) ({ status, code, message } = err)
        else if (err instanceof SemicapError) {
          code = err.code
          status = CLIENT_CODES.has(err.code) ? 400 : 500
          // Library messages can name files; an uploaded image has none, but be safe: no absolute paths out.
          message = status === 400 ? err.message.replace(/\/[^\s:()]+/g, '<path>') : `captioning failed (${err.code})`
        } else if (err instanceof TypeError || err instanceof RangeError) {
          status = 400
          code = 'E_VALUE'
          message = err.message
        }
        if (status === 503 || status === 413) rejected++
        if (status >= 500 && status !== 503) console.error(`POST /caption: ${(err as Error)?.stack ?? String(err)}`)
        // 413 with a body still arriving: answer, then close the connection instead of reading the rest.
        send(res, status, { error: { code, message } }, status === 503 ? { 'retry-after': '1' } : status === 413 ? { connection: 'close' } : {})
        if (status === 413) res.on('finish', () => req.destroy())
      },
    )
  })
  server.headersTimeout = 10_000
  server.requestTimeout = requestTimeoutMs + 5_000
  server.keepAliveTimeout = 5_000

  return {
    server,
    listen: (port, host = '127.0.0.1') =>
      new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => resolve((server.address() as AddressInfo).port))
      }),
    close: () =>
      new Promise((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()))
        server.closeIdleConnections()
      }),
    stats: () => ({ active, queued: waiting.length, served, rejected }),
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      clip: { type: 'string' },
      gpt2: { type: 'string' },
      tiny: { type: 'boolean', default: false },
      port: { type: 'string', default: '8080' },
      host: { type: 'string', default: '127.0.0.1' },
      'max-active': { type: 'string' },
      'max-queued': { type: 'string' },
      'max-body-mb': { type: 'string' },
    },
  })
  let captioner: Captioner
  if (values.model) captioner = await Captioner.load(values.model, { device: 'auto' })
  else if (values.clip && values.gpt2) captioner = await Captioner.create({ clip: values.clip, gpt2: values.gpt2, device: 'auto' })
  else if (values.tiny) {
    const { makeTinyModels } = await import('../../test/helpers/models.js')
    const m = await makeTinyModels()
    captioner = await Captioner.create({ clip: m.clipDir, gpt2: m.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  } else {
    console.error('usage: server.ts --model <dir> | --clip <dir> --gpt2 <dir> | --tiny  [--port 8080] [--host 127.0.0.1]')
    process.exit(2)
  }
  const num = (v: string | undefined) => (v === undefined ? undefined : Number(v))
  const s = createCaptionServer({
    captioner,
    maxActive: num(values['max-active']),
    maxQueued: num(values['max-queued']),
    maxBodyBytes: values['max-body-mb'] ? Number(values['max-body-mb']) * 2 ** 20 : undefined,
  })
  const port = await s.listen(Number(values.port), values.host)
  // The load test reads this line to find an ephemeral port.
  console.log(`listening on http://${values.host}:${port}`)
  let closing = false
  const shutdown = (signal: string) => {
    if (closing) return
    closing = true
    console.log(`${signal}: closing (waiting for ${s.stats().active} active requests)`)
    s.close().then(
      () => {
        captioner.dispose()
        process.exit(0)
      },
      () => process.exit(1),
    )
    setTimeout(() => process.exit(1), 10_000).unref()
  }
  process.on('SIGINT', () => shutdown('SIGINT'))
  process.on('SIGTERM', () => shutdown('SIGTERM'))
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err) => {
    console.error(err)
    process.exit(1)
  })
}
