import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { collectVolume } from '#shared/maintenance/gc.ts';
import { foldVolume } from '#shared/maintenance/fold.ts';
import { purgeSnapshots } from '#shared/control/snapshots.ts';
import { pageMap } from '#shared/ports.ts';
import { completeWrite, prepareWrite } from '#shared/data/write.ts';
import { http, testApi } from './helpers.ts';

/**
 * Snapshots, clones and changed blocks through the API (docs/snapshots.md), against the local
 * endpoint: what a snapshot and a clone read as, what changed-block lists say, deleting with
 * and without dependants, GC keeping what a snapshot references, and bad input.
 */
const BLOCK = 4096;
const MiB = 1024 * 1024;

const { api, apiUrl: url } = testApi({ sledgeEnv: true });

const json = (body: unknown) => ({ body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

async function snapshot(volumeId: string, name?: string): Promise<any> {
  const r = await http(`${url}/volumes/${volumeId}/snapshots`, { method: 'POST', ...json(name === undefined ? {} : { name }) });
  expect(r.status, r.body.toString()).toBe(201);
  return r.json;
}

async function readSnapshot(snapshotId: string, offset: number, length: number): Promise<Buffer> {
  const r = await http(`${url}/snapshots/${snapshotId}/data?offset=${offset}&length=${length}`);
  expect(r.status, r.body.toString()).toBe(200);
  return r.body;
}

async function changed(snapshotId: string, base?: string): Promise<Array<{ offset: number; length: number }>> {
  const out: Array<{ offset: number; length: number }> = [];
  let next: string | undefined;
  do {
    const q = new URLSearchParams({ limit: '3', ...(base ? { base } : {}), ...(next ? { next } : {}) });
    const r = await http(`${url}/snapshots/${snapshotId}/changed-blocks?${q}`);
    expect(r.status, r.body.toString()).toBe(200);
    expect(r.json.blockSizeBytes).toBe(BLOCK);
    for (const e of r.json.extents) {
      const last = out[out.length - 1];
      if (last && last.offset + last.length === e.offset) last.length += e.length; // a page boundary of the answer
      else out.push(e);
    }
    next = r.json.next;
  } while (next);
  return out;
}

async function waitGone(snapshotId: string, volumeId: string): Promise<void> {
  // The purge runs from the queue; run it here too (it is idempotent and takes a lock).
  for (let i = 0; i < 50; i++) {
    const left = (await pageMap().listSnapshots(volumeId)).some((s) => s.snapshotId === snapshotId);
    if (!left) return;
    await purgeSnapshots(volumeId).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`snapshot ${snapshotId} was not purged`);
}

describe('snapshots', () => {
  it('read as the volume at their commit while the volume keeps changing', async () => {
    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    const a = randomBytes(3 * MiB);
    await api.write(vol.volumeId, 0, a);
    const s1 = await snapshot(vol.volumeId, 'first');
    expect(s1).toMatchObject({ volumeId: vol.volumeId, name: 'first', sizeBytes: 8 * MiB, blockSizeBytes: BLOCK, commitSeq: 1, state: 'ready' });
    const b = randomBytes(2 * MiB);
    await api.write(vol.volumeId, MiB, b);
    await api.trim(vol.volumeId, 0, 64 * 1024);
    const s2 = await snapshot(vol.volumeId);
    const c = randomBytes(MiB);
    await api.write(vol.volumeId, 2 * MiB, c);

    const atS1 = Buffer.concat([a, Buffer.alloc(5 * MiB)]);
    const atS2 = Buffer.from(atS1);
    b.copy(atS2, MiB);
    atS2.fill(0, 0, 64 * 1024);
    const live = Buffer.from(atS2);
    c.copy(live, 2 * MiB);
    for (let off = 0; off < 8 * MiB; off += 4 * MiB) {
      expect((await readSnapshot(s1.snapshotId, off, 4 * MiB)).equals(atS1.subarray(off, off + 4 * MiB))).toBe(true);
      expect((await readSnapshot(s2.snapshotId, off, 4 * MiB)).equals(atS2.subarray(off, off + 4 * MiB))).toBe(true);
      expect((await api.read(vol.volumeId, off, 4 * MiB)).equals(live.subarray(off, off + 4 * MiB))).toBe(true);
    }

    const list = await http(`${url}/volumes/${vol.volumeId}/snapshots?limit=1`);
    expect(list.json.snapshots.map((s: any) => s.snapshotId)).toEqual([s1.snapshotId]);
    const rest = await http(`${url}/volumes/${vol.volumeId}/snapshots?limit=1&next=${list.json.next}`);
    expect(rest.json.snapshots.map((s: any) => s.snapshotId)).toEqual([s2.snapshotId]);
    expect((await http(`${url}/snapshots/${s2.snapshotId}`)).json).toMatchObject({ snapshotId: s2.snapshotId, commitSeq: 3 });

    // Changed blocks: s1 -> s2 is the 2 MiB write and the trim; without base, everything written or trimmed.
    expect(await changed(s2.snapshotId, s1.snapshotId)).toEqual([
      { offset: 0, length: 64 * 1024 },
      { offset: MiB, length: 2 * MiB },
    ]);
    expect(await changed(s1.snapshotId)).toEqual([{ offset: 0, length: 3 * MiB }]);
    expect(await changed(s2.snapshotId, s2.snapshotId)).toEqual([]);
  });

  it('clones read as their snapshot, take writes without touching the parent, and chain', async () => {
    const vol = await api.createVolume({ sizeBytes: 4 * MiB });
    const a = randomBytes(4 * MiB);
    await api.write(vol.volumeId, 0, a);
    const s = await snapshot(vol.volumeId);
    await api.write(vol.volumeId, 0, randomBytes(MiB)); // the parent moves on

    const clone = await api.createVolume({ sourceSnapshotId: s.snapshotId, sizeBytes: 8 * MiB });
    expect(clone).toMatchObject({ sizeBytes: 8 * MiB, parent: { volumeId: vol.volumeId, snapshotId: s.snapshotId } });
    expect((await api.describe(clone.volumeId)).json.parent).toEqual({ volumeId: vol.volumeId, snapshotId: s.snapshotId });
    expect((await api.read(clone.volumeId, 0, 4 * MiB)).equals(a)).toBe(true);
    expect((await api.read(clone.volumeId, 4 * MiB, 4 * MiB)).equals(Buffer.alloc(4 * MiB))).toBe(true);

    const w = randomBytes(8 * BLOCK);
    await api.write(clone.volumeId, 3 * BLOCK, w);
    await api.trim(clone.volumeId, MiB, BLOCK);
    const expected = Buffer.concat([a, Buffer.alloc(4 * MiB)]);
    w.copy(expected, 3 * BLOCK);
    expected.fill(0, MiB, MiB + BLOCK);
    expect((await api.read(clone.volumeId, 0, 4 * MiB)).equals(expected.subarray(0, 4 * MiB))).toBe(true);
    expect((await readSnapshot(s.snapshotId, 0, 4 * MiB)).equals(a)).toBe(true);

    // A clone of a clone.
    const cs = await snapshot(clone.volumeId);
    expect(cs.parent).toEqual({ volumeId: vol.volumeId, snapshotId: s.snapshotId });
    const grandchild = await api.createVolume({ sourceSnapshotId: cs.snapshotId });
    await api.write(grandchild.volumeId, 0, Buffer.alloc(BLOCK, 7));
    const g = Buffer.from(expected.subarray(0, 4 * MiB));
    g.fill(7, 0, BLOCK);
    expect((await api.read(grandchild.volumeId, 0, 4 * MiB)).equals(g)).toBe(true);
    expect((await api.read(clone.volumeId, 0, 4 * MiB)).equals(expected.subarray(0, 4 * MiB))).toBe(true);

    // Changed blocks of the clone's snapshot against the parent's: the clone's own writes and trim.
    expect(await changed(cs.snapshotId, s.snapshotId)).toEqual([
      { offset: 3 * BLOCK, length: 8 * BLOCK },
      { offset: MiB, length: BLOCK },
    ]);

    // Deleting: a snapshot with dependants is refused and names them; volumes with snapshots too.
    const refused = await http(`${url}/snapshots/${s.snapshotId}`, { method: 'DELETE' });
    expect(refused.status).toBe(409);
    expect(refused.json.message).toContain(clone.volumeId);
    expect((await http(`${url}/volumes/${vol.volumeId}`, { method: 'DELETE' })).status).toBe(409);
    // The second step of a delete refuses on its own too, as when a snapshot is taken between
    // the delete's check and its mark: the volume stays active.
    expect(await pageMap().markDeleting(vol.volumeId)).toBe('has-snapshots');
    expect((await pageMap().getVolume(vol.volumeId))?.state).toBe('active');
    expect((await readSnapshot(s.snapshotId, 0, BLOCK)).equals(a.subarray(0, BLOCK))).toBe(true);

    // Unwind: grandchild, the clone's snapshot, the clone, then the snapshot.
    expect((await http(`${url}/volumes/${grandchild.volumeId}`, { method: 'DELETE' })).status).toBe(202);
    expect((await http(`${url}/snapshots/${cs.snapshotId}`, { method: 'DELETE' })).status).toBe(202);
    await waitGone(cs.snapshotId, clone.volumeId);
    expect((await http(`${url}/volumes/${clone.volumeId}`, { method: 'DELETE' })).status).toBe(202);
    expect((await http(`${url}/snapshots/${s.snapshotId}`, { method: 'DELETE' })).status).toBe(202);
    expect((await http(`${url}/snapshots/${s.snapshotId}`)).status).toBe(404);
    expect((await http(`${url}/snapshots/${s.snapshotId}/data?offset=0&length=4096`)).status).toBe(404);
    await waitGone(s.snapshotId, vol.volumeId);
    expect((await http(`${url}/volumes/${vol.volumeId}`, { method: 'DELETE' })).status).toBe(202);
  });

  it('flattens a clone: it keeps its bytes, loses its parent, and the parent snapshot can go', async () => {
    const vol = await api.createVolume({ sizeBytes: 6 * MiB });
    const a = randomBytes(5 * MiB);
    await api.write(vol.volumeId, 0, a.subarray(0, 4 * MiB));
    await api.write(vol.volumeId, 4 * MiB, a.subarray(4 * MiB));
    await api.trim(vol.volumeId, 2 * MiB, 8 * BLOCK);
    const s = await snapshot(vol.volumeId);
    const clone = await api.createVolume({ sourceSnapshotId: s.snapshotId });
    const w = randomBytes(64 * BLOCK);
    await api.write(clone.volumeId, MiB - 16 * BLOCK, w);
    const expected = Buffer.concat([a, Buffer.alloc(MiB)]);
    expected.fill(0, 2 * MiB, 2 * MiB + 8 * BLOCK);
    w.copy(expected, MiB - 16 * BLOCK);
    expect((await http(`${url}/volumes/${vol.volumeId}/flatten`, { method: 'POST' })).status).toBe(409); // not a clone
    const started = await http(`${url}/volumes/${clone.volumeId}/flatten`, { method: 'POST' });
    expect(started.status, started.body.toString()).toBe(202);
    expect(started.json).toEqual({ volumeId: clone.volumeId, pages: 6 });
    let shown: any;
    for (let i = 0; i < 120; i++) {
      shown = (await api.describe(clone.volumeId)).json;
      if (!shown.parent) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    expect(shown.parent).toBeUndefined();
    expect(shown.flatten).toBeUndefined();
    for (let off = 0; off < 6 * MiB; off += 2 * MiB) expect((await api.read(clone.volumeId, off, 2 * MiB)).equals(expected.subarray(off, off + 2 * MiB))).toBe(true);
    // The parent snapshot has no dependants now; deleting it and the parent leaves the clone whole.
    expect((await http(`${url}/snapshots/${s.snapshotId}`)).json.dependants).toEqual([]);
    expect((await http(`${url}/snapshots/${s.snapshotId}`, { method: 'DELETE' })).status).toBe(202);
    await waitGone(s.snapshotId, vol.volumeId);
    expect((await http(`${url}/volumes/${vol.volumeId}`, { method: 'DELETE' })).status).toBe(202);
    for (let i = 0; i < 100 && (await api.describe(vol.volumeId)).status !== 404; i++) await new Promise((r) => setTimeout(r, 300));
    expect((await api.describe(vol.volumeId)).status).toBe(404); // reclaimed: its segments are gone
    for (let off = 0; off < 6 * MiB; off += 2 * MiB) expect((await api.read(clone.volumeId, off, 2 * MiB)).equals(expected.subarray(off, off + 2 * MiB))).toBe(true);
  });

  it('rolls a volume back to a snapshot in one commit that a checkpoint and a rebuild replay', async () => {
    const vol = await api.createVolume({ sizeBytes: 4 * MiB, checkpointEveryCommits: 0 });
    const other = await api.createVolume({ sizeBytes: 4 * MiB });
    const a = randomBytes(2 * MiB);
    await api.write(vol.volumeId, 0, a);
    const s = await snapshot(vol.volumeId);
    const atS = Buffer.concat([a, Buffer.alloc(2 * MiB)]);
    expect((await http(`${url}/volumes/${vol.volumeId}/checkpoints`, { method: 'POST' })).status).toBe(201);
    await api.write(vol.volumeId, MiB - BLOCK, randomBytes(2 * MiB));
    await api.trim(vol.volumeId, 0, 8 * BLOCK);
    const later = await snapshot(vol.volumeId);
    const atLater = Buffer.from(await api.read(vol.volumeId, 0, 4 * MiB));
    await api.write(vol.volumeId, 3 * MiB, randomBytes(BLOCK));
    const os = await snapshot(other.volumeId);

    expect((await http(`${url}/volumes/${vol.volumeId}/rollback`, { method: 'POST', ...json({ snapshotId: os.snapshotId }) })).status).toBe(400);
    expect((await http(`${url}/volumes/${vol.volumeId}/rollback`, { method: 'POST', ...json({}) })).status).toBe(400);
    const r = await http(`${url}/volumes/${vol.volumeId}/rollback`, { method: 'POST', ...json({ snapshotId: s.snapshotId }) });
    expect(r.status, r.body.toString()).toBe(200);
    expect(r.json).toMatchObject({ snapshotId: s.snapshotId, pagesRolledBack: 4 });
    expect((await api.read(vol.volumeId, 0, 4 * MiB)).equals(atS)).toBe(true);
    // Snapshots taken after the rolled-back one still read as they did.
    expect((await readSnapshot(later.snapshotId, 0, 4 * MiB)).equals(atLater)).toBe(true);
    // The rollback is on the chain: a rebuild from the checkpoint before it replays it.
    const rb = await http(`${url}/volumes/${vol.volumeId}/rebuild`, { method: 'POST' });
    expect(rb.status, rb.body.toString()).toBe(200);
    expect((await api.read(vol.volumeId, 0, 4 * MiB)).equals(atS)).toBe(true);
    const ck = await http(`${url}/volumes/${vol.volumeId}/checkpoints`, { method: 'POST' });
    expect(ck.status, ck.body.toString()).toBe(201);
    // Writes go on from the rolled-back state; changed blocks since the snapshot are the new write only.
    await api.write(vol.volumeId, 2 * BLOCK, Buffer.alloc(BLOCK, 9));
    const after = await snapshot(vol.volumeId);
    expect(await changed(after.snapshotId, s.snapshotId)).toEqual([{ offset: 2 * BLOCK, length: BLOCK }]);
  });

  it('come back from a checkpoint and a rebuild when the page map and its frozen pages are lost', async () => {
    const vol = await api.createVolume({ sizeBytes: 4 * MiB, checkpointEveryCommits: 0 });
    const id = vol.volumeId;
    await api.write(id, 0, randomBytes(2 * MiB));
    const s1 = await snapshot(id);
    await api.write(id, MiB, randomBytes(2 * MiB));
    const s2 = await snapshot(id);
    await api.write(id, 0, randomBytes(MiB + BLOCK));
    await api.trim(id, 3 * MiB, 16 * BLOCK);
    // The checkpoint holds the copies made so far; the commits after it freeze more, under s3.
    const ck = await http(`${url}/volumes/${id}/checkpoints`, { method: 'POST' });
    expect(ck.status, ck.body.toString()).toBe(201);
    expect(ck.json.frozenVerified).toBeGreaterThan(0);
    await api.write(id, 2 * MiB, randomBytes(MiB));
    const s3 = await snapshot(id);
    await api.write(id, BLOCK, randomBytes(3 * MiB));
    // s2 goes: its copies move down to s1 where s1 has none.
    expect((await http(`${url}/snapshots/${s2.snapshotId}`, { method: 'DELETE' })).status).toBe(202);
    await waitGone(s2.snapshotId, id);
    const want = {
      s1: await readSnapshot(s1.snapshotId, 0, 4 * MiB),
      s3: await readSnapshot(s3.snapshotId, 0, 4 * MiB),
      volume: Buffer.from(await api.read(id, 0, 4 * MiB)),
    };
    // The volume folds (the default): its folder freezes a page when it folds a change after a
    // tag, so the copies are all made once the tail is folded; a rebuild makes them all at once.
    await foldVolume(id);
    const frozenBefore: string[] = [];
    for await (const f of pageMap().listStoredFrozen(id)) frozenBefore.push(`${f.tag}/${f.page}/${f.version}`);
    expect(frozenBefore.length).toBeGreaterThan(0);

    // Lose every page item and frozen page of the volume, as a restored table without them would.
    const pages: number[] = [];
    for await (const p of pageMap().listStoredPages(id)) pages.push(p.page);
    await pageMap().deletePages(id, pages);
    for (const f of frozenBefore) await pageMap().deleteFrozenPage(id, Number(f.split('/')[0]), Number(f.split('/')[1]));

    const rb = await http(`${url}/volumes/${id}/rebuild`, { method: 'POST' });
    expect(rb.status, rb.body.toString()).toBe(200);
    expect(rb.json.frozen).toMatchObject({ rebuilt: true, written: frozenBefore.length, deleted: 0 });
    const frozenAfter: string[] = [];
    for await (const f of pageMap().listStoredFrozen(id)) frozenAfter.push(`${f.tag}/${f.page}/${f.version}`);
    expect(frozenAfter).toEqual(frozenBefore);
    expect((await readSnapshot(s1.snapshotId, 0, 4 * MiB)).equals(want.s1)).toBe(true);
    expect((await readSnapshot(s3.snapshotId, 0, 4 * MiB)).equals(want.s3)).toBe(true);
    expect(Buffer.from(await api.read(id, 0, 4 * MiB)).equals(want.volume)).toBe(true);
    // A rebuild of what it rebuilt changes nothing, and a checkpoint now verifies the copies.
    const again = await http(`${url}/volumes/${id}/rebuild`, { method: 'POST' });
    expect(again.json).toMatchObject({ pagesWritten: 0, pagesDeleted: 0, frozen: { rebuilt: true, written: 0, deleted: 0 } });
    await api.write(id, 0, randomBytes(BLOCK));
    await foldVolume(id); // a checkpoint compares only what no tail commit touches: fold the write first
    const ck2 = await http(`${url}/volumes/${id}/checkpoints`, { method: 'POST' });
    expect(ck2.status, ck2.body.toString()).toBe(201);
    expect(ck2.json.frozenVerified).toBe(frozenBefore.length);
  });

  it('never freeze a page under an older snapshot when a newer one was taken between a writer reading the volume and its pages', async () => {
    // Writers freeze pages only on volumes that do not fold (on folding volumes the folder does,
    // and re-reads the tag after reading the pages: fold.test.ts).
    const vol = await api.createVolume({ sizeBytes: 4 * MiB, foldTailMax: 0 });
    const id = vol.volumeId;
    const a = Buffer.alloc(BLOCK, 0xa1);
    await api.write(id, 0, a);
    const s1 = await snapshot(id);
    // A writer reads the volume item now (the newest tag is s1's)...
    const stale = (await pageMap().getVolume(id))!;
    expect(stale.snapSeq).toBe(s1.commitSeq);
    // ...then another writer commits, a snapshot is taken, and page 0 changes after it.
    await api.write(id, 2 * MiB, Buffer.alloc(BLOCK, 0x11));
    const s2 = await snapshot(id);
    await api.write(id, 0, Buffer.alloc(BLOCK, 0xb2));
    // The first writer reads page 0 only now: it holds the write made after s2. Freezing that under
    // s1's tag would change what s1 reads.
    const prepared = await prepareWrite(stale, [{ offset: 0, length: BLOCK, data: Buffer.alloc(BLOCK, 0xc3) }], { id: 'stale-writer' });
    expect(prepared.freeze?.map((f) => f.tag)).toEqual([s1.commitSeq]);
    expect(await completeWrite(prepared)).toBeNull(); // refused: the head moved; its caller would prepare again
    expect((await readSnapshot(s1.snapshotId, 0, BLOCK)).equals(a)).toBe(true);
    expect((await readSnapshot(s2.snapshotId, 0, BLOCK)).equals(a)).toBe(true);
    expect(await pageMap().getFrozenPages(id, stale.pageBlocks, [{ tag: s1.commitSeq, page: 0 }])).toEqual([]);
    expect((await api.read(id, 0, BLOCK)).equals(Buffer.alloc(BLOCK, 0xb2))).toBe(true);
  });

  it('keeps what a snapshot references through GC, and lets GC reclaim it once the snapshot is deleted', async () => {
    const vol = await api.createVolume({ sizeBytes: 4 * MiB, checkpointEveryCommits: 0 });
    const a = randomBytes(MiB);
    const first = await api.write(vol.volumeId, 0, a);
    const s = await snapshot(vol.volumeId);
    await api.write(vol.volumeId, 0, randomBytes(MiB)); // supersedes the first segment in the live map
    const live = async () => (await pageMap().getSegmentRecord(vol.volumeId, first.segmentId)) !== null;
    await collectVolume(vol.volumeId, { queueContinuation: false });
    expect(await live()).toBe(true);
    expect((await readSnapshot(s.snapshotId, 0, MiB)).equals(a)).toBe(true);

    expect((await http(`${url}/snapshots/${s.snapshotId}`, { method: 'DELETE' })).status).toBe(202);
    await waitGone(s.snapshotId, vol.volumeId);
    await collectVolume(vol.volumeId, { queueContinuation: false });
    expect(await live()).toBe(false);
  });

  it('refuses bad input with a clear 4xx and changes nothing', async () => {
    const vol = await api.createVolume({ sizeBytes: 2 * MiB });
    const other = await api.createVolume({ sizeBytes: 2 * MiB });
    await api.write(vol.volumeId, 0, randomBytes(BLOCK));
    const s = await snapshot(vol.volumeId);
    const o = await snapshot(other.volumeId);
    const missing = `snap-${vol.volumeId.slice(4)}-000000000009-abcdef`;
    const expectStatus = async (r: Promise<{ status: number; json: any }>, status: number, text?: string) => {
      const got = await r;
      expect(got.status).toBe(status);
      if (text) expect(got.json.message).toContain(text);
    };
    await expectStatus(http(`${url}/snapshots/${missing}`), 404);
    await expectStatus(http(`${url}/snapshots/not-a-snapshot`), 404);
    await expectStatus(http(`${url}/snapshots/${missing}/data?offset=0&length=4096`), 404);
    await expectStatus(http(`${url}/snapshots/${s.snapshotId}/changed-blocks?base=${o.snapshotId}`), 400, 'not a snapshot of');
    await expectStatus(http(`${url}/snapshots/${s.snapshotId}/changed-blocks?base=${missing}`), 404);
    await expectStatus(http(`${url}/snapshots/${s.snapshotId}/data?offset=1&length=4096`), 400);
    await expectStatus(http(`${url}/snapshots/${s.snapshotId}/data?offset=0&length=${8 * MiB}`), 400);
    await expectStatus(http(`${url}/snapshots/${s.snapshotId}/data?offset=${2 * MiB}&length=4096`), 400);
    await expectStatus(http(`${url}/volumes`, { method: 'POST', ...json({ sourceSnapshotId: s.snapshotId, sizeBytes: MiB }) }), 400, 'at least as large');
    await expectStatus(http(`${url}/volumes`, { method: 'POST', ...json({ sourceSnapshotId: missing }) }), 404);
    await expectStatus(http(`${url}/volumes`, { method: 'POST', ...json({ sourceSnapshotId: s.snapshotId, blockSizeBytes: 512 }) }), 400);
    await expectStatus(http(`${url}/volumes/${vol.volumeId}/snapshots`, { method: 'POST', ...json({ label: 'x' }) }), 400, 'unknown field');
    await expectStatus(http(`${url}/volumes/${vol.volumeId}/snapshots`, { method: 'POST', body: '{nope', headers: { 'content-type': 'application/json' } }), 400);
    await expectStatus(http(`${url}/volumes/vol-0000000000000000/snapshots`, { method: 'POST', ...json({}) }), 404);
    await expectStatus(http(`${url}/volumes/${vol.volumeId}/snapshots?limit=0`), 400);
    // Nothing of the above made a snapshot or a volume.
    expect((await pageMap().listSnapshots(vol.volumeId)).map((x) => x.snapshotId)).toEqual([s.snapshotId]);

    // A fenced key cannot snapshot: register two keys, reserve exclusively for one.
    const reserve = (body: unknown) => http(`${url}/volumes/${vol.volumeId}/reservations`, { method: 'POST', ...json(body) });
    expect((await reserve({ action: 'register', key: 'owner' })).status).toBe(200);
    expect((await reserve({ action: 'register', key: 'intruder' })).status).toBe(200);
    expect((await reserve({ action: 'reserve', key: 'owner', type: 'write-exclusive' })).status).toBe(200);
    const fenced = await http(`${url}/volumes/${vol.volumeId}/snapshots`, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json', 'x-sledge-reservation-key': 'intruder' },
    });
    expect(fenced.status).toBe(409);
    const allowed = await http(`${url}/volumes/${vol.volumeId}/snapshots`, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json', 'x-sledge-reservation-key': 'owner' },
    });
    expect(allowed.status).toBe(201);

    // A deleted volume has no snapshots to take.
    expect((await http(`${url}/volumes/${other.volumeId}`, { method: 'DELETE' })).status).toBe(409);
    expect((await http(`${url}/snapshots/${o.snapshotId}`, { method: 'DELETE' })).status).toBe(202);
    await waitGone(o.snapshotId, other.volumeId);
    expect((await http(`${url}/volumes/${other.volumeId}`, { method: 'DELETE' })).status).toBe(202);
    await expectStatus(http(`${url}/volumes/${other.volumeId}/snapshots`, { method: 'POST', ...json({}) }), 404);
  });
});
