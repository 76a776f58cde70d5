// CUDA checks on the GPU machine: golden parity (float32 within 5e-5, bf16 within its own bound), the zero-copy
// device path, and a tiny two-stage training run. Usage: node bench/gpu/check.mjs GOLDEN_DIR WORK_DIR
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import sharp from 'sharp'
import { Captioner, Clip, Gpt2, Tensor, loadSafetensors, runtimeInfo } from '../../dist/index.js'
import { saveGpt2TokenizerFiles, trainByteLevelBpe } from '../../dist/tokenizers/index.js'
import { rel } from './numeric.mjs'

const [golden, work] = process.argv.slice(2)
const results = { info: runtimeInfo(), checks: [] }
const record = (name, value, bound) => {
  const ok = value <= bound
  results.checks.push({ name, value, bound, ok })
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}: ${value.toExponential(3)} (bound ${bound})`)
}

const ref = await loadSafetensors(join(golden, 'reference.safetensors'))
const clip = await Clip.load(join(golden, 'clip'), { device: 'cuda' })
const gpt = await Gpt2.load(join(golden, 'gpt2'), { device: 'cuda' })
const v = await clip.vision(ref['inputs.pixel_values'])
console.log('vision output device:', v.features.device)
record('cuda fp32 vision_last_hidden_state', rel(v.lastHidden.data, ref['outputs.vision_last_hidden_state'].data), 5e-5)
record('cuda fp32 image_features', rel(v.features.data, ref['outputs.image_features'].data), 5e-5)
const t = await clip.text(ref['inputs.text_ids'])
record('cuda fp32 text_features', rel(t.features.data, ref['outputs.text_features'].data), 5e-5)
record('cuda fp32 text_last_hidden_state', rel(t.lastHidden.data, ref['outputs.text_last_hidden_state'].data), 5e-5)
record('cuda fp32 gpt2_logits', rel((await gpt.logits(ref['inputs.gpt2_ids'])).data, ref['outputs.gpt2_logits'].data), 5e-5)
record('cuda fp32 gpt2_prefix_logits', rel((await gpt.logits(ref['inputs.gpt2_ids'], { prefix: ref['inputs.prefix'] })).data, ref['outputs.gpt2_prefix_logits'].data), 5e-5)
const g = await gpt.generate(ref['inputs.prefix'], { maxTokens: 10, stop: null, stopAtEos: false })
const same = g.ids.toArray().every((x, i) => x === Number(ref['outputs.greedy_ids'].data[i]))
record('cuda greedy ids mismatch', same ? 0 : 1, 0)
const gb = await gpt.generate(ref['inputs.prefix'], { maxTokens: 10, stop: null, stopAtEos: false, bf16: true })
const agree = gb.ids.toArray().filter((x, i) => x === Number(ref['outputs.greedy_ids'].data[i])).length / gb.ids.size
record('cuda bf16 greedy ids disagreement share', 1 - agree, 0.25)

// Tiny two-stage training on CUDA with a trained tokenizer (ids < 1000).
mkdirSync(work, { recursive: true })
const corpus = []
for (const c of ['red', 'green', 'blue', 'yellow', 'white', 'black']) for (const s of ['square', 'circle', 'star', 'cross']) corpus.push(`a ${c} ${s} on a grey background.`)
// Specials fill the vocabulary up to the model's 1000 ids so every sampled id decodes.
let bpe = trainByteLevelBpe([...corpus, ...corpus], { vocabSize: 1000, minFrequency: 1 })
const learned = Object.keys(bpe.vocab).length - 1
bpe = trainByteLevelBpe([...corpus, ...corpus], { vocabSize: 1000, minFrequency: 1, specialTokens: [...Array.from({ length: 999 - learned }, (_, k) => `<|unused${k}|>`), '<|endoftext|>'] })
const gdir = join(work, 'gpt2'), cdir = join(work, 'clip')
cpSync(join(golden, 'gpt2'), gdir, { recursive: true })
cpSync(join(golden, 'clip'), cdir, { recursive: true })
await saveGpt2TokenizerFiles(gdir, bpe)
await saveGpt2TokenizerFiles(cdir, bpe)
const eos = bpe.vocab['<|endoftext|>']
for (const [dir, patch] of [[gdir, { eos_token_id: eos, bos_token_id: eos }], [cdir, { semicap: { tokenizer: 'gpt2' } }]]) {
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
  if (dir === cdir) Object.assign(cfg.text_config, { eos_token_id: eos, bos_token_id: eos })
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, ...patch }))
}
const examples = []
const colours = { red: [230, 20, 20], green: [20, 200, 40], blue: [20, 40, 230], yellow: [240, 230, 30] }
for (const [name, rgb] of Object.entries(colours)) {
  const raw = Buffer.alloc(40 * 40 * 3, 128)
  for (let y = 6; y < 30; y++) for (let x = 8; x < 30; x++) raw.set(rgb, (y * 40 + x) * 3)
  const file = join(work, `${name}.png`)
  await sharp(raw, { raw: { width: 40, height: 40, channels: 3 } }).png().toFile(file)
  examples.push({ id: name, image: file, captions: [`a ${name} square on a grey background.`] })
}
const cap = await Captioner.create({ clip: cdir, gpt2: gdir, mapper: { type: 'mlp', prefixLength: 4 }, device: 'cuda' })
const losses = []
const run1 = cap.train({ stage: 'supervised', labeled: examples, steps: 150, batchSize: 4, lr: 3e-3, schedule: 'constant', featureCache: join(work, 'cache'), bf16: false })
run1.on('progress', (p) => losses.push(p.loss))
const s1 = await run1
record('cuda stage-1 CE loss ratio last/first', losses.at(-1) / losses[0], 0.1)
const caps = await cap.caption(examples.map((e) => e.image), { maxTokens: 16 })
const exact = caps.filter((c, i) => c.text === examples[i].captions[0]).length
record('cuda stage-1 captions not reproduced', 4 - exact, 1)
const rewards = []
const run2 = cap.train({ stage: 'clip-reward', unlabeled: examples, steps: 10, batchSize: 4, samples: 5, klCoef: 0.05, lr: 1e-4, featureCache: join(work, 'cache') })
run2.on('progress', (p) => rewards.push(p.reward))
const s2 = await run2
record('cuda stage-2 (bf16 autocast) non-finite rewards', rewards.filter((r) => !Number.isFinite(r)).length, 0)
results.training = { stage1: s1, stage2: s2, captions: caps.map((c) => c.text), rewards }
writeFileSync(join(process.env.OUT ?? work, 'check.json'), JSON.stringify(results, null, 1))
console.log(`checks: ${results.checks.filter((c) => c.ok).length} passed, ${results.checks.filter((c) => !c.ok).length} failed`)
