// Continuous batching of concurrent caption requests on one Captioner. Greedy and sampled requests queue here; at
// every token boundary the requests waiting join (up to maxBatch rows decoding at once; each request's images
// CLIP-encoded, mapped and prefilled together, as an unbatched call would), then one decode step runs every active
// row together, and rows that finished leave, their requests resolving at once. Each native op (add / step / remove)
// is one job on the model's queue (lib/lifecycle.ts), so other work on the model (beam captions, save, logits)
// interleaves at token boundaries.
//
// A request is one or more rows (a caption() call with several images is several rows). It joins whole, first come
// first served; only a request with more rows than maxBatch joins in parts. Per request: an AbortSignal (the request
// rejects with an AbortError at once and its rows leave at the next boundary; the others are untouched), a deadline
// (the same, rejecting with a DeadlineError: code E_ABORTED, name 'TimeoutError', like AbortSignal.timeout()), and a
// bounded queue (maxQueue requests waiting to join; beyond that submit() rejects with E_BUSY). close()
// (Captioner.dispose()) rejects every request not settled yet with E_DISPOSED at once.
//
// Sampling in the batch depends only on the request's seed, the row's index in its request and the step, never on
// the company a row keeps, so a request decodes the same tokens batched or alone (native/batch_decode.h). The
// products do not: a product over 8 rows tiles (and so rounds) differently from one over 1 row, and the kernel / BLAS
// choice is per row count, so scores may differ in the last bits and a near-tie argmax could flip (measured: 2700 of
// 2700 demo test captions identical, bench/batching-agreement.ts). Beam search and bf16 autocast are not batched
// (Captioner sends them down the unbatched path).
import { AbortError, SemicapError } from './errors.js'
import type { AddonDecodeBatch, BatchRowWire, DecodeWire, RowTokenWire } from './native.js'
import type { Tensor } from './tensor.js'

/** Batching settings of a Captioner (Captioner.create / Captioner.load options). */
export interface BatchingOptions {
  /**
   * Most rows (images) decoding together. 1 turns batching off: concurrent calls then queue and decode one call at
   * a time, as before. Default 16 on the CPU (a step's cost grows with its rows there), 64 on CUDA (a step costs
   * about the same for 1 or 64 rows).
   */
  maxBatch?: number
  /** Most requests waiting to be admitted; more are refused with E_BUSY. Default 256. */
  maxQueue?: number
}

/** Per-request options of caption() / captionFeatures() / stream(), next to the decoding options. */
export interface RequestOptions {
  /** Aborting rejects the call with an AbortError (E_ABORTED); its rows leave the batch at the next token boundary. */
  signal?: AbortSignal
  /**
   * Milliseconds from the call (a number) or a point in time (a Date): past it the call rejects with a DeadlineError
   * (code E_ABORTED, name 'TimeoutError') and its rows leave the batch at the next token boundary.
   */
  deadline?: number | Date
}

/** Rejection of a request whose deadline passed: an AbortError (code E_ABORTED) named 'TimeoutError'. */
export class DeadlineError extends AbortError {
  constructor(message = 'the deadline passed') {
    super(message)
    this.name = 'TimeoutError'
  }
}

/** Counters for monitoring (a server's /metrics). */
export interface BatchStats {
  maxBatch: number
  maxQueue: number
  /** Rows decoding now, and requests waiting to be admitted. */
  active: number
  queued: number
  /** Decode steps run, and the rows they decoded (tokens produced by steps). */
  steps: number
  rowSteps: number
  /** rowsPerStep[k]: steps that ran k rows together (index 0 unused). */
  rowsPerStep: number[]
  /** Prefills (one per admission group) and the rows they admitted. */
  prefills: number
  prefillRows: number
  /** Requests: finished, aborted, past their deadline, refused with E_BUSY, failed otherwise. */
  completed: number
  aborted: number
  expired: number
  busy: number
  failed: number
}

/** One finished row: its tokens (an end token included when it ended on one) and its mean log-probability. */
export interface RowResult {
  ids: number[]
  score: number
}

export interface SubmitOptions extends RequestOptions {
  /** Called with (row index in the request, token) for every token as it is decoded. */
  onToken?: (row: number, token: number) => void
}

interface Slot {
  req: Request
  index: number
  rowId: number
  ids: number[]
  score: number
}

interface Request {
  input: Float32Array
  rowShape: number[]
  rowSize: number
  wire: DecodeWire
  slots: Slot[]
  next: number
  remaining: number
  settled: boolean
  onToken?: (row: number, token: number) => void
  resolve(rows: RowResult[]): void
  fail(err: unknown, kind: 'aborted' | 'expired' | 'failed' | 'disposed'): void
}

/** What the batcher needs from its captioner. */
export interface BatcherHost {
  /** The native batch (created on first use). */
  batch(): AddonDecodeBatch
  /** Runs one native op on the model's queue (fails with E_DISPOSED once the model is disposed). */
  job<T>(fn: () => Promise<T>): Promise<T>
  /** Tokens per row a step call may decode while nobody waits to join (default 1; see defaultBurst). */
  burst?: number
}

/**
 * Tokens per step call while no request waits to join: 8 on CUDA, where a host sync per token leaves the device idle
 * while the host launches the next step (bench/results/gpu-h200.md), 1 elsewhere (a CPU step costs tens of ms, the
 * sync nothing). SEMICAP_BATCH_BURST overrides it (tests, tuning).
 */
export function defaultBurst(device: string): number {
  const env = Number(process.env.SEMICAP_BATCH_BURST)
  if (Number.isInteger(env) && env >= 1 && env <= 256) return env
  return device.startsWith('cuda') ? 8 : 1
}

function positiveInt(v: unknown, name: string, fallback: number, max: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) throw new SemicapError('E_VALUE', `${name} must be an integer in [1, ${max}], got ${String(v)}`)
  return v
}

/** Validated batching settings (maxQueue default 256); maxBatch stays undefined until the device is known (onDevice). */
export function batchingSettings(o: BatchingOptions | undefined): BatchingOptions & { maxQueue: number } {
  return { maxBatch: o?.maxBatch === undefined ? undefined : positiveInt(o.maxBatch, 'maxBatch', 16, 4096), maxQueue: positiveInt(o?.maxQueue, 'maxQueue', 256, 1 << 30) }
}

/**
 * Settings with maxBatch's device default filled in: 64 on CUDA, 16 elsewhere (measured: bench/results/gpu-h200.md
 * for CUDA, examples/server for the CPU).
 */
export function onDevice(s: BatchingOptions & { maxQueue: number }, device: string): Required<BatchingOptions> {
  return { maxBatch: s.maxBatch ?? (device.startsWith('cuda') ? 64 : 16), maxQueue: s.maxQueue }
}

/** The absolute deadline (ms since the epoch) of a request, or undefined. */
export function deadlineAt(v: unknown): number | undefined {
  if (v === undefined) return undefined
  if (v instanceof Date) {
    const t = v.getTime()
    if (!Number.isFinite(t)) throw new SemicapError('E_VALUE', 'deadline must be a valid Date or a number of milliseconds >= 0')
    return t
  }
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new SemicapError('E_VALUE', `deadline must be a number of milliseconds >= 0 or a Date, got ${String(v)}`)
  return Date.now() + v
}

export function checkSignal(v: unknown): AbortSignal | undefined {
  if (v === undefined) return undefined
  if (!(v instanceof AbortSignal)) throw new SemicapError('E_VALUE', 'signal must be an AbortSignal')
  return v
}

export const abortedError = (signal: AbortSignal) => new AbortError('the caption request was aborted', { cause: signal.reason })

/** The request options of a call's options, validated (E_VALUE). */
export function requestOptions(o: RequestOptions): RequestOptions {
  checkSignal(o.signal)
  deadlineAt(o.deadline)
  return { signal: o.signal, deadline: o.deadline instanceof Date ? o.deadline : o.deadline === undefined ? undefined : new Date(Date.now() + o.deadline) }
}

/**
 * Unbatched calls (beam search, bf16, maxBatch 1) honour a signal and a deadline too: the call rejects at once; the
 * native work it started runs to its end and its result is dropped.
 */
export function guardRequest<T>(o: RequestOptions, start: () => Promise<T>): Promise<T> {
  const signal = o.signal
  const at = deadlineAt(o.deadline)
  if (!signal && at === undefined) return start()
  if (signal?.aborted) return Promise.reject(abortedError(signal))
  if (at !== undefined && at <= Date.now()) return Promise.reject(new DeadlineError('the deadline passed before the call started'))
  return new Promise<T>((resolve, reject) => {
    let timer: ReturnType<typeof setTimeout> | undefined
    const onAbort = () => finish(() => reject(abortedError(signal!)))
    const finish = (f: () => void) => {
      if (timer !== undefined) clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      f()
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    if (at !== undefined) timer = setTimeout(() => finish(() => reject(new DeadlineError())), Math.max(0, at - Date.now()))
    start().then(
      (v) => finish(() => resolve(v)),
      (err: unknown) => finish(() => reject(err)),
    )
  })
}

export class Batcher {
  readonly #host: BatcherHost
  readonly #maxBatch: number
  readonly #maxQueue: number
  #queue: Request[] = []
  readonly #active = new Map<number, Slot>()
  readonly #pending = new Set<Promise<unknown>>()
  /** Every request not settled yet, wherever it is (queued, being prefilled, decoding). */
  readonly #open = new Set<Request>()
  #running = false
  /** The loop is queued to start (kicked, no boundary yet): requests submitted meanwhile join its first prefill. */
  #starting = false
  #closed: unknown
  readonly #stats: BatchStats

  constructor(host: BatcherHost, settings: Required<BatchingOptions>) {
    this.#host = host
    this.#maxBatch = settings.maxBatch
    this.#maxQueue = settings.maxQueue
    this.#stats = {
      maxBatch: this.#maxBatch, maxQueue: this.#maxQueue, active: 0, queued: 0, steps: 0, rowSteps: 0,
      rowsPerStep: new Array<number>(this.#maxBatch + 1).fill(0), prefills: 0, prefillRows: 0,
      completed: 0, aborted: 0, expired: 0, busy: 0, failed: 0,
    }
  }

  stats(): BatchStats {
    return { ...this.#stats, active: this.#active.size, queued: this.#queue.filter((r) => !r.settled).length, rowsPerStep: [...this.#stats.rowsPerStep] }
  }

  /**
   * Queues `input` (pixels [n,3,S,S] or CLIP features [n,D], float32; n >= 1 rows) for decoding with `wire`
   * (greedy or sample). Resolves with one RowResult per row, in order.
   */
  submit(input: Tensor, wire: DecodeWire, options: SubmitOptions = {}): Promise<RowResult[]> {
    if (this.#closed !== undefined) return Promise.reject(this.#closed)
    let signal: AbortSignal | undefined, at: number | undefined
    try {
      signal = checkSignal(options.signal)
      at = deadlineAt(options.deadline)
    } catch (err) {
      return Promise.reject(err)
    }
    if (signal?.aborted) return Promise.reject(abortedError(signal))
    if (at !== undefined && at <= Date.now()) {
      this.#stats.expired++
      return Promise.reject(new DeadlineError('the deadline passed before the request was queued'))
    }
    if (this.#waiting() >= this.#maxQueue) {
      this.#queue = this.#queue.filter((r) => !r.settled)
      if (this.#waiting() >= this.#maxQueue) {
        this.#stats.busy++
        return Promise.reject(new SemicapError('E_BUSY', `the caption queue is full (${this.#maxQueue} requests waiting; maxQueue)`))
      }
    }
    const n = input.shape[0]!
    if (input.dtype !== 'float32') return Promise.reject(new SemicapError('E_DTYPE', `input must be float32, got ${input.dtype}`))
    if (!(n >= 1)) return Promise.reject(new SemicapError('E_SHAPE', 'nothing to caption: the input has no rows'))
    const data = input.data as Float32Array
    const rowShape = input.shape.slice(1)
    const rowSize = rowShape.reduce((a, b) => a * b, 1)
    // The unbatched path checks this at the boundary (toWire); here rows are copied out in JS, where a short buffer
    // would silently become zero rows.
    if (data.length < n * rowSize) {
      return Promise.reject(new SemicapError('E_SHAPE', `input data holds ${data.length} elements but its shape [${input.shape.join(', ')}] needs ${n * rowSize}`))
    }
    let timer: ReturnType<typeof setTimeout> | undefined
    let onAbort: (() => void) | undefined
    const promise = new Promise<RowResult[]>((resolve, reject) => {
      const cleanup = () => {
        if (timer !== undefined) clearTimeout(timer)
        if (onAbort) signal?.removeEventListener('abort', onAbort)
      }
      const req: Request = {
        // A copy: the caller may reuse its buffer while the request waits.
        input: data.slice(0, n * rowSize),
        rowShape,
        rowSize,
        wire,
        slots: [],
        next: 0,
        remaining: n,
        settled: false,
        onToken: options.onToken,
        resolve: (rows) => {
          if (req.settled) return
          req.settled = true
          this.#open.delete(req)
          cleanup()
          this.#stats.completed++
          resolve(rows)
        },
        fail: (err, kind) => {
          if (req.settled) return
          req.settled = true
          this.#open.delete(req)
          cleanup()
          if (kind !== 'disposed') this.#stats[kind]++
          reject(err)
        },
      }
      for (let i = 0; i < n; i++) req.slots.push({ req, index: i, rowId: 0, ids: [], score: 0 })
      if (signal) {
        onAbort = () => req.fail(abortedError(signal!), 'aborted')
        signal.addEventListener('abort', onAbort, { once: true })
      }
      if (at !== undefined) {
        timer = setTimeout(() => req.fail(new DeadlineError(), 'expired'), Math.max(0, at - Date.now()))
      }
      this.#open.add(req)
      this.#queue.push(req)
    })
    const tracked = promise.then(
      () => undefined,
      () => undefined,
    )
    this.#pending.add(tracked)
    void tracked.then(() => this.#pending.delete(tracked))
    this.#kick()
    return promise
  }

  /** Resolves once every request submitted so far has settled. */
  async idle(): Promise<void> {
    await Promise.all([...this.#pending])
  }

  /** Rejects every queued and active request with `reason` (E_DISPOSED) and frees the native rows. Idempotent. */
  close(reason: unknown, batch?: AddonDecodeBatch): void {
    if (this.#closed !== undefined) return
    this.#closed = reason
    for (const r of [...this.#open]) r.fail(reason, 'disposed')
    this.#queue = []
    this.#active.clear()
    batch?.dispose()
  }

  /**
   * Requests waiting to be admitted (what maxQueue bounds). Before the loop's first boundary, those at the head that
   * fit in the free rows do not wait: they join at that boundary, as they would have joined an idle batch at once.
   */
  #waiting(): number {
    let n = this.#queue.length
    if (!this.#starting) return n
    let room = this.#maxBatch - this.#active.size
    for (const r of this.#queue) {
      const left = r.slots.length - r.next
      if (left > room) break
      room -= left
      n--
    }
    return n
  }

  #kick(): void {
    if (this.#running || this.#closed !== undefined) return
    this.#running = true
    // The loop starts after the current job: requests submitted together (a Promise.all over pixel or feature tensors)
    // then join as one prefill, not the first alone and the rest a prefill and a step later.
    this.#starting = true
    void Promise.resolve()
      .then(() => {
        this.#starting = false
        return this.#run()
      })
      .catch((err: unknown) => {
        // A bug, not a model error: fail what is open rather than leave it waiting; settled rows leave next time.
        for (const r of [...this.#open]) r.fail(err, 'failed')
      })
      .finally(() => {
        this.#running = false
        // Work that arrived while the loop was finishing.
        if (this.#closed === undefined && this.#queue.some((r) => !r.settled)) this.#kick()
      })
  }

  async #run(): Promise<void> {
    while (this.#closed === undefined) {
      // Rows of requests that were aborted or expired leave first.
      const gone: number[] = []
      for (const [id, s] of this.#active) if (s.req.settled) gone.push(id)
      if (gone.length > 0) {
        for (const id of gone) this.#active.delete(id)
        if (!(await this.#op(() => this.#host.batch().remove(gone)))) return
      }
      this.#queue = this.#queue.filter((r) => !r.settled)
      // Newcomers join at this boundary, up to maxBatch rows in all, first come first served. A request joins whole
      // (it waits until its rows fit); only one with more rows than maxBatch joins in parts.
      const joining: Slot[][] = []
      let room = this.#maxBatch - this.#active.size
      while (room > 0 && this.#queue.length > 0) {
        const r = this.#queue[0]!
        const left = r.slots.length - r.next
        if (left > room && r.slots.length <= this.#maxBatch) break
        const n = Math.min(left, room)
        joining.push(r.slots.slice(r.next, r.next + n))
        r.next += n
        room -= n
        if (r.next === r.slots.length) this.#queue.shift()
      }
      // Newcomers with inputs of one shape (pixels of one size, or CLIP features) are encoded and prefilled together.
      const groups = new Map<string, Slot[][]>()
      for (const slots of joining) {
        const key = slots[0]!.req.rowShape.join('x')
        const g = groups.get(key)
        if (g) g.push(slots)
        else groups.set(key, [slots])
      }
      for (const parts of groups.values()) if (!(await this.#prefill(parts))) return
      if (this.#active.size === 0) {
        if (this.#queue.length === 0) return
        continue
      }
      let out: RowTokenWire[] | undefined
      try {
        // A burst only while nobody waits: a newcomer joins at the next call's boundary.
        const burst = this.#queue.length === 0 ? (this.#host.burst ?? 1) : 1
        out = await this.#host.job(() => this.#host.batch().step(burst))
      } catch (err) {
        if (this.#fatal(err)) return
        // The step failed: its rows' state is unknown, so they all leave and their requests fail.
        const ids = [...this.#active.keys()]
        for (const s of this.#active.values()) s.req.fail(err, 'failed')
        this.#active.clear()
        if (!(await this.#op(() => this.#host.batch().remove(ids)))) return
        continue
      }
      if (this.#closed !== undefined) return
      // A burst's tokens come step by step: a row's j-th token in `out` is from step j of the call.
      const seen = new Map<number, number>()
      const rowsPerStep: number[] = []
      for (const t of out) {
        const j = seen.get(t.rowId) ?? 0
        seen.set(t.rowId, j + 1)
        rowsPerStep[j] = (rowsPerStep[j] ?? 0) + 1
      }
      for (const n of rowsPerStep) {
        this.#stats.steps++
        this.#stats.rowSteps += n
        this.#stats.rowsPerStep[Math.min(n, this.#maxBatch)]!++
      }
      for (const t of out) {
        const s = this.#active.get(t.rowId)
        if (s) this.#apply(t, s)
      }
    }
  }

  /** Runs a housekeeping op; false when the batcher is closing. Other failures are ignored (rows already left). */
  async #op(fn: () => Promise<unknown>): Promise<boolean> {
    try {
      await this.#host.job(fn)
    } catch (err) {
      if (this.#fatal(err)) return false
    }
    return this.#closed === undefined
  }

  /** E_DISPOSED from the model: closes the batcher (rejecting everything) and says so. */
  #fatal(err: unknown): boolean {
    if (this.#closed !== undefined) return true
    if (err instanceof SemicapError && err.code === 'E_DISPOSED') {
      this.close(err)
      return true
    }
    return false
  }

  /**
   * Prefills newcomers: parts of one or more requests whose inputs have one shape. Their images are CLIP-encoded,
   * mapped and prefilled in one native call (one batch through CLIP and GPT-2's prefix, the expensive part of a short
   * caption), and they join the decode. A failure fails the requests of this call. False when the batcher is closing.
   */
  async #prefill(parts: Slot[][]): Promise<boolean> {
    const live = parts.filter((slots) => !slots[0]!.req.settled)
    if (live.length === 0) return true
    const { rowShape, rowSize } = live[0]![0]!.req
    const slots = live.flat()
    const input = new Float32Array(slots.length * rowSize)
    slots.forEach((s, i) => input.set(s.req.input.subarray(s.index * rowSize, (s.index + 1) * rowSize), i * rowSize))
    const rows: BatchRowWire[] = slots.map((s) => ({ ...s.req.wire, row: s.index }))
    let out: RowTokenWire[]
    try {
      out = await this.#host.job(() => this.#host.batch().add({ dtype: 'float32', shape: [slots.length, ...rowShape], data: input }, rows))
    } catch (err) {
      if (this.#fatal(err)) return false
      for (const part of live) part[0]!.req.fail(err, 'failed')
      return true
    }
    if (this.#closed !== undefined) return false
    this.#stats.prefills++
    this.#stats.prefillRows += slots.length
    out.forEach((t, i) => {
      const s = slots[i]!
      s.rowId = t.rowId
      if (!t.finished) this.#active.set(t.rowId, s)
      this.#apply(t, s)
    })
    return true
  }

  /** A row's token: recorded, streamed, and when it ends the row, its request may resolve. */
  #apply(t: RowTokenWire, s: Slot): void {
    if (t.finished) this.#active.delete(t.rowId)
    const req = s.req
    if (req.settled) return
    s.ids.push(t.token)
    try {
      req.onToken?.(s.index, t.token)
    } catch (err) {
      req.fail(err, 'failed')
      return
    }
    if (t.finished) {
      s.score = t.score ?? 0
      if (--req.remaining === 0) req.resolve(req.slots.map((x) => ({ ids: x.ids, score: x.score })))
    }
  }
}
