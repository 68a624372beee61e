/**
 * Read repair (docs/evacuation.md, "Read repair" and "The listing check"): a read that finds a
 * chunk missing or damaged, or a GC pass whose listing lacks a chunk, asks the worker to replace
 * it, and the control plane's worker (polling the evacuation queue of the local endpoint)
 * rebuilds it on another drive and moves the segment record there. The reads and GC passes run
 * in this process with repair requests on; the control plane's own keep them off
 * (test/integration/global-setup.ts).
 */
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { getSegmentRecord } from '#shared/aws/pagemap/pages.ts';
import { s3 } from '#shared/aws/clients.ts';
import type { SegmentRecord } from '#shared/core/records.ts';
import { driveOf } from '#shared/data/placement.ts';
import { LOST_CHUNK_RECORD_RECHECK_MS, readData } from '#shared/data/read.ts';
import { repairRequests, setReadRepair } from '#shared/data/repair-requests.ts';
import { type ReadReport, readPayload } from '#shared/data/segment-reader.ts';
import { chunkObjectIsIntact, repairChunk } from '#shared/maintenance/evacuation.ts';
import { checkListing, collectVolume, type GcReport } from '#shared/maintenance/gc.ts';
import { listDrives } from '#shared/maintenance/drives.ts';
import { getDrive } from '#shared/aws/drive-registry.ts';
import { clearFaults, faultStats, setFaults } from '#shared/aws/faults.ts';
import { listVolumeChunks } from '#shared/aws/chunk-store.ts';
import { config, ENV } from '#shared/core/config.ts';
import type { ListedChunk } from '#shared/data/sleds.ts';
import { resetDrives, testApi } from './helpers.ts';

const MiB = 1024 * 1024;
const { api } = testApi({ sledgeEnv: true });

beforeAll(() => setReadRepair(true));
afterAll(() => setReadRepair(undefined));

async function recordOf(volumeId: string, segmentId: string): Promise<SegmentRecord> {
  const rec = await getSegmentRecord(volumeId, segmentId);
  expect(rec).not.toBeNull();
  return rec!;
}

async function objectAt(loc: { bucket: string; key: string }): Promise<Buffer | null> {
  try {
    const out = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    return Buffer.from(await out.Body!.transformToByteArray());
  } catch (err) {
    if ((err as { name?: string }).name === 'NoSuchKey') return null;
    throw err;
  }
}

/** Waits until chunk `i`'s location is no longer `old` (the worker moved it), at most 60 s. */
async function movedFrom(volumeId: string, segmentId: string, i: number, old: { bucket: string; key: string }): Promise<SegmentRecord> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const rec = await recordOf(volumeId, segmentId);
    const now = rec.locations[i]!;
    if (now.bucket !== old.bucket || now.key !== old.key) return rec;
    if (Date.now() > deadline) throw new Error(`chunk ${i} of ${segmentId} still at ${old.bucket}/${old.key} after 60 s`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** The segment's bytes read with the record as it is now: a healthy read asks k chunks and rebuilds nothing. */
async function readsHealthy(rec: SegmentRecord, data: Buffer): Promise<void> {
  const report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 };
  const [bytes] = await readPayload(rec, [{ start: 0, end: data.length }], report);
  expect(bytes!.equals(data)).toBe(true);
  expect(report).toMatchObject({ badGranules: 0, rebuiltGranules: 0 });
  expect(report.missingChunks ?? 0).toBe(0);
}

/** Chunks `moved` (one index or several) are on new drives; the others where they were. */
function checkMoved(before: SegmentRecord, after: SegmentRecord, moved: number | number[]): void {
  const indexes = typeof moved === 'number' ? [moved] : moved;
  for (const i of indexes) {
    const old = before.locations[i]!;
    const now = after.locations[i]!;
    expect(now.bucket !== old.bucket || driveOf(now) !== driveOf(old), `chunk ${i} on a new drive`).toBe(true);
  }
  expect(new Set(after.locations.map((l) => l.bucket)).size, 'the stripe keeps k+m distinct sleds').toBe(after.locations.length);
  after.locations.forEach((l, j) => {
    if (!indexes.includes(j)) expect(l).toEqual(before.locations[j]);
  });
}

/** A fresh volume holding one segment of `bytes` random bytes at offset 0, and its record. */
async function oneSegment(bytes: number): Promise<{ volumeId: string; segmentId: string; data: Buffer; before: SegmentRecord }> {
  const vol = await api.createVolume({ sizeBytes: 8 * MiB });
  const data = randomBytes(bytes);
  const w = await api.write(vol.volumeId, 0, data);
  return { volumeId: vol.volumeId, segmentId: w.segmentId, data, before: await recordOf(vol.volumeId, w.segmentId) };
}

describe('read repair', () => {
  it('replaces a chunk a read found missing: rebuilt on another drive, the record moved, reads healthy again', async () => {
    const { volumeId, segmentId, data, before } = await oneSegment(MiB);
    const lost = before.locations[1]!;
    await s3().send(new DeleteObjectCommand({ Bucket: lost.bucket, Key: lost.key }));

    const sent = repairRequests.sent;
    const report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 };
    expect((await readData(volumeId, 0, data.length, report)).equals(data)).toBe(true);
    expect(report.missingChunks).toBe(1);
    expect(repairRequests.sent - sent, 'one repair request').toBe(1);
    // A second read within the memory does not ask again.
    await readData(volumeId, 0, data.length);
    expect(repairRequests.sent - sent).toBe(1);

    const after = await movedFrom(volumeId, segmentId, 1, lost);
    checkMoved(before, after, 1);
    const object = await objectAt(after.locations[1]!);
    expect(object, 'the new copy exists').not.toBeNull();
    expect(chunkObjectIsIntact(after, 1, object!), 'the new copy is chunk 1 of this segment, every granule checked').toBe(true);
    await readsHealthy(after, data);

    // This process still has the old record cached, with chunk 1 remembered lost: its reads ask
    // the other chunks and rebuild, until the record is old enough to be read again.
    const cached: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 };
    expect((await readData(volumeId, 0, data.length, cached)).equals(data)).toBe(true);
    expect(cached.rebuiltGranules).toBeGreaterThan(0);
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + LOST_CHUNK_RECORD_RECHECK_MS });
    try {
      const fresh: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 };
      expect((await readData(volumeId, 0, data.length, fresh)).equals(data)).toBe(true);
      expect(fresh, 'the record read again: the repaired chunk is asked, nothing rebuilt').toMatchObject({ rebuiltGranules: 0, badGranules: 0, rangedGets: before.k });
    } finally {
      vi.useRealTimers();
    }
  });

  it('replaces a chunk whose bytes were altered, and deletes the damaged object', async () => {
    const { volumeId, segmentId, data, before } = await oneSegment(MiB);
    const damaged = before.locations[2]!;
    const bytes = (await objectAt(damaged))!;
    bytes[70_000] = bytes[70_000]! ^ 0x01;
    await s3().send(new PutObjectCommand({ Bucket: damaged.bucket, Key: damaged.key, Body: bytes }));

    const report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 };
    expect((await readData(volumeId, 0, data.length, report)).equals(data)).toBe(true);
    expect(report.badGranules).toBe(1);

    const after = await movedFrom(volumeId, segmentId, 2, damaged);
    checkMoved(before, after, 2);
    expect(chunkObjectIsIntact(after, 2, (await objectAt(after.locations[2]!))!)).toBe(true);
    expect(await objectAt(damaged), 'the damaged object is gone').toBeNull();
    await readsHealthy(after, data);
  });

  it('does nothing for an intact chunk, a chunk that moved since, or a segment that is gone', async () => {
    const { volumeId, segmentId, before: rec } = await oneSegment(256 * 1024);
    const at = rec.locations[0]!;
    const msg = { type: 'repair-chunk' as const, volumeId: volumeId, segmentId: segmentId, chunk: 0, bucket: at.bucket, key: at.key };
    expect(await repairChunk(msg)).toBe('intact');
    expect(await repairChunk({ ...msg, key: `${at.key}.elsewhere` })).toBe('done-elsewhere');
    expect(await repairChunk({ ...msg, chunk: rec.locations.length })).toBe('done-elsewhere');
    expect(await repairChunk({ ...msg, segmentId: `${segmentId}0` })).toBe('gone');
    expect(await recordOf(volumeId, segmentId), 'nothing moved').toEqual(rec);
  });

  it('reports every chunk it finds missing, and the repaired segment survives losing m other chunks', async () => {
    const { volumeId, segmentId, data, before } = await oneSegment(MiB);
    const { k, m } = before;
    // m chunks lost: the read still succeeds, and asks for each.
    const lost = before.locations.slice(0, m);
    for (const loc of lost) await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    const sent = repairRequests.sent;
    expect((await readData(volumeId, 0, data.length)).equals(data)).toBe(true);
    expect(repairRequests.sent - sent).toBe(m);
    let after = before;
    for (let i = 0; i < m; i++) after = await movedFrom(volumeId, segmentId, i, lost[i]!);
    // Redundancy is back: m more chunks (the other data chunks and more) can go.
    for (const loc of after.locations.slice(m, 2 * m)) await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    const report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 };
    const [bytes] = await readPayload(after, [{ start: 0, end: data.length }], report);
    expect(bytes!.equals(data), `${k}+${m}: read back after losing ${2 * m} chunks in all, ${m} of them repaired`).toBe(true);
  });
});

describe('the listing check (a GC pass asks for chunks missing from its listing)', () => {
  it('finds chunks nobody read missing, asks for each once, and the worker replaces them', async () => {
    const { volumeId, segmentId, data, before } = await oneSegment(MiB);
    const lost = [before.locations[0]!, before.locations[before.k]!];
    for (const loc of lost) await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));

    const sent = repairRequests.sent;
    const gc = await collectVolume(volumeId, { queueContinuation: false });
    expect(gc).toMatchObject({ chunksMissing: 2, repairsAsked: 2, orphansDeleted: 0, segmentsDeleted: 0 });
    expect(repairRequests.sent - sent).toBe(2);

    let after = await movedFrom(volumeId, segmentId, 0, lost[0]!);
    after = await movedFrom(volumeId, segmentId, before.k, lost[1]!);
    checkMoved(before, after, [0, before.k]);
    for (const i of [0, before.k]) expect(chunkObjectIsIntact(after, i, (await objectAt(after.locations[i]!))!), `chunk ${i} replaced intact`).toBe(true);
    await readsHealthy(after, data);
    expect((await collectVolume(volumeId, { queueContinuation: false })).chunksMissing ?? 0, 'the next pass finds nothing missing').toBe(0);
  });

  it('counts but does not ask when repairs are off; asks on the next pass once they are on', async () => {
    const { volumeId, segmentId, before } = await oneSegment(256 * 1024);
    const lost = before.locations[1]!;
    await s3().send(new DeleteObjectCommand({ Bucket: lost.bucket, Key: lost.key }));
    setReadRepair(false);
    try {
      expect(await collectVolume(volumeId, { queueContinuation: false })).toMatchObject({ chunksMissing: 1, repairsAsked: 0 });
    } finally {
      setReadRepair(true);
    }
    expect(await recordOf(volumeId, segmentId), 'nothing moved').toEqual(before);
    expect(await collectVolume(volumeId, { queueContinuation: false })).toMatchObject({ chunksMissing: 1, repairsAsked: 1 });
    checkMoved(before, await movedFrom(volumeId, segmentId, 1, lost), 1);
  });

  it('does not judge a chunk lost when its record moved it after the records were read', async () => {
    const { volumeId, segmentId, before } = await oneSegment(256 * 1024);
    const at = before.locations[2]!;
    await s3().send(new DeleteObjectCommand({ Bucket: at.bucket, Key: at.key }));
    // The worker's repair, run here, moves the chunk between the pass's record read (`before`)
    // and its listing.
    expect(await repairChunk({ type: 'repair-chunk', volumeId, segmentId, chunk: 2, bucket: at.bucket, key: at.key })).toBe('rebuilt');
    const listed: ListedChunk[] = [];
    for await (const c of listVolumeChunks(volumeId, config().sledBuckets)) listed.push(c);
    expect(listed.some((c) => c.bucket === at.bucket && c.key === at.key), 'the old object is gone from the listing').toBe(false);
    const report = { chunksMissing: undefined } as unknown as GcReport;
    const sent = repairRequests.sent;
    await checkListing(volumeId, [before], listed, report);
    expect(report.chunksMissing, 'the record read again points elsewhere').toBe(0);
    expect(repairRequests.sent - sent).toBe(0);
  });
});

describe('drives that keep losing chunks', () => {
  const threshold = process.env[ENV.lostChunkRetireThreshold];
  beforeAll(async () => {
    process.env[ENV.lostChunkRetireThreshold] = '2';
    await resetDrives();
  });
  afterAll(async () => {
    if (threshold === undefined) delete process.env[ENV.lostChunkRetireThreshold];
    else process.env[ENV.lostChunkRetireThreshold] = threshold;
    await resetDrives();
  });

  it('counts each loss a repair confirms against its drive, retires the drive at the threshold, and its evacuation keeps every byte', async () => {
    // Segments of 64 KiB, each on k+m distinct sleds: more chunks than drives puts two chunks of
    // different segments on one drive.
    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    const drives = await listDrives();
    const writes: Array<{ offset: number; data: Buffer; segmentId: string }> = [];
    let shared: { driveId: string; chunks: Array<{ segmentId: string; chunk: number }> } | undefined;
    for (let i = 0; !shared; i++) {
      expect(i, 'some drive holds chunks of two segments').toBeLessThan(4 * drives.length);
      const data = randomBytes(64 * 1024);
      const w = await api.write(vol.volumeId, i * data.length, data);
      writes.push({ offset: i * data.length, data, segmentId: w.segmentId });
      const byDrive = new Map<string, Array<{ segmentId: string; chunk: number }>>();
      for (const { segmentId } of writes) {
        (await recordOf(vol.volumeId, segmentId)).locations.forEach((loc, chunk) => {
          const id = `${loc.bucket}/${driveOf(loc)}`;
          byDrive.set(id, [...(byDrive.get(id) ?? []), { segmentId, chunk }]);
        });
      }
      const found = [...byDrive].find(([, chunks]) => chunks.length >= 2);
      if (found) shared = { driveId: found[0], chunks: found[1].slice(0, 2) };
    }

    const results: string[] = [];
    for (const [n, { segmentId, chunk }] of shared.chunks.entries()) {
      const before = await recordOf(vol.volumeId, segmentId);
      const at = before.locations[chunk]!;
      await s3().send(new DeleteObjectCommand({ Bucket: at.bucket, Key: at.key }));
      const msg = { type: 'repair-chunk' as const, volumeId: vol.volumeId, segmentId, chunk, bucket: at.bucket, key: at.key };
      results.push(await repairChunk(msg));
      // The same report again finds the chunk moved, and counts nothing more.
      expect(await repairChunk(msg)).toBe('done-elsewhere');
      const d = (await getDrive(shared.driveId))!;
      expect(d.lostChunks, `losses counted on ${shared.driveId}`).toBe(n + 1);
      expect(d.state, n === 0 ? 'one loss: still in service' : 'two losses: retiring').toBe(n === 0 ? 'active' : 'retiring');
    }
    expect(results).toEqual(['rebuilt', 'rebuilt']);
    const retiring = (await getDrive(shared.driveId))!;
    expect(retiring.evacuation?.reason).toBe('2 chunks lost or damaged');

    // The control plane's worker empties the drive; every write reads back.
    const deadline = Date.now() + 120_000;
    while ((await getDrive(shared.driveId))!.state !== 'retired') {
      expect(Date.now(), `${shared.driveId} retired within 120 s`).toBeLessThan(deadline);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    for (const w of writes) expect((await api.read(vol.volumeId, w.offset, w.data.length)).equals(w.data), `bytes at ${w.offset}`).toBe(true);
  });

  it('rebuilds but does not count a chunk the worker could not read (the endpoint failing, not the drive)', async () => {
    const { volumeId, segmentId, data, before } = await oneSegment(256 * 1024);
    const at = before.locations[1]!;
    const driveId = `${at.bucket}/${driveOf(at)}`;
    const counted = (await getDrive(driveId))!.lostChunks ?? 0;
    setFaults([{ service: 's3', bucket: at.bucket, prefix: at.key, ops: ['GetObject'] }]);
    try {
      expect(await repairChunk({ type: 'repair-chunk', volumeId, segmentId, chunk: 1, bucket: at.bucket, key: at.key })).toBe('rebuilt');
    } finally {
      clearFaults();
    }
    expect(faultStats().fired, 'the object was asked and refused').toBeGreaterThan(0);
    expect((await getDrive(driveId))!.lostChunks ?? 0, 'nothing counted').toBe(counted);
    const after = await recordOf(volumeId, segmentId);
    checkMoved(before, after, 1);
    await readsHealthy(after, data);
  });
});
