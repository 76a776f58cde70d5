// `semicap demo`: the whole method end to end in a synthetic world with exact ground truth (lib/demo). Trains a
// tokenizer, two stand-in CLIPs (the reward CLIP the captioners use and a held-out judge) and GPT-2, then the
// captioners: (a) stage 1 on 100% of the labels, (b) on 2%, (b+) (b) + the stage-1 contrastive SCST, (c) (b+) + stage 2
// with the CLIP-S reward on the unlabeled rest, (c-) (b) + stage 2, and with --ablations stage 2 without the KL or the
// repetition penalty. Evaluates them on the test split and prints the table, the win rates by facts and the claims
// next to the committed multi-run evidence. Every stage is cached under --out, so a second run only redoes what changed.
import { writeFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { type Command } from 'commander'
import { deviceOption, intOption, positiveNumber, print } from './cli-options.js'
import { formatClaimEvidence, formatVerdicts } from './demo/claims.js'
import { demoConfig } from './demo/config.js'
import { runDemo } from './demo/experiment.js'
import type { ClipRetrieval, DemoReporter, StageEvent } from './demo/pipeline.js'
import type { DeviceOption } from './device.js'
import { formatDuration, ProgressBar } from './progress.js'

export interface DemoCliOptions {
  out: string
  seeds: number
  worldSeeds: number
  ablations?: boolean
  scale: number
  device: DeviceOption
  quick?: boolean
  seed: number
  threads?: number
  jobs?: number
  writeEvidence?: string
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

const pct = (x: number) => `${(100 * x).toFixed(0)}%`

function retrievalLines(name: string, r: ClipRetrieval | undefined): string[] {
  if (!r) return []
  return [
    `${name} on ${r.images} held-out images: full caption -> image R@1 ${pct(r.fullTextToImage[0])} (R@5 ${pct(r.fullTextToImage[1])}), ` +
      `image -> full caption R@1 ${pct(r.fullImageToText[0])}, reference -> image R@1 ${pct(r.referenceTextToImage[0])}`,
    `  prefers the true full caption to one with a wrong shape ${pct(r.prefersTrue.shape)}, colour ${pct(r.prefersTrue.colour)}, ` +
      `size ${pct(r.prefersTrue.size)}, or a missing object ${pct(r.prefersTrue.complete)}`,
  ]
}

export const demoCommand = (program: Command): void => {
  program
    .command('demo')
    .description('run the semi-supervised captioning method end to end in a synthetic world and print the results table')
    .option('-o, --out <dir>', 'output folder; finished stages found there are reused', './demo-out')
    .option('--seeds <n>', 'captioner seeds per world seed (each also draws its own 2% labeled subset)', intOption(1), 1)
    .option('--world-seeds <n>', 'world seeds --seed, --seed+1, ...: each its own world, tokenizer, CLIPs and GPT-2', intOption(1), 1)
    .option('--ablations', 'also train stage 2 without the KL penalty and without the repetition penalty')
    .option('--scale <x>', 'multiply world size and training steps, widen the models by sqrt(x)', positiveNumber, 1)
    .option('--device <device>', 'cpu, cuda, cuda:N or auto', deviceOption, 'auto' as DeviceOption)
    .option('--quick', 'a toy configuration that runs in seconds (smoke test; its numbers mean nothing)')
    .option('--seed <n>', 'world seed (the first one with --world-seeds)', intOption(0), 0)
    .option('--jobs <n>', 'training stages at once (default: 2 on 2+ cores; CPU only)', intOption(1))
    .option('--threads <n>', 'libtorch threads (default: cores / jobs)', intOption(1))
    .option('--write-evidence <file>', 'write the claims, table and win rates over all runs as evidence JSON (e.g. lib/demo/evidence.json)')
    .option('--no-report', 'skip the HTML report')
    .option('--no-progress', 'no progress bars')
    .action(async (o: DemoCliOptions) => {
      const config = demoConfig({ scale: o.scale, quick: o.quick === true, seed: o.seed })
      const cores = availableParallelism()
      // A GPU runs one stage at a time well; on a CPU two single-threaded stages beat one two-threaded one.
      const jobs = o.jobs ?? (o.device.startsWith('cuda') ? 1 : Math.min(2, cores))
      const result = await runDemo({
        out: o.out,
        config,
        seeds: o.seeds,
        worldSeeds: o.worldSeeds,
        ablations: o.ablations === true,
        device: o.device,
        jobs,
        threads: o.threads ?? Math.max(1, Math.floor(cores / jobs)),
        report: o.report,
        reporter: cliReporter(o.progress),
      })
      const runs = result.runs.length
      const multi = runs > 1
      if (o.writeEvidence) {
        const evidence = { ...result.evidence, provenance: { ...result.evidence.provenance, command: `semicap demo ${process.argv.slice(3).join(' ')}` } }
        await writeFile(o.writeEvidence, JSON.stringify(evidence, null, 2) + '\n')
      }
      const lines = [
        '',
        `semicap demo (${result.worldSeeds.length} world seed${result.worldSeeds.length > 1 ? 's' : ''} x ${result.seeds} captioner seed${result.seeds > 1 ? 's' : ''}, ` +
          `${result.device}, scale ${o.scale}${o.quick ? ', quick' : ''}) - test split of ${config.world.testImages} images, ` +
          `${Math.round(config.world.labeledFraction * config.world.trainImages)} of ${config.world.trainImages} train images labeled`,
        ...retrievalLines('reward CLIP', result.clip.retrieval),
        ...retrievalLines('judge CLIP (held out, never a reward)', result.judge.retrieval),
        '',
        multi ? `mean ± sd over ${runs} runs (world seeds x captioner seeds):` : 'world seed ' + result.worldSeeds[0] + ', captioner seed 0:',
        result.table,
        '',
        'CLIP-S / RefCLIP-S / R@1 "judge": by the held-out judge CLIP; "reward": by the CLIP stage 2 optimises. obj P/R/F1 and false/cap:',
        'attribute facts (shape, colour, size) checked against the scene graph; rep: share of captions repeating a bigram',
        '',
        'pairwise preference by facts (more true facts and fewer false ones wins; otherwise a tie):',
        result.preferenceTable,
        '',
        multi ? `claims over ${runs} runs ("within noise": held in some runs only, or a margin under 2 sd):` : 'claims (this run, then the committed multi-run evidence):',
        multi ? formatClaimEvidence(result.evidence.claims) : formatVerdicts(result.claims, { ablationsHint: !result.ablations }),
        ...(!multi && !result.evidenceMatches ? ['(no committed multi-run evidence for this configuration: lib/demo/evidence.json is about the default one)'] : []),
        '',
        `results: ${result.files.results}${result.files.report ? `\nreport:  ${result.files.report}` : ''}${o.writeEvidence ? `\nevidence: ${o.writeEvidence}` : ''}`,
        `time: ${formatDuration(result.seconds)}`,
        '',
      ]
      await print(lines.join('\n'))
    })
}
