// How the demo decides its claims: per run (margins, '>' vs '>='), over runs (held in k of n, mean ± sd), and one run
// judged against the committed multi-run evidence ("within noise" where one run cannot decide). Pure: fake runs and
// fake evidence in, expected numbers and lines out.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import {
  CLAIMS,
  claimEvidence,
  evidenceKey,
  evidenceVerdict,
  formatClaimEvidence,
  formatVerdicts,
  holds,
  margin,
  meanSd,
  verdicts,
  type ClaimEvidence,
  type ClaimSpec,
  type Evidence,
  type RunResult,
} from '../lib/demo/claims.js'
import { CAPTIONERS, demoConfig, type CaptionerName } from '../lib/demo/config.js'
import type { DemoMetrics } from '../lib/demo/experiment.js'
import { repoRoot } from './helpers/paths.js'

/** Metrics with every field 0 but the given ones. */
function metrics(m: Partial<DemoMetrics>): DemoMetrics {
  const zero = {
    bleu1: 0, bleu2: 0, bleu3: 0, bleu4: 0, rougeL: 0, ciderD: 0, clipS: 0, refClipS: 0, recallAt1: 0, recallAt5: 0, vocabulary: 0, repetitionRate: 0,
    meanLength: 0, objectPrecision: 0, objectRecall: 0, objectF1: 0, falseFacts: 0, judgeClipS: 0, judgeRefClipS: 0, judgeRecallAt1: 0,
  }
  return { ...zero, ...m }
}

function run(seed: number, m: Partial<Record<CaptionerName, Partial<DemoMetrics>>>, preferences: RunResult['preferences'] = {}): RunResult {
  return { worldSeed: Math.floor(seed / 2), seed: seed % 2, metrics: Object.fromEntries(Object.entries(m).map(([k, v]) => [k, metrics(v)])), preferences }
}

const f1Claim = CLAIMS.find((c) => c.id === 'c-a-f1')!
const repClaim = CLAIMS.find((c) => c.id === 'c-b-rep')!

describe('one run', () => {
  it('margin is positive when a claim holds, for >= and <= alike; > needs a strictly positive margin', () => {
    const ge: Pick<ClaimSpec, 'relation'> = { relation: '>=' }
    const gt: Pick<ClaimSpec, 'relation'> = { relation: '>' }
    const le: Pick<ClaimSpec, 'relation'> = { relation: '<=' }
    expect(margin(ge, [0.7, 0.6])).toBeCloseTo(0.1, 12)
    expect(margin(le, [0.02, 0.05])).toBeCloseTo(0.03, 12)
    expect(holds(ge, [0.5, 0.5])).toBe(true)
    expect(holds(gt, [0.5, 0.5])).toBe(false)
    expect(holds(le, [0.06, 0.05])).toBe(false)
  })

  it('reads each claim\'s two sides from the run: the judge for CLIP-S, 90% of (a) for CIDEr-D, win vs loss for preferences', () => {
    const r = run(0, { reward: { judgeClipS: 1.7, clipS: 1.9, ciderD: 2.0 }, full: { judgeClipS: 1.5, clipS: 9, ciderD: 2.0 } }, { 'reward vs full': { win: 0.4, tie: 0.5, loss: 0.1 } })
    const sides = (id: string) => CLAIMS.find((c) => c.id === id)!.sides(r)
    expect(sides('c-a-clips')).toEqual([1.7, 1.5])
    expect(sides('c-a-cider')![1]).toBeCloseTo(1.8, 12)
    expect(sides('c-a-pref')).toEqual([0.4, 0.1])
    // (b) and the ablations were not run.
    expect(sides('c-b-clips')).toBeUndefined()
    expect(sides('nokl-gap')).toBeUndefined()
    const gap = run(0, { reward: { clipS: 1.8, judgeClipS: 1.7 }, 'reward-no-kl': { clipS: 2.1, judgeClipS: 1.6 } })
    const [noKl, c] = CLAIMS.find((x) => x.id === 'nokl-gap')!.sides(gap)!
    expect(noKl).toBeCloseTo(0.5, 12)
    expect(c).toBeCloseTo(0.1, 12)
  })

  it('every claim names captioners the demo has and has a unique id', () => {
    expect(new Set(CLAIMS.map((c) => c.id)).size).toBe(CLAIMS.length)
    const all = run(0, Object.fromEntries(CAPTIONERS.map((c) => [c.name, {}])), Object.fromEntries(['reward vs full', 'reward vs reward-from-b'].map((k) => [k, { win: 0, tie: 1, loss: 0 }])))
    for (const c of CLAIMS) expect(c.sides(all), c.id).toHaveLength(2)
  })
})

describe('over runs', () => {
  // (c) F1 - (a) F1 over four runs: +0.10, +0.12, +0.08, -0.02 -> held 3 of 4.
  const runs = [0.1, 0.12, 0.08, -0.02].map((d, i) => run(i, { reward: { objectF1: 0.6 + d, repetitionRate: 0.01 }, full: { objectF1: 0.6 }, small: { repetitionRate: 0.02 } }))

  it('counts the runs a claim held in and gives mean ± sd of both sides and of the margin', () => {
    const [f1, rep] = claimEvidence(runs, [f1Claim, repClaim])
    expect(f1!.runs).toBe(4)
    expect(f1!.held).toBe(3)
    expect(f1!.rhs).toEqual({ mean: 0.6, sd: 0 })
    expect(f1!.margin.mean).toBeCloseTo(0.07, 12)
    expect(f1!.margin.sd).toBeCloseTo(meanSd([0.1, 0.12, 0.08, -0.02]).sd, 12)
    expect(rep!.held).toBe(4)
    expect(rep!.margin.mean).toBeCloseTo(0.01, 12)
    // Runs without the claim's captioners do not count.
    const [none] = claimEvidence([run(0, { full: {} })], [f1Claim])
    expect(none!.runs).toBe(0)
    expect(evidenceVerdict(none!)).toBe('not run')
  })

  it('sample sd, 0 for one value', () => {
    expect(meanSd([1, 2, 3])).toEqual({ mean: 2, sd: 1 })
    expect(meanSd([5])).toEqual({ mean: 5, sd: 0 })
  })

  it('calls a claim "holds" only when it held in every run by more than 2 sd', () => {
    const e = (held: number, mean: number, sd: number): ClaimEvidence => ({ id: 'x', text: 'x', runs: 6, held, lhs: { mean: 0, sd: 0 }, rhs: { mean: 0, sd: 0 }, margin: { mean, sd } })
    expect(evidenceVerdict(e(6, 0.1, 0.02))).toBe('holds')
    expect(evidenceVerdict(e(6, 0.03, 0.02))).toBe('within noise')
    expect(evidenceVerdict(e(5, 0.1, 0.02))).toBe('within noise')
    expect(evidenceVerdict(e(0, -0.1, 0.02))).toBe('does not hold')
    expect(formatClaimEvidence([e(5, 0.1, 0.02)])).toBe('~    x\n       0.000±0.000 vs 0.000±0.000; held in 5/6 runs, margin +0.100 ± 0.020 -> within noise')
  })
})

describe('one run against the evidence', () => {
  const evidence: ClaimEvidence[] = [
    { id: 'c-a-f1', text: f1Claim.text, runs: 6, held: 6, lhs: { mean: 0.7, sd: 0.01 }, rhs: { mean: 0.6, sd: 0.01 }, margin: { mean: 0.1, sd: 0.02 } },
    { id: 'c-b-rep', text: repClaim.text, runs: 6, held: 3, lhs: { mean: 0.028, sd: 0.01 }, rhs: { mean: 0.022, sd: 0.01 }, margin: { mean: -0.001, sd: 0.01 } },
  ]

  it('holds: the claim held in every run and this run\'s margin is beyond 2 sd', () => {
    const [v] = verdicts(run(0, { reward: { objectF1: 0.71 }, full: { objectF1: 0.6 } }), evidence, [f1Claim])
    expect(v).toMatchObject({ holds: true, withinNoise: false })
    expect(v!.margin).toBeCloseTo(0.11, 12)
    expect(formatVerdicts([v!])).toBe(
      'yes  (c) object F1 >= (a) object F1\n       this run: 0.710 vs 0.600; over runs: held in 6/6 runs, margin +0.100 ± 0.020',
    )
  })

  it('within noise: a margin under 2 sd of the runs\' margins, even when the claim held in every run', () => {
    const [v] = verdicts(run(0, { reward: { objectF1: 0.63 }, full: { objectF1: 0.6 } }), evidence, [f1Claim])
    expect(v).toMatchObject({ holds: true, withinNoise: true })
    expect(formatVerdicts([v!])).toContain('held in 6/6 runs, margin +0.100 ± 0.020 -> within noise')
  })

  it('within noise: the claim did not hold in every run (whatever this run printed)', () => {
    const [v] = verdicts(run(0, { reward: { repetitionRate: 0.04 }, small: { repetitionRate: 0.04 } }), evidence, [repClaim])
    expect(v).toMatchObject({ holds: true, withinNoise: true })
    const [no] = verdicts(run(0, { reward: { repetitionRate: 0.09 }, small: { repetitionRate: 0.02 } }), evidence, [repClaim])
    expect(no).toMatchObject({ holds: false, withinNoise: true })
    expect(formatVerdicts([no!])).toBe(
      'NO   (c) repetition rate <= (b) repetition rate\n       this run: 0.090 vs 0.020; over runs: held in 3/6 runs, margin -0.001 ± 0.010 -> within noise',
    )
  })

  it('a NO far outside the evidence is not "within noise": this run differs from every run measured', () => {
    const [v] = verdicts(run(0, { reward: { objectF1: 0.4 }, full: { objectF1: 0.6 } }), evidence, [f1Claim])
    expect(v).toMatchObject({ holds: false, withinNoise: false })
  })

  it('says so when there is no evidence, and when this run lacks the claim\'s captioners', () => {
    const [v] = verdicts(run(0, { reward: { objectF1: 0.7 }, full: { objectF1: 0.6 } }), undefined, [f1Claim])
    expect(formatVerdicts([v!])).toContain('over runs: no multi-run evidence for this configuration')
    const [missing] = verdicts(run(0, { full: {} }), evidence, [f1Claim])
    expect(missing!.values).toBeUndefined()
    expect(formatVerdicts([missing!], { ablationsHint: true })).toBe(
      '-    (c) object F1 >= (a) object F1\n       this run: not run (--ablations); over runs: held in 6/6 runs, margin +0.100 ± 0.020',
    )
  })
})

describe('the committed evidence', () => {
  it('is keyed by the configuration without its world seed', () => {
    expect(evidenceKey(demoConfig({ seed: 3 }))).toBe(evidenceKey(demoConfig()))
    expect(evidenceKey(demoConfig({ quick: true }))).not.toBe(evidenceKey(demoConfig()))
  })

  it('lib/demo/evidence.json is about the default configuration and covers every claim over at least 6 runs', () => {
    const e = JSON.parse(readFileSync(join(repoRoot, 'lib', 'demo', 'evidence.json'), 'utf8')) as Evidence
    expect(e.configKey).toBe(evidenceKey(demoConfig()))
    expect(e.runs.length).toBeGreaterThanOrEqual(6)
    expect(new Set(e.runs.map((r) => r.worldSeed)).size).toBeGreaterThanOrEqual(3)
    expect(e.claims.map((c) => c.id)).toEqual(CLAIMS.map((c) => c.id))
    for (const c of e.claims) {
      expect(c.held).toBeLessThanOrEqual(c.runs)
      expect(c.runs).toBeGreaterThan(0)
    }
  })
})
