// Pairwise preference between captioners, decided by the scene graph: the world's stand-in for the paper's human
// preference study. For two captions of the same image, the one that states more true facts and fewer false ones
// wins (lib/world's preferByFacts and winRates); a caption that states more true facts but also more false ones ties.
// This module names the pairs the demo compares.
import type { CaptionerName } from './config.js'

/** Shares of the images where the first captioner wins, ties and loses (they sum to 1): lib/world's winRates. */
export interface WinRate {
  win: number
  tie: number
  loss: number
}

/** The comparisons the demo reports: [first, second], "first vs second". */
export const PREFERENCE_PAIRS: readonly (readonly [CaptionerName, CaptionerName])[] = [
  ['reward', 'full'],
  ['reward', 'small'],
  ['contrast', 'small'],
  ['reward', 'reward-from-b'],
]

/** "reward vs full": the key of a pair in results and evidence. */
export function pairKey(pair: readonly [CaptionerName, CaptionerName]): string {
  return `${pair[0]} vs ${pair[1]}`
}

/** "41% / 45% / 14%": win / tie / loss. */
export function formatWinRate(w: Pick<WinRate, 'win' | 'tie' | 'loss'>): string {
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`
  return `${pct(w.win)} / ${pct(w.tie)} / ${pct(w.loss)}`
}
