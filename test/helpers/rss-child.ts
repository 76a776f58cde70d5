// Child process of test/kernels.test.ts: resident memory before and after loading a GPT-2 folder in a dtype.
//   node --import tsx test/helpers/rss-child.ts <dir> <dtype>
import { cpuCacheStats, Gpt2, int64, runtimeInfo } from '../../lib/index.js'
import { rss } from './rss.js'

const [dir, dtype] = process.argv.slice(2) as [string, 'float32' | 'bfloat16' | 'int8']
runtimeInfo() // the addon and libtorch loaded before the first reading
const before = rss()
const g = await Gpt2.load(dir, { device: 'cpu', dtype })
const loaded = rss()
const cachedAfterLoad = cpuCacheStats().cachedBytes
// Decoding steps read every packed weight; the float32 originals must stay paged out (the kernels won).
for (let i = 0; i < 3; i++) await g.logits(int64([[1, 2, 3, 4]]))
const used = rss()
console.log(JSON.stringify({ before, loaded, used, cachedAfterLoad, packedBytes: g.weights.packedBytes, dtype: g.weights.dtype }))
