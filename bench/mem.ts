// Resident memory of this process, in MiB, for the benchmark's memory table (Linux /proc; null elsewhere):
// rss now, and hwm (VmHWM: the peak resident set since the process began).
import { readFileSync } from 'node:fs'

export interface Resident {
  rss_mb: number | null
  hwm_mb: number | null
}

export function resident(): Resident {
  let status = ''
  try {
    status = readFileSync('/proc/self/status', 'utf8')
  } catch {
    return { rss_mb: null, hwm_mb: null }
  }
  const mb = (key: string): number | null => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)
    return m ? Number(m[1]) / 1024 : null
  }
  return { rss_mb: mb('VmRSS'), hwm_mb: mb('VmHWM') }
}
