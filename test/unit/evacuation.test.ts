import { S3Client, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterEach, describe, expect, it } from 'vitest';
import { evacuationProgress } from '#shared/maintenance/evacuation-progress.ts';
import { newEvacuation, writableFrom } from '#shared/maintenance/drives.ts';
import { type DriveRecord } from '#shared/core/drive-records.ts';
import { UnavailableError } from '#shared/core/errors.ts';
import { addFaultMiddleware, clearFaults, faultStats, matchFault, parseFaultRules, setFaults } from '#shared/aws/faults.ts';
import { allDrivesWritable, evacuationTarget, placeStripe, replacementLocation, sledsDistinct } from '#shared/data/placement.ts';
import { placeChunks, type ChunkLocation } from '#shared/data/sleds.ts';
import { seeded } from './seed.ts';

const sleds = Array.from({ length: 8 }, (_, i) => `sled-${i}`);

describe('placement', () => {
  it('matches the registry-free placement when every drive is active', () => {
    const rng = seeded('placement');
    for (let i = 0; i < 200; i++) {
      const seg = `${String(i + 1).padStart(12, '0')}-${rng.int(2 ** 31).toString(16).padStart(8, '0')}`;
      expect(placeStripe('vol-1', seg, 6, sleds, allDrivesWritable(sleds))).toEqual(placeChunks('vol-1', seg, 6, sleds));
    }
  });

  it('never places on a drive that is not active, and skips sleds with none', () => {
    const writable = new Map(allDrivesWritable(sleds));
    writable.set('sled-2', ['d01']);
    writable.set('sled-5', []);
    for (let i = 0; i < 300; i++) {
      const stripe = placeStripe('vol-2', `seg-${i}`, 6, sleds, writable);
      expect(sledsDistinct(stripe)).toBe(true);
      expect(stripe.some((l) => l.bucket === 'sled-5')).toBe(false);
      for (const l of stripe.filter((x) => x.bucket === 'sled-2')) expect(l.key.startsWith('d01/')).toBe(true);
    }
  });

  it('fails with 503 rather than share a sled when too few sleds have an active drive', () => {
    const writable = new Map(sleds.map((s, i) => [s, i < 5 ? ['d00'] : []]));
    expect(() => placeStripe('vol-3', 'seg', 6, sleds, writable)).toThrow(UnavailableError);
  });

  it('replaces a failed chunk on a sled the stripe does not use, and on none when all are used or tried', () => {
    const writable = allDrivesWritable(sleds);
    const stripe = placeStripe('vol-4', 'seg-a', 6, sleds, writable);
    const used = new Set(stripe.map((l) => l.bucket));
    const tried = new Set([stripe[2]!.bucket]);
    const r = replacementLocation('vol-4', 'seg-a', 2, stripe, tried, sleds, writable)!;
    expect(used.has(r.bucket)).toBe(false);
    expect(r.key.endsWith('/vol-4/seg-a.2')).toBe(true);
    const free = sleds.filter((s) => !used.has(s));
    expect(replacementLocation('vol-4', 'seg-a', 2, stripe, new Set([...tried, ...free]), sleds, writable)).toBeNull();
    // A sled the stripe uses is never offered, even if it has other active drives.
    const six = new Map(sleds.map((s) => [s, used.has(s) ? ['d00', 'd01', 'd02', 'd03'] : []]));
    expect(replacementLocation('vol-4', 'seg-a', 2, stripe, tried, sleds, six)).toBeNull();
  });

  it('moves an evacuated chunk to a free sled first, then to another drive of its own sled, never onto the stripe', () => {
    const writable = allDrivesWritable(sleds);
    const stripe = placeStripe('vol-5', 'seg-b', 6, sleds, writable);
    const used = new Set(stripe.map((l) => l.bucket));
    const t = evacuationTarget('vol-5', 'seg-b', 1, stripe, sleds, writable)!;
    expect(used.has(t.bucket)).toBe(false);
    // Deterministic: the same chunk picks the same target while the registry is the same.
    expect(evacuationTarget('vol-5', 'seg-b', 1, stripe, sleds, writable)).toEqual(t);
    const onlyStripe = new Map(sleds.map((s) => [s, used.has(s) ? ['d00', 'd01', 'd02', 'd03'] : []]));
    const same = evacuationTarget('vol-5', 'seg-b', 1, stripe, sleds, onlyStripe)!;
    expect(same.bucket).toBe(stripe[1]!.bucket);
    expect(same.key.split('/')[0]).not.toBe(stripe[1]!.key.split('/')[0]);
    const moved: ChunkLocation[] = stripe.map((l, i) => (i === 1 ? same : l));
    expect(sledsDistinct(moved)).toBe(true);
    const none = new Map(sleds.map((s) => [s, s === stripe[1]!.bucket ? [stripe[1]!.key.split('/')[0]!] : used.has(s) ? ['d00'] : []]));
    expect(evacuationTarget('vol-5', 'seg-b', 1, stripe, sleds, none)).toBeNull();
  });

  it('builds the writable map from active drives only', () => {
    const d = (sled: string, drive: string, state: DriveRecord['state']): DriveRecord => ({
      driveId: `${sled}/${drive}`, sled, sledIndex: 0, drive, state, capacityBytes: 1, usedBytes: 0, serviceLoad: 0, dumpPrepared: false, dumps: {},
    });
    const w = writableFrom([d('a', 'd01', 'active'), d('a', 'd00', 'active'), d('a', 'd02', 'retiring'), d('b', 'd00', 'spare'), d('c', 'd03', 'failed')]);
    expect([...w]).toEqual([['a', ['d00', 'd01']]]);
  });
});

describe('evacuation progress', () => {
  const start = 1_700_000_000_000;

  it('computes remaining, rate and ETA from the counters', () => {
    const e = { ...newEvacuation('test', false, start), chunksTotal: 100, bytesTotal: 100 * 1000, chunksMoved: 40, bytesMoved: 40_000, chunksDropped: 10, bytesDropped: 10_000, lastProgressAtMs: start + 10_000 };
    const p = evacuationProgress(e, 'retiring', start + 10_000);
    expect(p).toMatchObject({ state: 'running', chunksRemaining: 50, bytesRemaining: 50_000, bytesPerSecond: 4000, chunksPerSecond: 4, fractionDone: 0.5 });
    // 50 KB left at 5 KB/s taken off the drive (moved and dropped).
    expect(p.etaSeconds).toBe(10);
  });

  it('never shows negative remaining, shows no ETA before progress, and zero once retired', () => {
    const fresh = newEvacuation('test', false, start);
    expect(evacuationProgress(fresh, 'retiring', start + 5000)).toMatchObject({ chunksRemaining: 0, etaSeconds: null, fractionDone: 0, bytesPerSecond: 0 });
    const over = { ...fresh, chunksTotal: 10, bytesTotal: 10, chunksMoved: 12, bytesMoved: 12, lastProgressAtMs: start + 1000 };
    expect(evacuationProgress(over, 'retiring', start + 1000)).toMatchObject({ chunksTotal: 12, chunksRemaining: 0, fractionDone: 1 });
    const done = { ...fresh, chunksTotal: 10, bytesTotal: 10, chunksMoved: 3, bytesMoved: 3, completedAtMs: start + 3000 };
    expect(evacuationProgress(done, 'retired', start + 99_000)).toMatchObject({ state: 'complete', chunksRemaining: 0, bytesRemaining: 0, etaSeconds: 0, fractionDone: 1, bytesPerSecond: 1 });
  });
});

describe('fault injection', () => {
  afterEach(() => clearFaults());

  it('matches by service, bucket, drive prefix, table, operation, rate and count', () => {
    setFaults([
      { service: 's3', bucket: 'sled-1', prefix: 'd02/', ops: ['PutObject'], count: 2 },
      { service: 'dynamodb', table: 'Segments', ops: ['TransactWriteItems'], rate: 0.5 },
    ]);
    expect(matchFault('s3', 'PutObject', { Bucket: 'sled-1', Key: 'd02/vol-1/x.0' })).toBeDefined();
    expect(matchFault('s3', 'PutObject', { Bucket: 'sled-1', Key: 'd03/vol-1/x.0' })).toBeUndefined();
    expect(matchFault('s3', 'GetObject', { Bucket: 'sled-1', Key: 'd02/vol-1/x.0' })).toBeUndefined();
    expect(matchFault('s3', 'PutObject', { Bucket: 'sled-2', Key: 'd02/vol-1/x.0' })).toBeUndefined();
    expect(matchFault('s3', 'PutObject', { Bucket: 'sled-1', Key: 'd02/vol-1/x.1' })).toBeDefined();
    expect(matchFault('s3', 'PutObject', { Bucket: 'sled-1', Key: 'd02/vol-1/x.2' })).toBeUndefined(); // spent
    const tx = { TransactItems: [{ Update: { TableName: 'Segments' } }, { ConditionCheck: { TableName: 'Drives' } }] };
    expect(matchFault('dynamodb', 'TransactWriteItems', tx, () => 0.4)).toBeDefined();
    expect(matchFault('dynamodb', 'TransactWriteItems', tx, () => 0.6)).toBeUndefined();
  });

  it('refuses malformed rules with a message naming the field', () => {
    expect(() => parseFaultRules({})).toThrow(/array/);
    expect(() => parseFaultRules([{ service: 'ec2' }])).toThrow(/service/);
    expect(() => parseFaultRules([{ service: 's3', rate: 2 }])).toThrow(/rate/);
    expect(() => parseFaultRules([{ service: 's3', mode: 'explode' }])).toThrow(/mode/);
  });

  it('fails a request before it leaves the process, with an S3-shaped 5xx the SDK retries', async () => {
    // Nothing listens on port 9: had a request been sent, the error would be a connection error.
    const client = new S3Client({ endpoint: 'http://127.0.0.1:9', region: 'us-east-1', forcePathStyle: true, maxAttempts: 3, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } });
    addFaultMiddleware(client.middlewareStack, 's3');
    setFaults([{ service: 's3', bucket: 'sled-0', prefix: 'd01/', ops: ['PutObject'], status: 503 }]);
    const err = await client.send(new PutObjectCommand({ Bucket: 'sled-0', Key: 'd01/k', Body: 'x' })).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'ServiceUnavailable', $fault: 'server', $metadata: { httpStatusCode: 503 } });
    expect(faultStats().rules[0]!.fired).toBe(3); // the SDK's three attempts, each judged
    setFaults([{ service: 's3', ops: ['PutObject'], mode: 'hang', hangMs: 20 }]);
    const hung = await client.send(new PutObjectCommand({ Bucket: 'sled-0', Key: 'd01/k', Body: 'x' })).catch((e: unknown) => e);
    expect(hung).toMatchObject({ name: 'TimeoutError' });
  });
});
