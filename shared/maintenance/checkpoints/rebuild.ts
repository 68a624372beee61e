/**
 * Page-map rebuild (docs/checkpoints.md): the latest readable checkpoint plus the segments
 * committed after it, found by walking the commit chain (each segment's `prev`) back from the
 * volume item's head: segments not on the chain were never committed.
 */
import { randomBytes } from 'node:crypto';
import { config } from '../../core/config.ts';
import { ConflictError, DataUnavailableError } from '../../core/errors.ts';
import { RebuildFenceLostError, segmentRef, type SegmentRecord, type StoredFrozen, type StoredPage, type VolumeRecord } from '../../core/records.ts';
import { isFolding } from '../../data/tail.ts';
import { segmentRecordOf, type SegmentDescriptor } from '../../data/segments.ts';
import { parseObjectChunkKey, placeChunks, type ChunkLocation } from '../../data/sleds.ts';
import { forEachLimited } from '../../core/async.ts';
import { CheckpointFormatError, CheckpointUnreadableError, IO_CONCURRENCY, pad12, samePage, segmentIdSeq } from './format.ts';
import { orderChain, replaySegment } from './chain.ts';
import { canonicalFrozen, frozenId, replayFreezes } from './frozen.ts';
import { listCheckpointSets, readCheckpoint, readDescriptors, readSegmentDescriptor } from './read.ts';
import { chunkStore } from '../../ports.ts';
import { pageMap } from '../../ports.ts';

// ---------------------------------------------------------------------------------------
// Taking a checkpoint

/** Milliseconds spent in each phase of a job, for its report (the bench prints them). */
export function phaseClock<P extends string>(): { lap(phase: P): void; laps: Partial<Record<P, number>> } {
  let last = performance.now();
  const laps: Partial<Record<P, number>> = {};
  return {
    laps,
    lap(phase) {
      const now = performance.now();
      laps[phase] = Math.round(now - last);
      last = now;
    },
  };
}

export interface RebuildReport {
  volumeId: string;
  /** The head the page map was rebuilt to. */
  headSeq: number;
  /** The checkpoint the rebuild started from, or null when it replayed from the first write. */
  checkpoint: { checkpointId: string; seq: number } | null;
  /** Checkpoints tried first and found unreadable, with why. */
  unreadableCheckpoints: Array<{ checkpointId: string; reason: string }>;
  segmentsReplayed: number;
  /** Segments found on the sleds after the checkpoint but not on the commit chain (never committed). */
  segmentsIgnored: number;
  pages: number;
  pagesWritten: number;
  pagesDeleted: number;
  pagesUnchanged: number;
  elapsedMs: number;
  /** Records of referenced segments that were missing and were restored from chunk trailers. */
  segmentRecordsRestored: number;
  /** Referenced segments with no record and no readable chunk trailer: their blocks cannot be read. */
  segmentsUnrecoverable: string[];
  /** The snapshots' frozen pages (docs/checkpoints.md, "Frozen pages"). */
  frozen: FrozenRebuild;
  phasesMs: Partial<Record<'checkpoint' | 'chain' | 'replay' | 'records' | 'write', number>>;
}

/** The base of a rebuild: a readable checkpoint, or the empty map before the first write. */
export interface RebuildBase {
  checkpointId: string | null;
  seq: number;
  headSegmentId: string;
  pages: StoredPage[];
  /** Its frozen pages; null when it predates checkpoints holding them. */
  frozen: StoredFrozen[] | null;
}

/**
 * The newest readable base within `maxDistance` commits of the head: the recorded checkpoint,
 * else older ones found on the sleds (listed only then), else the empty map before the first
 * write if nothing was ever reclaimed. Null if none is within reach.
 */
export async function findBase(v: VolumeRecord, unreadable: RebuildReport['unreadableCheckpoints'], maxDistance = Infinity): Promise<RebuildBase | null> {
  const near = (seq: number) => seq <= v.headSeq && v.headSeq - seq <= maxDistance;
  const tryLoad = async (id: string, opts: { placement?: string; expectedCrc?: number } = {}): Promise<RebuildBase | null> => {
    try {
      const loaded = await readCheckpoint(v, id, opts);
      return { checkpointId: id, seq: loaded.descriptor.seq, headSegmentId: loaded.descriptor.headSegmentId, pages: loaded.pages, frozen: loaded.frozen };
    } catch (err) {
      if (!(err instanceof CheckpointUnreadableError) && !(err instanceof CheckpointFormatError)) throw err;
      unreadable.push({ checkpointId: id, reason: err.message });
      return null;
    }
  };
  if (v.checkpoint && near(v.checkpoint.seq)) {
    const base = await tryLoad(v.checkpoint.id, { placement: v.checkpoint.placement, expectedCrc: v.checkpoint.crc });
    if (base) return base;
  }
  // Older checkpoints are listed only when the recorded one cannot be used: newest first.
  if (!v.checkpoint || near(v.checkpoint.seq)) {
    const older = [...(await listCheckpointSets(v.volumeId)).values()]
      .map((s) => s.set)
      .filter((s) => s.id !== v.checkpoint?.id && near(s.seq))
      .sort((a, b) => b.seq - a.seq);
    for (const set of older) {
      const base = await tryLoad(set.id);
      if (base) return base;
    }
  }
  // No checkpoint was ever retained, so nothing was ever reclaimed: replay from the first write.
  if (v.checkpointFloorSeq === undefined && near(0)) return { checkpointId: null, seq: 0, headSegmentId: '', pages: [], frozen: [] };
  return null;
}

/**
 * Rebuilds a volume's page map from its latest readable checkpoint and the segments committed
 * after it, found on the sleds by walking the commit chain back from the volume item's head.
 * Writes are fenced for the duration (503 for I/O); the result is identical to the map that
 * was checkpointed plus the commits since, versions included. A replacement head runs the
 * same function to recreate its view; on an intact map it writes nothing.
 *
 * @example
 * const report = await rebuildPageMap('vol-0123456789abcdef');
 * console.log(report.segmentsReplayed, report.pagesWritten);
 */
export async function rebuildPageMap(volumeId: string): Promise<RebuildReport> {
  const started = performance.now();
  const token = randomBytes(8).toString('hex');
  const { volume: v, tookOver } = await pageMap().fenceForRebuild(volumeId, token);
  // Whether the stored map may differ from the one this rebuild found fenced: then only a
  // completed rebuild may lift the fence.
  let writing = tookOver;
  try {
    const clock = phaseClock<'checkpoint' | 'chain' | 'replay' | 'records' | 'write'>();
    const unreadableCheckpoints: RebuildReport['unreadableCheckpoints'] = [];
    const base = await findBase(v, unreadableCheckpoints);
    if (!base) {
      throw new DataUnavailableError(
        `volume ${volumeId}: no readable checkpoint (${unreadableCheckpoints.map((u) => u.checkpointId).join(', ') || 'none found'}), ` +
          `and segments up to seq ${v.checkpointFloorSeq} may have been reclaimed; the page map cannot be rebuilt`,
      );
    }
    clock.lap('checkpoint');

    // Segments after the checkpoint, from the sleds alone: their ids start with their seq.
    const listed = await chunkStore().listChunks(volumeId, config().sledBuckets, { startAfterName: `${pad12(base.seq)}.` });
    const bySegment = new Map<string, ChunkLocation[]>();
    // Segments after the head were never committed (the chain starts at the head): not read.
    const beyondHead = new Set<string>();
    for (const c of listed) {
      const parsed = parseObjectChunkKey(c.key);
      const seq = parsed ? segmentIdSeq(parsed.objectId) : null;
      if (!parsed || seq === null || seq <= base.seq) continue;
      if (seq > v.headSeq) {
        beyondHead.add(parsed.objectId);
        continue;
      }
      let list = bySegment.get(parsed.objectId);
      if (!list) bySegment.set(parsed.objectId, (list = []));
      list.push({ bucket: c.bucket, key: c.key });
    }
    // Data chunks first: their trailers are the same, and a healthy volume has them all.
    for (const list of bySegment.values()) list.sort((a, b) => (parseObjectChunkKey(a.key)?.chunkIndex ?? 0) - (parseObjectChunkKey(b.key)?.chunkIndex ?? 0));
    const descriptors = await readDescriptors(volumeId, bySegment);
    let chain: string[];
    try {
      chain = orderChain(descriptors, { seq: v.headSeq, segmentId: v.headSegmentId }, { seq: base.seq, segmentId: base.headSegmentId });
    } catch (err) {
      throw new DataUnavailableError(`volume ${volumeId}: ${(err as Error).message}; the page map cannot be rebuilt`, { cause: err });
    }

    clock.lap('chain');
    // Snapshot tags: the seqs of the volume's snapshot records, ready or being deleted.
    const tags = [...new Set((await pageMap().listSnapshots(volumeId)).map((r) => r.seq))].sort((a, b) => a - b);
    // A checkpoint from before checkpoints held frozen pages says nothing of the copies made up
    // to it; if a snapshot is older than it, those copies cannot be rebuilt and are left as they are.
    const frozenKnown = base.frozen !== null || !tags.some((t) => t < base.seq);
    // The base's copies in canonical form for today's tags first (a purge may have moved them
    // since), so that a replayed commit finds the copy an earlier commit made.
    const frozen = canonicalFrozen(base.frozen ?? [], tags);
    const map = new Map(base.pages.map((p) => [p.page, p]));
    for (const id of chain) {
      const d = descriptors.get(id)!;
      if (frozenKnown) replayFreezes(frozen, map, d, tags, v.pageBlocks);
      replaySegment(map, d, v.pageBlocks);
    }
    const frozenWant = frozenKnown ? canonicalFrozen(frozen.values(), tags) : null;
    clock.lap('replay');

    // Every segment the map references needs its record (reads find chunks and CRCs there):
    // restore lost ones from the chunks' trailers before the pages are written.
    // (Restored records change no page: they do not keep the fence up if the rebuild fails.)
    const records = await restoreSegmentRecords(v, [...map.values(), ...(frozenWant?.values() ?? [])], bySegment, descriptors);
    clock.lap('records');

    const current = new Map<number, StoredPage>();
    for await (const p of pageMap().listStoredPages(volumeId)) current.set(p.page, p);
    // A folding volume's pages are written folded to the head, and the folded point moves there
    // when the fence is lifted (docs/page-map.md, "Folding"): a folder that read a page before
    // this write is refused by it, and one that reads it after finds nothing to fold.
    const folded = v.foldedSeq === undefined ? undefined : { seq: v.headSeq, segmentId: v.headSegmentId };
    const puts = [...map.values()]
      .filter((p) => {
        const have = current.get(p.page);
        return !have || !samePage(have, p);
      })
      .map((p) => (folded ? { ...p, foldedTo: folded.seq } : p));
    const deletes = [...current.keys()].filter((page) => !map.has(page));
    writing ||= puts.length + deletes.length > 0;
    await pageMap().writeRebuiltPages(volumeId, token, puts, deletes);
    const frozenReport = frozenWant
      ? await writeFrozen(v, token, frozenWant, () => {
          writing = true;
        })
      : { rebuilt: false as const, reason: `checkpoint ${base.checkpointId} predates frozen pages in checkpoints and a snapshot is older than it` };
    if (!(await pageMap().unfenceAfterRebuild(volumeId, token, folded))) {
      throw new RebuildFenceLostError(`the rebuild of volume ${volumeId} was taken over by another rebuild before it finished`);
    }
    clock.lap('write');
    return {
      volumeId,
      headSeq: v.headSeq,
      checkpoint: base.checkpointId ? { checkpointId: base.checkpointId, seq: base.seq } : null,
      unreadableCheckpoints,
      segmentsReplayed: chain.length,
      segmentsIgnored: bySegment.size - chain.length + beyondHead.size,
      pages: map.size,
      pagesWritten: puts.length,
      pagesDeleted: deletes.length,
      pagesUnchanged: map.size - puts.length,
      segmentRecordsRestored: records.restored,
      segmentsUnrecoverable: records.unrecoverable,
      frozen: frozenReport,
      elapsedMs: Math.round(performance.now() - started),
      phasesMs: clock.laps,
    };
  } catch (err) {
    // Nothing written (and not taking over a rebuild that may have written): the stored map is
    // as it was before any rebuild, so serving may resume. Otherwise the fence stays until a
    // rebuild completes.
    if (!writing)
      await pageMap()
        .unfenceAfterRebuild(volumeId, token)
        .catch((e) => console.error(`could not lift the rebuild fence of ${volumeId}:`, e));
    if (err instanceof RebuildFenceLostError) throw new ConflictError(err.message, { cause: err });
    throw err;
  }
}

/** What a rebuild did to the frozen pages. */
export type FrozenRebuild =
  | { rebuilt: true; frozenPages: number; written: number; deleted: number; unchanged: number; purgeRunning: boolean }
  | { rebuilt: false; reason: string };

/**
 * Makes the stored frozen pages equal `want`: writes those missing or different, deletes those
 * `want` lacks (copies under tags no record names, which no read uses). A purge that held its
 * lock before the fence may still be moving copies: then only missing copies are written, and
 * nothing is overwritten or deleted (a purge cannot start during the rebuild: its lock needs an
 * active volume).
 */
async function writeFrozen(v: VolumeRecord, token: string, want: ReadonlyMap<string, StoredFrozen>, onWrite: () => void): Promise<FrozenRebuild> {
  const live = new Map<string, StoredFrozen>();
  for await (const f of pageMap().listStoredFrozen(v.volumeId)) live.set(frozenId(f.tag, f.page), f);
  const purgeRunning = v.snapPurge !== undefined;
  const puts = [...want.entries()].filter(([id, f]) => {
    const have = live.get(id);
    return !have || (!purgeRunning && !samePage(have, f));
  });
  const deletes = purgeRunning ? [] : [...live.entries()].filter(([id]) => !want.has(id)).map(([, f]) => ({ tag: f.tag, page: f.page }));
  if (puts.length + deletes.length > 0) onWrite();
  await pageMap().writeRebuiltFrozen(
    v.volumeId,
    token,
    puts.map(([, f]) => f),
    deletes,
  );
  return { rebuilt: true, frozenPages: want.size, written: puts.length, deleted: deletes.length, unchanged: want.size - puts.length, purgeRunning };
}

/**
 * Restores the records of segments that `pages` (live and frozen) reference and the Segments table lacks (a lost
 * or rolled-back table), from the trailers of their chunks on the sleds: the descriptor holds
 * everything a record does but the chunk locations, which are where the chunks are found (a
 * chunk found nowhere keeps the key it would have, and reads rebuild it from the others).
 * Existing records are never overwritten. Returns how many were restored, and the segments
 * that have no readable trailer left anywhere.
 */
async function restoreSegmentRecords(
  v: VolumeRecord,
  pages: readonly StoredPage[],
  listedAfterBase: ReadonlyMap<string, ChunkLocation[]>,
  descriptors: ReadonlyMap<string, SegmentDescriptor>,
): Promise<{ restored: number; unrecoverable: string[] }> {
  const own = `${v.volumeId}/`;
  const referenced = new Set<string>();
  for (const p of pages) for (const ref of p.segs) if (ref.startsWith(own)) referenced.add(ref.slice(own.length));
  if (referenced.size === 0) return { restored: 0, unrecoverable: [] };
  const existing = await pageMap().getSegmentRecords([...referenced].map((id) => segmentRef(v.volumeId, id)));
  const lost = [...referenced].filter((id) => !existing.has(segmentRef(v.volumeId, id))).sort();
  if (lost.length === 0) return { restored: 0, unrecoverable: [] };
  console.warn(JSON.stringify({ msg: 'segment records missing; restoring them from the sleds', volumeId: v.volumeId, segments: lost.length }));
  // Where the chunks are: the rebuild's listing covers segments after its checkpoint; older
  // ones need one listing of the whole volume.
  let where: ReadonlyMap<string, ChunkLocation[]> = listedAfterBase;
  if (lost.some((id) => !listedAfterBase.has(id))) {
    const all = new Map<string, ChunkLocation[]>();
    const wanted = new Set(lost);
    for (const c of await chunkStore().listChunks(v.volumeId, config().sledBuckets)) {
      const parsed = parseObjectChunkKey(c.key);
      if (!parsed || !wanted.has(parsed.objectId)) continue;
      let list = all.get(parsed.objectId);
      if (!list) all.set(parsed.objectId, (list = []));
      list.push({ bucket: c.bucket, key: c.key });
    }
    for (const list of all.values()) list.sort((a, b) => (parseObjectChunkKey(a.key)?.chunkIndex ?? 0) - (parseObjectChunkKey(b.key)?.chunkIndex ?? 0));
    where = all;
  }
  let restored = 0;
  const unrecoverable: string[] = [];
  await forEachLimited(lost, IO_CONCURRENCY, async (segmentId) => {
    const found = where.get(segmentId) ?? [];
    const d = descriptors.get(segmentId) ?? (await readSegmentDescriptor(v.volumeId, segmentId, found));
    if (!d) {
      unrecoverable.push(segmentId);
      return;
    }
    const n = d.k + d.m;
    const planned = placeChunks(v.volumeId, segmentId, n, config().sledBuckets);
    const locations = Array.from({ length: n }, (_, i) => found.find((l) => parseObjectChunkKey(l.key)?.chunkIndex === i) ?? planned[i]!);
    const record: SegmentRecord = segmentRecordOf(d, locations);
    // A folding volume's records carry their extents, as its commits wrote them (docs/page-map.md, "Folding").
    if (isFolding(v)) record.extents = d.extents;
    if (await pageMap().putSegmentRecordIfAbsent(record)) restored++;
  });
  if (unrecoverable.length > 0) {
    console.error(
      JSON.stringify({
        msg: 'segments referenced by the page map have no record and no readable chunk; their blocks cannot be read',
        volumeId: v.volumeId,
        segments: unrecoverable.sort(),
      }),
    );
  }
  return { restored, unrecoverable: unrecoverable.sort() };
}
