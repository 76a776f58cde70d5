#!/usr/bin/env node
// The `semicap` command line. Each command is a module: a function that adds one subcommand to the program.
// `caption` and `info` live here; others (train, eval, demo) go in their own files, export a CommandModule, and are
// listed in `commands` below. Errors print `semicap: <message>` and exit with status 1 (the stack with SEMICAP_DEBUG=1).
import { realpathSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { Command, CommanderError, Option } from 'commander'
import { Captioner } from './captioner.js'
import { convertCommand } from './cli-convert.js'
import { demoCommand } from './cli-demo.js'
import { evalCommand } from './cli-eval.js'
import { trainCommand } from './cli-train.js'
import { intOption, numberOption, print, type CommandModule } from './cli-options.js'
import type { DecodeOptions } from './decoding.js'
import type { DeviceOption } from './device.js'
import { runtimeInfo } from './runtime.js'

export { intOption, numberOption, print, type CommandModule } from './cli-options.js'

interface CaptionCliOptions {
  model: string
  decoding?: 'greedy' | 'beam' | 'sample'
  beams?: number
  maxTokens?: number
  minTokens?: number
  temperature?: number
  topP?: number
  topK?: number
  seed?: number
  batchSize: number
  device: DeviceOption
  json?: boolean
}

export const captionCommand: CommandModule = (program) => {
  program
    .command('caption')
    .description('caption images with a saved captioner')
    .argument('<images...>', 'image files (any format sharp reads)')
    .requiredOption('-m, --model <dir>', 'a captioner folder written by Captioner.save()')
    .addOption(new Option('--decoding <method>', 'decoding method').choices(['greedy', 'beam', 'sample']))
    .option('--beams <n>', 'beam width (implies --decoding beam)', intOption(1))
    .option('--max-tokens <n>', 'most tokens per caption', intOption(1))
    .option('--min-tokens <n>', 'fewest tokens per caption', intOption(0))
    .option('--temperature <t>', 'sampling temperature', numberOption)
    .option('--top-p <p>', 'nucleus sampling mass', numberOption)
    .option('--top-k <k>', 'sample among the k most likely tokens', intOption(0))
    .option('--seed <n>', 'sampling seed', intOption(0))
    .option('--batch-size <n>', 'images decoded together', intOption(1), 32)
    .addOption(new Option('--device <device>', 'where to run').choices(['cpu', 'cuda', 'auto']).default('auto'))
    .option('--json', 'print a JSON array of {image, caption, score}')
    .action(async (images: string[], o: CaptionCliOptions) => {
      const decode: DecodeOptions = {
        decoding: o.decoding ?? (o.beams !== undefined ? 'beam' : undefined),
        beams: o.beams,
        maxTokens: o.maxTokens,
        minTokens: o.minTokens,
        temperature: o.temperature,
        topP: o.topP,
        topK: o.topK,
        seed: o.seed,
      }
      for (const k of Object.keys(decode) as (keyof DecodeOptions)[]) if (decode[k] === undefined) delete decode[k]
      const captioner = await Captioner.load(o.model, { device: o.device })
      try {
        const results: { image: string; caption: string; score: number }[] = []
        for (let i = 0; i < images.length; i += o.batchSize) {
          const batch = images.slice(i, i + o.batchSize)
          const captions = await captioner.caption(batch, decode)
          captions.forEach((c, j) => results.push({ image: batch[j]!, caption: c.text, score: c.score }))
          if (!o.json) await print(captions.map((c, j) => `${batch[j]}: ${c.text}\n`).join(''))
        }
        if (o.json) await print(JSON.stringify(results, null, 2) + '\n')
      } finally {
        captioner.dispose()
      }
    })
}

export const infoCommand: CommandModule = (program) => {
  program
    .command('info')
    .description('print the native runtime (libtorch version, CUDA, threads) as JSON')
    .action(async () => {
      await print(JSON.stringify(runtimeInfo(), null, 2) + '\n')
    })
}

/** The commands of `semicap`, in help order. Add new command modules here. */
export const commands: CommandModule[] = [captionCommand, infoCommand, trainCommand, evalCommand, demoCommand, convertCommand]

/** A fresh program with `modules` registered; it throws CommanderError instead of exiting. */
export function createProgram(modules: readonly CommandModule[] = commands): Command {
  const program = new Command('semicap')
    .description('Semi-supervised image captioning with CLIP')
    .showHelpAfterError('(add --help for usage)')
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(`semicap: ${text.replace(/^error: /, '')}`) })
  for (const add of modules) add(program)
  return program
}
export { createProgram as program }

/** Runs the CLI on `argv` (node, script, ...args) and returns the exit status; errors are printed, never thrown. */
export async function main(argv: readonly string[] = process.argv): Promise<number> {
  const program = createProgram()
  try {
    await program.parseAsync([...argv])
    return 0
  } catch (err) {
    // Commander has already printed its own errors (unknown option, missing argument) and help.
    if (err instanceof CommanderError) return err.exitCode
    const message = err instanceof Error ? err.message : String(err)
    process.stderr.write(`semicap: ${message}\n`)
    if (process.env.SEMICAP_DEBUG === '1' && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`)
    return 1
  }
}

/** True when this file is the program node was started with (directly, through tsx, or via an npm bin link). */
function isMainModule(): boolean {
  const entry = process.argv[1]
  if (!entry) return false
  try {
    return import.meta.url === pathToFileURL(realpathSync(entry)).href
  } catch {
    return false
  }
}

if (isMainModule()) {
  main().then(
    (code) => {
      process.exitCode = code
    },
    (err: unknown) => {
      process.stderr.write(`semicap: ${String(err)}\n`)
      process.exitCode = 1
    },
  )
}
