// The demo's experiment: builds (or reuses) every stage, evaluates the three captioners on the test split, and writes
// the table, a JSON of the results and a self-contained HTML report. Object precision/recall/F1 are scored against the
// scene graphs (lib/world), the rest with lib/evaluate (BLEU, CIDEr-D, CLIP-S and RefCLIP-S with the stand-in CLIP,
// self-retrieval R@1, repetition rate, mean length).
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Captioner } from '../captioner.js'
import type { DeviceOption } from '../device.js'
import { evaluate, makeThumbnails, type EvaluationMetrics } from '../evaluate.js'
import { renderReport, type ReportRow, type TrainingLogEntry } from '../metrics/index.js'
import { scoreObjects, type Scene } from '../world/index.js'
import type { DemoConfig } from './config.js'
import {
  CAPTIONER_LABELS,
  clipStage,
  createContext,
  gpt2Stage,
  readLog,
  rewardStage,
  runStage,
  supervisedStage,
  tokenizerStage,
  worldExamples,
  worldStage,
  type CaptionerName,
  type CaptionerStage,
  type ClipRetrieval,
  type DemoReporter,
  type ModelStages,
  type PipelineContext,
  type StageEvent,
} from './pipeline.js'

export interface DemoMetrics extends EvaluationMetrics {
  objectPrecision: number
  objectRecall: number
  objectF1: number
}

export interface PerImage {
  id: string
  caption: string
  ciderD: number
  clipS: number
  objectPrecision: number
  objectRecall: number
  objectF1: number
}

export interface CaptionerEvaluation {
  name: CaptionerName
  seed: number
  metrics: DemoMetrics
  perImage: PerImage[]
}

/** Table columns: metric, header, digits. Higher is better except for repetition. */
export const TABLE_COLUMNS: readonly [keyof DemoMetrics, string, number][] = [
  ['bleu4', 'BLEU-4', 3],
  ['ciderD', 'CIDEr-D', 3],
  ['clipS', 'CLIP-S', 3],
  ['refClipS', 'RefCLIP-S', 3],
  ['objectPrecision', 'obj P', 3],
  ['objectRecall', 'obj R', 3],
  ['objectF1', 'obj F1', 3],
  ['recallAt1', 'R@1', 3],
  ['repetitionRate', 'rep', 3],
  ['meanLength', 'len', 1],
]

const NAMES: readonly CaptionerName[] = ['full', 'small', 'reward']
const ROW_LETTER: Readonly<Record<CaptionerName, string>> = { full: 'a', small: 'b', reward: 'c' }

/** Evaluates one captioner on the test split (cached in evaluations/<name>-seed<k>/). */
export async function evaluationStage(ctx: PipelineContext, models: ModelStages, stage: CaptionerStage): Promise<CaptionerEvaluation> {
  const dir = join(ctx.out, 'evaluations', `${stage.name}-seed${stage.seed}`)
  const label = `evaluate ${ROW_LETTER[stage.name]} seed ${stage.seed}`
  await runStage(ctx, 'evaluation', label, dir, ctx.keys.evaluation(stage.key), async (tmp) => {
    const test = worldExamples(models.world, models.world.world.test)
    const captioner = await Captioner.load(stage.dir, { device: ctx.device })
    try {
      const e = ctx.cfg.eval
      const b = ctx.reporter.bar?.(label, test.length, 'images')
      const result = await evaluate(captioner, {
        examples: test,
        featureCache: join(ctx.out, 'features'),
        batchSize: e.batchSize,
        decoding: e.beams > 1 ? { decoding: 'beam', beams: e.beams, maxTokens: e.maxTokens } : { decoding: 'greedy', maxTokens: e.maxTokens },
        signal: ctx.signal,
        onProgress: (done) => b?.update(done),
      })
      b?.finish()
      const sceneOf = new Map<string, Scene>(test.map((t) => [t.id, t.scene]))
      const perImage: PerImage[] = result.perImage.map((p) => {
        const o = scoreObjects(p.caption, sceneOf.get(p.id)!)
        return { id: p.id, caption: p.caption, ciderD: p.scores.ciderD, clipS: p.scores.clipS, objectPrecision: o.precision, objectRecall: o.recall, objectF1: o.f1 }
      })
      const mean = (k: 'objectPrecision' | 'objectRecall' | 'objectF1') => perImage.reduce((s, p) => s + p[k], 0) / perImage.length
      const metrics: DemoMetrics = { ...result.metrics, objectPrecision: mean('objectPrecision'), objectRecall: mean('objectRecall'), objectF1: mean('objectF1') }
      const out: CaptionerEvaluation = { name: stage.name, seed: stage.seed, metrics, perImage }
      await writeFile(join(tmp, 'result.json'), JSON.stringify(out) + '\n')
      return { metrics }
    } finally {
      captioner.dispose()
    }
  })
  return JSON.parse(await readFile(join(dir, 'result.json'), 'utf8')) as CaptionerEvaluation
}

export interface MeanSd {
  mean: number
  sd: number
}

export type Summary = Record<CaptionerName, Record<keyof DemoMetrics, MeanSd>>

/** Mean and sample standard deviation (0 for one seed) of every metric, per captioner. */
export function summarise(evaluations: readonly CaptionerEvaluation[]): Summary {
  const out = {} as Summary
  for (const name of NAMES) {
    const runs = evaluations.filter((e) => e.name === name)
    const metrics = {} as Record<keyof DemoMetrics, MeanSd>
    for (const key of Object.keys(runs[0]?.metrics ?? {}) as (keyof DemoMetrics)[]) {
      const xs = runs.map((r) => r.metrics[key]).filter((x): x is number => typeof x === 'number')
      const mean = xs.reduce((s, x) => s + x, 0) / xs.length
      const sd = xs.length > 1 ? Math.sqrt(xs.reduce((s, x) => s + (x - mean) ** 2, 0) / (xs.length - 1)) : 0
      metrics[key] = { mean, sd }
    }
    out[name] = metrics
  }
  return out
}

/** The results table as fixed-width text (mean, or mean ± sd with several seeds). */
export function formatTable(summary: Summary, seeds: number): string {
  const cell = (m: MeanSd | undefined, digits: number) => (m === undefined ? '-' : seeds > 1 ? `${m.mean.toFixed(digits)}±${m.sd.toFixed(digits)}` : m.mean.toFixed(digits))
  const header = ['captioner', ...TABLE_COLUMNS.map(([, h]) => h)]
  const body = NAMES.map((n) => [CAPTIONER_LABELS[n], ...TABLE_COLUMNS.map(([k, , d]) => cell(summary[n][k], d))])
  const widths = header.map((h, j) => Math.max(h.length, ...body.map((r) => r[j]!.length)))
  const line = (r: string[]) => r.map((c, j) => (j === 0 ? c.padEnd(widths[j]!) : c.padStart(widths[j]!))).join('  ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n')
}

export interface Claim {
  text: string
  holds: boolean
  /** The numbers compared. */
  values: [number, number]
}

/** The paper's claims in this world, checked on the mean metrics. */
export function checkClaims(s: Summary): Claim[] {
  const m = (n: CaptionerName, k: keyof DemoMetrics) => s[n][k]?.mean ?? NaN
  const claim = (text: string, x: number, y: number, holds: boolean): Claim => ({ text, holds, values: [x, y] })
  return [
    claim('(c) CLIP-S >= (a) CLIP-S', m('reward', 'clipS'), m('full', 'clipS'), m('reward', 'clipS') >= m('full', 'clipS')),
    claim('(c) object F1 >= (a) object F1', m('reward', 'objectF1'), m('full', 'objectF1'), m('reward', 'objectF1') >= m('full', 'objectF1')),
    claim('(c) CIDEr-D >= 90% of (a) CIDEr-D', m('reward', 'ciderD'), 0.9 * m('full', 'ciderD'), m('reward', 'ciderD') >= 0.9 * m('full', 'ciderD')),
    claim('(c) CLIP-S > (b) CLIP-S', m('reward', 'clipS'), m('small', 'clipS'), m('reward', 'clipS') > m('small', 'clipS')),
    claim('(c) object recall > (b) object recall', m('reward', 'objectRecall'), m('small', 'objectRecall'), m('reward', 'objectRecall') > m('small', 'objectRecall')),
    claim('(c) repetition rate <= (b) repetition rate', m('reward', 'repetitionRate'), m('small', 'repetitionRate'), m('reward', 'repetitionRate') <= m('small', 'repetitionRate')),
  ]
}

export function formatClaims(claims: readonly Claim[]): string {
  return claims.map((c) => `${c.holds ? 'yes' : 'NO '}  ${c.text}  (${c.values[0].toFixed(3)} vs ${c.values[1].toFixed(3)})`).join('\n')
}

export interface DemoOptions {
  /** Output folder (created); stages found there with the right key are reused. */
  out: string
  config: DemoConfig
  /** Captioner seeds 0..seeds-1 (default 1). */
  seeds?: number
  device?: DeviceOption
  threads?: number
  reporter?: DemoReporter
  signal?: AbortSignal
  /** Write report.html (default true). */
  report?: boolean
}

export interface DemoResult {
  out: string
  seeds: number
  device: string
  config: DemoConfig
  clip: { retrieval?: ClipRetrieval; lastLoss?: number }
  evaluations: CaptionerEvaluation[]
  summary: Summary
  table: string
  claims: Claim[]
  /** Stage events of this run (run / skip / done). */
  events: StageEvent[]
  seconds: number
  files: { results: string; report?: string }
}

/** Runs (or resumes) the whole demo and writes results.json and report.html into `out`. */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const t0 = performance.now()
  const seeds = options.seeds ?? 1
  if (!Number.isInteger(seeds) || seeds < 1) throw new RangeError(`seeds must be an integer >= 1, got ${seeds}`)
  const ctx = createContext(options)
  await mkdir(ctx.out, { recursive: true })
  const world = await worldStage(ctx)
  const tok = await tokenizerStage(ctx)
  const clip = await clipStage(ctx, world, tok)
  const gpt2 = await gpt2Stage(ctx, tok)
  const models: ModelStages = { world, clipDir: clip.dir, gpt2Dir: gpt2.dir }

  const evaluations: CaptionerEvaluation[] = []
  const stages: CaptionerStage[] = []
  for (let seed = 0; seed < seeds; seed++) {
    const full = await supervisedStage(ctx, models, 'full', seed)
    const small = await supervisedStage(ctx, models, 'small', seed)
    const reward = await rewardStage(ctx, models, small)
    for (const s of [full, small, reward]) {
      stages.push(s)
      evaluations.push(await evaluationStage(ctx, models, s))
    }
  }
  const summary = summarise(evaluations)
  const table = formatTable(summary, seeds)
  const claims = checkClaims(summary)

  const files: DemoResult['files'] = { results: join(ctx.out, 'results.json') }
  if (options.report ?? true) {
    files.report = join(ctx.out, 'report.html')
    const b = ctx.reporter.bar?.('report', 1)
    await writeFile(files.report, await reportHtml(models, evaluations.filter((e) => e.seed === 0), summary, seeds, stages))
    b?.update(1)
    b?.finish()
  }
  const retrieval = clip.record.info.retrieval as ClipRetrieval | undefined
  const result: DemoResult = {
    out: ctx.out,
    seeds,
    device: ctx.device,
    config: options.config,
    clip: { retrieval, lastLoss: clip.record.info.lastLoss as number | undefined },
    evaluations,
    summary,
    table,
    claims,
    events: ctx.events,
    seconds: (performance.now() - t0) / 1000,
    files,
  }
  const { evaluations: _perImage, ...compact } = result
  const json = { ...compact, evaluations: evaluations.map(({ perImage: _p, ...e }) => e) }
  await writeFile(files.results, JSON.stringify(json, null, 2) + '\n')
  return result
}

/**
 * The HTML report: the summary table (mean over seeds), the stage-2 training curves of seed 0, and every test image
 * with the three captioners' captions (seed 0) and the references, worst first by (c)'s object F1.
 */
async function reportHtml(
  models: ModelStages,
  evaluations: readonly CaptionerEvaluation[],
  summary: Summary,
  seeds: number,
  stages: readonly CaptionerStage[],
): Promise<string> {
  const test = worldExamples(models.world, models.world.world.test)
  const thumbnails = await makeThumbnails(test, { size: 96 })
  const byName = new Map(evaluations.map((e) => [e.name, new Map(e.perImage.map((p) => [p.id, p]))]))
  const rowsOut: ReportRow[] = test.map((t) => {
    const captions: Record<string, string> = {}
    const scores: Record<string, number> = {}
    for (const n of NAMES) {
      const p = byName.get(n)?.get(t.id)
      if (!p) continue
      captions[`(${ROW_LETTER[n]})`] = p.caption
    }
    for (const [k, label] of [['objectF1', 'obj F1'], ['objectRecall', 'obj R'], ['clipS', 'CLIP-S'], ['ciderD', 'CIDEr-D']] as const) {
      for (const n of NAMES) {
        const p = byName.get(n)?.get(t.id)
        if (p) scores[`(${ROW_LETTER[n]}) ${label}`] = p[k]
      }
    }
    const thumb = thumbnails.get(t.id)
    return { id: t.id, captions, references: t.references, scores, ...(thumb ? { thumbnail: thumb } : {}) }
  })
  const summaryOut: Record<string, Record<string, number>> = {}
  for (const n of NAMES) summaryOut[CAPTIONER_LABELS[n]] = Object.fromEntries(TABLE_COLUMNS.map(([k, h]) => [h, summary[n][k]?.mean ?? NaN]))
  const rewardStage0 = stages.find((s) => s.name === 'reward' && s.seed === 0)
  const log: TrainingLogEntry[] = rewardStage0
    ? (await readLog(rewardStage0.dir)).map((p) => ({ step: p.step, reward: p.reward, loss: p.loss, ...(p.kl !== undefined ? { kl: p.kl } : {}) }))
    : []
  return renderReport({
    title: `semicap demo: stage 1 (a: 100%, b: 2% labels) vs stage 2 CLIP-S reward (c)${seeds > 1 ? `, seed 0 of ${seeds}` : ''}`,
    summary: summaryOut,
    rows: rowsOut,
    trainingLog: log.length ? log : undefined,
    sortBy: '(c) obj F1',
    ascending: true,
  })
}
