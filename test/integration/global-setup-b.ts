/**
 * The `integration-b` project's global setup: a second control plane, in a child process
 * (test/integration/plane-process.ts) with its own local AWS endpoint, vault endpoint and stack,
 * so that its test files run at the same time as the integration project's, one at a time
 * each, on the machine's two cores. Like test/integration/global-setup.ts otherwise.
 */
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { startPlaneChild, testPlaneEnv } from './plane-child.ts';
import { VAULT_ENV } from '#shared/core/vault-config.ts';

const PLANE_SCRIPT = fileURLToPath(new URL('./plane-process.ts', import.meta.url));
/** plane-process.ts prints this, then its JSON, once it serves. */
const READY_PREFIX = 'sledge-plane ';

interface Ready {
  apiUrl: string;
  endpointUrl: string;
  env: Record<string, string>;
}

/** The environment without the other control plane's vault endpoint: this one starts its own. */
function withoutVault(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env };
  delete out[VAULT_ENV.endpointUrl];
  return out;
}

export default async function setup(project: TestProject) {
  const { ready, stop } = await startPlaneChild<Ready>(PLANE_SCRIPT, testPlaneEnv(withoutVault(process.env)), READY_PREFIX, 'the second control plane');
  project.provide('apiUrl', ready.apiUrl);
  project.provide('endpointUrl', ready.endpointUrl);
  project.provide('sledgeEnv', ready.env);
  return stop;
}
