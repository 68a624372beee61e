/**
 * Write errors, evacuation and retirement (docs/evacuation.md), against the local endpoint.
 *
 * The workload and the evacuation worker run in this process through the shared functions
 * (writePieces, readData, handleWorkEvent), because fault rules are per process and the global
 * setup's control plane runs in another one. The worker's evacuation and GC queues are real
 * queues private to this file; the HTTP routes are tested against the control plane's own.
 */
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { ReceiveMessageCommand, DeleteMessageCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { s3, sqs } from '#shared/aws/clients.ts';
import { forEachLimited } from '#shared/core/async.ts';
import { config } from '#shared/core/config.ts';
import { getDrive } from '#shared/aws/drive-registry.ts';
import { beginRetirement, listDrives, WRITE_ERROR_RETIRE_THRESHOLD } from '#shared/maintenance/drives.ts';
import { type DriveRecord } from '#shared/core/drive-records.ts';
import { handleEvacuationMessage, retireDrive } from '#shared/maintenance/evacuation.ts';
import { clearFaults, faultStats, setFaults } from '#shared/aws/faults.ts';
import { getSegmentRecord } from '#shared/aws/pagemap/pages.ts';
import { getVolume } from '#shared/aws/pagemap/volumes.ts';
import { parseChunkKey } from '#shared/data/sleds.ts';
import { listVolumeChunks } from '#shared/aws/chunk-store.ts';
import { createVolume } from '#shared/control/volumes.ts';
import { readData } from '#shared/data/read.ts';
import { writePieces } from '#shared/data/write.ts';
import { handleWorkEvent } from '#shared/maintenance/worker.ts';
import { laneStreams, seeded } from '../unit/seed.ts';
import { http, resetDrives, testApi } from './helpers.ts';
import { driveQueue, privateQueue } from './work-queues.ts';

const MiB = 1024 * 1024;
/** The workload: 200 MiB of random writes (docs/evacuation.md, section 10). */
const WORKLOAD_BYTES = 200 * MiB;
/** Concurrent writers of the workload, each in its own 16 MiB of the volume. */
const LANES = 4;

const rng = seeded('evacuation');

const { api, apiUrl } = testApi({ sledgeEnv: true });

beforeAll(async () => {
  // This process's worker uses queues of its own (see the file comment) and short waits.
  const evac = await privateQueue('evac');
  const gc = await privateQueue('gc');
  process.env.SLEDGE_EVACUATION_QUEUE_URL = evac.url;
  process.env.SLEDGE_GC_QUEUE_URL = gc.url;
  process.env.SLEDGE_EVACUATION_SETTLE_MS = '1000';
  process.env.SLEDGE_EVACUATION_RECHECK_SECONDS = '1';
  process.env.SLEDGE_ORPHAN_GRACE_MS = '5000';
  process.env.SLEDGE_GC_EVERY_COMMITS = '0';
  await resetDrives();
});

afterAll(async () => {
  clearFaults();
  await resetDrives();
});

async function driveKeys(d: Pick<DriveRecord, 'sled' | 'drive'>): Promise<string[]> {
  const out = await s3().send(new ListObjectsV2Command({ Bucket: d.sled, Prefix: `${d.drive}/`, MaxKeys: 1000 }));
  return (out.Contents ?? []).map((o) => o.Key!);
}

/**
 * The segment chunks on a drive. Other objects that earlier test files leave on the sleds
 * (checkpoint chunks, dump objects) are not evacuated by design (docs/evacuation.md: they are
 * counted and left in place), so "empty" is judged on segment chunks.
 */
async function segmentKeys(d: Pick<DriveRecord, 'sled' | 'drive'>): Promise<string[]> {
  return (await driveKeys(d)).filter((k) => parseChunkKey(k) !== null);
}

/** Runs this process's evacuation worker until the drive is retired (bounded). */
async function evacuate(driveId: string, opts: { duplicate?: boolean } = {}) {
  return driveQueue(config().evacuationQueueUrl, handleWorkEvent, {
    duplicate: opts.duplicate ?? false,
    random: rng.next,
    roundsMax: 600,
    until: async () => (await getDrive(driveId))?.state === 'retired',
  });
}

/**
 * Random block-aligned writes of 4 KiB to 1 MiB into a model of the volume, `totalBytes` in all
 * over `concurrency` lanes; returns how many were acknowledged. The lanes' writes are one
 * writer's: they upload side by side and commit one after the other (shared/data/write-pipeline.ts).
 */
async function randomWrites(volumeId: string, model: Buffer, totalBytes: number, concurrency: number): Promise<number> {
  let acknowledged = 0;
  // Concurrent writes must not overlap, or the model could not know their order: each lane owns a
  // slice, its share of the bytes and its own stream from the seed (a replay does not depend on timing).
  const lane = Math.floor(model.length / concurrency / 4096) * 4096;
  await Promise.all(
    laneStreams(rng, concurrency).map(async (rng, l) => {
      for (let written = 0; written < totalBytes / concurrency; ) {
        const length = 4096 * (1 + rng.int(256));
        const offset = l * lane + 4096 * rng.int((lane - length) / 4096 + 1);
        const data = Buffer.alloc(length);
        for (let i = 0; i < length; i += 4) data.writeUInt32LE(rng.int(2 ** 32), i);
        written += length;
        const result = await writePieces(volumeId, [{ offset, length, data }]);
        expect(result.bytesWritten).toBe(length);
        data.copy(model, offset);
        acknowledged++;
      }
    }),
  );
  return acknowledged;
}

async function expectVolumeEquals(volumeId: string, model: Buffer, viaHttp: boolean): Promise<void> {
  for (let off = 0; off < model.length; off += 4 * MiB) {
    const len = Math.min(4 * MiB, model.length - off);
    const got = viaHttp ? await api.read(volumeId, off, len) : await readData(volumeId, off, len);
    expect(got.equals(model.subarray(off, off + len)), `bytes at ${off} differ`).toBe(true);
  }
}

/** Every segment of the volume keeps k+m chunks on distinct sleds, all of which exist; none on `driveId`. */
async function expectStripesWhole(volumeId: string, driveId?: string): Promise<{ chunks: number }> {
  const stored = new Set<string>();
  for await (const c of listVolumeChunks(volumeId, config().sledBuckets)) stored.add(`${c.bucket}/${c.key}`);
  const segments = new Set([...stored].map((k) => parseChunkKey(k.slice(k.indexOf('/') + 1))!.segmentId));
  let chunks = 0;
  // The records are read a few at a time: the checks are independent.
  await forEachLimited(segments, 8, async (seg) => {
    const rec = (await getSegmentRecord(volumeId, seg))!;
    expect(rec, `segment ${seg} has chunks but no record`).toBeTruthy();
    expect(new Set(rec.locations.map((l) => l.bucket)).size).toBe(rec.k + rec.m);
    for (const l of rec.locations) {
      expect(stored.has(`${l.bucket}/${l.key}`), `chunk ${l.bucket}/${l.key} missing`).toBe(true);
      if (driveId) expect(`${l.bucket}/${l.key.split('/')[0]}`).not.toBe(driveId);
      chunks++;
    }
  });
  // No strays: every stored chunk is one a record points at.
  expect(stored.size).toBe(chunks);
  return { chunks };
}

/**
 * A volume with `segments` writes of 256 KiB; returns it, its model, its busiest drive among
 * those that hold only segment chunks, and how many chunks that drive holds (of any volume).
 */
async function volumeWithData(segments: number): Promise<{ volumeId: string; model: Buffer; drive: DriveRecord; chunksOnDrive: number }> {
  const v = await createVolume({ sizeBytes: 16 * MiB });
  const model = Buffer.alloc(segments * 256 * 1024);
  // One writer's writes to distinct ranges, all at once: they upload side by side and commit in order.
  const writes = Array.from({ length: segments }, (_, i) => {
    const data = Buffer.alloc(256 * 1024, i + 1);
    data.writeUInt32LE(rng.int(2 ** 32), 0);
    return data;
  });
  await Promise.all(
    writes.map(async (data, i) => {
      await writePieces(v.volumeId, [{ offset: i * 256 * 1024, length: data.length, data }]);
      data.copy(model, i * 256 * 1024);
    }),
  );
  const count = new Map<string, number>();
  for await (const c of listVolumeChunks(v.volumeId, config().sledBuckets)) {
    const id = `${c.bucket}/${c.key.split('/')[0]}`;
    count.set(id, (count.get(id) ?? 0) + 1);
  }
  const drives = await listDrives();
  for (const [id, n] of [...count].sort((a, b) => b[1] - a[1])) {
    const d = drives.find((x) => x.driveId === id)!;
    // A drive holding only volume chunks, so that "empty" at the end means empty.
    const keys = await segmentKeys(d);
    if (n > 0) return { volumeId: v.volumeId, model, drive: d, chunksOnDrive: keys.length };
  }
  throw new Error('no drive holds segment chunks of the new volume');
}

describe('a drive that fails writes during a random-write workload', () => {
  it('acknowledges every write, reads every byte back, and ends retired and empty', async () => {
    const v = await createVolume({ sizeBytes: 64 * MiB });
    const model = Buffer.alloc(64 * MiB);
    // Phase 1: no faults, so the drive holds data to evacuate.
    let acks = await randomWrites(v.volumeId, model, WORKLOAD_BYTES / 3, LANES);
    const drives = await listDrives();
    const holds = await Promise.all(drives.map(async (d) => (await segmentKeys(d)).some((k) => k.includes(v.volumeId))));
    const candidates = drives.filter((_, i) => holds[i]);
    const bad = candidates[rng.int(candidates.length)]!;
    console.log(`failing drive ${bad.driveId}`);
    // Phase 2: every PUT to the drive fails (after the SDK's and Sledge's retries), a third of its GETs too.
    setFaults([
      { service: 's3', bucket: bad.sled, prefix: `${bad.drive}/`, ops: ['PutObject'], rate: 1 },
      { service: 's3', bucket: bad.sled, prefix: `${bad.drive}/`, ops: ['GetObject'], rate: 0.3 },
    ]);
    const worker = evacuate(bad.driveId);
    acks += await randomWrites(v.volumeId, model, (2 * WORKLOAD_BYTES) / 3, LANES);
    const report = await worker;
    console.log(`evacuation: ${JSON.stringify(report)}; faults fired ${faultStats().fired}`);
    const after = (await getDrive(bad.driveId))!;
    expect(after.state).toBe('retired');
    expect(after.writeErrorsTotal).toBeGreaterThanOrEqual(WRITE_ERROR_RETIRE_THRESHOLD);
    expect(after.evacuation!.chunksMoved).toBeGreaterThan(0);
    expect(await segmentKeys(bad)).toEqual([]);
    clearFaults();
    expect(acks).toBeGreaterThan(0);
    await expectVolumeEquals(v.volumeId, model, true);
    await expectStripesWhole(v.volumeId, bad.driveId);
    const shown = (await http(`${apiUrl}/drives/${bad.driveId}`)).json;
    expect(shown).toMatchObject({ driveId: bad.driveId, state: 'retired', evacuation: { state: 'complete', chunksRemaining: 0, fractionDone: 1 } });
  });
});

describe('evacuation is idempotent', () => {
  it('gives the same result with every message delivered twice, late and shuffled', async () => {
    const { volumeId, model, drive, chunksOnDrive } = await volumeWithData(24);
    await retireDrive(drive.driveId, 'test: duplicates');
    const report = await evacuate(drive.driveId, { duplicate: true });
    expect(report.duplicatesDelivered).toBeGreaterThanOrEqual(report.delivered / 2 - 1);
    const d = (await getDrive(drive.driveId))!;
    expect(d.state).toBe('retired');
    expect(await segmentKeys(drive)).toEqual([]);
    // Each chunk was moved (or, if it was garbage, dropped) by exactly one worker, however often its message came.
    expect(d.evacuation!.chunksMoved + d.evacuation!.chunksDropped).toBe(chunksOnDrive);
    expect(d.evacuation!.chunksMoved).toBeGreaterThan(0);
    await expectStripesWhole(volumeId, drive.driveId);
    await expectVolumeEquals(volumeId, model, false);
    await expectVolumeEquals(volumeId, model, true);
  });

  it('gives the same result when the worker dies between the copy and the record update, and between the update and the delete', async () => {
    const { volumeId, model, drive } = await volumeWithData(16);
    setFaults([
      // The record update never happens for the first moves (the SDK's 5 attempts each): a crash after the PUT.
      { service: 'dynamodb', table: config().segmentsTable, ops: ['TransactWriteItems'], rate: 1, count: 10 },
      // Then one is applied but its answer is lost.
      { service: 'dynamodb', table: config().segmentsTable, ops: ['TransactWriteItems'], rate: 1, count: 1, phase: 'after' },
      // And deleting old copies fails for a while: a crash after the update.
      { service: 's3', bucket: drive.sled, prefix: `${drive.drive}/`, ops: ['DeleteObject'], rate: 1, count: 9 },
    ]);
    await retireDrive(drive.driveId, 'test: crashes');
    const report = await evacuate(drive.driveId);
    const fired = faultStats().rules.map((r) => r.fired);
    clearFaults();
    expect(fired).toEqual([10, 1, 9]);
    expect(report.failed).toBeGreaterThan(0);
    expect((await getDrive(drive.driveId))!.state).toBe('retired');
    expect(await segmentKeys(drive)).toEqual([]);
    await expectStripesWhole(volumeId, drive.driveId);
    await expectVolumeEquals(volumeId, model, true);
  });

  it('rebuilds every chunk from the others when the drive cannot be read', async () => {
    const { volumeId, model, drive, chunksOnDrive } = await volumeWithData(16);
    setFaults([{ service: 's3', bucket: drive.sled, prefix: `${drive.drive}/`, ops: ['GetObject'], rate: 1 }]);
    await retireDrive(drive.driveId, 'test: unreadable');
    await evacuate(drive.driveId);
    clearFaults();
    const d = (await getDrive(drive.driveId))!;
    expect(d.state).toBe('retired');
    // Every chunk that was moved was rebuilt: none could be read.
    expect(d.evacuation!.chunksRebuilt).toBe(d.evacuation!.chunksMoved);
    expect(d.evacuation!.chunksMoved + d.evacuation!.chunksDropped).toBe(chunksOnDrive);
    expect(await segmentKeys(drive)).toEqual([]);
    await expectStripesWhole(volumeId, drive.driveId);
    await expectVolumeEquals(volumeId, model, true);
  });
});

describe('the drive and queue routes', () => {
  it('retires a drive over HTTP and shows the evacuation finishing', async () => {
    const v = await api.createVolume({ sizeBytes: 8 * MiB });
    const model = Buffer.alloc(4 * MiB);
    for (let i = 0; i < 8; i++) {
      const data = Buffer.alloc(512 * 1024, 0x40 + i);
      await api.write(v.volumeId, i * data.length, data);
      data.copy(model, i * data.length);
    }
    const chunk = (await listVolumeChunks(v.volumeId, config().sledBuckets).next()).value!;
    const [sled, drive] = [chunk.bucket, chunk.key.split('/')[0]!];
    expect((await http(`${apiUrl}/drives/${sled}/d99`)).status).toBe(404);
    expect((await http(`${apiUrl}/drives/${sled}/${drive}/retire`, { method: 'POST', body: '{"why":1}', headers: { 'content-type': 'application/json' } })).status).toBe(400);
    const r = await http(`${apiUrl}/drives/${sled}/${drive}/retire`, { method: 'POST', body: '{"reason":"test"}', headers: { 'content-type': 'application/json' } });
    expect(r.status, r.body.toString()).toBe(202);
    expect(r.json).toMatchObject({ state: 'retiring', evacuation: { state: 'running', reason: 'test' } });
    let shown: any;
    for (let i = 0; i < 480; i++) {
      shown = (await http(`${apiUrl}/drives/${sled}/${drive}`)).json;
      if (shown.state === 'retired') break;
      await new Promise((res) => setTimeout(res, 250));
    }
    expect(shown).toMatchObject({ state: 'retired', evacuation: { state: 'complete', chunksRemaining: 0, bytesRemaining: 0 } });
    expect(shown.evacuation.chunksMoved).toBeGreaterThan(0);
    const list = (await http(`${apiUrl}/drives`)).json.drives;
    expect(list.find((d: { driveId: string }) => d.driveId === `${sled}/${drive}`).state).toBe('retired');
    for (let off = 0; off < model.length; off += 1024 * 1024) expect((await api.read(v.volumeId, off, 1024 * 1024)).equals(model.subarray(off, off + 1024 * 1024))).toBe(true);

    // Back in service: active, no evacuation, no counts; new writes may land on it again.
    expect((await http(`${apiUrl}/drives/${sled}/d99/reactivate`, { method: 'POST' })).status).toBe(404);
    const bad = await http(`${apiUrl}/drives/${sled}/${drive}/reactivate`, { method: 'POST', body: '{"now":true}', headers: { 'content-type': 'application/json' } });
    expect([bad.status, bad.json?.error]).toEqual([400, 'InvalidInputError']);
    expect((await getDrive(`${sled}/${drive}`))!.state, 'a refused reactivate changes nothing').toBe('retired');
    const back = await http(`${apiUrl}/drives/${sled}/${drive}/reactivate`, { method: 'POST' });
    expect(back.status, back.body.toString()).toBe(200);
    expect(back.json).toMatchObject({ driveId: `${sled}/${drive}`, state: 'active', writeErrors: 0 });
    expect(back.json.evacuation).toBeUndefined();
    expect((await getDrive(`${sled}/${drive}`))!.state).toBe('active');
  });

  it('stops a running evacuation when the drive is reactivated: its late messages are dropped, every byte stays readable', async () => {
    const v = await api.createVolume({ sizeBytes: 8 * MiB });
    const data = Buffer.alloc(2 * MiB, 0x5a);
    await api.write(v.volumeId, 0, data);
    const chunk = (await listVolumeChunks(v.volumeId, config().sledBuckets).next()).value!;
    const id = `${chunk.bucket}/${chunk.key.split('/')[0]!}`;
    // Retired here, evacuated by nobody yet: this process's worker runs only after the reactivate.
    await beginRetirement(id, 'test: reactivate');
    const run = (await getDrive(id))!.evacuation!.run;
    const back = await http(`${apiUrl}/drives/${id}/reactivate`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(back.status, back.body.toString()).toBe(200);
    expect(back.json).toMatchObject({ state: 'active' });
    // A message of the stopped run changes nothing.
    expect(await handleEvacuationMessage({ type: 'evacuate-drive', driveId: id, run, step: 0, cursor: '' })).toBe('stale');
    expect((await getDrive(id))!).toMatchObject({ state: 'active' });
    expect((await api.read(v.volumeId, 0, data.length)).equals(data)).toBe(true);
  });

  it('sends a poison message to the dead-letter queue after 5 receives, shows it, and redrives it', async () => {
    const env = inject('sledgeEnv');
    const gcQueue = env.SLEDGE_GC_QUEUE_URL!;
    const marker = `poison-${rng.seed}-${Date.now()}`;
    await sqs().send(new SendMessageCommand({ QueueUrl: gcQueue, MessageBody: JSON.stringify({ type: 'no-such-work', marker }) }));
    const findDead = async () => {
      for (let i = 0; i < 360; i++) {
        const view = (await http(`${apiUrl}/queues/dead-letters`)).json;
        const gc = view.queues.find((q: { queue: string }) => q.queue === 'gc');
        const m = gc.messages.find((x: { body: string }) => x.body.includes(marker));
        if (m) return m;
        await new Promise((res) => setTimeout(res, 250));
      }
      throw new Error('the poison message never reached the dead-letter queue');
    };
    const dead = await findDead();
    expect(dead.receiveCount).toBeGreaterThanOrEqual(5);
    // With the reason the worker failed on it (docs/backup.md, "Failure notes").
    expect(dead.reason).toMatch(/^UnknownWorkMessageError: /);
    expect(dead.failedAttempts).toBe(5);
    // Peeking deletes nothing.
    expect((await http(`${apiUrl}/queues/dead-letters`)).json.queues.find((q: { queue: string }) => q.queue === 'gc').messages.some((x: { messageId: string }) => x.messageId === dead.messageId)).toBe(true);
    expect((await http(`${apiUrl}/queues/dead-letters/redrive`, { method: 'POST', body: '{"queue":"nope"}', headers: { 'content-type': 'application/json' } })).status).toBe(400);
    const moved = await http(`${apiUrl}/queues/dead-letters/redrive`, { method: 'POST', body: JSON.stringify({ queue: 'gc', messageIds: [dead.messageId] }), headers: { 'content-type': 'application/json' } });
    expect(moved.status, moved.body.toString()).toBe(200);
    expect(moved.json.moved.gc).toBe(1);
    // Back on the source queue it is worked on again, fails 5 more times, and returns as a new message.
    const again = await findDead();
    expect(again.messageId).not.toBe(dead.messageId);
    // Clean up: take it off the dead-letter queue.
    for (let i = 0; i < 10; i++) {
      const out = await sqs().send(new ReceiveMessageCommand({ QueueUrl: env.SLEDGE_GC_DEAD_LETTER_QUEUE_URL!, MaxNumberOfMessages: 10, WaitTimeSeconds: 0 }));
      for (const m of out.Messages ?? []) if (m.Body?.includes(marker)) await sqs().send(new DeleteMessageCommand({ QueueUrl: env.SLEDGE_GC_DEAD_LETTER_QUEUE_URL!, ReceiptHandle: m.ReceiptHandle! }));
      if ((out.Messages ?? []).length === 0) break;
    }
  });
});

it('keeps the volume readable while a chunk moves under a cached segment record', async () => {
  const { volumeId, model, drive } = await volumeWithData(4);
  const dataChunksMoving = (await driveKeys(drive)).filter((k) => k.includes(volumeId) && parseChunkKey(k)!.chunkIndex < 4).length;
  // Reads in this process cache the segment records; then the chunks move away.
  await expectVolumeEquals(volumeId, model, false);
  await retireDrive(drive.driveId, 'test: cached reader');
  await evacuate(drive.driveId);
  const report = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0, missingChunks: 0 };
  for (let off = 0; off < model.length; off += 256 * 1024) {
    expect((await readData(volumeId, off, 256 * 1024, report)).equals(model.subarray(off, off + 256 * 1024))).toBe(true);
  }
  // The reads that found a chunk gone re-read the record and read the new copy: nothing was rebuilt.
  expect(report.rebuiltGranules).toBe(0);
  if (dataChunksMoving > 0) expect(report.missingChunks).toBeGreaterThan(0);
  expect((await getVolume(volumeId))!.state).toBe('active');
});
