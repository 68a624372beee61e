/**
 * Starts the local control plane once for the integration project: a local AWS endpoint
 * (the one AWS_ENDPOINT_URL names, else the bundled local/moto-server.py on a free port; either
 * must pass the transaction self-test of local/endpoint-check.ts), the stack's resources
 * deployed from the synthesized template, and the API on a free port.
 */
import type { TestProject } from 'vitest/node';
import { startControlPlane, type ControlPlane } from '#local/control-plane.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    apiUrl: string;
    endpointUrl: string;
    sledgeEnv: Record<string, string>;
  }
}

let plane: ControlPlane | undefined;

export default async function setup(project: TestProject) {
  // Evacuations started over HTTP run in this process: settle and re-check quickly, and treat
  // uncommitted chunks as orphans after 30 s rather than an hour (docs/evacuation.md).
  process.env.SLEDGE_EVACUATION_SETTLE_MS ??= '2000';
  process.env.SLEDGE_EVACUATION_RECHECK_SECONDS ??= '1';
  process.env.SLEDGE_ORPHAN_GRACE_MS ??= '30000';
  // Reads do not ask for repairs here: the tests that lose or damage chunks on purpose must find
  // them still lost when they read again. test/integration/read-repair.test.ts turns it on.
  process.env.SLEDGE_READ_REPAIR ??= '0';
  // Nor do the chunks those tests lose retire drives: the other tests write beside them. The
  // lost-chunk test in read-repair.test.ts sets its own threshold.
  process.env.SLEDGE_LOST_CHUNK_RETIRE_THRESHOLD ??= '0';
  plane = await startControlPlane({
    port: 0,
    endpointPort: 0,
    stackName: `sledge-test-${Date.now().toString(36)}`,
    // The one setting not as deployed: a failed work message comes back after 2 s instead of
    // the stack's 12 minutes, so the dead-letter test (5 receives) and retried jobs finish in
    // seconds. The worker's timeout, batch size and concurrency stay the stack's.
    visibilityTimeoutSeconds: 2,
  });
  project.provide('apiUrl', plane.apiUrl);
  project.provide('endpointUrl', plane.endpointUrl);
  project.provide('sledgeEnv', plane.env);
  return async () => {
    await plane?.stop();
  };
}
