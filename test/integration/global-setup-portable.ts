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
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The portable control plane's stats (test/integration/portable-plane.ts, `PortableStats`). */
    portableStatsUrl: string;
  }
}

const PLANE_SCRIPT = fileURLToPath(new URL('./portable-plane.ts', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** portable-plane.ts prints this, then its JSON, once it serves. */
const READY_PREFIX = 'sledge-portable-plane ';
/** Synthesizing and deploying the stack takes seconds; a busy 2-core machine gets a margin. */
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 15_000;

interface Ready {
  apiUrl: string;
  endpointUrl: string;
  env: Record<string, string>;
  statsUrl: string;
}

let child: ChildProcess | undefined;

export default async function setup(project: TestProject) {
  child = spawn(process.execPath, ['--import', 'tsx', PLANE_SCRIPT], {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      SLEDGE_EC_IMPL: 'portable',
      SLEDGE_CRC_IMPL: 'portable',
      // As test/integration/global-setup.ts sets them for the other control plane.
      SLEDGE_EVACUATION_SETTLE_MS: process.env.SLEDGE_EVACUATION_SETTLE_MS ?? '2000',
      SLEDGE_EVACUATION_RECHECK_SECONDS: process.env.SLEDGE_EVACUATION_RECHECK_SECONDS ?? '1',
      SLEDGE_ORPHAN_GRACE_MS: process.env.SLEDGE_ORPHAN_GRACE_MS ?? '30000',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const ready = await new Promise<Ready>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the portable control plane did not start within ${START_TIMEOUT_MS} ms:\n${output}`)), START_TIMEOUT_MS);
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
      reject(new Error(`the portable control plane exited (${code ?? signal}) before it served:\n${output}`));
    });
  });
  project.provide('apiUrl', ready.apiUrl);
  project.provide('endpointUrl', ready.endpointUrl);
  project.provide('sledgeEnv', ready.env);
  project.provide('portableStatsUrl', ready.statsUrl);
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
