/**
 * Helpers for the NBD tests: run Debian's NBD clients, start the gateway through the real CLI
 * (`node bin/sledge.js nbd ...`) and `nbdkit memory` as the known-good reference.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const SLEDGE_BIN = fileURLToPath(new URL('../../bin/sledge.js', import.meta.url));
/** Debian's tools first: nbdsh needs the system python3 that has the libnbd module. */
export const TOOLS_ENV = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (killed after `timeoutMs`), never throwing on a non-zero exit. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? TOOLS_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${opts.timeoutMs ?? 120_000} ms]`;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 120_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A server under test: where to connect and how to stop it. */
export interface NbdTarget {
  uri: string;
  /** The server's process id (for SIGSTOP and SIGCONT). */
  pid?: number;
  /** Stops the server; resolves with its exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Everything the server printed, for failure messages. */
  output(): string;
}

function waitExit(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/**
 * Starts `sledge nbd` (of a volume, or `--snapshot` read-only) as a child process through
 * bin/sledge.js and waits for the line that carries its URI.
 */
export function startGateway(apiUrl: string, volumeId: string | { snapshotId: string }, listen: string[], extra: string[] = []): Promise<NbdTarget> {
  const what = typeof volumeId === 'string' ? [volumeId] : ['--snapshot', volumeId.snapshotId];
  const child = spawn(process.execPath, [SLEDGE_BIN, 'nbd', ...what, '--api', apiUrl, ...listen, ...extra], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const target: NbdTarget = {
    uri: '',
    ...(child.pid !== undefined ? { pid: child.pid } : {}),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return waitExit(child);
    },
    output: () => out,
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`gateway did not start within 60 s:\n${out}`));
    }, 60_000);
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /serving \S+ .* at (\S+)\n/.exec(out);
      if (m && !target.uri) {
        clearTimeout(timer);
        target.uri = m[1]!;
        resolve(target);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (!target.uri) reject(new Error(`gateway exited with ${code} before serving:\n${out}`));
    });
  });
}

/** Starts `nbdkit memory` (RAM-backed, thread-safe, byte-addressable) on a Unix socket. */
export async function startNbdkitMemory(socketPath: string, sizeBytes: number): Promise<NbdTarget> {
  const child = spawn('nbdkit', ['--foreground', '--unix', socketPath, 'memory', String(sizeBytes)], { env: TOOLS_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  for (let i = 0; i < 200 && !existsSync(socketPath); i++) {
    if (child.exitCode !== null) throw new Error(`nbdkit exited with ${child.exitCode}: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!existsSync(socketPath)) throw new Error(`nbdkit did not create ${socketPath} within 10 s: ${out}`);
  return {
    uri: `nbd+unix:///?socket=${socketPath}`,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await waitExit(child);
      // nbdkit exits on SIGTERM by design; report that as a clean stop.
      return child.exitCode ?? 0;
    },
    output: () => out,
  };
}

/** Python for nbdsh scripts: `code(f)` runs `f` and returns the NBD error name it raised, or 0. */
export const NBDSH_ERRNO = `def code(f):
    try:
        f()
    except nbd.Error as e:
        return e.errno
    return 0`;

/** Runs a Python snippet in nbdsh connected to `uri` (`h` is the handle). */
export function nbdsh(uri: string, script: string, timeoutMs = 120_000): Promise<RunResult> {
  return run('nbdsh', ['-u', uri, '-c', script], { timeoutMs });
}

/** Shows a failed command's output in the assertion message. */
export function describeRun(what: string, r: RunResult): string {
  return `${what} exited ${r.code}\n--- stdout\n${r.stdout.slice(-4000)}\n--- stderr\n${r.stderr.slice(-4000)}`;
}
