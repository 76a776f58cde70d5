/**
 * The annotator grammar. Captions are lower-case English with a little punctuation (":" after a
 * count, "," in lists of three) and NO final period: the captioner appends its own end token.
 *
 * Like COCO annotators, each simulated annotator always names the salient (largest) object, but
 * may skip the other objects and often skips size or colour. Nothing the grammar says is ever
 * false, so incompleteness is the only gap between a reference and the scene: room for a CLIP
 * reward to make captions more informative than their references.
 */
import { Rng, deriveSeed } from './rng.js'
import {
  COLOURS,
  generateScene,
  mainRelation,
  type Relation,
  type Scene,
  type SceneObject,
  type SceneOptions,
  type Shape,
  type Size,
} from './scene.js'

/** Shape nouns; the first is the usual word, the others synonyms. */
export const SHAPE_WORDS: Readonly<Record<Shape, readonly string[]>> = {
  circle: ['circle', 'disc'],
  square: ['square', 'box'],
  triangle: ['triangle'],
  star: ['star'],
  diamond: ['diamond', 'rhombus'],
  cross: ['cross', 'plus'],
}

export const SIZE_WORDS: Readonly<Record<Size, readonly string[]>> = {
  small: ['small', 'little'],
  large: ['large', 'big'],
}

/** Generic nouns used after a count ("two shapes"). */
export const GENERIC_NOUNS = ['shapes', 'objects'] as const
export const COUNT_WORDS = ['one', 'two', 'three'] as const

export const RELATION_PHRASES: Readonly<Record<Relation, string>> = {
  'left of': 'to the left of',
  'right of': 'to the right of',
  above: 'above',
  below: 'below',
}

/** How often an annotator does what; the defaults give a mean reference recall near 0.55. */
export interface AnnotatorStyle {
  /** Probability to mention each non-salient object. */
  mentionOther: number
  colour: number
  size: number
  /** Probability to use a synonym instead of the usual shape noun. */
  synonym: number
  /** Probability of the post-nominal form "a circle that is red". */
  postNominal: number
  /** Probability of a count prefix ("two shapes: ...") on multi-object scenes. */
  count: number
  /** Probability to link two mentions by their spatial relation instead of "and". */
  relation: number
}

export const DEFAULT_ANNOTATOR: Readonly<AnnotatorStyle> = {
  mentionOther: 0.5,
  colour: 0.85,
  size: 0.3,
  synonym: 0.3,
  postNominal: 0.15,
  count: 0.2,
  relation: 0.45,
}

/** "an" before vowels: "an orange circle", "a small circle". */
function article(nextWord: string): string {
  return /^[aeiou]/.test(nextWord) ? 'an' : 'a'
}

function withArticle(phrase: string): string {
  return `${article(phrase)} ${phrase}`
}

interface Detail {
  colour: boolean
  size: boolean
}

function shapeWord(shape: Shape, rng: Rng | null, synonymP: number): string {
  const words = SHAPE_WORDS[shape]
  if (rng && words.length > 1 && rng.chance(synonymP)) return rng.pick(words.slice(1))
  return words[0] as string
}

function sizeWord(size: Size, rng: Rng | null): string {
  return rng ? rng.pick(SIZE_WORDS[size]) : (SIZE_WORDS[size][0] as string)
}

/** A noun phrase naming `obj` with the chosen attributes: "a small red circle" / "a circle that is red". */
function nounPhrase(obj: SceneObject, detail: Detail, rng: Rng | null, style: AnnotatorStyle): string {
  const noun = shapeWord(obj.shape, rng, style.synonym)
  const attrs: string[] = []
  if (detail.size) attrs.push(sizeWord(obj.size, rng))
  if (detail.colour) attrs.push(obj.colour)
  if (rng && attrs.length > 0 && rng.chance(style.postNominal)) {
    const ordered = attrs.length === 2 && rng.chance(0.5) ? [attrs[1], attrs[0]] : attrs
    return `${withArticle(noun)} that is ${ordered.join(' and ')}`
  }
  return withArticle([...attrs, noun].join(' '))
}

function list(phrases: string[]): string {
  if (phrases.length <= 1) return phrases.join('')
  return `${phrases.slice(0, -1).join(', ')} and ${phrases[phrases.length - 1]}`
}

/**
 * Joins noun phrases into a sentence. With two or more, the first two may be linked by their true
 * spatial relation ("a red circle above a blue square"), which the parser checks.
 */
function body(objs: SceneObject[], phrases: string[], rng: Rng | null, relationP: number): string {
  if (phrases.length >= 2 && (rng === null || rng.chance(relationP))) {
    const rel = RELATION_PHRASES[mainRelation(objs[0] as SceneObject, objs[1] as SceneObject)]
    const head = `${phrases[0]} ${rel} ${phrases[1]}`
    return phrases.length === 2 ? head : `${head} and ${list(phrases.slice(2))}`
  }
  return list(phrases)
}

/** One annotator's caption of `scene`. */
export function annotate(scene: Scene, rng: Rng, style: AnnotatorStyle = DEFAULT_ANNOTATOR): string {
  const [salient, ...others] = scene.objects
  if (!salient) return 'an empty picture'
  let chosen = [salient, ...others.filter(() => rng.chance(style.mentionOther))]
  // Mostly the salient object first, sometimes any order.
  if (chosen.length > 1 && rng.chance(0.25)) chosen = rng.shuffle(chosen)
  const phrases = chosen.map((obj) =>
    nounPhrase(obj, { colour: rng.chance(style.colour), size: rng.chance(style.size) }, rng, style),
  )
  const text = body(chosen, phrases, rng, style.relation)

  const n = scene.objects.length
  if (n >= 2 && rng.chance(style.count)) {
    const counted = `${COUNT_WORDS[n - 1]} ${rng.pick(GENERIC_NOUNS)}`
    const prefix = rng.chance(0.3) ? `there are ${counted}` : counted
    return chosen.length === n ? `${prefix}: ${text}` : `${prefix}, including ${text}`
  }
  const frame = rng.next()
  if (frame < 0.55) return text
  if (frame < 0.7) return `a picture of ${text}`
  if (frame < 0.85) return `an image of ${text}`
  return `there is ${text}`
}

/** `count` independent annotators' captions (five, like COCO). */
export function referenceCaptions(scene: Scene, rng: Rng, count = 5, style: AnnotatorStyle = DEFAULT_ANNOTATOR): string[] {
  return Array.from({ length: count }, () => annotate(scene, rng, style))
}

/**
 * The full-detail caption: every object with size, colour and shape, the first two linked by
 * their relation, usual words only. Deterministic; recall 1 by construction.
 */
export function fullCaption(scene: Scene): string {
  const objs = scene.objects
  if (objs.length === 0) return 'an empty picture'
  const phrases = objs.map((obj) => nounPhrase(obj, { colour: true, size: true }, null, DEFAULT_ANNOTATOR))
  const text = body(objs, phrases, null, 1)
  return objs.length === 3 ? `three shapes: ${text}` : text
}

/**
 * Web alt-text-like descriptions for contrastive CLIP pretraining: terse and article-less ("red
 * circle"), lists, counts, or full sentences, sometimes with "icon"/"clip art" noise or the
 * background. Every text is true of the scene; detail varies from one shape noun to everything.
 */
export function altTexts(scene: Scene, rng: Rng, count = 5): string[] {
  const objs = scene.objects
  const terse = (o: SceneObject, level: number) =>
    [level >= 2 ? sizeWord(o.size, rng) : '', level >= 1 ? o.colour : '', shapeWord(o.shape, rng, 0.3)]
      .filter((w) => w !== '')
      .join(' ')
  const one = (): string => {
    if (objs.length === 0) return 'empty picture'
    const level = rng.int(0, 6)
    const salientish = rng.chance(0.7) ? (objs[0] as SceneObject) : rng.pick(objs)
    let text: string
    if (level <= 2) text = terse(salientish, level)
    else if (level === 3) text = list(objs.map((o) => terse(o, rng.int(1, 2))))
    else if (level === 4) {
      const counted = `${COUNT_WORDS[objs.length - 1]} ${objs.length === 1 ? 'shape' : 'shapes'}`
      text = rng.chance(0.5) ? counted : `${counted}: ${list(objs.map((o) => terse(o, 1)))}`
    } else if (level === 5) text = annotate(scene, rng)
    else text = fullCaption(scene)
    const noise = rng.next()
    if (noise < 0.1) text = `icon: ${text}`
    else if (noise < 0.2) text = `clip art ${text}`
    if (rng.chance(0.15)) text = `${text} on a ${scene.background} background`
    return text
  }
  return Array.from({ length: count }, one)
}

/**
 * Caption-like sentences about random scenes (no images), for pretraining the tiny GPT-2:
 * mostly annotator captions, a fifth full-detail captions. Sentence i depends only on (seed, i).
 */
export function lmCorpus(seed: number, n: number, sceneOptions: SceneOptions = {}): string[] {
  return Array.from({ length: n }, (_, i) => {
    const rng = new Rng(deriveSeed(seed, 'lm', i))
    const scene = generateScene(deriveSeed(seed, 'lm-scene', i), sceneOptions)
    return rng.chance(0.2) ? fullCaption(scene) : annotate(scene, rng)
  })
}

/** Every word (punctuation stripped) the captions, alt texts and LM corpus can contain, sorted. */
export function captionVocabulary(): string[] {
  const words = new Set<string>([
    ...COLOURS,
    ...Object.values(SHAPE_WORDS).flat(),
    ...Object.values(SIZE_WORDS).flat(),
    ...GENERIC_NOUNS,
    'shape',
    ...COUNT_WORDS,
    ...Object.values(RELATION_PHRASES).flatMap((p) => p.split(' ')),
    ...'a an and that is there are including picture image of empty'.split(' '),
    ...'icon clip art on light dark background'.split(' '),
  ])
  return [...words].sort()
}
