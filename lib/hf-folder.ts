// Hugging Face model folders as Clip.save() and Gpt2.save() write them: config.json, model.safetensors and the
// byte-level BPE files (vocab.json + merges.txt).
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { SemicapError } from './errors.js'
import type { ClipTokenizer } from './tokenizers/clip.js'
import { Gpt2Tokenizer } from './tokenizers/gpt2.js'

/** vocab.json + merges.txt of a byte-level BPE, as Hugging Face writes them. */
export async function writeBpeFiles(dir: string, tok: Gpt2Tokenizer | ClipTokenizer): Promise<void> {
  const entries = [...tok.vocab.entries()].sort((a, b) => a[1] - b[1])
  const vocabJson = '{' + entries.map(([t, id]) => `${JSON.stringify(t)}: ${id}`).join(', ') + '}\n'
  const merges = tok instanceof Gpt2Tokenizer ? tok.merges : tok.merges
  await writeFile(join(dir, 'vocab.json'), vocabJson)
  await writeFile(join(dir, 'merges.txt'), ['#version: 0.2', ...merges.map((m) => `${m[0]} ${m[1]}`)].join('\n') + '\n')
}

/** config.json + model.safetensors (+ tokenizer files) for a CLIP or GPT-2 folder. */
export async function saveHfFolder(
  dir: string,
  rawConfig: object,
  save: (path: string) => Promise<void>,
  tokenizer: Gpt2Tokenizer | ClipTokenizer | undefined,
): Promise<void> {
  if (typeof dir !== 'string' || !dir) throw new TypeError('dir must be a non-empty string')
  try {
    await mkdir(dir, { recursive: true })
  } catch (err) {
    throw new SemicapError('E_IO', `${dir}: cannot create (${(err as Error).message})`, { cause: err })
  }
  await save(join(dir, 'model.safetensors'))
  if (tokenizer) await writeBpeFiles(dir, tokenizer)
  await writeFile(join(dir, 'config.json'), JSON.stringify(rawConfig, null, 2) + '\n')
}
