/**
 * The facts a caption states, each checked against the scene graph, and a pairwise preference built on them: the
 * world's stand-in for a human preference study ("which caption says more true things and fewer false ones?").
 *
 * Facts (captionFacts), from parseCaption's mentions, relations and counts, listed counts first, then per mention in
 * caption order (object, colour, size), then relations:
 * - count: "two shapes" -> "2 objects", holds iff the scene has that many objects.
 * - object: a mention with a shape noun states that such an object exists ("a circle"; "another circle" when an
 *   earlier mention named the same shape, as in "two circles").
 * - colour / size: each attribute a mention states ("circle is red", "circle is small"; "shape is red" for a mention
 *   without a shape noun, as in "a red shape").
 * - relation: "a small square left of a star" -> "small square left of star".
 *
 * Which object a mention is about (binding), in two passes:
 * 1. Mentions are matched exactly as scoreParsed matches them (matchMentions: one-to-one, only mentions whose every
 *    stated attribute the object has, most stated facts, ties to more correct relations). All facts of a mention
 *    matched here hold, so these agree with scoreParsed's correct facts.
 * 2. The remaining mentions with a shape noun are matched one-to-one to the remaining objects of the same shape (most
 *    true attributes, ties to more true relations): the shape noun names the object, and the attributes are checked
 *    on it. "a blue circle" in a scene with a red circle: "a circle" holds, "circle is blue" does not.
 * A mention bound to no object (no such shape left: "a circle and a circle" with one circle, or a shapeless mention
 * like "a blue shape" with no blue object left) states an object that is not there: its object fact and every
 * attribute it states are false (an attribute of a thing that does not exist is not true of anything; attributes
 * never bind to another object, as in scoreParsed). A relation holds iff both its mentions are bound and it holds
 * between their objects' grid cells. Words the parser does not know state nothing, so a caption of unknown words has
 * no facts at all. The object, colour and size facts are exactly scoreParsed's stated facts (statedFacts).
 */
import { SemicapError } from '../errors.js'
import { bestMatching, matchMentions, parseCaption, relationTruths, type Mention, type ParsedCaption } from './parse.js'
import type { Scene } from './scene.js'

export type CaptionFactKind = 'object' | 'colour' | 'size' | 'relation' | 'count'

export interface CaptionFact {
  kind: CaptionFactKind
  /** Short human-readable statement: "a circle", "another circle", "circle is red", "small square left of star",
   *  "2 objects". */
  text: string
  /** Whether the fact holds in the scene. */
  holds: boolean
}

function describe(m: Mention): string {
  return [m.size, m.colour, m.shape ?? 'shape'].filter((w) => w !== undefined).join(' ')
}

/** For each mention, the index of the scene object it is about, or -1 (see the file comment). */
export function bindMentions(parsed: ParsedCaption, scene: Scene): number[] {
  const objects = scene.objects
  const { mentions } = parsed
  const combined = matchMentions(parsed, scene).assign // object -> mention
  const taken = new Set(combined.filter((m) => m >= 0))
  const freeObjects = objects.map((_, o) => o).filter((o) => combined[o]! < 0)
  const loose = mentions.map((_, mi) => mi).filter((mi) => !taken.has(mi) && mentions[mi]!.shape !== undefined)
  if (freeObjects.length > 0 && loose.length > 0) {
    const withFree = (a: readonly number[]) => {
      const full = combined.slice()
      a.forEach((li, k) => li >= 0 && (full[freeObjects[k]!] = loose[li]!))
      return full
    }
    const second = bestMatching(
      loose.map((mi) => mentions[mi]!),
      freeObjects.map((o) => objects[o]!),
      (m, o) => (m.shape === o.shape ? 1 + (m.colour === o.colour ? 1 : 0) + (m.size === o.size ? 1 : 0) : null),
      (a) => relationTruths(parsed.relations, withFree(a), objects).filter(Boolean).length,
    )
    const full = withFree(second.assign)
    full.forEach((m, o) => (combined[o] = m))
  }
  const objectOf = new Array<number>(mentions.length).fill(-1)
  combined.forEach((m, o) => m >= 0 && (objectOf[m] = o))
  return objectOf
}

/** The facts of an already parsed caption; see the file comment. */
export function parsedFacts(parsed: ParsedCaption, scene: Scene): CaptionFact[] {
  const objects = scene.objects
  const objectOf = bindMentions(parsed, scene)
  const facts: CaptionFact[] = []
  for (const n of parsed.counts) {
    facts.push({ kind: 'count', text: `${n} object${n === 1 ? '' : 's'}`, holds: n === objects.length })
  }
  const named = new Set<string>()
  parsed.mentions.forEach((m, mi) => {
    const o = objects[objectOf[mi]!]
    const noun = m.shape ?? 'shape'
    if (m.shape) {
      facts.push({ kind: 'object', text: `${named.has(m.shape) ? 'another' : 'a'} ${m.shape}`, holds: o !== undefined })
      named.add(m.shape)
    }
    if (m.colour) facts.push({ kind: 'colour', text: `${noun} is ${m.colour}`, holds: o?.colour === m.colour })
    if (m.size) facts.push({ kind: 'size', text: `${noun} is ${m.size}`, holds: o?.size === m.size })
  })
  const assign = objects.map(() => -1)
  objectOf.forEach((o, mi) => o >= 0 && (assign[o] = mi))
  const truths = relationTruths(parsed.relations, assign, objects)
  parsed.relations.forEach((r, i) => {
    const text = `${describe(parsed.mentions[r.from]!)} ${r.relation} ${describe(parsed.mentions[r.to]!)}`
    facts.push({ kind: 'relation', text, holds: truths[i]! })
  })
  return facts
}

/** Every fact `caption` states, each checked against `scene` (see the file comment). */
export function captionFacts(caption: string, scene: Scene): CaptionFact[] {
  if (typeof caption !== 'string') throw new TypeError('captionFacts: caption must be a string')
  return parsedFacts(parseCaption(caption), scene)
}

/** The number of facts that hold and that do not. */
export function countFacts(facts: readonly Pick<CaptionFact, 'holds'>[]): { true: number; false: number } {
  const t = facts.filter((f) => f.holds).length
  return { true: t, false: facts.length - t }
}

/**
 * 1 if caption a states at least as many true facts as b and at most as many false ones, and strictly more true or
 * strictly fewer false; -1 the other way round; 0 on a tie or when neither dominates (more true facts and more false
 * ones).
 */
export function preferByFacts(a: string, b: string, scene: Scene): 1 | 0 | -1 {
  const fa = countFacts(captionFacts(a, scene))
  const fb = countFacts(captionFacts(b, scene))
  if (fa.true >= fb.true && fa.false <= fb.false && (fa.true > fb.true || fa.false < fb.false)) return 1
  if (fb.true >= fa.true && fb.false <= fa.false && (fb.true > fa.true || fb.false < fa.false)) return -1
  return 0
}

/**
 * Shares of scenes where a[i] is preferred to b[i] (win), neither is (tie, including incomparable pairs) and b[i] is
 * (loss), by preferByFacts on scenes[i]; they sum to 1 (all 0 when there are no captions).
 */
export function winRates(
  a: readonly string[],
  b: readonly string[],
  scenes: readonly Scene[],
): { win: number; tie: number; loss: number } {
  if (a.length !== scenes.length || b.length !== scenes.length) {
    throw new SemicapError('E_VALUE', `winRates: ${a.length} and ${b.length} captions for ${scenes.length} scenes`)
  }
  const n = scenes.length
  const tally = { win: 0, tie: 0, loss: 0 }
  for (let i = 0; i < n; i++) {
    const p = preferByFacts(a[i]!, b[i]!, scenes[i]!)
    if (p === 1) tally.win++
    else if (p === -1) tally.loss++
    else tally.tie++
  }
  return n === 0 ? tally : { win: tally.win / n, tie: tally.tie / n, loss: tally.loss / n }
}
