// This process's resident memory in bytes (Linux /proc): the whole set, its anonymous part, its file-backed part, and
// the peak of the whole set so far (VmHWM).
// Read by the RSS child processes of test/kernels.test.ts.
import { readFileSync } from 'node:fs'

export interface Rss {
  total: number
  anon: number
  file: number
  peak: number
}

export function rss(): Rss {
  const s = readFileSync('/proc/self/status', 'utf8')
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? NaN) * 1024
  return { total: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile'), peak: kb('VmHWM') }
}
