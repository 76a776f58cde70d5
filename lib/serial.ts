// Calls on one model run one after another: native weights are shared and a job holds the model's lock, so a
// JS-side queue keeps callers from tying up every libuv thread waiting on that lock.
export class Serial {
  #tail: Promise<unknown> = Promise.resolve()
  #pending = 0

  get pending(): number {
    return this.#pending
  }

  /** Resolves once every job queued so far has settled (what async disposal waits for). */
  drain(): Promise<void> {
    return this.run(async () => undefined)
  }

  run<T>(job: () => Promise<T>): Promise<T> {
    this.#pending++
    const result = this.#tail.then(job, job)
    this.#tail = result.then(
      () => this.#pending--,
      () => this.#pending--,
    )
    return result
  }
}
