import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The native addon and libtorch's thread pools are per process: forks isolate them per test file.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Two cores: running test files one after another is faster than fighting over them.
    fileParallelism: false,
    // Tests compare numbers across processes (CLI vs library, ranks vs one process): they run the packed kernels for
    // every float32 CPU inference product (SEMICAP_CPU_GEMM=kernel), whose results do not depend on the process,
    // instead of the per-machine timed choice between kernels and BLAS (test/kernels.test.ts tests that choice and its
    // cache file in child processes of its own). One intra-op thread, as the suite's numbers and timings were set
    // with; test/threads.test.ts checks the default thread choice in child processes without it.
    env: { SEMICAP_KERNEL_CACHE: 'off', SEMICAP_CPU_GEMM: 'kernel', SEMICAP_THREADS: '1' },
    // The JSON report is what .ci/run counts from (CI reads a plain "N passed, N failed" line, not vitest's summary).
    reporters: ['default', ['json', { outputFile: 'test-results.json' }]],
  },
})
