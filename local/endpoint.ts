/**
 * The local AWS endpoint: S3, DynamoDB, SQS and CloudFormation on one port, as LocalStack
 * serves them.
 *
 * `ensureEndpoint()` uses the endpoint that `AWS_ENDPOINT_URL` names, and when it is unset
 * starts the bundled `local/moto-server.py` (moto, the emulator LocalStack builds upon, with
 * isolated DynamoDB transactions; LocalStack itself needs Docker). Either way it first makes
 * sure, by a short self-test (`endpoint-check.ts`), that the endpoint's DynamoDB isolates
 * concurrent conditional transactions, which plain `moto_server` does not. The SDK's own
 * endpoint configuration then points every client at it: this module sets `AWS_ENDPOINT_URL`
 * and LocalStack's test credentials and region, and domain code never branches on "local".
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { accessSync, constants as fsConstants, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, join } from 'node:path';
import { SAFE_ENDPOINTS, verifyEndpointIsolation } from './endpoint-check.ts';

/** LocalStack's port, which tools like `awslocal` assume. */
export const DEFAULT_ENDPOINT_PORT = 4566;

const HOST = '127.0.0.1';
/** How long a reachability probe may take before the endpoint counts as unreachable. */
const PROBE_TIMEOUT_MS = 10_000;
/** How long the endpoint may take to answer after it is spawned (it starts in 1-3 s). */
const START_TIMEOUT_MS = 30_000;
const START_POLL_INTERVAL_MS = 100;
/** How long stop() waits after SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 5_000;
/** How many lines of the endpoint's output are kept to explain a failed start. */
const OUTPUT_LINES_MAX = 40;

export interface EnsureEndpointOptions {
  /**
   * Port for an endpoint this call starts; 0 picks a free one.
   *
   * @default 4566
   */
  port?: number;
  /**
   * Use the endpoint `AWS_ENDPOINT_URL` names, when it is set (and refuse when it does not
   * answer). `false` always starts a new endpoint (tests that must not share state).
   *
   * @default true
   */
  preferExisting?: boolean;
}

/** No endpoint can be used or started; the message says why and what to do. */
export class EndpointUnavailableError extends Error {
  override name = 'EndpointUnavailableError';
}

export interface LocalEndpoint {
  /** Base URL without a trailing slash, e.g. `http://127.0.0.1:4566`. */
  url: string;
  /** Stops the endpoint this call started (a no-op for an existing endpoint). Idempotent. */
  stop(): Promise<void>;
  /** Whether this call started the endpoint (false: an existing endpoint is used). */
  started: boolean;
  /** The process id of the endpoint this call started (benchmarks read its CPU time). */
  pid?: number;
}

/**
 * Returns a reachable local AWS endpoint whose DynamoDB isolates concurrent transactions,
 * starting the bundled one if need be.
 *
 * Throws `EndpointUnavailableError` when `AWS_ENDPOINT_URL` is set but nothing answers there,
 * or when no endpoint can be started; throws `UnsafeEndpointError` (endpoint-check.ts) when the
 * endpoint fails the isolation self-test, unless `SLEDGE_ALLOW_UNSAFE_ENDPOINT=1`.
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
    // Starting another endpoint instead would quietly put the data somewhere the user did not ask for.
    if (!(await answers(url))) {
      throw new EndpointUnavailableError(
        `AWS_ENDPOINT_URL is ${existing}, but nothing answers there (no HTTP response within ${PROBE_TIMEOUT_MS / 1000} s). ` +
          `Start the endpoint it names, e.g. \`${bundledCommandFor(url)}\`, or unset AWS_ENDPOINT_URL and Sledge starts its own.`,
      );
    }
    await verifyEndpointIsolation(url);
    return { url, stop: async () => {}, started: false };
  }

  const port = opts.port ?? DEFAULT_ENDPOINT_PORT;
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new Error(`port ${port} is not a TCP port (0 to 65535; 0 picks a free one)`);
  }
  const server = await startMoto(port === 0 ? await freePort() : port);
  try {
    // The bundled endpoint is tested like any other: its fixes patch moto's internals, which a
    // moto release may change.
    await verifyEndpointIsolation(server.url);
  } catch (err) {
    await server.stop();
    throw err;
  }

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

/**
 * Starts another bundled endpoint on a free port (or `port`), leaving `AWS_ENDPOINT_URL` as it
 * is: the vault's (docs/backup.md), which must not share state with the primary's endpoint.
 * Self-tested like the primary's. Stopped by `stop()` and when this process exits.
 */
export async function startSeparateEndpoint(port = 0): Promise<{ url: string; pid: number | undefined; stop(): Promise<void> }> {
  const server = await startMoto(port === 0 ? await freePort() : port);
  try {
    await verifyEndpointIsolation(server.url);
  } catch (err) {
    await server.stop();
    throw err;
  }
  return server;
}

/** The command that starts the bundled endpoint where `url` points (4566 on 127.0.0.1 when `url` is not plain HTTP with a port). */
function bundledCommandFor(url: string): string {
  let host = HOST;
  let port = String(DEFAULT_ENDPOINT_PORT);
  try {
    const parsed = new URL(url);
    if (parsed.protocol === 'http:' && parsed.port) {
      host = parsed.hostname;
      port = parsed.port;
    }
  } catch {
    // Not a URL at all: the example keeps the defaults.
  }
  return `python3 local/moto-server.py -H ${host} -p ${port}`;
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
export async function portIsFree(port: number): Promise<boolean> {
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

/**
 * A Python interpreter that can import moto's server: `python3` on PATH, or else the
 * interpreter named on the first line of `moto_server` (pipx and virtualenvs install moto
 * beside a Python of their own).
 */
function pythonWithMoto(): string | undefined {
  const candidates: string[] = [];
  const python3 = findOnPath('python3');
  if (python3) candidates.push(python3);
  const motoServer = findOnPath('moto_server');
  if (motoServer) {
    try {
      const shebang = /^#!\s*(\/\S*python[\d.]*)\s*$/.exec(readFileSync(motoServer, 'utf8').slice(0, 200).split('\n')[0] ?? '');
      if (shebang?.[1]) candidates.push(shebang[1]);
    } catch {
      // Unreadable: python3 is the only candidate.
    }
  }
  return candidates.find((python) => spawnSync(python, ['-c', 'import moto.server, moto.dynamodb.responses'], { stdio: 'ignore' }).status === 0);
}

async function startMoto(port: number): Promise<MotoServer> {
  const url = `http://${HOST}:${port}`;
  // Only the bundled wrapper is started, never plain moto_server: its DynamoDB transactions
  // are not isolated, so it loses acknowledged writes under concurrent writers.
  const python = pythonWithMoto();
  if (!python) {
    throw new EndpointUnavailableError(
      [
        'AWS_ENDPOINT_URL is unset and the bundled endpoint (local/moto-server.py) cannot start: no python3 on PATH can import moto.',
        "Install moto's server for python3 (`python3 -m pip install 'moto[server]'`), or start an endpoint yourself and set AWS_ENDPOINT_URL to it.",
        'Plain `moto_server` is not used: its DynamoDB transactions are not isolated, so it loses acknowledged writes when writers commit concurrently.',
        SAFE_ENDPOINTS,
      ].join('\n'),
    );
  }
  if (!(await portIsFree(port))) {
    const what = (await answers(url)) ? 'an HTTP server, perhaps an AWS endpoint,' : 'another process';
    throw new EndpointUnavailableError(
      `cannot start the local AWS endpoint on ${HOST}:${port}: ${what} already listens there. ` +
        `To use it, set AWS_ENDPOINT_URL=${url}; otherwise stop it or pass { port: 0 } to pick a free port.`,
    );
  }

  const child = spawn(python, [MOTO_WRAPPER, '-H', HOST, '-p', String(port)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // Keep Python's output unbuffered, so a failed start's reason is in the last lines.
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
    // Waited for from here on: unreferenced, a child that outlives the grace below (a busy
    // endpoint) would let the event loop empty between SIGKILL and its exit, and `await exited`
    // would never return (a bench then ended with "the event loop emptied" and exit code 13).
    child.ref();
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
      throw new EndpointUnavailableError(`${MOTO_WRAPPER} (run by ${python}) failed to start on ${url}: ${how}\n${output().join('\n')}`);
    }
    if (await answers(url)) return { url, stop, pid: child.pid };
    if (Date.now() > deadline) {
      await stop();
      throw new EndpointUnavailableError(
        `${MOTO_WRAPPER} (run by ${python}) did not answer on ${url} within ${START_TIMEOUT_MS / 1000} s; its last output:\n${output().join('\n')}`,
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
 * Kills the child when this process exits or is told to stop, so no endpoint this process
 * started outlives `npm start` or a test run. Returns a function that removes the hooks.
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
