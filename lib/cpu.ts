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
 * on the AMD CPUs it knows, AVX-512 ones included: its SkylakeX kernels are not used there); elsewhere SkylakeX with
 * AVX-512 (F, CD, BW, DQ, VL: what those kernels use) and Haswell with AVX2 + FMA; nothing below that (OpenBLAS's
 * own pick is then as good).
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
