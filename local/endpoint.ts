/**
 * The local AWS endpoint: S3, DynamoDB, SQS and CloudFormation on one port, as LocalStack
 * serves them.
 *
 * `ensureEndpoint()` uses the endpoint that `AWS_ENDPOINT_URL` names when it answers, and
 * otherwise starts `moto_server` (the emulator LocalStack builds upon; LocalStack itself needs
 * Docker). Either way the SDK's own endpoint configuration points every client at it: this
 * module sets `AWS_ENDPOINT_URL` and LocalStack's test credentials and region, and domain code
 * never branches on "local".
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { accessSync, constants as fsConstants } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, join } from 'node:path';

/** LocalStack's port, which tools like `awslocal` assume. */
export const DEFAULT_ENDPOINT_PORT = 4566;

const HOST = '127.0.0.1';
/** How long a reachability probe may take before the endpoint counts as unreachable. */
const PROBE_TIMEOUT_MS = 2_000;
/** How long moto_server may take to answer after it is spawned (it starts in 1-3 s). */
const START_TIMEOUT_MS = 30_000;
const START_POLL_INTERVAL_MS = 100;
/** How long stop() waits after SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 5_000;
/** How many lines of moto_server's output are kept to explain a failed start. */
const OUTPUT_LINES_MAX = 40;

export interface EnsureEndpointOptions {
  /**
   * Port for a moto_server this call starts; 0 picks a free one.
   *
   * @default 4566
   */
  port?: number;
  /**
   * Use the endpoint `AWS_ENDPOINT_URL` names when it answers. `false` always starts a new
   * moto_server (tests that must not share state).
   *
   * @default true
   */
  preferExisting?: boolean;
}

export interface LocalEndpoint {
  /** Base URL without a trailing slash, e.g. `http://127.0.0.1:4566`. */
  url: string;
  /** Stops the moto_server this call started (a no-op for an existing endpoint). Idempotent. */
  stop(): Promise<void>;
  /** Whether this call started a moto_server (false: an existing endpoint is used). */
  started: boolean;
  /** The process id of the moto_server this call started (benchmarks read its CPU time). */
  pid?: number;
}

/**
 * Returns a reachable local AWS endpoint, starting `moto_server` if need be.
 *
 * Sets, when unset, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` to `test` and
 * `AWS_REGION` to `us-east-1` (LocalStack's conventions). When it starts a server it also
 * sets `AWS_ENDPOINT_URL` to it (and restores the previous value on `stop()`), so SDK clients
 * built afterwards use it. A started server is stopped by `stop()` and when the process exits.
 *
 * @example
 * const endpoint = await ensureEndpoint({ port: 0 });
 * try {
 *   // ... SDK clients built here talk to endpoint.url
 * } finally {
 *   await endpoint.stop();
 * }
 */
export async function ensureEndpoint(opts: EnsureEndpointOptions = {}): Promise<LocalEndpoint> {
  setDefault('AWS_ACCESS_KEY_ID', 'test');
  setDefault('AWS_SECRET_ACCESS_KEY', 'test');
  setDefault('AWS_REGION', 'us-east-1');

  const existing = process.env.AWS_ENDPOINT_URL;
  if (opts.preferExisting !== false && existing) {
    const url = trimSlash(existing);
    if (await answers(url)) return { url, stop: async () => {}, started: false };
  }

  const port = opts.port ?? DEFAULT_ENDPOINT_PORT;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new Error(`port ${port} is not a TCP port (0 to 65535; 0 picks a free one)`);
  }
  const server = await startMoto(port === 0 ? await freePort() : port);

  const previous = process.env.AWS_ENDPOINT_URL;
  process.env.AWS_ENDPOINT_URL = server.url;
  let stopped: Promise<void> | undefined;
  return {
    url: server.url,
    started: true,
    pid: server.pid,
    stop: () =>
      (stopped ??= server.stop().then(() => {
        // Restore only what this call set; someone may have pointed it elsewhere since.
        if (process.env.AWS_ENDPOINT_URL === server.url) {
          if (previous === undefined) delete process.env.AWS_ENDPOINT_URL;
          else process.env.AWS_ENDPOINT_URL = previous;
        }
      })),
  };
}

function setDefault(name: string, value: string): void {
  if (!process.env[name]) process.env[name] = value;
}

function trimSlash(url: string): string {
  return url.replace(/\/+$/, '');
}

/** Whether anything answers HTTP at `url`: any status counts, a refused connection or a timeout does not. */
async function answers(url: string): Promise<boolean> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    await response.body?.cancel();
    return true;
  } catch {
    return false;
  }
}

/** A port that was free a moment ago. Another process may take it before moto does; startMoto says so then. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.once('error', reject);
    probe.listen(0, HOST, () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => (port ? resolve(port) : reject(new Error('the OS gave no port for a free-port probe'))));
    });
  });
}

/** Whether `port` on 127.0.0.1 can be listened on right now. */
async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.unref();
    probe.once('error', () => resolve(false));
    probe.listen(port, HOST, () => probe.close(() => resolve(true)));
  });
}

function findOnPath(command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, command);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

const MOTO_WRAPPER = fileURLToPath(new URL('./moto-server.py', import.meta.url));

interface MotoServer {
  url: string;
  stop(): Promise<void>;
  pid: number | undefined;
}

async function startMoto(port: number): Promise<MotoServer> {
  const url = `http://${HOST}:${port}`;
  const motoServer = findOnPath('moto_server');
  if (!motoServer) {
    throw new Error(
      'no local AWS endpoint: `moto_server` is not on PATH and AWS_ENDPOINT_URL names no reachable endpoint. ' +
        "Install moto's server with `pip install 'moto[server]'` (or run LocalStack), " +
        'or point AWS_ENDPOINT_URL at a running endpoint, e.g. `AWS_ENDPOINT_URL=http://127.0.0.1:4566`.',
    );
  }
  if (!(await portIsFree(port))) {
    const what = (await answers(url)) ? 'an HTTP server, perhaps an AWS endpoint,' : 'another process';
    throw new Error(
      `cannot start moto_server on ${HOST}:${port}: ${what} already listens there. ` +
        `To use it, set AWS_ENDPOINT_URL=${url}; otherwise stop it or pass { port: 0 } to pick a free port.`,
    );
  }

  // Prefer the wrapper that serializes DynamoDB requests (local/moto-server.py says why); it
  // needs a python3 that can import moto, which is the case wherever moto_server was pip-installed.
  const python = findOnPath('python3');
  const useWrapper = python !== undefined && spawnSync(python, ['-c', 'import moto.server, moto.dynamodb.responses'], { stdio: 'ignore' }).status === 0;
  if (!useWrapper) console.warn('warning: python3 cannot import moto; starting plain moto_server, whose concurrent DynamoDB transactions are not isolated');
  const [command, args] = useWrapper ? [python!, [MOTO_WRAPPER, '-H', HOST, '-p', String(port)]] : [motoServer, ['-H', HOST, '-p', String(port)]];
  const child = spawn(command, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    // Keep moto's Python output unbuffered, so a failed start's reason is in the last lines.
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
  });
  // The child must not keep this process alive on its own: when the work is done the process
  // exits, and the exit hook below takes the child with it.
  child.unref();
  const output = keepLastLines(child);
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      resolve();
    });
    child.once('error', (err) => {
      spawnError = err;
      resolve();
    });
  });

  const removeExitHooks = killOnProcessExit(child);
  const stop = async (): Promise<void> => {
    removeExitHooks();
    if (exit || spawnError) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    await exited;
    clearTimeout(timer);
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (spawnError || exit) {
      await stop();
      const how = spawnError ? spawnError.message : `exited with ${exit?.signal ?? `code ${exit?.code}`}`;
      throw new Error(`moto_server (${motoServer}) failed to start on ${url}: ${how}\n${output().join('\n')}`);
    }
    if (await answers(url)) return { url, stop, pid: child.pid };
    if (Date.now() > deadline) {
      await stop();
      throw new Error(
        `moto_server (${motoServer}) did not answer on ${url} within ${START_TIMEOUT_MS / 1000} s; its last output:\n${output().join('\n')}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, START_POLL_INTERVAL_MS));
  }
}

/** Drains the child's stdout and stderr (a full pipe would block it) and keeps the last lines. */
function keepLastLines(child: ChildProcess): () => string[] {
  const lines: string[] = [];
  const onData = (chunk: Buffer): void => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (!line.trim()) continue;
      lines.push(line);
      if (lines.length > OUTPUT_LINES_MAX) lines.shift();
    }
  };
  for (const stream of [child.stdout, child.stderr]) {
    stream?.on('data', onData);
    // Pipes to a child are sockets; an unref'd child with ref'd pipes would still hold the loop.
    (stream as { unref?: () => void } | null)?.unref?.();
  }
  return () => [...lines];
}

const TERMINATING_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * Kills the child when this process exits or is told to stop, so no moto_server outlives
 * `npm start` or a test run. Returns a function that removes the hooks.
 *
 * A signal listener replaces Node's default "terminate", so after killing the child it
 * re-raises the signal if no one else listens for it, and the process ends as it would have.
 */
function killOnProcessExit(child: ChildProcess): () => void {
  const onExit = (): void => {
    child.kill('SIGKILL');
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    child.kill('SIGKILL');
    remove();
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  };
  const remove = (): void => {
    process.off('exit', onExit);
    for (const signal of TERMINATING_SIGNALS) process.off(signal, onSignal);
  };
  process.on('exit', onExit);
  for (const signal of TERMINATING_SIGNALS) process.on(signal, onSignal);
  return remove;
}
