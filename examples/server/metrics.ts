// Prometheus text exposition format (version 0.0.4), the few metric kinds the server needs, no dependency.
// https://prometheus.io/docs/instrumenting/exposition_formats/

type Labels = Record<string, string>

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

function labelText(labels: Labels | undefined): string {
  if (!labels) return ''
  const keys = Object.keys(labels)
  if (keys.length === 0) return ''
  return `{${keys.map((k) => `${k}="${escapeLabel(labels[k]!)}"`).join(',')}}`
}

function num(v: number): string {
  if (Number.isNaN(v)) return 'NaN'
  if (v === Infinity) return '+Inf'
  if (v === -Infinity) return '-Inf'
  return String(v)
}

interface Metric {
  render(out: string[]): void
}

function header(out: string[], name: string, help: string, type: string): void {
  out.push(`# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`)
  out.push(`# TYPE ${name} ${type}`)
}

export class Counter implements Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>()
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}
  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels)
    const e = this.#values.get(key)
    if (e) e.value += by
    else this.#values.set(key, { labels, value: by })
  }
  get(labels: Labels = {}): number {
    return this.#values.get(labelText(labels))?.value ?? 0
  }
  render(out: string[]): void {
    header(out, this.name, this.help, 'counter')
    for (const { labels, value } of this.#values.values()) out.push(`${this.name}${labelText(labels)} ${num(value)}`)
  }
}

/**
 * A value read when scraped: `read` returns one value, or [labels, value] pairs, or undefined (left out). A gauge,
 * or a counter kept elsewhere (type 'counter').
 */
export class Gauge implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly read: () => number | [Labels, number][] | undefined,
    readonly type: 'gauge' | 'counter' = 'gauge',
  ) {}
  render(out: string[]): void {
    const v = this.read()
    if (v === undefined) return
    header(out, this.name, this.help, this.type)
    if (typeof v === 'number') out.push(`${this.name} ${num(v)}`)
    else for (const [labels, value] of v) out.push(`${this.name}${labelText(labels)} ${num(value)}`)
  }
}

/** A histogram with fixed upper bounds, fed by observe(). */
export class Histogram implements Metric {
  readonly #counts: number[]
  #sum = 0
  #count = 0
  constructor(
    readonly name: string,
    readonly help: string,
    readonly bounds: number[],
  ) {
    this.#counts = new Array(bounds.length).fill(0)
  }
  observe(v: number): void {
    this.#sum += v
    this.#count++
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) this.#counts[i]!++
  }
  get count(): number {
    return this.#count
  }
  render(out: string[]): void {
    renderHistogram(out, this.name, this.help, this.bounds, this.#counts, this.#count, this.#sum)
  }
}

/** Renders cumulative bucket counts (counts[i] = observations <= bounds[i]). */
export function renderHistogram(out: string[], name: string, help: string, bounds: number[], cumulative: number[], count: number, sum: number): void {
  header(out, name, help, 'histogram')
  for (let i = 0; i < bounds.length; i++) out.push(`${name}_bucket{le="${num(bounds[i]!)}"} ${cumulative[i]}`)
  out.push(`${name}_bucket{le="+Inf"} ${count}`)
  out.push(`${name}_sum ${num(sum)}`)
  out.push(`${name}_count ${count}`)
}

/** A histogram computed when scraped (e.g. from the captioner's own statistics). */
export class ComputedHistogram implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly bounds: number[],
    /** value -> number of observations of it; undefined: nothing to report (the metric is left out). */
    readonly read: () => Map<number, number> | undefined,
  ) {}
  render(out: string[]): void {
    const h = this.read()
    if (!h) return
    const cumulative = this.bounds.map(() => 0)
    let count = 0
    let sum = 0
    for (const [v, n] of h) {
      count += n
      sum += v * n
      for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) cumulative[i]! += n
    }
    renderHistogram(out, this.name, this.help, this.bounds, cumulative, count, sum)
  }
}

/** Quantiles over a sliding window of the latest `window` observations, plus the all-time count and sum. */
export class Summary implements Metric {
  readonly #ring: Float64Array
  #n = 0
  #sum = 0
  #count = 0
  constructor(
    readonly name: string,
    readonly help: string,
    readonly quantiles: number[] = [0.5, 0.9, 0.99],
    window = 2048,
  ) {
    this.#ring = new Float64Array(window)
  }
  observe(v: number): void {
    this.#ring[this.#n++ % this.#ring.length] = v
    this.#sum += v
    this.#count++
  }
  /** The q-quantile of the window (nearest rank), NaN when empty. */
  quantile(q: number): number {
    const n = Math.min(this.#n, this.#ring.length)
    if (n === 0) return NaN
    const sorted = Array.from(this.#ring.subarray(0, n)).sort((a, b) => a - b)
    return sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))]!
  }
  render(out: string[]): void {
    header(out, this.name, this.help, 'summary')
    const n = Math.min(this.#n, this.#ring.length)
    const sorted = Array.from(this.#ring.subarray(0, n)).sort((a, b) => a - b)
    for (const q of this.quantiles) {
      const v = n === 0 ? NaN : sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))]!
      out.push(`${this.name}{quantile="${q}"} ${num(v)}`)
    }
    out.push(`${this.name}_sum ${num(this.#sum)}`)
    out.push(`${this.name}_count ${this.#count}`)
  }
}

export class Registry {
  readonly #metrics: Metric[] = []
  add<M extends Metric>(m: M): M {
    this.#metrics.push(m)
    return m
  }
  /** The exposition text (Content-Type: text/plain; version=0.0.4). */
  render(): string {
    const out: string[] = []
    for (const m of this.#metrics) m.render(out)
    return out.join('\n') + '\n'
  }
}

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'
