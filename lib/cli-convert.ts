// `semicap convert`: weights people already have (pytorch_model.bin, sharded folders, ClipCap checkpoints) to
// safetensors folders semicap (and everyone else) loads without parsing a pickle.
import { copyFile, mkdir, readdir, stat } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { Captioner } from './captioner.js'
import { intOption, print, type CommandModule } from './cli-options.js'
import { SemicapError } from './errors.js'
import { ProgressBar } from './progress.js'
import { convertWeights, readSafetensorsHeader } from './runtime.js'
import { findWeights, weightsFileSet } from './weights-files.js'

interface ConvertCliOptions {
  clip?: string
  gpt2?: string
  heads?: number
  progress: boolean
}

export interface ConvertResult {
  /** The safetensors file written. */
  output: string
  bytes: number
  seconds: number
}

/** Writes `weightsPath` (any format the loader reads) as a safetensors file, with a progress callback in bytes. */
async function convertFile(weightsPath: string, outFile: string, showProgress: boolean): Promise<ConvertResult> {
  const bar = showProgress ? new ProgressBar(`convert ${basename(weightsPath)}`, 1, { unit: 'MB' }) : undefined
  const t0 = performance.now()
  let total = 0
  try {
    await convertWeights(weightsPath, outFile, {
      metadata: { format: 'pt', source: basename(weightsPath) },
      onProgress: (done, all) => {
        total = all
        bar?.update(done / 1e6 / Math.max(all / 1e6, 1e-9), `${(done / 1e6).toFixed(0)}/${(all / 1e6).toFixed(0)} MB`)
      },
    })
  } finally {
    bar?.finish()
  }
  const seconds = (performance.now() - t0) / 1000
  const bytes = total || (await stat(outFile)).size
  return { output: outFile, bytes, seconds }
}

/**
 * Converts `input` into the folder `out`:
 * - a model folder (config.json + pytorch_model.bin or a sharded index): the same folder with model.safetensors;
 * - a ClipCap checkpoint (with clip and gpt2 folders): a semicap captioner folder (Captioner.save);
 * - any other weights file: out/model.safetensors.
 */
export async function convert(input: string, out: string, o: Partial<ConvertCliOptions> = {}): Promise<ConvertResult> {
  const src = resolve(input)
  const st = await stat(src).catch((err: Error) => {
    throw new SemicapError('E_IO', `${input}: ${err.message}`, { cause: err })
  })
  await mkdir(out, { recursive: true })
  if (st.isDirectory()) {
    const weights = await findWeights(src)
    const skip = new Set((await weightsFileSet(weights)).map((p) => basename(p)))
    for (const e of await readdir(src, { withFileTypes: true })) {
      // Everything but the weights travels along: config, tokenizer files, README, generation config.
      if (e.isFile() && !skip.has(e.name) && !/\.(bin|pt|pth|safetensors|ckpt)$/.test(e.name) && !e.name.endsWith('.index.json')) {
        await copyFile(join(src, e.name), join(out, e.name))
      }
    }
    return convertFile(weights, join(out, 'model.safetensors'), o.progress ?? false)
  }
  const header = await readSafetensorsHeader(src)
  if (header.names.some((n) => n.startsWith('clip_project.'))) {
    if (!o.clip || !o.gpt2) throw new SemicapError('E_CONFIG', `${input} is a ClipCap checkpoint: give --clip <CLIP folder> and --gpt2 <GPT-2 folder> to convert it into a captioner folder`)
    const t0 = performance.now()
    const captioner = await Captioner.fromClipCap(src, { clip: o.clip, gpt2: o.gpt2, heads: o.heads })
    try {
      await captioner.save(out)
    } finally {
      await captioner.dispose()
    }
    const output = join(out, 'model.safetensors')
    return { output, bytes: (await stat(output)).size, seconds: (performance.now() - t0) / 1000 }
  }
  return convertFile(src, join(out, 'model.safetensors'), o.progress ?? false)
}

export const convertCommand: CommandModule = (program) => {
  program
    .command('convert')
    .description('convert pytorch_model.bin, sharded folders or a ClipCap checkpoint to a safetensors folder')
    .argument('<input>', 'a model folder, a weights file (.bin/.pt/.safetensors/index .json) or a ClipCap .pt')
    .argument('<out>', 'the folder to write')
    .option('--clip <dir>', 'ClipCap: the Hugging Face CLIP folder its features came from')
    .option('--gpt2 <dir>', 'ClipCap: a GPT-2 folder (config.json + tokenizer)')
    .option('--heads <n>', 'ClipCap transformer mapper: attention heads (not stored in the file)', intOption(1))
    .option('--no-progress', 'no progress bar')
    .action(async (input: string, out: string, o: ConvertCliOptions) => {
      const r = await convert(input, out, o)
      const mb = r.bytes / 1e6
      await print(`${r.output}: ${mb.toFixed(1)} MB in ${r.seconds.toFixed(2)} s (${(mb / Math.max(r.seconds, 1e-9)).toFixed(0)} MB/s)\n`)
    })
}
