// `semicap eval`: caption an annotated split with one or more saved captioners, print the metrics table, and write
// the results as JSON and as a self-contained HTML report (training curves included when a training log is given).
import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { basename, dirname, resolve } from 'node:path'
import { Option, type Command } from 'commander'
import { Captioner } from './captioner.js'
import { deviceOption, intOption, print } from './cli-options.js'
import { dataset, KARPATHY_SPLITS, type Example, type KarpathySplit } from './data/index.js'
import type { DecodeOptions } from './decoding.js'
import type { DeviceOption } from './device.js'
import { SemicapError } from './errors.js'
import { evaluate, makeThumbnails, METRIC_LABELS, renderEvaluationReport, type EvaluationMetrics, type EvaluationResult } from './evaluate.js'
import type { TrainingLogEntry } from './metrics/index.js'
import { ProgressBar } from './progress.js'

export interface EvalCliOptions {
  model: string[]
  data: string
  split: KarpathySplit
  imagesDir?: string
  limit?: number
  report?: string
  json?: string
  log?: string
  title?: string
  decoding?: 'greedy' | 'beam'
  beams?: number
  maxTokens?: number
  batchSize: number
  trainingData?: string
  featureCache?: string
  thumbnails: boolean
  device: DeviceOption
  progress: boolean
}

/** Fields of a training log line that are worth plotting. */
const LOG_FIELDS = ['loss', 'ce', 'reward', 'baselineReward', 'kl', 'lr', 'gradNorm'] as const

/** Reads a `semicap train` log (one JSON object per line); lines that do not parse or have no step are skipped. */
export async function readTrainingLog(path: string): Promise<TrainingLogEntry[]> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new SemicapError('E_IO', `reading the training log ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err })
  }
  const out: TrainingLogEntry[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    let rec: unknown
    try {
      rec = JSON.parse(line)
    } catch {
      continue // e.g. a last line still being written
    }
    if (rec === null || typeof rec !== 'object') continue
    const r = rec as Record<string, unknown>
    if (typeof r.step !== 'number' || !Number.isFinite(r.step)) continue
    const e: TrainingLogEntry = { step: r.step }
    for (const k of LOG_FIELDS) if (typeof r[k] === 'number' && Number.isFinite(r[k])) e[k] = r[k] as number
    out.push(e)
  }
  return out
}

/** `name=dir` or `dir` (named after the folder); names made unique. */
function modelNames(specs: readonly string[]): [string, string][] {
  const out: [string, string][] = []
  const used = new Set<string>()
  for (const spec of specs) {
    const eq = spec.indexOf('=')
    const [name0, dir] = eq > 0 ? [spec.slice(0, eq), spec.slice(eq + 1)] : [basename(resolve(spec)), spec]
    let name = name0
    for (let k = 2; used.has(name); k++) name = `${name0}-${k}`
    used.add(name)
    out.push([name, dir])
  }
  return out
}

function fmt(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '-'
  return Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4)
}

/** The corpus metrics as a plain-text table: one row per metric, one column per captioner. */
export function metricsTable(results: Readonly<Record<string, EvaluationResult>>): string {
  const names = Object.keys(results)
  const keys = (Object.keys(METRIC_LABELS) as (keyof EvaluationMetrics)[]).filter((k) => names.some((n) => results[n]!.metrics[k] !== undefined))
  const rows = [['metric', ...names], ...keys.map((k) => [METRIC_LABELS[k], ...names.map((n) => fmt(results[n]!.metrics[k]))])]
  const widths = rows[0]!.map((_, j) => Math.max(...rows.map((r) => r[j]!.length)))
  return rows.map((r) => r.map((c, j) => (j === 0 ? c.padEnd(widths[j]!) : c.padStart(widths[j]!))).join('  ')).join('\n') + '\n'
}

async function writeOut(path: string, text: string): Promise<void> {
  await mkdir(dirname(resolve(path)), { recursive: true })
  await writeFile(path, text)
}

export async function runEval(o: EvalCliOptions): Promise<void> {
  if (o.model.length === 0) throw new SemicapError('E_VALUE', 'give at least one --model')
  const ds = await dataset(o.data, { split: o.split, imagesDir: o.imagesDir })
  let examples: Example[] = ds.examples
  const uncaptioned = examples.filter((e) => e.captions.length === 0).length
  if (uncaptioned > 0) {
    process.stderr.write(`semicap: skipping ${uncaptioned} image${uncaptioned === 1 ? '' : 's'} without reference captions\n`)
    examples = examples.filter((e) => e.captions.length > 0)
  }
  if (o.limit !== undefined) examples = examples.slice(0, o.limit)
  if (examples.length === 0) throw new SemicapError('E_DATA', `${ds.source}: no images with reference captions to evaluate`)
  const trainingCaptions = o.trainingData ? (await dataset(o.trainingData, { imagesDir: o.imagesDir })).examples.flatMap((e) => e.captions) : undefined
  const trainingLog = o.log ? await readTrainingLog(o.log) : undefined
  const decoding: DecodeOptions = {}
  if (o.decoding !== undefined || o.beams !== undefined) decoding.decoding = o.decoding ?? 'beam'
  if (o.beams !== undefined) decoding.beams = o.beams
  if (o.maxTokens !== undefined) decoding.maxTokens = o.maxTokens

  const controller = new AbortController()
  const onSigint = () => {
    process.stderr.write('\nsemicap: interrupted\n')
    controller.abort(new Error('SIGINT'))
  }
  process.once('SIGINT', onSigint)
  const results: Record<string, EvaluationResult> = {}
  try {
    for (const [name, dir] of modelNames(o.model)) {
      const captioner = await Captioner.load(dir, { device: o.device })
      const bar = o.progress ? new ProgressBar(`eval ${name}`, examples.length, { unit: 'img' }) : undefined
      try {
        results[name] = await evaluate(captioner, {
          examples,
          decoding,
          batchSize: o.batchSize,
          trainingCaptions,
          featureCache: o.featureCache,
          signal: controller.signal,
          onProgress: (done) => bar?.update(done),
        })
        bar?.finish()
      } finally {
        bar?.stop()
        captioner.dispose()
      }
    }
  } finally {
    process.off('SIGINT', onSigint)
  }

  await print(`${examples.length} images from ${ds.source}\n${metricsTable(results)}`)
  if (o.json) {
    const json = { data: ds.source, split: o.split, images: examples.length, decoding, models: Object.fromEntries(modelNames(o.model).map(([n, d]) => [n, resolve(d)])), results }
    await writeOut(o.json, JSON.stringify(json, null, 2) + '\n')
    process.stderr.write(`semicap: wrote ${o.json}\n`)
  }
  if (o.report) {
    const thumbnails = o.thumbnails ? await makeThumbnails(examples) : undefined
    const title = o.title ?? `semicap evaluation: ${Object.keys(results).join(' vs ')} on ${basename(ds.source)}`
    await writeOut(o.report, renderEvaluationReport({ title, results, thumbnails, trainingLog }))
    process.stderr.write(`semicap: wrote ${o.report}\n`)
  }
}

export function evalCommand(program: Command): void {
  program
    .command('eval')
    .description('evaluate captioners on annotated images: BLEU, ROUGE-L, CIDEr-D, CLIP-S, RefCLIP-S, recall@k, diversity')
    .requiredOption('-m, --model <dir>', 'a captioner folder; repeat to compare several (name=dir names a column)', (v: string, prev: string[] = []) => [...prev, v])
    .requiredOption('--data <path>', 'annotations: COCO/Karpathy JSON or JSONL with captions')
    .addOption(new Option('--split <name>', 'Karpathy split').choices([...KARPATHY_SPLITS]).default('test'))
    .option('--images-dir <dir>', 'images folder of a COCO/Karpathy JSON (default: its folder)')
    .option('--limit <n>', 'evaluate the first n images only', intOption(1))
    .option('--report <file>', 'write a self-contained HTML report')
    .option('--json <file>', 'write the metrics and per-image results as JSON')
    .option('--log <file>', 'a training log (train-log.jsonl) plotted in the report')
    .option('--title <text>', 'report title')
    .addOption(new Option('--decoding <method>', 'decoding method (default greedy)').choices(['greedy', 'beam']))
    .option('--beams <n>', 'beam width (implies --decoding beam)', intOption(1))
    .option('--max-tokens <n>', 'most tokens per caption', intOption(1))
    .option('--batch-size <n>', 'images captioned together', intOption(1), 32)
    .option('--training-data <path>', 'training captions, for the share of novel captions')
    .option('--feature-cache <dir>', 'read CLIP image features from (and add them to) this cache')
    .option('--no-thumbnails', 'no image thumbnails in the report')
    .option('--device <device>', 'cpu, cuda, cuda:N or auto', deviceOption, 'auto')
    .option('--no-progress', 'no progress bar')
    .action((o: EvalCliOptions) => runEval(o))
}
