// The one place where the server meets the Captioner's batching API (caption() with signal / deadline, stream(),
// batchStats()). Everything the server needs from the library goes through `captionEngine()`, so a change of that
// API is fixed here. Each method degrades when the captioner lacks the feature: no stream() -> the caption is
// computed whole and its pieces are sent at the end; no batchStats() -> no batch-size histogram.
import type { Caption, Captioner, DecodeOptions, Tensor } from '../../lib/index.js'

export interface CaptionResult {
  text: string
  /** Mean log-probability per token; null when the library did not report it (see stream()). */
  score: number | null
}

/** The captioner's batching counters, in the shape the server's /metrics uses. */
export interface EngineStats {
  /** Continuous batching on (maxBatch > 1). */
  batching: boolean
  maxBatch: number
  /** Rows decoding now; requests waiting to be admitted into the decode batch. */
  activeRows: number
  queued: number
  /** Decode steps run, and rows x steps (tokens produced). */
  steps: number
  rowSteps: number
  /** rows -> number of decode steps that ran that many rows together. */
  rowsPerStep: Map<number, number>
  /** Requests the library finished, aborted (signal), expired (deadline), refused (E_BUSY), failed otherwise. */
  outcomes: Record<string, number>
}

export interface Engine {
  /** Captions one preprocessed image [1,3,S,S]; `signal` takes its row out of the batch when aborted. */
  caption(pixels: Tensor, options: DecodeOptions, signal: AbortSignal): Promise<CaptionResult>
  /**
   * Captions one image, calling `onPiece` with text pieces as tokens are decoded; the pieces joined equal the
   * result's text. `signal` takes the row out of the batch when aborted.
   */
  stream(pixels: Tensor, options: DecodeOptions, signal: AbortSignal, onPiece: (text: string) => void): Promise<CaptionResult>
  /** Whether stream() really streams (false: the pieces arrive together with the result). */
  readonly streams: boolean
  stats(): EngineStats | undefined
}

interface BatchStatsLike {
  maxBatch?: number
  active?: number
  queued?: number
  steps?: number
  rowSteps?: number
  rowsPerStep?: number[] | Record<string, number>
  completed?: number
  aborted?: number
  expired?: number
  busy?: number
  failed?: number
}

/** The library's optional batching surface (present since continuous batching, issue 15). */
interface BatchingCaptioner {
  stream?: (image: Tensor, options: DecodeOptions & { signal?: AbortSignal }) => AsyncIterator<unknown, unknown> & AsyncIterable<unknown>
  batchStats?: () => BatchStatsLike
}

function scoreOf(v: unknown): number | null {
  if (v && typeof v === 'object' && typeof (v as { score?: unknown }).score === 'number') return (v as Caption).score
  return null
}

export function captionEngine(cap: Captioner): Engine {
  const b = cap as unknown as BatchingCaptioner
  const hasStream = typeof b.stream === 'function'
  const hasStats = typeof b.batchStats === 'function'

  const caption = async (pixels: Tensor, options: DecodeOptions, signal: AbortSignal): Promise<CaptionResult> => {
    const [c] = await cap.caption(pixels, { ...options, signal } as DecodeOptions)
    return { text: c!.text, score: c!.score }
  }

  return {
    streams: hasStream,
    caption,
    async stream(pixels, options, signal, onPiece) {
      if (!hasStream) {
        // No streaming in the library: the whole caption, then one piece.
        const r = await caption(pixels, options, signal)
        if (r.text) onPiece(r.text)
        return r
      }
      const it = b.stream!.call(cap, pixels, { ...options, signal })[Symbol.asyncIterator]()
      let text = ''
      let finished = false
      try {
        for (;;) {
          const r = await it.next()
          if (r.done) {
            finished = true
            // The generator's return value, when the library gives one (a Caption), carries the score.
            const ret = r.value as Partial<Caption> | undefined
            return { text: typeof ret?.text === 'string' ? ret.text : text, score: scoreOf(ret) }
          }
          const piece = typeof r.value === 'string' ? r.value : String((r.value as { text?: unknown })?.text ?? '')
          if (piece) {
            text += piece
            onPiece(piece)
          }
        }
      } finally {
        // Leaving early (the client went away, an error) ends the generator, which takes its row out of the batch.
        if (!finished) await it.return?.(undefined).catch(() => undefined)
      }
    },
    stats() {
      if (!hasStats) return undefined
      const s = b.batchStats!.call(cap)
      const rows = new Map<number, number>()
      const h = s.rowsPerStep
      if (Array.isArray(h)) h.forEach((n, k) => k > 0 && n > 0 && rows.set(k, n))
      else if (h && typeof h === 'object') for (const [k, n] of Object.entries(h)) if (Number(k) > 0 && n > 0) rows.set(Number(k), n)
      const maxBatch = s.maxBatch ?? 1
      return {
        batching: maxBatch > 1,
        maxBatch,
        activeRows: s.active ?? 0,
        queued: s.queued ?? 0,
        steps: s.steps ?? 0,
        rowSteps: s.rowSteps ?? 0,
        rowsPerStep: rows,
        outcomes: { completed: s.completed ?? 0, aborted: s.aborted ?? 0, expired: s.expired ?? 0, busy: s.busy ?? 0, failed: s.failed ?? 0 },
      }
    },
  }
}
