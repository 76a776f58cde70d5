// `semicap demo`: the whole method end to end in a synthetic world with exact ground truth (lib/demo). Trains a
// tokenizer, a stand-in CLIP and GPT-2, three captioners ((a) stage 1 on 100% of the labels, (b) on 2%, (c) (b) +
// stage 2 with the CLIP-S reward on the unlabeled rest), evaluates them on the test split and prints the table.
// Every stage is cached under --out, so a second run only redoes what changed.
import { availableParallelism } from 'node:os'
import { type Command } from 'commander'
import { deviceOption, intOption, positiveNumber, print } from './cli-options.js'
import { demoConfig } from './demo/config.js'
import { formatClaims, runDemo } from './demo/experiment.js'
import type { DemoReporter, StageEvent } from './demo/pipeline.js'
import type { DeviceOption } from './device.js'
import { formatDuration, ProgressBar } from './progress.js'

export interface DemoCliOptions {
  out: string
  seeds: number
  scale: number
  device: DeviceOption
  quick?: boolean
  seed: number
  threads?: number
  report: boolean
  progress: boolean
}

/** Progress bars and stage lines on stderr. */
export function cliReporter(enabled: boolean): DemoReporter {
  const stderr = (text: string) => void process.stderr.write(text)
  return {
    stage(e: StageEvent) {
      if (e.status === 'skip') stderr(`demo: ${e.label}: cached (${e.dir})\n`)
      else if (e.status === 'done') stderr(`demo: ${e.label}: done in ${formatDuration(e.seconds ?? 0)}\n`)
    },
    bar: enabled ? (label, total, unit) => new ProgressBar(label, total, { unit }) : undefined,
  }
}

export const demoCommand = (program: Command): void => {
  program
    .command('demo')
    .description('run the semi-supervised captioning method end to end in a synthetic world and print the results table')
    .option('-o, --out <dir>', 'output folder; finished stages found there are reused', './demo-out')
    .option('--seeds <n>', 'captioner seeds (each also draws its own 2% labeled subset); >1 prints mean ± sd', intOption(1), 1)
    .option('--scale <x>', 'multiply world size and training steps, widen the models by sqrt(x)', positiveNumber, 1)
    .option('--device <device>', 'cpu, cuda, cuda:N or auto', deviceOption, 'auto' as DeviceOption)
    .option('--quick', 'a toy configuration that runs in seconds (smoke test; its numbers mean nothing)')
    .option('--seed <n>', 'world seed', intOption(0), 0)
    .option('--threads <n>', 'libtorch threads (default: all cores)', intOption(1))
    .option('--no-report', 'skip the HTML report')
    .option('--no-progress', 'no progress bars')
    .action(async (o: DemoCliOptions) => {
      const config = demoConfig({ scale: o.scale, quick: o.quick === true, seed: o.seed })
      const result = await runDemo({
        out: o.out,
        config,
        seeds: o.seeds,
        device: o.device,
        threads: o.threads ?? availableParallelism(),
        report: o.report,
        reporter: cliReporter(o.progress),
      })
      const r = result.clip.retrieval
      const pct = (x: number) => `${(100 * x).toFixed(0)}%`
      const lines = [
        '',
        `semicap demo (${result.seeds} seed${result.seeds > 1 ? 's' : ''}, ${result.device}, scale ${o.scale}${o.quick ? ', quick' : ''}) - test split of ${config.world.testImages} images, ` +
          `${Math.round(config.world.labeledFraction * config.world.trainImages)} of ${config.world.trainImages} train images labeled`,
        ...(r
          ? [
              `stand-in CLIP on ${r.images} held-out images: full caption -> image R@1 ${pct(r.fullTextToImage[0])} (R@5 ${pct(r.fullTextToImage[1])}), ` +
                `image -> full caption R@1 ${pct(r.fullImageToText[0])}, reference -> image R@1 ${pct(r.referenceTextToImage[0])}`,
              `  prefers the true full caption to one with a wrong shape ${pct(r.prefersTrue.shape)}, colour ${pct(r.prefersTrue.colour)}, ` +
                `size ${pct(r.prefersTrue.size)}, or a missing object ${pct(r.prefersTrue.complete)}`,
            ]
          : []),
        '',
        result.table,
        '',
        'obj P/R/F1: attribute facts (shape, colour, size) of the caption checked against the scene graph; R@1: CLIP self-retrieval; rep: share of captions repeating a bigram',
        '',
        formatClaims(result.claims),
        '',
        `results: ${result.files.results}${result.files.report ? `\nreport:  ${result.files.report}` : ''}`,
        `time: ${formatDuration(result.seconds)}`,
        '',
      ]
      await print(lines.join('\n'))
    })
}
