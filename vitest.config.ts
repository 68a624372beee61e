import { defineConfig } from 'vitest/config';

// Three projects: `unit` touches no network; `integration` talks to the local AWS endpoint
// over HTTP (started by its global setup) and to the local Sledge API; `integration-portable`
// runs the data-path tests again against a control plane with the portable codec and CRC.
// Pooled write buffers are overwritten when released (shared/data/buffer-pool.ts), so that a use
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
          // Needs the portable control plane, which only the next project starts.
          exclude: ['test/integration/portable-codecs.test.ts'],
          globalSetup: ['test/integration/global-setup.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          // The local endpoint is one process on a 2-core machine; files run one at a time.
          fileParallelism: false,
        },
      },
      {
        // The data path again, against a control plane that runs the portable erasure codec and
        // CRC-32C, as the Lambda bundle does (test/integration/global-setup-portable.ts), and the
        // proof that it did. After the other projects, so that two control planes never compete
        // for the 2 cores.
        test: {
          name: 'integration-portable',
          include: ['test/integration/data-path.test.ts', 'test/integration/portable-codecs.test.ts'],
          globalSetup: ['test/integration/global-setup-portable.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
