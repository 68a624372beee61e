/**
 * The head's chunk PUTs and ranged GETs without the SDK (shared/aws/s3-direct.ts), against the
 * local endpoint over HTTP: the bytes, S3's answers (404, 412, a wrong checksum) as the same
 * errors the SDK gave, one count per attempt, and the SDK's retries under injected 5xx,
 * throttling, hangs and lost responses. (S3's refusal of a body that does not match its
 * CRC32C is not tested: the local endpoint does not check it, docs/aws-fidelity.md.)
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { CreateBucketCommand, GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { getChunkRange, isPreconditionFailed, putChunk } from '#shared/aws/chunk-store.ts';
import { requestCounts, resetRequestCounts, s3, setClients } from '#shared/aws/clients.ts';
import { sdkUnavailableReason, toSledgeError } from '#shared/aws/errors.ts';
import { clearFaults, setFaults } from '#shared/aws/faults.ts';
import { S3_DIRECT_MAX_ATTEMPTS } from '#shared/aws/s3-direct.ts';
import { UnavailableError } from '#shared/core/errors.ts';
import { crc32c } from '#shared/data/crc32c.ts';
import { testApi } from './helpers.ts';

testApi({ sledgeEnv: true });

const bucket = `s3-direct-${randomBytes(4).toString('hex')}`;
let n = 0;
const fresh = () => ({ bucket, key: `d03/vol-direct/seg-${n++}/c1` });

beforeAll(async () => {
  await s3().send(new CreateBucketCommand({ Bucket: bucket }));
});

afterEach(() => clearFaults());

async function stored(loc: { bucket: string; key: string }): Promise<Buffer> {
  const out = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
  return Buffer.from(await out.Body!.transformToByteArray());
}

/** Runs `work` and returns the attempts it sent, by `S3:Operation`. */
async function attempts(work: () => Promise<unknown>): Promise<Record<string, number>> {
  resetRequestCounts();
  await work();
  return requestCounts().requests;
}

async function rejection(work: () => Promise<unknown>): Promise<Error & { $metadata?: { httpStatusCode?: number; attempts?: number } }> {
  try {
    await work();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the request to fail');
}

describe('chunk requests without the SDK', () => {
  it('write a chunk and read any range of it back, one request each', async () => {
    const loc = fresh();
    const body = randomBytes(1024 * 1024 + 5);
    expect(await attempts(() => putChunk(loc, body, crc32c(body)))).toEqual({ 'S3:PutObject': 1 });
    expect((await stored(loc)).equals(body)).toBe(true);
    for (const [start, end] of [
      [0, body.length],
      [4096, 65_536 + 7],
      [body.length - 1, body.length],
    ] as const) {
      const into = Buffer.alloc(end - start);
      let got: Buffer | null = null;
      expect(await attempts(async () => (got = await getChunkRange(loc, start, end, into)))).toEqual({ 'S3:GetObject': 1 });
      expect(got, 'the bytes land in the buffer given').toBe(into);
      expect(into.equals(body.subarray(start, end))).toBe(true);
      const own = await getChunkRange(loc, start, end);
      expect(own!.equals(body.subarray(start, end))).toBe(true);
    }
    // A range past the end is answered with what there is: the shorter view.
    const tail = await getChunkRange(loc, body.length - 10, body.length + 100);
    expect(tail!.equals(body.subarray(body.length - 10))).toBe(true);
  });

  it('read a missing chunk as null, and refuse an existing key without retrying', async () => {
    expect(await attempts(async () => expect(await getChunkRange(fresh(), 0, 100)).toBeNull())).toEqual({ 'S3:GetObject': 1 });

    const loc = fresh();
    const body = randomBytes(20_000);
    await putChunk(loc, body, crc32c(body));
    let again: Error & { $metadata?: { httpStatusCode?: number; attempts?: number } } = new Error();
    expect(await attempts(async () => (again = await rejection(() => putChunk(loc, randomBytes(20_000), 7))))).toEqual({ 'S3:PutObject': 1 });
    expect(again.name).toBe('PreconditionFailed');
    expect(again.$metadata?.httpStatusCode).toBe(412);
    expect(isPreconditionFailed(again)).toBe(true);
    expect(sdkUnavailableReason(again), 'a refusal is not "unavailable now"').toBeNull();
    expect((await stored(loc)).equals(body), 'the chunk is unchanged').toBe(true);
  });

  it('retry 5xx, throttling and hangs as the SDK did, each attempt counted, and give up after the last', async () => {
    const body = randomBytes(64 * 1024);
    const crc = crc32c(body);

    for (const fault of [
      { mode: 'error' as const, status: 500 as const },
      { mode: 'error' as const, status: 503 as const },
      { mode: 'throttle' as const },
      { mode: 'hang' as const, hangMs: 30 },
    ]) {
      const loc = fresh();
      setFaults([{ service: 's3', bucket, ops: ['PutObject'], count: S3_DIRECT_MAX_ATTEMPTS - 1, ...fault }]);
      expect(await attempts(() => putChunk(loc, body, crc)), JSON.stringify(fault)).toEqual({ 'S3:PutObject': S3_DIRECT_MAX_ATTEMPTS });
      expect((await stored(loc)).equals(body)).toBe(true);

      setFaults([{ service: 's3', bucket, ops: ['GetObject'], count: S3_DIRECT_MAX_ATTEMPTS - 1, ...fault }]);
      let got: Buffer | null = null;
      expect(await attempts(async () => (got = await getChunkRange(loc, 100, 200)))).toEqual({ 'S3:GetObject': S3_DIRECT_MAX_ATTEMPTS });
      expect(got!.equals(body.subarray(100, 200))).toBe(true);
    }

    setFaults([{ service: 's3', bucket, ops: ['GetObject'], status: 503 }]);
    const loc = fresh();
    await putChunk(loc, body, crc);
    let last: Error & { $metadata?: { httpStatusCode?: number; attempts?: number } } = new Error();
    expect(await attempts(async () => (last = await rejection(() => getChunkRange(loc, 0, 10))))).toEqual({ 'S3:GetObject': S3_DIRECT_MAX_ATTEMPTS });
    expect(last.$metadata).toEqual({ httpStatusCode: 503, attempts: S3_DIRECT_MAX_ATTEMPTS });
    expect(sdkUnavailableReason(last)).toBe('server error');
  });

  it('answer a PUT whose response was lost with 412 on its retry, the chunk stored once and whole', async () => {
    const loc = fresh();
    const body = randomBytes(300_000);
    setFaults([{ service: 's3', bucket, ops: ['PutObject'], phase: 'after', count: 1 }]);
    let lost: Error = new Error();
    expect(await attempts(async () => (lost = await rejection(() => putChunk(loc, body, crc32c(body)))))).toEqual({ 'S3:PutObject': 2 });
    // The upload (shared/data/upload.ts) then asks whether the stored chunk is this one.
    expect(isPreconditionFailed(lost)).toBe(true);
    expect((await stored(loc)).equals(body)).toBe(true);
  });

  it('treat an endpoint that refuses or drops connections as unavailable: retried, then a 503-kind error', async () => {
    const original = s3();
    // A port nothing listens on, and a server that takes each connection and closes it at once.
    const dropper: Server = createServer((sock) => sock.destroy());
    await new Promise<void>((resolve) => dropper.listen(0, '127.0.0.1', resolve));
    const closed: Server = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedPort = (closed.address() as { port: number }).port;
    await new Promise((resolve) => closed.close(resolve));
    try {
      for (const port of [closedPort, (dropper.address() as { port: number }).port]) {
        setClients({ s3: new S3Client({ endpoint: `http://127.0.0.1:${port}`, forcePathStyle: true, region: original.config.region, credentials: original.config.credentials }) });
        const body = randomBytes(1000);
        for (const work of [() => putChunk(fresh(), body, crc32c(body)), () => getChunkRange(fresh(), 0, 10)]) {
          let err: Error = new Error();
          const counts = await attempts(async () => (err = await rejection(work)));
          expect(Object.values(counts), `port ${port}: ${err.message}`).toEqual([S3_DIRECT_MAX_ATTEMPTS]);
          expect(err.name).toBe('NetworkingError');
          expect(sdkUnavailableReason(err)).toBe('timeout');
          expect(toSledgeError(err)).toBeInstanceOf(UnavailableError);
        }
      }
    } finally {
      setClients({ s3: original });
      await new Promise((resolve) => dropper.close(resolve));
    }
    // The real endpoint again.
    const loc = fresh();
    const body = randomBytes(100);
    await putChunk(loc, body, crc32c(body));
    expect((await getChunkRange(loc, 0, 100))!.equals(body)).toBe(true);
  });
});
