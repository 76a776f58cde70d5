// The semicap CLI, run as a separate process (node --import tsx lib/cli.ts) against a tiny saved captioner.
import { execFile } from 'node:child_process'
import { symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Command } from 'commander'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createProgram, commands, intOption, type CommandModule } from '../lib/cli.js'
import { Captioner } from '../lib/index.js'
import { makePngs, makeTinyModels } from './helpers/models.js'
import { repoRoot, tempDir } from './helpers/paths.js'

const exec = promisify(execFile)
const CLI = join(repoRoot, 'lib', 'cli.ts')

interface Run {
  code: number
  stdout: string
  stderr: string
}

async function semicap(args: string[], env: Record<string, string> = {}, script = CLI): Promise<Run> {
  try {
    const r = await exec(process.execPath, ['--import', 'tsx', script, ...args], {
      cwd: repoRoot,
      env: { ...process.env, SEMICAP_DEBUG: '', ...env },
      maxBuffer: 16 << 20,
    })
    return { code: 0, stdout: r.stdout, stderr: r.stderr }
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string }
    if (typeof e.code !== 'number') throw err
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}

let tmp: string
let modelDir: string
let paths: string[]
let cap: Captioner

beforeAll(async () => {
  tmp = tempDir('semicap-cli-')
  const models = await makeTinyModels()
  const created = await Captioner.create({ clip: models.clipDir, gpt2: models.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu' })
  modelDir = join(tmp, 'captioner')
  await created.save(modelDir)
  created.dispose()
  cap = await Captioner.load(modelDir, { device: 'cpu' })
  paths = (await makePngs(3)).map((png, i) => {
    const p = join(tmp, `image ${i}.png`)
    writeFileSync(p, png)
    return p
  })
})
afterAll(() => cap?.dispose())

describe('semicap caption', () => {
  it('--json prints [{image, caption, score}] matching the library, exit 0', async () => {
    const r = await semicap(['caption', ...paths, '--model', modelDir, '--json', '--device', 'cpu'])
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const out = JSON.parse(r.stdout) as { image: string; caption: string; score: number }[]
    const want = await cap.caption(paths)
    expect(out).toEqual(want.map((c, i) => ({ image: paths[i], caption: c.text, score: c.score })))
  })

  it('prints one `path: caption` line per image; decoding options reach the decoder; batches are split', async () => {
    const r = await semicap(['caption', ...paths, '-m', modelDir, '--beams', '3', '--max-tokens', '5', '--batch-size', '2'])
    expect(r.code).toBe(0)
    const want = await cap.caption(paths, { decoding: 'beam', beams: 3, maxTokens: 5 })
    expect(r.stdout).toBe(want.map((c, i) => `${paths[i]}: ${c.text}\n`).join(''))
    const s = await semicap(['caption', paths[0]!, '-m', modelDir, '--decoding', 'sample', '--seed', '7', '--json'])
    expect(JSON.parse(s.stdout)[0].caption).toBe((await cap.caption([paths[0]!], { decoding: 'sample', seed: 7 }))[0]!.text)
  })

  it('a missing model: `semicap: <message>` on stderr, exit 1, no stack (unless SEMICAP_DEBUG=1)', async () => {
    const missing = join(tmp, 'no-model-here')
    const r = await semicap(['caption', paths[0]!, '--model', missing])
    expect(r.code).toBe(1)
    expect(r.stdout).toBe('')
    expect(r.stderr).toMatch(/^semicap: .*no-model-here.*\n$/)
    expect(r.stderr).not.toMatch(/\n\s+at /)
    const d = await semicap(['caption', paths[0]!, '--model', missing], { SEMICAP_DEBUG: '1' })
    expect(d.code).toBe(1)
    expect(d.stderr).toMatch(/^semicap: /)
    expect(d.stderr).toMatch(/\n\s+at /)
  })

  it('bad images and bad options fail the same way', async () => {
    const notImage = join(tmp, 'notes.png')
    writeFileSync(notImage, 'not an image')
    const r = await semicap(['caption', notImage, '--model', modelDir])
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/^semicap: .*notes\.png/)
    const o = await semicap(['caption', paths[0]!, '--model', modelDir, '--decoding', 'nucleus'])
    expect(o.code).toBe(1)
    expect(o.stderr).toMatch(/^semicap: .*nucleus/)
    const m = await semicap(['caption', paths[0]!])
    expect(m.code).toBe(1)
    expect(m.stderr).toMatch(/^semicap: required option '-m, --model <dir>'/)
  })
})

describe('semicap info', () => {
  it('prints runtimeInfo() as JSON; runs through a symlinked bin too', async () => {
    const link = join(tmp, 'semicap-bin.ts')
    symlinkSync(CLI, link)
    const r = await semicap(['info'], {}, link)
    expect(r.code).toBe(0)
    const info = JSON.parse(r.stdout)
    expect(info).toMatchObject({ torchVersion: expect.any(String), cuda: expect.any(Boolean), threads: expect.any(Number) })
    expect(info.bridge).toMatchObject({ external: expect.any(Number), copied: expect.any(Number) })
  })
})

describe('the program builder', () => {
  it('importing the module runs nothing; commands are modules that others can add', async () => {
    expect(commands.length).toBeGreaterThanOrEqual(2)
    let seen: unknown[] = []
    const demo: CommandModule = (program) => {
      program
        .command('example')
        .argument('<n>', 'a count', intOption(1))
        .option('--fast')
        .action((n: number, o: { fast?: boolean }) => {
          seen = [n, o.fast]
        })
    }
    const program = createProgram([...commands, demo])
    expect(program).toBeInstanceOf(Command)
    expect(program.name()).toBe('semicap')
    const names = program.commands.map((c) => c.name())
    expect(names.slice(0, 2)).toEqual(['caption', 'info'])
    expect(names.at(-1)).toBe('example')
    await program.parseAsync(['example', '4', '--fast'], { from: 'user' })
    expect(seen).toEqual([4, true])
    // Usage errors throw (CommanderError) instead of exiting the process.
    const p2 = createProgram([demo])
    for (const c of [p2, ...p2.commands]) c.configureOutput({ writeErr: () => {}, outputError: () => {} })
    await expect(p2.parseAsync(['example', 'zero'], { from: 'user' })).rejects.toMatchObject({ exitCode: 1 })
  })
})
