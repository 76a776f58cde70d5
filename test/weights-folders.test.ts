// Hugging Face folders in every weights layout people have: pytorch_model.bin (torch.save's zip format, with the hub
// file's buffers and tied head), sharded safetensors and sharded .bin (index json), the preference between them, and
// `semicap convert`. Each loads to the golden reference's numbers (../shared/golden/tiny/reference.safetensors).
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { beforeAll, describe, expect, it } from 'vitest'
import { Captioner, Clip, Gpt2, Tensor, findWeights, loadSafetensors, writeSafetensors, writeTorchCheckpoint } from '../lib/index.js'
import { floats, relError } from './helpers/numeric.js'
import { makeTinyModels } from './helpers/models.js'
import { goldenDir, repoRoot, tempDir } from './helpers/paths.js'

const TOL = 5e-5
const exec = promisify(execFile)
let ref: Record<string, Tensor>
let gpt2Weights: Record<string, Tensor>
let clipWeights: Record<string, Tensor>
let root: string

/** The golden GPT-2 as the hub's pytorch_model.bin has it: `transformer.` keys, causal-mask buffers, tied head. */
function hubGpt2StateDict(): { tensors: Record<string, Tensor>; aliases: Record<string, string> } {
  const cfg = JSON.parse(readFileSync(join(goldenDir, 'gpt2', 'config.json'), 'utf8')) as { n_layer: number; n_positions: number }
  const tensors: Record<string, Tensor> = {}
  for (const [k, t] of Object.entries(gpt2Weights)) tensors[`transformer.${k}`] = t
  const n = cfg.n_positions
  const mask = new Uint8Array(n * n)
  for (let i = 0; i < n; i++) mask.fill(1, i * n, i * n + i + 1)
  const aliases: Record<string, string> = { 'lm_head.weight': 'transformer.wte.weight' }
  for (let l = 0; l < cfg.n_layer; l++) {
    tensors[`transformer.h.${l}.attn.bias`] = new Tensor('bool', [1, 1, n, n], mask)
    tensors[`transformer.h.${l}.attn.masked_bias`] = new Tensor('float32', [], new Float32Array([-1e4]))
  }
  return { tensors, aliases }
}

function folder(name: string, from: 'gpt2' | 'clip'): string {
  const dir = join(root, name)
  mkdirSync(dir, { recursive: true })
  cpSync(join(goldenDir, from, 'config.json'), join(dir, 'config.json'))
  return dir
}

/** Splits `tensors` into two shards written by `write`, plus the index json. */
async function shard(dir: string, base: string, ext: string, tensors: Record<string, Tensor>, write: (p: string, t: Record<string, Tensor>) => Promise<void>) {
  const names = Object.keys(tensors)
  const half = Math.ceil(names.length / 2)
  const weightMap: Record<string, string> = {}
  for (const [i, part] of [names.slice(0, half), names.slice(half)].entries()) {
    const file = `${base}-0000${i + 1}-of-00002.${ext}`
    await write(join(dir, file), Object.fromEntries(part.map((n) => [n, tensors[n]!])))
    for (const n of part) weightMap[n] = file
  }
  writeFileSync(join(dir, `${base}.${ext}.index.json`), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }))
}

async function expectGoldenGpt2(dir: string): Promise<void> {
  const g = await Gpt2.load(dir)
  try {
    const logits = await g.logits(ref['inputs.gpt2_ids']!)
    expect(relError(floats(logits), floats(ref['outputs.gpt2_logits']!))).toBeLessThan(TOL)
  } finally {
    await g.dispose()
  }
}

beforeAll(async () => {
  root = tempDir('semicap-weights-')
  ref = await loadSafetensors(join(goldenDir, 'reference.safetensors'))
  gpt2Weights = await loadSafetensors(join(goldenDir, 'gpt2', 'model.safetensors'))
  clipWeights = await loadSafetensors(join(goldenDir, 'clip', 'model.safetensors'))
})

describe('Hugging Face folders', () => {
  it('GPT-2 from pytorch_model.bin (buffers, tied lm_head) gives the golden logits', async () => {
    const dir = folder('gpt2-bin', 'gpt2')
    const { tensors, aliases } = hubGpt2StateDict()
    await writeTorchCheckpoint(join(dir, 'pytorch_model.bin'), tensors, aliases)
    expect(await findWeights(dir)).toBe(join(dir, 'pytorch_model.bin'))
    await expectGoldenGpt2(dir)
  })

  it('GPT-2 from a sharded safetensors folder and from a sharded .bin folder', async () => {
    const st = folder('gpt2-st-sharded', 'gpt2')
    await shard(st, 'model', 'safetensors', gpt2Weights, (p, t) => writeSafetensors(p, t))
    expect(await findWeights(st)).toBe(join(st, 'model.safetensors.index.json'))
    await expectGoldenGpt2(st)
    const bin = folder('gpt2-bin-sharded', 'gpt2')
    await shard(bin, 'pytorch_model', 'bin', hubGpt2StateDict().tensors, (p, t) => writeTorchCheckpoint(p, t))
    expect(await findWeights(bin)).toBe(join(bin, 'pytorch_model.bin.index.json'))
    await expectGoldenGpt2(bin)
  })

  it('CLIP from pytorch_model.bin gives the golden image features', async () => {
    const dir = folder('clip-bin', 'clip')
    await writeTorchCheckpoint(join(dir, 'pytorch_model.bin'), clipWeights)
    const clip = await Clip.load(dir)
    try {
      expect(clip.weightsPath).toBe(join(dir, 'pytorch_model.bin'))
      const f = await clip.imageFeatures(ref['inputs.pixel_values']!)
      expect(relError(floats(f), floats(ref['outputs.image_features']!))).toBeLessThan(TOL)
    } finally {
      await clip.dispose()
    }
  })

  it('prefers model.safetensors over pytorch_model.bin', async () => {
    const dir = folder('gpt2-both', 'gpt2')
    cpSync(join(goldenDir, 'gpt2', 'model.safetensors'), join(dir, 'model.safetensors'))
    // A .bin with other weights: loading it would change the logits.
    const { tensors, aliases } = hubGpt2StateDict()
    const wte = tensors['transformer.wte.weight']!
    tensors['transformer.wte.weight'] = new Tensor('float32', wte.shape, (wte.data as Float32Array).map((x) => x * 2))
    await writeTorchCheckpoint(join(dir, 'pytorch_model.bin'), tensors, aliases)
    expect(await findWeights(dir)).toBe(join(dir, 'model.safetensors'))
    await expectGoldenGpt2(dir)
  })

  it('a folder without weights, or an index naming a file elsewhere, is E_CHECKPOINT', async () => {
    const empty = folder('gpt2-empty', 'gpt2')
    await expect(Gpt2.load(empty)).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringContaining('pytorch_model.bin') })
    const evil = folder('gpt2-evil-index', 'gpt2')
    writeFileSync(join(evil, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'wte.weight': '../gpt2-bin/pytorch_model.bin' } }))
    await expect(Gpt2.load(evil)).rejects.toMatchObject({ code: 'E_CHECKPOINT' })
  })

  it('Captioner.create takes a pytorch_model.bin GPT-2 and CLIP; save() carries the .bin CLIP and load() reads it', async () => {
    const { gpt2Dir } = await makeTinyModels()
    const g = join(root, 'cap-gpt2')
    cpSync(gpt2Dir, g, { recursive: true })
    const { tensors, aliases } = hubGpt2StateDict()
    await writeTorchCheckpoint(join(g, 'pytorch_model.bin'), tensors, aliases)
    const { rmSync } = await import('node:fs')
    rmSync(join(g, 'model.safetensors'))
    const c = folder('cap-clip', 'clip')
    await writeTorchCheckpoint(join(c, 'pytorch_model.bin'), clipWeights)
    const cap = await Captioner.create({ clip: c, gpt2: g, seed: 3 })
    const out = join(root, 'cap-saved')
    try {
      const a = await cap.captionFeatures(ref['outputs.image_features']!, { maxTokens: 8 })
      await cap.save(out)
      expect(existsSync(join(out, 'clip', 'pytorch_model.bin'))).toBe(true)
      const back = await Captioner.load(out)
      try {
        const b = await back.captionFeatures(ref['outputs.image_features']!, { maxTokens: 8 })
        expect(b.map((x) => x.ids)).toEqual(a.map((x) => x.ids))
      } finally {
        await back.dispose()
      }
    } finally {
      await cap.dispose()
    }
  })
})

describe('semicap convert', () => {
  it('a pytorch_model.bin folder becomes a safetensors folder with the same config and numbers', async () => {
    const src = folder('conv-src', 'gpt2')
    writeFileSync(join(src, 'README.md'), 'a model card\n')
    const { tensors, aliases } = hubGpt2StateDict()
    await writeTorchCheckpoint(join(src, 'pytorch_model.bin'), tensors, aliases)
    const out = join(root, 'conv-out')
    const r = await exec(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'convert', src, out, '--no-progress'], { cwd: repoRoot })
    expect(r.stdout).toMatch(/model\.safetensors: [\d.]+ MB in [\d.]+ s \(\d+ MB\/s\)/)
    expect(readFileSync(join(out, 'config.json'), 'utf8')).toBe(readFileSync(join(src, 'config.json'), 'utf8'))
    expect(readFileSync(join(out, 'README.md'), 'utf8')).toBe('a model card\n')
    expect(existsSync(join(out, 'pytorch_model.bin'))).toBe(false)
    await expectGoldenGpt2(out)
    const converted = await loadSafetensors(join(out, 'model.safetensors'))
    for (const [k, t] of Object.entries(gpt2Weights)) expect(floats(converted[`transformer.${k}`]!)).toEqual(floats(t))
  })

  it('a file that is not a checkpoint fails with E_CHECKPOINT and a clear message, and writes nothing', async () => {
    const bad = join(root, 'not-weights.bin')
    writeFileSync(bad, 'hello, not a checkpoint')
    const out = join(root, 'conv-bad')
    const run = exec(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'convert', bad, out, '--no-progress'], { cwd: repoRoot })
    await expect(run).rejects.toMatchObject({ code: 1, stderr: expect.stringMatching(/semicap: .*not-weights\.bin/) })
    expect(existsSync(join(out, 'model.safetensors'))).toBe(false)
  })
})
