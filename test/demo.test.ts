// The demo pipeline in its --quick configuration (toy sizes, seconds): every stage leaves a loadable artefact, a second
// run reuses them all, a changed setting redoes only what depends on it, and the table and report come out. The
// paper's claim is not asserted here: the toy models are far too small; the full `npm run demo` measures it.
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { demoConfig, hashOf, stageKeys, type DemoConfig } from '../lib/demo/config.js'
import { TABLE_COLUMNS, runDemo, type DemoResult } from '../lib/demo/experiment.js'
import { labeledSplit, type StageEvent } from '../lib/demo/pipeline.js'
import { Captioner, Clip, Gpt2, Gpt2Tokenizer } from '../lib/index.js'
import { readWorld } from '../lib/world/index.js'
import { repoRoot, tempDir } from './helpers/paths.js'

const exec = promisify(execFile)

let out: string
let first: DemoResult
const disposables: { dispose(): void }[] = []
afterAll(() => disposables.forEach((d) => d.dispose()))

function run(config: DemoConfig, events: StageEvent[] = []): Promise<DemoResult> {
  return runDemo({ out, config, device: 'cpu', reporter: { stage: (e) => events.push(e) } })
}
const statuses = (events: StageEvent[], status: StageEvent['status']) => events.filter((e) => e.status === status).map((e) => e.label)

beforeAll(async () => {
  out = tempDir('semicap-demo-')
  first = await run(demoConfig({ quick: true }))
})

describe('demo pipeline (--quick)', () => {
  it('runs every stage once and leaves loadable artefacts', async () => {
    expect(statuses(first.events, 'done')).toEqual([
      'world',
      'tokenizer',
      'clip',
      'gpt2',
      '(a) full seed 0',
      '(b) small seed 0',
      '(c) reward seed 0',
      'evaluate a seed 0',
      'evaluate b seed 0',
      'evaluate c seed 0',
    ])
    expect(statuses(first.events, 'skip')).toEqual([])

    const world = await readWorld(join(out, 'world'))
    const cfg = first.config.world
    expect(world.train).toHaveLength(cfg.trainImages)
    expect(world.test).toHaveLength(cfg.testImages)
    expect(world.labeled).toHaveLength(Math.round(cfg.labeledFraction * cfg.trainImages))
    expect(existsSync(join(out, 'world', 'images', `${world.test[0]!.id}.png`))).toBe(true)
    // Demo scenes have one background (see SceneOptions.backgrounds).
    expect(new Set(world.train.map((e) => e.scene.background))).toEqual(new Set(cfg.backgrounds))

    const tok = await Gpt2Tokenizer.load(join(out, 'tokenizer'), { packageFallback: false })
    expect(tok.vocabSize).toBeLessThanOrEqual(first.config.tokenizer.vocabSize)
    expect(tok.decode(tok.encode('a large red circle'))).toBe('a large red circle')

    const clip = await Clip.load(join(out, 'clip'), { device: 'cpu' })
    disposables.push(clip)
    const f = await clip.encodeTexts(['A photo depicts a red circle'])
    expect(f.shape).toEqual([1, first.config.clip.projectionDim])
    const gpt = await Gpt2.load(join(out, 'gpt2'), { device: 'cpu' })
    disposables.push(gpt)
    expect(gpt.tokenizer?.vocabSize).toBe(tok.vocabSize)

    for (const name of ['full', 'small', 'reward']) {
      const cap = await Captioner.load(join(out, 'captioners', `${name}-seed0`), { device: 'cpu' })
      disposables.push(cap)
      const [c] = await cap.caption([join(out, 'world', 'images', `${world.test[0]!.id}.png`)], { maxTokens: 5 })
      expect(typeof c!.text).toBe('string')
    }
  })

  it('prints a table with the three captioners and finite metrics, and writes the JSON and HTML report', () => {
    const lines = first.table.split('\n')
    expect(lines).toHaveLength(5)
    expect(lines[2]).toMatch(/^\(a\)/)
    expect(lines[3]).toMatch(/^\(b\)/)
    expect(lines[4]).toMatch(/^\(c\)/)
    for (const name of ['full', 'small', 'reward'] as const) {
      for (const [key] of TABLE_COLUMNS) expect(Number.isFinite(first.summary[name][key].mean), `${name} ${key}`).toBe(true)
    }
    expect(first.claims).toHaveLength(6)
    expect(first.evaluations.map((e) => e.name)).toEqual(['full', 'small', 'reward'])
    expect(first.evaluations[0]!.perImage).toHaveLength(first.config.world.testImages)

    const json = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'))
    expect(json.table).toBe(first.table)
    expect(json.evaluations).toHaveLength(3)
    const html = readFileSync(join(out, 'report.html'), 'utf8')
    expect(html).toMatch(/^<!doctype html>/i)
    expect(html).toContain('data:image/png;base64,')
    expect(html).toContain('(c) obj F1')
    const r = first.clip.retrieval!
    expect(r.images).toBe(first.config.world.valImages)
    for (const v of [...r.fullTextToImage, ...r.referenceTextToImage, ...Object.values(r.prefersTrue)]) expect(v >= 0 && v <= 1).toBe(true)
  })

  it('a second run reuses every stage and gives the same table', async () => {
    const events: StageEvent[] = []
    const second = await run(demoConfig({ quick: true }), events)
    expect(statuses(events, 'run')).toEqual([])
    expect(statuses(events, 'skip')).toHaveLength(10)
    expect(second.table).toBe(first.table)
  })

  it('a changed stage-2 setting redoes only (c) and its evaluation', async () => {
    const cfg = demoConfig({ quick: true })
    const changed: DemoConfig = { ...cfg, captioner: { ...cfg.captioner, reward: { ...cfg.captioner.reward, lr: cfg.captioner.reward.lr * 2 } } }
    const events: StageEvent[] = []
    await run(changed, events)
    expect(statuses(events, 'done')).toEqual(['(c) reward seed 0', 'evaluate c seed 0'])
  })
})

describe('demo configuration', () => {
  it('keys each stage by what it depends on', () => {
    const a = stageKeys(demoConfig(), 'cpu')
    const cfg = demoConfig()
    const b = stageKeys({ ...cfg, gpt2: { ...cfg.gpt2, lr: 1 } }, 'cpu')
    expect(b.clip).toBe(a.clip)
    expect(b.gpt2).not.toBe(a.gpt2)
    expect(b.small(0)).not.toBe(a.small(0))
    expect(a.small(0)).not.toBe(a.small(1))
    expect(stageKeys(demoConfig(), 'cuda').clip).not.toBe(a.clip)
    expect(hashOf({ x: 1, y: [2] })).toBe(hashOf({ y: [2], x: 1 }))
  })

  it('scales the world, the steps and the model widths', () => {
    const base = demoConfig()
    const big = demoConfig({ scale: 4 })
    expect(big.world.trainImages).toBe(4 * base.world.trainImages)
    expect(big.clip.steps).toBe(4 * base.clip.steps)
    expect(big.clip.visionHidden).toBe(2 * base.clip.visionHidden)
    expect(big.gpt2.nEmbd % big.gpt2.nHead).toBe(0)
    expect(() => demoConfig({ scale: 0 })).toThrow(RangeError)
  })

  it('draws another labeled subset of the same size for each seed', async () => {
    const world = await readWorld(join(out, 'world'))
    const s0 = labeledSplit(world, 0)
    const s1 = labeledSplit(world, 1)
    expect(s0.labeled).toEqual(world.labeled)
    expect(s1.labeled).toHaveLength(world.labeled.length)
    expect(s1.labeled.length + s1.unlabeled.length).toBe(world.train.length)
    expect(s1.labeled.map((e) => e.id)).not.toEqual(s0.labeled.map((e) => e.id))
  })
})

describe('semicap demo (CLI)', () => {
  it('prints the table from the cached stages', async () => {
    const r = await exec(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'demo', '--quick', '--out', out, '--device', 'cpu', '--no-progress', '--no-report'], {
      cwd: repoRoot,
      maxBuffer: 16 << 20,
    })
    expect(r.stdout).toContain('(a) stage 1, 100% labels')
    expect(r.stdout).toContain('(c) (b) + stage 2 CLIP-S')
    expect(r.stderr).toContain('cached')
  })
})
