/**
 * Parses captions back into the objects they name and scores them against the scene graph: the
 * world's exact replacement for human judgement of correctness and informativeness.
 *
 * Scoring (scoreObjects):
 * - A caption is parsed into mentions, each an optional size, optional colour and optional shape
 *   (at least one of them); "a small red circle", "a circle that is red", "a red shape" (no shape).
 * - Each attribute a mention states is one fact. A mention is correct if some scene object has
 *   every attribute it states; then all its facts are correct, otherwise all are wrong ("a blue
 *   circle" in a scene with a red circle and a blue square is wrong: attributes must bind).
 * - Mentions are matched one-to-one to objects (the matching with the most correct facts), so
 *   naming the same object twice does not count twice: a repeated mention is a wrong one.
 * - precision = correct facts / stated facts; recall = correct facts / scene facts, where the scene
 *   has 3 facts per object (shape, colour, size); f1 their harmonic mean. All are 0, never NaN, when
 *   a denominator is 0 (an empty or garbage caption scores 0).
 * - Counts ("two shapes") and relations ("left of") are checked too but reported apart, not folded
 *   into precision/recall: a relation is correct if both its mentions matched objects and it holds
 *   between their grid cells; a count is correct if it equals the number of objects.
 */
import { COLOURS, SHAPES, relationsBetween, type Colour, type Relation, type Scene, type SceneObject, type Shape, type Size } from './scene.js'
import { SemicapError } from '../errors.js'
import { SHAPE_WORDS, SIZE_WORDS } from './captions.js'

export interface Mention {
  shape?: Shape
  colour?: Colour
  size?: Size
}

export interface ParsedRelation {
  /** Indices into `mentions`: "mentions[from] <relation> mentions[to]". */
  from: number
  to: number
  relation: Relation
}

export interface ParsedCaption {
  mentions: Mention[]
  relations: ParsedRelation[]
  /** Numbers stated with a generic noun ("two shapes" -> 2). */
  counts: number[]
}

const PLURALS: Record<string, string> = { box: 'boxes', cross: 'crosses', plus: 'pluses', rhombus: 'rhombuses' }

/** Shape nouns, singular and plural, with a few extra synonyms a model might produce. */
const SHAPE_LEXICON = new Map<string, { shape: Shape; plural: boolean }>()
for (const shape of SHAPES) {
  for (const word of SHAPE_WORDS[shape]) {
    SHAPE_LEXICON.set(word, { shape, plural: false })
    SHAPE_LEXICON.set(PLURALS[word] ?? `${word}s`, { shape, plural: true })
  }
}
SHAPE_LEXICON.set('rhombi', { shape: 'diamond', plural: true })

const SIZE_LEXICON = new Map<string, Size>([['tiny', 'small'], ['huge', 'large']])
for (const size of ['small', 'large'] as const) for (const word of SIZE_WORDS[size]) SIZE_LEXICON.set(word, size)

const COLOUR_SET = new Set<string>(COLOURS)
const GENERIC = new Set(['shape', 'shapes', 'object', 'objects', 'thing', 'things'])
const NUMBERS = new Map<string, number>(
  ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'].map((w, i) => [w, i]),
)
for (let i = 0; i <= 9; i++) NUMBERS.set(String(i), i)

export function tokenize(caption: string): string[] {
  return caption.toLowerCase().split(/[^a-z0-9]+/).filter((t) => t !== '')
}

/**
 * Left-to-right parse. Size/colour words wait for the next noun; "that is"/"which is" after a
 * noun attaches the following sizes/colours to it; a relation word links the mention before it to
 * the next one. Any other word is ignored, so garbage costs nothing but states nothing.
 */
export function parseCaption(caption: string): ParsedCaption {
  const tokens = tokenize(caption)
  const mentions: Mention[] = []
  const relations: ParsedRelation[] = []
  const counts: number[] = []
  let pending: { colour?: Colour; size?: Size; count?: number } = {}
  let postTarget: Mention | null = null
  let openRelation: { from: number; relation: Relation } | null = null

  const addMentions = (mention: Mention, copies: number) => {
    if (openRelation) {
      relations.push({ ...openRelation, to: mentions.length })
      openRelation = null
    }
    for (let c = 0; c < copies; c++) mentions.push({ ...mention })
    postTarget = null
    pending = {}
  }

  for (let i = 0; i < tokens.length; i++) {
    const tok = tokens[i] as string
    const size = SIZE_LEXICON.get(tok)
    const colour = COLOUR_SET.has(tok) ? (tok as Colour) : undefined

    if (postTarget) {
      if (colour && postTarget.colour === undefined) {
        postTarget.colour = colour
        continue
      }
      if (size && postTarget.size === undefined) {
        postTarget.size = size
        continue
      }
      if (tok === 'and' || tok === 'is' || tok === 'are') continue
      postTarget = null
    }

    if ((tok === 'that' || tok === 'which') && (tokens[i + 1] === 'is' || tokens[i + 1] === 'are')) {
      if (mentions.length > 0) postTarget = mentions[mentions.length - 1] as Mention
      i++
      continue
    }
    if (colour) {
      pending.colour = colour
      continue
    }
    if (size) {
      pending.size = size
      continue
    }
    const number = NUMBERS.get(tok)
    if (number !== undefined) {
      pending.count = number
      continue
    }
    const shape = SHAPE_LEXICON.get(tok)
    if (shape) {
      // "two circles" is two circle mentions; a bare plural is one.
      const copies = shape.plural && pending.count !== undefined && pending.count > 1 ? Math.min(pending.count, 9) : 1
      const mention: Mention = { shape: shape.shape }
      if (pending.colour) mention.colour = pending.colour
      if (pending.size) mention.size = pending.size
      addMentions(mention, copies)
      continue
    }
    if (GENERIC.has(tok)) {
      if (pending.count !== undefined) counts.push(pending.count)
      if (pending.colour || pending.size) {
        const mention: Mention = {}
        if (pending.colour) mention.colour = pending.colour
        if (pending.size) mention.size = pending.size
        addMentions(mention, 1)
      }
      pending = {}
      continue
    }
    let relation: Relation | null = null
    if ((tok === 'left' || tok === 'right') && tokens[i + 1] === 'of') {
      relation = tok === 'left' ? 'left of' : 'right of'
      i++
    } else if (tok === 'above' || tok === 'over') relation = 'above'
    else if (tok === 'below' || tok === 'under' || tok === 'beneath') relation = 'below'
    if (relation && mentions.length > 0) openRelation = { from: mentions.length - 1, relation }
  }
  return { mentions, relations, counts }
}

export interface ObjectScore {
  precision: number
  recall: number
  f1: number
  /** Mentions matched to an object that has all their stated attributes. */
  matched: number
  mentioned: number
  statedFacts: number
  correctFacts: number
  sceneFacts: number
  relations: { stated: number; correct: number }
  counts: { stated: number; correct: number }
}

/** The number of facts a mention states: one per stated shape, colour and size. */
export function factCount(m: Mention): number {
  return (m.shape ? 1 : 0) + (m.colour ? 1 : 0) + (m.size ? 1 : 0)
}

/**
 * For each of `relations`, whether it holds when object o is matched to mention assign[o] (-1: none): both its
 * mentions matched objects and the relation holds between their grid cells.
 */
export function relationTruths(
  relations: readonly ParsedRelation[],
  assign: readonly number[],
  objects: readonly SceneObject[],
): boolean[] {
  const objectOf = new Map<number, number>()
  assign.forEach((m, o) => m >= 0 && objectOf.set(m, o))
  return relations.map((r) => {
    const oa = objectOf.get(r.from)
    const ob = objectOf.get(r.to)
    return oa !== undefined && ob !== undefined && relationsBetween(objects[oa]!, objects[ob]!).includes(r.relation)
  })
}

/** Whether scene object `o` has every attribute mention `m` states. */
export function mentionFits(m: Mention, o: SceneObject): boolean {
  return (!m.shape || m.shape === o.shape) && (!m.colour || m.colour === o.colour) && (!m.size || m.size === o.size)
}

/**
 * The best one-to-one matching of mentions to objects, by exhaustive search over objects -> an unused mention or
 * none (scenes have at most a few objects, so this is tiny). `gain(m, o)` is what matching mention m to object o is
 * worth, or null where they cannot be matched. The matching with the largest total gain wins, ties go to the larger
 * `tieBreak(assign)`, then to the first found (objects in order, "none" before mentions in order).
 * Returns assign (object index -> mention index or -1), its total gain and its tieBreak.
 */
export function bestMatching<M>(
  mentions: readonly M[],
  objects: readonly SceneObject[],
  gain: (m: M, o: SceneObject) => number | null,
  tieBreak: (assign: readonly number[]) => number = () => 0,
): { assign: number[]; gain: number; tieBreak: number } {
  const assign: number[] = new Array<number>(objects.length).fill(-1)
  const used = new Set<number>()
  let best = { gain: -Infinity, tieBreak: -Infinity, assign: assign.slice() }
  const search = (o: number, total: number) => {
    if (o === objects.length) {
      const t = tieBreak(assign)
      if (total > best.gain || (total === best.gain && t > best.tieBreak)) {
        best = { gain: total, tieBreak: t, assign: assign.slice() }
      }
      return
    }
    search(o + 1, total)
    mentions.forEach((m, mi) => {
      if (used.has(mi)) return
      const g = gain(m, objects[o]!)
      if (g === null) return
      used.add(mi)
      assign[o] = mi
      search(o + 1, total + g)
      assign[o] = -1
      used.delete(mi)
    })
  }
  search(0, 0)
  return best
}

/** Matches mentions to objects as scoreParsed does: only fitting mentions, most stated facts, ties to more correct relations. */
export function matchMentions(parsed: ParsedCaption, scene: Scene): { assign: number[]; facts: number; relations: number } {
  const objects = scene.objects
  const best = bestMatching(
    parsed.mentions,
    objects,
    (m, o) => (mentionFits(m, o) ? factCount(m) : null),
    (a) => relationTruths(parsed.relations, a, objects).filter(Boolean).length,
  )
  return { assign: best.assign, facts: best.gain, relations: best.tieBreak }
}

/** Scores an already parsed caption; see the file comment for the definition. */
export function scoreParsed(parsed: ParsedCaption, scene: Scene): ObjectScore {
  const { mentions } = parsed
  const objects = scene.objects
  const best = matchMentions(parsed, scene)

  const statedFacts = mentions.reduce((s, m) => s + factCount(m), 0)
  const sceneFacts = 3 * objects.length
  const correctFacts = best.facts
  const precision = statedFacts > 0 ? correctFacts / statedFacts : 0
  const recall = sceneFacts > 0 ? correctFacts / sceneFacts : 0
  const f1 = precision + recall > 0 ? (2 * precision * recall) / (precision + recall) : 0
  return {
    precision,
    recall,
    f1,
    matched: best.assign.filter((m) => m >= 0).length,
    mentioned: mentions.length,
    statedFacts,
    correctFacts,
    sceneFacts,
    relations: { stated: parsed.relations.length, correct: best.relations },
    counts: { stated: parsed.counts.length, correct: parsed.counts.filter((c) => c === objects.length).length },
  }
}

/** Parses `caption` and scores it against `scene` (precision/recall over attribute facts). */
export function scoreObjects(caption: string, scene: Scene): ObjectScore {
  return scoreParsed(parseCaption(caption), scene)
}

/** Mean precision, recall and f1 of captions[i] against scenes[i] (0s for no captions). */
export function meanObjectScore(
  captions: readonly string[],
  scenes: readonly Scene[],
): { precision: number; recall: number; f1: number } {
  if (captions.length !== scenes.length) {
    throw new SemicapError('E_VALUE', `meanObjectScore: ${captions.length} captions for ${scenes.length} scenes`)
  }
  const n = captions.length
  const sum = { precision: 0, recall: 0, f1: 0 }
  for (let i = 0; i < n; i++) {
    const s = scoreObjects(captions[i] as string, scenes[i] as Scene)
    sum.precision += s.precision
    sum.recall += s.recall
    sum.f1 += s.f1
  }
  return n === 0 ? sum : { precision: sum.precision / n, recall: sum.recall / n, f1: sum.f1 / n }
}
