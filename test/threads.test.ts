// The default intra-op thread count: one per physical core from the OS topology (libtorch's own default counts one
// core on this project's KVM guests, where the OS has two), unless SEMICAP_THREADS or OMP_NUM_THREADS says otherwise.
import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseCpuList, physicalCores } from '../lib/cpu.js'
import { repoRoot, tempDir } from './helpers/paths.js'

/** A fake sysfs: cpu ids -> [package, core]. */
function sysfs(topology: Record<number, [number, number]>): string {
  const root = tempDir('semicap-sysfs-')
  for (const [cpu, [pkg, core]] of Object.entries(topology)) {
    const dir = join(root, `cpu${cpu}`, 'topology')
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'physical_package_id'), `${pkg}\n`)
    writeFileSync(join(dir, 'core_id'), `${core}\n`)
  }
  return root
}

function childInfo(env: Record<string, string | undefined>): { threads: number; threadsChoice: { threads: number; source: string } } {
  const e: Record<string, string> = {}
  for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) e[k] = v
  const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', "import('./lib/index.js').then((m) => { const i = m.runtimeInfo(); console.log(JSON.stringify({ threads: i.threads, threadsChoice: i.threadsChoice })) })"], { cwd: repoRoot, env: e, encoding: 'utf8' })
  return JSON.parse(out.trim().split('\n').at(-1)!)
}

describe('physical cores', () => {
  it('parses CPU lists', () => {
    expect(parseCpuList('0-3,8,10-11')).toEqual([0, 1, 2, 3, 8, 10, 11])
    expect(parseCpuList('5')).toEqual([5])
    expect(parseCpuList('')).toEqual([])
  })

  it('counts distinct (package, core) among the allowed CPUs: hyper-threads once, CPUs outside the mask not at all', () => {
    // 2 packages x 2 cores x 2 threads.
    const root = sysfs({ 0: [0, 0], 1: [0, 1], 2: [1, 0], 3: [1, 1], 4: [0, 0], 5: [0, 1], 6: [1, 0], 7: [1, 1] })
    expect(physicalCores(root, 'Cpus_allowed_list:\t0-7\n')).toBe(4)
    expect(physicalCores(root, 'Cpus_allowed_list:\t0,4\n')).toBe(1)
    expect(physicalCores(root, 'Cpus_allowed_list:\t0-1\n')).toBe(2)
    // Unreadable topology or no mask: no answer (libtorch's default stays).
    expect(physicalCores(root, 'Cpus_allowed_list:\t9\n')).toBeUndefined()
    expect(physicalCores(root, 'Name: node\n')).toBeUndefined()
  })
})

describe('default intra-op threads (child processes)', () => {
  it('one per physical core of this machine when nothing is set; SEMICAP_THREADS and OMP_NUM_THREADS win', () => {
    const cores = physicalCores()
    const dflt = childInfo({ SEMICAP_THREADS: undefined, OMP_NUM_THREADS: undefined })
    if (cores !== undefined && dflt.threadsChoice.source === 'physical cores') expect(dflt.threads).toBe(cores)
    else expect(dflt.threadsChoice.source).toBe('libtorch')
    expect(dflt.threads).toBeGreaterThanOrEqual(Math.min(cores ?? 1, 1024))
    expect(childInfo({ SEMICAP_THREADS: '1', OMP_NUM_THREADS: undefined })).toMatchObject({ threads: 1, threadsChoice: { threads: 1, source: 'SEMICAP_THREADS' } })
    expect(childInfo({ SEMICAP_THREADS: undefined, OMP_NUM_THREADS: '1' })).toMatchObject({ threads: 1, threadsChoice: { source: 'OMP_NUM_THREADS' } })
  })
})
