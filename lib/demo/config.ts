// The demo's configuration: every size, step count and learning rate of the end-to-end run, in one plain object.
// `demoConfig()` gives the default (see the README for its measured time on two CPU cores), `--quick` a toy version
// for tests (seconds), `--scale n` a bigger world and bigger models. Stages are cached by a hash of the parts of this
// object they depend on (see stageKeys), so changing one learning rate retrains only what it affects.
import { createHash } from 'node:crypto'
import type { Background, Colour, Shape } from '../world/index.js'

export interface DemoWorldConfig {
  seed: number
  trainImages: number
  valImages: number
  testImages: number
  /** Share of train that keeps its references (the paper's low-label setting: 2%). */
  labeledFraction: number
  /** Image side in pixels; also the stand-in CLIP's input size. */
  imageSize: number
  backgrounds: Background[]
  maxObjects: number
  /** The colours each shape comes in (see SceneOptions.palette); empty: any colour. */
  palette: Partial<Record<Shape, Colour[]>>
}

/**
 * Image-text pairs the stand-in CLIP is trained on: images of their own ("the web"), never the captioning data.
 * Two phases: clip-art icons (one object, labelled by shape, sometimes size and colour), then scenes with alt texts.
 */
export interface DemoWebConfig {
  /** Phase 1: single-object icons. */
  icons: number
  /** Phase 2: scenes, each with one alt text of random detail (lib/world altTexts). */
  images: number
  /** Share of phase-2 scenes reduced to their salient object. */
  singleObjectShare: number
  /** Share of texts written after the CLIP-S prompt "A photo depicts " (as web text sometimes is). */
  promptShare: number
}

export interface DemoTokenizerConfig {
  /** Upper bound: the trainer stops earlier when no pair is frequent enough. */
  vocabSize: number
  /** Caption-like sentences (lmCorpus) it is trained on, with the alt texts. */
  lmSentences: number
}

export interface DemoClipConfig {
  textHidden: number
  visionHidden: number
  layers: number
  heads: number
  patchSize: number
  projectionDim: number
  /** Longest text in tokens (alt texts are cut there). */
  maxPositions: number
  /** Phase 1 (icons) steps, then phase 2 (scenes) steps. */
  iconSteps: number
  steps: number
  batchSize: number
  lr: number
  warmupSteps: number
  gradClip: number
}

export interface DemoGpt2Config {
  nEmbd: number
  nLayer: number
  nHead: number
  nPositions: number
  /** Caption-like sentences it is trained on (lmCorpus: text only, no images). */
  sentences: number
  steps: number
  batchSize: number
  lr: number
}

/** Stage 1: cross-entropy on references. */
export interface DemoSupervisedConfig {
  steps: number
  batchSize: number
  lr: number
}

/**
 * The second half of the paper's stage 1: self-critical training on the labeled images with the reference-contrastive
 * reward (a sampled caption is rewarded for being closer, in CLIP text space, to its own image's references than to
 * the other images' of the batch: log-softmax over the batch at temperature `tau`).
 */
export interface DemoContrastConfig {
  steps: number
  batchSize: number
  samples: number
  lr: number
  temperature: number
  tau: number
  klCoef: number
  repetitionPenalty: number
  maxTokens: number
}

/** Stage 2: self-critical training with the CLIP-S reward on unlabeled images. */
export interface DemoRewardConfig {
  steps: number
  batchSize: number
  samples: number
  lr: number
  temperature: number
  klCoef: number
  repetitionPenalty: number
  /** + weight x cross-entropy on the labeled set (0: none). */
  ceMix: number
  maxTokens: number
}

export interface DemoCaptionerConfig {
  prefixLength: number
  /** (a): stage 1 on every train reference. */
  full: DemoSupervisedConfig
  /** (b): stage 1 (cross-entropy) on the labeled subset. */
  small: DemoSupervisedConfig
  /** (b+): (b) then the reference-contrastive SCST on the same labeled subset. */
  contrast: DemoContrastConfig
  /** (c): stage 2 after (b+); (c-) the same after (b); the ablations without the KL or the repetition penalty. */
  reward: DemoRewardConfig
}

/**
 * The held-out judge: a second stand-in CLIP with the reward CLIP's architecture and training budget, trained on
 * another draw of the "web" (other icons, other scenes, other alt texts) from other initial weights. Stage 2 never
 * sees it, so a CLIP-S gain it confirms is not just the reward CLIP being gamed.
 */
export interface DemoJudgeConfig {
  /** Mixed into every seed of the judge's web data (the reward CLIP's web is drawn without it). */
  webSalt: string
  /** Added to the world seed for the judge's initial weights and batch order (the reward CLIP uses +1 and +0). */
  seedOffset: number
}

export interface DemoEvalConfig {
  maxTokens: number
  beams: number
  batchSize: number
}

export interface DemoConfig {
  /** Bumped when the demo's code changes what a stage produces, so old caches are not reused. */
  version: number
  world: DemoWorldConfig
  web: DemoWebConfig
  tokenizer: DemoTokenizerConfig
  clip: DemoClipConfig
  judge: DemoJudgeConfig
  gpt2: DemoGpt2Config
  captioner: DemoCaptionerConfig
  eval: DemoEvalConfig
}

export interface DemoConfigOptions {
  /** Multiplies world sizes and training steps; widens the models by about sqrt(scale). Default 1. */
  scale?: number
  /** A toy configuration that runs in seconds (tests, smoke checks). */
  quick?: boolean
  /** World seed (default 0). */
  seed?: number
}

export const DEMO_VERSION = 1

/**
 * Typical colours: each shape comes in two colours, and no two shapes share both (so swapping the colours of two
 * objects never gives a scene of this world). The stand-in CLIP, like real ones, barely binds attributes to objects;
 * with free combinations stage 2 learns to name the right colours on the wrong shapes (see the README).
 */
export const DEMO_PALETTE: Partial<Record<Shape, Colour[]>> = {
  circle: ['red', 'yellow'],
  square: ['blue', 'green'],
  triangle: ['orange', 'purple'],
  star: ['yellow', 'pink'],
  diamond: ['cyan', 'purple'],
  cross: ['green', 'red'],
}

/** The default configuration (its time on two CPU cores is in the README). */
export function defaultConfig(seed = 0): DemoConfig {
  return {
    version: DEMO_VERSION,
    world: { seed, trainImages: 10000, valImages: 200, testImages: 300, labeledFraction: 0.02, imageSize: 48, backgrounds: ['light'], maxObjects: 2, palette: DEMO_PALETTE },
    web: { icons: 6400, images: 8000, singleObjectShare: 0.3, promptShare: 0.5 },
    tokenizer: { vocabSize: 512, lmSentences: 6000 },
    clip: { textHidden: 64, visionHidden: 128, layers: 2, heads: 4, patchSize: 16, projectionDim: 64, maxPositions: 32, iconSteps: 500, steps: 1200, batchSize: 64, lr: 5e-4, warmupSteps: 30, gradClip: 0 },
    judge: { webSalt: 'judge', seedOffset: 1000 },
    gpt2: { nEmbd: 64, nLayer: 2, nHead: 4, nPositions: 48, sentences: 20000, steps: 300, batchSize: 64, lr: 3e-3 },
    captioner: {
      prefixLength: 10,
      full: { steps: 800, batchSize: 32, lr: 3e-3 },
      small: { steps: 500, batchSize: 32, lr: 1e-3 },
      contrast: { steps: 150, batchSize: 16, samples: 5, lr: 3e-4, temperature: 1, tau: 0.1, klCoef: 0.1, repetitionPenalty: 1, maxTokens: 28 },
      reward: { steps: 400, batchSize: 16, samples: 5, lr: 1e-3, temperature: 1, klCoef: 0.1, repetitionPenalty: 1, ceMix: 0, maxTokens: 28 },
    },
    eval: { maxTokens: 30, beams: 1, batchSize: 64 },
  }
}

/** A toy configuration for tests: every stage runs, in seconds. */
export function quickConfig(seed = 0): DemoConfig {
  const d = defaultConfig(seed)
  return {
    ...d,
    world: { ...d.world, trainImages: 100, valImages: 8, testImages: 8, labeledFraction: 0.1, imageSize: 24 },
    web: { ...d.web, icons: 32, images: 64 },
    tokenizer: { vocabSize: 320, lmSentences: 200 },
    clip: { ...d.clip, textHidden: 16, visionHidden: 16, layers: 1, heads: 2, patchSize: 8, projectionDim: 16, iconSteps: 2, steps: 3, batchSize: 16 },
    gpt2: { ...d.gpt2, nEmbd: 16, nLayer: 1, nHead: 2, sentences: 200, steps: 3, batchSize: 16 },
    captioner: {
      prefixLength: 2,
      full: { steps: 3, batchSize: 8, lr: 1e-3 },
      small: { steps: 2, batchSize: 4, lr: 1e-3 },
      contrast: { ...d.captioner.contrast, steps: 2, batchSize: 4, samples: 2, maxTokens: 8 },
      reward: { ...d.captioner.reward, steps: 2, batchSize: 4, samples: 2, maxTokens: 8 },
    },
    eval: { maxTokens: 8, beams: 1, batchSize: 8 },
  }
}

/** `hidden` widened by sqrt(scale), kept a multiple of `heads`. */
function widen(hidden: number, heads: number, scale: number): number {
  return Math.max(heads, Math.round((hidden * Math.sqrt(scale)) / heads) * heads)
}

/** The default (or quick) configuration scaled by `scale`: more images, more steps, wider models. */
export function demoConfig(options: DemoConfigOptions = {}): DemoConfig {
  const { scale = 1, quick = false, seed = 0 } = options
  if (!(Number.isFinite(scale) && scale > 0)) throw new RangeError(`scale must be a positive number, got ${scale}`)
  if (!Number.isInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative integer, got ${seed}`)
  const base = quick ? quickConfig(seed) : defaultConfig(seed)
  if (scale === 1) return base
  const n = (x: number) => Math.max(1, Math.round(x * scale))
  const { world, web, clip, gpt2, captioner } = base
  return {
    ...base,
    world: { ...world, trainImages: n(world.trainImages), valImages: n(world.valImages), testImages: n(world.testImages) },
    web: { ...web, icons: n(web.icons), images: n(web.images) },
    tokenizer: { ...base.tokenizer, lmSentences: n(base.tokenizer.lmSentences) },
    clip: {
      ...clip,
      textHidden: widen(clip.textHidden, clip.heads, scale),
      visionHidden: widen(clip.visionHidden, clip.heads, scale),
      projectionDim: widen(clip.projectionDim, 1, scale),
      iconSteps: n(clip.iconSteps),
      steps: n(clip.steps),
    },
    gpt2: { ...gpt2, nEmbd: widen(gpt2.nEmbd, gpt2.nHead, scale), sentences: n(gpt2.sentences), steps: n(gpt2.steps) },
    captioner: {
      ...captioner,
      full: { ...captioner.full, steps: n(captioner.full.steps) },
      small: { ...captioner.small, steps: n(captioner.small.steps) },
      contrast: { ...captioner.contrast, steps: n(captioner.contrast.steps) },
      reward: { ...captioner.reward, steps: n(captioner.reward.steps) },
    },
  }
}

/** A stable hash of JSON-able values (object keys sorted). */
export function hashOf(value: unknown): string {
  const canon = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(canon)
    if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon((v as Record<string, unknown>)[k])]))
    return v
  }
  return createHash('sha256').update(JSON.stringify(canon(value))).digest('hex').slice(0, 16)
}

/** The demo's captioners; the name is also their folder under captioners/ and evaluations/. */
export type CaptionerName = 'full' | 'small' | 'contrast' | 'reward' | 'reward-from-b' | 'reward-no-kl' | 'reward-no-rep'

export interface CaptionerSpec {
  name: CaptionerName
  /** The short name tables, claims and the report use: a, b, b+, c, c-, c/noKL, c/noRep. */
  letter: string
  /** The table row. */
  label: string
  /** supervised: cross-entropy from the stand-ins; contrast: stage-1 SCST; reward: stage 2 (CLIP-S SCST). */
  kind: 'supervised' | 'contrast' | 'reward'
  /** The captioner it continues from (contrast and reward). */
  from?: CaptionerName
  /** Stage-2 settings changed from captioner.reward (the ablations). */
  rewardOverrides?: Partial<Pick<DemoRewardConfig, 'klCoef' | 'repetitionPenalty'>>
  /** Run only with the ablations on (`--ablations`): they show reward hacking, they are not the method. */
  ablation?: boolean
}

/** In training order: a captioner comes after the one it continues from. */
export const CAPTIONERS: readonly CaptionerSpec[] = [
  { name: 'full', letter: 'a', label: '(a) stage 1 CE, 100% labels', kind: 'supervised' },
  { name: 'small', letter: 'b', label: '(b) stage 1 CE, 2% labels', kind: 'supervised' },
  { name: 'contrast', letter: 'b+', label: '(b+) (b) + stage 1 contrastive SCST', kind: 'contrast', from: 'small' },
  { name: 'reward', letter: 'c', label: '(c) (b+) + stage 2 CLIP-S', kind: 'reward', from: 'contrast' },
  { name: 'reward-from-b', letter: 'c-', label: '(c-) (b) + stage 2 CLIP-S', kind: 'reward', from: 'small' },
  { name: 'reward-no-kl', letter: 'c/noKL', label: '(c/noKL) (c) without KL penalty', kind: 'reward', from: 'contrast', rewardOverrides: { klCoef: 0 }, ablation: true },
  { name: 'reward-no-rep', letter: 'c/noRep', label: '(c/noRep) (c) without repetition penalty', kind: 'reward', from: 'contrast', rewardOverrides: { repetitionPenalty: 0 }, ablation: true },
]

export function captionerSpec(name: CaptionerName): CaptionerSpec {
  const spec = CAPTIONERS.find((c) => c.name === name)
  if (!spec) throw new RangeError(`unknown captioner '${name}'`)
  return spec
}

/** The captioners a run trains: every one, or all but the ablations. */
export function captionersOf(ablations: boolean): CaptionerSpec[] {
  return CAPTIONERS.filter((c) => ablations || !c.ablation)
}

/** Stage-2 settings of a reward captioner (its overrides applied). */
export function rewardConfigOf(cfg: DemoConfig, spec: CaptionerSpec): DemoRewardConfig {
  return { ...cfg.captioner.reward, ...spec.rewardOverrides }
}

/** The cache key of every stage: a hash of its own settings and its inputs' keys. Captioners also hash the seed. */
export interface StageKeys {
  world: string
  tokenizer: string
  clip: string
  /** The held-out judge CLIP. */
  judge: string
  gpt2: string
  captioner(name: CaptionerName, seed: number): string
  evaluation(stageKey: string): string
}

export function stageKeys(cfg: DemoConfig, device: string): StageKeys {
  const v = cfg.version
  const w = cfg.world
  const world = hashOf({ v, world: w })
  // The tokenizer, CLIP and GPT-2 learn from text and "web" images of their own, not from the captioning splits:
  // growing the world does not retrain them.
  const webWorld = { seed: w.seed, imageSize: w.imageSize, backgrounds: w.backgrounds, maxObjects: w.maxObjects, palette: w.palette }
  const tokenizer = hashOf({ v, webWorld, web: cfg.web, tokenizer: cfg.tokenizer })
  // Models trained on a GPU are not bit-identical to CPU ones: the device is part of the key. The CLIP stage also
  // reports retrieval on the val split.
  const clip = hashOf({ v, tokenizer, webWorld, web: cfg.web, clip: cfg.clip, device, val: w.valImages })
  const judge = hashOf({ v, tokenizer, webWorld, web: cfg.web, clip: cfg.clip, judge: cfg.judge, device, val: w.valImages })
  const gpt2 = hashOf({ v, tokenizer, webWorld, gpt2: cfg.gpt2, device })
  const base = { v, world, clip, gpt2, prefixLength: cfg.captioner.prefixLength, device }
  const captioner = (name: CaptionerName, seed: number): string => {
    const spec = captionerSpec(name)
    const start = () => captioner(spec.from!, seed)
    switch (spec.kind) {
      case 'supervised':
        return hashOf({ ...base, seed, [name]: cfg.captioner[name as 'full' | 'small'] })
      case 'contrast':
        return hashOf({ start: start(), seed, contrast: cfg.captioner.contrast })
      case 'reward':
        return hashOf({ start: start(), seed, reward: rewardConfigOf(cfg, spec) })
    }
  }
  return {
    world,
    tokenizer,
    clip,
    judge,
    gpt2,
    captioner,
    // The evaluation scores with the judge too (format 2: judge metrics and per-image facts).
    evaluation: (stageKey) => hashOf({ stageKey, eval: cfg.eval, world, judge, format: 2 }),
  }
}
