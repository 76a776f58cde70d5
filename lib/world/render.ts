/**
 * Rasterises scenes straight into RGB bytes: no SVG/font stack, so pixels are bit-identical on
 * every machine. Edges are anti-aliased by 4x4 supersampling; each shape's interior is exactly its
 * colour and everything outside the shapes exactly the background.
 */
import sharp from 'sharp'
import { SemicapError } from '../errors.js'
import { BACKGROUND_RGB, COLOUR_RGB, SIZE_RADIUS, type Scene, type Shape } from './scene.js'

export interface RawImage {
  data: Uint8Array
  width: number
  height: number
  channels: 3
}

const SUPERSAMPLE = 4

/** 5-pointed star, outer radius 1, inner 0.45, first point straight up (y grows downwards). */
const STAR: ReadonlyArray<readonly [number, number]> = Array.from({ length: 10 }, (_, i) => {
  const radius = i % 2 === 0 ? 1 : 0.45
  const angle = -Math.PI / 2 + (i * Math.PI) / 5
  return [radius * Math.cos(angle), radius * Math.sin(angle)] as const
})

function insidePolygon(px: number, py: number, poly: ReadonlyArray<readonly [number, number]>): boolean {
  let inside = false
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i] as readonly [number, number]
    const [xj, yj] = poly[j] as readonly [number, number]
    if (yi > py !== yj > py && px < ((xj - xi) * (py - yi)) / (yj - yi) + xi) inside = !inside
  }
  return inside
}

const SQRT3_2 = Math.sqrt(3) / 2

/**
 * Whether (u, v), relative to the shape centre in units of its radius, lies in the shape. Every
 * shape fits the box [-1, 1]^2 and contains a neighbourhood of the origin.
 */
export function insideShape(shape: Shape, u: number, v: number): boolean {
  switch (shape) {
    case 'circle':
      return u * u + v * v <= 1
    case 'square':
      return Math.abs(u) <= 0.85 && Math.abs(v) <= 0.85
    case 'triangle': {
      // Equilateral, pointing up, circumradius 1 around the centroid: apex (0,-1), base at v = 0.5.
      if (v > 0.5 || v < -1) return false
      return Math.abs(u) <= ((v + 1) / 1.5) * SQRT3_2
    }
    case 'star':
      return insidePolygon(u, v, STAR)
    case 'diamond':
      return Math.abs(u) + Math.abs(v) <= 1
    case 'cross':
      return (Math.abs(u) <= 0.33 && Math.abs(v) <= 1) || (Math.abs(v) <= 0.33 && Math.abs(u) <= 1)
  }
}

/** Renders `scene` as size x size RGB (row-major, 3 bytes per pixel). */
export function renderScene(scene: Scene, size = 64): RawImage {
  if (!Number.isInteger(size) || size < 8 || size > 4096) {
    throw new SemicapError('E_VALUE', `renderScene: size must be an integer in [8, 4096], got ${size}`)
  }
  const data = new Uint8Array(size * size * 3)
  const bg = BACKGROUND_RGB[scene.background]
  for (let i = 0; i < data.length; i += 3) {
    data[i] = bg[0]
    data[i + 1] = bg[1]
    data[i + 2] = bg[2]
  }
  const samples = SUPERSAMPLE * SUPERSAMPLE
  for (const obj of scene.objects) {
    const r = SIZE_RADIUS[obj.size]
    const colour = COLOUR_RGB[obj.colour]
    // Only pixels touching the shape's bounding box need work.
    const x0 = Math.max(0, Math.floor((obj.x - r) * size))
    const x1 = Math.min(size - 1, Math.ceil((obj.x + r) * size))
    const y0 = Math.max(0, Math.floor((obj.y - r) * size))
    const y1 = Math.min(size - 1, Math.ceil((obj.y + r) * size))
    for (let py = y0; py <= y1; py++) {
      for (let px = x0; px <= x1; px++) {
        let hits = 0
        for (let sy = 0; sy < SUPERSAMPLE; sy++) {
          const v = ((py + (sy + 0.5) / SUPERSAMPLE) / size - obj.y) / r
          for (let sx = 0; sx < SUPERSAMPLE; sx++) {
            const u = ((px + (sx + 0.5) / SUPERSAMPLE) / size - obj.x) / r
            if (insideShape(obj.shape, u, v)) hits++
          }
        }
        if (hits === 0) continue
        // Blend over what is there (objects never overlap, so that is the background).
        const a = hits / samples
        const i = (py * size + px) * 3
        for (let c = 0; c < 3; c++) {
          data[i + c] = Math.round((data[i + c] as number) * (1 - a) + (colour[c] as number) * a)
        }
      }
    }
  }
  return { data, width: size, height: size, channels: 3 }
}

/** The rendered scene as PNG bytes (lossless, so decoding gives back renderScene's bytes). */
export async function renderPng(scene: Scene, size = 64): Promise<Buffer> {
  const img = renderScene(scene, size)
  return sharp(img.data, { raw: { width: img.width, height: img.height, channels: img.channels } })
    .png()
    .toBuffer()
}
