import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * The fault suites (`npm run test:faults`): crash, filestore faults, and whatever else lives in
 * test/faults/. The default config (vitest.config.ts) leaves them out; test/faults-fast.test.ts
 * and test/faults-fast-refusals.test.ts run small subsets of them in `npm test`.
 */
export default defineConfig({
  resolve: {
    alias: { '@tandem/shared': fileURLToPath(new URL('./packages/shared/src/index.ts', import.meta.url)) },
  },
  test: {
    include: ['test/faults/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    testTimeout: 300_000,
    hookTimeout: 300_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
