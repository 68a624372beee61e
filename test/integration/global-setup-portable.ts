/**
 * The `integration-portable` project's global setup: the data-path tests again, against a
 * control plane that runs the portable erasure codec and CRC-32C (test/integration/
 * portable-plane.ts), which is what the Lambda bundle runs.
 *
 * That control plane is a child process with SLEDGE_EC_IMPL=portable and SLEDGE_CRC_IMPL=
 * portable, because the CRC implementation is fixed when its module loads. It uses the local
 * AWS endpoint in AWS_ENDPOINT_URL when one answers (CI's, or the one the integration
 * project's setup started in this process), and deploys a stack of its own there, so its work
 * queues and tables are not shared with the other control plane.
 */
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { startPlaneChild, testPlaneEnv } from './plane-child.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The portable control plane's stats (test/integration/portable-plane.ts, `PortableStats`). */
    portableStatsUrl: string;
  }
}

const PLANE_SCRIPT = fileURLToPath(new URL('./portable-plane.ts', import.meta.url));
/** portable-plane.ts prints this, then its JSON, once it serves. */
const READY_PREFIX = 'sledge-portable-plane ';

interface Ready {
  apiUrl: string;
  endpointUrl: string;
  env: Record<string, string>;
  statsUrl: string;
}

export default async function setup(project: TestProject) {
  const { ready, stop } = await startPlaneChild<Ready>(PLANE_SCRIPT, testPlaneEnv({ ...process.env, SLEDGE_EC_IMPL: 'portable', SLEDGE_CRC_IMPL: 'portable' }), READY_PREFIX, 'the portable control plane');
  project.provide('apiUrl', ready.apiUrl);
  project.provide('endpointUrl', ready.endpointUrl);
  project.provide('sledgeEnv', ready.env);
  project.provide('portableStatsUrl', ready.statsUrl);
  return stop;
}
