import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const repoRoot = resolve(fileURLToPath(new URL('../..', import.meta.url)))
/** ../shared beside the checkout (CI lays it there too). */
export const shared = resolve(repoRoot, '..', 'shared')
export const goldenDir = join(shared, 'golden', 'tiny')
export const clipTokenizerDir = join(shared, 'clip-tokenizer')

export function tempDir(prefix = 'semicap-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix))
}
