/**
 * The `integration-b` project's global setup: a second control plane, in a child process
 * (test/integration/plane-process.ts) with its own local AWS endpoint, vault endpoint and stack,
 * so that its test files run at the same time as the integration project's, one at a time
 * each, on the machine's two cores. Like test/integration/global-setup.ts otherwise.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';
import { VAULT_ENV } from '#shared/core/vault-config.ts';

const PLANE_SCRIPT = fileURLToPath(new URL('./plane-process.ts', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** plane-process.ts prints this, then its JSON, once it serves. */
const READY_PREFIX = 'sledge-plane ';
/** Synthesizing and deploying the stack takes seconds; a busy 2-core machine gets a margin. */
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 15_000;

interface Ready {
  apiUrl: string;
  endpointUrl: string;
  env: Record<string, string>;
}

let child: ChildProcess | undefined;

/** The environment without the other control plane's vault endpoint: this one starts its own. */
function withoutVault(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env };
  delete out[VAULT_ENV.endpointUrl];
  return out;
}

export default async function setup(project: TestProject) {
  child = spawn(process.execPath, ['--import', 'tsx', PLANE_SCRIPT], {
    cwd: REPO_ROOT,
    env: {
      ...withoutVault(process.env),
      // As test/integration/global-setup.ts sets them for the other control plane.
      SLEDGE_EVACUATION_SETTLE_MS: process.env.SLEDGE_EVACUATION_SETTLE_MS ?? '2000',
      SLEDGE_EVACUATION_RECHECK_SECONDS: process.env.SLEDGE_EVACUATION_RECHECK_SECONDS ?? '1',
      SLEDGE_ORPHAN_GRACE_MS: process.env.SLEDGE_ORPHAN_GRACE_MS ?? '30000',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const ready = await new Promise<Ready>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the second control plane did not start within ${START_TIMEOUT_MS} ms:\n${output}`)), START_TIMEOUT_MS);
    let pendingLine = '';
    child!.stdout!.on('data', (d: Buffer) => {
      output += d;
      pendingLine += d;
      const lines = pendingLine.split('\n');
      pendingLine = lines.pop()!;
      const line = lines.find((l) => l.startsWith(READY_PREFIX));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice(READY_PREFIX.length)) as Ready);
      }
    });
    // Its log goes to this process's stderr, where a failing test's cause is looked for.
    child!.stderr!.on('data', (d: Buffer) => {
      output += d;
      process.stderr.write(d);
    });
    child!.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the second control plane exited (${code ?? signal}) before it served:\n${output}`));
    });
  });
  project.provide('apiUrl', ready.apiUrl);
  project.provide('endpointUrl', ready.endpointUrl);
  project.provide('sledgeEnv', ready.env);
  return async () => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  };
}
