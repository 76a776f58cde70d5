// captionFacts / preferByFacts / winRates on hand-built scenes, with every expected fact worked out by hand from the
// scene graph; plus two properties on generated scenes (the annotator never states anything false, and the
// attribute facts are exactly scoreObjects' stated facts).
import { describe, expect, it } from 'vitest'
import { SemicapError } from '../lib/errors.js'
import {
  COLOURS,
  Rng,
  annotate,
  captionFacts,
  fullCaption,
  generateScenes,
  preferByFacts,
  scoreObjects,
  winRates,
  type CaptionFact,
  type Scene,
  type SceneObject,
} from '../lib/world/index.js'

const obj = (shape: SceneObject['shape'], colour: SceneObject['colour'], size: SceneObject['size'], row: 0 | 1 | 2, col: 0 | 1 | 2): SceneObject => ({
  shape,
  colour,
  size,
  row,
  col,
  x: (col + 0.5) / 3,
  y: (row + 0.5) / 3,
})

// A large red circle top left, a small blue square in the middle row, right column:
// the circle is left of and above the square.
const A: Scene = { background: 'light', objects: [obj('circle', 'red', 'large', 0, 0), obj('square', 'blue', 'small', 1, 2)] }
// Two circles: a large blue one bottom right, a small red one top left.
const B: Scene = { background: 'dark', objects: [obj('circle', 'blue', 'large', 2, 2), obj('circle', 'red', 'small', 0, 0)] }

const T = (kind: CaptionFact['kind'], text: string): CaptionFact => ({ kind, text, holds: true })
const F = (kind: CaptionFact['kind'], text: string): CaptionFact => ({ kind, text, holds: false })

describe('captionFacts', () => {
  it('states an object and its attributes, each checked on the object the shape noun names', () => {
    expect(captionFacts('a red circle', A)).toEqual([T('object', 'a circle'), T('colour', 'circle is red')])
    // scoreObjects calls the whole mention wrong (no blue circle); the facts say which part is wrong.
    expect(captionFacts('a blue circle', A)).toEqual([T('object', 'a circle'), F('colour', 'circle is blue')])
    expect(scoreObjects('a blue circle', A).precision).toBe(0)
    expect(captionFacts('a small blue square', A)).toEqual([T('object', 'a square'), T('colour', 'square is blue'), T('size', 'square is small')])
    expect(captionFacts('a large square', A)).toEqual([T('object', 'a square'), F('size', 'square is large')])
  })

  it('makes every attribute of an object that is not there false', () => {
    expect(captionFacts('a green star', A)).toEqual([F('object', 'a star'), F('colour', 'star is green')])
    // "red" is true of the circle, but the caption says it of a triangle: it does not bind to the circle.
    expect(captionFacts('a small red triangle', A)).toEqual([F('object', 'a triangle'), F('colour', 'triangle is red'), F('size', 'triangle is small')])
    // A shapeless mention is about some object with all its attributes, or none.
    expect(captionFacts('a red shape', A)).toEqual([T('colour', 'shape is red')])
    expect(captionFacts('a small red shape', A)).toEqual([F('colour', 'shape is red'), F('size', 'shape is small')])
  })

  it('checks relations between the bound objects', () => {
    expect(captionFacts('a small square left of a star', A)).toEqual([
      T('object', 'a square'),
      T('size', 'square is small'),
      F('object', 'a star'),
      F('relation', 'small square left of star'),
    ])
    expect(captionFacts('a square to the left of a circle', A)).toEqual([T('object', 'a square'), T('object', 'a circle'), F('relation', 'square left of circle')])
    expect(captionFacts('a square to the right of a circle', A)).toEqual([T('object', 'a square'), T('object', 'a circle'), T('relation', 'square right of circle')])
    // The circle is above the square even though it is not blue: the relation is about the objects named.
    expect(captionFacts('a blue circle above a square', A)).toEqual([
      T('object', 'a circle'),
      F('colour', 'circle is blue'),
      T('object', 'a square'),
      T('relation', 'blue circle above square'),
    ])
    expect(captionFacts('a green star above a circle', A)).toEqual([F('object', 'a star'), F('colour', 'star is green'), T('object', 'a circle'), F('relation', 'green star above circle')])
  })

  it('lists counts first and the full description of A has only true facts', () => {
    expect(captionFacts('two shapes: a large red circle to the left of a small blue square', A)).toEqual([
      T('count', '2 objects'),
      T('object', 'a circle'),
      T('colour', 'circle is red'),
      T('size', 'circle is large'),
      T('object', 'a square'),
      T('colour', 'square is blue'),
      T('size', 'square is small'),
      T('relation', 'large red circle left of small blue square'),
    ])
    expect(captionFacts('three objects', A)).toEqual([F('count', '3 objects')])
    expect(captionFacts('one shape', A)).toEqual([F('count', '1 object')])
  })

  it('does not count one object twice', () => {
    expect(captionFacts('two circles', A)).toEqual([T('object', 'a circle'), F('object', 'another circle')])
    expect(captionFacts('a red circle and a red circle', A)).toEqual([T('object', 'a circle'), T('colour', 'circle is red'), F('object', 'another circle'), F('colour', 'circle is red')])
    // B has two circles: the second red circle is the blue one.
    expect(captionFacts('a red circle and a red circle', B)).toEqual([T('object', 'a circle'), T('colour', 'circle is red'), T('object', 'another circle'), F('colour', 'circle is red')])
    expect(captionFacts('two circles', B)).toEqual([T('object', 'a circle'), T('object', 'another circle')])
    expect(captionFacts('three circles', B).map((f) => f.holds)).toEqual([true, true, false])
  })

  it('binds a partly wrong mention to the object it gets most right', () => {
    // Neither circle is green; "large" is true of the blue one, so that is the one meant.
    expect(captionFacts('a large green circle', B)).toEqual([T('object', 'a circle'), F('colour', 'circle is green'), T('size', 'circle is large')])
    // Exact matches come first: the small red circle takes the red one, the large pink one gets the blue one.
    expect(captionFacts('a large pink circle below a small red circle', B)).toEqual([
      T('object', 'a circle'),
      F('colour', 'circle is pink'),
      T('size', 'circle is large'),
      T('object', 'another circle'),
      T('colour', 'circle is red'),
      T('size', 'circle is small'),
      T('relation', 'large pink circle below small red circle'),
    ])
  })

  it('states nothing for empty captions and unknown words, and ignores unknown words around known ones', () => {
    for (const c of ['', '   ', 'zxq blorp the of and', 'a picture of something', '. , :']) expect(captionFacts(c, A), c).toEqual([])
    expect(captionFacts('qq a zz red ww circle xx', A)).toEqual([T('object', 'a circle'), T('colour', 'circle is red')])
    expect(captionFacts('a red circle', { background: 'light', objects: [] })).toEqual([F('object', 'a circle'), F('colour', 'circle is red')])
    expect(() => captionFacts(42 as unknown as string, A)).toThrow(TypeError)
  })

  it('on generated scenes: annotator captions state only true facts; attribute facts are scoreObjects stated facts', () => {
    const scenes = generateScenes(11, 300)
    let facts = 0
    scenes.forEach((s, i) => {
      for (const c of [annotate(s, new Rng(i)), fullCaption(s)]) {
        const f = captionFacts(c, s)
        facts += f.length
        expect(f.filter((x) => !x.holds), c).toEqual([])
        expect(f.filter((x) => x.kind !== 'relation' && x.kind !== 'count').length, c).toBe(scoreObjects(c, s).statedFacts)
      }
      // The full caption names every object once, with its colour and size.
      const full = captionFacts(fullCaption(s), s)
      expect(full.filter((x) => x.kind === 'object')).toHaveLength(s.objects.length)
      expect(full.filter((x) => x.kind === 'colour' || x.kind === 'size')).toHaveLength(2 * s.objects.length)
      // Painting every object in a colour the scene does not have makes exactly the colour facts false.
      const absent = COLOURS.find((c) => !s.objects.some((o) => o.colour === c))!
      const wrong = fullCaption({ ...s, objects: s.objects.map((o) => ({ ...o, colour: absent })) })
      const wf = captionFacts(wrong, s)
      expect(wf.filter((x) => !x.holds).map((x) => x.kind), wrong).toEqual(wf.filter((x) => x.kind === 'colour').map(() => 'colour'))
    })
    expect(facts).toBeGreaterThan(1000)
  })
})

describe('preferByFacts and winRates', () => {
  it('prefers more true facts and fewer false ones, and calls incomparable captions a tie', () => {
    // "a red circle": 2 true, 0 false; "a circle": 1 true, 0 false.
    expect(preferByFacts('a red circle', 'a circle', A)).toBe(1)
    expect(preferByFacts('a circle', 'a red circle', A)).toBe(-1)
    // "a blue circle": 1 true, 1 false: as many true facts as "a circle", one more false.
    expect(preferByFacts('a blue circle', 'a circle', A)).toBe(-1)
    expect(preferByFacts('a circle', 'a blue circle', A)).toBe(1)
    // Same counts: a tie, even when the facts differ ("a square" vs "a circle": 1 true each).
    expect(preferByFacts('a red circle', 'a circle that is red', A)).toBe(0)
    expect(preferByFacts('a square', 'a circle', A)).toBe(0)
    // 2 true + 2 false against 1 true + 0 false: neither dominates.
    expect(preferByFacts('a red circle and a green star', 'a circle', A)).toBe(0)
    expect(preferByFacts('a circle', 'a red circle and a green star', A)).toBe(0)
    // Nothing against nothing; nothing against one true fact; nothing against one false fact.
    expect(preferByFacts('', 'hello world', A)).toBe(0)
    expect(preferByFacts('', 'a circle', A)).toBe(-1)
    expect(preferByFacts('', 'a star', A)).toBe(1)
  })

  it('gives win, tie and loss shares over scenes', () => {
    const a = ['a red circle', 'a circle', 'a red circle and a green star', 'a red circle', 'a circle', 'a star', 'a large circle', 'a circle']
    const b = ['a circle', 'a red circle', 'a circle', 'a red circle', 'two circles', 'a star', 'a small circle', 'a large circle']
    // A: 1, -1, 0, 0; B: "a circle" (1,0) vs "two circles" (2,0): -1; "a star" both (0,1): 0;
    // B: "a large circle" (2,0) vs "a small circle" (2,0): 0; "a circle" (1,0) vs "a large circle" (2,0): -1.
    const scenes = [A, A, A, A, B, B, B, B]
    expect(winRates(a, b, scenes)).toEqual({ win: 1 / 8, tie: 4 / 8, loss: 3 / 8 })
    expect(winRates(b, a, scenes)).toEqual({ win: 3 / 8, tie: 4 / 8, loss: 1 / 8 })
    const r = winRates(a, a, scenes)
    expect(r).toEqual({ win: 0, tie: 1, loss: 0 })
    expect(winRates([], [], [])).toEqual({ win: 0, tie: 0, loss: 0 })
    expect(() => winRates(['a'], ['b', 'c'], [A])).toThrow(SemicapError)
    expect(() => winRates(['a'], ['b'], [A, B])).toThrow(/winRates/)
  })
})
