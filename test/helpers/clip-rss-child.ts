// Child process of test/kernels.test.ts: resident memory before and after loading a CLIP folder with `prepare`,
// then after a text call (which lays the text tower out when it was left for later).
//   node --import tsx test/helpers/clip-rss-child.ts <dir> <all|vision|text>
import { Clip, int64, runtimeInfo } from '../../lib/index.js'
import { rss } from './rss.js'

const [dir, prepare] = process.argv.slice(2) as [string, 'all' | 'vision' | 'text']
runtimeInfo() // the addon and libtorch loaded before the first reading
const before = rss()
const clip = await Clip.load(dir, { device: 'cpu', prepare })
const loaded = rss()
const V = clip.config.wire.vocabSize
await clip.textFeatures(int64([[V - 2, 5, 6, 7, V - 1], [V - 2, 9, V - 1, V - 1, V - 1]]))
const texted = rss()
console.log(JSON.stringify({ before, loaded, texted, packedBytes: clip.weights.packedBytes }))
