import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';
import { DurationSequencer } from './test/support/sequencer.js';

export default defineConfig({
  resolve: {
    // Tests run against the TypeScript sources of the shared package, not its build output.
    alias: { '@tandem/shared': fileURLToPath(new URL('./packages/shared/src/index.ts', import.meta.url)) },
  },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'test/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**', 'test/faults/**'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Two test files at a time: most of a scenario's time is spent waiting on PostgreSQL, child
    // processes and the filestore, so two overlap well even on two cores (one at a time took
    // over 15 minutes).
    maxWorkers: 2,
    // Longest files first (test/durations.json): the two workers end together.
    sequence: { sequencer: DurationSequencer },
    reporters: ['default'],
  },
});
