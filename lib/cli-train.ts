// `semicap train`: either training stage from the command line, with a progress bar, a JSONL log of every step,
// checkpoints and resume, and a clean stop on Ctrl-C (nothing partial is saved; the last checkpoint stays).
import { spawn } from 'node:child_process'
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join, resolve } from 'node:path'
import { CommanderError, InvalidArgumentError, Option, type Command } from 'commander'
import { Captioner, type MapperOptions } from './captioner.js'
import { deviceOption, intOption, nonNegativeNumber, numberOption, positiveNumber, print } from './cli-options.js'
import { dataset, KARPATHY_SPLITS, splitLabeled, type Example, type KarpathySplit } from './data/index.js'
import { resolveDevice, type DeviceOption } from './device.js'
import { SemicapError } from './errors.js'
import { native } from './native.js'
import { formatDuration, ProgressBar } from './progress.js'
import { resolveDistributed, type TrainOptions, type TrainProgress, type TrainSummary } from './training/index.js'

/** Commander parser for a fraction in [0, 1]. */
function fraction(value: string): number {
  const n = numberOption(value)
  if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError(`expected a number in [0, 1], got '${value}'`)
  return n
}

export interface TrainCliOptions {
  nproc?: number
  distributed?: boolean
  model?: string
  clip?: string
  gpt2?: string
  mapper?: 'mlp' | 'transformer'
  prefixLength?: number
  stage: 'supervised' | 'clip-reward'
  data?: string
  labeled?: string
  unlabeled?: string
  labeledFraction?: number
  labeledCount?: number
  split?: KarpathySplit
  imagesDir?: string
  seed: number
  steps?: number
  epochs?: number
  batchSize?: number
  lr?: number
  warmupSteps?: number
  schedule?: 'linear' | 'cosine' | 'constant'
  objective?: 'ce' | 'scst'
  samples?: number
  maxTokens?: number
  reward?: 'refText' | 'refContrastive' | 'clipS'
  kl?: number
  repetitionPenalty?: number
  ceMix?: number
  trainLm: boolean
  checkpointDir?: string
  checkpointEvery?: number
  resume?: boolean | string
  out: string
  log?: string
  featureCache?: string
  device: DeviceOption
  progress: boolean
}

/** An error in the command line's combination of options (exit 1, `semicap: ...`). */
function usage(message: string): never {
  throw new SemicapError('E_VALUE', message)
}

function checkOptions(o: TrainCliOptions): void {
  const fromParts = o.clip !== undefined || o.gpt2 !== undefined
  if (o.model !== undefined && fromParts) usage('give --model or --clip with --gpt2, not both')
  if (o.model === undefined && !(o.clip !== undefined && o.gpt2 !== undefined)) usage('give --model <captioner dir>, or --clip <dir> and --gpt2 <dir> to create a captioner')
  if (o.model !== undefined && (o.mapper !== undefined || o.prefixLength !== undefined)) usage('--mapper and --prefix-length only apply to a new captioner (--clip/--gpt2)')
  if ((o.steps === undefined) === (o.epochs === undefined)) usage('give exactly one of --steps and --epochs')
  if (o.labeledFraction !== undefined && o.labeledCount !== undefined) usage('give --labeled-fraction or --labeled-count, not both')
  const splitting = o.labeledFraction !== undefined || o.labeledCount !== undefined
  if (o.data !== undefined && (o.labeled !== undefined || o.unlabeled !== undefined)) usage('give --data (one dataset, split with --labeled-fraction/--labeled-count) or --labeled/--unlabeled, not both')
  if (splitting && o.data === undefined && (o.labeled === undefined || o.unlabeled !== undefined)) usage('--labeled-fraction/--labeled-count split one dataset: give it with --data')
  if (o.data === undefined && o.labeled === undefined && o.unlabeled === undefined) usage('no training data: give --data, --labeled or --unlabeled')
  if (o.resume === true && o.checkpointDir === undefined) usage('--resume without a checkpoint folder needs --checkpoint-dir')
  if (o.checkpointEvery !== undefined && o.checkpointDir === undefined) usage('--checkpoint-every needs --checkpoint-dir')
}

/** Reads the training data named on the command line and divides it into labeled and unlabeled examples. */
async function readData(o: TrainCliOptions): Promise<{ labeled: Example[]; unlabeled: Example[] }> {
  const read = async (p: string) => (await dataset(p, { split: o.split, imagesDir: o.imagesDir })).examples
  const splitting = o.labeledFraction !== undefined || o.labeledCount !== undefined
  const single = o.data ?? (splitting ? o.labeled : undefined)
  if (single !== undefined) {
    const all = await read(single)
    if (splitting) {
      const split = splitLabeled(all, { labeledFraction: o.labeledFraction, labeledCount: o.labeledCount, seed: o.seed })
      process.stderr.write(`semicap: split ${single}: ${split.labeled.length} labeled, ${split.unlabeled.length} unlabeled (seed ${o.seed})\n`)
      return split
    }
    // The whole set: captions for the supervised stage, images for the CLIP-reward stage.
    return o.stage === 'supervised' ? { labeled: all, unlabeled: [] } : { labeled: all, unlabeled: all.map((e) => ({ ...e, captions: [] })) }
  }
  return { labeled: o.labeled ? await read(o.labeled) : [], unlabeled: o.unlabeled ? (await read(o.unlabeled)).map((e) => ({ ...e, captions: [] })) : [] }
}

/** Appends one JSON line per progress event; on resume, drops logged steps the resumed run is about to repeat. */
class JsonlLog {
  #fd: number
  #previous: string[] | undefined

  constructor(readonly path: string, append: boolean) {
    if (append) {
      let text = ''
      try {
        text = readFileSync(path, 'utf8')
      } catch {
        // No log yet.
      }
      this.#previous = text.split('\n').filter((l) => l.trim() !== '')
    }
    this.#fd = openSync(path, append ? 'a' : 'w')
  }

  write(p: TrainProgress): void {
    if (this.#previous) {
      // The first step of a resumed run: keep what came before it (the run may have gone past its last checkpoint).
      const keep = this.#previous.filter((l) => {
        try {
          const step = (JSON.parse(l) as { step?: unknown }).step
          return typeof step === 'number' && step < p.step
        } catch {
          return false
        }
      })
      closeSync(this.#fd)
      this.#fd = openSync(this.path, 'w')
      if (keep.length) writeSync(this.#fd, keep.join('\n') + '\n')
      this.#previous = undefined
    }
    writeSync(this.#fd, JSON.stringify(p) + '\n')
  }

  close(): void {
    closeSync(this.#fd)
  }
}

const fmtNum = (v: number | undefined): string => (v === undefined || !Number.isFinite(v) ? '-' : Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4))

/** A free loopback port for the rendezvous store. */
function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer()
    srv.once('error', rej)
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port
      srv.close(() => res(port))
    })
  })
}

/**
 * Where one rank of a data-parallel run trains, from the resolved device ('cpu', 'cuda' or 'cuda:N'), its rank on
 * this machine (LOCAL_RANK, as torchrun and --nproc set it), the number of ranks on this machine and the GPUs this
 * process sees: on CUDA, NCCL with one GPU per rank (cuda:LOCAL_RANK); on the CPU, Gloo.
 */
export function rankPlacement(device: string, localRank: number, localWorldSize: number, visibleGpus: number): { device: string; backend: 'gloo' | 'nccl' } {
  if (!Number.isInteger(localRank) || localRank < 0 || !Number.isInteger(localWorldSize) || localRank >= localWorldSize)
    throw new SemicapError('E_CONFIG', `LOCAL_RANK must be an integer in [0, ${localWorldSize}), got ${String(localRank)}`)
  if (device === 'cpu') return { device: 'cpu', backend: 'gloo' }
  if (device !== 'cuda') throw new SemicapError('E_DEVICE', `--device ${device} names one GPU; a data-parallel run gives each process its own (cuda:LOCAL_RANK): use --device cuda`)
  if (localWorldSize > visibleGpus)
    throw new SemicapError('E_DEVICE', `${localWorldSize} processes on this machine need ${localWorldSize} GPUs (one each), but ${visibleGpus} ${visibleGpus === 1 ? 'is' : 'are'} visible; lower --nproc or use --device cpu`)
  return { device: `cuda:${localRank}`, backend: 'nccl' }
}

/** Ranks on this machine: LOCAL_WORLD_SIZE (torchrun), else --nproc, else WORLD_SIZE. */
function localWorld(nproc: number | undefined): number {
  const env = process.env.LOCAL_WORLD_SIZE ?? (nproc !== undefined && nproc > 1 ? String(nproc) : process.env.WORLD_SIZE ?? '1')
  const n = Number(env)
  if (!Number.isInteger(n) || n < 1) throw new SemicapError('E_CONFIG', `LOCAL_WORLD_SIZE must be a positive integer, got ${env}`)
  return n
}

const cudaDeviceCount = (): number => native().AddonTrainer.cudaDeviceCount()

/** `--nproc N`: runs N copies of this command as ranks 0..N-1 on this machine (like torchrun) and waits for all. */
async function launch(n: number): Promise<void> {
  const port = await freePort()
  const children = Array.from({ length: n }, (_, rank) =>
    spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      stdio: rank === 0 ? 'inherit' : ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: String(n), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) },
    }),
  )
  const codes = await Promise.all(
    children.map(
      (c, rank) =>
        new Promise<number>((res) =>
          c.on('exit', (code, signal) => {
            const status = code ?? (signal ? 1 : 0)
            // One rank failing takes the run down: stop the others instead of leaving them waiting.
            if (status !== 0) for (const other of children) if (other !== c && other.exitCode === null) other.kill('SIGTERM')
            if (status !== 0) process.stderr.write(`semicap: rank ${rank} exited with status ${status}\n`)
            res(status)
          }),
        ),
    ),
  )
  const bad = codes.find((c) => c !== 0)
  if (bad !== undefined) throw new CommanderError(bad, 'semicap.rank-failed', `a training process failed (status ${bad})`)
}

export async function runTrain(o: TrainCliOptions): Promise<void> {
  checkOptions(o)
  const parallel = (o.nproc ?? 1) > 1 || o.distributed === true
  if ((o.nproc ?? 1) > 1 && process.env.RANK === undefined) {
    // Fail before starting any process when the machine lacks a GPU per rank.
    const device = resolveDevice(o.device)
    if (device !== 'cpu') rankPlacement(device, 0, o.nproc!, cudaDeviceCount())
    return launch(o.nproc!)
  }
  let distributed: ReturnType<typeof resolveDistributed>
  if (parallel) {
    const device = resolveDevice(o.device)
    const place = rankPlacement(device, Number(process.env.LOCAL_RANK ?? 0), localWorld(o.nproc), device === 'cpu' ? 0 : cudaDeviceCount())
    o.device = place.device as DeviceOption
    distributed = resolveDistributed({ backend: place.backend }, place.device)
  }
  const rank = distributed?.rank ?? 0
  if (rank !== 0) o.progress = false
  const { labeled, unlabeled } = await readData(o)
  const needsCaptions = o.stage === 'supervised' || (o.ceMix ?? 0) > 0
  if (needsCaptions && !labeled.some((e) => e.captions.length > 0)) usage(`${o.stage === 'supervised' ? 'the supervised stage' : '--ce-mix'} needs labeled examples with captions`)
  if (o.stage === 'clip-reward' && unlabeled.length === 0) usage('the clip-reward stage needs unlabeled images (--unlabeled, or --data with --labeled-fraction/--labeled-count)')
  const out = resolve(o.out)
  const logPath = resolve(o.log ?? join(out, 'train-log.jsonl'))
  const showProgress = o.progress
  const stderr = (s: string) => process.stderr.write(s.endsWith('\n') ? s : `${s}\n`)

  const mapper: MapperOptions | undefined = o.mapper !== undefined || o.prefixLength !== undefined ? { type: o.mapper, prefixLength: o.prefixLength } : undefined
  const captioner = o.model !== undefined ? await Captioner.load(o.model, { device: o.device }) : await Captioner.create({ clip: o.clip!, gpt2: o.gpt2!, mapper, device: o.device, seed: o.seed })
  const controller = new AbortController()
  let log: JsonlLog | undefined
  let bar: ProgressBar | undefined
  let interrupts = 0
  const onSigint = () => {
    interrupts++
    if (interrupts > 1) {
      stderr('\nsemicap: interrupted twice, exiting now')
      process.exit(130)
    }
    const msg = 'semicap: interrupted; stopping after the current step (Ctrl-C again to exit now)'
    if (bar) bar.log(msg)
    else stderr(msg)
    controller.abort(new Error('SIGINT'))
  }
  process.on('SIGINT', onSigint)
  let lastStep = 0
  let lastCheckpoint: string | undefined
  try {
    await mkdir(out, { recursive: true })
    await mkdir(resolve(logPath, '..'), { recursive: true })
    log = new JsonlLog(logPath, o.resume !== undefined && o.resume !== false)
    const options: TrainOptions = {
      stage: o.stage,
      labeled: o.stage === 'supervised' || (o.ceMix ?? 0) > 0 ? labeled : [],
      unlabeled: o.stage === 'clip-reward' ? unlabeled : [],
      steps: o.steps,
      epochs: o.epochs,
      batchSize: o.batchSize,
      lr: o.lr,
      warmupSteps: o.warmupSteps,
      schedule: o.schedule,
      objective: o.objective,
      samples: o.samples,
      maxTokens: o.maxTokens,
      reward: o.reward !== undefined ? { type: o.reward } : undefined,
      klCoef: o.kl,
      repetitionPenalty: o.repetitionPenalty,
      ceMix: o.ceMix !== undefined ? { weight: o.ceMix } : undefined,
      trainLm: o.trainLm,
      seed: o.seed,
      checkpointDir: o.checkpointDir,
      checkpointEvery: o.checkpointEvery,
      resume: o.resume,
      featureCache: o.featureCache,
      signal: controller.signal,
      distributed: distributed ? { backend: distributed.backend } : undefined,
    }
    for (const k of Object.keys(options) as (keyof TrainOptions)[]) if (options[k] === undefined) delete options[k]
    const what = `${o.stage}${o.stage === 'supervised' ? ` (${o.objective ?? 'ce'})` : ''}`
    const used = [(options.labeled as Example[]).length ? `${(options.labeled as Example[]).length} labeled` : '', (options.unlabeled as Example[]).length ? `${(options.unlabeled as Example[]).length} unlabeled` : '']
    stderr(`semicap: training ${what} on ${captioner.device} with ${used.filter(Boolean).join(' and ')} images`)

    const run = captioner.train(options)
    let featureBar: ProgressBar | undefined
    run.on('prepare', (e: { phase: string; done?: number; total?: number; hits?: number; misses?: number }) => {
      if (!showProgress) return
      if (e.phase === 'features' && e.total !== undefined) {
        featureBar ??= new ProgressBar('features', e.total, { unit: 'img' })
        featureBar.update(e.done ?? 0)
      } else if (e.phase === 'features-done') {
        featureBar?.finish(`(${e.hits} cached, ${e.misses} computed)`)
      }
    })
    run.on('progress', (p: TrainProgress) => {
      lastStep = p.step
      if (rank === 0) log!.write(p)
      if (!showProgress) return
      bar ??= new ProgressBar(o.stage === 'supervised' ? 'train' : 'clip-reward', p.totalSteps, { unit: 'step' })
      bar.setTotal(p.totalSteps)
      const note = [`loss ${fmtNum(p.loss)}`, p.reward !== undefined ? `reward ${fmtNum(p.reward)}` : '', p.kl !== undefined && p.kl !== 0 ? `kl ${fmtNum(p.kl)}` : ''].filter(Boolean).join(' ')
      bar.update(p.step, note)
    })
    run.on('checkpoint', (c: { step: number; path: string }) => {
      lastCheckpoint = c.path
      if (showProgress) bar ? bar.log(`checkpoint: ${c.path}`) : stderr(`checkpoint: ${c.path}`)
    })
    let summary: TrainSummary
    try {
      summary = await run
    } catch (err) {
      bar?.stop()
      featureBar?.stop()
      if (err instanceof SemicapError && err.code === 'E_ABORTED' && controller.signal.aborted) {
        const where = lastCheckpoint ?? (o.checkpointDir ? `the latest in ${resolve(o.checkpointDir)}` : undefined)
        stderr(`semicap: training interrupted after step ${lastStep}; nothing was saved to ${out}${where ? ` (last checkpoint: ${where})` : ''}`)
        throw new CommanderError(130, 'semicap.interrupted', 'training interrupted')
      }
      throw err
    }
    bar?.finish()
    if (controller.signal.aborted) {
      // Ctrl-C after the last step: the run is complete, save it.
      stderr('semicap: the run had already finished; saving it')
    }
    if (rank !== 0) return  // rank 0 saves and reports for the run
    await captioner.save(out)
    await print(
      `trained ${summary.steps} steps in ${formatDuration(summary.seconds)}` +
        `${summary.lastLoss !== undefined ? `, last loss ${fmtNum(summary.lastLoss)}` : ''}` +
        `${summary.meanReward !== undefined ? `, mean reward ${fmtNum(summary.meanReward)}` : ''}` +
        `; saved ${out} (log: ${logPath})\n`,
    )
  } finally {
    process.off('SIGINT', onSigint)
    log?.close()
    captioner.dispose()
  }
}

export function trainCommand(program: Command): void {
  program
    .command('train')
    .description('train a captioner: the supervised stage (cross-entropy or SCST on captions) or the CLIP-reward stage (unlabeled images)')
    .option('-m, --model <dir>', 'start from a saved captioner folder')
    .option('--clip <dir>', 'create a captioner: Hugging Face CLIP folder')
    .option('--gpt2 <dir>', 'create a captioner: Hugging Face GPT-2 folder')
    .addOption(new Option('--mapper <type>', 'mapping network of a new captioner (default mlp)').choices(['mlp', 'transformer']))
    .option('--prefix-length <n>', 'prefix tokens of a new captioner (default 10)', intOption(1))
    .addOption(new Option('--stage <stage>', 'training stage').choices(['supervised', 'clip-reward']).default('supervised'))
    .option('--data <path>', 'one dataset (COCO/Karpathy JSON, JSONL or image folder), split with --labeled-fraction or --labeled-count')
    .option('--labeled <path>', 'labeled dataset (images with captions)')
    .option('--unlabeled <path>', 'unlabeled images (captions, if any, are ignored)')
    .option('--labeled-fraction <f>', 'fraction of the captioned images to keep labeled', fraction)
    .option('--labeled-count <n>', 'number of captioned images to keep labeled', intOption(0))
    .addOption(new Option('--split <name>', 'Karpathy split to read').choices([...KARPATHY_SPLITS]))
    .option('--images-dir <dir>', 'images folder of a COCO/Karpathy JSON (default: its folder)')
    .option('--seed <n>', 'seed of the labeled split, initialisation and sampling', intOption(0), 0)
    .option('--steps <n>', 'optimizer steps', intOption(1))
    .option('--epochs <e>', 'epochs over the training data (instead of --steps)', positiveNumber)
    .option('--batch-size <n>', 'images (or captions) per step (default 8)', intOption(1))
    .option('--lr <x>', 'peak learning rate', positiveNumber)
    .option('--warmup-steps <n>', 'linear warm-up steps', intOption(0))
    .addOption(new Option('--schedule <kind>', 'learning-rate schedule (default linear)').choices(['linear', 'cosine', 'constant']))
    .addOption(new Option('--objective <kind>', 'supervised objective (default ce)').choices(['ce', 'scst']))
    .option('--samples <n>', 'SCST samples per image (default 5)', intOption(1))
    .option('--max-tokens <n>', 'longest sampled caption (default 20)', intOption(1))
    .addOption(new Option('--reward <kind>', 'SCST reward (default: refText in the supervised stage, clipS in the clip-reward stage)').choices(['refText', 'refContrastive', 'clipS']))
    .option('--kl <coef>', 'per-token KL penalty to the starting model', nonNegativeNumber)
    .option('--repetition-penalty <x>', 'reward penalty per repeated n-gram', nonNegativeNumber)
    .option('--ce-mix <w>', 'clip-reward stage: add w * cross-entropy on labeled batches', nonNegativeNumber)
    .option('--no-train-lm', 'train the mapping network only (GPT-2 frozen)')
    .option('--checkpoint-dir <dir>', 'write checkpoints here')
    .option('--checkpoint-every <n>', 'checkpoint every n steps', intOption(1))
    .option('--resume [checkpoint]', 'continue from the latest checkpoint in --checkpoint-dir (or from the given checkpoint folder)')
    .requiredOption('-o, --out <dir>', 'where the trained captioner is saved')
    .option('--log <file>', 'JSON line per step (default <out>/train-log.jsonl)')
    .option('--feature-cache <dir>', 'CLIP image feature cache (default $SEMICAP_CACHE or ~/.cache/semicap/features)')
    .option('--device <device>', 'cpu, cuda, cuda:N or auto', deviceOption, 'auto')
    .option('--no-progress', 'no progress bar')
    .option('--nproc <n>', 'data-parallel over n local processes (Gloo on the CPU; NCCL with one GPU each, cuda:LOCAL_RANK, on CUDA); --batch-size is per process', intOption(1))
    .option('--distributed', 'join a data-parallel run described by RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (several machines)')
    .action((o: TrainCliOptions) => runTrain(o))
}
