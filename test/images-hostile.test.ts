// Hostile and unusual images through clip.preprocess and captioner.caption: every one either works or fails with a
// SemicapError E_IMAGE that names that image (its index in the batch), and the next call with good images works.
// Unusual but valid encodings (grey, CMYK, alpha, 16-bit, animated GIF) must work and give the right pixels.
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { crc32, deflateSync } from 'node:zlib'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Captioner, SemicapError, type Tensor } from '../lib/index.js'
import { makePngs, makeTinyModels } from './helpers/models.js'
import { tempDir } from './helpers/paths.js'

let cap: Captioner
let good: Buffer[]
let dir: string

beforeAll(async () => {
  const models = await makeTinyModels()
  cap = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  good = await makePngs(3)
  dir = tempDir('semicap-hostile-img-')
})
afterAll(() => cap?.dispose())

/** A PNG chunk: length, type, data, CRC over type + data. */
function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(data.length)
  const td = Buffer.concat([Buffer.from(type, 'latin1'), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(td) >>> 0)
  return Buffer.concat([len, td, crc])
}
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

/** A PNG header declaring width x height 8-bit grey, with `idat` as its (possibly far too short) image data. */
function pngDeclaring(width: number, height: number, idat: Buffer): Buffer {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 0 // grey
  return Buffer.concat([PNG_SIGNATURE, chunk('IHDR', ihdr), chunk('IDAT', idat), chunk('IEND', Buffer.alloc(0))])
}

/** A real decompression bomb: a width x height all-black grey PNG (a few hundred KB for 144 Mpx). */
function zeroPng(width: number, height: number): Buffer {
  // Each row: filter byte 0 + width zero bytes.
  return pngDeclaring(width, height, deflateSync(Buffer.alloc((width + 1) * height), { level: 9 }))
}

const solid = (r: number, g: number, b: number, w = 40, h = 30) => sharp({ create: { width: w, height: h, channels: 3, background: { r, g, b } } })

interface Case {
  name: string
  make: () => Promise<Buffer | string>
  /** 'works', 'E_IMAGE', or 'either' (a decoder may accept or refuse it; it must not crash or hang). */
  expect: 'works' | 'E_IMAGE' | 'either'
  /** For cases that work: a plain RGB image the result must match (within `tol` in normalised units). */
  like?: () => Promise<Buffer>
  tol?: number
}

async function jpeg(): Promise<Buffer> {
  return sharp(good[0]).jpeg({ quality: 90 }).toBuffer()
}

const CASES: Case[] = [
  { name: 'zero bytes', make: async () => Buffer.alloc(0), expect: 'E_IMAGE' },
  { name: 'not an image (text)', make: async () => Buffer.from('hello, this is not an image\n'.repeat(10)), expect: 'E_IMAGE' },
  { name: 'not an image (random bytes)', make: async () => Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24)), expect: 'E_IMAGE' },
  { name: 'PNG signature only', make: async () => PNG_SIGNATURE, expect: 'E_IMAGE' },
  { name: 'truncated PNG (half)', make: async () => good[1]!.subarray(0, good[1]!.length >> 1), expect: 'E_IMAGE' },
  { name: 'truncated PNG (header only)', make: async () => good[1]!.subarray(0, 40), expect: 'E_IMAGE' },
  { name: 'truncated JPEG (half)', make: async () => (await jpeg()).subarray(0, (await jpeg()).length >> 1), expect: 'E_IMAGE' },
  { name: 'JPEG SOI marker only', make: async () => Buffer.from([0xff, 0xd8, 0xff]), expect: 'E_IMAGE' },
  {
    name: 'corrupt JPEG (scan data overwritten)',
    make: async () => {
      const j = Buffer.from(await jpeg())
      for (let i = Math.floor(j.length * 0.6); i < j.length - 2; i += 7) j[i] = 0xff
      return j
    },
    expect: 'either',
  },
  {
    name: 'corrupt PNG (IDAT CRC wrong)',
    make: async () => {
      const p = Buffer.from(good[2]!)
      const at = p.indexOf('IDAT')
      p[at + 8] ^= 0xff // first data byte of IDAT: zlib header, CRC no longer matches
      return p
    },
    expect: 'E_IMAGE',
  },
  { name: 'decompression bomb: a PNG header declaring 30000x30000 (900 Mpx)', make: async () => pngDeclaring(30000, 30000, deflateSync(Buffer.alloc(100))), expect: 'E_IMAGE' },
  { name: 'decompression bomb: a real 12000x12000 black PNG (144 Mpx, > the 100 Mpx limit)', make: async () => zeroPng(12000, 12000), expect: 'E_IMAGE' },
  { name: 'a PNG declaring 0x0', make: async () => pngDeclaring(0, 0, deflateSync(Buffer.alloc(0))), expect: 'E_IMAGE' },
  { name: 'an SVG declaring 100000x100000', make: async () => Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><rect width="10" height="10"/></svg>'), expect: 'E_IMAGE' },
  { name: 'a path that does not exist', make: async () => join(tempDir('semicap-missing-'), 'nope.png'), expect: 'E_IMAGE' },
  { name: 'a directory path', make: async () => tempDir('semicap-dir-'), expect: 'E_IMAGE' },
  // Valid but unusual: must work and give the pixels of the plain RGB equivalent.
  { name: 'grayscale PNG', make: () => solid(90, 90, 90).toColourspace('b-w').png().toBuffer(), expect: 'works', like: () => solid(90, 90, 90).png().toBuffer(), tol: 1e-5 },
  { name: '16-bit grayscale PNG', make: () => solid(90, 90, 90).toColourspace('grey16').png().toBuffer(), expect: 'works', like: () => solid(90, 90, 90).png().toBuffer(), tol: 0.02 },
  { name: '16-bit RGB PNG', make: () => solid(200, 40, 10).toColourspace('rgb16').png().toBuffer(), expect: 'works', like: () => solid(200, 40, 10).png().toBuffer(), tol: 0.02 },
  { name: 'CMYK JPEG', make: () => solid(200, 40, 10).toColourspace('cmyk').jpeg({ quality: 95 }).toBuffer(), expect: 'works', like: () => solid(200, 40, 10).png().toBuffer(), tol: 0.35 },
  {
    name: 'RGBA PNG with transparent pixels (alpha dropped, not composited)',
    make: () => sharp({ create: { width: 40, height: 30, channels: 4, background: { r: 10, g: 200, b: 30, alpha: 0 } } }).png().toBuffer(),
    expect: 'works',
    like: () => solid(10, 200, 30).png().toBuffer(),
    tol: 1e-5,
  },
  {
    name: 'grey + alpha PNG',
    make: () => sharp({ create: { width: 40, height: 30, channels: 4, background: { r: 70, g: 70, b: 70, alpha: 0.5 } } }).toColourspace('b-w').png().toBuffer(),
    expect: 'works',
    like: () => solid(70, 70, 70).png().toBuffer(),
    tol: 1e-5,
  },
  {
    name: 'animated GIF (first frame red, then blue, green)',
    make: async () => {
      const frames = await Promise.all([[250, 0, 0], [0, 0, 250], [0, 250, 0]].map(([r, g, b]) => solid(r!, g!, b!).png().toBuffer()))
      return sharp(frames, { join: { animated: true } }).gif({ delay: [100, 100, 100], loop: 0 }).toBuffer()
    },
    expect: 'works',
    like: () => solid(250, 0, 0).png().toBuffer(),
    tol: 0.05,
  },
  { name: 'a 1x1 PNG', make: () => solid(1, 2, 3, 1, 1).png().toBuffer(), expect: 'works' },
  { name: 'a 1x2000 sliver', make: () => solid(5, 6, 7, 1, 2000).png().toBuffer(), expect: 'either' },
  { name: 'WebP', make: () => solid(30, 60, 90).webp({ lossless: true }).toBuffer(), expect: 'works', like: () => solid(30, 60, 90).png().toBuffer(), tol: 1e-5 },
  { name: 'TIFF', make: () => solid(30, 60, 90).tiff({ compression: 'lzw' }).toBuffer(), expect: 'works', like: () => solid(30, 60, 90).png().toBuffer(), tol: 1e-5 },
]

function maxDiff(a: Tensor, b: Tensor, index: number): number {
  const plane = a.size / a.shape[0]!
  const x = a.data as Float32Array
  const y = b.data as Float32Array
  let m = 0
  for (let i = 0; i < plane; i++) m = Math.max(m, Math.abs(x[index * plane + i]! - y[i]!))
  return m
}

async function outcome(p: Promise<unknown>): Promise<{ ok: true; value: unknown } | { ok: false; error: unknown }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  )
}

function expectImageError(error: unknown, index: number, what: string): void {
  expect(error, what).toBeInstanceOf(SemicapError)
  expect((error as SemicapError).code, `${what}: ${(error as Error).message}`).toBe('E_IMAGE')
  // It names the failing image, not a neighbour.
  expect((error as Error).message, what).toContain(`input ${index}`)
}

describe('hostile images', () => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s', async (name, c) => {
    const input = await c.make()
    // As a Buffer, and (for buffers) as a file path, at index 1 of a batch with good images around it.
    const inputs: (Buffer | string)[] = [input]
    if (Buffer.isBuffer(input)) {
      const file = join(dir, `${name.replace(/[^a-z0-9]+/gi, '_').slice(0, 60)}.img`)
      mkdirSync(dir, { recursive: true })
      writeFileSync(file, input)
      inputs.push(file)
    }
    for (const x of inputs) {
      const what = `${name} (${typeof x === 'string' ? 'path' : 'buffer'})`
      const pre = await outcome(cap.clip.preprocess([good[0]!, x, good[1]!]))
      const captioned = await outcome(cap.caption([good[0]!, x, good[1]!], { maxTokens: 4 }))
      // preprocess and caption agree on whether the image is usable.
      expect(captioned.ok, what).toBe(pre.ok)
      if (c.expect === 'either') console.log(`${what}: ${pre.ok ? 'decoded' : `refused (${(pre.error as Error).message})`}`)
      if (c.expect === 'works') expect(pre.ok, `${what}: ${pre.ok ? '' : (pre.error as Error).message}`).toBe(true)
      if (c.expect === 'E_IMAGE') expect(pre.ok, what).toBe(false)
      if (!pre.ok) {
        expectImageError(pre.error, 1, what)
        expectImageError((captioned as { error: unknown }).error, 1, what)
      } else {
        const pixels = pre.value as Tensor
        expect(pixels.shape, what).toEqual([3, 3, cap.clip.imageSize, cap.clip.imageSize])
        expect(Array.from(pixels.data as Float32Array).every(Number.isFinite), what).toBe(true)
        expect((captioned as { value: unknown[] }).value, what).toHaveLength(3)
        if (c.like) {
          const ref = await cap.clip.preprocess([await c.like()])
          expect(maxDiff(pixels, ref, 1), what).toBeLessThanOrEqual(c.tol!)
        }
      }
    }
    // The next call with good images works and is unaffected.
    const after = await cap.caption(good, { maxTokens: 4 })
    expect(after).toHaveLength(3)
  })

  it('the first failing image of a batch is reported, by its index, however many fail', async () => {
    const bad = Buffer.from('not an image')
    const err = await cap.clip.preprocess([good[0]!, good[1]!, bad, good[2]!, bad]).catch((e: unknown) => e)
    expectImageError(err, 2, 'two bad images')
  })

  it('a lower maxPixels refuses a big-but-valid image before decoding it', async () => {
    const big = await solid(10, 20, 30, 3000, 2000).png().toBuffer()
    const err = await cap.clip.preprocess([big], { maxPixels: 1_000_000 }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(SemicapError)
    expect((err as SemicapError).code).toBe('E_IMAGE')
    expect((err as Error).message).toMatch(/pixel limit|exceeds/i)
    // Within the default limit it works.
    expect((await cap.clip.preprocess([big])).shape[0]).toBe(1)
  })

  it('all the hostile inputs at once, concurrently, settle and leave the captioner working', async () => {
    const inputs = await Promise.all(CASES.filter((c) => c.expect === 'E_IMAGE').map((c) => c.make()))
    const results = await Promise.allSettled(inputs.map((x) => cap.caption([x], { maxTokens: 3 })))
    for (const r of results) {
      expect(r.status).toBe('rejected')
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'E_IMAGE' })
    }
    expect(await cap.caption(good, { maxTokens: 4 })).toHaveLength(3)
  })
})
