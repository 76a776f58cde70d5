// A minimal Chrome DevTools Protocol client for the tests that drive headless Chromium (server.test.ts,
// report.test.ts).
import { spawn, type ChildProcess } from 'node:child_process'
import type { Readable, Writable } from 'node:stream'

/** A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3: to Chromium, fd 4: from it; NUL-separated JSON). */
export class Cdp {
  #id = 0
  readonly #pending = new Map<number, { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void; method: string }>()
  readonly #listeners = new Set<(method: string, params: Record<string, unknown>, sessionId?: string) => void>()
  #buffer = ''
  constructor(
    readonly out: Writable,
    input: Readable,
  ) {
    input.on('data', (d: Buffer) => {
      this.#buffer += d.toString('utf8')
      let nul: number
      while ((nul = this.#buffer.indexOf('\0')) >= 0) {
        const msg = JSON.parse(this.#buffer.slice(0, nul)) as { id?: number; result?: Record<string, unknown>; error?: { message: string }; method?: string; params?: Record<string, unknown>; sessionId?: string }
        this.#buffer = this.#buffer.slice(nul + 1)
        if (msg.id !== undefined) {
          const p = this.#pending.get(msg.id)
          this.#pending.delete(msg.id)
          if (msg.error) p?.reject(new Error(`${p.method}: ${msg.error.message}`))
          else p?.resolve(msg.result ?? {})
        } else if (msg.method) for (const l of this.#listeners) l(msg.method, msg.params ?? {}, msg.sessionId)
      }
    })
  }
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const id = ++this.#id
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new Error(`CDP ${method}: no answer within ${timeoutMs} ms`))
      }, timeoutMs)
      this.#pending.set(id, {
        method,
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      })
      this.out.write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + '\0')
    })
  }
  /** Resolves with the params of the next `method` event (of `sessionId`), or rejects after timeoutMs. */
  waitFor(method: string, sessionId: string | undefined, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const l = (m: string, params: Record<string, unknown>, sid?: string) => {
        if (m === method && sid === sessionId) {
          this.#listeners.delete(l)
          clearTimeout(timer)
          resolve(params)
        }
      }
      const timer = setTimeout(() => {
        this.#listeners.delete(l)
        reject(new Error(`CDP: no ${method} within ${timeoutMs} ms`))
      }, timeoutMs)
      this.#listeners.add(l)
    })
  }
}

/** A headless Chromium driven over --remote-debugging-pipe; `exited` rejects (with its stderr tail) if it dies. */
export interface HeadlessChromium {
  process: ChildProcess
  cdp: Cdp
  exited: Promise<never>
}

export function launchChromium(binary: string, profile: string, windowSize: string): HeadlessChromium {
  const chromium = spawn(
    binary,
    [
      '--headless=new', '--no-sandbox', '--disable-gpu', '--remote-debugging-pipe', `--user-data-dir=${profile}`, '--no-first-run',
      '--no-default-browser-check', '--disable-extensions', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--disable-dev-shm-usage', '--hide-scrollbars', `--window-size=${windowSize}`, 'about:blank',
    ],
    // Its own process group, so that the caller can end Chromium's helper processes with it.
    { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'], detached: true },
  )
  let stderr = ''
  chromium.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)))
  const exited = new Promise<never>((_, reject) => chromium.once('exit', (code) => reject(new Error(`chromium exited (${code}):\n${stderr}`))))
  exited.catch(() => undefined)
  return { process: chromium, cdp: new Cdp(chromium.stdio[3] as Writable, chromium.stdio[4] as Readable), exited }
}

/** Ends a launched Chromium: politely first (its helpers exit with it), then its whole process group. */
export async function closeChromium(chromium: ChildProcess | undefined, cdp: Cdp | undefined): Promise<void> {
  if (!chromium || chromium.exitCode !== null || chromium.signalCode !== null) return
  const exit = new Promise((r) => chromium.once('exit', r))
  await cdp?.send('Browser.close', {}, undefined, 2_000).catch(() => undefined)
  await Promise.race([exit, new Promise((r) => setTimeout(r, 3_000))])
  try {
    process.kill(-chromium.pid!, 'SIGKILL')
  } catch {
    /* already gone */
  }
  await Promise.race([exit, new Promise((r) => setTimeout(r, 3_000))])
}
