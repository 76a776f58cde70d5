// What this CPU can run, read before the addon (and so libtorch's BLAS) loads.
//
// Why: Debian's OpenBLAS 0.3.21 (what libtorch-dev calls) picks its kernels by CPU model at load time and falls back
// to SSE3 "Prescott" kernels on CPUs newer than it knows (measured on a Sapphire Rapids Xeon: 26-32 GFLOP/s instead
// of 96-150). Its core type can only be set through OPENBLAS_CORETYPE before the library loads, so the choice is
// made here, from the CPU's feature flags, to the core OpenBLAS itself picks on the CPUs it knows. A user's own
// OPENBLAS_CORETYPE always wins.
import { readFileSync } from 'node:fs'

export interface BlasCoreChoice {
  /** The core type asked for (OPENBLAS_CORETYPE) or null when nothing was set. */
  coreType: string | null
  /** 'user': OPENBLAS_CORETYPE was already set; 'semicap': chosen here from the CPU flags; 'none': left to BLAS. */
  source: 'user' | 'semicap' | 'none'
}

/** Feature flags from /proc/cpuinfo (Linux); an empty set elsewhere or when unreadable. */
export function cpuFlags(cpuinfo?: string): { vendor: string; flags: Set<string> } {
  let text = cpuinfo
  if (text === undefined) {
    try {
      text = readFileSync('/proc/cpuinfo', 'utf8')
    } catch {
      return { vendor: '', flags: new Set() }
    }
  }
  const vendor = /^vendor_id\s*:\s*(.+)$/m.exec(text)?.[1]?.trim() ?? ''
  const line = /^flags\s*:\s*(.+)$/m.exec(text)?.[1] ?? ''
  return { vendor, flags: new Set(line.trim().split(/\s+/).filter(Boolean)) }
}

/**
 * The OpenBLAS core for these flags: on AMD, Zen whenever AVX2 + FMA are there (what OpenBLAS 0.3.21 picks itself
 * on the Zen 2/3 CPUs it knows; on a Zen 4 (AVX-512, AVX512-BF16) it picks Cooperlake, and there Zen measured the
 * same: 100-104 against 92-102 GFLOP/s at one thread, 179-205 against 191-193 at two, sgemm on GPT-2's and CLIP's
 * shapes); elsewhere SkylakeX with AVX-512 (F, CD, BW, DQ, VL: what those kernels use) and Haswell with AVX2 + FMA;
 * nothing below that (OpenBLAS's own pick is then as good).
 */
export function blasCoreFor(vendor: string, flags: Set<string>): string | null {
  const has = (...f: string[]) => f.every((x) => flags.has(x))
  const amd = vendor === 'AuthenticAMD' || vendor === 'HygonGenuine'
  if (!has('avx2', 'fma')) return null
  if (amd) return 'Zen'
  return has('avx512f', 'avx512cd', 'avx512bw', 'avx512dq', 'avx512vl') ? 'SkylakeX' : 'Haswell'
}

/** Sets OPENBLAS_CORETYPE in `env` (process.env by default) unless the user did; returns what was decided. */
export function chooseBlasCore(env: NodeJS.ProcessEnv = process.env, cpuinfo?: string): BlasCoreChoice {
  const user = env.OPENBLAS_CORETYPE
  if (user !== undefined && user !== '') return { coreType: user, source: 'user' }
  if (process.arch !== 'x64' || (cpuinfo === undefined && process.platform !== 'linux')) return { coreType: null, source: 'none' }
  // SEMICAP_BLAS_CORE=off leaves OpenBLAS to its own detection.
  if (env.SEMICAP_BLAS_CORE === 'off' || env.SEMICAP_BLAS_CORE === '0') return { coreType: null, source: 'none' }
  const { vendor, flags } = cpuFlags(cpuinfo)
  const core = blasCoreFor(vendor, flags)
  if (!core) return { coreType: null, source: 'none' }
  env.OPENBLAS_CORETYPE = core
  return { coreType: core, source: 'semicap' }
}

/** How the intra-op thread count was chosen (runtimeInfo().threadsChoice). */
export interface ThreadsChoice {
  threads: number
  /**
   * 'SEMICAP_THREADS' / 'OMP_NUM_THREADS': the user's; 'physical cores': one thread per physical core the process
   * may run on, read from the OS topology, where libtorch's own default was lower; 'libtorch': libtorch's default;
   * 'setThreads': set at run time.
   */
  source: 'SEMICAP_THREADS' | 'OMP_NUM_THREADS' | 'physical cores' | 'libtorch' | 'setThreads'
}

/** CPU ids in a Linux list such as "0-3,8,10-11". */
export function parseCpuList(list: string): number[] {
  const out: number[] = []
  for (const part of list.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim())
    if (!m) continue
    const lo = Number(m[1])
    const hi = m[2] === undefined ? lo : Number(m[2])
    for (let c = lo; c <= hi && c - lo < 4096; c++) out.push(c)
  }
  return out
}

/**
 * Physical cores this process may run on: distinct (package, core) ids, in the OS's CPU topology (Linux sysfs), of
 * the CPUs in its affinity mask. Hyper-threads of one core count once. Undefined where that cannot be read.
 *
 * Why: libtorch 1.13 defaults to one thread per physical core as its bundled cpuinfo sees them, and on KVM guests
 * such as the 2-vCPU AMD EPYC VMs this project runs on it sees one core where the OS has two (each its own core,
 * no siblings): every product then ran on one thread. Measured there with 2 threads instead of 1: CLIP ViT-B/32
 * features 94 ms per image at batch 16 instead of 156, 168 ms at batch 1 instead of 207.
 */
export function physicalCores(root = '/sys/devices/system/cpu', status?: string): number | undefined {
  try {
    const text = status ?? readFileSync('/proc/self/status', 'utf8')
    const allowed = /^Cpus_allowed_list:\s*(.+)$/m.exec(text)?.[1]
    if (!allowed) return undefined
    const cores = new Set<string>()
    for (const cpu of parseCpuList(allowed)) {
      const dir = `${root}/cpu${cpu}/topology`
      const pkg = readFileSync(`${dir}/physical_package_id`, 'utf8').trim()
      const core = readFileSync(`${dir}/core_id`, 'utf8').trim()
      cores.add(`${pkg}:${core}`)
    }
    return cores.size > 0 ? cores.size : undefined
  } catch {
    return undefined
  }
}
