// A small HTTP captioning service over one Captioner (node:http, no framework, no dependency).
//
//   GET  /                     a web page: drop or pick images, captions stream in token by token
//   POST /caption              body: the image bytes (JPEG, PNG, WebP, GIF, TIFF...)  -> 200 { caption, score, ms }
//                              or multipart/form-data with one or more image parts   -> 200 { captions: [{ name, caption, score, ms }] }
//        ?maxTokens=20&decoding=greedy|beam&beams=3
//   POST /caption/stream       body: the image bytes -> text/event-stream: `token` {text}..., then `done` {caption, score, ms}
//                              (or `error` {code, message})
//   GET  /healthz              liveness + readiness JSON (503 while draining); /health is an alias
//   GET  /metrics              Prometheus text format
//
// Each image is its own caption() call, so with a batching Captioner (maxBatch > 1) the images of every request
// share decode steps. Guards: bodies over maxBodyBytes (multipart: maxMultipartBytes in all, maxBodyBytes per part,
// maxParts parts) -> 413 (from Content-Length before reading, or while streaming); more than maxActive images in
// flight + maxQueued waiting requests -> 503 with Retry-After; images over maxPixels -> 400 E_IMAGE before they are
// decoded; a request that takes longer than requestTimeoutMs -> 408 (a stream gets an `error` event); malformed
// multipart -> 400. Library errors -> 400 with the SemicapError code (500 for E_NATIVE and other server-side
// failures); the message never includes a server path. A client that goes away aborts its rows (AbortSignal).
//
// Run: node --import tsx examples/server/server.ts --model <captioner folder> [--port 8080] [--host 127.0.0.1] [--max-batch 16]
//        [--dtype float32|bfloat16|int8]
//      node --import tsx examples/server/server.ts --clip <hf clip> --gpt2 <hf gpt2>
//      node --import tsx examples/server/server.ts --tiny        (the test suite's tiny random models; needs ../shared)
import { readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Captioner, SemicapError, type DecodeOptions, type Tensor } from '../../lib/index.js'
import { captionEngine, type Engine } from './engine.js'
import { ComputedHistogram, CONTENT_TYPE as METRICS_CONTENT_TYPE, Counter, Gauge, Histogram, Registry, Summary } from './metrics.js'
import { MultipartError, multipartBoundary, parseMultipart } from './multipart.js'

export interface CaptionServerOptions {
  captioner: Captioner
  /** Largest raw request body, and largest part of a multipart body (default 8 MiB). */
  maxBodyBytes?: number
  /** Largest multipart body in all (default 32 MiB). */
  maxMultipartBytes?: number
  /** Most parts (images) in a multipart body (default 16). */
  maxParts?: number
  /**
   * Images captioned at once, over all requests (default: 4 without batching, where the model runs one call at a
   * time and this only overlaps image decoding; with batching, twice the captioner's maxBatch, so that the decode
   * batch stays full). A multipart request takes one slot per image.
   */
  maxActive?: number
  /** Requests waiting beyond those (default 32); more get 503. */
  maxQueued?: number
  /** Decompression-bomb guard for uploaded images (default 40 Mpx). */
  maxPixels?: number
  /** Longest maxTokens a client may ask for (default 40). */
  maxTokensLimit?: number
  /** Whole-request deadline (default 30 s). */
  requestTimeoutMs?: number
  /** close(): how long in-flight requests may still run before they are aborted (default 30 s). */
  shutdownGraceMs?: number
  /** Decoding defaults (greedy, maxTokens 20). */
  decode?: DecodeOptions
}

export interface ServerStats {
  /** Images being captioned (admission slots taken), and requests waiting for slots. */
  active: number
  queued: number
  /** Requests in progress (any route), answered 2xx for captions, refused with 413 / 503. */
  inFlight: number
  served: number
  rejected: number
  /** Rows in the captioner's decode batch and requests waiting for it (undefined without batchStats()). */
  activeRows?: number
  batchQueued?: number
}

export interface CaptionServer {
  server: Server
  /** Resolves once listening; the bound port (0 picks a free one). */
  listen(port: number, host?: string): Promise<number>
  /**
   * Graceful shutdown: stops accepting (new requests on kept-alive connections get 503), lets requests in flight
   * finish (streams included; after shutdownGraceMs they are aborted), closes idle connections.
   */
  close(): Promise<void>
  stats(): ServerStats
  /** The Prometheus exposition text served at /metrics. */
  metrics(): string
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

/** Why a request's AbortController fired. */
type AbortReason = 'client' | 'timeout' | 'shutdown' | 'sibling'

/** Client-side problems: the request's image or options. Everything else is the server's fault (500). */
const CLIENT_CODES = new Set(['E_IMAGE', 'E_VALUE', 'E_SHAPE', 'E_DTYPE', 'E_CONFIG'])

const here = dirname(fileURLToPath(import.meta.url))
const STATIC: Record<string, { file: string; type: string }> = {
  '/': { file: 'page.html', type: 'text/html; charset=utf-8' },
  '/page.js': { file: 'page.js', type: 'text/javascript; charset=utf-8' },
  '/page.css': { file: 'page.css', type: 'text/css; charset=utf-8' },
}
const PAGE_HEADERS = {
  'content-security-policy': "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'cache-control': 'no-cache',
}

/** Routes and the methods they answer (others: 405 with Allow). */
const ROUTES: Record<string, string[]> = {
  '/caption': ['POST'],
  '/caption/stream': ['POST'],
  '/healthz': ['GET', 'HEAD'],
  '/health': ['GET', 'HEAD'],
  '/metrics': ['GET', 'HEAD'],
  ...Object.fromEntries(Object.keys(STATIC).map((p) => [p, ['GET', 'HEAD']])),
}

function sendJson(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return
  const text = JSON.stringify(body) + '\n'
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(text)), ...headers })
  res.end(text)
}

/** Reads the body up to `limit` bytes; past it, rejects with 413 (the caller answers and closes the connection). */
function readBody(req: IncomingMessage, limit: number, signal: AbortSignal): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'])
    if (Number.isFinite(declared) && declared > limit) return reject(new HttpError(413, 'E_TOO_LARGE', `body of ${declared} bytes exceeds the limit of ${limit}`))
    const chunks: Buffer[] = []
    let size = 0
    const onAbort = () => reject(new HttpError(400, 'E_ABORTED', 'request aborted'))
    signal.addEventListener('abort', onAbort, { once: true })
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > limit) {
        reject(new HttpError(413, 'E_TOO_LARGE', `body exceeds the limit of ${limit} bytes`))
        req.pause()
        return
      }
      chunks.push(c)
    })
    req.on('end', () => {
      signal.removeEventListener('abort', onAbort)
      resolve(Buffer.concat(chunks, size))
    })
    req.on('error', reject)
    req.on('aborted', onAbort)
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

/** A FIFO admission queue over `capacity` slots; a request takes `n` slots at once (n <= capacity). */
class Admission {
  active = 0
  readonly waiting: { n: number; grant: () => void }[] = []
  constructor(
    readonly capacity: number,
    readonly maxQueued: number,
  ) {}

  /** Resolves with a release function once `n` slots are free; 503 when the queue is full; rejects on abort. */
  acquire(n: number, signal: AbortSignal): Promise<() => void> {
    n = Math.min(n, this.capacity)
    let released = false
    const release = () => {
      if (released) return
      released = true
      this.active -= n
      this.#pump()
    }
    if (this.waiting.length === 0 && this.active + n <= this.capacity) {
      this.active += n
      return Promise.resolve(release)
    }
    if (this.waiting.length >= this.maxQueued) {
      return Promise.reject(new HttpError(503, 'E_BUSY', `server busy: ${this.active} images in flight and ${this.waiting.length} requests queued`))
    }
    return new Promise((resolve, reject) => {
      const entry = {
        n,
        grant: () => {
          signal.removeEventListener('abort', onAbort)
          this.active += n
          resolve(release)
        },
      }
      const onAbort = () => {
        const i = this.waiting.indexOf(entry)
        if (i >= 0) this.waiting.splice(i, 1)
        this.#pump()
        reject(new HttpError(400, 'E_ABORTED', 'request aborted while queued'))
      }
      signal.addEventListener('abort', onAbort, { once: true })
      this.waiting.push(entry)
    })
  }

  #pump(): void {
    while (this.waiting.length > 0 && this.active + this.waiting[0]!.n <= this.capacity) this.waiting.shift()!.grant()
  }
}

const LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
const ROWS_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256]

export function createCaptionServer(options: CaptionServerOptions): CaptionServer {
  const cap = options.captioner
  const engine: Engine = captionEngine(cap)
  const initial = engine.stats()
  const maxBodyBytes = options.maxBodyBytes ?? 8 << 20
  const maxMultipartBytes = options.maxMultipartBytes ?? 32 << 20
  const maxParts = options.maxParts ?? 16
  const maxActive = options.maxActive ?? (initial?.batching ? Math.max(4, 2 * initial.maxBatch) : 4)
  const maxQueued = options.maxQueued ?? 32
  const maxPixels = options.maxPixels ?? 40e6
  const maxTokensLimit = options.maxTokensLimit ?? 40
  const requestTimeoutMs = options.requestTimeoutMs ?? 30_000
  const shutdownGraceMs = options.shutdownGraceMs ?? 30_000
  const defaults: DecodeOptions = { decoding: 'greedy', maxTokens: 20, ...options.decode }
  const started = Date.now()
  const admission = new Admission(maxActive, maxQueued)
  let served = 0
  let rejected = 0
  let closing = false
  let requestSeq = 0
  /** Requests in progress: their controllers (aborted with 'shutdown' when the grace period ends). */
  const inFlight = new Map<ServerResponse, AbortController>()
  let drained: (() => void) | undefined

  // ------------------------------------------------------------------ metrics
  const registry = new Registry()
  const requestsTotal = registry.add(new Counter('semicap_http_requests_total', 'HTTP requests answered, by route, method and status code (499: the client went away first).'))
  const latency = registry.add(new Histogram('semicap_http_request_duration_seconds', 'Time from request to the end of a successful caption answer (POST /caption, POST /caption/stream), queueing included.', LATENCY_BOUNDS))
  const latencySummary = registry.add(new Summary('semicap_http_request_latency_seconds', 'Quantiles of semicap_http_request_duration_seconds over the latest 2048 successful caption requests.'))
  const images = registry.add(new Counter('semicap_images_total', 'Images captioned, by outcome (ok, error, aborted).'))
  const streams = registry.add(new Counter('semicap_streams_total', 'Caption streams (POST /caption/stream) by outcome: done, error, disconnect (the client went away mid-stream; its row was aborted).'))
  registry.add(new Gauge('semicap_queue_depth', 'Waiting: requests in the server admission queue (stage=server), requests waiting to join the decode batch (stage=batch).', () => {
    const s = engine.stats()
    return [[{ stage: 'server' }, admission.waiting.length], ...(s ? ([[{ stage: 'batch' }, s.queued]] as [Record<string, string>, number][]) : [])]
  }))
  registry.add(new Gauge('semicap_active_rows', 'Rows (images) in the decode batch now; without batching, images being captioned.', () => {
    const s = engine.stats()
    return s?.batching ? s.activeRows : admission.active
  }))
  registry.add(new Gauge('semicap_images_in_flight', 'Images holding an admission slot (preprocessing or captioning).', () => admission.active))
  registry.add(new Gauge('semicap_requests_in_flight', 'HTTP requests in progress.', () => inFlight.size))
  registry.add(new Gauge('semicap_admission_capacity', 'Admission slots (images at once) and queue length.', () => [[{ kind: 'active' }, maxActive], [{ kind: 'queued' }, maxQueued]]))
  registry.add(new Gauge('semicap_batch_max_rows', "The captioner's maxBatch (1: batching off).", () => engine.stats()?.maxBatch))
  registry.add(new Gauge('semicap_batch_steps_total', 'Decode steps run by the captioner batch.', () => engine.stats()?.steps, 'counter'))
  registry.add(new Gauge('semicap_batch_row_steps_total', 'Rows x decode steps (tokens decoded in batch).', () => engine.stats()?.rowSteps, 'counter'))
  registry.add(new Gauge('semicap_batch_requests_total', 'Caption calls the captioner batch ended, by outcome.', () => {
    const s = engine.stats()
    return s ? Object.entries(s.outcomes).map(([outcome, n]) => [{ outcome }, n] as [Record<string, string>, number]) : undefined
  }, 'counter'))
  registry.add(new ComputedHistogram('semicap_batch_rows', 'Rows decoded together per decode step (the batch size), from the captioner.', ROWS_BOUNDS, () => engine.stats()?.rowsPerStep))
  registry.add(new Gauge('process_resident_memory_bytes', 'Resident set size of the server process.', () => process.memoryUsage.rss()))
  registry.add(new Gauge('nodejs_heap_used_bytes', 'V8 heap in use.', () => process.memoryUsage().heapUsed))
  registry.add(new Gauge('semicap_uptime_seconds', 'Seconds since the server was created.', () => (Date.now() - started) / 1000))
  registry.add(new Gauge('semicap_ready', '1 while accepting requests, 0 while draining.', () => (closing ? 0 : 1)))

  // ------------------------------------------------------------------ captioning
  const abortReason = (signal: AbortSignal): AbortReason | undefined => (signal.aborted ? (signal.reason as AbortReason) : undefined)

  async function preprocess(data: Buffer, name?: string): Promise<Tensor> {
    try {
      return await cap.clip.preprocess([data], { maxPixels })
    } catch (err) {
      if (name !== undefined && err instanceof SemicapError) throw new SemicapError(err.code, `part "${name}": ${err.message}`)
      throw err
    }
  }

  /** One image: preprocess, caption; `ms` from the start of its preprocessing. */
  async function one(pixels: Tensor, opts: DecodeOptions, signal: AbortSignal, t0: number): Promise<{ caption: string; score: number | null; ms: number }> {
    try {
      const r = await engine.caption(pixels, opts, signal)
      images.inc({ outcome: 'ok' })
      return { caption: r.text, score: r.score, ms: Math.round(performance.now() - t0) }
    } catch (err) {
      images.inc({ outcome: signal.aborted ? 'aborted' : 'error' })
      throw err
    }
  }

  async function captionRaw(req: IncomingMessage, url: URL, signal: AbortSignal): Promise<object> {
    const opts = decodeOptions(url, defaults, maxTokensLimit)
    const body = await readBody(req, maxBodyBytes, signal)
    if (body.length === 0) throw new HttpError(400, 'E_IMAGE', 'empty body: send the image bytes')
    const release = await admission.acquire(1, signal)
    try {
      const t0 = performance.now()
      return await one(await preprocess(body), opts, signal, t0)
    } finally {
      release()
    }
  }

  async function captionMultipart(req: IncomingMessage, url: URL, boundary: string, signal: AbortSignal): Promise<object> {
    const opts = decodeOptions(url, defaults, maxTokensLimit)
    const body = await readBody(req, maxMultipartBytes, signal)
    const parts = parseMultipart(body, boundary, { maxParts, maxPartBytes: maxBodyBytes })
    if (parts.length === 0) throw new HttpError(400, 'E_MULTIPART', 'the multipart body has no parts')
    const names = parts.map((p, i) => p.filename || p.field || `part-${i + 1}`)
    parts.forEach((p, i) => {
      if (p.data.length === 0) throw new HttpError(400, 'E_IMAGE', `part "${names[i]}" is empty`)
    })
    const release = await admission.acquire(parts.length, signal)
    // One failure stops the request's other images; the slots free up once every image has stopped.
    const group = new AbortController()
    const onAbort = () => group.abort(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    let failure: { err: unknown } | undefined
    try {
      const jobs = parts.map(async (p, i) => {
        const t0 = performance.now()
        try {
          return { name: names[i]!, ...(await one(await preprocess(p.data, names[i]), opts, group.signal, t0)) }
        } catch (err) {
          if (!failure) {
            failure = { err }
            group.abort('sibling' satisfies AbortReason)
          }
          throw err
        }
      })
      const results = await Promise.allSettled(jobs)
      if (failure) throw failure.err
      return { captions: results.map((r) => (r as PromiseFulfilledResult<object>).value) }
    } finally {
      signal.removeEventListener('abort', onAbort)
      release()
    }
  }

  async function captionStream(req: IncomingMessage, res: ServerResponse, url: URL, signal: AbortSignal, t0: number): Promise<void> {
    if (multipartBoundary(req.headers['content-type']) !== undefined) throw new HttpError(415, 'E_MEDIA_TYPE', 'POST /caption/stream takes the raw image bytes as its body, not multipart')
    const opts = decodeOptions(url, defaults, maxTokensLimit)
    const body = await readBody(req, maxBodyBytes, signal)
    if (body.length === 0) throw new HttpError(400, 'E_IMAGE', 'empty body: send the image bytes')
    const release = await admission.acquire(1, signal)
    try {
      const tImage = performance.now()
      const pixels = await preprocess(body)
      // From here on the answer is 200 and an event stream; failures become `error` events.
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        'x-accel-buffering': 'no',
        ...(closing ? { connection: 'close' } : {}),
      })
      res.flushHeaders()
      const event = (name: string, data: object) => {
        if (!res.destroyed && !res.writableEnded) res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`)
      }
      try {
        const r = await engine.stream(pixels, opts, signal, (text) => event('token', { text }))
        images.inc({ outcome: 'ok' })
        streams.inc({ outcome: 'done' })
        event('done', { caption: r.text, score: r.score, ms: Math.round(performance.now() - tImage) })
        served++
        res.end()
        if (res.statusCode === 200) observeLatency(t0)
      } catch (err) {
        const reason = abortReason(signal)
        images.inc({ outcome: reason ? 'aborted' : 'error' })
        if (reason === 'client') {
          streams.inc({ outcome: 'disconnect' })
          return
        }
        streams.inc({ outcome: 'error' })
        const e = classify(err, signal)
        if (e.status >= 500 && e.status !== 503) console.error(`POST /caption/stream: ${(err as Error)?.stack ?? String(err)}`)
        event('error', { code: e.code, message: e.message })
        res.end()
      }
    } finally {
      release()
    }
  }

  function observeLatency(t0: number): void {
    const s = (performance.now() - t0) / 1000
    latency.observe(s)
    latencySummary.observe(s)
  }

  /** An error -> status, code and a message safe to show (no server paths). */
  function classify(err: unknown, signal: AbortSignal): { status: number; code: string; message: string } {
    const reason = abortReason(signal)
    if (reason === 'timeout') return { status: 408, code: 'E_TIMEOUT', message: `request took longer than ${requestTimeoutMs} ms` }
    if (reason === 'shutdown') return { status: 503, code: 'E_SHUTTING_DOWN', message: 'the server is shutting down' }
    if (err instanceof HttpError || err instanceof MultipartError) return { status: err.status, code: err.code, message: err.message }
    if (err instanceof SemicapError) {
      if (err.code === 'E_BUSY') return { status: 503, code: 'E_BUSY', message: 'server busy: the decode queue is full' }
      if (err.code === 'E_DISPOSED') return { status: 503, code: 'E_SHUTTING_DOWN', message: 'the model is closed' }
      if (err.code === 'E_ABORTED') return { status: 408, code: 'E_TIMEOUT', message: 'the caption deadline passed' }
      const status = CLIENT_CODES.has(err.code) ? 400 : 500
      // Library messages can name files; an uploaded image has none, but be safe: no absolute paths out.
      return { status, code: err.code, message: status === 400 ? err.message.replace(/\/[^\s:()"]+/g, '<path>') : `captioning failed (${err.code})` }
    }
    if (err instanceof TypeError || err instanceof RangeError) return { status: 400, code: 'E_VALUE', message: err.message }
    return { status: 500, code: 'E_INTERNAL', message: 'internal error' }
  }

  // ------------------------------------------------------------------ HTTP
  /** While draining, every answer closes its connection (keep-alive clients reconnect elsewhere). */
  const send = (res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void =>
    sendJson(res, status, body, closing ? { ...headers, connection: 'close' } : headers)

  function health(): { status: number; body: object } {
    const s = engine.stats()
    const rss = process.memoryUsage.rss()
    return {
      status: closing ? 503 : 200,
      body: {
        status: closing ? 'draining' : 'ok',
        live: true,
        ready: !closing,
        batching: s?.batching ?? false,
        maxBatch: s?.maxBatch ?? 1,
        streaming: engine.streams,
        active: admission.active,
        queued: admission.waiting.length,
        activeRows: s?.activeRows,
        batchQueued: s?.queued,
        inFlight: inFlight.size,
        served,
        rejected,
        rssMb: Math.round(rss / 2 ** 20),
        rssBytes: rss,
        uptimeS: Math.round((Date.now() - started) / 1000),
      },
    }
  }

  const staticFiles = new Map<string, Buffer>()
  const staticFile = (path: string): Buffer => {
    let b = staticFiles.get(path)
    if (!b) staticFiles.set(path, (b = readFileSync(join(here, STATIC[path]!.file))))
    return b
  }

  const server = createServer((req, res) => {
    const t0 = performance.now()
    const url = new URL(req.url ?? '/', 'http://localhost')
    const methods = ROUTES[url.pathname]
    const routeLabel = methods ? url.pathname : 'other'
    const rid = req.headers['x-request-id']
    res.setHeader('x-request-id', typeof rid === 'string' && /^[\w.:-]{1,64}$/.test(rid) ? rid : `r${++requestSeq}`)
    const controller = new AbortController()
    inFlight.set(res, controller)
    let timer: ReturnType<typeof setTimeout> | undefined
    res.on('close', () => {
      clearTimeout(timer)
      inFlight.delete(res)
      // Not finished: the client went away (or a 413 / 408 destroyed the socket after answering).
      if (!res.writableFinished) controller.abort('client' satisfies AbortReason)
      const code = res.writableFinished ? res.statusCode : 499
      requestsTotal.inc({ route: routeLabel, method: methods?.includes(req.method ?? '') ? req.method! : 'other', code: String(code) })
      if (closing) server.closeIdleConnections()
      if (inFlight.size === 0) drained?.()
    })

    if (!methods) {
      req.resume()
      return send(res, 404, { error: { code: 'E_NOT_FOUND', message: `${url.pathname} is not served` } })
    }
    if (!methods.includes(req.method ?? '')) {
      req.resume()
      return send(res, 405, { error: { code: 'E_METHOD', message: `${req.method} ${url.pathname} is not served` } }, { allow: methods.join(', ') })
    }
    if (url.pathname === '/healthz' || url.pathname === '/health') {
      const h = health()
      return send(res, h.status, h.body, { 'cache-control': 'no-store' })
    }
    if (url.pathname === '/metrics') {
      const text = registry.render()
      res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE, 'content-length': String(Buffer.byteLength(text)), 'cache-control': 'no-store', ...(closing ? { connection: 'close' } : {}) })
      return res.end(text)
    }
    if (STATIC[url.pathname]) {
      const b = staticFile(url.pathname)
      res.writeHead(200, { 'content-type': STATIC[url.pathname]!.type, 'content-length': String(b.length), ...PAGE_HEADERS, ...(closing ? { connection: 'close' } : {}) })
      return res.end(b)
    }
    if (closing) {
      req.resume()
      return send(res, 503, { error: { code: 'E_SHUTTING_DOWN', message: 'the server is shutting down' } }, { 'retry-after': '1' })
    }

    // POST /caption, POST /caption/stream
    timer = setTimeout(() => {
      controller.abort('timeout' satisfies AbortReason)
      if (!res.headersSent) {
        send(res, 408, { error: { code: 'E_TIMEOUT', message: `request took longer than ${requestTimeoutMs} ms` } }, { connection: 'close' })
        res.on('finish', () => req.destroy())
      }
    }, requestTimeoutMs)
    const signal = controller.signal
    const isStream = url.pathname === '/caption/stream'
    let work: Promise<object | void>
    try {
      const boundary = isStream ? undefined : multipartBoundary(req.headers['content-type'])
      work = isStream ? captionStream(req, res, url, signal, t0) : boundary !== undefined ? captionMultipart(req, url, boundary, signal) : captionRaw(req, url, signal)
    } catch (err) {
      work = Promise.reject(err)
    }
    work.then(
      (body) => {
        if (isStream) return
        served++
        send(res, 200, body as object)
        if (res.statusCode === 200) observeLatency(t0)
      },
      (err: unknown) => {
        if (abortReason(signal) === 'client' || res.destroyed) return
        const { status, code, message } = classify(err, signal)
        if (status === 503 || status === 413) rejected++
        if (status >= 500 && status !== 503) console.error(`${req.method} ${url.pathname}: ${(err as Error)?.stack ?? String(err)}`)
        if (res.headersSent) {
          if (!res.writableEnded) res.end()
          return
        }
        // 413 / 400 with a body maybe still arriving: answer, then close the connection instead of reading the rest.
        const closeAfter = status === 413 || status === 408 || (status === 400 && !req.complete)
        const headers: Record<string, string> = status === 503 ? { 'retry-after': '1' } : closeAfter ? { connection: 'close' } : {}
        send(res, status, { error: { code, message } }, headers)
        if (closeAfter) res.on('finish', () => req.destroy())
      },
    )
  })
  server.headersTimeout = 10_000
  server.requestTimeout = requestTimeoutMs + 5_000
  server.keepAliveTimeout = 5_000

  let closed: Promise<void> | undefined
  return {
    server,
    listen: (port, host = '127.0.0.1') =>
      new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => resolve((server.address() as AddressInfo).port))
      }),
    close: () =>
      (closed ??= (async () => {
        closing = true
        const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()))
        server.closeIdleConnections()
        if (inFlight.size > 0) {
          const grace = setTimeout(() => {
            for (const c of inFlight.values()) c.abort('shutdown' satisfies AbortReason)
          }, shutdownGraceMs)
          await new Promise<void>((resolve) => (drained = resolve))
          clearTimeout(grace)
        }
        server.closeIdleConnections()
        await serverClosed
      })()),
    stats: () => {
      const s = engine.stats()
      return { active: admission.active, queued: admission.waiting.length, inFlight: inFlight.size, served, rejected, activeRows: s?.activeRows, batchQueued: s?.queued }
    },
    metrics: () => registry.render(),
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
      'max-batch': { type: 'string' },
      'max-active': { type: 'string' },
      'max-queued': { type: 'string' },
      'max-body-mb': { type: 'string' },
      'max-parts': { type: 'string' },
      'request-timeout-s': { type: 'string' },
      dtype: { type: 'string' },
    },
  })
  const num = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined
    const n = Number(v)
    if (!Number.isFinite(n) || n <= 0) {
      console.error(`--${name} must be a positive number, got ${v}`)
      process.exit(2)
    }
    return n
  }
  const maxBatch = num(values['max-batch'], 'max-batch')
  const dtypes = ['float32', 'bfloat16', 'int8'] as const
  const dtype = values.dtype as (typeof dtypes)[number] | undefined
  if (dtype !== undefined && !dtypes.includes(dtype)) {
    console.error(`--dtype must be one of ${dtypes.join(', ')}, got ${values.dtype}`)
    process.exit(2)
  }
  // dtype: the CPU inference weights (bfloat16 runs on AVX512-BF16 where the CPU has it); CUDA loads float32 only.
  const loadOptions = { ...(maxBatch === undefined ? {} : { maxBatch }), ...(dtype === undefined ? {} : { dtype }) }
  let captioner: Captioner
  if (values.model) captioner = await Captioner.load(values.model, { device: 'auto', ...loadOptions })
  else if (values.clip && values.gpt2) captioner = await Captioner.create({ clip: values.clip, gpt2: values.gpt2, device: 'auto', ...loadOptions })
  else if (values.tiny) {
    const { makeTinyModels } = await import('../../test/helpers/models.js')
    const m = await makeTinyModels()
    captioner = await Captioner.create({ clip: m.clipDir, gpt2: m.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu', ...loadOptions })
  } else {
    console.error('usage: server.ts --model <dir> | --clip <dir> --gpt2 <dir> | --tiny  [--port 8080] [--host 127.0.0.1] [--max-batch 16] [--dtype float32|bfloat16|int8]')
    process.exit(2)
  }
  const s = createCaptionServer({
    captioner,
    maxActive: num(values['max-active'], 'max-active'),
    maxQueued: num(values['max-queued'], 'max-queued'),
    maxBodyBytes: values['max-body-mb'] ? num(values['max-body-mb'], 'max-body-mb')! * 2 ** 20 : undefined,
    maxParts: num(values['max-parts'], 'max-parts'),
    requestTimeoutMs: values['request-timeout-s'] ? num(values['request-timeout-s'], 'request-timeout-s')! * 1000 : undefined,
  })
  const port = await s.listen(Number(values.port), values.host)
  // The load test reads this line to find an ephemeral port.
  console.log(`listening on http://${values.host}:${port}`)
  const st = captionEngine(captioner).stats()
  console.log(`batching: ${st ? `maxBatch ${st.maxBatch}` : 'not available in this library build'}`)
  console.log(`weights: ${captioner.weights.dtype} (${captioner.weights.isa})`)
  let closing = false
  const shutdown = (signal: string) => {
    if (closing) return
    closing = true
    console.log(`${signal}: closing (waiting for ${s.stats().inFlight} requests in flight)`)
    setTimeout(() => process.exit(1), 40_000).unref()
    s.close().then(
      async () => {
        await captioner.dispose()
        process.exit(0)
      },
      () => process.exit(1),
    )
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
