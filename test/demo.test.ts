// The demo pipeline in its --quick configuration (toy sizes, seconds): every stage leaves a loadable artefact, a second
// run reuses them all, a changed setting redoes only what depends on it, stages run at once give the same captions,
// and the table, win rates, claims and report come out. The paper's claims are not asserted here: the toy models are
// far too small; the full `npm run demo` measures them (and lib/demo/evidence.json over many runs, see
// test/demo-claims.test.ts for how a run is judged against it).
import { execFile } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CAPTIONERS, captionersOf, demoConfig, hashOf, stageKeys, type DemoConfig } from '../lib/demo/config.js'
import { TABLE_COLUMNS, runDemo, type DemoResult } from '../lib/demo/experiment.js'
import { labeledSplit, limiter, type StageEvent } from '../lib/demo/pipeline.js'
import { PREFERENCE_PAIRS, pairKey } from '../lib/demo/preference.js'
import { Captioner, Clip, Gpt2, Gpt2Tokenizer } from '../lib/index.js'
import { readWorld } from '../lib/world/index.js'
import { repoRoot, tempDir } from './helpers/paths.js'

const exec = promisify(execFile)

let root: string
let out: string
let first: DemoResult
const disposables: { dispose(): void }[] = []
afterAll(() => disposables.forEach((d) => d.dispose()))

function run(config: DemoConfig, events: StageEvent[] = []): Promise<DemoResult> {
  return runDemo({ out: root, config, device: 'cpu', reporter: { stage: (e) => events.push(e) } })
}
const statuses = (events: StageEvent[], status: StageEvent['status']) => events.filter((e) => e.status === status).map((e) => e.label)

beforeAll(async () => {
  root = tempDir('semicap-demo-')
  // World seed 0's stages live in world-seed0/ under the output folder.
  out = join(root, 'world-seed0')
  first = await run(demoConfig({ quick: true }))
})

describe('demo pipeline (--quick)', () => {
  it('runs every stage once and leaves loadable artefacts', async () => {
    expect(statuses(first.events, 'done')).toEqual([
      'world',
      'tokenizer',
      'clip',
      'judge',
      'gpt2',
      '(a) full seed 0',
      '(b) small seed 0',
      '(b+) contrast seed 0',
      // One job: stages start in the order their starting points are built ((c-) needs (b), (c) needs (b+)).
      '(c-) reward-from-b seed 0',
      '(c) reward seed 0',
      'evaluate a seed 0',
      'evaluate b seed 0',
      'evaluate b+ seed 0',
      'evaluate c seed 0',
      'evaluate c- seed 0',
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
    // The judge: same architecture, other weights (other web data, other initial seed).
    const judge = await Clip.load(join(out, 'judge'), { device: 'cpu' })
    disposables.push(judge)
    const g = await judge.encodeTexts(['A photo depicts a red circle'])
    expect(g.shape).toEqual(f.shape)
    expect(Array.from(g.data as Float32Array)).not.toEqual(Array.from(f.data as Float32Array))
    const gpt = await Gpt2.load(join(out, 'gpt2'), { device: 'cpu' })
    disposables.push(gpt)
    expect(gpt.tokenizer?.vocabSize).toBe(tok.vocabSize)

    for (const { name } of captionersOf(false)) {
      const cap = await Captioner.load(join(out, 'captioners', `${name}-seed0`), { device: 'cpu' })
      disposables.push(cap)
      const [c] = await cap.caption([join(out, 'world', 'images', `${world.test[0]!.id}.png`)], { maxTokens: 5 })
      expect(typeof c!.text).toBe('string')
    }
  })

  it('prints a table with the five captioners, judge and reward CLIP columns, win rates and claims, and writes the JSON and HTML report', () => {
    const lines = first.table.split('\n')
    expect(lines).toHaveLength(2 + 5)
    for (const [i, letter] of ['a', 'b', 'b+', 'c', 'c-'].entries()) expect(lines[2 + i]!.startsWith(`(${letter}) `)).toBe(true)
    expect(lines[0]).toContain('CLIP-S judge')
    expect(lines[0]).toContain('CLIP-S reward')
    expect(lines[0]).toContain('R@1 judge')
    for (const { name } of captionersOf(false)) {
      for (const [key] of TABLE_COLUMNS) expect(Number.isFinite(first.summary[name]![key].mean), `${name} ${key}`).toBe(true)
    }
    expect(first.summary['reward-no-kl']).toBeUndefined()
    expect(first.evaluations.map((e) => e.name)).toEqual(['full', 'small', 'contrast', 'reward', 'reward-from-b'])
    expect(first.evaluations[0]!.perImage).toHaveLength(first.config.world.testImages)

    expect(first.runs).toHaveLength(1)
    for (const pair of PREFERENCE_PAIRS) {
      const w = first.runs[0]!.preferences[pairKey(pair)]!
      expect(w.win + w.tie + w.loss).toBeCloseTo(1, 9)
    }
    expect(first.preferenceTable.split('\n')).toHaveLength(2 + PREFERENCE_PAIRS.length)
    // Every claim is judged; the ablation claims have no numbers without --ablations; the committed evidence is about
    // the default configuration, not --quick.
    expect(first.evidenceMatches).toBe(false)
    for (const v of first.claims) expect(v.evidence).toBeUndefined()
    expect(first.claims.find((v) => v.id === 'nokl-gap')!.values).toBeUndefined()
    expect(first.claims.find((v) => v.id === 'c-a-f1')!.values).toHaveLength(2)
    expect(first.evidence.runs).toEqual([{ worldSeed: 0, seed: 0 }])

    const json = JSON.parse(readFileSync(join(root, 'results.json'), 'utf8'))
    expect(json.table).toBe(first.table)
    expect(json.evaluations).toHaveLength(5)
    expect(json.evaluations[0].perImage).toBeUndefined()
    const html = readFileSync(join(root, 'report.html'), 'utf8')
    expect(html).toMatch(/^<!doctype html>/i)
    expect(html).toContain('data:image/png;base64,')
    expect(html).toContain('(c) obj F1')
    expect(html).toContain('(b+)')
    for (const r of [first.clip.retrieval!, first.judge.retrieval!]) {
      expect(r.images).toBe(first.config.world.valImages)
      for (const v of [...r.fullTextToImage, ...r.referenceTextToImage, ...Object.values(r.prefersTrue)]) expect(v >= 0 && v <= 1).toBe(true)
    }
  })

  it('a second run reuses every stage and gives the same table', async () => {
    const events: StageEvent[] = []
    const second = await run(demoConfig({ quick: true }), events)
    expect(statuses(events, 'run')).toEqual([])
    expect(statuses(events, 'skip')).toHaveLength(15)
    expect(second.table).toBe(first.table)
  })

  it('two world seeds, two stages at once: each world its own folder, and the same cross-entropy training as one stage at a time', async () => {
    const root2 = tempDir('semicap-demo-jobs-')
    const r = await runDemo({ out: root2, config: demoConfig({ quick: true }), device: 'cpu', worldSeeds: 2, jobs: 2, report: false })
    expect(existsSync(join(root2, 'world-seed1', 'judge', 'stage.json'))).toBe(true)
    expect(r.runs.map((x) => [x.worldSeed, x.seed])).toEqual([
      [0, 0],
      [1, 0],
    ])
    expect(r.evidence.claims.every((c) => c.runs === 2 || c.runs === 0)).toBe(true)
    // Several runs are their own evidence: the first run's claims are judged against them.
    expect(r.claims.find((v) => v.id === 'c-a-f1')!.evidence).toEqual(r.evidence.claims.find((c) => c.id === 'c-a-f1'))
    // Cross-entropy training is deterministic for a given thread count whatever runs next to it: the same losses step
    // by step. (SCST stages and captions are not compared: they go through inference, which picks kernel or BLAS per
    // shape by timing, and load can change that; measured on the full demo, see the README.)
    const losses = (dir: string, name: string) => readFileSync(join(dir, 'captioners', `${name}-seed0`, 'log.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).loss)
    for (const name of ['full', 'small']) expect(losses(join(root2, 'world-seed0'), name), name).toEqual(losses(out, name))
    for (const { name } of captionersOf(false)) expect(existsSync(join(root2, 'world-seed0', 'captioners', `${name}-seed0`, 'stage.json')), name).toBe(true)
    const scenes = async (w: number) => (await readWorld(join(root2, `world-seed${w}`, 'world'))).test.map((e) => e.scene)
    expect(await scenes(1)).not.toEqual(await scenes(0))
  })
  it('with --ablations, trains stage 2 without KL and without the repetition penalty from (b+), on top of the cache', async () => {
    const events: StageEvent[] = []
    const r = await runDemo({ out: root, config: demoConfig({ quick: true }), device: 'cpu', ablations: true, report: false, reporter: { stage: (e) => events.push(e) } })
    expect(statuses(events, 'done')).toEqual(['(c/noKL) reward-no-kl seed 0', '(c/noRep) reward-no-rep seed 0', 'evaluate c/noKL seed 0', 'evaluate c/noRep seed 0'])
    const info = (name: string) => JSON.parse(readFileSync(join(out, 'captioners', `${name}-seed0`, 'stage.json'), 'utf8')).info
    expect(info('reward-no-kl')).toMatchObject({ klCoef: 0, repetitionPenalty: r.config.captioner.reward.repetitionPenalty })
    expect(info('reward-no-rep')).toMatchObject({ klCoef: r.config.captioner.reward.klCoef, repetitionPenalty: 0 })
    expect(r.table.split('\n')).toHaveLength(2 + CAPTIONERS.length)
    const v = r.claims.find((c) => c.id === 'nokl-gap')!
    expect(v.values).toHaveLength(2)
  })

  it('a changed stage-2 setting redoes (c) and (c-) and their evaluations; a changed contrast setting (b+) and (c)', async () => {
    const cfg = demoConfig({ quick: true })
    const changed: DemoConfig = { ...cfg, captioner: { ...cfg.captioner, reward: { ...cfg.captioner.reward, lr: cfg.captioner.reward.lr * 2 } } }
    const events: StageEvent[] = []
    await run(changed, events)
    expect(statuses(events, 'done')).toEqual(['(c-) reward-from-b seed 0', '(c) reward seed 0', 'evaluate c seed 0', 'evaluate c- seed 0'])
    const contrast: DemoConfig = { ...changed, captioner: { ...changed.captioner, contrast: { ...cfg.captioner.contrast, tau: 0.2 } } }
    const events2: StageEvent[] = []
    await run(contrast, events2)
    expect(statuses(events2, 'done')).toEqual(['(b+) contrast seed 0', '(c) reward seed 0', 'evaluate b+ seed 0', 'evaluate c seed 0'])
  })

})

describe('limiter', () => {
  it('runs at most `jobs` tasks at once, in the order they were handed in', async () => {
    const limit = limiter(2)
    let running = 0
    let peak = 0
    const started: number[] = []
    const task = (i: number) => async () => {
      started.push(i)
      peak = Math.max(peak, ++running)
      await new Promise((r) => setTimeout(r, 5))
      running--
      return i
    }
    expect(await Promise.all([1, 2, 3, 4, 5].map((i) => limit(task(i))))).toEqual([1, 2, 3, 4, 5])
    expect(peak).toBe(2)
    expect(started).toEqual([1, 2, 3, 4, 5])
    await expect(limit(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom')
    expect(await limit(task(6))).toBe(6)
    expect(() => limiter(0)).toThrow(RangeError)
  })
})

describe('demo configuration', () => {
  it('keys each stage by what it depends on', () => {
    const a = stageKeys(demoConfig(), 'cpu')
    const cfg = demoConfig()
    const b = stageKeys({ ...cfg, gpt2: { ...cfg.gpt2, lr: 1 } }, 'cpu')
    expect(b.clip).toBe(a.clip)
    expect(b.judge).toBe(a.judge)
    expect(b.gpt2).not.toBe(a.gpt2)
    expect(b.captioner('small', 0)).not.toBe(a.captioner('small', 0))
    expect(a.captioner('small', 0)).not.toBe(a.captioner('small', 1))
    expect(a.judge).not.toBe(a.clip)
    // Every captioner has a key of its own; the ablations differ from (c) only in their stage-2 overrides.
    expect(new Set(CAPTIONERS.map((c) => a.captioner(c.name, 0))).size).toBe(CAPTIONERS.length)
    const noKl = stageKeys({ ...cfg, captioner: { ...cfg.captioner, reward: { ...cfg.captioner.reward, klCoef: 0 } } }, 'cpu')
    expect(noKl.captioner('reward', 0)).toBe(a.captioner('reward-no-kl', 0))
    const judged = stageKeys({ ...cfg, judge: { ...cfg.judge, seedOffset: 7 } }, 'cpu')
    expect(judged.clip).toBe(a.clip)
    expect(judged.judge).not.toBe(a.judge)
    expect(judged.captioner('reward', 0)).toBe(a.captioner('reward', 0))
    expect(judged.evaluation('x')).not.toBe(a.evaluation('x'))
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
    const evidence = join(root, 'evidence.json')
    const r = await exec(process.execPath, ['--import', 'tsx', join(repoRoot, 'lib', 'cli.ts'), 'demo', '--quick', '--out', root, '--device', 'cpu', '--no-progress', '--no-report', '--write-evidence', evidence], {
      cwd: repoRoot,
      maxBuffer: 16 << 20,
    })
    expect(r.stdout).toContain('(a) stage 1 CE, 100% labels')
    expect(r.stdout).toContain('(b+) (b) + stage 1 contrastive SCST')
    expect(r.stdout).toContain('(c) (b+) + stage 2 CLIP-S')
    expect(r.stdout).toContain('judge CLIP (held out, never a reward)')
    expect(r.stdout).toContain('(c) vs (c-)')
    expect(r.stdout).toContain('(c) object F1 >= (a) object F1')
    expect(r.stdout).toContain('not run (--ablations)')
    expect(r.stderr).toContain('cached')
    const written = JSON.parse(readFileSync(evidence, 'utf8'))
    expect(written.runs).toEqual([{ worldSeed: 0, seed: 0 }])
    expect(written.provenance.command).toContain('--quick')
  })
})
