/**
 * The Lambda path, proven: the stack's bundled head and worker, as CDK would upload them, run
 * in a fresh `node` process from a directory with no node_modules anywhere above it, against
 * the local endpoint and the resources the local stack deployed.
 *
 * Everything else in the integration project runs the handlers from source, with the project's
 * node_modules at hand; a dependency the bundle left out (an import esbuild kept external, a
 * file read from a package at runtime) would pass there and fail on Lambda. Here the only code
 * the child process can load is the two bundles and Node's built-ins, which this test checks
 * before trusting the result.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, parse } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { createRequire } from 'node:module';
import { App } from 'aws-cdk-lib';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { cdkJsonContext } from '../../cdk/contract.ts';
import { SledgeStack } from '../../cdk/stack.ts';
import { BUNDLED_CRC_ADDON_FILE } from '#shared/data/crc32c.ts';
import { seeded } from '../unit/seed.ts';
import { iamAuthorizer } from './helpers.ts';

const MiB = 1024 * 1024;

/**
 * The child process: loads the two bundles the way the Lambda runtime does (an ESM import of
 * `index.mjs`, then `handler`), and invokes them for messages from the parent. Whatever a
 * handler logs during an invocation is returned with its result, because the worker reports
 * what a job did only in its log. The child also reports which module directories Node would
 * search, and whether an SDK import resolves, so the parent can check that nothing outside the
 * bundles was loadable.
 */
const DRIVER = `
import { existsSync } from 'node:fs';
import Module, { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const isolation = {
  existingModuleDirs: [...(require.resolve.paths('@aws-sdk/client-s3') ?? []), ...Module.globalPaths].filter((p) => existsSync(p)),
  sdkImport: await import('@aws-sdk/client-s3').then(() => 'loaded', (err) => err.code),
  nativeCrcRequire: (() => { try { require('@node-rs/crc32'); return 'loaded'; } catch (err) { return err.code; } })(),
  // What the bundle's CRC loader meets when it opens the arm64 addon it carries.
  bundledCrcAddon: (() => { try { process.dlopen({ exports: {} }, new URL('./api/${BUNDLED_CRC_ADDON_FILE}', import.meta.url).pathname); return 'loaded'; } catch (err) { return err.code; } })(),
};
const handlers = {
  api: (await import('./api/index.mjs')).handler,
  worker: (await import('./worker/index.mjs')).handler,
};
process.send({ ready: true, isolation });

const logged = [];
for (const name of ['log', 'info', 'warn', 'error']) {
  const original = console[name].bind(console);
  console[name] = (...args) => {
    logged.push(args.map((a) => (typeof a === 'string' ? a : a instanceof Error ? a.stack : JSON.stringify(a))).join(' '));
    original(...args);
  };
}
process.on('message', async ({ id, fn, event }) => {
  logged.length = 0;
  try {
    const result = await handlers[fn](event, { awsRequestId: id, functionName: fn, getRemainingTimeInMillis: () => 29_000 });
    process.send({ id, result, logs: [...logged] });
  } catch (err) {
    process.send({ id, thrown: String(err && err.stack ? err.stack : err), logs: [...logged] });
  }
});
`;

/** The synthesized asset directory of the function whose asset is named `displayName`. */
function assetDir(assemblyDir: string, artifactId: string, displayName: string): string {
  const assets = JSON.parse(readFileSync(join(assemblyDir, `${artifactId}.assets.json`), 'utf8')) as {
    files: Record<string, { displayName?: string; source: { path: string } }>;
  };
  const asset = Object.values(assets.files).find((f) => f.displayName === displayName);
  if (!asset) throw new Error(`no asset ${displayName} in the cloud assembly at ${assemblyDir}`);
  return join(assemblyDir, asset.source.path);
}

/** Every ancestor of `dir` (itself included) that holds a node_modules directory. */
function nodeModulesAbove(dir: string): string[] {
  const found: string[] = [];
  for (let d = dir; ; d = dirname(d)) {
    if (existsSync(join(d, 'node_modules'))) found.push(join(d, 'node_modules'));
    if (d === parse(d).root) return found;
  }
}

/** An API Gateway HTTP API (payload format 2.0) event, as the `$default` route delivers it. */
function httpEvent(method: string, path: string, opts: { query?: Record<string, string>; json?: unknown; rawJson?: string; binary?: Buffer } = {}): APIGatewayProxyEventV2 {
  const rawQueryString = new URLSearchParams(opts.query ?? {}).toString();
  const headers: Record<string, string> = { host: 'abc123.execute-api.us-east-1.amazonaws.com', 'user-agent': 'sledge-lambda-bundle-test' };
  let body: string | undefined;
  let isBase64Encoded = false;
  if (opts.binary) {
    // HTTP APIs base64-encode bodies of binary media types.
    headers['content-type'] = 'application/octet-stream';
    body = opts.binary.toString('base64');
    isBase64Encoded = true;
  } else if (opts.json !== undefined || opts.rawJson !== undefined) {
    headers['content-type'] = 'application/json';
    body = opts.rawJson ?? JSON.stringify(opts.json);
  }
  if (body !== undefined) headers['content-length'] = String(isBase64Encoded ? Buffer.from(body, 'base64').length : Buffer.byteLength(body));
  const now = new Date();
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: path,
    rawQueryString,
    headers,
    ...(rawQueryString ? { queryStringParameters: opts.query } : {}),
    requestContext: {
      accountId: '123456789012',
      apiId: 'abc123',
      domainName: 'abc123.execute-api.us-east-1.amazonaws.com',
      domainPrefix: 'abc123',
      http: { method, path, protocol: 'HTTP/1.1', sourceIp: '127.0.0.1', userAgent: 'sledge-lambda-bundle-test' },
      requestId: randomUUID(),
      routeKey: '$default',
      stage: '$default',
      time: now.toISOString(),
      timeEpoch: now.getTime(),
      // As API Gateway's IAM authorization fills it: the local operator.
      ...({ authorizer: iamAuthorizer() } as object),
    },
    ...(body !== undefined ? { body } : {}),
    isBase64Encoded,
  };
}

/** An SQS event source mapping's event carrying one message per body. */
function sqsEvent(bodies: unknown[]): SQSEvent {
  return {
    Records: bodies.map((b) => {
      const body = typeof b === 'string' ? b : JSON.stringify(b);
      const now = String(Date.now());
      return {
        messageId: randomUUID(),
        receiptHandle: `rh-${randomUUID()}`,
        body,
        attributes: { ApproximateReceiveCount: '1', SentTimestamp: now, SenderId: 'AIDAEXAMPLE', ApproximateFirstReceiveTimestamp: now },
        messageAttributes: {},
        md5OfBody: createHash('md5').update(body).digest('hex'),
        eventSource: 'aws:sqs',
        eventSourceARN: 'arn:aws:sqs:us-east-1:123456789012:GcQueue',
        awsRegion: 'us-east-1',
      };
    }),
  };
}

interface Invocation<R> {
  result?: R;
  thrown?: string;
  logs: string[];
}

let workDir: string | undefined;
let assemblyDir: string | undefined;
let child: ChildProcess | undefined;
let childOutput = '';
let isolation: { existingModuleDirs: string[]; sdkImport: string; nativeCrcRequire: string; bundledCrcAddon: string };
const pending = new Map<string, (m: Invocation<unknown>) => void>();

function invoke(fn: 'api', event: APIGatewayProxyEventV2): Promise<Invocation<APIGatewayProxyStructuredResultV2>>;
function invoke(fn: 'worker', event: SQSEvent): Promise<Invocation<SQSBatchResponse>>;
function invoke(fn: string, event: unknown): Promise<Invocation<unknown>> {
  const id = randomUUID();
  return new Promise((resolve) => {
    pending.set(id, resolve);
    child!.send({ id, fn, event });
  });
}

/** Invokes the API bundle; fails with the child's output if the handler threw. */
async function api(event: APIGatewayProxyEventV2): Promise<APIGatewayProxyStructuredResultV2 & { statusCode: number }> {
  const out = await invoke('api', event);
  expect(out.thrown, `the API handler threw:\n${out.thrown}\n${childOutput}`).toBeUndefined();
  return out.result as APIGatewayProxyStructuredResultV2 & { statusCode: number };
}

const jsonOf = (r: APIGatewayProxyStructuredResultV2) => JSON.parse(r.isBase64Encoded ? Buffer.from(r.body!, 'base64').toString('utf8') : r.body!);

beforeAll(async () => {
  // Synthesize as `cdk synth` does, bundling included (test/cdk/stack.test.ts checks the bundle's shape).
  assemblyDir = mkdtempSync(join(tmpdir(), 'sledge-lambda-synth-'));
  const app = new App({ outdir: assemblyDir, context: cdkJsonContext() });
  const stack = new SledgeStack(app, 'Sledge');
  const assembly = app.synth();

  // A fresh directory, with nothing above it that Node could load packages from.
  workDir = mkdtempSync(join(tmpdir(), 'sledge-lambda-run-'));
  expect(nodeModulesAbove(workDir), `node_modules above ${workDir} would let the bundles load what they lack`).toEqual([]);
  cpSync(assetDir(assembly.directory, stack.artifactId, 'Head/Code'), join(workDir, 'api'), { recursive: true });
  cpSync(assetDir(assembly.directory, stack.artifactId, 'Worker/Code'), join(workDir, 'worker'), { recursive: true });
  writeFileSync(join(workDir, 'driver.mjs'), DRIVER);

  // Lambda's environment: the function's variables from the stack (as the local stack resolved
  // them), credentials and a region, and no NODE_PATH. HOME points here so that Node's global
  // folders ($HOME/.node_modules, $HOME/.node_libraries) cannot exist either.
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: workDir,
    ...inject('sledgeEnv'),
    AWS_ENDPOINT_URL: inject('endpointUrl'),
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    AWS_REGION: 'us-east-1',
    // Set by Lambda; the handlers then log which CRC-32C and codec they loaded (lambdas/cold-start.ts).
    AWS_LAMBDA_FUNCTION_NAME: 'sledge-lambda-bundle-test',
  };
  child = fork(join(workDir, 'driver.mjs'), [], { cwd: workDir, env, execArgv: [], stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  child.stdout!.on('data', (d) => (childOutput += d));
  child.stderr!.on('data', (d) => (childOutput += d));
  isolation = await new Promise((resolve, reject) => {
    child!.on('message', (m: { ready?: boolean; isolation?: typeof isolation; id?: string } & Invocation<unknown>) => {
      if (m.ready) resolve(m.isolation!);
      else pending.get(m.id!)?.(m);
    });
    child!.on('exit', (code) => reject(new Error(`the bundle driver exited with ${code} before it was ready:\n${childOutput}`)));
  });
});

afterAll(() => {
  child?.kill();
  for (const dir of [workDir, assemblyDir]) if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the bundled Lambda functions, with no node_modules', () => {
  it('cannot load anything but the bundles and Node built-ins', () => {
    expect(readdirSync(workDir!).sort()).toEqual(['api', 'driver.mjs', 'worker']);
    expect(isolation.existingModuleDirs).toEqual([]);
    expect(isolation.sdkImport).toBe('ERR_MODULE_NOT_FOUND');
    // The `@node-rs/crc32` package is not shipped (only its arm64 addon, checked below).
    expect(isolation.nativeCrcRequire).toBe('MODULE_NOT_FOUND');
  });

  it('serves a volume through the head: create, write, read back byte-identical, and 4xx for bad requests', async () => {
    const rng = seeded('lambda bundle data');
    const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => rng.int(256)));

    const created = await api(httpEvent('POST', '/volumes', { json: { sizeBytes: 8 * MiB } }));
    expect(created.statusCode, created.body).toBe(201);
    const { volumeId } = jsonOf(created) as { volumeId: string };

    // 68 KiB from offset 4 KiB: more than one 64 KiB checksum granule, and not page-aligned.
    let lastWritten = Buffer.alloc(0);
    for (const round of [1, 2]) {
      const data = bytes(68 * 1024);
      lastWritten = data;
      const written = await api(httpEvent('PUT', `/volumes/${volumeId}/data`, { query: { offset: '4096' }, binary: data }));
      expect(written.statusCode, `write ${round}: ${written.body}`).toBe(200);
      const read = await api(httpEvent('GET', `/volumes/${volumeId}/data`, { query: { offset: '4096', length: String(data.length) } }));
      expect(read.statusCode, `read ${round}: ${read.body}`).toBe(200);
      expect(read.isBase64Encoded).toBe(true);
      expect(Buffer.from(read.body!, 'base64').equals(data), `read ${round} returns the bytes written`).toBe(true);
    }

    const bad = [
      httpEvent('PUT', `/volumes/${volumeId}/data`, { query: { offset: '100' }, binary: bytes(4096) }),
      httpEvent('GET', `/volumes/${volumeId}/data`, { query: { offset: '0' } }),
      httpEvent('POST', '/volumes', { rawJson: '{"sizeBytes": ' }),
    ];
    for (const event of bad) {
      const r = await api(event);
      expect(r.statusCode, `${event.requestContext.http.method} ${event.rawPath}?${event.rawQueryString}`).toBe(400);
      expect(jsonOf(r)).toMatchObject({ error: 'InvalidInputError', message: expect.any(String), retryable: false });
    }
    const missing = await api(httpEvent('GET', '/volumes/vol-0000000000000000'));
    expect(missing.statusCode).toBe(404);

    // The worker, on the same volume: a checkpoint is taken, GC deletes the segment the second
    // write superseded, and a poison message is reported as the one failure. (Checkpoint first:
    // a checkpoint walks the commit chain back to the first write when there is no earlier one.)
    const checkpoint = await invoke('worker', sqsEvent([{ type: 'checkpoint-volume', volumeId }]));
    expect(checkpoint.thrown, childOutput).toBeUndefined();
    expect(checkpoint.result, checkpoint.logs.join('\n')).toEqual({ batchItemFailures: [] });
    const listed = await api(httpEvent('GET', `/volumes/${volumeId}/checkpoints`));
    expect(listed.statusCode, listed.body).toBe(200);
    expect((jsonOf(listed) as { checkpoints: Array<{ readable: boolean }> }).checkpoints).toMatchObject([{ readable: true }]);

    const gc = await invoke('worker', sqsEvent([{ type: 'gc-volume', volumeId }]));
    expect(gc.result, gc.logs.join('\n')).toEqual({ batchItemFailures: [] });
    // The worker logs one JSON line per job; other lines (Node's warnings) are not its reports.
    const gcReport = gc.logs
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg?: string; result?: { segmentsDeleted?: number } })
      .find((l) => l.msg === 'gc');
    expect(gcReport?.result?.segmentsDeleted, gc.logs.join('\n')).toBe(1);
    const after = await api(httpEvent('GET', `/volumes/${volumeId}/data`, { query: { offset: '4096', length: String(lastWritten.length) } }));
    expect(Buffer.from(after.body!, 'base64').equals(lastWritten), 'the live data reads back after GC').toBe(true);

    const poison = sqsEvent([{ type: 'no-such-job' }]);
    const failed = await invoke('worker', poison);
    expect(failed.result).toEqual({ batchItemFailures: [{ itemIdentifier: poison.Records[0]!.messageId }] });
  });

  it('carries the arm64 CRC-32C addon in both functions, and falls back to the portable CRC where it does not load', async () => {
    for (const fn of ['api', 'worker']) {
      const files = readdirSync(join(workDir!, fn)).sort();
      expect(files, fn).toEqual([BUNDLED_CRC_ADDON_FILE, 'index.mjs', 'index.mjs.map'].sort());
      // An ELF shared object for AArch64 (e_machine 183), 64-bit little-endian.
      const elf = readFileSync(join(workDir!, fn, BUNDLED_CRC_ADDON_FILE));
      expect(elf.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
      expect({ elfClass: elf[4], dataEncoding: elf[5], machine: elf.readUInt16LE(18) }).toEqual({ elfClass: 2, dataEncoding: 1, machine: 183 });
    }

    // Where it loads (Lambda's arm64) the bundle uses it; elsewhere dlopen refuses it and the
    // bundle's loader falls back to the portable CRC. This machine shows which one applies: on
    // x64 (this project's machines) only the fallback can be seen.
    const loadsHere = process.platform === 'linux' && process.arch === 'arm64';
    expect(isolation.bundledCrcAddon).toBe(loadsHere ? 'loaded' : 'ERR_DLOPEN_FAILED');
    // What each bundle chose, from its cold-start log line (the line a deployment shows too).
    const coldStarts = childOutput
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === 'cold start');
    const expected = loadsHere ? { crc32c: 'native', crc32cSource: BUNDLED_CRC_ADDON_FILE } : { crc32c: 'portable', crc32cSource: null };
    expect(coldStarts.sort((a, b) => String(a.fn).localeCompare(String(b.fn))), childOutput).toEqual([
      { msg: 'cold start', fn: 'api', ...expected, erasure: 'portable', arch: process.arch },
      { msg: 'cold start', fn: 'worker', ...expected, erasure: 'portable', arch: process.arch },
    ]);
  });

  it('loads an addon that matches the machine from next to the bundle, and uses it', async () => {
    // The bundled loader's other branch, with this machine's build of the same addon standing
    // in for the arm64 one (no arm64 machine here): shared/data/crc32c.ts bundled alone, the
    // addon beside it under the bundled name, in a directory with no node_modules.
    const dir = mkdtempSync(join(tmpdir(), 'sledge-crc-bundle-'));
    try {
      expect(nodeModulesAbove(dir)).toEqual([]);
      await build({
        entryPoints: [join(fileURLToPath(new URL('../..', import.meta.url)), 'shared', 'data', 'crc32c.ts')],
        outfile: join(dir, 'index.mjs'),
        bundle: true,
        platform: 'node',
        format: 'esm',
        logLevel: 'silent',
      });
      const hostAddon = createRequire(import.meta.url).resolve(`@node-rs/crc32-${process.platform}-${process.arch}-gnu/crc32.${process.platform}-${process.arch}-gnu.node`);
      cpSync(hostAddon, join(dir, BUNDLED_CRC_ADDON_FILE));
      const probe =
        "const m = await import('./index.mjs'); console.log(JSON.stringify({ impl: m.crc32cImpl, source: m.crc32cNativeSource, check: m.crc32c(Buffer.from('123456789')) }));";
      const run = () => JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', probe], { cwd: dir, env: { PATH: process.env.PATH, HOME: dir }, encoding: 'utf8' }));
      expect(run()).toEqual({ impl: 'native', source: BUNDLED_CRC_ADDON_FILE, check: 0xe3069283 });
      // Without the addon the same bundle runs the portable CRC.
      rmSync(join(dir, BUNDLED_CRC_ADDON_FILE));
      expect(run()).toEqual({ impl: 'portable', source: null, check: 0xe3069283 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
