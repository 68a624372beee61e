/**
 * Which local AWS endpoints Sledge accepts (local/endpoint-check.ts, local/endpoint.ts) and
 * what `npm start` says when it refuses one.
 *
 * These tests start their own endpoints on free ports (a plain `moto_server`, and the bundled
 * one through `ensureEndpoint`), so they do not depend on the endpoint the global setup chose.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { DEFAULTS, UnsafeEndpointError, selfTestIsolation, verifyEndpointIsolation } from '#local/endpoint-check.ts';
import { EndpointUnavailableError, ensureEndpoint } from '#local/endpoint.ts';
import { REPO_ROOT, run } from './nbd-tools.ts';

const HOST = '127.0.0.1';
/** moto_server starts in 1-3 s; a loaded machine may need more. */
const MOTO_START_TIMEOUT_MS = 60_000;
const MOTO_POLL_INTERVAL_MS = 200;
const MOTO_STOP_GRACE_MS = 5_000;
/** `npm start` as one process (tsx's loader in node itself), so a timeout's SIGKILL ends all of it. */
const START = ['--import', 'tsx', join(REPO_ROOT, 'local', 'main.ts')];

/** A port that was free a moment ago. */
async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve, reject) => {
    probe.once('error', reject);
    probe.listen(0, HOST, resolve);
  });
  const port = (probe.address() as { port: number }).port;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

async function answers(url: string): Promise<boolean> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    await response.body?.cancel();
    return true;
  } catch {
    return false;
  }
}

/** Starts plain `moto_server` (no Sledge wrapper) on a free port and waits until it answers. */
async function startPlainMoto(): Promise<{ url: string; child: ChildProcess; output: () => string }> {
  const port = await freePort();
  const url = `http://${HOST}:${port}`;
  const child = spawn('moto_server', ['-H', HOST, '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (d: Buffer) => (output = (output + d.toString()).slice(-4000));
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));
  const deadline = Date.now() + MOTO_START_TIMEOUT_MS;
  for (;;) {
    if (spawnError) throw new Error(`cannot run moto_server (install it with pip install 'moto[server]'): ${spawnError.message}`);
    if (child.exitCode !== null) throw new Error(`moto_server exited with code ${child.exitCode}:\n${output}`);
    if (await answers(`${url}/moto-api/`)) return { url, child, output: () => output };
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`moto_server did not answer on ${url} within ${MOTO_START_TIMEOUT_MS} ms:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, MOTO_POLL_INTERVAL_MS));
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), MOTO_STOP_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

/** The variables these tests change, restored after each test. */
const SAVED_ENV = ['AWS_ENDPOINT_URL', 'SLEDGE_ALLOW_UNSAFE_ENDPOINT', 'PATH'] as const;
const saved = Object.fromEntries(SAVED_ENV.map((name) => [name, process.env[name]]));
afterEach(() => {
  for (const name of SAVED_ENV) {
    if (saved[name] === undefined) delete process.env[name];
    else process.env[name] = saved[name];
  }
  vi.restoreAllMocks();
});

/** The environment for `npm start` (local/main.ts) run as a child, without the override. */
function startEnv(overrides: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...overrides };
  delete env.SLEDGE_ALLOW_UNSAFE_ENDPOINT;
  return env;
}

/** What a refusal must say: the safe endpoints and the override. */
function expectSafeChoicesNamed(message: string): void {
  expect(message).toContain('python3 local/moto-server.py -H 127.0.0.1 -p 4566');
  expect(message).toMatch(/LocalStack with its DynamoDB/);
  expect(message).toMatch(/AWS itself/);
}

describe('a plain moto_server', () => {
  let plain: Awaited<ReturnType<typeof startPlainMoto>>;

  beforeAll(async () => {
    plain = await startPlainMoto();
  });

  afterAll(async () => {
    if (plain) await stopChild(plain.child);
  });

  it('fails the self-test, which says how many acknowledged commits it lost, and is refused with the safe choices named', async () => {
    const refusal = await verifyEndpointIsolation(plain.url, { allowUnsafe: false }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refusal, 'a plain moto_server passed the self-test').toBeInstanceOf(UnsafeEndpointError);
    const err = refusal as UnsafeEndpointError;
    expect(err.report?.isolated).toBe(false);
    expect(err.report?.lostWrites).toBeGreaterThan(0);
    expect(err.report?.rounds).toBeLessThanOrEqual(DEFAULTS.rounds);
    expect(err.message).toContain(`the AWS endpoint ${plain.url} does not isolate concurrent DynamoDB transactions`);
    expect(err.message).toMatch(new RegExp(`${err.report?.lostWrites} of \\d+ acknowledged commits were undone by \\d+ concurrent cancelled transactions?`));
    expect(err.message).toMatch(/acknowledged writes are lost when two or more writers commit to one volume at the same time/);
    expectSafeChoicesNamed(err.message);
    expect(err.message).toContain('set SLEDGE_ALLOW_UNSAFE_ENDPOINT=1');
  });

  it('is refused by ensureEndpoint when AWS_ENDPOINT_URL names it, and used with a loud warning under the override', async () => {
    process.env.AWS_ENDPOINT_URL = plain.url;
    delete process.env.SLEDGE_ALLOW_UNSAFE_ENDPOINT;
    await expect(ensureEndpoint()).rejects.toThrow(UnsafeEndpointError);

    process.env.SLEDGE_ALLOW_UNSAFE_ENDPOINT = '1';
    const warnings: string[] = [];
    vi.spyOn(console, 'warn').mockImplementation((message: unknown) => void warnings.push(String(message)));
    const endpoint = await ensureEndpoint();
    expect(endpoint).toMatchObject({ url: plain.url, started: false });
    expect(warnings.join('\n')).toMatch(/WARNING +SLEDGE_ALLOW_UNSAFE_ENDPOINT=1: using the AWS endpoint .* which does not isolate concurrent DynamoDB transactions/);
    expect(warnings.join('\n')).toMatch(/acknowledged writes are lost when two or more writers commit to one volume at the same time/);
  });

  it('makes `npm start` exit non-zero with the refusal, before it serves anything', { timeout: 200_000 }, async () => {
    const apiPort = await freePort();
    // A bound against a hang, not a speed check: the self-test against plain moto_server (which
    // copies whole tables on every cancelled transaction) took over a minute under CI's load.
    const out = await run(process.execPath, START, { env: startEnv({ AWS_ENDPOINT_URL: plain.url, PORT: String(apiPort) }), timeoutMs: 150_000 });
    expect(out.code, out.stderr).toBe(1);
    expect(out.stderr).toMatch(new RegExp(`^sledge: the AWS endpoint ${plain.url} does not isolate concurrent DynamoDB transactions`, 'm'));
    expectSafeChoicesNamed(out.stderr);
    expect(out.stdout).not.toMatch(/Sledge is serving/);
  });
});

describe('the bundled endpoint', () => {
  it('passes every round of the self-test when ensureEndpoint starts it', async () => {
    // ensureEndpoint runs the self-test on the endpoint it starts and refuses it on failure;
    // the second run here shows the report.
    const endpoint = await ensureEndpoint({ port: 0, preferExisting: false });
    try {
      const report = await selfTestIsolation(endpoint.url);
      console.log(`self-test on the bundled endpoint: ${JSON.stringify(report)}`);
      expect(report).toMatchObject({ isolated: true, rounds: DEFAULTS.rounds, lostWrites: 0, appliedCancelledWrites: 0, uncancelled: 0, errors: 0 });
      expect(report.committed).toBeGreaterThanOrEqual(DEFAULTS.rounds * DEFAULTS.committers);
      expect(report.committed).toBeLessThanOrEqual(DEFAULTS.rounds * DEFAULTS.committers * DEFAULTS.commitsPerCommitterMax);
      expect(report.cancelled).toBe(DEFAULTS.rounds * DEFAULTS.cancellers * DEFAULTS.cancelledPerCanceller);
    } finally {
      await endpoint.stop();
    }
  });
});

describe('refusals that need no endpoint', () => {
  let tmp: string | undefined;
  let held: Server | undefined;

  afterEach(async () => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    tmp = undefined;
    if (held) await new Promise((resolve) => held!.close(resolve));
    held = undefined;
  });

  it('refuses an AWS_ENDPOINT_URL where nothing answers instead of starting another endpoint', async () => {
    const port = await freePort();
    process.env.AWS_ENDPOINT_URL = `http://${HOST}:${port}`;
    const err = await ensureEndpoint({ port: 0 }).then(
      (endpoint) => endpoint.stop().then(() => new Error(`ensureEndpoint used ${endpoint.url}`)),
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(EndpointUnavailableError);
    expect((err as Error).message).toContain(`AWS_ENDPOINT_URL is http://${HOST}:${port}, but nothing answers there`);
    expect((err as Error).message).toContain(`python3 local/moto-server.py -H ${HOST} -p ${port}`);
  });

  it('never falls back to plain moto_server when python3 cannot import moto', async () => {
    // A PATH whose python3 cannot import anything and whose moto_server leaves a mark if run.
    tmp = mkdtempSync(join(tmpdir(), 'sledge-no-moto-'));
    const mark = join(tmp, 'moto_server-ran');
    writeFileSync(join(tmp, 'python3'), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
    writeFileSync(join(tmp, 'moto_server'), `#!/bin/sh\ntouch '${mark}'\nexit 1\n`, { mode: 0o755 });
    process.env.PATH = tmp;
    const err = await ensureEndpoint({ port: 0, preferExisting: false }).then(
      (endpoint) => endpoint.stop().then(() => new Error(`ensureEndpoint started ${endpoint.url}`)),
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(EndpointUnavailableError);
    expect((err as Error).message).toMatch(/no python3 on PATH can import moto/);
    expect((err as Error).message).toMatch(/Plain `moto_server` is not used: its DynamoDB transactions are not isolated/);
    expectSafeChoicesNamed((err as Error).message);
    expect(existsSync(mark), 'moto_server was run').toBe(false);
  });

  it('makes `npm start` say in one line which port is busy and how to choose another', async () => {
    held = createServer();
    await new Promise<void>((resolve) => held!.listen(0, HOST, resolve));
    const port = (held.address() as { port: number }).port;
    const out = await run(process.execPath, START, { env: startEnv({ PORT: String(port) }), timeoutMs: 60_000 });
    expect(out.code, out.stderr).toBe(1);
    expect(out.stderr).toContain(`sledge: port ${port} is already in use on 127.0.0.1; stop what listens there, or choose another port, e.g. \`PORT=${port + 1} npm start\`.`);
    expect(out.stderr).not.toMatch(/EADDRINUSE|\n\s+at /);
  });

  it('makes `npm start` refuse an AWS_ENDPOINT_URL where nothing answers', async () => {
    const [endpointPort, apiPort] = [await freePort(), await freePort()];
    const out = await run(process.execPath, START, { env: startEnv({ AWS_ENDPOINT_URL: `http://${HOST}:${endpointPort}`, PORT: String(apiPort) }), timeoutMs: 60_000 });
    expect(out.code, out.stderr).toBe(1);
    expect(out.stderr).toMatch(new RegExp(`^sledge: AWS_ENDPOINT_URL is http://${HOST}:${endpointPort}, but nothing answers there`, 'm'));
    expect(out.stderr).not.toMatch(/\n\s+at /);
  });
});
