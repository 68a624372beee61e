/**
 * Starts a control plane script in a child process (tsx) and waits for the one line it prints
 * once it serves, `<readyPrefix><json>`; its log goes to this process's stderr, where a failing
 * test's cause is looked for. Used by the global setups of the projects whose control plane
 * cannot share the test runner's process (test/integration/global-setup-portable.ts,
 * global-setup-b.ts).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** Synthesizing and deploying the stack takes seconds; a busy 2-core machine gets a margin. */
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 15_000;

/** The environment global-setup.ts gives its own control plane, for another one. */
export function testPlaneEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return {
    ...env,
    SLEDGE_EVACUATION_SETTLE_MS: env.SLEDGE_EVACUATION_SETTLE_MS ?? '2000',
    SLEDGE_EVACUATION_RECHECK_SECONDS: env.SLEDGE_EVACUATION_RECHECK_SECONDS ?? '1',
    SLEDGE_ORPHAN_GRACE_MS: env.SLEDGE_ORPHAN_GRACE_MS ?? '30000',
    // As in global-setup.ts: no repair requests from reads, so damage made on purpose stays.
    SLEDGE_READ_REPAIR: env.SLEDGE_READ_REPAIR ?? '0',
    SLEDGE_LOST_CHUNK_RETIRE_THRESHOLD: env.SLEDGE_LOST_CHUNK_RETIRE_THRESHOLD ?? '0',
  };
}

export async function startPlaneChild<T>(script: string, env: NodeJS.ProcessEnv, readyPrefix: string, what: string): Promise<{ ready: T; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const ready = await new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start within ${START_TIMEOUT_MS} ms:\n${output}`)), START_TIMEOUT_MS);
    let pendingLine = '';
    child.stdout.on('data', (d: Buffer) => {
      output += d;
      pendingLine += d;
      const lines = pendingLine.split('\n');
      pendingLine = lines.pop()!;
      const line = lines.find((l) => l.startsWith(readyPrefix));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice(readyPrefix.length)) as T);
      }
    });
    child.stderr.on('data', (d: Buffer) => {
      output += d;
      process.stderr.write(d);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code ?? signal}) before it served:\n${output}`));
    });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  };
  return { ready, stop };
}
