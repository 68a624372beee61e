/**
 * The read path: page items to segment ranges, segment records through a bounded cache, and
 * verified ranged reads that follow chunks an evacuation moved (docs/page-map.md, "Reads").
 * Also the cache of volume geometry that writes use to read pages with the volume item.
 */
import { DataUnavailableError, FencedError, invariant } from '../core/errors.ts';
import { clip, type Extent } from './extents.ts';
import { type SegmentRecord, type VolumeRecord } from '../core/records.ts';
import { isRememberedLost, readPayload, type PayloadRange, type ReadReport } from './segment-reader.ts';
import { readRefusal } from '../control/reservations.ts';
import { MAX_IO_BYTES, checkRange, requireActive } from './volume-rules.ts';
import { pageMap } from '../ports.ts';
import { liveViewPoint, requireSnapshot, snapshotViewPoint, viewExtents } from './views.ts';
import { livePages } from './tail.ts';

/** The parts of a volume record that never change after creation. */
/** What never changes about a volume; `folding` too (fixed at creation, docs/page-map.md, "Folding"). */
type Geometry = Pick<VolumeRecord, 'volumeId' | 'blockSizeBytes' | 'pageBlocks'> & { folding?: boolean };

export const geometryCache = new Map<string, Geometry>();

const GEOMETRY_CACHE_MAX = 4096;

export function rememberGeometry(v: VolumeRecord): void {
  if (geometryCache.has(v.volumeId)) return;
  if (geometryCache.size >= GEOMETRY_CACHE_MAX) geometryCache.delete(geometryCache.keys().next().value!);
  geometryCache.set(v.volumeId, { volumeId: v.volumeId, blockSizeBytes: v.blockSizeBytes, pageBlocks: v.pageBlocks, folding: v.foldedSeq !== undefined });
}

/** Page numbers covering a block-aligned byte range. */
export function pageRange(g: Geometry, offset: number, length: number): number[] {
  const first = offset / g.blockSizeBytes;
  const end = first + length / g.blockSizeBytes;
  const pages: number[] = [];
  for (let p = Math.floor(first / g.pageBlocks); p * g.pageBlocks < end; p++) pages.push(p);
  return pages;
}

/** Bounded cache of segment records (and when each was read); they are immutable apart from chunk locations. */
const segmentCache = new Map<string, { rec: SegmentRecord; atMs: number }>();

const SEGMENT_CACHE_MAX = 4096;

/**
 * A cached record with a chunk this process remembers lost is read again once it is this old:
 * the chunk's repair (docs/evacuation.md, "Read repair") moves it, and reads that keep asking
 * the other chunks instead would not find out until the chunk is forgotten (10 minutes).
 */
export const LOST_CHUNK_RECORD_RECHECK_MS = 60_000;

function rememberSegment(ref: string, rec: SegmentRecord): void {
  if (!segmentCache.has(ref) && segmentCache.size >= SEGMENT_CACHE_MAX) segmentCache.delete(segmentCache.keys().next().value!);
  segmentCache.set(ref, { rec, atMs: Date.now() });
}

/** A cached record, unless it is due to be read again (a chunk remembered lost, read long enough ago). */
function cachedSegment(ref: string): SegmentRecord | undefined {
  const hit = segmentCache.get(ref);
  if (!hit) return undefined;
  if (Date.now() - hit.atMs >= LOST_CHUNK_RECORD_RECHECK_MS && hit.rec.locations.some((l) => isRememberedLost(l))) return undefined;
  return hit.rec;
}

/** Drops a segment's record from this process's cache (after it moved a chunk or deleted it). */
export function forgetSegment(ref: string): void {
  segmentCache.delete(ref);
}

/** The records of segments `refs` (cached); a referenced segment without a record is DataUnavailableError. */
export async function segmentRecordsFor(refs: string[]): Promise<Map<string, SegmentRecord>> {
  const out = new Map<string, SegmentRecord>();
  const missing: string[] = [];
  for (const ref of refs) {
    const hit = cachedSegment(ref);
    if (hit) out.set(ref, hit);
    else missing.push(ref);
  }
  if (missing.length > 0) {
    const fetched = await pageMap().getSegmentRecords(missing);
    for (const [ref, rec] of fetched) {
      out.set(ref, rec);
      rememberSegment(ref, rec);
    }
  }
  const lost = refs.filter((ref) => !out.has(ref));
  if (lost.length > 0) {
    throw new DataUnavailableError(
      `the page map references segment ${lost[0]}${lost.length > 1 ? ` and ${lost.length - 1} more` : ''} with no segment record; ` +
        `rebuilding the page map (POST /volumes/{volumeId}/rebuild or \`sledge rebuild\`) restores records from the sleds`,
    );
  }
  return out;
}

/**
 * Reads `length` bytes at `offset`. Never-written and trimmed blocks read as zeros.
 *
 * @example
 * const bytes = await readData(id, 0, 4096);
 */
export async function readData(
  volumeId: string,
  offset: number,
  length: number,
  report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 },
  key?: string,
  allocate?: (bytes: number) => Buffer,
): Promise<Buffer> {
  const view = await readView(volumeId, offset, length, key);
  return readExtents(view.extents, view.first, length, view.blockSizeBytes, report, allocate);
}

/** What a read of a live volume's range sees: its extents (data and zeros) from block `first`. */
export interface ReadView {
  first: number;
  blockSizeBytes: number;
  extents: Extent[];
}

/**
 * The page-map part of a read (`readData` and read plans): checks the volume, the reservation
 * and the range, and returns the extents of the range as a read sees them.
 */
export async function readView(volumeId: string, offset: number, length: number, key?: string, maxLength: number = MAX_IO_BYTES): Promise<ReadView> {
  // A volume's geometry never changes, so once known, its pages are read in the same request
  // as the volume item (which still decides existence, state and size).
  const known = geometryCache.get(volumeId);
  const plausible = Number.isSafeInteger(offset) && offset >= 0 && length > 0 && length <= maxLength;
  const together = known && plausible && offset % known.blockSizeBytes === 0 && length % known.blockSizeBytes === 0;
  // Anything implausible is refused below, after a volume read only. Pages beyond one
  // BatchGetItem with the volume (a long plan of small pages) are read after it.
  const wanted = together ? pageRange(known, offset, length) : [];
  const both = together && wanted.length <= 99 ? await pageMap().getVolumeWithPages(known, wanted) : null;
  const fresh = both ? both.volume : await pageMap().getVolume(volumeId);
  const early = both?.pages ?? null;
  const v = requireActive(fresh, volumeId);
  rememberGeometry(v);
  const refusal = readRefusal(volumeId, v.reservations, key);
  if (refusal) throw new FencedError(refusal);
  checkRange(v, offset, length, maxLength);
  const bs = v.blockSizeBytes;
  const first = offset / bs;
  const end = first + length / bs;
  const pageNums = pageRange(v, offset, length);
  // On a folding volume the tail up to the head read is laid over the page items (docs/page-map.md, "Folding").
  const pages = await livePages(v, pageNums, early ?? undefined);
  const extents = v.parent ? await viewExtents(liveViewPoint(v), first, end, pages) : pageNums.flatMap((p) => clip(pages.get(p)?.extents ?? [], first, end));
  return { first, blockSizeBytes: bs, extents };
}

/**
 * Reads `length` bytes at `offset` of a snapshot (docs/snapshots.md): as the volume read right
 * after the snapshot's commit. Blocks never written anywhere in the chain read as zeros.
 */
export async function readSnapshotData(
  snapshotId: string,
  offset: number,
  length: number,
  report: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 },
  allocate?: (bytes: number) => Buffer,
): Promise<Buffer> {
  const { snapshot, volume } = await requireSnapshot(snapshotId);
  checkRange({ ...volume, sizeBytes: snapshot.sizeBytes }, offset, length, MAX_IO_BYTES);
  const bs = volume.blockSizeBytes;
  const first = offset / bs;
  const extents = await viewExtents(snapshotViewPoint(volume, snapshot), first, first + length / bs);
  return readExtents(extents, first, length, bs, report, allocate);
}

/**
 * Reads the data extents among `extents` (blocks from `first`) into a zeroed buffer of `length`
 * bytes: `allocate(length)` when given (the range is checked by then), else a new one.
 */
export async function readExtents(
  all: readonly Extent[],
  first: number,
  length: number,
  bs: number,
  report: ReadReport,
  allocate: (bytes: number) => Buffer = Buffer.allocUnsafe,
): Promise<Buffer> {
  const extents = all.filter((e) => e.seg !== null);
  // Uninitialized, then zeroed wherever no data extent lands; the data is read straight into it.
  const out = allocate(length);
  invariant(out.length === length, 'allocator returned a buffer of the wrong size');
  const end = first + length / bs;
  let cursor = first;
  for (const e of [...extents].sort((a, b) => a.first - b.first)) {
    if (e.first > cursor) out.fill(0, (cursor - first) * bs, (Math.min(e.first, end) - first) * bs);
    cursor = Math.max(cursor, e.first + e.count);
  }
  if (cursor < end) out.fill(0, (cursor - first) * bs);
  const bySegment = new Map<string, Extent[]>();
  for (const e of extents) {
    let list = bySegment.get(e.seg!);
    if (!list) bySegment.set(e.seg!, (list = []));
    list.push(e);
  }
  const records = await segmentRecordsFor([...bySegment.keys()]);
  await Promise.all(
    [...bySegment].map(async ([ref, list]) => {
      const ranges: PayloadRange[] = list.map((e) => ({ start: e.segBlock * bs, end: (e.segBlock + e.count) * bs }));
      const targets = list.map((e) => out.subarray((e.first - first) * bs, (e.first - first + e.count) * bs));
      await readSegmentFollowingMoves(ref, records.get(ref)!, ranges, report, targets);
    }),
  );
  return out;
}

/** The longest range one allocation query covers: 256 pages of 1 MiB at the default geometry. */
export const MAX_ALLOCATION_BYTES = 256 * 1024 * 1024;

/** A run of a volume's address space that holds data (`zero: false`) or reads as zeros (never written, trimmed, zeroed). */
export interface AllocationRun {
  offset: number;
  length: number;
  zero: boolean;
}

/**
 * Which parts of [offset, offset + length) hold data, from the page map alone (no chunk is
 * read): runs in address order, adjacent runs of one kind merged, covering the range exactly.
 * For NBD block status (`base:allocation`): clients skip the zero runs.
 */
export async function readAllocation(volumeId: string, offset: number, length: number, key?: string): Promise<AllocationRun[]> {
  const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
  rememberGeometry(v);
  const refusal = readRefusal(volumeId, v.reservations, key);
  if (refusal) throw new FencedError(refusal);
  checkRange(v, offset, length, MAX_ALLOCATION_BYTES);
  const bs = v.blockSizeBytes;
  const first = offset / bs;
  const end = first + length / bs;
  const pageNums = pageRange(v, offset, length);
  const pages = await livePages(v, pageNums);
  // A clone's uncovered blocks read through to its parent snapshot: they are allocated there.
  const extents = v.parent ? await viewExtents(liveViewPoint(v), first, end, pages) : pageNums.flatMap((p) => clip(pages.get(p)?.extents ?? [], first, end));
  const runs: AllocationRun[] = [];
  const push = (fromBlock: number, toBlock: number, zero: boolean) => {
    if (toBlock <= fromBlock) return;
    const last = runs[runs.length - 1];
    if (last && last.zero === zero && last.offset + last.length === fromBlock * bs) last.length += (toBlock - fromBlock) * bs;
    else runs.push({ offset: fromBlock * bs, length: (toBlock - fromBlock) * bs, zero });
  };
  let pos = first;
  for (const e of extents) {
    push(pos, e.first, true);
    push(e.first, e.first + e.count, e.seg === null);
    pos = e.first + e.count;
  }
  push(pos, end, true);
  return runs;
}

function sameLocations(a: SegmentRecord, b: SegmentRecord): boolean {
  return a.locations.length === b.locations.length && a.locations.every((l, i) => l.bucket === b.locations[i]!.bucket && l.key === b.locations[i]!.key);
}

/**
 * Reads ranges of one segment. The record may come from the cache and be older than an
 * evacuation that moved a chunk: a 404 (or a segment that cannot be rebuilt) makes the reader
 * read the record again and, if a location changed, read once more with it
 * (docs/evacuation.md, section 5).
 */
async function readSegmentFollowingMoves(ref: string, rec: SegmentRecord, ranges: PayloadRange[], report: ReadReport, targets?: Buffer[]): Promise<Buffer[]> {
  const first: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0, missingChunks: 0 };
  let parts: Buffer[] | undefined;
  let failure: unknown;
  // The record is read again as soon as a chunk answers 404, while the rebuild goes on. A 404
  // seen before the read still orders it after a mover's record update (the mover deletes the
  // old chunk only after updating the record), as when it was read after the rebuild.
  let freshRecord: Promise<SegmentRecord | null> | undefined;
  const readRecordAgain = () => {
    if (freshRecord) return;
    freshRecord = pageMap().getSegmentRecord(rec.volumeId, rec.segmentId);
    // Awaited below whenever a chunk was missing; this only keeps an early throw from leaving it unhandled.
    freshRecord.catch(() => {});
  };
  try {
    parts = await readPayload(rec, ranges, first, targets, readRecordAgain);
  } catch (err) {
    if (!(err instanceof DataUnavailableError)) throw err;
    failure = err;
  }
  const merge = (r: ReadReport) => {
    report.rangedGets += r.rangedGets;
    report.badGranules += r.badGranules;
    report.rebuiltGranules += r.rebuiltGranules;
    report.missingChunks = (report.missingChunks ?? 0) + (r.missingChunks ?? 0);
    report.getRounds = Math.max(report.getRounds ?? 0, r.getRounds ?? 0);
  };
  if (!failure && !first.missingChunks) {
    merge(first);
    return parts!;
  }
  segmentCache.delete(ref);
  const fresh = await (freshRecord ?? pageMap().getSegmentRecord(rec.volumeId, rec.segmentId));
  if (fresh) rememberSegment(ref, fresh);
  if (!fresh || sameLocations(fresh, rec)) {
    merge(first);
    if (failure) throw failure;
    return parts!;
  }
  // A chunk moved: the first attempt's rebuild work is not what the client should see.
  report.rangedGets += first.rangedGets;
  report.missingChunks = (report.missingChunks ?? 0) + (first.missingChunks ?? 0);
  const second: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0, missingChunks: 0 };
  const out = await readPayload(fresh, ranges, second, targets);
  merge({ ...second, getRounds: (first.getRounds ?? 0) + (second.getRounds ?? 0) });
  return out;
}
