// Issue 15's continuous batching on CUDA, after bench.mjs in the same run, on the captioner bench.mjs saved
// (WORK_DIR/captioner: ViT-B/32 + GPT-2 124M shapes, random weights). Usage: node bench/gpu/batching.mjs MODELS_DIR WORK_DIR
//  1. Correctness: N distinct images (deterministic LCG pixels, the stream bench.mjs uses, so images 0..7 are bench's
//     b8 rows), greedy, exactly `tokens` tokens. Reference: each image alone on a captioner with maxBatch: 1
//     (sequential awaits). Then the N images as N concurrent caption() calls on a captioner with the default
//     maxBatch, again staggered (call i starts after i*3 ms, so newcomers join a running decode), and as a mix of
//     stream() and caption() calls. Rows whose ids differ from the reference are counted (expected 0; bound 1 of N:
//     a product over several rows may round differently from one over 1 row, which can flip a near-tie argmax).
//  2. Throughput: R requests from C concurrent clients (each awaits its own requests one after another), batched
//     (default maxBatch) vs maxBatch: 1, wall seconds, captions/s, p50/p99 latency, the ratio; and R requests at
//     once (batched, maxBatch: 1, and maxBatch = R).
//  3. $OUT/batching.json (OUT defaults to WORK_DIR) with every number; a failing part records its error and the rest
//     still runs.
// When WORK_DIR/captioner is missing, one is created from MODELS_DIR/{clip,gpt2} (mlp mapper, prefix 10) and saved there.
// Local smoke run on CPU (small sizes, a tiny model, e.g. the golden one):
//   SEMICAP_GPU_CHECK_DEVICE=cpu node bench/gpu/batching.mjs ../shared/golden/tiny /tmp/semicap-batching
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Captioner, Tensor, runtimeInfo } from '../../dist/index.js'

const [models, work] = process.argv.slice(2)
if (!models || !work) {
  console.error('usage: node bench/gpu/batching.mjs MODELS_DIR WORK_DIR')
  process.exit(2)
}
const device = process.env.SEMICAP_GPU_CHECK_DEVICE ?? 'cuda'
const small = !device.startsWith('cuda')
// Sizes: N images, tokens per caption, R requests from C clients; the burst is R requests at once.
const cfg = small
  ? { N: 8, tokens: 8, requests: 24, clients: 4, staggerMs: 3, warmup: 8 }
  : { N: 16, tokens: 20, requests: 64, clients: 16, staggerMs: 3, warmup: 32 }
const opts = { maxTokens: cfg.tokens, minTokens: cfg.tokens, stop: null, stopAtEos: false }
const outDir = process.env.OUT ?? work
mkdirSync(work, { recursive: true })
mkdirSync(outDir, { recursive: true })

const out = { device, small, config: cfg, info: undefined, checks: [], correctness: {}, throughput: {}, errors: [] }
const record = (name, value, bound) => {
  const ok = value <= bound
  out.checks.push({ name, value, bound, ok })
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}: ${value} (bound ${bound})`)
}
const failed = (part, err) => {
  out.errors.push({ part, message: String(err?.message ?? err), code: err?.code, stack: err?.stack })
  console.log(`ERROR in ${part}: ${err?.stack ?? err}`)
}
const save = () => writeFileSync(join(outDir, 'batching.json'), JSON.stringify(out, null, 1))
const r4 = (x) => (typeof x === 'number' && Number.isFinite(x) ? Number(x.toPrecision(4)) : x ?? 'n/a')
/** Nearest-rank percentile of `xs` (ms). */
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.max(0, Math.ceil(p * s.length) - 1)]
}
const sameIds = (a, b) => a.length === b.length && a.every((t, j) => t === b[j])
/** Counters of the batcher since `before` (steps, rows decoded by steps, mean rows per step, prefills). */
const statsSince = (cap, before) => {
  const a = cap.batchStats()
  const steps = a.steps - before.steps, rowSteps = a.rowSteps - before.rowSteps
  return { steps, rowSteps, rowsPerStep: steps ? rowSteps / steps : 0, prefills: a.prefills - before.prefills, prefillRows: a.prefillRows - before.prefillRows }
}

let solo, batched, wide, pixels, S, ref
try {
  out.info = runtimeInfo()
  let capDir = join(work, 'captioner')
  if (!existsSync(join(capDir, 'config.json'))) {
    console.log(`no captioner at ${capDir}: creating one from ${models}`)
    const c = await Captioner.create({ clip: join(models, 'clip'), gpt2: join(models, 'gpt2'), mapper: { type: 'mlp', prefixLength: 10 }, device, seed: 1 })
    await c.save(capDir)
    await c.dispose()
  }
  out.captioner = capDir
  const t0 = performance.now()
  solo = await Captioner.load(capDir, { device, maxBatch: 1 })
  batched = await Captioner.load(capDir, { device })
  out.load_ms = performance.now() - t0
  out.maxBatch = batched.batchStats().maxBatch
  console.log(`loaded ${capDir} on ${batched.device} (twice, ${Math.round(out.load_ms)} ms); batched maxBatch ${out.maxBatch}`)
  // Pixels: the LCG stream of bench.mjs (seed 12345, values in [-2, 2)), one [1,3,S,S] tensor per image.
  S = batched.clip.imageSize
  const row = 3 * S * S
  const px = new Float32Array(cfg.N * row)
  let s = 12345
  for (let i = 0; i < px.length; i++) (s = (Math.imul(s, 1103515245) + 12345) >>> 0), (px[i] = (s / 2 ** 32) * 4 - 2)
  pixels = Array.from({ length: cfg.N }, (_, i) => new Tensor('float32', [1, 3, S, S], px.subarray(i * row, (i + 1) * row)))
} catch (err) {
  failed('load', err)
}

// ---------------------------------------------------------------- 1. correctness
try {
  if (!pixels) throw new Error('skipped: the captioners did not load')
  const N = cfg.N
  ref = []
  for (let i = 0; i < N; i++) ref.push((await solo.caption(pixels[i], opts))[0])
  const c = out.correctness
  c.reference_ids = ref.map((x) => x.ids)
  c.reference_distinct_rows = new Set(ref.map((x) => x.ids.join(','))).size
  console.log(`reference: ${N} images alone (maxBatch 1), ${c.reference_distinct_rows} distinct rows of ids`)
  // Images 0..7 are bench.mjs's b8 rows: how many rows alone match bench's one unbatched b8 call (and eager PyTorch).
  try {
    const b = JSON.parse(readFileSync(join(outDir, 'bench.json'), 'utf8'))
    if (S === 224 && b.node?.greedy_ids_b8) c.reference_rows_identical_to_bench_b8 = b.node.greedy_ids_b8.filter((r, i) => i < N && sameIds(ref[i].ids, r)).length
    if (S === 224 && b.ref?.greedy_ids_b8) c.reference_rows_identical_to_eager_b8 = b.ref.greedy_ids_b8.filter((r, i) => i < N && sameIds(ref[i].ids, r)).length
  } catch {
    // No bench.json (bench.mjs failed or ran elsewhere): nothing to compare with.
  }
  const differ = (got) => got.filter((g, i) => !sameIds(g.ids, ref[i].ids)).length

  let before = batched.batchStats()
  const all = (await Promise.all(pixels.map((p) => batched.caption(p, opts)))).map((x) => x[0])
  c.concurrent = { rows_differing: differ(all), ...statsSince(batched, before) }
  record(`batched (${N} concurrent calls): rows whose ids differ from alone`, c.concurrent.rows_differing, 1)

  before = batched.batchStats()
  const staggered = (await Promise.all(pixels.map((p, i) => sleep(i * cfg.staggerMs).then(() => batched.caption(p, opts))))).map((x) => x[0])
  c.staggered = { stagger_ms: cfg.staggerMs, rows_differing: differ(staggered), ...statsSince(batched, before) }
  record(`batched (${N} calls, call i after i*${cfg.staggerMs} ms): rows whose ids differ from alone`, c.staggered.rows_differing, 1)

  // Odd images as stream() (pieces joined, time to the first piece), even ones as caption(), all at once.
  before = batched.batchStats()
  const t0 = performance.now()
  const firstMs = []
  const texts = await Promise.all(
    pixels.map(async (p, i) => {
      if (i % 2 === 0) return (await batched.caption(p, opts))[0].text
      let text = ''
      for await (const piece of batched.stream(p, opts)) {
        if (text === '') firstMs.push(performance.now() - t0)
        text += piece
      }
      return text
    }),
  )
  c.stream_mix = { texts_differing: texts.filter((t, i) => t !== ref[i].text).length, streams: firstMs.length, first_piece_ms_p50: pct(firstMs, 0.5), wall_ms: performance.now() - t0, ...statsSince(batched, before) }
  record(`batched (${N - Math.floor(N / 2)} caption() + ${Math.floor(N / 2)} stream() at once): texts differing from alone`, c.stream_mix.texts_differing, 1)
  console.log('concurrent:', JSON.stringify(Object.fromEntries(Object.entries(c.concurrent).map(([k, v]) => [k, r4(v)]))))
  console.log('staggered: ', JSON.stringify(Object.fromEntries(Object.entries(c.staggered).map(([k, v]) => [k, r4(v)]))))
} catch (err) {
  failed('correctness', err)
}
save()

// ---------------------------------------------------------------- 2. throughput
/** R requests (request r captions image r mod N) from `clients` clients, each awaiting its own one after another. */
async function clientsRun(cap, requests, clients) {
  const lat = []
  const ids = new Array(requests)
  const t0 = performance.now()
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let r = c; r < requests; r += clients) {
        const a = performance.now()
        ids[r] = (await cap.caption(pixels[r % cfg.N], opts))[0].ids
        lat.push(performance.now() - a)
      }
    }),
  )
  return summary(performance.now() - t0, lat, ids)
}
/** R requests started at once; latency from the common start. */
async function burstRun(cap, requests) {
  const t0 = performance.now()
  const lat = []
  const ids = await Promise.all(
    Array.from({ length: requests }, async (_, r) => {
      const x = (await cap.caption(pixels[r % cfg.N], opts))[0].ids
      lat.push(performance.now() - t0)
      return x
    }),
  )
  return summary(performance.now() - t0, lat, ids)
}
function summary(wallMs, lat, ids) {
  // Images (of N) with any row differing from the reference, when there is one.
  const bad = new Set()
  if (ref) ids.forEach((x, r) => sameIds(x, ref[r % cfg.N].ids) || bad.add(r % cfg.N))
  return { requests: lat.length, wall_s: wallMs / 1000, captions_per_s: (1000 * lat.length) / wallMs, p50_ms: pct(lat, 0.5), p99_ms: pct(lat, 0.99), max_ms: Math.max(...lat), images_differing: ref ? bad.size : null }
}
async function measure(name, cap, fn) {
  const before = cap.batchStats()
  const res = await fn()
  const st = statsSince(cap, before)
  if (st.steps > 0) Object.assign(res, st) // maxBatch 1 runs no batched steps
  console.log(`${name}: ${res.requests} captions in ${r4(res.wall_s)} s, ${r4(res.captions_per_s)} captions/s, p50 ${r4(res.p50_ms)} ms, p99 ${r4(res.p99_ms)} ms` + (res.steps ? `, ${r4(res.rowsPerStep)} rows/step` : ''))
  return res
}

const T = out.throughput
const { requests: R, clients: C } = cfg
try {
  if (!pixels) throw new Error('skipped: the captioners did not load')
  // Warm-up: every row count the batched runs see, and a few calls alone.
  await clientsRun(batched, cfg.warmup, C)
  await burstRun(batched, cfg.warmup)
  for (let i = 0; i < 4; i++) await solo.caption(pixels[i % cfg.N], opts)
  T[`c${C}_batched`] = await measure(`${C} clients, batched (maxBatch ${out.maxBatch})`, batched, () => clientsRun(batched, R, C))
  T[`c${C}_maxBatch1`] = await measure(`${C} clients, maxBatch 1`, solo, () => clientsRun(solo, R, C))
  T[`c${C}_speedup`] = T[`c${C}_batched`].captions_per_s / T[`c${C}_maxBatch1`].captions_per_s
  record(`${C} clients: batched images with rows differing from alone`, T[`c${C}_batched`].images_differing ?? 0, 1)
} catch (err) {
  failed(`throughput c${C}`, err)
}
save()
try {
  if (!pixels) throw new Error('skipped: the captioners did not load')
  T[`c${R}_batched`] = await measure(`${R} at once, batched (maxBatch ${out.maxBatch})`, batched, () => burstRun(batched, R))
  T[`c${R}_maxBatch1`] = await measure(`${R} at once, maxBatch 1`, solo, () => burstRun(solo, R))
  T[`c${R}_speedup`] = T[`c${R}_batched`].captions_per_s / T[`c${R}_maxBatch1`].captions_per_s
  record(`${R} at once: batched images with rows differing from alone`, T[`c${R}_batched`].images_differing ?? 0, 1)
} catch (err) {
  failed(`throughput c${R}`, err)
}
save()
try {
  if (!pixels) throw new Error('skipped: the captioners did not load')
  // The same burst with room for every request in one decode (maxBatch = R).
  await solo.dispose()
  solo = undefined
  wide = await Captioner.load(out.captioner, { device, maxBatch: R })
  await burstRun(wide, R)
  T[`c${R}_maxBatch${R}`] = await measure(`${R} at once, maxBatch ${R}`, wide, () => burstRun(wide, R))
  T[`c${R}_maxBatch${R}_speedup`] = T[`c${R}_maxBatch${R}`].captions_per_s / T[`c${R}_maxBatch1`].captions_per_s
  record(`${R} at once (maxBatch ${R}): images with rows differing from alone`, T[`c${R}_maxBatch${R}`].images_differing ?? 0, 1)
} catch (err) {
  failed(`throughput c${R} maxBatch ${R}`, err)
}

const table = []
for (const [k, v] of Object.entries(T)) if (v && typeof v === 'object') table.push({ run: k, wall_s: v.wall_s, captions_per_s: v.captions_per_s, p50_ms: v.p50_ms, p99_ms: v.p99_ms, rows_per_step: v.rowsPerStep ?? null, images_differing: v.images_differing })
if (table.length) console.table(table.map((x) => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, r4(v)]))))
const nOk = out.checks.filter((c) => c.ok).length, nBad = out.checks.length - nOk
out.summary =
  `batching on ${device}: checks ${nOk} passed, ${nBad} failed, ${out.errors.length} errors; ` +
  `${C} clients x ${R} requests: batched ${r4(T[`c${C}_batched`]?.captions_per_s)} captions/s vs maxBatch 1 ${r4(T[`c${C}_maxBatch1`]?.captions_per_s)} (${r4(T[`c${C}_speedup`])}x, p99 ${r4(T[`c${C}_batched`]?.p99_ms)} vs ${r4(T[`c${C}_maxBatch1`]?.p99_ms)} ms); ` +
  `${R} at once: ${r4(T[`c${R}_batched`]?.captions_per_s)} vs ${r4(T[`c${R}_maxBatch1`]?.captions_per_s)} (${r4(T[`c${R}_speedup`])}x; maxBatch ${R}: ${r4(T[`c${R}_maxBatch${R}_speedup`])}x)`
save()
console.log(out.summary)
for (const c of [solo, batched, wide]) if (c) await c.dispose()
if (nBad > 0 || out.errors.length > 0) process.exitCode = 1
