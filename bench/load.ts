// Load-time benchmark of the weights formats (issue: "Bring the weights people already have"): GPT-2 124M from
// model.safetensors, from pytorch_model.bin (real torch.save, with the hub file's buffers and tied head) and from a
// 2-shard .bin folder, side by side in one tinybench run; then `semicap convert` (.bin -> safetensors) against a
// plain copy of the same bytes on the same disk, which bounds it.
//
//   npx tsx bench/make-models.ts --out bench/out/models      (once; the 124M GPT-2 is bench/out/models/gpt2)
//   node --import tsx bench/load.ts [--models bench/out/models] [--iters 5]
// Needs /usr/bin/python3 with Debian's python3-torch to write the .bin files (bench/make-torch-bin.py).
import { execFileSync } from 'node:child_process'
import { copyFile, mkdir, rm, stat } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { join } from 'node:path'
import { Bench } from 'tinybench'
import { Gpt2 } from '../lib/index.js'
import { convert } from '../lib/cli-convert.js'

const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1]! : d
}
const models = arg('models', 'bench/out/models')
const iters = Number(arg('iters', '5'))
const out = 'bench/out/load'
const st = join(models, 'gpt2')
const bin = join(out, 'gpt2-bin')
const sharded = join(out, 'gpt2-bin-sharded')

async function exists(p: string) {
  return stat(p).then(
    () => true,
    () => false,
  )
}

await mkdir(out, { recursive: true })
for (const [dir, extra] of [[bin, []], [sharded, ['--shards', '2']]] as const) {
  if (!(await exists(join(dir, 'config.json')))) {
    console.error(`writing ${dir} with torch.save ...`)
    execFileSync('/usr/bin/python3', ['bench/make-torch-bin.py', st, dir, ...extra], { stdio: 'inherit' })
  }
}

const size = async (p: string) => (await stat(p)).size
const bench = new Bench({ iterations: iters, time: 0, warmupIterations: 1, warmupTime: 0, throws: true })
for (const [name, dir] of [
  ['Gpt2.load model.safetensors', st],
  ['Gpt2.load pytorch_model.bin', bin],
  ['Gpt2.load 2-shard .bin index', sharded],
] as const) {
  bench.add(name, async () => {
    const g = await Gpt2.load(dir)
    await g.dispose()
  })
}
await bench.run()

// convert: .bin -> safetensors, against copying the .bin itself (the disk's rate for the same bytes).
const binFile = join(bin, 'pytorch_model.bin')
const binBytes = await size(binFile)
const conv: number[] = []
const copy: number[] = []
for (let i = 0; i < 3; i++) {
  const dst = join(out, 'converted')
  await rm(dst, { recursive: true, force: true })
  const r = await convert(bin, dst, { progress: false })
  conv.push(r.bytes / 1e6 / r.seconds)
  const c0 = performance.now()
  await copyFile(binFile, join(out, 'copy.bin'))
  execFileSync('sync')
  copy.push(binBytes / 1e6 / ((performance.now() - c0) / 1000))
  await rm(join(out, 'copy.bin'), { force: true })
}
const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!

const lscpu = execFileSync('lscpu', { encoding: 'utf8' })
const model = /Model name:\s*(.*)/.exec(lscpu)?.[1] ?? cpus()[0]?.model
const lines = [
  `CPU: ${model} (${cpus().length} cores), load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`,
  `GPT-2 124M: model.safetensors ${((await size(join(st, 'model.safetensors'))) / 1e6).toFixed(0)} MB, pytorch_model.bin ${(binBytes / 1e6).toFixed(0)} MB`,
  '',
  '| task | median ms | min ms | vs safetensors |',
  '|---|---|---|---|',
]
const base = bench.tasks[0]!.result!.latency.p50!
for (const t of bench.tasks) {
  const r = t.result!
  lines.push(`| ${t.name} | ${r.latency.p50!.toFixed(0)} | ${r.latency.min.toFixed(0)} | ${(r.latency.p50! / base).toFixed(2)}x |`)
}
lines.push('', `| convert .bin -> safetensors | ${med(conv).toFixed(0)} MB/s (of the output) | plain copy of the .bin + sync: ${med(copy).toFixed(0)} MB/s |`)
console.log(lines.join('\n'))
