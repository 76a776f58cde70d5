/**
 * Scene graphs of the synthetic world: 1-3 flat shapes on a plain background, each in its own
 * cell of a 3x3 grid (with a little jitter), so that spatial relations are never ambiguous.
 */
import { SemicapError } from '../errors.js'
import { Rng, deriveSeed } from './rng.js'

export const SHAPES = ['circle', 'square', 'triangle', 'star', 'diamond', 'cross'] as const
export type Shape = (typeof SHAPES)[number]

export const COLOURS = ['red', 'orange', 'yellow', 'green', 'cyan', 'blue', 'purple', 'pink'] as const
export type Colour = (typeof COLOURS)[number]

export const SIZES = ['small', 'large'] as const
export type Size = (typeof SIZES)[number]

export const BACKGROUNDS = ['light', 'dark'] as const
export type Background = (typeof BACKGROUNDS)[number]

export type Rgb = readonly [number, number, number]

/** Saturated hues, pairwise far apart in RGB, so a tiny ViT can tell them apart at 64x64. */
export const COLOUR_RGB: Readonly<Record<Colour, Rgb>> = {
  red: [220, 30, 30],
  orange: [250, 140, 20],
  yellow: [240, 220, 30],
  green: [30, 160, 50],
  cyan: [30, 200, 210],
  blue: [30, 70, 220],
  purple: [130, 40, 170],
  pink: [250, 130, 200],
}

/** Neutral greys: never confusable with an object colour. Captions don't mention the background. */
export const BACKGROUND_RGB: Readonly<Record<Background, Rgb>> = {
  light: [230, 230, 230],
  dark: [40, 40, 40],
}

/** Shape "radius" (half the bounding box side) as a fraction of the image side. */
export const SIZE_RADIUS: Readonly<Record<Size, number>> = { small: 0.09, large: 0.15 }

/** Cell index 0..2 from top to bottom / left to right. */
export type GridIndex = 0 | 1 | 2

export interface SceneObject {
  shape: Shape
  colour: Colour
  size: Size
  row: GridIndex
  col: GridIndex
  /** Centre in [0, 1] image coordinates (x right, y down): the cell centre plus jitter. */
  x: number
  y: number
}

export interface Scene {
  background: Background
  /** objects[0] is the salient object: large objects come first, so it is a largest one. */
  objects: SceneObject[]
}

/** Keeps every shape's bounding box off the image border, so the corners are always background. */
const BORDER_MARGIN = 0.02
const JITTER = 0.025

/** Bounding boxes (side 2r) overlap: the generator rejects such jitter. */
function boxesOverlap(a: SceneObject, b: SceneObject): boolean {
  const reach = SIZE_RADIUS[a.size] + SIZE_RADIUS[b.size]
  return Math.abs(a.x - b.x) < reach && Math.abs(a.y - b.y) < reach
}

function placeObject(rng: Rng, base: Omit<SceneObject, 'x' | 'y'>, jitter: number): SceneObject {
  const r = SIZE_RADIUS[base.size]
  const lo = r + BORDER_MARGIN
  const hi = 1 - r - BORDER_MARGIN
  const clamp = (v: number) => Math.min(hi, Math.max(lo, v))
  return {
    ...base,
    x: clamp((base.col + 0.5) / 3 + rng.uniform(-jitter, jitter)),
    y: clamp((base.row + 0.5) / 3 + rng.uniform(-jitter, jitter)),
  }
}

export interface SceneOptions {
  /**
   * Backgrounds to draw from (default both). The demo uses ['light']: a background flip is a whole-image nuisance
   * the captions never mention, and it keeps a tiny contrastive CLIP at chance for thousands of CPU steps.
   * The draw is made either way, so the objects of scene i don't depend on this option.
   */
  backgrounds?: readonly Background[]
  /**
   * At most this many objects (1-3, default 3): the drawn count is capped, so scenes under a cap keep the objects
   * they would have had. The demo uses 2: a tiny CLIP's single embedding holds two objects' attributes better than
   * three, and the captioner can only describe what that embedding holds.
   */
  maxObjects?: number
  /**
   * The colours each shape comes in (default: every colour for every shape), like objects with typical colours.
   * The draws are made either way; a shape's colour is picked from its own list.
   */
  palette?: Readonly<Partial<Record<Shape, readonly Colour[]>>>
}

function checkBackgrounds(backgrounds: readonly Background[], where: string): void {
  if (!Array.isArray(backgrounds) || backgrounds.length === 0 || backgrounds.some((b) => !(BACKGROUNDS as readonly string[]).includes(b))) {
    throw new SemicapError('E_VALUE', `${where}: backgrounds must be a non-empty list of ${BACKGROUNDS.join(', ')}`)
  }
}

/** One scene from its own seed. (shape, colour) pairs are distinct within a scene. */
export function generateScene(seed: number, options: SceneOptions = {}): Scene {
  const backgrounds = options.backgrounds ?? BACKGROUNDS
  checkBackgrounds(backgrounds, 'generateScene')
  const maxObjects = options.maxObjects ?? 3
  if (!Number.isInteger(maxObjects) || maxObjects < 1 || maxObjects > 3) throw new SemicapError('E_VALUE', `generateScene: maxObjects must be 1, 2 or 3, got ${maxObjects}`)
  const palette = options.palette ?? {}
  for (const [shape, colours] of Object.entries(palette)) {
    const ok = (SHAPES as readonly string[]).includes(shape) && Array.isArray(colours) && colours.length > 0 && colours.every((c) => (COLOURS as readonly string[]).includes(c))
    if (!ok) throw new SemicapError('E_VALUE', `generateScene: palette.${shape} must be a non-empty list of colours`)
  }
  const rng = new Rng(seed)
  const u = rng.next()
  const count = Math.min(maxObjects, u < 0.3 ? 1 : u < 0.7 ? 2 : 3)
  const cells = rng.shuffle([0, 1, 2, 3, 4, 5, 6, 7, 8]).slice(0, count)
  const used = new Set<string>()
  const bases: Array<Omit<SceneObject, 'x' | 'y'>> = []
  for (const cell of cells) {
    let shape: Shape
    let colour: Colour
    do {
      shape = rng.pick(SHAPES)
      colour = rng.pick(palette[shape] ?? COLOURS)
    } while (used.has(`${colour} ${shape}`))
    used.add(`${colour} ${shape}`)
    bases.push({
      shape,
      colour,
      size: rng.pick(SIZES),
      row: Math.floor(cell / 3) as GridIndex,
      col: (cell % 3) as GridIndex,
    })
  }
  // Stable sort: large before small, otherwise the random order stays.
  bases.sort((a, b) => (a.size === b.size ? 0 : a.size === 'large' ? -1 : 1))

  const objects: SceneObject[] = []
  for (const base of bases) {
    // Distinct cells never overlap without jitter (cell pitch 1/3 > 2 x 0.15); retry jitter a few
    // times, then fall back to the exact cell centre.
    let placed = placeObject(rng, base, 0)
    for (let attempt = 0; attempt < 8; attempt++) {
      const candidate = placeObject(rng, base, JITTER)
      if (!objects.some((o) => boxesOverlap(o, candidate))) {
        placed = candidate
        break
      }
    }
    objects.push(placed)
  }
  return { background: rng.pick(backgrounds), objects }
}

/** `count` scenes; scene i depends only on (seed, i). */
export function generateScenes(seed: number, count: number, options: SceneOptions = {}): Scene[] {
  if (!Number.isInteger(seed)) throw new SemicapError('E_VALUE', `generateScenes: seed must be an integer, got ${seed}`)
  if (!Number.isInteger(count) || count < 0) {
    throw new SemicapError('E_VALUE', `generateScenes: count must be a non-negative integer, got ${count}`)
  }
  return Array.from({ length: count }, (_, i) => generateScene(deriveSeed(seed, 'scene', i), options))
}

export type Relation = 'left of' | 'right of' | 'above' | 'below'

/** Every relation that holds between a and b, from their grid cells. */
export function relationsBetween(a: SceneObject, b: SceneObject): Relation[] {
  const out: Relation[] = []
  if (a.col < b.col) out.push('left of')
  if (a.col > b.col) out.push('right of')
  if (a.row < b.row) out.push('above')
  if (a.row > b.row) out.push('below')
  return out
}

/** The relation an annotator would use: along the axis with the larger cell distance (ties: horizontal). */
export function mainRelation(a: SceneObject, b: SceneObject): Relation {
  const dc = b.col - a.col
  const dr = b.row - a.row
  if (Math.abs(dc) >= Math.abs(dr) && dc !== 0) return dc > 0 ? 'left of' : 'right of'
  return dr > 0 ? 'above' : 'below'
}
