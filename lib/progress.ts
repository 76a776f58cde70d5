// A small dependency-free progress bar for the command line (train, eval, demo): label, bar, done/total, rate and
// ETA. On a TTY it redraws one line in place (\r); elsewhere (a pipe, a CI log) it prints a plain line about every
// 10% of the work or every 5 seconds, whichever comes first, so logs stay short but show a run is alive.

/** Where the bar is written: process.stderr, or anything with write() (isTTY and columns are read when present). */
export interface ProgressStream {
  write(text: string): unknown
  isTTY?: boolean
  columns?: number
}

export interface ProgressOptions {
  /** Default process.stderr. */
  stream?: ProgressStream
  /** Force in-place redrawing on or off (default: stream.isTTY). */
  tty?: boolean
  /** What is counted, shown after the rate: 'steps' gives "3.2 steps/s" (default 'it'). */
  unit?: string
  /** Non-TTY: print at least every this many milliseconds (default 5000). */
  intervalMs?: number
  /** TTY: redraw at most every this many milliseconds (default 100). */
  redrawMs?: number
  /** Clock in milliseconds (tests). Default performance.now. */
  now?: () => number
}

/** "42s", "3m05s", "2h07m"; '?' for an unknown or infinite duration. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?'
  const s = Math.round(seconds)
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  const h = Math.floor(s / 3600)
  return `${h}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
}

function formatRate(perSecond: number, unit: string): string {
  if (!Number.isFinite(perSecond) || perSecond <= 0) return `- ${unit}/s`
  if (perSecond >= 1) return `${perSecond >= 100 ? perSecond.toFixed(0) : perSecond.toFixed(1)} ${unit}/s`
  return `${(1 / perSecond).toFixed(1)} s/${unit}`
}

export class ProgressBar {
  readonly #stream: ProgressStream
  readonly #tty: boolean
  readonly #unit: string
  readonly #intervalMs: number
  readonly #redrawMs: number
  readonly #now: () => number
  #label: string
  #total: number
  #done = 0
  #start: number
  /** The first update (count and time): the rate is measured from it, so a run resumed at step k is not credited
   *  with k steps in no time. */
  #base: [number, number] | undefined
  #lastDraw = -Infinity
  #lastDecile = -1
  #lastDrawnDone = -1
  #lastDrawnNote = ''
  #note = ''
  #drawn = false
  #finished = false

  constructor(label: string, total: number, options: ProgressOptions = {}) {
    if (!(total >= 0) || !Number.isFinite(total)) throw new RangeError(`ProgressBar: total must be a finite number >= 0, got ${total}`)
    this.#label = label
    this.#total = total
    this.#stream = options.stream ?? process.stderr
    this.#tty = options.tty ?? this.#stream.isTTY === true
    this.#unit = options.unit ?? 'it'
    this.#intervalMs = options.intervalMs ?? 5000
    this.#redrawMs = options.redrawMs ?? 100
    this.#now = options.now ?? (() => performance.now())
    this.#start = this.#now()
  }

  get done(): number {
    return this.#done
  }
  get total(): number {
    return this.#total
  }

  /** Sets the count (and optionally a short note shown at the end of the line, e.g. "loss 2.31"). */
  update(done: number, note?: string): void {
    if (this.#finished) return
    this.#done = Math.max(0, Math.min(done, this.#total))
    this.#base ??= [this.#done, this.#now()]
    if (note !== undefined) this.#note = note
    this.#maybeDraw()
  }

  /** Adds `n` to the count. */
  tick(n = 1, note?: string): void {
    this.update(this.#done + n, note)
  }

  /** A new total (when it becomes known later), keeping the count. */
  setTotal(total: number): void {
    if (!(total >= 0) || !Number.isFinite(total)) throw new RangeError(`ProgressBar: total must be a finite number >= 0, got ${total}`)
    this.#total = total
  }

  /** Text printed above the bar without breaking it. */
  log(text: string): void {
    if (this.#tty && this.#drawn) this.#stream.write('\r\x1b[K')
    this.#stream.write(text.endsWith('\n') ? text : `${text}\n`)
    if (this.#tty && this.#drawn && !this.#finished) this.#draw()
  }

  /** Draws the final state and ends the line; later updates are ignored. */
  finish(note?: string): void {
    if (this.#finished) return
    if (note !== undefined) this.#note = note
    // A log already ends with this exact line: do not repeat it.
    if (this.#tty || this.#lastDrawnDone !== this.#done || this.#lastDrawnNote !== this.#note) this.#draw(true)
    this.#finished = true
  }

  /** Ends the line where it is (an interrupted or failed run); nothing is drawn afterwards. */
  stop(): void {
    if (this.#finished) return
    if (this.#tty && this.#drawn) this.#stream.write('\n')
    this.#finished = true
  }

  /** The line as it would be drawn now (without \r or newline). */
  render(width = 80): string {
    const t = this.#now()
    const elapsed = (t - this.#start) / 1000
    const [d0, t0] = this.#base ?? [0, this.#start]
    const rate = t > t0 && this.#done > d0 ? ((this.#done - d0) * 1000) / (t - t0) : NaN
    const left = this.#total - this.#done
    const eta = left === 0 ? 0 : rate > 0 ? left / rate : NaN
    const frac = this.#total > 0 ? this.#done / this.#total : 1
    const pct = `${Math.floor(frac * 100)}%`.padStart(4)
    const counts = `${this.#done}/${this.#total}`
    const timing = `${formatRate(rate, this.#unit)} ${left === 0 ? `in ${formatDuration(elapsed)}` : `ETA ${formatDuration(eta)}`}`
    const note = this.#note ? ` ${this.#note}` : ''
    const fixed = `${this.#label} ${pct} ${counts} ${timing}${note}`
    const barWidth = Math.max(0, Math.min(30, width - fixed.length - 4))
    if (barWidth < 5) return fixed
    const full = Math.round(frac * barWidth)
    const bar = `[${'#'.repeat(full)}${'.'.repeat(barWidth - full)}]`
    return `${this.#label} ${bar} ${pct} ${counts} ${timing}${note}`
  }

  #maybeDraw(): void {
    const t = this.#now()
    if (this.#tty) {
      if (t - this.#lastDraw >= this.#redrawMs || this.#done === this.#total) this.#draw()
      return
    }
    // The complete line is left to finish() (which may add a note), so that a log does not show it twice.
    if (this.#done === this.#total) return
    const decile = this.#total > 0 ? Math.floor((this.#done / this.#total) * 10) : 10
    if (decile > this.#lastDecile || t - this.#lastDraw >= this.#intervalMs) this.#draw()
  }

  #draw(final = false): void {
    const t = this.#now()
    this.#lastDraw = t
    this.#lastDrawnDone = this.#done
    this.#lastDrawnNote = this.#note
    this.#lastDecile = this.#total > 0 ? Math.floor((this.#done / this.#total) * 10) : 10
    if (this.#tty) {
      const width = (this.#stream.columns ?? 80) - 1
      let line = this.render(width)
      if (line.length > width) line = line.slice(0, Math.max(0, width))
      this.#stream.write(`\r\x1b[K${line}${final ? '\n' : ''}`)
      this.#drawn = !final
    } else {
      this.#stream.write(`${this.render(0)}\n`)
    }
  }
}
