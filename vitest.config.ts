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
    // The JSON report is what .ci/run counts from (CI reads a plain "N passed, N failed" line, not vitest's summary).
    reporters: ['default', ['json', { outputFile: 'test-results.json' }]],
  },
})
