// Replays the fuzzers' corpora (fuzz/corpus, fuzz/corpus-torch: inputs libFuzzer found interesting, fuzz/seeds,
// fuzz/seeds-torch: valid files and the hostile cases) through the addon's weights reader (safetensors, torch zip),
// and fuzzes the JS loaders of config.json, vocab.json, merges.txt and tokenizer.json with seeded random
// mutations. Each input either loads or fails with a SemicapError (E_CHECKPOINT for weights; E_CONFIG /
// E_TOKENIZER, or a TypeError / RangeError, for the JS loaders): never a crash, another error type, or a hang.
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { ClipTokenizer, Gpt2Tokenizer, SemicapError, loadSafetensors, readSafetensorsHeader } from '../lib/index.js'
import { readClipConfig, readGpt2Config } from '../lib/config.js'
import { mulberry32 } from '../lib/data/split.js' // seeded, so every run mutates the same way
import { makeTinyModels, type TinyModels } from './helpers/models.js'
import { goldenDir, repoRoot, tempDir } from './helpers/paths.js'

let tmp: string
beforeAll(() => {
  tmp = tempDir('semicap-fuzzreg-')
})

// Each weights corpus: where its files are, the name a copy gets (the loader dispatches by content, and a message must
// name the path it was given), and the least the replay must see.
const CORPORA = [
  {
    label: 'safetensors',
    corpus: 'fuzz/corpus',
    seeds: 'fuzz/seeds',
    copyAs: (i: number) => `c${i}.safetensors`,
    maxFiles: 200,
    minFiles: 40,
    minOk: 5,
    minRefused: 30,
  },
  {
    label: 'torch checkpoints',
    corpus: 'fuzz/corpus-torch',
    seeds: 'fuzz/seeds-torch',
    copyAs: (i: number) => `t${i}.pt`,
    maxFiles: 300,
    minFiles: 60,
    minOk: 10,
    minRefused: 40,
  },
]

function corpusFiles(dirs: string[]): string[] {
  const out: string[] = []
  for (const d of dirs) {
    const dir = join(repoRoot, d)
    let names: string[] = []
    try {
      names = readdirSync(dir)
    } catch {
      continue
    }
    for (const n of names.sort()) if (statSync(join(dir, n)).isFile()) out.push(join(dir, n))
  }
  return out
}

describe.each(CORPORA)('$label: the fuzz corpus replayed through the addon', (c) => {
  it(`${c.corpus} is small enough to commit (< ${c.maxFiles} files, < 1 MB)`, () => {
    const files = readdirSync(join(repoRoot, c.corpus))
    expect(files.length).toBeGreaterThan(20)
    expect(files.length).toBeLessThan(c.maxFiles)
    expect(files.reduce((n, f) => n + statSync(join(repoRoot, c.corpus, f)).size, 0)).toBeLessThan(1 << 20)
  })

  it('every input reads consistently, or fails with E_CHECKPOINT naming the file', async () => {
    const files = corpusFiles([c.corpus, c.seeds])
    expect(files.length).toBeGreaterThan(c.minFiles)
    let ok = 0
    let refused = 0
    for (const [i, f] of files.entries()) {
      // Copied under a plain name: the reader maps the file, and the message must name the path it was given.
      const path = join(tmp, c.copyAs(i))
      writeFileSync(path, readFileSync(f))
      const header = await readSafetensorsHeader(path).then(
        (h) => h,
        (e: unknown) => e,
      )
      if (header instanceof Error) {
        expect(header, f).toBeInstanceOf(SemicapError)
        expect((header as SemicapError).code, `${f}: ${header.message}`).toBe('E_CHECKPOINT')
        expect(header.message).toContain(path)
        // The full loader refuses it the same way.
        await expect(loadSafetensors(path), f).rejects.toMatchObject({ code: 'E_CHECKPOINT' })
        refused++
      } else {
        const h = header as Awaited<ReturnType<typeof readSafetensorsHeader>>
        expect(Object.keys(h.tensors).sort(), f).toEqual([...h.names].sort())
        // A file the header reader accepts loads completely, with the shapes the header gives.
        const tensors = await loadSafetensors(path)
        for (const n of h.names) expect(tensors[n]!.shape, `${f} ${n}`).toEqual(h.tensors[n]!.shape)
        // Twice the same answer.
        expect(await readSafetensorsHeader(path), f).toEqual(h)
        ok++
      }
      rmSync(path)
    }
    expect(ok).toBeGreaterThan(c.minOk)
    expect(refused).toBeGreaterThan(c.minRefused)
  })
})

// ------------------------------------------------------------------ JS loaders

const HOSTILE_VALUES: unknown[] = [
  null, true, false, 0, -1, 1.5, -0.5, 1e308, -1e308, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 1e9, 65536, '', 'x', '12',
  '<|endoftext|>', [], [1, 2], ['a', 'b'], {}, { a: 1 }, 'quick_gelu', 'relu', 'BPE', 'WordPiece', '\u0000', '\ud800',
]

type Json = null | boolean | number | string | Json[] | { [k: string]: Json }

/** A random structural change to parsed JSON: replace / delete / add a value somewhere (kept small). */
function mutateJson(value: Json, r: () => number, depth = 0): Json {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!
  if (value !== null && typeof value === 'object' && depth < 6 && r() < 0.85) {
    if (Array.isArray(value)) {
      if (value.length === 0) return [pick(HOSTILE_VALUES) as Json]
      const copy = value.slice()
      const i = Math.floor(r() * copy.length)
      const op = r()
      if (op < 0.15) copy.splice(i, 1)
      else if (op < 0.25) copy.splice(i, 0, pick(HOSTILE_VALUES) as Json)
      else if (op < 0.3) copy.push(...copy.slice(0, 3))
      else copy[i] = mutateJson(copy[i]!, r, depth + 1)
      return copy
    }
    const keys = Object.keys(value)
    const copy: { [k: string]: Json } = { ...value }
    const op = r()
    if (keys.length === 0 || op < 0.1) copy[pick(['model', 'vocab', 'merges', 'type', 'added_tokens', 'n_embd', 'text_config', 'vision_config', 'x'])] = pick(HOSTILE_VALUES) as Json
    else if (op < 0.25) delete copy[pick(keys)]
    else {
      const k = pick(keys)
      copy[k] = mutateJson(copy[k]!, r, depth + 1)
    }
    return copy
  }
  return pick(HOSTILE_VALUES) as Json
}

/** A random textual change: flip bytes, cut, duplicate or splice in a hostile snippet. */
function mutateText(text: string, r: () => number): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!
  const at = Math.floor(r() * (text.length + 1))
  const op = r()
  if (op < 0.2) return text.slice(0, at) // truncated
  if (op < 0.4) {
    const chars = Array.from(text)
    for (let k = 0; k < 1 + Math.floor(r() * 8); k++) chars[Math.floor(r() * chars.length)] = String.fromCharCode(Math.floor(r() * 0x80))
    return chars.join('')
  }
  if (op < 0.55) return text.slice(0, at) + text.slice(at + 1 + Math.floor(r() * 40))
  if (op < 0.7) return text.slice(0, at) + text.slice(Math.max(0, at - 200), at) + text.slice(at)
  const snippets = ['\n', '\r\n', ' ', '  ', '#version: 0.2\n', 'a b c\n', '"', '{', '}', '[', ']', ',', ':', '-1', '1e999', '99999999999', '\u0000', '\ufeff', 'ä', '🙂', '<|endoftext|>']
  return text.slice(0, at) + pick(snippets) + text.slice(at)
}

function mutate(text: string, json: boolean, r: () => number): string {
  if (json && r() < 0.6) {
    try {
      return JSON.stringify(mutateJson(JSON.parse(text) as Json, r))
    } catch {
      // fall through to a textual mutation
    }
  }
  return mutateText(text, r)
}

/** Runs `load`: it must settle (bounded by the caller) with a value or one of the allowed error types. */
async function loadsOrRefuses(load: () => Promise<unknown>, what: string, codes: string[]): Promise<'ok' | 'refused'> {
  try {
    await load()
    return 'ok'
  } catch (err) {
    if (err instanceof SemicapError) {
      expect(codes, `${what}: ${err.message}`).toContain(err.code)
      return 'refused'
    }
    if (err instanceof TypeError || err instanceof RangeError) return 'refused'
    throw new Error(`${what}: unexpected ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`, { cause: err })
  }
}

describe('config and tokenizer loaders under random mutations (seeded, bounded)', () => {
  let models: TinyModels
  const seeds: Record<string, string> = {}
  beforeAll(async () => {
    models = await makeTinyModels()
    seeds.gpt2Config = readFileSync(join(goldenDir, 'gpt2', 'config.json'), 'utf8')
    seeds.clipConfig = readFileSync(join(goldenDir, 'clip', 'config.json'), 'utf8')
    seeds.vocab = readFileSync(join(models.gpt2Dir, 'vocab.json'), 'utf8')
    seeds.merges = readFileSync(join(models.gpt2Dir, 'merges.txt'), 'utf8')
    // tokenizer.json in the Hugging Face layout, with CLIP's specials as added tokens.
    const vocab = JSON.parse(seeds.vocab) as Record<string, number>
    const n = Object.keys(vocab).length
    const merges = seeds.merges.split('\n').filter((l) => l && !l.startsWith('#'))
    seeds.tokenizerJson = JSON.stringify({
      version: '1.0',
      added_tokens: [
        { id: n, content: '<|startoftext|>', special: true },
        { id: vocab['<|endoftext|>'], content: '<|endoftext|>', special: true },
      ],
      model: { type: 'BPE', vocab, merges: merges.slice(0, 300).map((m, i) => (i % 2 ? m : m.split(' '))) },
    })
  })

  /** Iterations per loader, and a wall-clock cap on each single load (a hang fails the test, not the run). */
  const ITERATIONS = 90
  const PER_LOAD_MS = 2000

  async function bounded<T>(what: string, p: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: did not settle within ${PER_LOAD_MS} ms (hang)`)), PER_LOAD_MS)
    })
    const t0 = performance.now()
    try {
      const v = await Promise.race([p, timeout])
      // Synchronous work cannot be interrupted by the timer: check the elapsed time as well.
      const ms = performance.now() - t0
      if (ms > PER_LOAD_MS) throw new Error(`${what}: took ${ms.toFixed(0)} ms (hang)`)
      return v
    } finally {
      clearTimeout(timer)
    }
  }

  it('config.json (GPT-2 and CLIP): loads or E_CONFIG', async () => {
    const r = mulberry32(0xc0ff1c)
    const tally = { ok: 0, refused: 0 }
    for (let i = 0; i < ITERATIONS; i++) {
      for (const [kind, seed, read] of [
        ['gpt2', seeds.gpt2Config!, readGpt2Config],
        ['clip', seeds.clipConfig!, readClipConfig],
      ] as const) {
        const dir = join(tmp, `cfg-${kind}-${i}`)
        mkdirSync(dir, { recursive: true })
        // Several mutations stacked now and then, so that more than one field is off.
        let text = seed
        for (let k = 0, m = 1 + Math.floor(r() * 3); k < m; k++) text = mutate(text, true, r)
        writeFileSync(join(dir, 'config.json'), text)
        const what = `${kind} config #${i}: ${text.slice(0, 200)}`
        tally[await bounded(what, loadsOrRefuses(() => (read as (d: string) => Promise<unknown>)(dir), what, ['E_CONFIG']))]++
        rmSync(dir, { recursive: true })
      }
    }
    console.log(`config loaders: ${tally.ok} loaded, ${tally.refused} refused`)
    // The mutations reach both outcomes: the loader is exercised past its first check.
    expect(tally.ok).toBeGreaterThan(10)
    expect(tally.refused).toBeGreaterThan(10)
  })

  it('vocab.json + merges.txt, and tokenizer.json (GPT-2 and CLIP tokenizers): loads or E_TOKENIZER; a loaded one encodes and decodes', async () => {
    const r = mulberry32(0x70c3)
    const tally = { ok: 0, refused: 0 }
    for (let i = 0; i < ITERATIONS; i++) {
      const dir = join(tmp, `tok-${i}`)
      mkdirSync(dir, { recursive: true })
      const form = i % 3
      if (form === 2) {
        writeFileSync(join(dir, 'tokenizer.json'), mutate(seeds.tokenizerJson!, true, r))
      } else {
        const mutateVocab = form === 0 || r() < 0.3
        writeFileSync(join(dir, 'vocab.json'), mutateVocab ? mutate(seeds.vocab!, true, r) : seeds.vocab!)
        writeFileSync(join(dir, 'merges.txt'), !mutateVocab || r() < 0.3 ? mutate(seeds.merges!, false, r) : seeds.merges!)
      }
      const loads: [string, () => Promise<unknown>][] = [
        [
          'Gpt2Tokenizer',
          async () => {
            const t = await Gpt2Tokenizer.load(dir, { packageFallback: false })
            const ids = t.encode('A red square, next to a blue circle. <|endoftext|> ünïcødé 🙂')
            expect(ids.every((id) => Number.isInteger(id) && id >= 0 && id < t.vocabSize)).toBe(true)
            t.decode([...ids, 0, t.vocabSize - 1, t.eosId])
          },
        ],
        [
          'ClipTokenizer',
          async () => {
            const t = await ClipTokenizer.load(dir)
            const ids = t.encode('A red square, next to a blue circle. ünïcødé 🙂')
            t.decode(ids)
          },
        ],
      ]
      for (const [name, load] of loads) {
        const what = `${name} #${i} (form ${form})`
        tally[await bounded(what, loadsOrRefuses(load, what, ['E_TOKENIZER']))]++
      }
      rmSync(dir, { recursive: true })
    }
    console.log(`tokenizer loaders: ${tally.ok} loaded, ${tally.refused} refused`)
    expect(tally.ok).toBeGreaterThan(10)
    expect(tally.refused).toBeGreaterThan(10)
  })

  it('hostile token ids (huge, negative, fractional, past 2^32) are refused quickly, not allocated', async () => {
    const base = JSON.parse(seeds.vocab!) as Record<string, number>
    for (const bad of [1e8, 2 ** 31, 2 ** 32 + 5, 2 ** 53, -1, 1.5]) {
      const dir = join(tmp, `ids-${bad}`)
      mkdirSync(dir, { recursive: true })
      writeFileSync(join(dir, 'vocab.json'), JSON.stringify({ ...base, hostile: bad }))
      writeFileSync(join(dir, 'merges.txt'), seeds.merges!)
      const t0 = performance.now()
      await expect(bounded(`id ${bad}`, Gpt2Tokenizer.load(dir, { packageFallback: false })), String(bad)).rejects.toMatchObject({ code: 'E_TOKENIZER' })
      // Through tokenizer.json's added_tokens too, which bypass model.vocab's checks (non-integer ids there are skipped).
      if (!Number.isInteger(bad)) continue
      writeFileSync(
        join(dir, 'tokenizer.json'),
        JSON.stringify({ added_tokens: [{ id: bad, content: '<|hostile|>' }], model: { type: 'BPE', vocab: base, merges: [] } }),
      )
      await expect(bounded(`added id ${bad}`, Gpt2Tokenizer.load(dir, { packageFallback: false })), `added ${bad}`).rejects.toMatchObject({ code: 'E_TOKENIZER' })
      expect(performance.now() - t0).toBeLessThan(1500)
    }
  })
})
