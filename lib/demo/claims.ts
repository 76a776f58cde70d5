// The paper's claims in the demo's world, decided over many runs. One run (one world seed, one captioner seed) is
// not a result: float rounding differs across CPUs and training amplifies it, so a claim whose margin sits inside
// the spread between runs can print "yes" on one machine and "NO" on another. The multi-run evidence (mean ± sd of
// both sides and of the margin over world seeds x captioner seeds, and in how many runs the claim held) is committed
// as lib/demo/evidence.json; a single run prints each claim next to it and says "within noise" where one run cannot
// decide. Everything here is pure (numbers in, numbers and text out).
import { hashOf, type CaptionerName, type DemoConfig } from './config.js'
import type { DemoMetrics } from './experiment.js'
import { pairKey, type WinRate } from './preference.js'

/** One run's numbers: the test metrics of each captioner it trained and the pairwise win rates. */
export interface RunResult {
  worldSeed: number
  seed: number
  metrics: Partial<Record<CaptionerName, DemoMetrics>>
  /** By pairKey ("reward vs full"). */
  preferences: Record<string, WinRate>
}

export interface MeanSd {
  mean: number
  sd: number
}

/** Mean and sample standard deviation (0 for one value). */
export function meanSd(xs: readonly number[]): MeanSd {
  if (xs.length === 0) return { mean: NaN, sd: NaN }
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length
  const sd = xs.length > 1 ? Math.sqrt(xs.reduce((s, x) => s + (x - mean) ** 2, 0) / (xs.length - 1)) : 0
  return { mean, sd }
}

export interface ClaimSpec {
  id: string
  text: string
  /** lhs <relation> rhs. */
  relation: '>=' | '>' | '<='
  /** The two sides in one run; undefined when the run lacks a captioner (the ablations are optional). */
  sides(run: RunResult): [number, number] | undefined
}

/** How far a claim holds in one run: positive or zero when it holds (for '>', strictly positive). */
export function margin(spec: Pick<ClaimSpec, 'relation'>, [lhs, rhs]: [number, number]): number {
  return spec.relation === '<=' ? rhs - lhs : lhs - rhs
}

export function holds(spec: Pick<ClaimSpec, 'relation'>, sides: [number, number]): boolean {
  const m = margin(spec, sides)
  return spec.relation === '>' ? m > 0 : m >= 0
}

const metric = (name: CaptionerName, key: keyof DemoMetrics) => (run: RunResult) => run.metrics[name]?.[key]
const both = (a: number | undefined, b: number | undefined): [number, number] | undefined => (a === undefined || b === undefined ? undefined : [a, b])
const compare = (a: CaptionerName, b: CaptionerName, key: keyof DemoMetrics, scale = 1) => (run: RunResult) => {
  const x = metric(a, key)(run)
  const y = metric(b, key)(run)
  return both(x, y === undefined ? undefined : scale * y)
}
/** Share of images the first captioner wins, against the share it loses (fact preference). */
const preference = (a: CaptionerName, b: CaptionerName) => (run: RunResult) => {
  const w = run.preferences[pairKey([a, b])]
  return w ? ([w.win, w.loss] as [number, number]) : undefined
}
/** Reward CLIP-S minus judge CLIP-S: the part of the reward the held-out judge does not confirm. */
const gap = (name: CaptionerName) => (run: RunResult) => {
  const m = run.metrics[name]
  return m ? m.clipS - m.judgeClipS : undefined
}

/**
 * The claims. CLIP-S and R@1 are the held-out judge's (the reward CLIP's own numbers would reward gaming it); object
 * precision/recall/F1 and the fact preference come from the scene graph, the ground truth.
 */
export const CLAIMS: readonly ClaimSpec[] = [
  { id: 'c-a-clips', text: '(c) CLIP-S judge >= (a) CLIP-S judge', relation: '>=', sides: compare('reward', 'full', 'judgeClipS') },
  { id: 'c-a-f1', text: '(c) object F1 >= (a) object F1', relation: '>=', sides: compare('reward', 'full', 'objectF1') },
  { id: 'c-a-cider', text: '(c) CIDEr-D >= 90% of (a) CIDEr-D', relation: '>=', sides: compare('reward', 'full', 'ciderD', 0.9) },
  { id: 'c-b-clips', text: '(c) CLIP-S judge > (b) CLIP-S judge', relation: '>', sides: compare('reward', 'small', 'judgeClipS') },
  { id: 'c-b-recall', text: '(c) object recall > (b) object recall', relation: '>', sides: compare('reward', 'small', 'objectRecall') },
  { id: 'c-b-rep', text: '(c) repetition rate <= (b) repetition rate', relation: '<=', sides: compare('reward', 'small', 'repetitionRate') },
  { id: 'c-a-pref', text: '(c) wins against (a) by facts at least as often as it loses', relation: '>=', sides: preference('reward', 'full') },
  { id: 'b+-b-r1', text: '(b+) R@1 judge > (b) R@1 judge (stage-1 contrast: distinctive captions)', relation: '>', sides: compare('contrast', 'small', 'judgeRecallAt1') },
  { id: 'b+-b-f1', text: '(b+) object F1 > (b) object F1', relation: '>', sides: compare('contrast', 'small', 'objectF1') },
  { id: 'c-c--f1', text: '(c) object F1 > (c-) object F1 (stage-1 contrast helps the final captioner)', relation: '>', sides: compare('reward', 'reward-from-b', 'objectF1') },
  { id: 'c-c--pref', text: '(c) wins against (c-) by facts more often than it loses', relation: '>', sides: preference('reward', 'reward-from-b') },
  {
    id: 'nokl-gap',
    text: '(c/noKL) reward-minus-judge CLIP-S gap > (c) gap (without KL, stage 2 games its reward CLIP more)',
    relation: '>',
    sides: (run) => both(gap('reward-no-kl')(run), gap('reward')(run)),
  },
  { id: 'nokl-f1', text: '(c) object F1 > (c/noKL) object F1 (without KL, stage 2 drifts from the truth)', relation: '>', sides: compare('reward', 'reward-no-kl', 'objectF1') },
  { id: 'norep-rep', text: '(c/noRep) repetition rate > (c) repetition rate (the penalty holds repetition back)', relation: '>', sides: compare('reward-no-rep', 'reward', 'repetitionRate') },
]

export interface ClaimEvidence {
  id: string
  text: string
  /** Runs that had both sides. */
  runs: number
  /** Runs in which the claim held. */
  held: number
  lhs: MeanSd
  rhs: MeanSd
  margin: MeanSd
}

/** The committed multi-run evidence (lib/demo/evidence.json). */
export interface Evidence {
  /** Which configuration it is about: evidenceKey() of the default config. */
  configKey: string
  /** How it was made (the command, the machine, when, how long). */
  provenance: Record<string, string | number>
  runs: { worldSeed: number; seed: number }[]
  claims: ClaimEvidence[]
  /** Per captioner letter, per metric: mean ± sd over the runs. */
  table: Record<string, Record<string, MeanSd>>
  /** Per pair key: win / tie / loss shares, mean ± sd over the runs. */
  preferences: Record<string, { win: MeanSd; tie: MeanSd; loss: MeanSd }>
}

/** The configuration the evidence is about, without the world seed (the evidence spans several). */
export function evidenceKey(cfg: DemoConfig): string {
  return hashOf({ ...cfg, world: { ...cfg.world, seed: 0 } })
}

/** Per-claim evidence over runs. */
export function claimEvidence(runs: readonly RunResult[], claims: readonly ClaimSpec[] = CLAIMS): ClaimEvidence[] {
  return claims.map((c) => {
    const sides = runs.map((r) => c.sides(r)).filter((s): s is [number, number] => s !== undefined && s.every(Number.isFinite))
    return {
      id: c.id,
      text: c.text,
      runs: sides.length,
      held: sides.filter((s) => holds(c, s)).length,
      lhs: meanSd(sides.map((s) => s[0])),
      rhs: meanSd(sides.map((s) => s[1])),
      margin: meanSd(sides.map((s) => margin(c, s))),
    }
  })
}

/** One claim in one run, next to the multi-run evidence. */
export interface ClaimVerdict {
  id: string
  text: string
  /** This run's two sides; undefined when the run lacks a captioner of the claim. */
  values?: [number, number]
  margin?: number
  holds?: boolean
  evidence?: ClaimEvidence
  /**
   * One run cannot decide: the claim did not hold in every run of the evidence, or this run's margin is smaller than
   * two standard deviations of the margin across runs (another CPU's rounding could flip it).
   */
  withinNoise: boolean
}

/** The claims in `run`, judged against `evidence` (matched by claim id; none: nothing to compare with). */
export function verdicts(run: RunResult, evidence: readonly ClaimEvidence[] | undefined, claims: readonly ClaimSpec[] = CLAIMS): ClaimVerdict[] {
  return claims.map((c) => {
    const ev = evidence?.find((e) => e.id === c.id && e.runs > 0)
    const sides = c.sides(run)
    const v: ClaimVerdict = { id: c.id, text: c.text, withinNoise: false, ...(ev ? { evidence: ev } : {}) }
    if (sides) {
      v.values = sides
      v.margin = margin(c, sides)
      v.holds = holds(c, sides)
    }
    if (ev) v.withinNoise = ev.held < ev.runs || (v.margin !== undefined && Math.abs(v.margin) < 2 * ev.margin.sd)
    return v
  })
}

const num = (x: number) => x.toFixed(3)
const signed = (x: number) => (x >= 0 ? '+' : '') + x.toFixed(3)

/** "held in 6/6 runs, margin +0.190 ± 0.020". */
export function formatEvidence(e: ClaimEvidence): string {
  return `held in ${e.held}/${e.runs} runs, margin ${signed(e.margin.mean)} ± ${num(e.margin.sd)}`
}

/**
 * One line per claim: this run's verdict and numbers, then the multi-run evidence and "within noise" where one run
 * cannot decide.
 */
export function formatVerdicts(vs: readonly ClaimVerdict[], options: { ablationsHint?: boolean } = {}): string {
  return vs
    .map((v) => {
      const head = v.holds === undefined ? '-  ' : v.holds ? 'yes' : 'NO '
      const here = v.values ? `${num(v.values[0])} vs ${num(v.values[1])}` : `not run${options.ablationsHint ? ' (--ablations)' : ''}`
      const ev = v.evidence ? `${formatEvidence(v.evidence)}${v.withinNoise ? ' -> within noise' : ''}` : 'no multi-run evidence for this configuration'
      return `${head}  ${v.text}\n       this run: ${here}; over runs: ${ev}`
    })
    .join('\n')
}

/** The verdict of the evidence alone: holds (every run, margin above 2 sd), does not hold (no run), or within noise. */
export function evidenceVerdict(e: ClaimEvidence): 'holds' | 'does not hold' | 'within noise' | 'not run' {
  if (e.runs === 0) return 'not run'
  if (e.held === e.runs && e.margin.mean > 2 * e.margin.sd) return 'holds'
  if (e.held === 0) return 'does not hold'
  return 'within noise'
}

/** The multi-run evidence as lines (the multi-run mode prints this instead of one run's verdicts). */
export function formatClaimEvidence(claims: readonly ClaimEvidence[]): string {
  const heads = { holds: 'yes', 'does not hold': 'NO ', 'within noise': '~  ', 'not run': '-  ' } as const
  return claims
    .map((e) => {
      const verdict = evidenceVerdict(e)
      const numbers = e.runs === 0 ? 'not run' : `${num(e.lhs.mean)}±${num(e.lhs.sd)} vs ${num(e.rhs.mean)}±${num(e.rhs.sd)}; ${formatEvidence(e)}`
      return `${heads[verdict]}  ${e.text}\n       ${numbers}${verdict === 'within noise' ? ' -> within noise' : ''}`
    })
    .join('\n')
}
