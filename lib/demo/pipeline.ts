// The demo's stages, each cached in its own folder under the output folder of its world seed:
//   world/      the synthetic captioning dataset (PNGs, JSONL, scenes.json with the ground truth)
//   tokenizer/  a byte-level BPE trained on the world's text (caption-like sentences and web alt texts)
//   clip/       the stand-in CLIP, trained contrastively on web icons and alt texts of web scenes (never the references);
//               the captioners are built on it and stage 2 optimises its CLIP-S
//   judge/      the held-out judge: another stand-in CLIP trained on another draw of the web; it only evaluates
//   gpt2/       the stand-in GPT-2, trained as a language model on caption-like text (no images)
//   captioners/<name>-seed<k>/   one folder per captioner of config.ts's CAPTIONERS: (a) full, (b) small,
//                                (b+) contrast, (c) reward, (c-) reward-from-b, and the ablations reward-no-kl/-no-rep
//   evaluations/<name>-seed<k>/  test-split metrics (reward CLIP and judge), captions, per-image scores (result.json)
// A stage folder holds stage.json with its key (a hash of the settings it depends on, see stageKeys); a stage whose
// folder has the right key is skipped. Stages are built in <name>.partial and renamed into place when complete.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { Captioner } from '../captioner.js'
import { Clip } from '../clip.js'
import { cachedImageFeatures, type Example } from '../data/index.js'
import { resolveDevice, type DeviceOption } from '../device.js'
import { AbortError } from '../errors.js'
import { CLIP_S_PREFIX } from '../evaluate.js'
import { Gpt2 } from '../gpt2.js'
import { cosine, retrievalRecallAtK } from '../metrics/index.js'
import { setThreads } from '../runtime.js'
import type { Tensor } from '../tensor.js'
import { Gpt2Tokenizer, saveGpt2TokenizerFiles, trainByteLevelBpe } from '../tokenizers/index.js'
// Imported for its effect too: it registers training with the model classes' train() methods.
import '../training/index.js'
import type { TrainingRun, TrainOptions, TrainProgress } from '../training/index.js'
import {
  COLOURS,
  Rng,
  SHAPES,
  SHAPE_WORDS,
  SIZE_WORDS,
  altTexts,
  buildWorld,
  deriveSeed,
  fullCaption,
  generateScenes,
  lmCorpus,
  readWorld,
  renderScene,
  writeWorld,
  type Scene,
  type SceneOptions,
  type World,
  type WorldExample,
} from '../world/index.js'
import { captionerSpec, rewardConfigOf, stageKeys, type CaptionerName, type CaptionerSpec, type DemoConfig, type StageKeys } from './config.js'

export type { CaptionerName } from './config.js'

/** The prompt CLIP-S puts before every caption (as the official clipscore code does). */
export const CLIP_PROMPT = CLIP_S_PREFIX

export type StageName = 'world' | 'tokenizer' | 'clip' | 'gpt2' | 'captioner' | 'evaluation'

export interface StageEvent {
  stage: StageName
  /** e.g. "clip", "(c) reward seed 0". */
  label: string
  status: 'run' | 'skip' | 'done'
  dir: string
  /** Wall time of the stage (status 'done'). */
  seconds?: number
}

/** A progress bar as the demo uses it (lib/progress.ts's ProgressBar fits). */
export interface DemoBar {
  update(done: number, note?: string): void
  finish(note?: string): void
  stop(): void
}

/** Where the demo reports what it does; every member is optional (a silent run passes {}). */
export interface DemoReporter {
  stage?(event: StageEvent): void
  bar?(label: string, total: number, unit?: string): DemoBar
}

/** What stage.json records. */
export interface StageRecord {
  stage: StageName
  label: string
  key: string
  seconds: number
  finishedAt: string
  info: Record<string, unknown>
}

export interface PipelineContext {
  out: string
  cfg: DemoConfig
  keys: StageKeys
  device: DeviceOption
  reporter: DemoReporter
  signal?: AbortSignal
  /** Stage events of this run, in order (also sent to the reporter). */
  events: StageEvent[]
}

export function createContext(options: {
  out: string
  config: DemoConfig
  device?: DeviceOption
  threads?: number
  reporter?: DemoReporter
  signal?: AbortSignal
}): PipelineContext {
  const device = resolveDevice(options.device ?? 'auto') as DeviceOption
  if (options.threads !== undefined) setThreads(options.threads)
  return {
    out: resolve(options.out),
    cfg: options.config,
    keys: stageKeys(options.config, device),
    device,
    reporter: options.reporter ?? {},
    signal: options.signal,
    events: [],
  }
}

const silentBar: DemoBar = { update: () => undefined, finish: () => undefined, stop: () => undefined }

function bar(ctx: PipelineContext, label: string, total: number, unit?: string): DemoBar {
  return ctx.reporter.bar?.(label, total, unit) ?? silentBar
}

function emit(ctx: PipelineContext, event: StageEvent): void {
  ctx.events.push(event)
  ctx.reporter.stage?.(event)
}

function checkAbort(ctx: PipelineContext): void {
  if (ctx.signal?.aborted) throw new AbortError('the demo was aborted', { cause: ctx.signal.reason })
}

export async function readStageRecord(dir: string): Promise<StageRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, 'stage.json'), 'utf8')) as StageRecord
  } catch {
    return undefined
  }
}

/**
 * Runs `produce` into `<dir>.partial` unless `dir` already holds a finished stage with `key`; then renames the
 * partial folder into place. Returns the stage record (with `produce`'s info).
 */
export async function runStage(
  ctx: PipelineContext,
  stage: StageName,
  label: string,
  dir: string,
  key: string,
  produce: (tmp: string) => Promise<Record<string, unknown>>,
): Promise<StageRecord> {
  checkAbort(ctx)
  const done = await readStageRecord(dir)
  if (done && done.key === key) {
    emit(ctx, { stage, label, status: 'skip', dir })
    return done
  }
  emit(ctx, { stage, label, status: 'run', dir })
  const t0 = performance.now()
  const tmp = `${dir}.partial`
  await rm(tmp, { recursive: true, force: true })
  await mkdir(tmp, { recursive: true })
  const info = await produce(tmp)
  const record: StageRecord = { stage, label, key, seconds: (performance.now() - t0) / 1000, finishedAt: new Date().toISOString(), info }
  await writeFile(join(tmp, 'stage.json'), JSON.stringify(record, null, 2) + '\n')
  await rm(dir, { recursive: true, force: true })
  await rename(tmp, dir)
  emit(ctx, { stage, label, status: 'done', dir, seconds: record.seconds })
  return record
}

/** Follows a training run with a progress bar (loss, or reward for SCST) and returns every progress event. */
async function follow(ctx: PipelineContext, run: TrainingRun, label: string, total: number): Promise<TrainProgress[]> {
  const b = bar(ctx, label, total, 'steps')
  const log: TrainProgress[] = []
  let features: DemoBar | undefined
  run.on('prepare', (e: { phase: string; done?: number; total?: number }) => {
    if (e.phase === 'features' && e.total) {
      features ??= bar(ctx, `${label}: CLIP features`, e.total, 'images')
      features.update(e.done ?? 0)
    } else if (e.phase === 'features-done') features?.finish()
  })
  run.on('progress', (p: TrainProgress) => {
    log.push(p)
    const note = p.reward !== undefined && Number.isFinite(p.reward) ? `reward ${p.reward.toFixed(3)}` : `loss ${p.loss.toFixed(3)}`
    b.update(p.step, note)
  })
  const onAbort = () => run.abort(ctx.signal?.reason)
  ctx.signal?.addEventListener('abort', onAbort, { once: true })
  try {
    await run
    b.finish()
    return log
  } catch (err) {
    b.stop()
    features?.stop()
    throw err
  } finally {
    ctx.signal?.removeEventListener('abort', onAbort)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// World, web data, tokenizer

export interface WorldStage {
  dir: string
  world: World
  record: StageRecord
}

export async function worldStage(ctx: PipelineContext): Promise<WorldStage> {
  const dir = join(ctx.out, 'world')
  const w = ctx.cfg.world
  const record = await runStage(ctx, 'world', 'world', dir, ctx.keys.world, async (tmp) => {
    const world = buildWorld(w)
    const total = world.train.length + world.val.length + world.test.length
    const b = bar(ctx, 'world: rendering', total, 'images')
    await writeWorld(tmp, world, { onProgress: (done) => b.update(done) })
    b.finish()
    return { train: world.train.length, labeled: world.labeled.length, unlabeled: world.unlabeled.length, val: world.val.length, test: world.test.length }
  })
  return { dir, world: await readWorld(dir), record }
}

/** The world's scene options (background, object count): the web and the text corpora follow them too. */
export function sceneOptionsOf(cfg: DemoConfig): SceneOptions {
  return { backgrounds: cfg.world.backgrounds, maxObjects: cfg.world.maxObjects, palette: cfg.world.palette }
}

export interface WebPairs {
  /** One image per text. */
  scenes: Scene[]
  texts: string[]
}

/**
 * The "web" the stand-in CLIP learns from, in two phases (deterministic, disjoint from the captioning data):
 * 1. clip-art icons: one object, labelled by its shape and, half of the time each, its size and colour
 *    ("star", "large red star"). Without this phase contrastive learning stops at colour, which already tells most
 *    images of a batch apart (a shortcut), and the tiny CLIP never learns shapes within the budget.
 * 2. scenes with one alt text each, of random detail (lib/world altTexts); some reduced to their salient object.
 * Some texts of both phases are written after the CLIP-S prompt "A photo depicts ", as some web text is.
 * `salt` draws another web of the same kind (the held-out judge's): every seed gets it as an extra part.
 */
export function webPairs(cfg: DemoConfig, salt?: string): { icons: WebPairs; scenes: WebPairs } {
  const { icons, images, singleObjectShare, promptShare } = cfg.web
  const sceneOptions = sceneOptionsOf(cfg)
  const seedOf = (purpose: string) => (salt === undefined ? deriveSeed(cfg.world.seed, purpose) : deriveSeed(cfg.world.seed, purpose, salt))
  const rng = new Rng(seedOf('web-text'))
  const prompt = (t: string) => (rng.chance(promptShare) ? CLIP_PROMPT + t : t)
  const iconScenes = generateScenes(seedOf('icons'), icons, sceneOptions).map((s) => ({ ...s, objects: s.objects.slice(0, 1) }))
  const iconTexts = iconScenes.map((s) => {
    const o = s.objects[0]!
    const words = [rng.chance(0.5) ? rng.pick(SIZE_WORDS[o.size]) : '', rng.chance(0.5) ? o.colour : '', rng.pick(SHAPE_WORDS[o.shape])]
    return prompt(words.filter((w) => w !== '').join(' '))
  })
  const webScenes = generateScenes(seedOf('web'), images, sceneOptions).map((s) =>
    rng.chance(singleObjectShare) ? { ...s, objects: s.objects.slice(0, 1) } : s,
  )
  const webTexts = webScenes.map((s) => prompt(altTexts(s, rng, 1)[0]!))
  return { icons: { scenes: iconScenes, texts: iconTexts }, scenes: { scenes: webScenes, texts: webTexts } }
}

export async function tokenizerStage(ctx: PipelineContext): Promise<{ dir: string; tokenizer: Gpt2Tokenizer; record: StageRecord }> {
  const dir = join(ctx.out, 'tokenizer')
  const record = await runStage(ctx, 'tokenizer', 'tokenizer', dir, ctx.keys.tokenizer, async (tmp) => {
    const b = bar(ctx, 'tokenizer: byte-level BPE', 1)
    const web = webPairs(ctx.cfg)
    const corpus = [...lmCorpus(deriveSeed(ctx.cfg.world.seed, 'tokenizer'), ctx.cfg.tokenizer.lmSentences, sceneOptionsOf(ctx.cfg)), ...web.icons.texts, ...web.scenes.texts]
    const trained = trainByteLevelBpe(corpus, { vocabSize: ctx.cfg.tokenizer.vocabSize })
    await saveGpt2TokenizerFiles(tmp, trained)
    b.update(1)
    b.finish(`${Object.keys(trained.vocab).length} tokens`)
    return { vocabSize: Object.keys(trained.vocab).length, merges: trained.merges.length, corpus: corpus.length }
  })
  return { dir, tokenizer: await Gpt2Tokenizer.load(dir, { packageFallback: false }), record }
}

// ---------------------------------------------------------------------------------------------------------------
// Stand-in CLIP and GPT-2

/** The Hugging Face CLIPConfig of the stand-in CLIP. */
export function clipHfConfig(cfg: DemoConfig, tokenizer: Gpt2Tokenizer): Record<string, unknown> {
  const c = cfg.clip
  const tower = (hidden: number) => ({ hidden_size: hidden, intermediate_size: 2 * hidden, num_attention_heads: c.heads, num_hidden_layers: c.layers })
  return {
    projection_dim: c.projectionDim,
    logit_scale_init_value: 2.6592,
    // The tokenizer's end token starts and ends texts (GPT-2 style); tokenize() then leaves the start out, so
    // the text tower pools at the real end.
    text_config: { ...tower(c.textHidden), vocab_size: tokenizer.vocabSize, max_position_embeddings: c.maxPositions, eos_token_id: tokenizer.eosId, bos_token_id: tokenizer.eosId },
    vision_config: { ...tower(c.visionHidden), image_size: cfg.world.imageSize, patch_size: c.patchSize },
  }
}

/** Rows of a [N, D] float32 tensor. */
export function rows(t: Tensor): Float32Array[] {
  const [N, D] = t.shape as [number, number]
  const data = t.data as Float32Array
  return Array.from({ length: N }, (_, i) => data.subarray(i * D, (i + 1) * D))
}

export async function encodeTexts(clip: Clip, texts: string[]): Promise<Float32Array[]> {
  const out: Float32Array[] = []
  for (let i = 0; i < texts.length; i += 256) out.push(...rows(await clip.encodeTexts(texts.slice(i, i + 256))))
  return out
}

async function imageFeatures(clip: Clip, images: string[], batch = 128): Promise<Float32Array[]> {
  const out: Float32Array[] = []
  for (let i = 0; i < images.length; i += batch) out.push(...rows(await clip.imageFeatures(await clip.preprocess(images.slice(i, i + batch)))))
  return out
}

/** How well the stand-in CLIP matches held-out images and texts (val split). */
export interface ClipRetrieval {
  images: number
  /** Recall@1/@5 among all val images, text -> image with the full-detail caption (prompted), and image -> text. */
  fullTextToImage: [number, number]
  fullImageToText: [number, number]
  /** Text -> image with the first annotator reference (prompted): incomplete captions are harder to place. */
  referenceTextToImage: [number, number]
  /**
   * Share of images for which CLIP scores the true full caption above the same caption with one thing wrong: the
   * first object's shape, colour or size changed, or (scenes with several objects) the last object left out.
   */
  prefersTrue: { shape: number; colour: number; size: number; complete: number }
}

/** Scene variants with exactly one thing wrong (see ClipRetrieval.prefersTrue). */
function corrupt(scene: Scene, what: keyof ClipRetrieval['prefersTrue']): Scene | undefined {
  const [first, ...rest] = scene.objects
  if (!first) return undefined
  const next = <T>(list: readonly T[], v: T, by: number) => list[(list.indexOf(v) + by) % list.length]!
  switch (what) {
    case 'shape':
      return { ...scene, objects: [{ ...first, shape: next(SHAPES, first.shape, 1) }, ...rest] }
    case 'colour':
      return { ...scene, objects: [{ ...first, colour: next(COLOURS, first.colour, 3) }, ...rest] }
    case 'size':
      return { ...scene, objects: [{ ...first, size: first.size === 'small' ? 'large' : 'small' }, ...rest] }
    case 'complete':
      return rest.length > 0 ? { ...scene, objects: scene.objects.slice(0, -1) } : undefined
  }
}

export async function clipRetrieval(clip: Clip, examples: { image: string; scene: Scene; references: string[] }[]): Promise<ClipRetrieval> {
  const img = await imageFeatures(clip, examples.map((e) => e.image))
  const full = await encodeTexts(clip, examples.map((e) => CLIP_PROMPT + fullCaption(e.scene)))
  const refs = await encodeTexts(clip, examples.map((e) => CLIP_PROMPT + (e.references[0] ?? '')))
  const r = (a: Float32Array[], b: Float32Array[]) => retrievalRecallAtK(a, b, [1, 5]) as [number, number]
  const prefersTrue = { shape: 0, colour: 0, size: 0, complete: 0 }
  for (const what of Object.keys(prefersTrue) as (keyof typeof prefersTrue)[]) {
    const idx = examples.map((e, i) => (corrupt(e.scene, what) ? i : -1)).filter((i) => i >= 0)
    if (idx.length === 0) continue
    const wrong = await encodeTexts(clip, idx.map((i) => CLIP_PROMPT + fullCaption(corrupt(examples[i]!.scene, what)!)))
    prefersTrue[what] = idx.filter((i, j) => cosine(img[i]!, full[i]!) > cosine(img[i]!, wrong[j]!)).length / idx.length
  }
  return { images: examples.length, fullTextToImage: r(full, img), fullImageToText: r(img, full), referenceTextToImage: r(refs, img), prefersTrue }
}

/**
 * The stand-in CLIP: `reward` is the one the captioners are built on and stage 2 optimises; `judge` is the held-out
 * one (same architecture and budget, another web draw, other initial weights) that only evaluates.
 */
export async function clipStage(ctx: PipelineContext, world: WorldStage, tok: { tokenizer: Gpt2Tokenizer }, role: 'reward' | 'judge' = 'reward'): Promise<{ dir: string; record: StageRecord }> {
  const judge = role === 'judge'
  const name = judge ? 'judge' : 'clip'
  const dir = join(ctx.out, name)
  const c = ctx.cfg.clip
  const seed = ctx.cfg.world.seed + (judge ? ctx.cfg.judge.seedOffset : 0)
  const record = await runStage(ctx, 'clip', name, dir, judge ? ctx.keys.judge : ctx.keys.clip, async (tmp) => {
    const clip = await Clip.create(clipHfConfig(ctx.cfg, tok.tokenizer), { device: ctx.device, tokenizer: tok.tokenizer, seed: seed + 1 })
    try {
      const web = webPairs(ctx.cfg, judge ? ctx.cfg.judge.webSalt : undefined)
      const log: TrainProgress[] = []
      const phases: [string, WebPairs, number][] = [
        ['icons', web.icons, c.iconSteps],
        ['scenes', web.scenes, c.steps],
      ]
      for (const [phase, pairs, steps] of phases) {
        if (steps === 0) continue
        // Raw pixels straight from the renderer (no files).
        const pixels = await clip.preprocess(pairs.scenes.map((s) => renderScene(s, ctx.cfg.world.imageSize)))
        const run = clip.train(
          { pixels, texts: pairs.texts },
          { steps, batchSize: c.batchSize, lr: c.lr, warmupSteps: c.warmupSteps, gradClip: c.gradClip, seed, signal: ctx.signal },
        )
        const offset = log.length
        for (const p of await follow(ctx, run, `${name}: contrastive training on ${phase}`, steps)) log.push({ ...p, step: p.step + offset, stage: phase })
      }
      await clip.save(tmp)
      await writeJsonl(join(tmp, 'log.jsonl'), log)
      const retrieval = await clipRetrieval(clip, worldExamples(world, world.world.val))
      return { icons: web.icons.texts.length, scenes: web.scenes.texts.length, lastLoss: log.at(-1)?.loss, logitScale: clip.logitScale, retrieval }
    } finally {
      clip.dispose()
    }
  })
  return { dir, record }
}

export async function gpt2Stage(ctx: PipelineContext, tok: { tokenizer: Gpt2Tokenizer }): Promise<{ dir: string; record: StageRecord }> {
  const dir = join(ctx.out, 'gpt2')
  const g = ctx.cfg.gpt2
  const record = await runStage(ctx, 'gpt2', 'gpt2', dir, ctx.keys.gpt2, async (tmp) => {
    const eos = tok.tokenizer.eosId
    const gpt = await Gpt2.create(
      { n_embd: g.nEmbd, n_head: g.nHead, n_layer: g.nLayer, n_positions: g.nPositions, vocab_size: tok.tokenizer.vocabSize, eos_token_id: eos, bos_token_id: eos },
      { device: ctx.device, tokenizer: tok.tokenizer, seed: ctx.cfg.world.seed + 2 },
    )
    try {
      const texts = lmCorpus(deriveSeed(ctx.cfg.world.seed, 'gpt2'), g.sentences, sceneOptionsOf(ctx.cfg))
      const run = gpt.train({ texts }, { steps: g.steps, batchSize: g.batchSize, lr: g.lr, warmupSteps: Math.min(50, Math.floor(g.steps / 10)), seed: ctx.cfg.world.seed, signal: ctx.signal })
      const log = await follow(ctx, run, 'gpt2: language modelling', g.steps)
      await gpt.save(tmp)
      await writeJsonl(join(tmp, 'log.jsonl'), log)
      return { sentences: texts.length, lastLoss: log.at(-1)?.loss }
    } finally {
      gpt.dispose()
    }
  })
  return { dir, record }
}

async function writeJsonl(path: string, entries: readonly object[]): Promise<void> {
  await writeFile(path, entries.map((e) => JSON.stringify(e) + '\n').join(''))
}

// ---------------------------------------------------------------------------------------------------------------
// Captioners

/** World examples as the library's Examples (absolute image paths), carrying their scene for evaluation. */
export function worldExamples(world: WorldStage, list: readonly WorldExample[], withCaptions = true): (Example & { scene: Scene; references: string[] })[] {
  return list.map((e) => ({
    id: e.id,
    image: join(world.dir, 'images', `${e.id}.png`),
    captions: withCaptions ? [...e.references] : [],
    scene: e.scene,
    references: e.references,
  }))
}

/**
 * The labeled/unlabeled division of train for seed k: seed 0 uses the world's own labeled subset, other seeds draw
 * another subset of the same size (so several seeds also vary which images are labeled).
 */
export function labeledSplit(world: World, k: number): { labeled: WorldExample[]; unlabeled: WorldExample[] } {
  if (k === 0) return { labeled: world.labeled, unlabeled: world.unlabeled }
  const ids = new Set(new Rng(deriveSeed(world.seed, 'labeled', k)).shuffle(world.train).slice(0, world.labeled.length).map((e) => e.id))
  return { labeled: world.train.filter((e) => ids.has(e.id)), unlabeled: world.train.filter((e) => !ids.has(e.id)) }
}

export interface CaptionerStage {
  name: CaptionerName
  seed: number
  dir: string
  key: string
  record: StageRecord
}

export interface ModelStages {
  world: WorldStage
  clipDir: string
  /** The held-out judge CLIP (evaluation only). */
  judgeDir: string
  gpt2Dir: string
}

export function captionerDir(ctx: PipelineContext, name: CaptionerName, seed: number): string {
  return join(ctx.out, 'captioners', `${name}-seed${seed}`)
}

function featureCache(ctx: PipelineContext): string {
  return join(ctx.out, 'features')
}

/** "(b+) contrast seed 0": the stage label of a captioner. */
export function captionerStageLabel(name: CaptionerName, seed: number): string {
  return `(${captionerSpec(name).letter}) ${name} seed ${seed}`
}

/**
 * Trains (or reuses) one captioner: cross-entropy from the stand-ins, or a continuation of `from` (the stage it
 * starts from, already built) with the stage-1 contrastive SCST or stage 2.
 */
export async function captionerStage(ctx: PipelineContext, models: ModelStages, name: CaptionerName, seed: number, from?: CaptionerStage): Promise<CaptionerStage> {
  const spec = captionerSpec(name)
  if (spec.from !== from?.name || (from && from.seed !== seed)) throw new RangeError(`${name} seed ${seed} continues from ${spec.from ?? 'nothing'} seed ${seed}, got ${from ? `${from.name} seed ${from.seed}` : 'nothing'}`)
  const dir = captionerDir(ctx, name, seed)
  const key = ctx.keys.captioner(name, seed)
  const label = captionerStageLabel(name, seed)
  const record = await runStage(ctx, 'captioner', label, dir, key, async (tmp) => {
    const captioner = from ? await Captioner.load(from.dir, { device: ctx.device }) : await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: ctx.cfg.captioner.prefixLength }, device: ctx.device, seed })
    try {
      const { options, steps, info } = trainOptions(ctx, models, spec, seed)
      const log = await follow(ctx, captioner.train({ ...options, seed, featureCache: featureCache(ctx), signal: ctx.signal }), label, steps)
      await captioner.save(tmp)
      await writeJsonl(join(tmp, 'log.jsonl'), log)
      const first = log.slice(0, 10)
      const last = log.slice(-10)
      const mean = (xs: TrainProgress[], k: 'reward' | 'loss') => xs.reduce((s, p) => s + (p[k] ?? 0), 0) / Math.max(1, xs.length)
      return spec.kind === 'supervised' ? { ...info, lastLoss: log.at(-1)?.loss } : { ...info, rewardFirst10: mean(first, 'reward'), rewardLast10: mean(last, 'reward') }
    } finally {
      captioner.dispose()
    }
  })
  return { name, seed, dir, key, record }
}

/** The library's training options of one captioner (without seed, cache and signal), its steps and what to record. */
function trainOptions(ctx: PipelineContext, models: ModelStages, spec: CaptionerSpec, seed: number): { options: TrainOptions; steps: number; info: Record<string, unknown> } {
  const { world } = models.world
  const split = labeledSplit(world, seed)
  switch (spec.kind) {
    case 'supervised': {
      const s = ctx.cfg.captioner[spec.name as 'full' | 'small']
      const labeled = spec.name === 'full' ? world.train : split.labeled
      return {
        options: { stage: 'supervised', labeled: worldExamples(models.world, labeled), steps: s.steps, batchSize: s.batchSize, lr: s.lr, warmupSteps: Math.min(20, Math.floor(s.steps / 10)) },
        steps: s.steps,
        info: { labeledImages: labeled.length, captions: labeled.length * 5 },
      }
    }
    case 'contrast': {
      // The paper's stage 1 contrasts the generated captions with the ground truth: SCST on the same labeled images,
      // rewarded for matching their own references better than the batch's other images' (reward.type refContrastive).
      const c = ctx.cfg.captioner.contrast
      return {
        options: {
          stage: 'supervised',
          objective: 'scst',
          labeled: worldExamples(models.world, split.labeled),
          reward: { type: 'refContrastive', tau: c.tau },
          steps: c.steps,
          batchSize: c.batchSize,
          samples: c.samples,
          lr: c.lr,
          temperature: c.temperature,
          klCoef: c.klCoef,
          repetitionPenalty: c.repetitionPenalty,
          maxTokens: c.maxTokens,
          schedule: 'constant',
        },
        steps: c.steps,
        info: { labeledImages: split.labeled.length },
      }
    }
    case 'reward': {
      const r = rewardConfigOf(ctx.cfg, spec)
      return {
        options: {
          stage: 'clip-reward',
          unlabeled: worldExamples(models.world, split.unlabeled, false),
          ...(r.ceMix > 0 ? { labeled: worldExamples(models.world, split.labeled), ceMix: { weight: r.ceMix } } : {}),
          reward: { type: 'clipS', prefix: CLIP_PROMPT },
          steps: r.steps,
          batchSize: r.batchSize,
          samples: r.samples,
          lr: r.lr,
          temperature: r.temperature,
          klCoef: r.klCoef,
          repetitionPenalty: r.repetitionPenalty,
          maxTokens: r.maxTokens,
          schedule: 'constant',
        },
        steps: r.steps,
        info: { unlabeledImages: split.unlabeled.length, klCoef: r.klCoef, repetitionPenalty: r.repetitionPenalty },
      }
    }
  }
}

/**
 * Computes the reward CLIP's features of every train and test image into the feature cache before the captioners
 * train, so that stages running at once (`jobs` > 1) read the cache instead of each computing the same features.
 */
export async function warmFeatureCache(ctx: PipelineContext, models: ModelStages): Promise<void> {
  checkAbort(ctx)
  const { world } = models.world
  const clip = await Clip.load(models.clipDir, { device: ctx.device })
  try {
    const examples = worldExamples(models.world, [...world.train, ...world.test], false)
    let b: DemoBar | undefined
    await cachedImageFeatures(clip, examples, {
      cacheDir: featureCache(ctx),
      batchSize: 128,
      signal: ctx.signal,
      onProgress: (done, total) => {
        if (done < total) (b ??= bar(ctx, 'clip: image features', total, 'images')).update(done)
      },
    })
    b?.finish()
  } finally {
    clip.dispose()
  }
}

/**
 * At most `jobs` tasks at once, started in the order they were handed in. A task that waits for another's result
 * (a captioner for the one it continues from) should wait before it is handed in, so it holds no slot meanwhile.
 */
export function limiter(jobs: number): <T>(task: () => Promise<T>) => Promise<T> {
  if (!Number.isInteger(jobs) || jobs < 1) throw new RangeError(`jobs must be an integer >= 1, got ${jobs}`)
  let running = 0
  const queue: (() => void)[] = []
  const next = () => {
    if (running < jobs && queue.length > 0) {
      running++
      queue.shift()!()
    }
  }
  return <T>(task: () => Promise<T>) =>
    new Promise<T>((resolve, reject) => {
      queue.push(() =>
        task()
          .then(resolve, reject)
          .finally(() => {
            running--
            next()
          }),
      )
      next()
    })
}

/** Reads a stage's training log (log.jsonl). */
export async function readLog(dir: string): Promise<TrainProgress[]> {
  try {
    const text = await readFile(join(dir, 'log.jsonl'), 'utf8')
    return text
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as TrainProgress)
  } catch {
    return []
  }
}
