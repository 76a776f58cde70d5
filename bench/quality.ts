// Quality of reduced-precision CPU inference, measured on the demo's test split (issue: "Quality measured, not
// assumed: the share of greedy captions identical to fp32 and the CIDEr-D / CLIP-S differences; target >= 95% of
// greedy captions identical to fp32 (int8)").
//
//   node --import tsx bench/quality.ts --demo demo-out/world-seed0 [--captioners full,small,reward] [--seed 0]
//                                      [--dtypes float32,bfloat16,int8] [--threads 1] [--out bench/out/quality.json]
//
// For each captioner folder of a finished demo run (captioners/<name>-seed<k>/) it loads the captioner once per dtype
// (float32 first: the reference; disposed before the next load) and runs exactly the demo's evaluation
// (lib/demo/experiment.ts evaluationStage: evaluate() on worldExamples(world, world.test) with a feature cache, the
// demo config's batch size and decoding, object P/R/F1 from scoreObjects against the scene graphs). When the demo
// decodes with beams, greedy is evaluated as well (the target is about greedy captions).
//
// The feature cache is keyed by the hash of CLIP's weights file, not by the dtype CLIP runs in, so sharing the demo's
// cache (or one cache across dtypes) would hand every dtype float32 image features. Each evaluation here gets a fresh,
// empty cache folder (bench/out/quality-cache/<captioner>-<dtype>-<decoding>/, emptied first): image features are
// recomputed by the dtype under test, and every wall time includes CLIP's image tower.
//
// Everything used is exported by lib/ (worldExamples, readStageRecord, stageKeys, readWorld, scoreObjects, evaluate);
// the demo's config comes from <demo>/results.json (written when the demo finishes), else demoConfig()'s default, and
// is checked against the evaluation stage's key. The float32 captions are also compared with the demo's own
// evaluations/<name>-seed<k>/result.json (they should be identical).
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Captioner } from '../lib/captioner.js'
import type { DecodeOptions } from '../lib/decoding.js'
import { demoConfig, stageKeys, type DemoConfig } from '../lib/demo/config.js'
import type { CaptionerEvaluation } from '../lib/demo/experiment.js'
import { readStageRecord, worldExamples, type CaptionerName, type WorldStage } from '../lib/demo/pipeline.js'
import type { InferenceDtype, LoadedWeights } from '../lib/device.js'
import { evaluate, type EvaluationMetrics } from '../lib/evaluate.js'
import { runtimeInfo, setThreads } from '../lib/runtime.js'
import { readWorld, scoreObjects } from '../lib/world/index.js'

const HERE = dirname(fileURLToPath(import.meta.url))
const NAMES: readonly CaptionerName[] = ['full', 'small', 'reward']
const DTYPES: readonly InferenceDtype[] = ['float32', 'bfloat16', 'int8']

interface Args {
  demo: string
  captioners: CaptionerName[]
  seed: number
  dtypes: InferenceDtype[]
  threads: number
  out: string
}

function parseArgs(argv: string[]): Args {
  const a: Args = { demo: '', captioners: [...NAMES], seed: 0, dtypes: [...DTYPES], threads: 1, out: join(HERE, 'out', 'quality.json') }
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!
    const v = () => {
      const x = argv[++i]
      if (x === undefined) throw new Error(`${k} needs a value`)
      return x
    }
    if (k === '--demo') a.demo = v()
    else if (k === '--captioners') a.captioners = v().split(',').map((s) => s.trim()) as CaptionerName[]
    else if (k === '--seed') a.seed = Number(v())
    else if (k === '--dtypes') a.dtypes = v().split(',').map((s) => s.trim()) as InferenceDtype[]
    else if (k === '--threads') a.threads = Number(v())
    else if (k === '--out') a.out = v()
    else if (k === '--help' || k === '-h') {
      console.log('node --import tsx bench/quality.ts --demo DIR [--captioners full,small,reward] [--seed 0] [--dtypes float32,bfloat16,int8] [--threads 1] [--out FILE]')
      process.exit(0)
    } else throw new Error(`unknown argument ${k}`)
  }
  if (!a.demo) throw new Error('--demo DIR is required (the --out folder of a finished `semicap demo`)')
  for (const n of a.captioners) if (!NAMES.includes(n)) throw new Error(`unknown captioner '${n}' (full, small, reward)`)
  for (const d of a.dtypes) if (!DTYPES.includes(d)) throw new Error(`unknown dtype '${d}' (float32, bfloat16, int8)`)
  if (a.dtypes[0] !== 'float32') a.dtypes = ['float32', ...a.dtypes.filter((d) => d !== 'float32')]
  if (!Number.isInteger(a.seed) || a.seed < 0) throw new Error('--seed must be an integer >= 0')
  if (!Number.isInteger(a.threads) || a.threads < 1) throw new Error('--threads must be an integer >= 1')
  return a
}

/** The demo's config: results.json's (a finished run), else the default; checked against the evaluation stage keys. */
async function loadConfig(demo: string): Promise<{ config: DemoConfig; source: string }> {
  try {
    const r = JSON.parse(await readFile(join(demo, 'results.json'), 'utf8')) as { config?: DemoConfig }
    if (r.config) return { config: r.config, source: 'results.json' }
  } catch {
    /* not finished yet, or an older run */
  }
  return { config: demoConfig(), source: 'demoConfig() default (no results.json)' }
}

type Metrics = EvaluationMetrics & { objectPrecision: number; objectRecall: number; objectF1: number }

interface Row {
  captioner: CaptionerName
  decoding: 'greedy' | 'beam'
  dtype: InferenceDtype
  weights: { captioner: LoadedWeights; clip: LoadedWeights }
  /** Captioner (mapper + GPT-2) plus CLIP packed bytes. */
  packedBytes: number
  loadSeconds: number
  evalSeconds: number
  images: number
  identical: number
  identicalShare: number
  metrics: Metrics
  delta: { ciderD: number; clipS: number; objectF1: number; bleu4: number; refClipS: number }
  /** Mean over images of |per-image CLIP-S - float32's|. */
  meanAbsClipSDiff: number
  /** A few captions that differ from float32's. */
  differing: { id: string; float32: string; caption: string }[]
  /** float32 only: captions identical to the demo's evaluations/<name>-seed<k>/result.json. */
  matchesDemo?: { identical: number; of: number }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2))
  setThreads(args.threads)
  const demo = resolve(args.demo)
  const { config, source } = await loadConfig(demo)
  const keys = stageKeys(config, 'cpu')

  const worldDir = join(demo, 'world')
  const worldRecord = await readStageRecord(worldDir)
  if (!worldRecord) throw new Error(`${worldDir}: no finished world stage (stage.json)`)
  if (worldRecord.key !== keys.world) console.warn(`warning: ${worldDir} key differs from the config's (${source}); evaluating anyway`)
  const world: WorldStage = { dir: worldDir, world: await readWorld(worldDir), record: worldRecord }
  const test = worldExamples(world, world.world.test)
  const sceneOf = new Map(test.map((t) => [t.id, t.scene]))

  const e = config.eval
  const demoDecoding: DecodeOptions =
    e.beams > 1 ? { decoding: 'beam', beams: e.beams, maxTokens: e.maxTokens } : { decoding: 'greedy', maxTokens: e.maxTokens }
  const decodings: ['greedy' | 'beam', DecodeOptions][] = [[e.beams > 1 ? 'beam' : 'greedy', demoDecoding]]
  if (e.beams > 1) decodings.push(['greedy', { decoding: 'greedy', maxTokens: e.maxTokens }])

  const info = runtimeInfo() as unknown as Record<string, unknown>
  const cpuModel = cpus()[0]?.model ?? '?'
  console.log(`demo ${demo} (config: ${source}); test split ${test.length} images; eval ${JSON.stringify(e)}; threads ${args.threads}; ${cpuModel}`)

  const rows: Row[] = []
  const notes: string[] = []
  for (const name of args.captioners) {
    const dir = join(demo, 'captioners', `${name}-seed${args.seed}`)
    const rec = await readStageRecord(dir)
    if (!rec) {
      notes.push(`${dir}: no finished captioner stage, skipped`)
      console.warn(notes.at(-1))
      continue
    }
    let demoCaptions: Map<string, string> | undefined
    const evalDir = join(demo, 'evaluations', `${name}-seed${args.seed}`)
    const evalRec = await readStageRecord(evalDir)
    if (evalRec) {
      if (evalRec.key !== keys.evaluation(rec.key)) notes.push(`${evalDir}: stage key differs from the config's (${source}): the demo may have evaluated with other settings`)
      try {
        const r = JSON.parse(await readFile(join(evalDir, 'result.json'), 'utf8')) as CaptionerEvaluation
        demoCaptions = new Map(r.perImage.map((p) => [p.id, p.caption]))
      } catch {
        /* no result.json */
      }
    }
    for (const [decodingName, decoding] of decodings) {
      let reference: { captions: string[]; metrics: Metrics; clipS: number[] } | undefined
      for (const dtype of args.dtypes) {
        const cache = join(HERE, 'out', 'quality-cache', `${name}-${dtype}-${decodingName}`)
        await rm(cache, { recursive: true, force: true })
        await mkdir(cache, { recursive: true })
        const t0 = performance.now()
        const captioner = await Captioner.load(dir, { device: 'cpu', dtype })
        const loadSeconds = (performance.now() - t0) / 1000
        let row: Row
        try {
          const weights = { captioner: { ...captioner.weights }, clip: { ...captioner.clip.weights } }
          if (weights.captioner.dtype !== dtype || weights.clip.dtype !== dtype) {
            notes.push(`${name} ${dtype}: loaded as captioner ${weights.captioner.dtype}, clip ${weights.clip.dtype}${weights.captioner.note ? ` (${weights.captioner.note})` : ''}`)
          }
          const t1 = performance.now()
          const result = await evaluate(captioner, { examples: test, featureCache: cache, batchSize: e.batchSize, decoding })
          const evalSeconds = (performance.now() - t1) / 1000
          const obj = result.perImage.map((p) => scoreObjects(p.caption, sceneOf.get(p.id)!))
          const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length
          const metrics: Metrics = {
            ...result.metrics,
            objectPrecision: mean(obj.map((o) => o.precision)),
            objectRecall: mean(obj.map((o) => o.recall)),
            objectF1: mean(obj.map((o) => o.f1)),
          }
          const captions = result.perImage.map((p) => p.caption)
          const clipS = result.perImage.map((p) => p.scores.clipS)
          reference ??= { captions, metrics, clipS }
          const same = captions.filter((c, i) => c === reference!.captions[i]).length
          const differing = result.perImage
            .map((p, i) => ({ id: p.id, float32: reference!.captions[i]!, caption: p.caption }))
            .filter((d) => d.float32 !== d.caption)
            .slice(0, 5)
          row = {
            captioner: name,
            decoding: decodingName,
            dtype,
            weights,
            packedBytes: weights.captioner.packedBytes + weights.clip.packedBytes,
            loadSeconds,
            evalSeconds,
            images: captions.length,
            identical: same,
            identicalShare: same / captions.length,
            metrics,
            delta: {
              ciderD: metrics.ciderD - reference.metrics.ciderD,
              clipS: metrics.clipS - reference.metrics.clipS,
              objectF1: metrics.objectF1 - reference.metrics.objectF1,
              bleu4: metrics.bleu4 - reference.metrics.bleu4,
              refClipS: metrics.refClipS - reference.metrics.refClipS,
            },
            meanAbsClipSDiff: mean(clipS.map((s, i) => Math.abs(s - reference!.clipS[i]!))),
            differing,
          }
          if (dtype === 'float32' && demoCaptions && decoding === demoDecoding) {
            const of = result.perImage.filter((p) => demoCaptions!.has(p.id)).length
            const identical = result.perImage.filter((p) => demoCaptions!.get(p.id) === p.caption).length
            row.matchesDemo = { identical, of }
            if (identical !== of) notes.push(`${name} float32: ${of - identical} of ${of} captions differ from the demo's own result.json`)
          }
        } finally {
          captioner.dispose()
        }
        rows.push(row)
        console.log(
          `${name} ${decodingName} ${dtype}: identical ${row.identical}/${row.images}, CIDEr-D ${row.metrics.ciderD.toFixed(4)}, CLIP-S ${row.metrics.clipS.toFixed(4)}, ` +
            `obj F1 ${row.metrics.objectF1.toFixed(4)}, packed ${(row.packedBytes / 2 ** 20).toFixed(2)} MiB (${row.weights.captioner.isa}), load ${loadSeconds.toFixed(2)} s, eval ${row.evalSeconds.toFixed(1)} s`,
        )
        await rm(cache, { recursive: true, force: true })
      }
    }
  }

  const table = markdown(rows)
  console.log('\n' + table)
  if (notes.length) console.log('\nnotes:\n' + notes.map((n) => `- ${n}`).join('\n'))
  await mkdir(dirname(resolve(args.out)), { recursive: true })
  await writeFile(
    resolve(args.out),
    JSON.stringify(
      {
        demo,
        configSource: source,
        eval: e,
        testImages: test.length,
        threads: args.threads,
        cpu: cpuModel,
        runtime: { blas: info.blas, cpu: info.cpu, cpuGemm: info.cpuGemm },
        date: new Date().toISOString(),
        rows,
        notes,
        table,
      },
      null,
      2,
    ) + '\n',
  )
  console.log(`\nwrote ${resolve(args.out)}`)
}

function markdown(rows: readonly Row[]): string {
  const sign = (x: number, d: number) => (x >= 0 ? '+' : '') + x.toFixed(d)
  const header = ['captioner', 'decoding', 'dtype', 'identical to fp32', 'CIDEr-D', 'Δ CIDEr-D', 'CLIP-S', 'Δ CLIP-S', 'mean abs Δ CLIP-S per img', 'obj F1', 'Δ obj F1', 'packed KiB (clip+capt.)', 'isa', 'eval s']
  const body = rows.map((r) => [
    r.captioner,
    r.decoding,
    r.dtype,
    `${(100 * r.identicalShare).toFixed(1)}% (${r.identical}/${r.images})`,
    r.metrics.ciderD.toFixed(4),
    r.dtype === 'float32' ? '' : sign(r.delta.ciderD, 4),
    r.metrics.clipS.toFixed(4),
    r.dtype === 'float32' ? '' : sign(r.delta.clipS, 4),
    r.dtype === 'float32' ? '' : r.meanAbsClipSDiff.toFixed(4),
    r.metrics.objectF1.toFixed(4),
    r.dtype === 'float32' ? '' : sign(r.delta.objectF1, 4),
    (r.packedBytes / 1024).toFixed(1),
    r.weights.captioner.isa,
    r.evalSeconds.toFixed(1),
  ])
  return [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...body.map((b) => `| ${b.join(' | ')} |`)].join('\n')
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
