import { defineConfig } from 'vitest/config';

// Two projects: `unit` touches no network; `integration` talks to the local AWS endpoint
// over HTTP (started by its global setup) and to the local Sledge API.
// Pooled write buffers are overwritten when released (shared/buffer-pool.ts), so that a use
// after release corrupts data the tests would catch, rather than passing by luck. Set before
// the global setup starts the control plane, which inherits it.
process.env.SLEDGE_POOL_POISON = '1';

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts', 'test/cdk/**/*.test.ts'],
          testTimeout: 120_000,
          // Synthesizing the stack bundles both functions with esbuild: seconds on a busy machine.
          hookTimeout: 120_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          globalSetup: ['test/integration/global-setup.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          // The local endpoint is one process on a 2-core machine; files run one at a time.
          fileParallelism: false,
        },
      },
    ],
  },
});
