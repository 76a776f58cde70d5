// Does continuous batching change anyone's caption? Each test image of a finished demo run is captioned alone
// (maxBatch: 1, one call after another) and then by concurrent calls that share decode steps (the default maxBatch),
// greedy with the demo's evaluation length; the token ids are compared per image. A matrix product's summation order
// depends on how many rows it holds, so batched logits can differ from the unbatched ones in the last bits; this
// counts how often that flips a greedy choice.
//
//   node --import tsx bench/batching-agreement.ts --demo demo-out/world-seed0 [--captioners full-seed0,small-seed0,...] [--max-batch 16]
import { readFile, readdir } from 'node:fs/promises'
import { cpus } from 'node:os'
import { join } from 'node:path'
import { Captioner } from '../lib/index.js'

const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1]! : d
}
const demo = arg('demo', 'demo-out/world-seed0')  // a demo run's stage cache of one world seed
const maxBatch = Number(arg('max-batch', '16'))
const names = arg('captioners', '') ? arg('captioners', '').split(',') : (await readdir(join(demo, 'captioners'))).sort()
const tests = (await readFile(join(demo, 'world', 'test.jsonl'), 'utf8'))
  .split('\n')
  .filter(Boolean)
  .map((l) => join(demo, 'world', (JSON.parse(l) as { image: string }).image))
const decode = { maxTokens: 30 }

let total = 0
let same = 0
const rows: string[] = []
for (const name of names) {
  const dir = join(demo, 'captioners', name)
  const alone = await Captioner.load(dir, { maxBatch: 1 })
  const t0 = performance.now()
  const solo: number[][] = []
  for (const img of tests) solo.push((await alone.caption([img], decode))[0]!.ids)
  const soloMs = performance.now() - t0
  await alone.dispose()
  const batched = await Captioner.load(dir, { maxBatch, maxQueue: tests.length })
  const t1 = performance.now()
  const together = await Promise.all(tests.map(async (img) => (await batched.caption([img], decode))[0]!.ids))
  const batchMs = performance.now() - t1
  const stats = batched.batchStats()
  await batched.dispose()
  const agree = solo.filter((ids, i) => JSON.stringify(ids) === JSON.stringify(together[i])).length
  total += tests.length
  same += agree
  rows.push(`| ${name} | ${agree}/${tests.length} | ${(stats.rowSteps / Math.max(stats.steps, 1)).toFixed(1)} | ${soloMs.toFixed(0)} | ${batchMs.toFixed(0)} |`)
}
console.log(`CPU: ${cpus()[0]?.model} x${cpus().length}; greedy, maxTokens ${decode.maxTokens}; batched: ${tests.length} concurrent calls, maxBatch ${maxBatch}`)
console.log('| captioner | ids identical to alone | mean rows per step | alone, ms (sequential) | batched, ms |')
console.log('|---|---|---|---|---|')
console.log(rows.join('\n'))
console.log(`\nall: ${same}/${total} identical (${((100 * same) / total).toFixed(2)}%)`)
