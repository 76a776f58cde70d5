/** Error codes every SemicapError carries in `.code`. */
export type ErrorCode =
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_DEVICE'
  | 'E_VALUE'
  | 'E_CHECKPOINT'
  | 'E_CONFIG'
  | 'E_IMAGE'
  | 'E_TOKENIZER'
  | 'E_DATA'
  | 'E_ABORTED'
  | 'E_BUSY'
  | 'E_DISPOSED'
  | 'E_NATIVE'
  | 'E_IO'
  /** A tensor's memory went away: its ArrayBuffer was detached (transferred) or shrunk below the tensor's size. */
  | 'E_DETACHED'

/** The one error class of the library: a message that says what and where, and a stable `.code`. */
export class SemicapError extends Error {
  readonly code: ErrorCode
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'SemicapError'
    this.code = code
  }
}

/** AbortError as thrown by Node's own APIs (name 'AbortError'), with code E_ABORTED. */
export class AbortError extends SemicapError {
  constructor(message = 'The operation was aborted', options?: { cause?: unknown }) {
    super('E_ABORTED', message, options)
    this.name = 'AbortError'
  }
}

/**
 * Runs `fn` and, if it rejects, rethrows with the caller's stack (captured before the async hop),
 * like sharp does: native and worker stacks say nothing useful to the user.
 */
export async function withCallerStack<T>(fn: () => Promise<T>): Promise<T> {
  const holder: { stack?: string } = {}
  Error.captureStackTrace(holder, withCallerStack)
  try {
    return await fn()
  } catch (err) {
    if (err instanceof Error && holder.stack) {
      const callerFrames = holder.stack.split('\n').slice(1).join('\n')
      err.stack = `${err.name}: ${err.message}\n${callerFrames}`
    }
    throw err
  }
}
