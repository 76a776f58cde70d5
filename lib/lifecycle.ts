// One model's lifetime on the JS side: its call queue, the training runs it has started, and disposal that never
// blocks the JS thread. Native Dispose() takes the model's lock, which a running job (an inference worker, a trainer
// thread for a whole run) holds; a trainer may in turn wait on the JS thread (rewards). So dispose() here marks the
// model disposed at once, aborts its runs, lets calls queued behind the running one fail with E_DISPOSED, and calls
// the native release only once nothing native holds the lock any more.
import { SemicapError } from './errors.js'
import { Serial } from './serial.js'

interface Run {
  abort(reason?: unknown): void
  then(ok: () => void, bad: () => void): unknown
}

export class Lifecycle {
  readonly #serial = new Serial()
  readonly #runs = new Set<Run>()
  readonly #what: string
  readonly #release: () => void | Promise<void>
  #disposed = false
  #released: Promise<void> | undefined

  constructor(what: string, release: () => void | Promise<void>) {
    this.#what = what
    this.#release = release
  }

  get disposed(): boolean {
    return this.#disposed
  }

  /** Throws E_DISPOSED once dispose() was called. */
  live(): void {
    if (this.#disposed) throw new SemicapError('E_DISPOSED', `${this.#what} was disposed`)
  }

  /** Queues a job; it fails with E_DISPOSED instead of running when the model was disposed meanwhile. */
  job<T>(fn: () => Promise<T>): Promise<T> {
    return this.#serial.run(async () => {
      this.live()
      return fn()
    })
  }

  /** Remembers a training run until it settles, so that dispose() can stop it. */
  track<R extends Run>(run: R): R {
    this.#runs.add(run)
    const done = () => void this.#runs.delete(run)
    run.then(done, done)
    return run
  }

  /** Resolves once every job queued so far has settled. */
  drain(): Promise<void> {
    return this.#serial.drain()
  }

  /**
   * Marks the model disposed, aborts its training runs (they reject with E_DISPOSED) and releases native memory once
   * the running job or run has stopped (at once when idle). Idempotent; the promise resolves after the release.
   */
  dispose(): Promise<void> {
    if (this.#released) return this.#released
    this.#disposed = true
    const reason = new SemicapError('E_DISPOSED', `${this.#what} was disposed`)
    const runs = [...this.#runs]
    for (const r of runs) r.abort(reason)
    // A failed release is reported, never thrown: callers commonly ignore the promise.
    const warn = (err: unknown) => process.emitWarning(`semicap: releasing a ${this.#what} failed: ${(err as Error)?.message ?? String(err)}`)
    if (runs.length === 0 && this.#serial.pending === 0) {
      // Idle: release now, as a synchronous dispose() always did.
      let result: void | Promise<void> = undefined
      try {
        result = this.#release()
      } catch (err) {
        warn(err)
      }
      this.#released = Promise.resolve(result).catch(warn)
    } else {
      const settled = runs.map((r) => new Promise<void>((ok) => r.then(ok, ok)))
      this.#released = Promise.all(settled)
        .then(() => this.#serial.drain())
        .then(() => this.#release())
        .catch(warn)
    }
    return this.#released
  }
}
