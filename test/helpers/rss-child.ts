// Child process of test/kernels.test.ts: resident memory before and after loading a GPT-2 folder in a dtype.
//   node --import tsx test/helpers/rss-child.ts <dir> <dtype>
import { readFileSync } from 'node:fs'
import { cpuCacheStats, Gpt2, int64, runtimeInfo } from '../../lib/index.js'

const [dir, dtype] = process.argv.slice(2) as [string, 'float32' | 'bfloat16' | 'int8']
const rss = () => {
  const s = readFileSync('/proc/self/status', 'utf8')
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? NaN) * 1024
  return { total: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') }
}
runtimeInfo() // the addon and libtorch loaded before the first reading
const before = rss()
const g = await Gpt2.load(dir, { device: 'cpu', dtype })
const loaded = rss()
const cachedAfterLoad = cpuCacheStats().cachedBytes
// Decoding steps read every packed weight; the float32 originals must stay paged out (the kernels won).
for (let i = 0; i < 3; i++) await g.logits(int64([[1, 2, 3, 4]]))
const used = rss()
console.log(JSON.stringify({ before, loaded, used, cachedAfterLoad, packedBytes: g.weights.packedBytes, dtype: g.weights.dtype }))
