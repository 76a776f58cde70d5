// CPU benchmark: the semicap addon against eager PyTorch (bench/reference.py, the same computation written the
// way a user would) in one run, with hardware floors (bench/floors.py).
//
//   npm run bench [-- --quick] [--only caption,ce,scst,load,ort] [--threads 1,2] [--rounds N] [--no-ort]
//
// Every measurement runs in its own child process (thread counts are per process): the addon through
// bench/worker.ts with SEMICAP_THREADS=T, eager PyTorch through /usr/bin/python3 bench/reference.py --threads T
// (and once without --threads: torch's default). OMP_WAIT_POLICY=PASSIVE on both sides. The load average is
// logged before and after every child. Caption rounds alternate the order of the children so that a change in
// machine load hits both sides; per-iteration samples of all rounds are pooled and the median reported.
// The caption task also runs a third side, the ONNX Runtime peer (bench/ort: onnxruntime-node, CPU EP, the graphs
// bench/ort/export.py exports from the saved captioner), at the same thread counts (intraOpNumThreads).
// Output: a markdown table on stdout, bench/out/results.json, and (full runs of every task) bench/results/cpu-latest.md.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, readFileSync, readlinkSync, realpathSync, statSync, writeFileSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import sharp from 'sharp'
import type { OrtJob } from './ort/driver.js'
import type { Job } from './worker.js'

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, '..')
const PY = '/usr/bin/python3'

// ------------------------------------------------------------------------------------------------
// options

const argv = process.argv.slice(2)
const flag = (name: string): boolean => argv.includes(name)
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(name)
  if (i >= 0) return argv[i + 1]
  const eq = argv.find((a) => a.startsWith(name + '='))
  return eq?.slice(name.length + 1)
}
if (flag('--help') || flag('-h')) {
  console.log('usage: node --import tsx bench/run.ts [--quick] [--only caption,ce,scst,load,ort] [--threads 1,2] [--rounds N] [--models DIR] [--no-ort]')
  console.log('  caption: addon, eager PyTorch and ONNX Runtime (bench/ort; --no-ort leaves it out); ort alone: the caption task without eager')
  process.exit(0)
}
const quick = flag('--quick')
const ALL = ['load', 'caption', 'ce', 'scst'] as const
type TaskName = (typeof ALL)[number]
const onlyArg = opt('--only')?.split(',').map((s) => s.trim()).filter(Boolean) ?? [...ALL]
for (const t of onlyArg) if (![...ALL, 'ort'].includes(t)) throw new Error(`--only: unknown task ${t} (known: ${ALL.join(', ')}, ort)`)
// `ort` selects the caption task's ONNX Runtime side: `--only ort` runs the caption task with the addon and ORT only.
const only = onlyArg.filter((t): t is TaskName => (ALL as readonly string[]).includes(t))
const ortExplicit = onlyArg.includes('ort')
if (ortExplicit && !only.includes('caption')) only.push('caption')
const captionSides: ('addon' | 'eager' | 'ort')[] = ['addon', ...(ortExplicit && !onlyArg.includes('caption') ? [] : ['eager' as const]), ...(flag('--no-ort') ? [] : ['ort' as const])]
const threadList = (opt('--threads') ?? '1,2').split(',').map(Number)
if (threadList.some((t) => !Number.isInteger(t) || t < 1)) throw new Error('--threads: comma-separated positive integers')
const models = resolve(opt('--models') ?? join(here, 'out', quick ? 'models-small' : 'models'))
const out = join(here, 'out')
const rounds = Number(opt('--rounds') ?? (quick ? 1 : 2))
// Reduced-precision CPU inference (Captioner.load(dir, { dtype })), timed against the same float32 ORT peer.
const dtypes = (opt('--dtypes') ?? 'bfloat16,int8').split(',').map((s) => s.trim()).filter(Boolean) as ('bfloat16' | 'int8')[]
for (const d of dtypes) if (d !== 'bfloat16' && d !== 'int8') throw new Error(`--dtypes: unknown ${d} (known: bfloat16, int8)`)
const TOKENS = 20
const B = 8
const SAMPLES = 5
const CAPTION = 'a man riding a wave on top of a surfboard in the blue ocean near a sandy beach' // 19 GPT-2 tokens (+ the end token = 20)
const cfg = quick
  ? { captionIters: 3, captionWarmup: 1, ceSteps: 4, scstSteps: 3, ceIters: 2, ceWarmup: 1, scstIters: 1, scstWarmup: 1 }
  : { captionIters: 5, captionWarmup: 2, ceSteps: 6, scstSteps: 4, ceIters: 4, ceWarmup: 2, scstIters: 2, scstWarmup: 1 }

// ------------------------------------------------------------------------------------------------
// helpers

const fmtLoad = () => loadavg().map((x) => x.toFixed(2)).join(' ')
const log = (...a: unknown[]) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...a)
const median = (xs: number[]): number => {
  const s = [...xs].filter(Number.isFinite).sort((a, b) => a - b)
  const n = s.length
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2
}
const childEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = { ...process.env, OMP_WAIT_POLICY: 'PASSIVE' }
  delete env.SEMICAP_THREADS
  delete env.OMP_NUM_THREADS
  return { ...env, ...extra }
}

interface ChildRun<T> {
  result: T
  wall_ms: number
  load_before: string
  load_after: string
}
const loads: { what: string; before: string; after: string; wall_s: number }[] = []

function runChild<T>(what: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, parse: (stdout: string) => T): Promise<ChildRun<T>> {
  const before = fmtLoad()
  const t0 = performance.now()
  log(`${what} ... (load ${before})`)
  return new Promise((ok, bad) => {
    const child = spawn(cmd, args, { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('error', bad)
    child.on('close', (code) => {
      const wall = performance.now() - t0
      const after = fmtLoad()
      loads.push({ what, before, after, wall_s: +(wall / 1000).toFixed(1) })
      log(`${what} done in ${(wall / 1000).toFixed(1)} s (load ${after})`)
      if (code !== 0) return bad(new Error(`${what}: exit ${code}\n${stderr.slice(-4000)}\n${stdout.slice(-2000)}`))
      try {
        ok({ result: parse(stdout), wall_ms: wall, load_before: before, load_after: after })
      } catch (err) {
        bad(new Error(`${what}: ${(err as Error).message}\n${stderr.slice(-4000)}`))
      }
    })
  })
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = any

function addon(job: Omit<Job, 'models' | 'pixels' | 'maxBatch' | 'tokens'> & Partial<Job>, threads: number | null): Promise<ChildRun<Json>> {
  const full: Job = { models, pixels: pixelsFile(B), maxBatch: B, tokens: TOKENS, ...job } as Job
  const env = childEnv({ SEMICAP_PREBUILD: snapshotDir, ...(threads === null ? {} : { SEMICAP_THREADS: String(threads) }) })
  const what = `addon ${job.kind}${full.batches ? ' b' + full.batches.join(',') : ''} threads=${threads ?? 'default'}`
  return runChild(what, process.execPath, ['--import', 'tsx', join(here, 'worker.ts'), JSON.stringify(full)], env, (s) => {
    const line = s.split('\n').find((l) => l.startsWith('@@RESULT '))
    if (!line) throw new Error('no @@RESULT line')
    return JSON.parse(line.slice(9))
  })
}

function eager(args: string[], threads: number | null, what: string): Promise<ChildRun<Json>> {
  const a = [join(here, 'reference.py'), ...args, ...(threads === null ? [] : ['--threads', String(threads)])]
  return runChild(`eager ${what} threads=${threads ?? 'default'}`, PY, a, childEnv(), (s) => {
    const lines = s.trim().split('\n')
    return JSON.parse(lines[lines.length - 1]!)
  })
}

function ort(job: Omit<OrtJob, 'pixels' | 'maxBatch' | 'tokens' | 'dir'>, dir: string): Promise<ChildRun<Json>> {
  const full: OrtJob = { dir, pixels: pixelsFile(B), maxBatch: B, tokens: TOKENS, ...job }
  return runChild(`ort caption b${full.batches.join(',')} threads=${job.threads}`, process.execPath, ['--import', 'tsx', join(here, 'ort', 'driver.ts'), JSON.stringify(full)], childEnv(), (s) => {
    const line = s.split('\n').find((l) => l.startsWith('@@RESULT '))
    if (!line) throw new Error('no @@RESULT line')
    return JSON.parse(line.slice(9))
  })
}

const pixelsFile = (n: number) => join(out, `bench-pixels-b${n}.f32`)

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex').slice(0, 16)
}

/** The core OpenBLAS selects (it prints "Core: ..." on stderr with OPENBLAS_VERBOSE=2), through torch as the eager side runs it. */
function blasCore(): string {
  const r = spawnSync(PY, ['-c', 'import torch; torch.ones(64,64)@torch.ones(64,64)'], { encoding: 'utf8', env: { ...process.env, OPENBLAS_VERBOSE: '2' } })
  const m = /Core:\s*(\S+)/.exec(`${r.stdout ?? ''}\n${r.stderr ?? ''}`)
  return m ? m[1]! : '(not OpenBLAS, or no report)'
}

function lscpu(): { model: string; flags: string[] } {
  const text = sh('lscpu', [])
  const model = /^Model name:\s*(.+)$/m.exec(text)?.[1]?.trim() ?? '?'
  const flags = new Set((/^Flags:\s*(.+)$/m.exec(text)?.[1] ?? '').split(/\s+/))
  const wanted = ['avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'avx_vnni', 'amx_tile', 'amx_bf16', 'amx_int8']
  return { model, flags: wanted.filter((f) => flags.has(f)) }
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return '(unavailable)'
  }
}

// ------------------------------------------------------------------------------------------------
// setup

mkdirSync(out, { recursive: true })
if (!existsSync(join(models, 'gpt2', 'model.safetensors'))) {
  log(`no models in ${models}: generating them`)
  execFileSync(process.execPath, ['--import', 'tsx', join(here, 'make-models.ts'), '--out', models, ...(quick ? ['--small'] : [])], { stdio: 'inherit', cwd: root })
}
// The clip-reward stage scores captions with CLIP's text tower: it needs CLIP's BPE files.
const clipTok = resolve(root, '..', 'shared', 'clip-tokenizer')
for (const f of ['vocab.json', 'merges.txt']) {
  const dst = join(models, 'clip', f)
  if (!existsSync(dst)) {
    if (!existsSync(join(clipTok, f))) throw new Error(`${dst} missing and no ${join(clipTok, f)} to copy`)
    copyFileSync(join(clipTok, f), dst)
  }
}
// Deterministic pixels (the same LCG as bench/gpu/bench.mjs), values in [-2, 2): batch 8 and its first image.
{
  const S = 224
  const px = new Float32Array(B * 3 * S * S)
  let s = 12345
  for (let i = 0; i < px.length; i++) (s = (Math.imul(s, 1103515245) + 12345) >>> 0), (px[i] = (s / 2 ** 32) * 4 - 2)
  writeFileSync(pixelsFile(B), Buffer.from(px.buffer))
  writeFileSync(pixelsFile(1), Buffer.from(px.buffer, 0, 3 * S * S * 4))
}
// Training images (PNG, 224x224): 8 distinct patterns.
const images: string[] = []
{
  const S = 224
  const dir = join(out, 'train-images')
  mkdirSync(dir, { recursive: true })
  for (let i = 0; i < B; i++) {
    const file = join(dir, `img${i}.png`)
    images.push(file)
    if (existsSync(file)) continue
    const raw = Buffer.alloc(S * S * 3)
    for (let j = 0; j < raw.length; j++) raw[j] = (j * (i + 3) + (j >> 7)) & 255
    await sharp(raw, { raw: { width: S, height: S, channels: 3 } }).png().toFile(file)
  }
}
const featureCache = join(out, 'feature-cache')
const captionerDir = join(out, quick ? 'captioner-small' : 'captioner')

const addonPath = join(root, 'build', 'Release', 'semicap.node')
// The addon may be rebuilt while the benchmark runs (others work in this checkout): every addon child loads a
// copy taken now, through node-gyp-build's <NAME>_PREBUILD override (SEMICAP_PREBUILD=DIR loads DIR/build/Release).
const snapshotDir = join(out, 'addon-snapshot')
if (!existsSync(addonPath)) throw new Error(`${addonPath} missing: build the addon first (npm run build:native)`)
mkdirSync(join(snapshotDir, 'build', 'Release'), { recursive: true })
copyFileSync(addonPath, join(snapshotDir, 'build', 'Release', 'semicap.node'))
const cpuInfo = lscpu()
const env = {
  date: new Date().toISOString(),
  quick,
  models,
  cpu: cpus()[0]?.model ?? '?',
  lscpu_model: cpuInfo.model,
  cpu_flags: cpuInfo.flags,
  cores: cpus().length,
  blas: (() => {
    try {
      return realpathSync('/usr/lib/x86_64-linux-gnu/libblas.so.3')
    } catch {
      return '(none)'
    }
  })(),
  blas_alternative: (() => {
    try {
      return readlinkSync('/etc/alternatives/libblas.so.3-x86_64-linux-gnu')
    } catch {
      return '(none)'
    }
  })(),
  blas_core: blasCore(),
  openblas_coretype: process.env.OPENBLAS_CORETYPE ?? null,
  node: process.version,
  torch_python: sh(PY, ['-c', 'import torch; print(torch.__version__)']),
  eager_default_threads: Number(sh(PY, ['-c', 'import torch; print(torch.get_num_threads())'])),
  addon: { sha256_16: sha(join(snapshotDir, 'build', 'Release', 'semicap.node')), mtime: statSync(addonPath).mtime.toISOString(), loaded_from: snapshotDir },
  git: sh('git', ['-C', root, 'rev-parse', '--short', 'HEAD']),
  omp_wait_policy: 'PASSIVE',
  load_start: fmtLoad(),
  load_end: '',
}
log('environment', JSON.stringify(env))
console.log(`CPU: ${env.lscpu_model} (lscpu), ${env.cores} cores, flags ${env.cpu_flags.join(' ') || '(none of the listed)'}; BLAS: libblas.so.3 -> ${env.blas}, OpenBLAS core ${env.blas_core}; eager default threads ${env.eager_default_threads}; load average ${env.load_start}`)

const eagerKey = (t: number | null) => (t === null ? `default(${env.eager_default_threads})` : String(t))
const sameThreads = (t: number): number | null => (t === env.eager_default_threads ? null : t)

type Side = 'addon' | 'eager' | 'ort'
/** Addon at each thread count, each followed (or, in odd rounds, preceded) by eager (and ORT, when given) at the same
 * count; then eager at torch's default when no addon count equals it. */
function pairSchedule(round: number, sides: Side[] = ['addon', 'eager']): { side: Side; T: number | null }[] {
  const steps: { side: Side; T: number | null }[] = []
  const ts = round % 2 === 0 ? threadList : [...threadList].reverse()
  for (const T of ts) {
    const group = sides.map((side) => ({ side, T: side === 'eager' ? sameThreads(T) : T }))
    steps.push(...(round % 2 === 0 ? group : group.reverse()))
  }
  if (sides.includes('eager') && !threadList.includes(env.eager_default_threads)) steps.push({ side: 'eager', T: null })
  return steps
}

const results: Json = { env, config: { ...cfg, rounds, threads: threadList, tokens: TOKENS, batch: B, samples: SAMPLES, caption: CAPTION, caption_sides: captionSides }, addon: {}, eager: {}, ort: {}, floors: {}, check: {} }

// ------------------------------------------------------------------------------------------------
// the ONNX Runtime peer: onnxruntime-node in bench/ort (its own package.json / package-lock.json, never a dependency
// of the library), graphs exported by bench/ort/export.py (needs Debian's python3-onnx)

const ortRoot = join(here, 'ort')
let ortSkipped: string | null = null
function ortUnavailable(why: string): void {
  const msg = `ONNX Runtime peer unavailable: ${why}`
  if (ortExplicit) throw new Error(msg)
  console.log(`WARNING: ${msg}; the caption task runs without it (--only ort makes this an error)`)
  ortSkipped = why
  captionSides.splice(captionSides.indexOf('ort'), 1)
}
if (captionSides.includes('ort') && only.includes('caption')) {
  const onnxVersion = sh(PY, ['-c', 'import onnx; print(onnx.__version__)'])
  if (onnxVersion === '(unavailable)') ortUnavailable(`${PY} cannot import onnx: install Debian's python3-onnx (apt-get install -y python3-onnx)`)
  else if (!existsSync(join(ortRoot, 'node_modules', 'onnxruntime-node', 'package.json'))) {
    // onnxruntime-node's install script downloads CUDA libraries from outside the npm registry; the CPU binaries are
    // in the npm tarball: ONNXRUNTIME_NODE_INSTALL=skip skips the script.
    log('installing bench/ort (npm ci, ONNXRUNTIME_NODE_INSTALL=skip)')
    try {
      execFileSync('npm', ['ci', '--prefix', ortRoot, '--no-audit', '--no-fund'], { stdio: 'inherit', cwd: root, env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip' } })
    } catch (err) {
      ortUnavailable(`npm ci --prefix bench/ort failed (${(err as Error).message.split('\n')[0]})`)
    }
  }
  results.env.onnx_python = onnxVersion
}

// ------------------------------------------------------------------------------------------------
// prepare: save the captioner (weights for the Python side), greedy ids for the cross-check, CLIP text length

const prep = await addon({ kind: 'prepare', saveDir: captionerDir, caption: CAPTION, samples: SAMPLES, iters: 0, warmup: 0 }, null)
const clipLen: number = prep.result.clip_len
results.prepare = { clip_len: clipLen, sampled_tokens_mean: prep.result.sampled_tokens_mean, greedy_tokens_mean: prep.result.greedy_tokens_mean, gpt2_caption_tokens: prep.result.gpt2_caption_tokens }
log('prepare', JSON.stringify(results.prepare))
if (results.prepare.gpt2_caption_tokens !== TOKENS - 1) console.log(`WARNING: the training caption has ${results.prepare.gpt2_caption_tokens} GPT-2 tokens, not ${TOKENS - 1}: the addon's CE step is not the same size as eager's`)
let eagerCheck: { ids: number[][]; features0?: number[]; no_cache_ids_match?: boolean } = { ids: [] }
{
  const checkFile = join(out, 'check-greedy-b8.json')
  await eager(['--captioner', captionerDir, '--task', 'caption', '--batch', String(B), '--tokens', String(TOKENS), '--pixels', pixelsFile(B), '--warmup', '0', '--iters', '1', '--check-out', checkFile, '--self-check'], null, 'cross-check caption b8')
  const ref = JSON.parse(readFileSync(checkFile, 'utf8')) as typeof eagerCheck
  eagerCheck = ref
  const mine = prep.result.greedy_ids as number[][]
  const same = mine.filter((row, i) => row.length === ref.ids[i]!.length && row.every((t, j) => t === ref.ids[i]![j])).length
  const firstDiff = mine.map((row, i) => row.findIndex((t, j) => t !== ref.ids[i]![j]))
  results.check = { greedy_rows_identical: same, rows: mine.length, first_differing_position: firstDiff, eager_kv_cache_matches_no_cache: ref.no_cache_ids_match }
  console.log(`cross-check: greedy ids identical in ${same} / ${mine.length} rows (batch ${B}, ${TOKENS} tokens, same pixels and weights); eager KV cache vs no cache: ${ref.no_cache_ids_match}`)
}

const ortDir = join(out, 'ort', quick ? 'captioner-small' : 'captioner')
if (captionSides.includes('ort') && only.includes('caption')) {
  // Cached by a hash of the weight files (export.py only hashes them when meta.json matches).
  const ex = await runChild('ort export', PY, [join(ortRoot, 'export.py'), '--captioner', captionerDir, '--out', ortDir], childEnv(), (s) => JSON.parse(s.trim().split('\n').pop()!))
  results.ort.export = ex.result
  log('ort export', ex.result.cached ? `cached (${ex.result.hash})` : `exported in ${(ex.result.total_ms / 1000).toFixed(1)} s`)
}

// ------------------------------------------------------------------------------------------------
// floors (per thread count: bandwidth and matmul rate measured at that count)

for (const T of threadList) {
  const f8 = await runChild(`floors threads=${T}`, PY, [join(here, 'floors.py'), '--threads', String(T), '--models', models, '--batch', String(B), '--tokens', String(TOKENS), '--samples', String(SAMPLES), '--clip-len', String(clipLen)], childEnv(), (s) => JSON.parse(s.trim().split('\n').pop()!))
  const r8 = f8.result
  const f1 = await runChild(`floors b1 threads=${T}`, PY, [join(here, 'floors.py'), '--models', models, '--batch', '1', '--tokens', String(TOKENS), '--bandwidth-gbs', String(r8.bandwidth_gbs), '--gflops', String(r8.gflops)], childEnv(), (s) => JSON.parse(s.trim().split('\n').pop()!))
  const bytes = ['clip/model.safetensors', 'gpt2/model.safetensors', 'mapper.safetensors'].reduce((a, f) => a + statSync(join(models, f)).size, 0)
  results.floors[T] = {
    bandwidth_gbs: r8.bandwidth_gbs,
    gflops: r8.gflops,
    gflops_atmm: r8.gflops_atmm,
    matmul: r8.measured?.[0]?.matmul,
    onednn: r8.measured?.[0]?.onednn_matmul,
    caption_b1_ms: f1.result.caption.floor_ms,
    caption_b8_ms: r8.caption.floor_ms,
    caption_b8_clip_ms: r8.caption.clip.ms,
    caption_b8_decode_ms: r8.caption.decode.ms + r8.caption.prefill.ms + r8.caption.mapper.ms,
    // one decoding step (the mean over the 19 after the first token): float32 weights + KV cache at the measured rates
    decode_token_b1_ms: f1.result.caption.decode.ms / f1.result.caption.decode.steps,
    decode_token_b8_ms: r8.caption.decode.ms / r8.caption.decode.steps,
    ce_ms: r8.ce_step.floor_ms,
    scst_ms: r8.scst_step.floor_ms,  // the samples' forward replayed from the decoding, as semicap computes it
    scst_recompute_ms: r8.scst_step.floor_recompute_ms,  // computed again, as eager PyTorch does
    // loading: every weight byte read once from the page cache (a memory copy)
    load_ms: (bytes / (r8.bandwidth_gbs * 1e9)) * 1e3,
    weight_file_bytes: bytes,
  }
  log(`floors threads=${T}`, JSON.stringify(results.floors[T]))
}

// ------------------------------------------------------------------------------------------------
// measurements

if (only.includes('load')) {
  const r = await addon({ kind: 'load', iters: 0, warmup: 0, saveDir: captionerDir }, null)
  results.addon.load = r.result
}

if (only.includes('caption')) {
  const addonSamples: Record<string, number[]> = {}
  const eagerSamples: Record<string, number[]> = {}
  const eagerLoad: number[] = []
  results.addon.caption_profile = {}
  results.eager.caption_profile = {}
  const ortSamples: Record<string, number[]> = {}
  const ortRuns: Json[] = []
  // Resident memory per caption child (MiB: before the load, after it, peak over the runs), by side and threads.
  const memory: Record<string, Json[]> = {}
  const runAddon = async (T: number, round: number) => {
    const r = await addon({ kind: 'caption', batches: [1, B], iters: cfg.captionIters, warmup: cfg.captionWarmup, profile: round === 0, parts: true }, T)
    for (const [name, v] of Object.entries(r.result.tasks as Record<string, { samples_ms: number[] }>)) (addonSamples[`${name} t${T}`] ??= []).push(...v.samples_ms)
    if (r.result.profile) results.addon.caption_profile[T] = r.result.profile
    ;(results.addon.kernels ??= {})[`t${T}`] = r.result.kernels
    ;(memory[`semicap float32 t${T}`] ??= []).push(r.result.memory)
  }
  const runEager = async (T: number | null, round: number) => {
    for (const b of [1, B]) {
      const r = await eager(['--captioner', captionerDir, '--task', 'caption', '--batch', String(b), '--tokens', String(TOKENS), '--pixels', pixelsFile(b), '--warmup', String(cfg.captionWarmup), '--iters', String(cfg.captionIters), ...(round === 0 ? ['--profile'] : [])], T, `caption b${b}`)
      ;(eagerSamples[`caption b${b} t${eagerKey(T)}`] ??= []).push(...r.result.samples_ms)
      if (r.result.profile) results.eager.caption_profile[`b${b} t${eagerKey(T)}`] = r.result.profile
      if (T === null) eagerLoad.push(r.result.load_ms)
    }
  }
  const runOrt = async (T: number, round: number) => {
    const r = await ort({ batches: [1, B], iters: cfg.captionIters, warmup: cfg.captionWarmup, threads: T, parts: true }, ortDir)
    for (const [name, v] of Object.entries(r.result.tasks as Record<string, { samples_ms: number[] }>)) (ortSamples[`${name} t${T}`] ??= []).push(...v.samples_ms)
    ;(memory[`ORT float32 t${T}`] ??= []).push(r.result.memory)
    ortRuns.push({ T, round, load_ms: r.result.load_ms, split: r.result.split, greedy_ids: r.result.greedy_ids, greedy_ids_b1: r.result.greedy_ids_b1, features0: r.result.features0, ort_version: r.result.ort_version, session_options: r.result.session_options })
  }
  const dtypeRuns: Record<string, Json> = {}
  const runDtype = async (d: string, T: number) => {
    const r = await addon({ kind: 'caption', batches: [1, B], iters: cfg.captionIters, warmup: cfg.captionWarmup, parts: true, dtype: d as 'int8' }, T)
    for (const [name, v] of Object.entries(r.result.tasks as Record<string, { samples_ms: number[] }>)) (addonSamples[`[${d}] ${name} t${T}`] ??= []).push(...v.samples_ms)
    dtypeRuns[d] = { weights: r.result.weights, greedy_ids: r.result.greedy_ids }
    ;(memory[`semicap ${d} t${T}`] ??= []).push(r.result.memory)
  }
  for (let round = 0; round < rounds; round++) {
    // Groups (addon at T, eager at the same T, ORT at T) back to back; the order alternates between rounds.
    for (const step of pairSchedule(round, captionSides))
      await (step.side === 'addon' ? runAddon(step.T as number, round) : step.side === 'ort' ? runOrt(step.T as number, round) : runEager(step.T, round))
    for (const d of dtypes) for (const T of threadList) await runDtype(d, T)
  }
  if (dtypes.length) {
    // Greedy ids of the reduced types against float32's (batch 8; random benchmark weights, so near-ties are common:
    // the quality measurement on trained captioners is bench/quality.ts).
    const f32 = prep.result.greedy_ids as number[][]
    results.addon.dtypes = Object.fromEntries(Object.entries(dtypeRuns).map(([d, r]) => {
      const ids = r.greedy_ids as number[][]
      const same = ids.filter((row, i) => f32[i] && row.length === f32[i]!.length && row.every((t, j) => t === f32[i]![j])).length
      return [d, { weights: r.weights, greedy_rows_equal_float32: `${same}/${ids.length}` }]
    }))
  }
  results.memory = Object.fromEntries(Object.entries(memory).map(([k, v]) => [k, { loaded_mb: median(v.map((m) => m?.loaded_mb ?? NaN)), peak_mb: median(v.map((m) => m?.peak_mb ?? NaN)), before_mb: median(v.map((m) => m?.before_mb ?? NaN)), runs: v }]))
  results.addon.caption = Object.fromEntries(Object.entries(addonSamples).map(([k, v]) => [k, { median_ms: median(v), samples_ms: v }]))
  results.eager.caption = Object.fromEntries(Object.entries(eagerSamples).map(([k, v]) => [k, { median_ms: median(v), samples_ms: v }]))
  results.eager.load_ms = median(eagerLoad)
  if (ortRuns.length) {
    results.ort.caption = Object.fromEntries(Object.entries(ortSamples).map(([k, v]) => [k, { median_ms: median(v), samples_ms: v }]))
    results.ort.runs = ortRuns.map(({ greedy_ids, greedy_ids_b1, features0, ...rest }) => rest)
    results.ort.version = ortRuns[0].ort_version
    results.ort.session_options = ortRuns[0].session_options
    results.ort.load_ms = Object.fromEntries(threadList.map((T) => [T, median(ortRuns.filter((r) => r.T === T).map((r) => r.load_ms.total as number))]))
    // Greedy ids, three ways (batch 8, same pixels and weights): addon (prepare), eager (cross-check), ORT (first run).
    const same = (a: number[][], b: number[][]) => a.filter((row, i) => b[i] !== undefined && row.length === b[i]!.length && row.every((t, j) => t === b[i]![j])).length
    const addonIds = prep.result.greedy_ids as number[][]
    const ortIds = ortRuns[0].greedy_ids as number[][]
    const f0 = ortRuns[0].features0 as number[]
    results.check.ort = {
      rows: ortIds.length,
      ort_vs_addon: same(ortIds, addonIds),
      ort_vs_eager: eagerCheck.ids.length ? same(ortIds, eagerCheck.ids) : null,
      addon_vs_eager: results.check.greedy_rows_identical,
      // every ORT run (thread counts, rounds) gave the same ids; batch 1 = row 0 of batch 8
      ort_runs_consistent: ortRuns.every((r) => same(r.greedy_ids, ortIds) === ortIds.length),
      ort_b1_matches_b8_row0: same(ortRuns[0].greedy_ids_b1, [ortIds[0]!]) === 1,
      ort_first_differing_position_vs_addon: ortIds.map((row, i) => row.findIndex((t, j) => t !== addonIds[i]?.[j])),
      features0_max_abs_diff_vs_eager: eagerCheck.features0 ? Math.max(...f0.map((x, i) => Math.abs(x - eagerCheck.features0![i]!))) : null,
    }
    const c = results.check.ort
    console.log(`three-way check (greedy ids, batch ${B}, ${TOKENS} tokens): addon = eager ${c.addon_vs_eager}/${c.rows}, ORT = addon ${c.ort_vs_addon}/${c.rows}, ORT = eager ${c.ort_vs_eager ?? '–'}/${c.rows}; ORT runs consistent ${c.ort_runs_consistent}, ORT b1 = b8 row 0 ${c.ort_b1_matches_b8_row0}; CLIP features (image 0) ORT vs eager max |diff| ${c.features0_max_abs_diff_vs_eager?.toExponential(2)}`)
  }
}

/** Training steps, addon and eager side by side at each thread count, for `rounds` rounds whose order alternates (as
 * caption's): this VM's speed drifts over minutes, and a drift then hits both sides. Per-step samples (the addon's
 * after its first, warm-up steps) are pooled over rounds and their median reported, with each round's own ratio. */
async function trainTask(kind: 'ce' | 'scst'): Promise<void> {
  // An earlier round's list under `key`, with this round's items after it.
  const grown = <T>(prev: Json | undefined, key: string, items: T[]): T[] => [...((prev?.[key] as T[] | undefined) ?? []), ...items]
  const addonRes: Record<string, Json> = {}
  const eagerRes: Record<string, Json> = {}
  for (let round = 0; round < rounds; round++) {
    for (const step of pairSchedule(round)) {
      if (step.side === 'addon') {
        const T = step.T as number
        const r = await addon({ kind, images, caption: CAPTION, featureCache, steps: kind === 'ce' ? cfg.ceSteps : cfg.scstSteps, samples: SAMPLES, iters: 0, warmup: 0 }, T)
        const prev = addonRes[`t${T}`]
        const kept = (r.result.steps_ms as number[]).slice(r.result.skipped as number)
        const pooled = grown(prev, 'kept_ms', kept)
        addonRes[`t${T}`] = {
          ...r.result,
          kept_ms: pooled,
          round_medians_ms: grown(prev, 'round_medians_ms', [median(kept)]),
          round_steps_ms: grown(prev, 'round_steps_ms', [r.result.steps_ms as number[]]),
          median_ms: median(pooled),
        }
      } else {
        const T = step.T
        const common = ['--captioner', captionerDir, '--batch', String(B), '--tokens', String(TOKENS), '--grad-clip', '1']
        const args =
          kind === 'ce'
            ? [...common, '--task', 'ce-step', '--warmup', String(cfg.ceWarmup), '--iters', String(cfg.ceIters)]
            : [...common, '--task', 'scst-step', '--samples', String(SAMPLES), '--clip-len', String(clipLen), '--warmup', String(cfg.scstWarmup), '--iters', String(cfg.scstIters)]
        const r = await eager(args, T, kind === 'ce' ? 'ce-step' : 'scst-step')
        const prev = eagerRes[`t${eagerKey(T)}`]
        const pooled = grown(prev, 'samples_ms', r.result.samples_ms as number[])
        eagerRes[`t${eagerKey(T)}`] = {
          ...r.result,
          samples_ms: pooled,
          round_medians_ms: grown(prev, 'round_medians_ms', [r.result.median_ms as number]),
          median_ms: median(pooled),
        }
      }
    }
  }
  results.addon[kind] = addonRes
  results.eager[kind] = eagerRes
}
if (only.includes('ce')) await trainTask('ce')
if (only.includes('scst')) await trainTask('scst')

// ------------------------------------------------------------------------------------------------
// table

env.load_end = fmtLoad()
const addonAfter = existsSync(addonPath) ? sha(addonPath) : null
if (addonAfter !== env.addon.sha256_16) {
  console.log(`note: build/Release/semicap.node changed during the run (${env.addon.sha256_16} -> ${addonAfter}); every addon measurement used the snapshot taken at the start.`)
  results.addon_rebuilt_during_run = true
}

interface Row {
  what: string
  threads: number | string
  addon: number
  eagerDefault: number
  eagerSame: number
  /** Fastest sample of each side (same threads): less sensitive to other work on the machine. */
  addonMin?: number
  eagerSameMin?: number
  target?: string
  floor: number
  note?: string
  /** ONNX Runtime (bench/ort), same intra-op thread count. */
  ort?: number
}
const rows: Row[] = []
const eagerMs = (group: Json, key: (t: string) => string, T: number | null): number => group?.[key(eagerKey(T))]?.median_ms ?? NaN
const minOf = (xs: number[] | undefined): number => (xs && xs.length ? Math.min(...xs) : NaN)

if (results.addon.load) {
  const f = results.floors[threadList[0]!]
  rows.push({ what: 'load, cold (first Captioner.create in the process)', threads: 'default', addon: results.addon.load.cold_ms, eagerDefault: results.eager.load_ms ?? NaN, eagerSame: NaN, floor: f.load_ms, note: 'eager: reference.py reading the same files (fresh process)' })
  rows.push({ what: 'load, warm (second create)', threads: 'default', addon: results.addon.load.warm_ms, eagerDefault: NaN, eagerSame: NaN, target: '< 1000 ms', floor: f.load_ms })
  if (results.addon.load.captioner_load_ms !== undefined)
    rows.push({ what: 'load, warm: Captioner.load(saved folder)', threads: 'default', addon: results.addon.load.captioner_load_ms, eagerDefault: NaN, eagerSame: NaN, target: '< 1000 ms', floor: f.load_ms })
}
if (results.addon.caption) {
  for (const b of [1, B])
    for (const T of threadList) {
      rows.push({
        what: `caption b${b} (greedy, 20 tokens)`,
        threads: T,
        addon: results.addon.caption[`caption b${b} t${T}`]?.median_ms ?? NaN,
        eagerDefault: eagerMs(results.eager.caption, (t) => `caption b${b} t${t}`, null),
        eagerSame: eagerMs(results.eager.caption, (t) => `caption b${b} t${t}`, sameThreads(T)),
        addonMin: minOf(results.addon.caption[`caption b${b} t${T}`]?.samples_ms),
        eagerSameMin: minOf(results.eager.caption[`caption b${b} t${eagerKey(sameThreads(T))}`]?.samples_ms),
        target: b === 1 ? 'latency <= 0.9x ORT' : 'throughput >= 1.25x ORT',
        floor: results.floors[T][`caption_b${b}_ms`],
        ort: results.ort.caption?.[`caption b${b} t${T}`]?.median_ms,
      })
    }
  // The parts the ORT peer is compared on: CLIP image features alone (batch 8) and the cost per generated token.
  // Eager CLIP: reference.py --profile of round 1 (a median of 3); eager has no per-token figure.
  const eprof = (T: number | null) => results.eager.caption_profile?.[`b${B} t${eagerKey(T)}`]?.clip_ms ?? NaN
  for (const T of threadList)
    rows.push({
      what: `CLIP image features b${B}`,
      threads: T,
      addon: results.addon.caption[`clip b${B} t${T}`]?.median_ms ?? NaN,
      eagerDefault: eprof(null),
      eagerSame: eprof(sameThreads(T)),
      floor: results.floors[T].caption_b8_clip_ms,
      target: 'throughput >= 1.2x ORT',
      ort: results.ort.caption?.[`clip b${B} t${T}`]?.median_ms,
    })
  for (const b of [1, B])
    for (const T of threadList)
      rows.push({
        what: `decode, per token b${b} (after the first)`,
        threads: T,
        addon: results.addon.caption[`decode per token b${b} t${T}`]?.median_ms ?? NaN,
        eagerDefault: NaN,
        eagerSame: NaN,
        floor: results.floors[T][`decode_token_b${b}_ms`],
        target: b === 1 ? '<= 1.3x floor' : '<= 1.6x floor',
        ort: results.ort.caption?.[`decode per token b${b} t${T}`]?.median_ms,
      })
}
if (results.addon.caption)
  for (const d of dtypes)
    for (const [what, key, bs] of [
      ['caption b1 (greedy, 20 tokens)', (b: number) => `caption b${b}`, [1]],
      [`caption b${B} (greedy, 20 tokens)`, (b: number) => `caption b${b}`, [B]],
      [`CLIP image features b${B}`, () => `clip b${B}`, [B]],
      ['decode, per token b1', (b: number) => `decode per token b${b}`, [1]],
      [`decode, per token b${B}`, (b: number) => `decode per token b${b}`, [B]],
    ] as const)
      for (const T of threadList)
        rows.push({
          what: `[${d}] ${what}`,
          threads: T,
          addon: results.addon.caption[`[${d}] ${key(bs[0]!)} t${T}`]?.median_ms ?? NaN,
          eagerDefault: NaN,
          eagerSame: NaN,
          floor: NaN,
          ort: results.ort.caption?.[`${key(bs[0]!)} t${T}`]?.median_ms,
          note: `${d} weights vs ORT float32; greedy rows equal to float32: ${results.addon.dtypes?.[d]?.greedy_rows_equal_float32 ?? '?'}`,
        })
for (const kind of ['ce', 'scst'] as const) {
  if (!results.addon[kind]) continue
  for (const T of threadList) {
    const get = (t: number | null) => results.eager[kind][`t${eagerKey(t)}`]?.median_ms ?? NaN
    rows.push({
      what: kind === 'ce' ? `CE step (b8 x 20 tokens, AdamW)` : `SCST step (b8, 5 samples + greedy, CLIP-S, AdamW)`,
      threads: T,
      addon: results.addon[kind][`t${T}`]?.median_ms ?? NaN,
      eagerDefault: get(null),
      eagerSame: get(sameThreads(T)),
      addonMin: minOf(results.addon[kind][`t${T}`]?.kept_ms as number[] | undefined),
      eagerSameMin: minOf(results.eager[kind][`t${eagerKey(sameThreads(T))}`]?.samples_ms),
      target: '>= 2x eager',
      floor: results.floors[T][kind === 'ce' ? 'ce_ms' : 'scst_ms'],
    })
  }
}

const f0 = (x: number) => (Number.isFinite(x) ? (x >= 100 ? x.toFixed(0) : x.toFixed(1)) : '–')
const f2 = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : '–')
const header = '| what | addon threads | addon ms | eager ms (default threads) | eager ms (same threads) | speedup vs default | speedup vs same threads | speedup, fastest samples (same threads) | target | floor ms | addon / floor | ORT ms (same threads) | addon / ORT |'
const lines = [header, '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
for (const r of rows) {
  const best = r.addonMin !== undefined && r.eagerSameMin !== undefined ? `${f2(r.eagerSameMin / r.addonMin)} (${f0(r.addonMin)} vs ${f0(r.eagerSameMin)})` : ''
  lines.push(`| ${r.what} | ${r.threads} | ${f0(r.addon)} | ${f0(r.eagerDefault)} | ${f0(r.eagerSame)} | ${f2(r.eagerDefault / r.addon)} | ${f2(r.eagerSame / r.addon)} | ${best} | ${r.target ?? ''} | ${f0(r.floor)} | ${f2(r.addon / r.floor)} | ${f0(r.ort ?? NaN)} | ${f2(r.addon / (r.ort ?? NaN))} |`)
}
const table = lines.join('\n')
results.table = rows

// Each target as a time: met or not, and whether it asks for less than this machine's floor (the FLOPs at the best
// matmul rate measured here, or the bytes at the best bandwidth), which no float32 implementation reaches with the
// same arithmetic.
function targetMs(r: Row): number {
  const m = /^(?:latency <=|throughput >=|<=|>=) ([\d.]+)x (ORT|floor|eager)$/.exec(r.target ?? '')
  if (!m) return NaN
  const f = Number(m[1])
  if (m[2] === 'ORT') return r.target!.startsWith('latency') ? (r.ort ?? NaN) * f : (r.ort ?? NaN) / f
  if (m[2] === 'floor') return r.floor * f
  return r.eagerSame / f
}
const targetLines = rows
  .filter((r) => Number.isFinite(targetMs(r)) && Number.isFinite(r.addon))
  .map((r) => {
    const t = targetMs(r)
    const below = Number.isFinite(r.floor) && t < r.floor ? `; below the floor (${f0(r.floor)} ms): out of reach in float32 here` : ''
    return `- ${r.what}, ${r.threads} thread(s): target ${r.target} = ${f0(t)} ms; semicap ${f0(r.addon)} ms: ${r.addon <= t ? 'met' : 'not met'}${below}`
  })
results.targets = targetLines

const prof = results.addon.caption_profile ?? {}
const profLines: string[] = []
for (const [T, p] of Object.entries(prof as Record<string, Record<string, number>>)) {
  profLines.push(`- addon, ${T} thread(s): batch 8: CLIP ${f0(p.b8_clip_ms!)} ms, decoding 20 tokens from features ${f0(p.b8_decode20_ms!)} ms (mapper + prefix + 1st token ${f0(p.b8_decode1_ms!)} ms, then ${f0(p.b8_step_ms!)} ms per token); batch 1: CLIP ${f0(p.b1_clip_ms!)} ms, decoding ${f0(p.b1_decode20_ms!)} ms (${f0(p.b1_step_ms!)} ms per token)`)
}
for (const [k, p] of Object.entries((results.eager.caption_profile ?? {}) as Record<string, Record<string, number>>)) {
  profLines.push(`- eager ${k.replace(' t', ', threads ')}: CLIP ${f0(p.clip_ms!)} ms, decoding 20 tokens from features ${f0(p.decode_ms!)} ms`)
}
for (const T of threadList) {
  const run = (results.ort.runs as Json[] | undefined)?.find((r) => r.T === T)
  if (!run) continue
  const sp = run.split as Record<string, Record<string, number>>
  profLines.push(
    `- ORT, ${T} thread(s): ${Object.entries(sp).map(([b, p]) => `${b.replace('b', 'batch ')}: CLIP ${f0(p.clip_ms!)} ms, mapper + prefill + 1st token ${f0(p.prefill_and_first_token_ms!)} ms, then ${f0(p.decode_step_ms!)} ms per token`).join('; ')}; sessions created in ${f0(results.ort.load_ms[T])} ms (3 graphs)`,
  )
}
for (const kind of ['ce', 'scst'] as const)
  for (const [k, r] of Object.entries((results.eager[kind] ?? {}) as Record<string, Json>))
    if (r.phases_ms) profLines.push(`- eager ${kind} step, threads ${k.slice(1)}: ${Object.entries(r.phases_ms as Record<string, number>).map(([n, v]) => `${n} ${f0(v)} ms`).join(', ')}`)
for (const kind of ['ce', 'scst'] as const)
  for (const [k, r] of Object.entries((results.addon[kind] ?? {}) as Record<string, Json>)) {
    const eagerRounds = results.eager[kind]?.[`t${eagerKey(sameThreads(Number(k.slice(1))))}`]?.round_medians_ms as number[] | undefined
    const ratios = (r.round_medians_ms as number[]).map((a, i) => (eagerRounds?.[i] !== undefined ? f2(eagerRounds[i]! / a) : '–'))
    profLines.push(`- addon ${kind} step, threads ${k.slice(1)}: per-step ms by round ${(r.round_steps_ms as number[][]).map((xs) => xs.map(f0).join(', ')).join(' | ')} (first ${r.skipped} of each skipped); speedup vs eager (same threads) by round ${ratios.join(', ')}`)
  }

if (results.addon.load?.breakdown_ms) {
  const b = results.addon.load.breakdown_ms as Record<string, number>
  profLines.unshift(`- addon load (warm): ${Object.entries(b).map(([k, v]) => `${k.replace(/_/g, ' ')} ${f0(v)} ms`).join(', ')}; create samples ${(results.addon.load.samples_ms as number[]).map(f0).join(', ')} ms`)
}
const floorLines = threadList.map((T) => {
  const f = results.floors[T]
  return `- ${T} thread(s): bandwidth ${f2(f.bandwidth_gbs)} GB/s, best matmul ${f0(f.gflops)} GFLOP/s (at::mm / BLAS best ${f0(f.gflops_atmm)}, oneDNN ${f0(f.onednn?.gflops ?? NaN)})`
})

const loadNote = `load average (1/5/15 min) at start ${env.load_start}, at end ${env.load_end}`
const md = [
  `# semicap CPU benchmark${quick ? ' (--quick, small models)' : ''}`,
  '',
  `${env.date}; ${env.cpu} (lscpu: ${env.lscpu_model}; flags ${env.cpu_flags.join(' ')}), ${env.cores} cores; BLAS: libblas.so.3 -> \`${env.blas}\` (OpenBLAS core ${env.blas_core}${env.openblas_coretype ? `, OPENBLAS_CORETYPE=${env.openblas_coretype}` : ''}); node ${env.node}; python torch ${env.torch_python} (default threads ${env.eager_default_threads}); addon ${env.addon?.sha256_16 ?? '?'} (built ${env.addon?.mtime ?? '?'}); git ${env.git}; OMP_WAIT_POLICY=PASSIVE.`,
  `Machine load: ${loadNote} (2 cores; other work was running; per-child load averages are in results.json \`loads\`).`,
  '',
  'Speedup = eager ms / addon ms (> 1: the addon is faster). "default threads": eager PyTorch at torch\'s default; "same threads": eager at the addon\'s thread count. Medians over iterations (caption: pooled over rounds).',
  '',
  table,
  '',
  'Targets as times (ORT and eager: same threads):',
  ...targetLines,
  '',
  `Cross-check: addon and eager greedy ids identical in ${results.check.greedy_rows_identical} / ${results.check.rows} rows (batch 8, same pixels and weights; first differing positions ${JSON.stringify(results.check.first_differing_position)}).`,
  ...(results.check.ort
    ? [
        `Three-way: ORT = addon in ${results.check.ort.ort_vs_addon} / ${results.check.ort.rows} rows, ORT = eager in ${results.check.ort.ort_vs_eager ?? '–'} / ${results.check.ort.rows}; every ORT run the same ids: ${results.check.ort.ort_runs_consistent}; ORT batch 1 = batch-8 row 0: ${results.check.ort.ort_b1_matches_b8_row0}; CLIP features of image 0, ORT vs eager: max |diff| ${results.check.ort.features0_max_abs_diff_vs_eager?.toExponential(2) ?? '–'}.`,
        '',
        `ORT: onnxruntime-node ${results.ort.version?.node ?? '?'} (bench/ort), CPU execution provider, float32, session options ${JSON.stringify(results.ort.session_options)} (intraOpNumThreads = the row's thread count; ORT's default spinning thread pool), graphs from bench/ort/export.py (torch ${results.ort.export?.torch} / opset ${results.ort.export?.opset}, export ${results.ort.export?.hash}); "addon / ORT" = addon ms / ORT ms (< 1: the addon is faster). Decode per token: the 19 steps after the first token / 19 (addon: (20-token - 1-token captionFeatures) / 19).`,
      ]
    : ortSkipped
      ? [`ORT peer skipped: ${ortSkipped}.`]
      : []),
  '',
  'Kernels (runtimeInfo() of the float32 caption children: instruction set, BLAS core, and the per-shape choices, measured: the addon\'s packed kernels split between the threads (kernel), on one thread (kernel1), or BLAS, "type rows K x N: choice (kernel us / kernel1 us / BLAS us)", the fastest run seen; a split not yet timed in 3 sessions says how many):',
  ...Object.entries((results.addon.kernels ?? {}) as Record<string, Json>).map(([t, k]) => `- ${t}: isa ${k?.cpu?.isa} (features ${(k?.cpu?.features ?? []).join(' ')}), BLAS core ${k?.blas?.core} (${k?.blas_core_type?.source}); ${k?.pool ? `helper threads ${k.pool.helpers} (${k.pool.jobs} jobs shared, ${k.pool.alone} run alone, ${k.pool.wakes} wake-ups, spin ${k.pool.spinUs} us); ` : ''}${((k?.choices ?? []) as Json[]).filter((c) => `t${c.threads}` === t).map((c) => `${c.type} ${c.rows} ${c.K}x${c.N}: ${c.choice} (${[c.kernelUs, c.kernel1Us, c.blasUs].map((v) => (v == null ? '-' : f0(v))).join('/')}${c.checks != null && c.checks < 3 ? `, ${c.checks} of 3 timings` : ''})`).join('; ')}`),
  ...(results.memory && Object.keys(results.memory).length
    ? [
        '',
        'Resident memory of each caption child (VmRSS / VmHWM, MiB, medians over rounds): before loading the models, after loading them, and the peak over the runs (caption batch 1 and 8, the CLIP and decoding parts). ORT holds GPT-2 twice: the prefill and decode graphs each carry its weights (bench/ort/export.py writes two graphs, as a non-merged decoder export does).',
        '',
        '| side | threads | before load | after load | peak |',
        '|---|---|---|---|---|',
        ...Object.entries(results.memory as Record<string, Json>).map(([k, m]) => {
          const [side, dtype, t] = k.split(' ')
          return `| ${side} ${dtype} | ${t!.slice(1)} | ${f0(m.before_mb)} | ${f0(m.loaded_mb)} | ${f0(m.peak_mb)} |`
        }),
      ]
    : []),
  ...(results.addon.dtypes ? [`Reduced precision: ${Object.entries(results.addon.dtypes as Record<string, Json>).map(([d, v]) => `${d}: packed ${(((v.weights?.captioner?.packedBytes ?? 0) + (v.weights?.clip?.packedBytes ?? 0)) / 2 ** 20).toFixed(0)} MiB, greedy rows equal to float32 ${v.greedy_rows_equal_float32}`).join('; ')} (random benchmark weights; quality on trained captioners: bench/quality.ts).`] : []),
  '',
  'Floors (max(bytes / bandwidth, FLOPs / best matmul rate) per phase, bench/floors.py):',
  ...floorLines,
  '',
  'Where the time goes:',
  ...profLines,
  '',
].join('\n')
results.loads = loads

console.log('\n' + table + '\n')
console.log(targetLines.join('\n'))
console.log(`cross-check: ${results.check.greedy_rows_identical} / ${results.check.rows} greedy rows identical (addon vs eager)`)
if (results.check.ort) console.log(`three-way: ORT = addon ${results.check.ort.ort_vs_addon} / ${results.check.ort.rows}, ORT = eager ${results.check.ort.ort_vs_eager ?? '–'} / ${results.check.ort.rows}`)
console.log(profLines.join('\n'))
console.log(floorLines.join('\n'))
console.log(loadNote)

const resultsFile = join(out, quick ? 'results-quick.json' : 'results.json')
writeFileSync(resultsFile, JSON.stringify(results, null, 1))
log(`wrote ${resultsFile}`)
const fullRun = !quick && ALL.every((t) => only.includes(t))
const mdFile = fullRun ? join(here, 'results', 'cpu-latest.md') : join(out, quick ? 'cpu-quick.md' : 'cpu-partial.md')
mkdirSync(dirname(mdFile), { recursive: true })
writeFileSync(mdFile, md)
log(`wrote ${mdFile}`)
