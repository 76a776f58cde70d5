// One rank of a data-parallel test run (spawned by test/distributed.test.ts). Config comes as JSON in argv[2].
import { Captioner } from '../../lib/index.js'
import type { TrainProgress } from '../../lib/index.js'

const cfg = JSON.parse(process.argv[2]!) as {
  clipDir: string
  gpt2Dir: string
  examples: { id: string; image: string; captions: string[] }[]
  batchSize: number
  steps: number
  out: string
  cache: string
  distributed?: { rank: number; worldSize: number; masterPort: number; timeoutMs: number }
  dieAfterStep?: number
  /** Extra training options (stage, objective, reward, klCoef, ...); the examples serve as unlabeled images too. */
  options?: Record<string, unknown>
}
const cap = await Captioner.create({ clip: cfg.clipDir, gpt2: cfg.gpt2Dir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cpu', seed: 0 })
const run = cap.train({
  stage: 'supervised',
  labeled: cfg.examples,
  unlabeled: cfg.examples.map((e) => ({ ...e, captions: [] })),
  steps: cfg.steps,
  batchSize: cfg.batchSize,
  lr: 1e-3,
  seed: 3,
  featureCache: cfg.cache,
  distributed: cfg.distributed,
  ...(cfg.options as object),
} as Parameters<Captioner['train']>[0])
const losses: number[] = []
const metrics: (number | undefined)[][] = []
run.on('progress', (p: TrainProgress) => {
  losses.push(p.loss)
  metrics.push([p.loss, p.ce, p.reward, p.baselineReward, p.kl])
  if (cfg.dieAfterStep !== undefined && p.step >= cfg.dieAfterStep) process.exit(3)
})
try {
  await run
  await cap.save(cfg.out)
  process.stdout.write(JSON.stringify({ losses, metrics }) + '\n')
} catch (err) {
  process.stdout.write(JSON.stringify({ error: { code: (err as { code?: string }).code, message: (err as Error).message } }) + '\n')
  process.exitCode = 1
}
