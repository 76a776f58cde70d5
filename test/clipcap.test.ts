// ClipCap checkpoints: torch.save'd ClipCaptionModel / ClipCaptionPrefix state_dicts (MLP and transformer mappers,
// GPT-2 with its attn.bias / masked_bias buffers and tied head) written by scripts/make-clipcap-fixtures.py, whose
// independent plain-PyTorch implementation of ClipCap's model, generate2 and generate_beam produced expected.json on
// the golden CLIP's image features. semicap must give the same token ids, from pixels through its own CLIP.
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { beforeAll, describe, expect, it } from 'vitest'
import { Captioner, Tensor, loadSafetensors, readSafetensorsHeader } from '../lib/index.js'
import { goldenDir, repoRoot, tempDir } from './helpers/paths.js'

const exec = promisify(execFile)
const FIX = join(repoRoot, 'test', 'fixtures', 'clipcap')
const GPT2 = join(FIX, 'gpt2')
const CLIP = join(goldenDir, 'clip')

interface ImageCase {
  image: number
  greedy: number[]
  greedy_text: string
  beam: number[]
  beam_text: string
}
interface CheckpointCase {
  file: string
  class: string
  mapper: { type: 'mlp' | 'transformer'; prefix_length: number; clip_length?: number; num_layers?: number; heads?: number }
  images: ImageCase[]
}
const expected = JSON.parse(readFileSync(join(FIX, 'expected.json'), 'utf8')) as {
  tokenizer: { stop_id: number }
  checkpoints: Record<string, CheckpointCase>
}
const names = Object.keys(expected.checkpoints)

/** Debian's python3 with torch, when installed (the fixtures and expected ids are committed: CI needs neither). */
const python = (() => {
  try {
    execFileSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' })
    return '/usr/bin/python3'
  } catch {
    return undefined
  }
})()

let pixels: Tensor
let features: Tensor

beforeAll(async () => {
  const ref = await loadSafetensors(join(goldenDir, 'reference.safetensors'))
  pixels = ref['inputs.pixel_values']!
  features = ref['outputs.image_features']!
})

const open = (name: string, extra: Partial<Parameters<typeof Captioner.fromClipCap>[1]> = {}) =>
  Captioner.fromClipCap(join(FIX, expected.checkpoints[name]!.file), { clip: CLIP, gpt2: GPT2, ...extra })

describe.each(names)('Captioner.fromClipCap: %s', (name) => {
  const want = expected.checkpoints[name]!

  it('infers the mapper from the keys', async () => {
    const cap = await open(name)
    try {
      expect(cap.mapper.type).toBe(want.mapper.type)
      expect(cap.mapper.prefixLength).toBe(want.mapper.prefix_length)
      if (want.mapper.type === 'transformer') {
        expect(cap.mapper.clipLength).toBe(want.mapper.clip_length)
        expect(cap.mapper.layers).toBe(want.mapper.num_layers)
      }
      expect(cap.normalizePrefix).toBe(false)
    } finally {
      await cap.dispose()
    }
  })

  it("greedy captions (ClipCap's generate2: to the '.' token, at most 67) equal the reference, from pixels and from features", async () => {
    const cap = await open(name)
    try {
      const fromPixels = await cap.caption(pixels)
      const fromFeatures = await cap.captionFeatures(features)
      for (const c of want.images) {
        expect(fromPixels[c.image]!.ids).toEqual(c.greedy)
        expect(fromPixels[c.image]!.text).toBe(c.greedy_text.trim())
        expect(fromFeatures[c.image]!.ids).toEqual(c.greedy)
      }
      // One image per call, concurrently: the calls share decode steps and still give the same ids.
      const alone = await Promise.all(want.images.map((c) => cap.captionFeatures(new Tensor('float32', [1, features.shape[1]!], (features.data as Float32Array).slice(c.image * features.shape[1]!, (c.image + 1) * features.shape[1]!)))))
      alone.forEach((r, i) => expect(r[0]!.ids).toEqual(want.images[i]!.greedy))
    } finally {
      await cap.dispose()
    }
  })

  it("beam captions (ClipCap's generate_beam, 5 beams) equal the reference", async () => {
    const cap = await open(name)
    try {
      const beams = await cap.caption(pixels, { decoding: 'beam', beams: 5 })
      for (const c of want.images) {
        expect(beams[c.image]!.ids).toEqual(c.beam)
        expect(beams[c.image]!.text).toBe(c.beam_text.trim())
      }
    } finally {
      await cap.dispose()
    }
  })
})

describe('ClipCap out again', () => {
  it("save({ format: 'clipcap' }) round-trips through fromClipCap, and a folder save keeps ClipCap's decoding", async () => {
    const dir = tempDir('semicap-clipcap-')
    const cap = await open('transformer')
    try {
      await cap.save(dir, { format: 'clipcap' })
      const header = await readSafetensorsHeader(join(dir, 'clipcap.pt'))
      expect(header.names).toContain('gpt.transformer.wte.weight')
      expect(header.names).toContain('gpt.lm_head.weight')
      expect(header.names).toContain('clip_project.prefix_const')
      expect(header.names.some((n) => n.endsWith('.attn.bias') || n.endsWith('.attn.masked_bias'))).toBe(false)
      expect(JSON.parse(readFileSync(join(dir, 'clipcap.json'), 'utf8'))).toMatchObject({ prefix_length: 10, mapping_type: 'transformer', clip_length: 10, num_layers: 2 })
      const back = await Captioner.fromClipCap(join(dir, 'clipcap.pt'), { clip: CLIP, gpt2: GPT2 })
      try {
        expect((await back.caption(pixels)).map((c) => c.ids)).toEqual(expected.checkpoints.transformer!.images.map((c) => c.greedy))
      } finally {
        await back.dispose()
      }
      // A semicap folder remembers ClipCap's decoding (stop token '.', 67 tokens, no end-of-text stop).
      await cap.save(join(dir, 'folder'))
      const loaded = await Captioner.load(join(dir, 'folder'))
      try {
        expect((await loaded.caption(pixels)).map((c) => c.ids)).toEqual(expected.checkpoints.transformer!.images.map((c) => c.greedy))
      } finally {
        await loaded.dispose()
      }
    } finally {
      await cap.dispose()
    }
  })

  it.runIf(python)("PyTorch loads the exported file with load_state_dict(strict=True) and decodes the same captions (python3-torch present)", async () => {
    const dir = tempDir('semicap-clipcap-py-')
    for (const name of ['mlp', 'only_prefix']) {
      const cap = await open(name)
      try {
        await cap.save(join(dir, name), { format: 'clipcap' })
        await cap.save(join(dir, `${name}-old`), { format: 'clipcap', gpt2Buffers: true })
      } finally {
        await cap.dispose()
      }
      const check = join(repoRoot, 'scripts', 'check-clipcap-export.py')
      const ok = await exec(python!, [check, join(dir, name, 'clipcap.pt'), join(FIX, 'expected.json'), name, '--same-weights'])
      expect(ok.stdout + ok.stderr).not.toMatch(/FAIL/)
      await exec(python!, [check, join(dir, `${name}-old`, 'clipcap.pt'), join(FIX, 'expected.json'), name, '--old-transformers', '--same-weights'])
    }
  })

  it('semicap convert turns a ClipCap file into a captioner folder', async () => {
    const out = join(tempDir('semicap-clipcap-conv-'), 'cap')
    await exec(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'convert', join(FIX, 'mlp.pt'), out, '--clip', CLIP, '--gpt2', GPT2, '--no-progress'], { cwd: repoRoot })
    expect(existsSync(join(out, 'model.safetensors'))).toBe(true)
    const cap = await Captioner.load(out)
    try {
      expect((await cap.caption(pixels)).map((c) => c.ids)).toEqual(expected.checkpoints.mlp!.images.map((c) => c.greedy))
    } finally {
      await cap.dispose()
    }
    // Without the folders it says what is missing.
    await expect(exec(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'convert', join(FIX, 'mlp.pt'), out + '-2', '--no-progress'], { cwd: repoRoot })).rejects.toMatchObject({
      stderr: expect.stringContaining('--clip'),
    })
  })
})

describe('ClipCap errors', () => {
  it('a file that is not a ClipCap checkpoint, or a GPT-2 folder of another size, is E_CHECKPOINT naming the problem', async () => {
    await expect(Captioner.fromClipCap(join(goldenDir, 'gpt2', 'model.safetensors'), { clip: CLIP, gpt2: GPT2 })).rejects.toMatchObject({
      code: 'E_CHECKPOINT',
      message: expect.stringContaining('clip_project'),
    })
    // The golden GPT-2 folder has n_embd 64; the fixtures' GPT-2 has 32.
    await expect(Captioner.fromClipCap(join(FIX, 'mlp.pt'), { clip: CLIP, gpt2: join(goldenDir, 'gpt2') })).rejects.toMatchObject({
      code: 'E_CHECKPOINT',
      message: expect.stringContaining('n_embd'),
    })
    await expect(Captioner.fromClipCap(join(FIX, 'transformer.pt'), { clip: CLIP, gpt2: GPT2, heads: 3 })).rejects.toThrow(/heads/)
  })
})
