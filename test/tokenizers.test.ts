import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { encode as r50kEncode } from 'gpt-tokenizer/encoding/r50k_base'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SemicapError } from '../lib/errors.js'
import {
  BYTE_TO_UNICODE,
  BytePairEncoding,
  ClipTokenizer,
  Gpt2Tokenizer,
  clipNormalize,
  saveGpt2TokenizerFiles,
  symbolsToBytes,
  trainByteLevelBpe,
} from '../lib/tokenizers/index.js'

// Shared data lives beside the checkout; it is read from there, never copied into the project.
const CLIP_DIR = new URL('../../shared/clip-tokenizer/', import.meta.url)

let tmp: string
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'semicap-tok-'))
})
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true })
})

describe('byte table', () => {
  it('is GPT-2 bytes_to_unicode: 256 distinct printable symbols, space is Ġ', () => {
    expect(new Set(BYTE_TO_UNICODE).size).toBe(256)
    expect(BYTE_TO_UNICODE[0x20]).toBe('Ġ')
    expect(BYTE_TO_UNICODE[0x0a]).toBe('Ċ')
    expect(BYTE_TO_UNICODE[0x41]).toBe('A')
    expect(Array.from(symbolsToBytes(BYTE_TO_UNICODE.join(''))!)).toEqual([...Array(256).keys()])
  })
})

describe('BytePairEncoding', () => {
  it('merges lowest rank first and all non-overlapping occurrences left to right', () => {
    const bpe = new BytePairEncoding([
      ['a', 'a'],
      ['b', 'c'],
      ['aa', 'a'],
    ])
    expect(bpe.apply(['a', 'a', 'a'])).toEqual(['aaa']) // (a a) first, then (aa a)
    expect(bpe.apply(['a', 'a', 'a', 'a'])).toEqual(['aa', 'aa'])
    expect(bpe.apply(['b', 'c', 'a', 'b', 'c'])).toEqual(['bc', 'a', 'bc'])
    expect(bpe.apply(['x'])).toEqual(['x'])
    expect(bpe.apply([])).toEqual([])
  })

  // A quadratic merge loop would take minutes on 100,000 symbols; the heap-based one takes well under a second, so
  // the generous per-test timeout (not a timing assertion) is what catches a regression.
  it('handles a long word (100,000 symbols)', { timeout: 30_000 }, () => {
    const bpe = new BytePairEncoding([['a', 'a'], ['aa', 'aa'], ['aaaa', 'aaaa']])
    const out = bpe.apply(Array(100_000).fill('a'))
    expect(out.length).toBe(100_000 / 8)
    expect(out.every((p) => p === 'aaaaaaaa')).toBe(true)
  })
})

describe('ClipTokenizer', () => {
  it('loads vocab.json + merges.txt and matches every golden encoding', async () => {
    const tok = await ClipTokenizer.load(CLIP_DIR)
    expect(tok.bosId).toBe(49406)
    expect(tok.eosId).toBe(49407)
    expect(tok.vocabSize).toBe(49408)
    const golden = JSON.parse(await readFile(new URL('golden-encodings.json', CLIP_DIR), 'utf8')) as { text: string; ids: number[] }[]
    expect(golden.length).toBeGreaterThan(0)
    for (const { text, ids } of golden) expect(tok.encode(text), text).toEqual(ids)
  })

  it('loads tokenizer.json (merges as strings or as pairs) the same way', async () => {
    const vocab = JSON.parse(await readFile(new URL('vocab.json', CLIP_DIR), 'utf8')) as Record<string, number>
    const merges = (await readFile(new URL('merges.txt', CLIP_DIR), 'utf8')).split('\n').slice(1).filter(Boolean)
    const { '<|startoftext|>': bos, '<|endoftext|>': eos, ...plain } = vocab
    const added = [
      { id: bos, content: '<|startoftext|>', special: true },
      { id: eos, content: '<|endoftext|>', special: true },
    ]
    const golden = JSON.parse(await readFile(new URL('golden-encodings.json', CLIP_DIR), 'utf8')) as { text: string; ids: number[] }[]
    for (const [name, m] of [
      ['strings', merges],
      ['pairs', merges.map((s) => s.split(' '))],
    ] as const) {
      const dir = join(tmp, `clip-${name}`)
      await mkdir(dir, { recursive: true })
      await writeFile(join(dir, 'tokenizer.json'), JSON.stringify({ added_tokens: added, model: { type: 'BPE', vocab: plain, merges: m, end_of_word_suffix: '</w>' } }))
      const tok = await ClipTokenizer.load(dir)
      for (const { text, ids } of golden) expect(tok.encode(text), `${name}: ${text}`).toEqual(ids)
    }
  })

  it('normalises like CLIP: entities, whitespace, case', async () => {
    expect(clipNormalize('  Tom &amp; Jerry&#39;s\n\tCAT &lt;3 &#x263A; ')).toBe("tom & jerry's cat <3 ☺")
    const tok = await ClipTokenizer.load(fileURLToPath(CLIP_DIR))
    expect(tok.encode('A  DOG &amp; a cat')).toEqual(tok.encode('a dog & a cat'))
  })

  it('decodes back to the normalised text', async () => {
    const tok = await ClipTokenizer.load(CLIP_DIR)
    // Word ends become spaces, so punctuation comes back spaced, as in Hugging Face's CLIPTokenizer.decode.
    expect(tok.decode(tok.encode('A photo of a CAT.'))).toBe('a photo of a cat .')
    for (const text of ['grey - haired woman , holding an umbrella ; smiling', 'café 😀 日本', 'the year 2 0 1 6 !!']) {
      expect(tok.decode(tok.encode(text))).toBe(text)
    }
    const ids = tok.encode('hi')
    expect(tok.decode(ids, { skipSpecialTokens: false })).toBe('<|startoftext|>hi <|endoftext|>')
    expect(tok.decode(BigInt64Array.from(ids.map(BigInt)))).toBe('hi')
    expect(() => tok.decode([1e9])).toThrow(RangeError)
  })

  it('encodeBatch pads with eos by default, truncates keeping eos last, reports lengths', async () => {
    const tok = await ClipTokenizer.load(CLIP_DIR)
    const long = Array(100).fill('dog').join(' ')
    const batch = tok.encodeBatch(['a cat', long, ''], { maxLength: 10 })
    expect(batch.shape).toEqual([3, 10])
    expect(batch.ids).toBeInstanceOf(BigInt64Array)
    expect(batch.lengths).toEqual([4, 10, 2])
    const row = (b: number) => Array.from(batch.ids.subarray(b * 10, b * 10 + 10), Number)
    expect(row(0)).toEqual([...tok.encode('a cat'), ...Array(6).fill(tok.eosId)])
    expect(row(1)[0]).toBe(tok.bosId)
    expect(row(1)[9]).toBe(tok.eosId)
    expect(row(1).slice(1, 9)).toEqual(tok.encode(long).slice(1, 9))
    expect(row(2)).toEqual([tok.bosId, ...Array(9).fill(tok.eosId)])

    const padded = tok.encodeBatch(['a cat', 'two dogs playing'], { padId: 0, padding: 'longest' })
    expect(padded.shape).toEqual([2, 5])
    expect(Array.from(padded.ids.subarray(0, 5), Number)).toEqual([...tok.encode('a cat'), 0])
    expect(tok.encodeBatch(['x']).shape).toEqual([1, 77])
    expect(() => tok.encodeBatch(['x'], { maxLength: 1 })).toThrow(RangeError)
    expect(() => tok.encodeBatch([3 as unknown as string])).toThrow(TypeError)
  })

  it('reports missing files as E_TOKENIZER', async () => {
    await expect(ClipTokenizer.load(join(tmp, 'nope'))).rejects.toMatchObject({ code: 'E_TOKENIZER' })
    const half = join(tmp, 'half')
    await mkdir(half, { recursive: true })
    await writeFile(join(half, 'vocab.json'), '{}')
    await expect(ClipTokenizer.load(half)).rejects.toThrow(/merges\.txt/)
  })
})

const SAMPLES = [
  'Hello world',
  'A photo of a red circle to the left of a small blue square.',
  "  leading spaces, trailing   ",
  "it's what they'd've said: don't!!! ... (really?) [x] {y} #tag @user 100% $5.99",
  'numbers 1234567 and 3.14159, years 1999-2024',
  'café naïve résumé — “quotes” ‘single’ Ünïcödé',
  '日本語のテキスト 中文 한국어 Ελληνικά русский',
  'emoji 😀🎉👍🏽 family 👨‍👩‍👧 flag 🇫🇷',
  'tabs\tand\nnewlines\n\n  indented\r\nwindows',
  '',
  ' ',
  '<|endoftext|> is plain text here',
]

describe('Gpt2Tokenizer (package ranks)', () => {
  it('agrees with gpt-tokenizer r50k_base and round-trips', async () => {
    const tok = await Gpt2Tokenizer.load()
    expect(tok.source).toBe('gpt-tokenizer:r50k_base')
    expect(tok.eosId).toBe(50256)
    expect(tok.vocabSize).toBe(50257)
    for (const s of SAMPLES) {
      const ids = tok.encode(s)
      const expected = s.includes('<|endoftext|>') ? r50kEncode(s, { disallowedSpecial: new Set() }) : r50kEncode(s)
      expect(ids, s).toEqual(expected)
      expect(tok.decode(ids), s).toBe(s)
    }
    expect(tok.encode('Hello world')).toEqual([15496, 995])
  })

  it('matches special tokens only when allowed', async () => {
    const tok = await Gpt2Tokenizer.fromPackage()
    expect(tok.encode('a<|endoftext|>b', { allowSpecial: true })).toEqual([...tok.encode('a'), 50256, ...tok.encode('b')])
    expect(tok.encode('a<|endoftext|>b')).not.toContain(50256)
    expect(tok.decode([...tok.encode('hi'), 50256], { skipSpecialTokens: true })).toBe('hi')
    expect(tok.decode([...tok.encode('hi'), 50256])).toBe('hi<|endoftext|>')
  })

  it('replaces invalid UTF-8 when a character is cut between tokens', async () => {
    const tok = await Gpt2Tokenizer.fromPackage()
    const ids = tok.encode('😀')
    expect(ids.length).toBeGreaterThan(1)
    expect(tok.decode(ids.slice(0, 1))).toContain('\ufffd')
    expect(() => tok.decode([60000])).toThrow(RangeError)
    expect(() => tok.decode([1.5])).toThrow(TypeError)
    expect(() => tok.encode(42 as unknown as string)).toThrow(TypeError)
  })

  it('exported as vocab.json + merges.txt, a folder loads and encodes identically', async () => {
    const pkg = await Gpt2Tokenizer.fromPackage()
    const dir = join(tmp, 'gpt2')
    await saveGpt2TokenizerFiles(dir, {
      vocab: Object.fromEntries(pkg.vocab),
      merges: pkg.merges.map(([a, b]) => `${a} ${b}`),
    })
    expect((await readFile(join(dir, 'merges.txt'), 'utf8')).split('\n', 2)).toEqual(['#version: 0.2', 'Ġ t'])
    const tok = await Gpt2Tokenizer.load(dir)
    expect(tok.source).toBe(dir)
    expect(tok.merges.length).toBe(50000)
    expect(tok.eosId).toBe(50256)
    for (const s of SAMPLES) expect(tok.encode(s), s).toEqual(pkg.encode(s))
  })

  it('falls back to the package only when allowed', async () => {
    const empty = join(tmp, 'empty')
    await mkdir(empty, { recursive: true })
    expect((await Gpt2Tokenizer.load(empty)).source).toBe('gpt-tokenizer:r50k_base')
    const err = await Gpt2Tokenizer.load(empty, { packageFallback: false }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(SemicapError)
    expect((err as SemicapError).code).toBe('E_TOKENIZER')
  })
})

describe('trainByteLevelBpe', () => {
  const colours = ['red', 'green', 'blue', 'yellow', 'purple']
  const shapes = ['circle', 'square', 'triangle', 'star']
  const relations = ['to the left of', 'to the right of', 'above', 'below']
  const corpus: string[] = []
  for (const c1 of colours)
    for (const s1 of shapes)
      for (const r of relations) corpus.push(`a ${c1} ${s1} ${r} a ${colours[(colours.indexOf(c1) + 2) % 5]} ${shapes[(shapes.indexOf(s1) + 1) % 4]}.`)

  it('learns frequent words as single tokens; saved files reload and round-trip', async () => {
    const trained = trainByteLevelBpe(corpus, { vocabSize: 1000, specialTokens: ['<|endoftext|>', '<|pad|>'] })
    const ids = Object.values(trained.vocab).sort((a, b) => a - b)
    expect(ids).toEqual([...ids.keys()]) // contiguous ids from 0
    expect(ids.length).toBeLessThan(1000) // the corpus runs out of pairs seen twice first
    expect(trained.vocab['<|pad|>']).toBe(ids.length - 1)
    expect(trained.vocab['<|endoftext|>']).toBe(ids.length - 2)
    expect(trained.vocab['!']).toBe(0) // byte tokens in GPT-2's order

    const dir = join(tmp, 'trained')
    await saveGpt2TokenizerFiles(dir, trained)
    expect((await readFile(join(dir, 'merges.txt'), 'utf8')).startsWith('#version: 0.2\n')).toBe(true)
    const tok = await Gpt2Tokenizer.load(dir, { packageFallback: false })
    expect(tok.vocabSize).toBe(ids.length)
    expect(tok.eosId).toBe(trained.vocab['<|endoftext|>'])
    for (const w of [...colours, ...shapes, 'left', 'right', 'above', 'below', 'the']) {
      expect(tok.encode(` ${w}`), w).toHaveLength(1)
    }
    for (const s of [...corpus.slice(0, 5), 'an unseen sentence with ünïcödé and 😀!', '']) expect(tok.decode(tok.encode(s))).toBe(s)
    expect(tok.encode(corpus[0]!).length).toBeLessThan(corpus[0]!.length / 3)
  })

  it('is deterministic and honours the size limit and minFrequency', () => {
    const a = trainByteLevelBpe(corpus, { vocabSize: 270 })
    const b = trainByteLevelBpe(corpus, { vocabSize: 270 })
    expect(a).toEqual(b)
    expect(Object.keys(a.vocab).length).toBe(270)
    expect(a.merges.length).toBe(13)
    // Pairs seen once stop training by default; with minFrequency 1, count ties go to the smaller (a, b) ids.
    expect(trainByteLevelBpe(['ab ab', 'cd'], { vocabSize: 1000 }).merges).toEqual(['a b'])
    expect(trainByteLevelBpe(['ab ab', 'cd'], { vocabSize: 1000, minFrequency: 1 }).merges).toEqual(['a b', 'c d', 'Ġ ab'])
    expect(() => trainByteLevelBpe(corpus, { vocabSize: 100 })).toThrow(RangeError)
  })
})
