// The native runner: starts an AddonTrainer (its own std::thread), forwards progress as events, wires the
// AbortSignal to abort(), and settles with the summary. Aborts become AbortError (E_ABORTED).
import { AbortError, SemicapError } from '../errors.js'
import { call, type AddonTrainer, type ProgressWire } from '../native.js'
import type { TrainingRun, TrainSummary } from '../trainable.js'

/**
 * `create` builds the native trainer (on the JS thread: the constructor clones the data, so the caller's buffers are
 * free again once it returns) with the progress callback given. `rewardError` returns the JS error a reward
 * callback threw, attached as the cause of the run's error.
 */
export async function runNativeTrainer(
  create: (onProgress: (p: ProgressWire) => void) => AddonTrainer,
  run: TrainingRun,
  signal: AbortSignal,
  rewardError: () => unknown = () => undefined,
): Promise<TrainSummary> {
  if (signal.aborted) throw new AbortError('training was aborted before it started')
  const trainer = await call(() =>
    create((p) => {
      run.emit('progress', p)
      if (p.checkpoint) run.emit('checkpoint', { step: p.step, path: p.checkpoint })
    }),
  )
  const onAbort = () => trainer.abort()
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    return await call(() => trainer.start())
  } catch (err) {
    if (err instanceof SemicapError && err.code === 'E_ABORTED') throw new AbortError(err.message, { cause: signal.reason })
    const cause = rewardError()
    if (cause !== undefined && err instanceof Error && err.cause === undefined) Object.defineProperty(err, 'cause', { value: cause, configurable: true, writable: true })
    throw err
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}
