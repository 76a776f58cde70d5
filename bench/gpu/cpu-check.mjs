// The addon's CPU paths on the GPU machine's host CPU, an x86-64 that may have AVX-512 (the dev machines do not):
// golden parity and greedy ids of the tiny golden CLIP and GPT-2 through each instruction set's kernels
// (SEMICAP_CPU_ISA, SEMICAP_CPU_GEMM=kernel) and each weight type, one child process per pair (the ISA is chosen once
// per process). Usage: node bench/gpu/cpu-check.mjs GOLDEN_DIR   (writes $OUT/cpu-check.json)
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Clip, Gpt2, loadSafetensors, runtimeInfo } from '../../dist/index.js'
import { rel } from './numeric.mjs'

const [golden, childIsa, childDtype] = process.argv.slice(2)

if (childIsa) {
  // One (ISA, dtype) pair.
  const ref = await loadSafetensors(join(golden, 'reference.safetensors'))
  const clip = await Clip.load(join(golden, 'clip'), { device: 'cpu', dtype: childDtype })
  const gpt = await Gpt2.load(join(golden, 'gpt2'), { device: 'cpu', dtype: childDtype })
  const v = await clip.vision(ref['inputs.pixel_values'])
  const t = await clip.text(ref['inputs.text_ids'])
  const g = await gpt.generate(ref['inputs.prefix'], { maxTokens: 10, stop: null, stopAtEos: false })
  const want = Array.from(ref['outputs.greedy_ids'].data, Number)
  const ids = g.ids.toArray()
  const info = runtimeInfo()
  console.log('@@' + JSON.stringify({
    isa: childIsa, dtype: childDtype, active: info.cpu?.isa, features: info.cpu?.features,
    image_features: rel(v.features.data, ref['outputs.image_features'].data),
    text_features: rel(t.features.data, ref['outputs.text_features'].data),
    gpt2_logits: rel((await gpt.logits(ref['inputs.gpt2_ids'])).data, ref['outputs.gpt2_logits'].data),
    gpt2_prefix_logits: rel((await gpt.logits(ref['inputs.gpt2_ids'], { prefix: ref['inputs.prefix'] })).data, ref['outputs.gpt2_prefix_logits'].data),
    greedy_ids_equal: ids.filter((x, i) => x === want[i]).length, greedy_ids: ids.length,
  }))
  await clip.dispose()
  await gpt.dispose()
  process.exit(0)
}

const self = fileURLToPath(import.meta.url)
const rows = []
for (const isa of ['avx512bf16', 'avx512', 'avx2', 'portable'])
  for (const dtype of ['float32', 'bfloat16', 'int8']) {
    try {
      const out = execFileSync(process.execPath, [self, golden, isa, dtype], {
        env: { ...process.env, SEMICAP_CPU_ISA: isa, SEMICAP_CPU_GEMM: 'kernel', SEMICAP_THREADS: '4', SEMICAP_KERNEL_CACHE: 'off' },
        encoding: 'utf8',
        timeout: 120_000,
      })
      rows.push(JSON.parse(out.split('\n').find((l) => l.startsWith('@@')).slice(2)))
    } catch (err) {
      rows.push({ isa, dtype, error: String(err.message ?? err).slice(0, 500) })
    }
  }
console.table(rows.map(({ features, ...r }) => r))
// float32 through every ISA the CPU runs: the golden bound of the test suite (5e-5) and the reference's greedy ids.
const fp32 = rows.filter((r) => r.dtype === 'float32' && !r.error && r.active === r.isa)
const bad = fp32.filter((r) => Math.max(r.image_features, r.text_features, r.gpt2_logits, r.gpt2_prefix_logits) > 5e-5 || r.greedy_ids_equal !== r.greedy_ids)
console.log(`cpu check: features ${rows[0]?.features?.join(' ')}; float32 through ${fp32.map((r) => r.isa).join(', ')}: ${bad.length} failing; errors ${rows.filter((r) => r.error).length}`)
writeFileSync(join(process.env.OUT ?? '.', 'cpu-check.json'), JSON.stringify(rows, null, 1))
