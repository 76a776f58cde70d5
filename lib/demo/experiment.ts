// The demo's experiment: builds (or reuses) every stage for each world seed and captioner seed, evaluates the
// captioners on the test split and writes the table, a JSON of the results and a self-contained HTML report.
// Object precision/recall/F1 and the pairwise fact preference are scored against the scene graphs (lib/world): the
// ground truth. BLEU and CIDEr-D, CLIP-S, RefCLIP-S and self-retrieval R@1 come from lib/evaluate with the reward
// CLIP (the one stage 2 optimises); CLIP-S, RefCLIP-S and R@1 are computed again with the held-out judge CLIP.
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { cpus } from 'node:os'
import { join } from 'node:path'
import { Captioner } from '../captioner.js'
import { Clip } from '../clip.js'
import { cachedImageFeatures, type Example } from '../data/index.js'
import type { DeviceOption } from '../device.js'
import { evaluate, makeThumbnails, type EvaluationMetrics } from '../evaluate.js'
import { refClipScore, renderReport, retrievalRecallAtK, type ReportFact, type ReportFilter, type ReportRow, type TrainingLogEntry } from '../metrics/index.js'
import type { TrainProgress } from '../training/index.js'
import { captionFacts, preferByFacts, scoreObjects, winRates, type Scene } from '../world/index.js'
import { claimEvidence, evidenceKey, formatEvidence, meanSd, verdicts, type ClaimEvidence, type ClaimVerdict, type Evidence, type MeanSd, type RunResult } from './claims.js'
import { CAPTIONERS, captionerSpec, captionersOf, type CaptionerName, type DemoConfig } from './config.js'
import {
  CLIP_PROMPT,
  captionerStage,
  clipStage,
  createContext,
  encodeTexts,
  gpt2Stage,
  limiter,
  readLog,
  rows,
  runStage,
  tokenizerStage,
  warmFeatureCache,
  worldExamples,
  worldStage,
  type CaptionerStage,
  type ClipRetrieval,
  type DemoReporter,
  type ModelStages,
  type PipelineContext,
  type StageEvent,
} from './pipeline.js'
import { PREFERENCE_PAIRS, pairKey, type WinRate } from './preference.js'

export type { MeanSd } from './claims.js'

export interface DemoMetrics extends EvaluationMetrics {
  objectPrecision: number
  objectRecall: number
  objectF1: number
  /** Mean number of stated facts per caption that the scene graph contradicts. */
  falseFacts: number
  /** CLIP-S, RefCLIP-S and R@1 by the held-out judge CLIP (clipS, refClipS, recallAt1 are the reward CLIP's). */
  judgeClipS: number
  judgeRefClipS: number
  judgeRecallAt1: number
}

export interface PerImage {
  id: string
  caption: string
  ciderD: number
  clipS: number
  judgeClipS: number
  objectPrecision: number
  objectRecall: number
  objectF1: number
}

export interface CaptionerEvaluation {
  name: CaptionerName
  worldSeed: number
  seed: number
  metrics: DemoMetrics
  perImage: PerImage[]
}

/** Table columns: metric, header, digits. Higher is better except for false facts and repetition. */
export const TABLE_COLUMNS: readonly [keyof DemoMetrics, string, number][] = [
  ['bleu4', 'BLEU-4', 3],
  ['ciderD', 'CIDEr-D', 3],
  ['judgeClipS', 'CLIP-S judge', 3],
  ['clipS', 'CLIP-S reward', 3],
  ['judgeRefClipS', 'RefCLIP-S judge', 3],
  ['refClipS', 'RefCLIP-S reward', 3],
  ['judgeRecallAt1', 'R@1 judge', 3],
  ['recallAt1', 'R@1 reward', 3],
  ['objectPrecision', 'obj P', 3],
  ['objectRecall', 'obj R', 3],
  ['objectF1', 'obj F1', 3],
  ['falseFacts', 'false/cap', 2],
  ['repetitionRate', 'rep', 3],
  ['meanLength', 'len', 1],
]

/** CLIP-S, RefCLIP-S (per image) and R@1 of `captions` by `clip` (the judge), as lib/evaluate computes them. */
export async function clipScoresBy(
  clip: Clip,
  examples: (Example & { references: string[] })[],
  captions: readonly string[],
  featureCache: string,
): Promise<{ clipS: number[]; refClipS: number[]; recallAt1: number }> {
  const { features } = await cachedImageFeatures(clip, examples, { cacheDir: featureCache, batchSize: 64 })
  const images = rows(features)
  const caps = await encodeTexts(clip, captions.map((c) => CLIP_PROMPT + c))
  const refTexts: string[] = []
  const owner: number[] = []
  examples.forEach((e, i) => e.references.forEach((r) => (refTexts.push(CLIP_PROMPT + r), owner.push(i))))
  const refRows: Float32Array[][] = examples.map(() => [])
  ;(await encodeTexts(clip, refTexts)).forEach((r, j) => refRows[owner[j]!]!.push(r))
  const per = examples.map((_, i) => refClipScore(images[i]!, caps[i]!, refRows[i]!))
  const [recallAt1] = retrievalRecallAtK(caps, images, [1]) as [number]
  return { clipS: per.map((p) => p.clipS), refClipS: per.map((p) => p.refClipS), recallAt1 }
}

/** Waits for every promise, then throws the first failure (no stage is left running unobserved). */
async function settleAll(ps: readonly Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(ps)
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) throw failed.reason
}

const mean = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length)

/** Evaluates one captioner on the test split (cached in evaluations/<name>-seed<k>/). */
export async function evaluationStage(ctx: PipelineContext, models: ModelStages, stage: CaptionerStage, judge: () => Promise<Clip>): Promise<CaptionerEvaluation> {
  const dir = join(ctx.out, 'evaluations', `${stage.name}-seed${stage.seed}`)
  const label = `evaluate ${captionerSpec(stage.name).letter} seed ${stage.seed}`
  await runStage(ctx, 'evaluation', label, dir, ctx.keys.evaluation(stage.key), async (tmp) => {
    const test = worldExamples(models.world, models.world.world.test)
    const captioner = await Captioner.load(stage.dir, { device: ctx.device })
    try {
      const e = ctx.cfg.eval
      const b = ctx.reporter.bar?.(label, test.length, 'images')
      const featureCache = join(ctx.out, 'features')
      const result = await evaluate(captioner, {
        examples: test,
        featureCache,
        batchSize: e.batchSize,
        decoding: e.beams > 1 ? { decoding: 'beam', beams: e.beams, maxTokens: e.maxTokens } : { decoding: 'greedy', maxTokens: e.maxTokens },
        signal: ctx.signal,
        onProgress: (done) => b?.update(done),
      })
      b?.finish()
      const captions = result.perImage.map((p) => p.caption)
      const byJudge = await clipScoresBy(await judge(), test, captions, featureCache)
      const perImage: PerImage[] = result.perImage.map((p, i) => {
        const o = scoreObjects(p.caption, test[i]!.scene)
        return {
          id: p.id,
          caption: p.caption,
          ciderD: p.scores.ciderD,
          clipS: p.scores.clipS,
          judgeClipS: byJudge.clipS[i]!,
          objectPrecision: o.precision,
          objectRecall: o.recall,
          objectF1: o.f1,
        }
      })
      const falseFacts = mean(test.map((t, i) => {
        const o = scoreObjects(captions[i]!, t.scene)
        return o.statedFacts - o.correctFacts
      }))
      const metrics: DemoMetrics = {
        ...result.metrics,
        objectPrecision: mean(perImage.map((p) => p.objectPrecision)),
        objectRecall: mean(perImage.map((p) => p.objectRecall)),
        objectF1: mean(perImage.map((p) => p.objectF1)),
        falseFacts,
        judgeClipS: mean(byJudge.clipS),
        judgeRefClipS: mean(byJudge.refClipS),
        judgeRecallAt1: byJudge.recallAt1,
      }
      const out: CaptionerEvaluation = { name: stage.name, worldSeed: ctx.cfg.world.seed, seed: stage.seed, metrics, perImage }
      await writeFile(join(tmp, 'result.json'), JSON.stringify(out) + '\n')
      return { metrics }
    } finally {
      captioner.dispose()
    }
  })
  return JSON.parse(await readFile(join(dir, 'result.json'), 'utf8')) as CaptionerEvaluation
}

/** One run's result: the metrics of its captioners and the win rates of PREFERENCE_PAIRS by facts. */
export function runResult(worldSeed: number, seed: number, evaluations: readonly CaptionerEvaluation[], sceneOf: ReadonlyMap<string, Scene>): RunResult {
  const mine = evaluations.filter((e) => e.worldSeed === worldSeed && e.seed === seed)
  const byName = new Map(mine.map((e) => [e.name, e]))
  const preferences: Record<string, WinRate> = {}
  for (const pair of PREFERENCE_PAIRS) {
    const [a, b] = pair.map((n) => byName.get(n))
    if (!a || !b) continue
    const captionsB = new Map(b.perImage.map((p) => [p.id, p.caption]))
    const ids = a.perImage.map((p) => p.id).filter((id) => captionsB.has(id) && sceneOf.has(id))
    const captionA = new Map(a.perImage.map((p) => [p.id, p.caption]))
    preferences[pairKey(pair)] = winRates(
      ids.map((id) => captionA.get(id)!),
      ids.map((id) => captionsB.get(id)!),
      ids.map((id) => sceneOf.get(id)!),
    )
  }
  return { worldSeed, seed, metrics: Object.fromEntries(mine.map((e) => [e.name, e.metrics])), preferences }
}

/** Per captioner (those some run has), per metric: mean and sd over the runs. */
export type Summary = Partial<Record<CaptionerName, Record<keyof DemoMetrics, MeanSd>>>

export function summarise(runs: readonly RunResult[]): Summary {
  const out: Summary = {}
  for (const { name } of CAPTIONERS) {
    const ms = runs.map((r) => r.metrics[name]).filter((m): m is DemoMetrics => m !== undefined)
    if (ms.length === 0) continue
    const keys = Object.keys(ms[0]!) as (keyof DemoMetrics)[]
    out[name] = Object.fromEntries(keys.map((k) => [k, meanSd(ms.map((m) => m[k]).filter((x): x is number => typeof x === 'number'))])) as Record<keyof DemoMetrics, MeanSd>
  }
  return out
}

/** Win / tie / loss per pair: mean and sd over the runs. */
export function summarisePreferences(runs: readonly RunResult[]): Evidence['preferences'] {
  const out: Evidence['preferences'] = {}
  for (const pair of PREFERENCE_PAIRS) {
    const ws = runs.map((r) => r.preferences[pairKey(pair)]).filter((w): w is WinRate => w !== undefined)
    if (ws.length) out[pairKey(pair)] = { win: meanSd(ws.map((w) => w.win)), tie: meanSd(ws.map((w) => w.tie)), loss: meanSd(ws.map((w) => w.loss)) }
  }
  return out
}

/** Text table: one line per row, columns padded (the first left-aligned). */
function textTable(header: string[], body: string[][]): string {
  const widths = header.map((h, j) => Math.max(h.length, ...body.map((r) => r[j]!.length)))
  const line = (r: string[]) => r.map((c, j) => (j === 0 ? c.padEnd(widths[j]!) : c.padStart(widths[j]!))).join('  ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n')
}

/** The results table as fixed-width text (mean, or mean ± sd over several runs). */
export function formatTable(summary: Summary, runs: number): string {
  const cell = (m: MeanSd | undefined, digits: number) => (m === undefined ? '-' : runs > 1 ? `${m.mean.toFixed(digits)}±${m.sd.toFixed(digits)}` : m.mean.toFixed(digits))
  const body = CAPTIONERS.filter((c) => summary[c.name]).map((c) => [c.label, ...TABLE_COLUMNS.map(([k, , d]) => cell(summary[c.name]![k], d))])
  return textTable(['captioner', ...TABLE_COLUMNS.map(([, h]) => h)], body)
}

/** Win / tie / loss by facts (scene graph) per pair, mean over runs. */
export function formatPreferences(prefs: Evidence['preferences'], runs: number): string {
  const pct = (m: MeanSd) => `${(100 * m.mean).toFixed(0)}%${runs > 1 ? `±${(100 * m.sd).toFixed(0)}` : ''}`
  const body = PREFERENCE_PAIRS.filter((p) => prefs[pairKey(p)]).map((p) => {
    const w = prefs[pairKey(p)]!
    return [`(${captionerSpec(p[0]).letter}) vs (${captionerSpec(p[1]).letter})`, pct(w.win), pct(w.tie), pct(w.loss)]
  })
  return textTable(['by facts', 'wins', 'ties', 'losses'], body)
}

/** The committed multi-run evidence (lib/demo/evidence.json), if there is one. */
export async function readCommittedEvidence(): Promise<Evidence | undefined> {
  // lib/demo/ and dist/demo/ are both two levels below the package root, and the JSON lives in lib/demo/.
  const url = new URL('../../lib/demo/evidence.json', import.meta.url)
  try {
    return JSON.parse(await readFile(url, 'utf8')) as Evidence
  } catch {
    return undefined
  }
}

/** The evidence of `runs` (claims, table and win rates over all of them). */
export function buildEvidence(config: DemoConfig, runs: readonly RunResult[], provenance: Evidence['provenance']): Evidence {
  const summary = summarise(runs)
  const table: Evidence['table'] = {}
  for (const c of CAPTIONERS) {
    const s = summary[c.name]
    if (s) table[c.letter] = Object.fromEntries(TABLE_COLUMNS.map(([k, h]) => [h, s[k]]))
  }
  return {
    configKey: evidenceKey(config),
    provenance,
    runs: runs.map((r) => ({ worldSeed: r.worldSeed, seed: r.seed })),
    claims: claimEvidence(runs),
    table,
    preferences: summarisePreferences(runs),
  }
}

export interface DemoOptions {
  /** Output folder (created); each world seed's stages live in world-seed<k>/ under it and are reused when found. */
  out: string
  /** The configuration of the first world seed; further world seeds change only config.world.seed. */
  config: DemoConfig
  /** World seeds config.world.seed, +1, ... (default 1): each its own world, tokenizer, CLIPs and GPT-2. */
  worldSeeds?: number
  /** Captioner seeds 0..seeds-1 per world seed (default 1). */
  seeds?: number
  /** Also train the stage-2 ablations (without KL penalty, without repetition penalty). Default false. */
  ablations?: boolean
  device?: DeviceOption
  /** libtorch threads (process-wide; with jobs > 1 each stage gets them all, so give cores / jobs). */
  threads?: number
  /**
   * Training stages that run at once (default 1): the two CLIPs and GPT-2, and captioners whose starting point is
   * built ((a) next to (b), (c-) next to (b+)). The tiny models use a second core poorly, so on two cores two stages
   * of one thread each finish sooner than one stage at a time with two threads.
   */
  jobs?: number
  reporter?: DemoReporter
  signal?: AbortSignal
  /** Write report.html (default true). */
  report?: boolean
  /** The multi-run evidence a single run is judged against (default: the committed lib/demo/evidence.json). */
  evidence?: Evidence
}

export interface DemoResult {
  out: string
  worldSeeds: number[]
  seeds: number
  ablations: boolean
  device: string
  config: DemoConfig
  /** Retrieval of the reward CLIP and of the judge on the first world's val split. */
  clip: { retrieval?: ClipRetrieval; lastLoss?: number }
  judge: { retrieval?: ClipRetrieval; lastLoss?: number }
  evaluations: CaptionerEvaluation[]
  /** One per world seed x captioner seed. */
  runs: RunResult[]
  summary: Summary
  table: string
  preferences: Evidence['preferences']
  preferenceTable: string
  /**
   * The first run's claims against multi-run evidence: this invocation's own when it made several runs, else the
   * committed one when it is about this configuration.
   */
  claims: ClaimVerdict[]
  /** The evidence of this invocation's own runs. */
  evidence: Evidence
  /** Whether the committed evidence is about this configuration. */
  evidenceMatches: boolean
  /** Stage events of this run (run / skip / done), all world seeds. */
  events: StageEvent[]
  seconds: number
  files: { results: string; report?: string }
}

/** What one world seed produced. */
interface WorldRun {
  ctx: PipelineContext
  models: ModelStages
  /** Its captioners, in table order per seed. */
  stages: CaptionerStage[]
  evaluations: CaptionerEvaluation[]
  runs: RunResult[]
  clip: Record<string, unknown>
  judge: Record<string, unknown>
}

/** Every stage of one world seed: its world, tokenizer, CLIPs and GPT-2, then each captioner seed's captioners. */
async function runWorld(options: DemoOptions, worldSeed: number, events: StageEvent[]): Promise<WorldRun> {
  const seeds = options.seeds ?? 1
  const config: DemoConfig = { ...options.config, world: { ...options.config.world, seed: worldSeed } }
  const ctx = createContext({ ...options, out: join(options.out, `world-seed${worldSeed}`), config })
  ctx.events = events
  await mkdir(ctx.out, { recursive: true })
  const limit = limiter(options.jobs ?? 1)
  const world = await worldStage(ctx)
  const tok = await tokenizerStage(ctx)
  const pretrained = [limit(() => clipStage(ctx, world, tok, 'reward')), limit(() => clipStage(ctx, world, tok, 'judge')), limit(() => gpt2Stage(ctx, tok))] as const
  await settleAll(pretrained)
  const [clip, judgeStage, gpt2] = await Promise.all(pretrained)
  const models: ModelStages = { world, clipDir: clip.dir, judgeDir: judgeStage.dir, gpt2Dir: gpt2.dir }
  await warmFeatureCache(ctx, models)

  // Every captioner of every seed, each started (within `jobs`) as soon as the one it continues from is built.
  const stages: CaptionerStage[] = []
  const trained: Promise<void>[] = []
  for (let seed = 0; seed < seeds; seed++) {
    const built = new Map<CaptionerName, Promise<CaptionerStage>>()
    for (const spec of captionersOf(options.ablations ?? false)) {
      const from = spec.from ? built.get(spec.from)! : Promise.resolve(undefined)
      const stage = from.then((f) => limit(() => captionerStage(ctx, models, spec.name, seed, f)))
      built.set(spec.name, stage)
      trained.push(stage.then((s) => void stages.push(s)))
    }
  }
  await settleAll(trained)
  const order = (s: CaptionerStage) => s.seed * CAPTIONERS.length + CAPTIONERS.findIndex((c) => c.name === s.name)
  stages.sort((x, y) => order(x) - order(y))

  // Evaluations one at a time (they write the judge's feature cache); the judge is loaded only when one is not cached.
  const evaluations: CaptionerEvaluation[] = []
  let judgeClip: Clip | undefined
  const judge = async () => (judgeClip ??= await Clip.load(models.judgeDir, { device: ctx.device }))
  try {
    for (const stage of stages) evaluations.push(await evaluationStage(ctx, models, stage, judge))
  } finally {
    judgeClip?.dispose()
  }
  const sceneOf = new Map(world.world.test.map((e) => [e.id, e.scene]))
  const runs = Array.from({ length: seeds }, (_, seed) => runResult(worldSeed, seed, evaluations, sceneOf))
  return { ctx, models, stages, evaluations, runs, clip: clip.record.info, judge: judgeStage.record.info }
}

/** Runs (or resumes) the whole demo and writes results.json and report.html into `out`. */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const t0 = performance.now()
  const seeds = options.seeds ?? 1
  const worldSeedCount = options.worldSeeds ?? 1
  const ablations = options.ablations ?? false
  if (!Number.isInteger(seeds) || seeds < 1) throw new RangeError(`seeds must be an integer >= 1, got ${seeds}`)
  if (!Number.isInteger(worldSeedCount) || worldSeedCount < 1) throw new RangeError(`worldSeeds must be an integer >= 1, got ${worldSeedCount}`)
  const worldSeeds = Array.from({ length: worldSeedCount }, (_, i) => options.config.world.seed + i)
  await mkdir(options.out, { recursive: true })

  const events: StageEvent[] = []
  const worlds: WorldRun[] = []
  for (const worldSeed of worldSeeds) worlds.push(await runWorld(options, worldSeed, events))
  const first = worlds[0]!
  const evaluations = worlds.flatMap((w) => w.evaluations)
  const runs = worlds.flatMap((w) => w.runs)

  const summary = summarise(runs)
  const preferences = summarisePreferences(runs)
  // No wall time: stages may have come from the cache (their stage.json records what each took).
  const provenance = { cpu: cpus()[0]?.model ?? 'unknown', node: process.version, finishedAt: new Date().toISOString() }
  const evidence = buildEvidence(options.config, runs, provenance)
  const committed = options.evidence ?? (await readCommittedEvidence())
  const evidenceMatches = committed !== undefined && committed.configKey === evidenceKey(options.config)
  // Several runs are their own evidence; one run is judged against the committed evidence, when it is about this config.
  const claims = verdicts(runs[0]!, runs.length > 1 ? evidence.claims : evidenceMatches ? committed.claims : undefined)

  const out = options.out
  const files: DemoResult['files'] = { results: join(out, 'results.json') }
  if (options.report ?? true) {
    files.report = join(out, 'report.html')
    const b = first.ctx.reporter.bar?.('report', 1)
    const firstRun = first.evaluations.filter((e) => e.seed === 0)
    await writeFile(files.report, await reportHtml(first.models, firstRun, summary, runs.length, first.stages.filter((s) => s.seed === 0), claims))
    b?.update(1)
    b?.finish()
  }
  const info = (i: Record<string, unknown>) => ({ retrieval: i.retrieval as ClipRetrieval | undefined, lastLoss: i.lastLoss as number | undefined })
  const result: DemoResult = {
    out,
    worldSeeds,
    seeds,
    ablations,
    device: first.ctx.device,
    config: options.config,
    clip: info(first.clip),
    judge: info(first.judge),
    evaluations,
    runs,
    summary,
    table: formatTable(summary, runs.length),
    preferences,
    preferenceTable: formatPreferences(preferences, runs.length),
    claims,
    evidence,
    evidenceMatches,
    events,
    seconds: (performance.now() - t0) / 1000,
    files,
  }
  const json = { ...result, evaluations: evaluations.map(({ perImage: _p, ...e }) => e) }
  await writeFile(files.results, JSON.stringify(json, null, 2) + '\n')
  return result
}

/** What the report shows of one claim verdict: this run's outcome and numbers, then the multi-run evidence. */
function claimVerdictText(v: ClaimVerdict): string {
  const here = v.values ? `${v.holds ? 'yes' : 'NO'} in this run (${v.values[0].toFixed(3)} vs ${v.values[1].toFixed(3)})` : 'not run here (--ablations)'
  const ev = v.evidence ? `; over runs: ${formatEvidence(v.evidence)}${v.withinNoise ? ': within noise' : ''}` : ''
  return here + ev
}

/** A training log as the report plots it: loss, reward and KL over steps. */
function plotted(log: readonly TrainProgress[]): TrainingLogEntry[] {
  return log.map((p) => ({ step: p.step, loss: p.loss, ...(p.reward !== undefined ? { reward: p.reward } : {}), ...(p.kl !== undefined ? { kl: p.kl } : {}) }))
}

/**
 * The HTML report of the first run (first world seed, captioner seed 0): the claims with their verdicts, the summary
 * table (mean over runs), every trained stage's curves, and every test image (shown large, pixelated) with each
 * captioner's caption and the facts it states marked true or false from the scene graph, worst first by (c)'s object
 * F1; filters for the rows where (c) beats or loses to (a), where stage-1 contrast changes the outcome, and where a
 * captioner states something false.
 */
async function reportHtml(
  models: ModelStages,
  evaluations: readonly CaptionerEvaluation[],
  summary: Summary,
  runs: number,
  stages: readonly CaptionerStage[],
  claims: readonly ClaimVerdict[],
): Promise<string> {
  const test = worldExamples(models.world, models.world.world.test)
  // The images at their own size (48 px): the report scales them up without smoothing.
  const thumbnails = await makeThumbnails(test, { size: models.world.world.imageSize })
  const present = CAPTIONERS.filter((c) => evaluations.some((e) => e.name === c.name))
  const byName = new Map(evaluations.map((e) => [e.name, new Map(e.perImage.map((p) => [p.id, p]))]))
  const caption = (name: CaptionerName, id: string) => byName.get(name)?.get(id)?.caption
  const rowsOut: ReportRow[] = test.map((t) => {
    const captions: Record<string, string> = {}
    const facts: Record<string, ReportFact[]> = {}
    const scores: Record<string, number> = {}
    for (const c of present) {
      const text = caption(c.name, t.id)
      if (text === undefined) continue
      captions[`(${c.letter})`] = text
      facts[`(${c.letter})`] = captionFacts(text, t.scene).map((f) => ({ text: f.text, holds: f.holds }))
    }
    for (const [k, label] of [['objectF1', 'obj F1'], ['objectRecall', 'obj R'], ['judgeClipS', 'CLIP-S judge'], ['ciderD', 'CIDEr-D']] as const) {
      for (const c of present) {
        const p = byName.get(c.name)?.get(t.id)
        if (p) scores[`(${c.letter}) ${label}`] = p[k]
      }
    }
    const thumb = thumbnails.get(t.id)
    return { id: t.id, captions, facts, references: t.references, scores, ...(thumb ? { thumbnail: thumb } : {}) }
  })

  const filters: ReportFilter[] = []
  const letter = (n: CaptionerName) => `(${captionerSpec(n).letter})`
  const wherePreferred = (a: CaptionerName, b: CaptionerName, want: 1 | -1) =>
    test.filter((t) => {
      const x = caption(a, t.id)
      const y = caption(b, t.id)
      return x !== undefined && y !== undefined && preferByFacts(x, y, t.scene) === want
    }).map((t) => t.id)
  for (const [a, b] of PREFERENCE_PAIRS) {
    if (!byName.has(a) || !byName.has(b)) continue
    filters.push({ id: `${a}-beats-${b}`, label: `${letter(a)} beats ${letter(b)}`, rowIds: wherePreferred(a, b, 1) })
    filters.push({ id: `${b}-beats-${a}`, label: `${letter(b)} beats ${letter(a)}`, rowIds: wherePreferred(a, b, -1) })
  }
  for (const c of present) {
    const ids = test.filter((t) => {
      const x = caption(c.name, t.id)
      return x !== undefined && captionFacts(x, t.scene).some((f) => !f.holds)
    }).map((t) => t.id)
    filters.push({ id: `${c.name}-false`, label: `(${c.letter}) states something false`, rowIds: ids })
  }

  const summaryOut: Record<string, Record<string, number>> = {}
  for (const c of present) summaryOut[c.label] = Object.fromEntries(TABLE_COLUMNS.map(([k, h]) => [h, summary[c.name]?.[k]?.mean ?? NaN]))
  // Every trained stage of this run, pretraining included, in training order.
  const trainingLogs: Record<string, TrainingLogEntry[]> = {}
  for (const [label, dir] of [['reward CLIP', models.clipDir], ['judge CLIP', models.judgeDir], ['GPT-2', models.gpt2Dir]] as const) {
    const log = await readLog(dir)
    if (log.length) trainingLogs[label] = plotted(log)
  }
  for (const c of present) {
    const stage = stages.find((s) => s.name === c.name)
    const log = stage ? await readLog(stage.dir) : []
    if (log.length) trainingLogs[c.label] = plotted(log)
  }
  return renderReport({
    title: `semicap demo: (a) 100% and (b) 2% labels, (b+) stage-1 contrast, (c) + stage 2 CLIP-S reward${runs > 1 ? `, first of ${runs} runs` : ''}`,
    claims: claims.map((v) => ({ text: v.text, verdict: claimVerdictText(v) })),
    notes: [
      'CLIP-S judge: scored by a held-out stand-in CLIP (other web data, other initial weights) that no stage optimises; CLIP-S reward: by the CLIP stage 2 optimises.',
      'Facts: what each caption states (objects, colours, sizes, relations, counts), checked against the scene graph (true facts marked as holding, false ones not). A caption beats another by facts when it states at least as many true facts and at most as many false ones, and differs in one.',
    ],
    summary: summaryOut,
    rows: rowsOut,
    filters,
    trainingLogs,
    sortBy: '(c) obj F1',
    ascending: true,
  })
}

export type { ClaimEvidence, ClaimVerdict, Evidence, RunResult }
