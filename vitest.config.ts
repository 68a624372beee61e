import { defineConfig } from 'vitest/config';

// Four projects: `unit` touches no network; `integration` and `integration-b` talk to a local AWS
// endpoint over HTTP (each started by its global setup) and to a local Sledge API; `integration-portable`
// runs the data-path tests again against a control plane with the portable codec and CRC.
// Pooled write buffers are overwritten when released (shared/data/buffer-pool.ts), so that a use
// after release corrupts data the tests would catch, rather than passing by luck. Set before
// the global setup starts the control plane, which inherits it.
process.env.SLEDGE_POOL_POISON = '1';

/** Integration files that run against the second control plane (the `integration-b` project). */
const SECOND_PLANE_FILES = [
  'test/integration/snapshot-model.test.ts',
  'test/integration/backup-sites.test.ts',
  'test/integration/backup.test.ts',
  'test/integration/interleavings.test.ts',
  'test/integration/group-crash-consistency.test.ts',
  'test/integration/lost-responses.test.ts',
  'test/integration/fold.test.ts',
];

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
          // Needs the portable control plane, which only the last project starts; the others run in integration-b.
          exclude: ['test/integration/portable-codecs.test.ts', ...SECOND_PLANE_FILES],
          globalSetup: ['test/integration/global-setup.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          // One file at a time against this control plane.
          fileParallelism: false,
        },
      },
      {
        // Long files that need nothing but a control plane, against a second one on its own local
        // endpoint (test/integration/global-setup-b.ts). `npm test` runs it in a vitest process of
        // its own beside the others (scripts/run-tests.mjs): one process runs projects whose files
        // go one at a time one after the other.
        test: {
          name: 'integration-b',
          include: SECOND_PLANE_FILES,
          globalSetup: ['test/integration/global-setup-b.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
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
