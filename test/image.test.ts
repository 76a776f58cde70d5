import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SemicapError } from '../lib/errors.js'
import { CLIP_MEAN, CLIP_STD, loadRgb, preprocessImages, rgbToPixelValues, shortestEdgeSize } from '../lib/image.js'

type Rgb = [number, number, number]

let tmp: string
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'semicap-img-'))
})
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true })
})

/** Raw RGB pixels filled by `colour(x, y)`. */
function rawImage(width: number, height: number, colour: (x: number, y: number) => Rgb): Buffer {
  const data = Buffer.alloc(width * height * 3)
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) data.set(colour(x, y), (y * width + x) * 3)
  return data
}

const fromRaw = (data: Buffer, width: number, height: number, channels: 3 | 4 = 3) => sharp(data, { raw: { width, height, channels } })
const solid = (width: number, height: number, rgb: Rgb) => fromRaw(rawImage(width, height, () => rgb), width, height)
const expected = (rgb: Rgb) => rgb.map((v, c) => Math.fround((v / 255 - CLIP_MEAN[c]!) / CLIP_STD[c]!))

/** Max |value - expected| over every pixel of every channel of image `b`. */
function maxError(data: Float32Array, crop: number, b: number, rgb: Rgb): number {
  const want = expected(rgb)
  let worst = 0
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < crop * crop; i++) worst = Math.max(worst, Math.abs(data[(b * 3 + c) * crop * crop + i]! - want[c]!))
  return worst
}

/** The RGB value (0-255) at (x, y) of image b, undoing the normalisation. */
function pixelAt(data: Float32Array, crop: number, b: number, x: number, y: number): Rgb {
  return [0, 1, 2].map((c) => Math.round((data[(b * 3 + c) * crop * crop + y * crop + x]! * CLIP_STD[c]! + CLIP_MEAN[c]!) * 255) + 0) as Rgb // + 0: no -0
}

async function rejection(p: Promise<unknown>): Promise<SemicapError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(SemicapError)
  return err as SemicapError
}

describe('preprocessImages', () => {
  it('gives exact normalised values for solid colours in every lossless format and size', async () => {
    const colour: Rgb = [200, 100, 30]
    const inputs = [
      await solid(64, 64, colour).png().toBuffer(),
      await solid(300, 97, colour).png().toBuffer(), // wide, downscaled
      await solid(10, 13, colour).png().toBuffer(), // tall, upscaled
      await solid(50, 40, colour).webp({ lossless: true }).toBuffer(),
      await solid(33, 33, colour).tiff({ compression: 'lzw' }).toBuffer(), // sharp's TIFF default is JPEG-compressed
      new Uint8Array(await solid(24, 24, colour).png().toBuffer()), // a plain Uint8Array, not a Buffer
    ]
    const { data, shape } = await preprocessImages(inputs, { size: 32 })
    expect(shape).toEqual([inputs.length, 3, 32, 32])
    expect(data.length).toBe(inputs.length * 3 * 32 * 32)
    for (let b = 0; b < inputs.length; b++) expect(maxError(data, 32, b, colour), `input ${b}`).toBeLessThan(1e-6)
  })

  it('reads files from paths and raw RGB / RGBA objects', async () => {
    const path = join(tmp, 'blue.png')
    await solid(40, 30, [10, 20, 250]).png().toFile(path)
    const rgba = Buffer.alloc(20 * 20 * 4)
    for (let i = 0; i < 400; i++) rgba.set([1, 128, 255, 7], i * 4)
    const { data, shape } = await preprocessImages(
      [path, { data: rawImage(16, 16, () => [90, 60, 30]), width: 16, height: 16, channels: 3 }, { data: rgba, width: 20, height: 20, channels: 4 }],
      { size: 16, cropSize: 8 },
    )
    expect(shape).toEqual([3, 3, 8, 8])
    expect(maxError(data, 8, 0, [10, 20, 250])).toBeLessThan(1e-6)
    expect(maxError(data, 8, 1, [90, 60, 30])).toBeLessThan(1e-6)
    expect(maxError(data, 8, 2, [1, 128, 255])).toBeLessThan(1e-6)
  })

  it('converts grayscale, alpha, 16-bit, CMYK, JPEG, lossy WebP and GIF to RGB', async () => {
    const colour: Rgb = [200, 100, 30]
    const rgba = Buffer.alloc(32 * 32 * 4)
    for (let i = 0; i < 32 * 32; i++) rgba.set([...colour, 60], i * 4) // mostly transparent: alpha is dropped, not composited
    const cases: [string, Promise<Buffer>, Rgb, number][] = [
      ['grey', solid(32, 32, [77, 77, 77]).toColourspace('b-w').png().toBuffer(), [77, 77, 77], 0],
      ['grey+alpha', solid(32, 32, [77, 77, 77]).toColourspace('b-w').ensureAlpha(0.5).png().toBuffer(), [77, 77, 77], 0],
      ['rgba', fromRaw(rgba, 32, 32, 4).png().toBuffer(), colour, 0],
      ['16-bit', solid(32, 32, colour).toColourspace('rgb16').png().toBuffer(), colour, 1],
      ['cmyk jpeg', solid(32, 32, colour).toColourspace('cmyk').jpeg({ quality: 100 }).toBuffer(), colour, 10],
      ['jpeg', solid(32, 32, colour).jpeg({ quality: 95 }).toBuffer(), colour, 3],
      ['webp', solid(32, 32, colour).webp({ quality: 90 }).toBuffer(), colour, 6],
      ['gif', solid(32, 32, [255, 0, 0]).gif().toBuffer(), [255, 0, 0], 0],
    ]
    const buffers = await Promise.all(cases.map((c) => c[1]))
    expect((await sharp(buffers[3]!).metadata()).depth).toBe('ushort')
    expect((await sharp(buffers[4]!).metadata()).space).toBe('cmyk')
    const { data, shape } = await preprocessImages(buffers, { size: 16 })
    expect(shape).toEqual([cases.length, 3, 16, 16])
    cases.forEach(([name, , rgb, tolerance], b) => {
      for (const [x, y] of [[0, 0], [8, 8], [15, 15]] as const) {
        const got = pixelAt(data, 16, b, x, y)
        got.forEach((v, c) => expect(Math.abs(v - rgb[c]!), `${name} (${x},${y}) got ${got}`).toBeLessThanOrEqual(tolerance))
      }
    })
  })

  it('takes the first frame of an animated GIF', async () => {
    const red = await solid(24, 24, [255, 0, 0]).png().toBuffer()
    const blue = await solid(24, 24, [0, 0, 255]).png().toBuffer()
    const gif = await sharp([red, blue], { join: { animated: true } }).gif().toBuffer()
    expect((await sharp(gif).metadata()).pages).toBe(2)
    const rgb = await loadRgb(gif)
    expect([rgb.width, rgb.height]).toEqual([24, 24])
    const { data } = await preprocessImages([gif], { size: 24 })
    expect(maxError(data, 24, 0, [255, 0, 0])).toBeLessThan(1e-6)
  })

  it('resizes the shortest edge and center-crops wide and tall images', async () => {
    // Thirds: red | green | blue across (wide) or down (tall); the crop must be the green middle.
    const third = (t: number, n: number): Rgb => (t < n / 3 ? [255, 0, 0] : t < (2 * n) / 3 ? [0, 255, 0] : [0, 0, 255])
    const wide = await fromRaw(rawImage(300, 100, (x) => third(x, 300)), 300, 100).png().toBuffer()
    const tall = await fromRaw(rawImage(100, 300, (_, y) => third(y, 300)), 100, 300).png().toBuffer()
    const { data } = await preprocessImages([wide, tall], { size: 32 })
    for (let b = 0; b < 2; b++) {
      // The center is pure green; near the crop's edges bicubic blends in a little of the neighbours, never more.
      expect(pixelAt(data, 32, b, 16, 16)).toEqual([0, 255, 0])
      for (let i = 0; i < 32; i++) {
        const [x, y] = b === 0 ? [i, 16] : [16, i]
        const [r, g, bl] = pixelAt(data, 32, b, x, y)
        expect(g, `image ${b} at ${x},${y}`).toBeGreaterThan(200)
        expect(Math.max(r, bl), `image ${b} at ${x},${y}`).toBeLessThan(60)
      }
    }
  })

  it('matches Hugging Face geometry: sizes and crop offsets', async () => {
    expect(shortestEdgeSize(640, 480, 224)).toEqual([298, 224])
    expect(shortestEdgeSize(480, 640, 224)).toEqual([224, 298])
    expect(shortestEdgeSize(100, 100, 224)).toEqual([224, 224])
    // 6 columns 0..5, crop 4 -> columns 1..4 (offset floor((6 - 4) / 2) = 1).
    const rgb = new Uint8Array(6 * 4 * 3)
    for (let y = 0; y < 4; y++) for (let x = 0; x < 6; x++) rgb[(y * 6 + x) * 3] = x * 10
    const out = rgbToPixelValues(rgb, 6, 4, { size: 4 })
    expect(out.length).toBe(3 * 4 * 4)
    expect(Array.from(out.subarray(0, 4))).toEqual([10, 20, 30, 40].map((v) => Math.fround((v / 255 - CLIP_MEAN[0]!) / CLIP_STD[0]!)))
    // A crop larger than the image pads with zero pixels, the image sitting at ceil((crop - w) / 2).
    const small = rgbToPixelValues(new Uint8Array(3).fill(255), 1, 1, { size: 1, cropSize: 3, mean: [0, 0, 0], std: [1, 1, 1] })
    expect(Array.from(small.subarray(0, 9))).toEqual([0, 0, 0, 0, 1, 0, 0, 0, 0])
    expect(() => rgbToPixelValues(rgb, 5, 4, { size: 4 })).toThrow(RangeError)
  })

  it('returns an empty batch for no inputs and checks its options', async () => {
    expect(await preprocessImages([], { size: 8 })).toEqual({ data: new Float32Array(0), shape: [0, 3, 8, 8] })
    await expect(preprocessImages([], { size: 0 })).rejects.toThrow(RangeError)
    await expect(preprocessImages('x.png' as unknown as string[], { size: 8 })).rejects.toThrow(TypeError)
    await expect(preprocessImages([42 as unknown as string], { size: 8 })).rejects.toThrow(/input 0/)
    await expect(preprocessImages([], { size: 8, mean: [1, 2] })).rejects.toThrow(TypeError)
  })
})

/** A PNG whose header claims width x height, followed by a tiny (bogus) IDAT: a decompression bomb's signature. */
function pngClaiming(width: number, height: number): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    return c >>> 0
  })
  const crc = (buf: Buffer) => {
    let c = 0xffffffff
    for (const b of buf) c = crcTable[(c ^ b) & 0xff]! ^ (c >>> 8)
    return (c ^ 0xffffffff) >>> 0
  }
  const chunk = (type: string, body: Buffer) => {
    const head = Buffer.alloc(4)
    head.writeUInt32BE(body.length)
    const typed = Buffer.concat([Buffer.from(type, 'ascii'), body])
    const tail = Buffer.alloc(4)
    tail.writeUInt32BE(crc(typed))
    return Buffer.concat([head, typed, tail])
  }
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr.set([8, 2, 0, 0, 0], 8) // 8-bit RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', Buffer.from([0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01])),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

describe('bad inputs', () => {
  const good = () => solid(16, 16, [1, 2, 3]).png().toBuffer()

  it('names the failing input (index and path) for unreadable files', async () => {
    const empty = join(tmp, 'empty.png')
    const text = join(tmp, 'notes.txt')
    const missing = join(tmp, 'missing.jpg')
    await writeFile(empty, '')
    await writeFile(text, 'this is not an image\n')
    for (const [index, path] of [[1, empty], [1, text], [1, missing]] as const) {
      const err = await rejection(preprocessImages([await good(), path, await good()], { size: 8 }))
      expect(err.code).toBe('E_IMAGE')
      expect(err.message).toContain(`input ${index} (${path})`)
    }
  })

  it('rejects zero-byte, text, truncated and corrupt buffers with E_IMAGE', async () => {
    const noisy = await fromRaw(rawImage(64, 64, (x, y) => [(x * 37 + y * 11) % 256, (x * y) % 256, (x + 3 * y) % 256]), 64, 64).png().toBuffer()
    const jpeg = await fromRaw(rawImage(64, 64, (x, y) => [(x * 37 + y * 11) % 256, (x * y) % 256, (x + 3 * y) % 256]), 64, 64).jpeg().toBuffer()
    const corrupt = Buffer.from(noisy)
    corrupt.fill(0x55, 40, 200) // IHDR intact, image data garbage
    const cases: [string, Uint8Array][] = [
      ['zero bytes', Buffer.alloc(0)],
      ['text', Buffer.from('hello, world')],
      ['truncated png', noisy.subarray(0, noisy.length >> 1)],
      ['truncated jpeg', jpeg.subarray(0, jpeg.length >> 1)],
      ['corrupt png', corrupt],
    ]
    for (const [name, buf] of cases) {
      const err = await rejection(preprocessImages([await good(), await good(), buf], { size: 8, concurrency: 1 }))
      expect(err.code, name).toBe('E_IMAGE')
      expect(err.message, name).toMatch(/^input 2 \(\d+-byte buffer\): \S/)
      await expect(loadRgb(buf), name).rejects.toMatchObject({ code: 'E_IMAGE' })
    }
  })

  it('refuses decompression bombs before decoding', async () => {
    const bomb = pngClaiming(30_000, 30_000) // 900 Mpx declared in a ~70-byte file
    const err = await rejection(preprocessImages([bomb], { size: 8 }))
    expect(err.code).toBe('E_IMAGE')
    expect(err.message).toMatch(/^input 0 .*pixel limit/)
    const small = await rejection(preprocessImages([await good()], { size: 8, maxPixels: 100 }))
    expect(small.message).toMatch(/pixel limit/)
    const raw = await rejection(preprocessImages([{ data: new Uint8Array(300), width: 10, height: 10, channels: 3 }], { size: 8, maxPixels: 99 }))
    expect(raw.message).toMatch(/^input 0 \(raw 10x10x3\).*exceeds/)
    expect((await preprocessImages([await good()], { size: 8, maxPixels: 256 })).shape).toEqual([1, 3, 8, 8])
  })

  it('rejects malformed raw objects with RangeError', async () => {
    await expect(preprocessImages([{ data: new Uint8Array(10), width: 4, height: 4, channels: 3 }], { size: 4 })).rejects.toThrow(RangeError)
    await expect(preprocessImages([{ data: new Uint8Array(32), width: 4, height: 4, channels: 2 as 3 }], { size: 4 })).rejects.toThrow(RangeError)
  })
})
