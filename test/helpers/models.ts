// Tiny test models: the golden CLIP and GPT-2 (random weights, HF layout) copied into a folder, the GPT-2 copy given a
// real byte-level BPE tokenizer trained here so that captions decode to text. Built once per process per folder.
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { saveGpt2TokenizerFiles, trainByteLevelBpe, type TrainedBpe } from '../../lib/tokenizers/index.js'
import { goldenDir, tempDir } from './paths.js'

export interface TinyModels {
  clipDir: string
  gpt2Dir: string
}

/** GPT-2's (and the golden config's) vocabulary size; the tokenizer fills it exactly so every id decodes. */
const VOCAB = 1000
const EOS = '<|endoftext|>'

/** A few hundred caption-like sentences, deterministic, ending in '.' (and a few other '.'-runs: '...', '.)'). */
export function captionCorpus(): string[] {
  const colours = ['red', 'green', 'blue', 'yellow', 'purple', 'orange', 'black', 'white', 'brown', 'grey', 'pink', 'golden']
  const things = [
    'circle', 'square', 'triangle', 'star', 'cross', 'heart', 'dog', 'cat', 'horse', 'bird', 'car', 'truck', 'bicycle',
    'train', 'boat', 'plane', 'table', 'chair', 'window', 'door', 'tree', 'flower', 'house', 'bridge', 'river', 'mountain',
    'kitchen', 'street', 'beach', 'field', 'person', 'woman', 'man', 'child', 'player', 'pizza', 'sandwich', 'banana',
  ]
  const relations = ['to the left of', 'to the right of', 'above', 'below', 'next to', 'near', 'behind', 'in front of', 'on top of', 'beside']
  const verbs = ['sitting', 'standing', 'running', 'walking', 'parked', 'lying', 'flying', 'jumping', 'waiting', 'sleeping', 'playing', 'eating']
  const sizes = ['small', 'large', 'tiny', 'big', 'old', 'young', 'wooden', 'shiny', 'empty', 'crowded']
  const extras = (
    'umbrella backpack handbag suitcase frisbee skis snowboard kite racket bottle glass cup fork knife spoon bowl apple ' +
    'orange broccoli carrot donut cake couch bed toilet television laptop mouse remote keyboard phone microwave oven ' +
    'toaster sink refrigerator book clock vase scissors teddy toothbrush giraffe zebra elephant bear sheep cow ' +
    'motorcycle airplane bus traffic light hydrant sign parking meter bench skateboard surfboard baseball glove bat ' +
    'mirror curtain painting lamp pillow blanket carpet fence garden grass sand snow water wave cloud sky sunset ' +
    'morning evening night road sidewalk building tower church castle station airport market restaurant office'
  ).split(' ')
  const ends = ['.', '.', '.', '.', '...', '.)', '."', '!']
  const out: string[] = []
  const pick = <T>(xs: readonly T[], i: number): T => xs[((i % xs.length) + xs.length) % xs.length]!
  for (let i = 0; i < 600; i++) {
    const c1 = pick(colours, i), c2 = pick(colours, i * 7 + 3)
    const t1 = pick(things, i * 5 + 1), t2 = pick(things, i * 11 + 4)
    const r = pick(relations, i * 3), v = pick(verbs, i * 13 + 2), z = pick(sizes, i * 17 + 5), e = pick(ends, i)
    const n = (i % 7) + 2
    switch (i % 5) {
      case 0: out.push(`A ${z} ${c1} ${t1} ${r} a ${c2} ${t2}${e}`); break
      case 1: out.push(`a ${c1} ${t1} is ${v} ${r} the ${z} ${t2}${e}`); break
      case 2: out.push(`There are ${n} ${c1} ${t1}s ${v} near a ${t2}${e}`); break
      case 3: out.push(`The ${t1} (${c1}) is ${v} ${r} ${n} ${z} ${t2}s${e}`); break
      default: out.push(`Two ${t1}s, one ${c1} and one ${c2}, ${v} by the ${z} ${t2}${e}`)
    }
    if (i < extras.length) out.push(`A ${pick(sizes, i)} ${extras[i]} with a ${pick(extras, i * 7 + 3)} and ${pick(extras, i * 3 + 1)}s${pick(ends, i + 1)}`)
  }
  return out
}

let trained: TrainedBpe | undefined

/** A BPE with exactly VOCAB ids and `<|endoftext|>` as the last one (VOCAB - 1 = the golden eos_token_id 999). */
export function tinyTokenizer(): TrainedBpe {
  if (trained) return trained
  const corpus = captionCorpus()
  // Merge while any pair is left; if the corpus runs out of pairs first, unused `<|...|>` specials fill the gap so
  // that the end token still lands on the last id.
  let t = trainByteLevelBpe(corpus, { vocabSize: VOCAB, minFrequency: 1 })
  const learned = Object.keys(t.vocab).length - 1
  if (learned < VOCAB - 1) {
    const fillers = Array.from({ length: VOCAB - 1 - learned }, (_, k) => `<|unused${k}|>`)
    t = trainByteLevelBpe(corpus, { vocabSize: VOCAB, minFrequency: 1, specialTokens: [...fillers, EOS] })
  }
  const ids = Object.values(t.vocab)
  if (ids.length !== VOCAB || Math.max(...ids) !== VOCAB - 1 || t.vocab[EOS] !== VOCAB - 1) throw new Error(`tiny tokenizer: expected ${VOCAB} ids with ${EOS} last`)
  trained = t
  return t
}

const made = new Map<string, Promise<TinyModels>>()
const ownDirs: string[] = []
process.once('exit', () => {
  for (const d of ownDirs) rmSync(d, { recursive: true, force: true })
})

async function build(dir: string): Promise<TinyModels> {
  const clipDir = join(dir, 'clip')
  const gpt2Dir = join(dir, 'gpt2')
  mkdirSync(dir, { recursive: true })
  cpSync(join(goldenDir, 'clip'), clipDir, { recursive: true })
  cpSync(join(goldenDir, 'gpt2'), gpt2Dir, { recursive: true })
  const tok = tinyTokenizer()
  await saveGpt2TokenizerFiles(gpt2Dir, tok)
  // The end token is 999 already; say so explicitly so the config and the tokenizer cannot drift apart.
  const cfgPath = join(gpt2Dir, 'config.json')
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>
  cfg.eos_token_id = tok.vocab[EOS]
  cfg.bos_token_id = tok.vocab[EOS]
  writeFileSync(cfgPath, JSON.stringify(cfg, null, 2) + '\n')
  return { clipDir, gpt2Dir }
}

/**
 * Copies the golden clip/ and gpt2/ into `dir` (a fresh temp folder, removed at exit, when omitted) and writes a
 * trained tokenizer into the GPT-2 copy. Cached per process and folder.
 */
export function makeTinyModels(dir?: string): Promise<TinyModels> {
  const key = dir === undefined ? '' : resolve(dir)
  let p = made.get(key)
  if (!p) {
    let target = key
    if (!target) {
      target = tempDir('semicap-models-')
      ownDirs.push(target)
    }
    p = build(target)
    made.set(key, p)
  }
  return p
}

/**
 * `n` deterministic PNGs of varied sizes and content (noise, gradients, flat colours), encoded with sharp. Sizes
 * differ from the model's 32x32 so resizing and cropping run.
 */
export async function makePngs(n: number): Promise<Buffer[]> {
  const { default: sharp } = await import('sharp')
  const out: Buffer[] = []
  for (let i = 0; i < n; i++) {
    const width = 24 + ((i * 13) % 41)
    const height = 20 + ((i * 29) % 37)
    const raw = Buffer.alloc(width * height * 3)
    let s = (i + 1) * 2654435761
    for (let y = 0; y < height; y++)
      for (let x = 0; x < width; x++)
        for (let c = 0; c < 3; c++) {
          s = (Math.imul(s, 1103515245) + 12345) >>> 0
          const noise = s >>> 24
          const v = i % 3 === 0 ? noise : i % 3 === 1 ? ((x * 255) / width + c * 60 + i * 20) % 256 : ((i * 50 + c * 90) % 256) ^ (((x >> 2) + (y >> 2)) & 1 ? 0 : 0x40)
          raw[(y * width + x) * 3 + c] = v
        }
    out.push(await sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer())
  }
  return out
}

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** IEEE half bits of a float32 value, rounded to nearest even (overflow to infinity, subnormals kept). */
export function toFloat16Bits(x: number): number {
  f32[0] = x
  const b = u32[0]!
  const sign = (b >>> 16) & 0x8000
  const exp = (b >>> 23) & 0xff
  let mant = b & 0x7fffff
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0)
  const e = exp - 127 + 15
  if (e >= 0x1f) return sign | 0x7c00
  if (e <= 0) {
    if (e < -10) return sign
    mant |= 0x800000
    const shift = 14 - e
    let half = mant >>> shift
    const rem = mant & ((1 << shift) - 1)
    const mid = 1 << (shift - 1)
    if (rem > mid || (rem === mid && half & 1)) half++
    return sign | half
  }
  let half = (e << 10) | (mant >>> 13)
  const rem = mant & 0x1fff
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++ // a carry into the exponent is the right answer
  return sign | half
}

/** The float32 value of IEEE half bits (exact). */
export function fromFloat16Bits(h: number): number {
  const sign = h & 0x8000 ? -1 : 1
  const e = (h >>> 10) & 0x1f
  const m = h & 0x3ff
  if (e === 0) return sign * m * 2 ** -24
  if (e === 0x1f) return m ? NaN : sign * Infinity
  return sign * (1 + m / 1024) * 2 ** (e - 15)
}

/** bfloat16 bits of a float32 value, rounded to nearest even. */
export function toBfloat16Bits(x: number): number {
  f32[0] = x
  const b = u32[0]!
  if ((b & 0x7fffffff) > 0x7f800000) return (b >>> 16) | 0x40
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff
}

export function fromBfloat16Bits(h: number): number {
  u32[0] = h << 16
  return f32[0]!
}

/**
 * The tiny models set up for captioning with text: a copy of the tiny CLIP in `work` that reads text with the
 * GPT-2 tokenizer (the same 1000 ids; config semicap.tokenizer = 'gpt2', as the demo's CLIP does), and the GPT-2.
 */
export async function makeTinyCaptionModels(work: string): Promise<TinyModels> {
  const tiny = await makeTinyModels()
  const clipDir = join(work, 'clip')
  cpSync(tiny.clipDir, clipDir, { recursive: true })
  for (const f of ['vocab.json', 'merges.txt']) cpSync(join(tiny.gpt2Dir, f), join(clipDir, f))
  const cfg = JSON.parse(readFileSync(join(clipDir, 'config.json'), 'utf8')) as Record<string, unknown>
  writeFileSync(join(clipDir, 'config.json'), JSON.stringify({ ...cfg, semicap: { tokenizer: 'gpt2' } }))
  return { clipDir, gpt2Dir: tiny.gpt2Dir }
}

/** Coloured-square PNGs in `work`, one per colour, each with the caption `caption(name)`. */
export async function makeColourSquares(
  work: string,
  colours: [string, [number, number, number]][],
  caption: (name: string) => string,
): Promise<{ id: string; image: string; captions: string[] }[]> {
  const { default: sharp } = await import('sharp')
  const out = []
  for (const [i, [name, rgb]] of colours.entries()) {
    const file = join(work, `${name}.png`)
    const raw = Buffer.alloc(40 * 40 * 3, 128)
    for (let y = 5 + i * 3; y < 25 + i * 3; y++) for (let x = 8; x < 30; x++) raw.set(rgb, (y * 40 + x) * 3)
    await sharp(raw, { raw: { width: 40, height: 40, channels: 3 } }).png().toFile(file)
    out.push({ id: name, image: file, captions: [caption(name)] })
  }
  return out
}
