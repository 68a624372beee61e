/**
 * Replaying committed segments onto a page map, walking the commit chain, and choosing which
 * checkpoints to keep: pure functions (docs/checkpoints.md).
 */
import { decodePage, encodePage, overlay, splitByPage, type Extent } from '../../data/extents.ts';
import { segmentRef, type StoredPage } from '../../core/records.ts';
import { type SegmentDescriptor } from '../../data/segments.ts';
import { ChainBrokenError } from './format.ts';

// ---------------------------------------------------------------------------------------
// Replay and the chain (pure)

/** A segment's extents as the page map sees them (what its commit laid over the pages). */
export function incomingExtents(d: Pick<SegmentDescriptor, 'volumeId' | 'segmentId' | 'extents'>): Extent[] {
  const ref = segmentRef(d.volumeId, d.segmentId);
  return d.extents.map(([first, count, offset]) => (offset < 0 ? { first, count, seg: null, segBlock: 0 } : { first, count, seg: ref, segBlock: offset }));
}

/** The pages a segment's commit changed (each got version + 1). */
export function touchedPages(d: Pick<SegmentDescriptor, 'volumeId' | 'segmentId' | 'extents'>, pageBlocks: number): number[] {
  return [...splitByPage(incomingExtents(d), pageBlocks).keys()];
}

/**
 * Applies one committed segment to a page map exactly as its commit did (docs/page-map.md,
 * step 4): each touched page gets the segment's extents laid over its own, and version + 1.
 */
export function replaySegment(
  map: Map<number, StoredPage>,
  d: Pick<SegmentDescriptor, 'volumeId' | 'segmentId' | 'extents' | 'pages'>,
  pageBlocks: number,
): void {
  for (const [page, top] of splitByPage(incomingExtents(d), pageBlocks)) {
    const old = map.get(page);
    const extents = overlay(old ? decodePage(old, page, pageBlocks) : [], top);
    const enc = encodePage(extents, page, pageBlocks);
    map.set(page, { page, version: (old?.version ?? 0) + 1, segs: enc.segs, ext: enc.ext });
  }
  // A rollback's commit replaces pages whole (docs/snapshots.md, "Rollback").
  for (const [page, segs, ext] of d.pages ?? []) {
    const old = map.get(page);
    map.set(page, { page, version: (old?.version ?? 0) + 1, segs, ext: new Uint8Array(Buffer.from(ext, 'base64')) });
  }
}

/**
 * The committed segments after `base`, oldest first: walks from `head` through each
 * descriptor's `prev`. Each step must go down by exactly one seq, and the walk must arrive at
 * `base.segmentId` at `base.seq`. Descriptors in `byId` that the walk does not reach (a lost
 * race, a crash before commit, a fenced writer) are ignored.
 */
export function orderChain(
  byId: ReadonlyMap<string, Pick<SegmentDescriptor, 'segmentId' | 'seq' | 'prev'>>,
  head: { seq: number; segmentId: string },
  base: { seq: number; segmentId: string },
): string[] {
  if (head.seq < base.seq) throw new ChainBrokenError(`the head (seq ${head.seq}) is older than the checkpoint (seq ${base.seq})`);
  const out: string[] = [];
  let id = head.segmentId;
  for (let seq = head.seq; seq > base.seq; seq--) {
    const d = byId.get(id);
    if (!d) throw new ChainBrokenError(`segment ${id} (seq ${seq}) is on the commit chain but no chunk of it with a readable trailer is on the sleds`);
    if (d.seq !== seq) throw new ChainBrokenError(`segment ${id} is at seq ${d.seq} on the chain where seq ${seq} belongs`);
    out.push(id);
    id = d.prev;
  }
  if (id !== base.segmentId) {
    throw new ChainBrokenError(
      `the commit chain reaches seq ${base.seq} at segment ${id || '(none)'}, but the checkpoint was taken at ${base.segmentId || '(none)'}`,
    );
  }
  return out.reverse();
}

export interface CheckpointSet {
  id: string;
  seq: number;
  /** Distinct chunk indexes found on the sleds. */
  chunks: number;
  /** When its newest chunk was written. */
  lastModifiedMs: number;
}

/**
 * Which checkpoint object sets to keep and to delete, and the new floor. Kept: the recorded
 * latest and the newest `retain - 1` readable sets before it. Deleted: the rest at or before
 * it, including sets at the latest's own seq (a pointer only moves to a strictly newer seq, so
 * they can never be recorded: they are duplicates whose job is deleting them or crashed) and
 * unreadable ones (fewer than k chunks). Sets newer than the recorded one are left alone for
 * `graceMs` (their job may still be recording them), then deleted. Ages are measured against
 * `nowMs`, which callers take from the sleds' own clock (the newest chunk listed).
 */
export function planRetention(
  sets: readonly CheckpointSet[],
  latest: { id: string; seq: number },
  opts: { retain: number; k: number; nowMs: number; graceMs: number },
): { keep: string[]; remove: string[]; floorSeq: number } {
  const older = sets.filter((s) => s.seq <= latest.seq && s.id !== latest.id);
  const readable = older.filter((s) => s.seq < latest.seq && s.chunks >= opts.k).sort((a, b) => b.seq - a.seq || a.id.localeCompare(b.id));
  const keep = [latest.id, ...readable.slice(0, Math.max(0, opts.retain - 1)).map((s) => s.id)];
  const keepSet = new Set(keep);
  const remove = [
    ...older.filter((s) => !keepSet.has(s.id)).map((s) => s.id),
    ...sets.filter((s) => s.seq > latest.seq && opts.nowMs - s.lastModifiedMs > opts.graceMs).map((s) => s.id),
  ];
  const seqs = new Map(sets.map((s) => [s.id, s.seq]));
  const floorSeq = Math.min(latest.seq, ...keep.map((id) => seqs.get(id) ?? latest.seq));
  return { keep, remove, floorSeq };
}
