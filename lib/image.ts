/**
 * CLIP image preprocessing, as Hugging Face's CLIPImageProcessor does it: decode (sharp), convert to 8-bit RGB by
 * dropping alpha (PIL's convert('RGB')), bicubic resize so the shortest edge is `size`, center crop, scale by 1/255,
 * normalise with the CLIP mean/std, and lay out CHW float32 for a whole batch.
 */
import sharp from 'sharp'
import { SemicapError, withCallerStack } from './errors.js'

export const CLIP_MEAN: readonly number[] = [0.48145466, 0.4578275, 0.40821073]
export const CLIP_STD: readonly number[] = [0.26862954, 0.26130258, 0.27577711]

/** Already-decoded pixels, row-major, interleaved RGB or RGBA (alpha is dropped). */
export interface RawImage {
  data: Uint8Array
  width: number
  height: number
  channels: 3 | 4
}

/** A file path, encoded image bytes (any format sharp reads), or raw pixels. */
export type ImageInput = string | Buffer | Uint8Array | RawImage

export interface RgbImage {
  /** width * height * 3 bytes, row-major RGB. */
  data: Uint8Array
  width: number
  height: number
}

export interface LoadOptions {
  /** Decompression-bomb guard: inputs with more pixels (width * height) are refused. Default 100e6. */
  maxPixels?: number
  /** Apply the EXIF orientation (default false: like PIL in Hugging Face, pixels are taken as stored). */
  autoOrient?: boolean
}

export interface PixelValueOptions {
  /** Target of the shortest edge (224 for ViT-B/32). */
  size: number
  /** Side of the square center crop (default `size`). */
  cropSize?: number
  mean?: readonly number[]
  std?: readonly number[]
}

export interface PreprocessOptions extends LoadOptions, PixelValueOptions {
  /** Images decoded at once (default 4). */
  concurrency?: number
}

const DEFAULT_MAX_PIXELS = 100e6

/** Decodes one input to 8-bit sRGB, 3 channels, first frame only. Errors are E_IMAGE and name the input. */
export function loadRgb(input: ImageInput, opts: LoadOptions = {}): Promise<RgbImage> {
  return withCallerStack(async () => decode(input, checkMaxPixels(opts), 'input', opts.autoOrient))
}

/** Preprocesses a batch into one [B, 3, crop, crop] float32 array; the first failing input rejects the batch. */
export function preprocessImages(
  inputs: readonly ImageInput[],
  opts: PreprocessOptions,
): Promise<{ data: Float32Array; shape: [number, 3, number, number] }> {
  return withCallerStack(async () => {
    if (!Array.isArray(inputs)) throw new TypeError('preprocessImages: inputs must be an array')
    const { crop, luts } = pixelParams(opts, 'preprocessImages')
    const maxPixels = checkMaxPixels(opts)
    const concurrency = opts.concurrency ?? 4
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`preprocessImages: concurrency must be an integer >= 1, got ${concurrency}`)
    const plane = 3 * crop * crop
    const data = new Float32Array(inputs.length * plane)
    let next = 0
    const failed: { index: number; error: unknown }[] = []
    const worker = async () => {
      // Stop taking new inputs after a failure; of the failures seen, report the lowest index.
      while (failed.length === 0 && next < inputs.length) {
        const index = next++
        try {
          const rgb = await decode(inputs[index]!, maxPixels, `input ${index}`, opts.autoOrient)
          const resized = await resizeShortestEdge(rgb, opts.size, `input ${index}`, inputs[index]!)
          writePixelValues(resized, crop, luts, data, index * plane)
        } catch (error) {
          failed.push({ index, error })
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, inputs.length) }, worker))
    if (failed.length > 0) throw failed.reduce((a, b) => (b.index < a.index ? b : a)).error
    return { data, shape: [inputs.length, 3, crop, crop] as [number, 3, number, number] }
  })
}

/** The crop + rescale + normalise part, on an already resized RGB image: returns [3, crop, crop] float32. */
export function rgbToPixelValues(rgb: Uint8Array, width: number, height: number, opts: PixelValueOptions): Float32Array {
  if (!(rgb instanceof Uint8Array)) throw new TypeError('rgbToPixelValues: rgb must be a Uint8Array')
  checkDims(width, height, 'rgbToPixelValues')
  if (rgb.length !== width * height * 3) throw new RangeError(`rgbToPixelValues: expected ${width * height * 3} bytes for ${width}x${height} RGB, got ${rgb.length}`)
  const { crop, luts } = pixelParams(opts, 'rgbToPixelValues')
  const out = new Float32Array(3 * crop * crop)
  writePixelValues({ data: rgb, width, height }, crop, luts, out, 0)
  return out
}

/** Hugging Face's shortest-edge size: the short side becomes `size`, the long side int(size * long / short). */
export function shortestEdgeSize(width: number, height: number, size: number): [number, number] {
  const scaled = (long: number, short: number) => Math.floor((size * long) / short)
  return width <= height ? [size, scaled(height, width)] : [scaled(width, height), size]
}

function describe(input: ImageInput, label: string): string {
  if (typeof input === 'string') return `${label} (${input})`
  if (input instanceof Uint8Array) return `${label} (${input.byteLength}-byte buffer)`
  return `${label} (raw ${input.width}x${input.height}x${input.channels})`
}

function checkMaxPixels(opts: LoadOptions): number {
  if (opts === null || typeof opts !== 'object') throw new TypeError('image options must be an object')
  const maxPixels = opts.maxPixels ?? DEFAULT_MAX_PIXELS
  if (typeof maxPixels !== 'number' || !(maxPixels >= 1)) throw new RangeError(`maxPixels must be a number >= 1, got ${maxPixels}`)
  return maxPixels
}

async function decode(input: ImageInput, maxPixels: number, label: string, autoOrient = false): Promise<RgbImage> {
  if (typeof input !== 'string' && !(input instanceof Uint8Array)) {
    if (input === null || typeof input !== 'object' || !(input.data instanceof Uint8Array)) {
      throw new TypeError(`${label}: expected a file path, a Buffer/Uint8Array or { data, width, height, channels }`)
    }
    const { data, width, height, channels } = input
    checkDims(width, height, label)
    if (channels !== 3 && channels !== 4) throw new RangeError(`${label}: raw channels must be 3 or 4, got ${channels}`)
    if (data.length !== width * height * channels) {
      throw new RangeError(`${describe(input, label)}: expected ${width * height * channels} bytes, got ${data.length}`)
    }
    if (width * height > maxPixels) throw new SemicapError('E_IMAGE', `${describe(input, label)}: ${width * height} pixels exceeds the limit of ${maxPixels}`)
    return { data: toRgb(data, width, height, channels), width, height }
  }

  const where = describe(input, label)
  try {
    const source = typeof input === 'string' ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength)
    const { data, info } = await sharp(source, {
      // 'error' also fails on truncated files, like PIL; mere warnings (odd but decodable JPEGs) pass.
      failOn: 'error',
      limitInputPixels: Number.isFinite(maxPixels) ? Math.floor(maxPixels) : false,
      pages: 1,
      page: 0,
      autoOrient,
    })
      // CMYK, grey and 16-bit become 8-bit sRGB; removeAlpha drops alpha without compositing, like convert('RGB').
      .toColourspace('srgb')
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true })
    return { data: toRgb(data, info.width, info.height, info.channels), width: info.width, height: info.height }
  } catch (err) {
    if (err instanceof SemicapError) throw err
    throw new SemicapError('E_IMAGE', `${where}: ${(err as Error).message}`, { cause: err })
  }
}

async function resizeShortestEdge(img: RgbImage, size: number, label: string, input: ImageInput): Promise<RgbImage> {
  const [width, height] = shortestEdgeSize(img.width, img.height, size)
  if (width === img.width && height === img.height) return img
  if (width < 1 || height < 1) throw new SemicapError('E_IMAGE', `${describe(input, label)}: ${img.width}x${img.height} is too thin to resize to ${size}`)
  try {
    const { data, info } = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 }, limitInputPixels: false })
      // Catmull-Rom cubic, as PIL's BICUBIC; fill: the exact size Hugging Face computes, no aspect rounding of sharp's own.
      .resize(width, height, { kernel: 'cubic', fit: 'fill' })
      .raw()
      .toBuffer({ resolveWithObject: true })
    return { data: toRgb(data, info.width, info.height, info.channels), width: info.width, height: info.height }
  } catch (err) {
    throw new SemicapError('E_IMAGE', `${describe(input, label)}: resize failed: ${(err as Error).message}`, { cause: err })
  }
}

/** Any 1-4 channel interleaved uint8 image -> RGB (grey replicated, alpha dropped). */
function toRgb(data: Uint8Array, width: number, height: number, channels: number): Uint8Array {
  if (channels === 3) return data
  const n = width * height
  const out = new Uint8Array(n * 3)
  for (let i = 0; i < n; i++) {
    if (channels <= 2) {
      const v = data[i * channels]!
      out[i * 3] = out[i * 3 + 1] = out[i * 3 + 2] = v
    } else {
      out[i * 3] = data[i * channels]!
      out[i * 3 + 1] = data[i * channels + 1]!
      out[i * 3 + 2] = data[i * channels + 2]!
    }
  }
  return out
}

function checkDims(width: number, height: number, what: string): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`${what}: width and height must be positive integers, got ${width}x${height}`)
  }
}

/** Validated crop size and per-channel lookup tables byte -> normalised float. */
function pixelParams(opts: PixelValueOptions, what: string): { crop: number; luts: Float32Array[] } {
  if (opts === null || typeof opts !== 'object') throw new TypeError(`${what}: options { size } are required`)
  const { size, cropSize = size, mean = CLIP_MEAN, std = CLIP_STD } = opts
  for (const [name, v] of [['size', size], ['cropSize', cropSize]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`${what}: ${name} must be a positive integer, got ${v}`)
  }
  for (const [name, v] of [['mean', mean], ['std', std]] as const) {
    if (!Array.isArray(v) || v.length !== 3 || v.some((x) => typeof x !== 'number' || !Number.isFinite(x))) {
      throw new TypeError(`${what}: ${name} must be 3 finite numbers`)
    }
  }
  if (std.some((s) => s === 0)) throw new RangeError(`${what}: std must not contain 0`)
  const luts = [0, 1, 2].map((c) => Float32Array.from({ length: 256 }, (_, v) => (v / 255 - mean[c]!) / std[c]!))
  return { crop: cropSize, luts }
}

/**
 * Center crop as transformers' center_crop: offset floor((h - crop) / 2), which is also right when the image is
 * smaller than the crop (then it sits at ceil((crop - h) / 2) in a zero-filled frame).
 */
function writePixelValues(img: RgbImage, crop: number, luts: Float32Array[], out: Float32Array, offset: number): void {
  const { data, width, height } = img
  const top = Math.floor((height - crop) / 2)
  const left = Math.floor((width - crop) / 2)
  const plane = crop * crop
  for (let c = 0; c < 3; c++) {
    const lut = luts[c]!
    const base = offset + c * plane
    for (let y = 0; y < crop; y++) {
      const sy = y + top
      for (let x = 0; x < crop; x++) {
        const sx = x + left
        const inside = sy >= 0 && sy < height && sx >= 0 && sx < width
        out[base + y * crop + x] = lut[inside ? data[(sy * width + sx) * 3 + c]! : 0]!
      }
    }
  }
}
