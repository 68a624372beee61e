/**
 * Garbage collection and compaction (docs/evacuation.md, section 6), against the local endpoint.
 * The GC worker runs in this process from a GC queue private to this file (see
 * work-queues.ts), so its continuations come back here and not to the global setup's poller.
 */
import { randomBytes } from 'node:crypto';
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import { beforeAll, describe, expect, it } from 'vitest';
import { sqs } from '#shared/aws/clients.ts';
import { config } from '#shared/core/config.ts';
import { collectVolume, queueGc, registerRetentionProvider } from '#shared/maintenance/gc.ts';
import { foldVolume } from '#shared/maintenance/fold.ts';
import { deleteItems, listPages, listSegmentRecords, listSegmentTombstones, getSegmentRecord } from '#shared/aws/pagemap/pages.ts';
import { getVolume } from '#shared/aws/pagemap/volumes.ts';
import { segmentKey } from '#shared/aws/pagemap/items.ts';
import { segmentRef } from '#shared/core/records.ts';
import { parseChunkKey } from '#shared/data/sleds.ts';
import { listVolumeChunks } from '#shared/aws/chunk-store.ts';
import { completeWrite, prepareWrite, trimRange, writePieces } from '#shared/data/write.ts';
import { createVolume } from '#shared/control/volumes.ts';
import { readData } from '#shared/data/read.ts';
import { applyReservationBody } from '#shared/control/reservation-commands.ts';
import { handleWorkEvent } from '#shared/maintenance/worker.ts';
import { laneStreams, seeded } from '../unit/seed.ts';
import { http, testApi } from './helpers.ts';
import { driveQueue, privateQueue } from './work-queues.ts';

const MiB = 1024 * 1024;
/** Concurrent writers of the overwrite-heavy workload, each in its own 2 MiB of the volume. */
const LANES = 4;
const rng = seeded('gc');
const { api, apiUrl } = testApi({ sledgeEnv: true });

beforeAll(async () => {
  const gc = await privateQueue('gc');
  process.env.SLEDGE_GC_QUEUE_URL = gc.url;
  // Long enough that a GC pass (which folds and checkpoints first) on a loaded machine ends before a just-uploaded chunk is past it.
  process.env.SLEDGE_ORPHAN_GRACE_MS = '10000';
  process.env.SLEDGE_GC_EVERY_COMMITS = '64';
});

/** Runs this process's GC worker until its queue has been seen empty twice in a row (bounded). */
async function runGc(duplicate: boolean): Promise<void> {
  let empty = 0;
  const report = await driveQueue(config().gcQueueUrl, handleWorkEvent, {
    duplicate,
    random: rng.next,
    roundsMax: 300,
    until: async () => {
      const a = await sqs().send(new GetQueueAttributesCommand({ QueueUrl: config().gcQueueUrl, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] }));
      const n = Number(a.Attributes?.ApproximateNumberOfMessages ?? 0) + Number(a.Attributes?.ApproximateNumberOfMessagesNotVisible ?? 0);
      empty = n === 0 ? empty + 1 : 0;
      return empty >= 2;
    },
  });
  console.log(`gc queue: ${JSON.stringify(report)}`);
}

interface Stored {
  chunks: Map<string, number>;
  bytes: number;
}

async function stored(volumeId: string): Promise<Stored> {
  const chunks = new Map<string, number>();
  let bytes = 0;
  for await (const c of listVolumeChunks(volumeId, config().sledBuckets)) {
    chunks.set(`${c.bucket}/${c.key}`, c.sizeBytes);
    bytes += c.sizeBytes;
  }
  return { chunks, bytes };
}

/** Every page extent resolves to a segment record whose every chunk exists; returns live bytes. */
async function expectExtentsResolve(volumeId: string): Promise<number> {
  const v = (await getVolume(volumeId))!;
  const s = await stored(volumeId);
  let liveBlocks = 0;
  const checked = new Set<string>();
  for await (const p of listPages(v)) {
    for (const e of p.extents) {
      if (e.seg === null) continue;
      liveBlocks += e.count;
      if (checked.has(e.seg)) continue;
      checked.add(e.seg);
      const [vol, seg] = [e.seg.slice(0, e.seg.indexOf('/')), e.seg.slice(e.seg.indexOf('/') + 1)];
      const rec = await getSegmentRecord(vol, seg);
      expect(rec, `page ${p.page} references ${e.seg}, which has no record`).toBeTruthy();
      for (const l of rec!.locations) expect(s.chunks.has(`${l.bucket}/${l.key}`), `chunk ${l.key} of a live segment is missing`).toBe(true);
    }
  }
  return liveBlocks * v.blockSizeBytes;
}

/**
 * Overwrite-heavy random writes and trims into a model, in `lanes` concurrent non-overlapping
 * lanes (each with its own stream from the seed, so a replay does not depend on timing). The
 * lanes' writes are one writer's: they upload side by side and commit one after the other
 * (shared/data/write-pipeline.ts).
 */
async function overwrite(volumeId: string, model: Buffer, writes: number, lanes: number): Promise<void> {
  const lane = Math.floor(model.length / lanes / 4096) * 4096;
  await Promise.all(
    laneStreams(rng, lanes).map(async (rng, l) => {
      for (let i = 0; i < writes / lanes; i++) {
        const length = 4096 * (1 + rng.int(rng.int(4) === 0 ? 64 : 8));
        const offset = l * lane + 4096 * rng.int((lane - length) / 4096 + 1);
        if (rng.int(10) === 0) {
          await trimRange(volumeId, offset, length);
          model.fill(0, offset, offset + length);
        } else {
          const data = randomBytes(length);
          await writePieces(volumeId, [{ offset, length, data }]);
          data.copy(model, offset);
        }
      }
    }),
  );
}

async function expectReadsBack(volumeId: string, model: Buffer): Promise<void> {
  for (let off = 0; off < model.length; off += 4 * MiB) {
    const len = Math.min(4 * MiB, model.length - off);
    expect((await readData(volumeId, off, len)).equals(model.subarray(off, off + len)), `bytes at ${off}`).toBe(true);
  }
}

describe('garbage collection', () => {
  it('after an overwrite-heavy workload: extents resolve, bytes read back, and stored bytes are at most 1.2 x (k+m)/k x live', async () => {
    const v = await createVolume({ sizeBytes: 8 * MiB });
    const model = Buffer.alloc(8 * MiB);
    // Half the workload with GC running at the same time (its messages come every 64 commits).
    await overwrite(v.volumeId, model, 300, LANES);
    const before = await stored(v.volumeId);
    await Promise.all([overwrite(v.volumeId, model, 150, LANES), runGc(true)]);
    await queueGc(v.volumeId);
    await runGc(true);
    const after = await stored(v.volumeId);
    const live = await expectExtentsResolve(v.volumeId);
    const ideal = (live * (v.dataChunks + v.parityChunks)) / v.dataChunks;
    console.log(`stored ${before.bytes} -> ${after.bytes} bytes for ${live} live bytes (ideal ${ideal}, ratio ${(after.bytes / ideal).toFixed(3)})`);
    expect(after.bytes).toBeLessThanOrEqual(1.2 * ideal);
    await expectReadsBack(v.volumeId, model);
    // A second pass over a collected volume finds nothing more to do.
    const again = await collectVolume(v.volumeId, { queueContinuation: false });
    expect(again).toMatchObject({ segmentsDeleted: 0, orphansDeleted: 0 });
    expect(again.segmentsCompacted).toBe(0);
  }, 600_000); // 450 writes and several GC passes: about 200 s on a quiet machine

  it('deletes superseded segments, their chunks then their records, and never a referenced one', async () => {
    const v = await createVolume({ sizeBytes: 4 * MiB });
    const first = randomBytes(MiB);
    await writePieces(v.volumeId, [{ offset: 0, length: MiB, data: first }]);
    const keep = randomBytes(64 * 1024);
    await writePieces(v.volumeId, [{ offset: 2 * MiB, length: keep.length, data: keep }]);
    const second = randomBytes(MiB);
    await writePieces(v.volumeId, [{ offset: 0, length: MiB, data: second }]);
    const segs: string[] = [];
    for await (const r of listSegmentRecords(v.volumeId)) segs.push(r.segmentId);
    expect(segs.length).toBe(3);
    // The volume folds (the default): the pass folds its tail first, which it would otherwise keep whole (docs/page-map.md, "Folding").
    const r = await collectVolume(v.volumeId, { queueContinuation: false });
    expect(r.segmentsDeleted).toBe(1);
    expect(await getSegmentRecord(v.volumeId, segs[0]!)).toBeNull();
    expect([...(await stored(v.volumeId)).chunks.keys()].some((k) => k.includes(segs[0]!))).toBe(false);
    await expectExtentsResolve(v.volumeId);
    expect((await readData(v.volumeId, 0, MiB)).equals(second)).toBe(true);
    expect((await readData(v.volumeId, 2 * MiB, keep.length)).equals(keep)).toBe(true);
  });

  it('keeps what a retention provider declares (the hook for snapshots and checkpoints)', async () => {
    const v = await createVolume({ sizeBytes: 4 * MiB });
    await writePieces(v.volumeId, [{ offset: 0, length: 4096, data: randomBytes(4096) }]);
    await writePieces(v.volumeId, [{ offset: 0, length: 4096, data: randomBytes(4096) }]);
    await writePieces(v.volumeId, [{ offset: 0, length: 4096, data: randomBytes(4096) }]);
    const records: string[] = [];
    for await (const r of listSegmentRecords(v.volumeId)) records.push(segmentRef(v.volumeId, r.segmentId));
    const unregister = registerRetentionProvider({ name: 'test', segmentsNeededBy: async (vol) => (vol.volumeId === v.volumeId ? { refs: new Set([records[0]!]) } : {}) });
    try {
      const r = await collectVolume(v.volumeId, { queueContinuation: false });
      expect(r.segmentsDeleted).toBe(1); // the second; the first is kept, the third is live
    } finally {
      unregister();
    }
    const r2 = await collectVolume(v.volumeId, { queueContinuation: false });
    expect(r2.segmentsDeleted).toBe(1);
  });

  it('compacts a reserved volume through the commit path, fenced by the reservation generation', async () => {
    const v = await createVolume({ sizeBytes: 4 * MiB });
    await applyReservationBody(v.volumeId, { action: 'register', key: 'head:a' });
    await applyReservationBody(v.volumeId, { action: 'reserve', key: 'head:a', type: 'write-exclusive' });
    const model = Buffer.alloc(4 * MiB);
    for (let i = 0; i < 64; i++) {
      const data = randomBytes(4096);
      const offset = 4096 * rng.int(1024);
      await writePieces(v.volumeId, [{ offset, length: 4096, data }], { id: 'head-a', key: 'head:a' });
      data.copy(model, offset);
    }
    const r = await collectVolume(v.volumeId, { queueContinuation: false });
    expect(r.compactionCommits).toBeGreaterThan(0);
    expect(r.compactionGaveUp).toBeNull();
    await expectReadsBack(v.volumeId, model);
    // The holder still writes after compaction moved the head.
    await writePieces(v.volumeId, [{ offset: 0, length: 4096, data: model.subarray(0, 4096) }], { id: 'head-a', key: 'head:a' });
  });

  it('deletes chunks of a segment that was never committed once they are past the grace', async () => {
    const v = await createVolume({ sizeBytes: 4 * MiB });
    await writePieces(v.volumeId, [{ offset: 0, length: 8192, data: randomBytes(8192) }]);
    // A head that uploaded and died before its commit.
    const orphan = await prepareWrite((await getVolume(v.volumeId))!, [{ offset: 4096, length: 4096, data: randomBytes(4096) }], { id: 'dead-head' });
    const young = await collectVolume(v.volumeId, { queueContinuation: false });
    expect(young.orphansDeleted).toBe(0);
    await new Promise((r) => setTimeout(r, 10_500));
    // Past the grace, with the head still where the orphan was built: its commit could still
    // apply, so GC first makes that impossible with a tombstone under its segment id
    // (docs/page-map.md, "Settling an outcome"), then deletes its chunks.
    const old = await collectVolume(v.volumeId, { queueContinuation: false });
    expect(old.orphansDeleted).toBe(orphan.locations.length);
    const keys = [...(await stored(v.volumeId)).chunks.keys()];
    expect(keys.some((k) => k.includes(orphan.record.segmentId))).toBe(false);
    expect((await getVolume(v.volumeId))!.headSeq, 'the head did not move').toBe(orphan.record.seq - 1);
    // The dead head wakes up: its commit is refused by the tombstone, never applied to chunks that are gone.
    expect(await completeWrite(orphan)).toBeNull();
    expect((await getVolume(v.volumeId))!.headSeq).toBe(orphan.record.seq - 1);
    await expectExtentsResolve(v.volumeId);
    // Once the head has passed it, GC deletes the tombstone too.
    await writePieces(v.volumeId, [{ offset: 0, length: 4096, data: randomBytes(4096) }]);
    await collectVolume(v.volumeId, { queueContinuation: false });
    const left: string[] = [];
    for await (const t of listSegmentTombstones(v.volumeId)) left.push(t.segmentId);
    expect(left).toEqual([]);
  });

  it('keeps the chunks of referenced segments whose records were lost, and a rebuild restores the records exactly', async () => {
    const v = await api.createVolume({ sizeBytes: 8 * MiB, checkpointEveryCommits: 0 });
    const model = Buffer.alloc(8 * MiB);
    for (let i = 0; i < 12; i++) {
      const length = 4096 * (1 + rng.int(64));
      const offset = i === 0 ? 0 : 4096 * rng.int((8 * MiB - length) / 4096);
      const data = randomBytes(length);
      await api.write(v.volumeId, offset, data);
      data.copy(model, offset);
      if (i === 5) expect((await http(`${apiUrl}/volumes/${v.volumeId}/checkpoints`, { method: 'POST' })).status).toBe(201);
    }
    // The records the page map needs, as stored, before the loss (the tail folded into the page items first).
    await foldVolume(v.volumeId);
    const referenced = new Set<string>();
    for await (const p of listPages((await getVolume(v.volumeId))!)) for (const e of p.extents) if (e.seg) referenced.add(e.seg);
    const before = new Map<string, unknown>();
    for await (const r of listSegmentRecords(v.volumeId)) if (referenced.has(segmentRef(v.volumeId, r.segmentId))) before.set(r.segmentId, r);
    expect(before.size).toBe(referenced.size);
    const chunksBefore = (await stored(v.volumeId)).chunks;

    // The Segments table loses the volume's records.
    const all: string[] = [];
    for await (const r of listSegmentRecords(v.volumeId)) all.push(r.segmentId);
    await deleteItems('segments', all.map((id) => segmentKey(v.volumeId, id)));
    // Reads of written blocks now fail clearly, never with wrong bytes.
    const failed = await http(`${apiUrl}/volumes/${v.volumeId}/data?offset=0&length=${8 * MiB / 2}`);
    expect(failed.status).toBe(503);
    expect(failed.body.toString()).toMatch(/no segment record.*rebuild/);

    // GC past the orphan grace: every chunk of a referenced segment stays.
    await new Promise((r) => setTimeout(r, 10_500));
    const gc = await collectVolume(v.volumeId, { queueContinuation: false });
    const chunksAfter = (await stored(v.volumeId)).chunks;
    for (const key of chunksBefore.keys()) {
      const segment = parseChunkKey(key.slice(key.indexOf('/') + 1))?.segmentId;
      if (segment && before.has(segment)) expect(chunksAfter.has(key), `chunk ${key} of a referenced segment`).toBe(true);
    }
    expect(gc.referencedWithoutRecord).toBeGreaterThan(0);

    // The rebuild restores exactly the records that were lost and referenced, from the trailers.
    const rebuilt = await http(`${apiUrl}/volumes/${v.volumeId}/rebuild`, { method: 'POST' });
    expect(rebuilt.status, rebuilt.body.toString()).toBe(200);
    expect(rebuilt.json.segmentRecordsRestored).toBe(before.size);
    expect(rebuilt.json.segmentsUnrecoverable).toEqual([]);
    const after = new Map<string, unknown>();
    for await (const r of listSegmentRecords(v.volumeId)) after.set(r.segmentId, r);
    expect(after).toEqual(before);
    expect((await api.read(v.volumeId, 0, 4 * MiB)).equals(model.subarray(0, 4 * MiB))).toBe(true);
    expect((await api.read(v.volumeId, 4 * MiB, 4 * MiB)).equals(model.subarray(4 * MiB))).toBe(true);
    // Once restored, GC finds nothing referenced without a record.
    expect((await collectVolume(v.volumeId, { queueContinuation: false })).referencedWithoutRecord ?? 0).toBe(0);
  });

  it('queues GC over HTTP and refuses unknown volumes', async () => {
    const v = await api.createVolume({ sizeBytes: MiB });
    expect((await http(`${apiUrl}/volumes/${v.volumeId}/gc`, { method: 'POST' })).status).toBe(202);
    expect((await http(`${apiUrl}/volumes/vol-0000000000000000/gc`, { method: 'POST' })).status).toBe(404);
    expect([...(await stored(v.volumeId)).chunks.keys()].every((k) => parseChunkKey(k.slice(k.indexOf('/') + 1)) !== null)).toBe(true);
  });
});
