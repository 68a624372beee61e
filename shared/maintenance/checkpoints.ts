/**
 * Metadata checkpoints on the sleds and page-map rebuild. The protocol, its failure cases and
 * the designs rejected are in docs/checkpoints.md; this file is its only implementation.
 *
 * A checkpoint is the page map of a volume as of one commit seq, stored like a segment:
 * erasure-coded k+m on distinct sleds, checksummed per granule and as a whole, with a
 * self-describing trailer. A rebuild reads the latest readable checkpoint and replays the
 * segments committed after it, which it finds by walking the commit chain (each segment's
 * `prev`) back from the volume item's head: segments not on the chain were never committed.
 */
import { randomBytes } from 'node:crypto';
import { sendCheckpointMessages, sendCheckpointMessage, DEFAULT_CHECKPOINT_EVERY_COMMITS } from './checkpoint-messages.ts';
import { config } from '../core/config.ts';
import { crc32c } from '../data/crc32c.ts';
import { ConflictError, DataUnavailableError, InvalidInputError, NotFoundError, UnavailableError, invariant } from '../core/errors.ts';
import { decodePage, encodePage, overlay, splitByPage, type Extent } from '../data/extents.ts';
import { RebuildFenceLostError, segmentRef, type CheckpointPointer, type SegmentRecord, type StoredPage, type VolumeRecord } from '../core/records.ts';
import { fenceForRebuild, getVolume, listVolumes, raiseCheckpointFloor, recordCheckpoint, unfenceAfterRebuild } from '../aws/pagemap/volumes.ts';
import { getSegmentRecords, getStoredPages, listSegmentRecordsBetween, listStoredPages, putSegmentRecordIfAbsent } from '../aws/pagemap/pages.ts';
import { writeRebuiltPages } from '../aws/pagemap/transactions.ts';
import { readPayload } from '../data/segment-reader.ts';
import { GRANULE_BYTES, decodeTrailer, encodeStripes, encodeTrailer, parseTrailer, trailerBytesIn, type SegmentDescriptor } from '../data/segments.ts';
import { chunkKey, deleteChunk, driveName, getChunkTail, listChunks, parseObjectChunkKey, placeChunks, type ChunkLocation, type VolumeChunk } from '../data/sleds.ts';
import { deleteChunksQuietly, uploadChunksAt } from '../data/upload.ts';
import { forEachLimited } from '../core/async.ts';

/** How many checkpoints a volume keeps; older ones are reclaimed (docs/checkpoints.md). */
export const CHECKPOINT_RETAIN = 3;
/** A checkpoint object set newer than the recorded one is left alone this long (its job may be running). */
export const CHECKPOINT_GRACE_MS = 60 * 60 * 1000;
/** The largest checkpoint payload a worker builds in memory (about a 16 TiB volume written everywhere). */
export const CHECKPOINT_PAYLOAD_MAX_BYTES = 512 * 1024 * 1024;
/** Rounds of re-reading pages changed by commits during a checkpoint's scan. */
const SETTLE_ROUNDS_MAX = 8;
/**
 * A checkpoint replays at most this many segments onto the previous one (one trailer GET
 * each); further back, it scans the live page map instead (docs/checkpoints.md).
 */
export const CHECKPOINT_REPLAY_SEGMENTS_MAX = 4096;
/** Parallel trailer reads and deletes. */
const IO_CONCURRENCY = 16;
/** Checkpoint data chunks are whole multiples of this. */
const CHECKPOINT_ALIGN_BYTES = 4096;
/** Bytes fetched from the end of a chunk to find its trailer; a longer trailer costs a second GET. */
const TAIL_GUESS_BYTES = 16 * 1024;
/** Volumes scanned per sweep message. */
export const SWEEP_VOLUMES_PER_MESSAGE = 100;
const CHECKPOINT_ID_PREFIX = 'ckpt-';

export const CHECKPOINT_FOOTER_MAGIC = Buffer.from('SLDGCKP1', 'ascii');
const PAYLOAD_MAGIC = Buffer.from('SLDGMAP1', 'ascii');

/** Raised when a checkpoint cannot be read back intact (too few chunks, a bad checksum). */
export class CheckpointUnreadableError extends Error {
  override name = 'CheckpointUnreadableError';
}

/** Raised when the commit chain cannot be walked from the head down to the checkpoint. */
export class ChainBrokenError extends Error {
  override name = 'ChainBrokenError';
}

/** Raised when a checkpoint payload is malformed. */
export class CheckpointFormatError extends Error {
  override name = 'CheckpointFormatError';
}

// ---------------------------------------------------------------------------------------
// Ids, descriptors and placement

const pad12 = (seq: number) => String(seq).padStart(12, '0');

/** `ckpt-<seq, 12 digits>-<8 random hex>`: sorts by seq, unique when jobs race. */
export function newCheckpointId(seq: number): string {
  invariant(Number.isSafeInteger(seq) && seq > 0 && seq < 1e12, () => `bad checkpoint sequence ${seq}`);
  return `${CHECKPOINT_ID_PREFIX}${pad12(seq)}-${randomBytes(4).toString('hex')}`;
}

/** The seq in a checkpoint id, or null if `id` is not one. */
export function checkpointIdSeq(id: string): number | null {
  const m = /^ckpt-(\d{12})-[0-9a-f]{8}$/.exec(id);
  return m ? Number(m[1]) : null;
}

/** The seq in a segment id, or null if `id` is not one. */
function segmentIdSeq(id: string): number | null {
  const m = /^(\d{12})-[0-9a-f]{8}$/.exec(id);
  return m ? Number(m[1]) : null;
}

/** What every chunk's trailer says about its checkpoint. */
export interface CheckpointDescriptor {
  v: 1;
  kind: 'checkpoint';
  volumeId: string;
  checkpointId: string;
  /** The commit seq the page map is as of. */
  seq: number;
  /** The segment committed at `seq` ('' for seq 0): where a rebuild's chain walk must arrive. */
  headSegmentId: string;
  k: number;
  m: number;
  chunkSizeBytes: number;
  granuleBytes: number;
  payloadBytes: number;
  payloadCrc: number;
  pages: number;
  /** How the map was built: `replay` (a previous checkpoint plus the committed segments) or `scan` (of the live items). */
  method: 'replay' | 'scan';
  /** Whether the map was checked page by page against the live page items before writing. */
  verified: boolean;
  crcs: number[][];
  createdAt: string;
}

/** `<sled index>/<drive>` per chunk, comma-joined: the compact location kept on the volume item. */
export function formatPlacement(locations: readonly ChunkLocation[], buckets: readonly string[]): string {
  return locations
    .map((l) => {
      const sled = buckets.indexOf(l.bucket);
      const parsed = parseObjectChunkKey(l.key);
      invariant(sled >= 0 && parsed, () => `chunk ${l.bucket}/${l.key} is not on a known sled`);
      return `${sled}/${parsed.drive}`;
    })
    .join(',');
}

/** The chunk locations a placement names, or null for a chunk whose sled is not in `buckets`. */
export function parsePlacement(placement: string, volumeId: string, checkpointId: string, buckets: readonly string[]): Array<ChunkLocation | null> {
  return placement.split(',').map((part, i) => {
    const m = /^(\d+)\/(d\d{2})$/.exec(part);
    const bucket = m ? buckets[Number(m[1])] : undefined;
    return bucket && m ? { bucket, key: chunkKey(m[2]!, volumeId, checkpointId, i) } : null;
  });
}

// ---------------------------------------------------------------------------------------
// The payload: the page map in stored form (pure)

/**
 * Encodes pages (any order; written in page order) as a checkpoint payload: a string table of
 * segment references, then per page its version, its `segs` as table indexes, and its `ext`
 * bytes verbatim (format in docs/checkpoints.md).
 *
 * @example
 * const payload = encodeCheckpointPayload([{ page: 0, version: 1, segs: ['vol-1/000000000001-ab12cd34'], ext }]);
 * decodeCheckpointPayload(payload); // the same page back
 */
export function encodeCheckpointPayload(pages: Iterable<StoredPage>): Buffer {
  const sorted = [...pages].sort((a, b) => a.page - b.page);
  const table = new Map<string, number>();
  for (const p of sorted) for (const s of p.segs) if (!table.has(s)) table.set(s, table.size);
  const strings = [...table.keys()].map((s) => Buffer.from(s, 'utf8'));
  let size = 8 + 4 + strings.reduce((n, b) => n + 2 + b.length, 0) + 4;
  for (const p of sorted) size += 4 + 6 + 2 + 4 * p.segs.length + 4 + p.ext.length;
  invariant(size <= CHECKPOINT_PAYLOAD_MAX_BYTES, () => `checkpoint payload of ${size} bytes is over the limit of ${CHECKPOINT_PAYLOAD_MAX_BYTES}`);
  const out = Buffer.alloc(size);
  let o = PAYLOAD_MAGIC.copy(out, 0);
  o = out.writeUInt32BE(strings.length, o);
  for (const b of strings) {
    invariant(b.length <= 0xffff, 'segment reference longer than 65535 bytes');
    o = out.writeUInt16BE(b.length, o);
    o += b.copy(out, o);
  }
  o = out.writeUInt32BE(sorted.length, o);
  for (let i = 0; i < sorted.length; i++) {
    const p = sorted[i]!;
    invariant(i === 0 || sorted[i - 1]!.page < p.page, () => `page ${p.page} appears twice`);
    invariant(Number.isSafeInteger(p.version) && p.version >= 0 && p.version < 2 ** 48, () => `page ${p.page}: version ${p.version} does not fit 48 bits`);
    invariant(p.ext.length % 10 === 0 && p.segs.length <= 0xffff, () => `page ${p.page}: malformed stored page`);
    o = out.writeUInt32BE(p.page, o);
    o = out.writeUIntBE(p.version, o, 6);
    o = out.writeUInt16BE(p.segs.length, o);
    for (const s of p.segs) o = out.writeUInt32BE(table.get(s)!, o);
    o = out.writeUInt32BE(p.ext.length, o);
    o += Buffer.from(p.ext.buffer, p.ext.byteOffset, p.ext.byteLength).copy(out, o);
  }
  invariant(o === size, 'checkpoint payload size miscounted');
  return out;
}

/** Decodes a checkpoint payload; any malformation is a CheckpointFormatError. */
export function decodeCheckpointPayload(payload: Buffer): StoredPage[] {
  let o = 0;
  const need = (n: number) => {
    if (o + n > payload.length) throw new CheckpointFormatError(`checkpoint payload ends at ${payload.length}, needed ${o + n}`);
  };
  need(12);
  if (!payload.subarray(0, 8).equals(PAYLOAD_MAGIC)) throw new CheckpointFormatError('checkpoint payload magic missing');
  o = 8;
  const stringCount = payload.readUInt32BE(o);
  o += 4;
  const strings: string[] = [];
  for (let i = 0; i < stringCount; i++) {
    need(2);
    const len = payload.readUInt16BE(o);
    o += 2;
    need(len);
    strings.push(payload.toString('utf8', o, o + len));
    o += len;
  }
  need(4);
  const pageCount = payload.readUInt32BE(o);
  o += 4;
  const pages: StoredPage[] = [];
  for (let i = 0; i < pageCount; i++) {
    need(12);
    const page = payload.readUInt32BE(o);
    const version = payload.readUIntBE(o + 4, 6);
    const segCount = payload.readUInt16BE(o + 10);
    o += 12;
    need(4 * segCount + 4);
    const segs: string[] = [];
    for (let j = 0; j < segCount; j++, o += 4) {
      const s = strings[payload.readUInt32BE(o)];
      if (s === undefined) throw new CheckpointFormatError(`page ${page}: segment index out of range`);
      segs.push(s);
    }
    const extBytes = payload.readUInt32BE(o);
    o += 4;
    need(extBytes);
    if (extBytes % 10 !== 0) throw new CheckpointFormatError(`page ${page}: extent bytes ${extBytes} not a multiple of 10`);
    if (pages.length > 0 && pages[pages.length - 1]!.page >= page) throw new CheckpointFormatError(`page ${page} out of order`);
    pages.push({ page, version, segs, ext: new Uint8Array(payload.subarray(o, o + extBytes)) });
    o += extBytes;
  }
  if (o !== payload.length) throw new CheckpointFormatError(`checkpoint payload has ${payload.length - o} bytes after the last page`);
  return pages;
}

/** Whether two stored pages are identical (version, segment references, extent bytes). */
export function samePage(a: StoredPage, b: StoredPage): boolean {
  return (
    a.page === b.page &&
    a.version === b.version &&
    a.segs.length === b.segs.length &&
    a.segs.every((s, i) => s === b.segs[i]) &&
    Buffer.from(a.ext.buffer, a.ext.byteOffset, a.ext.byteLength).equals(Buffer.from(b.ext.buffer, b.ext.byteOffset, b.ext.byteLength))
  );
}

// ---------------------------------------------------------------------------------------
// Replay and the chain (pure)

/** A segment's extents as the page map sees them (what its commit laid over the pages). */
function incomingExtents(d: Pick<SegmentDescriptor, 'volumeId' | 'segmentId' | 'extents'>): Extent[] {
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
export function replaySegment(map: Map<number, StoredPage>, d: Pick<SegmentDescriptor, 'volumeId' | 'segmentId' | 'extents'>, pageBlocks: number): void {
  for (const [page, top] of splitByPage(incomingExtents(d), pageBlocks)) {
    const old = map.get(page);
    const extents = overlay(old ? decodePage(old, page, pageBlocks) : [], top);
    const enc = encodePage(extents, page, pageBlocks);
    map.set(page, { page, version: (old?.version ?? 0) + 1, segs: enc.segs, ext: enc.ext });
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
    throw new ChainBrokenError(`the commit chain reaches seq ${base.seq} at segment ${id || '(none)'}, but the checkpoint was taken at ${base.segmentId || '(none)'}`);
  }
  return out.reverse();
}

// ---------------------------------------------------------------------------------------
// Retention (pure)

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

// ---------------------------------------------------------------------------------------
// Reading trailers and checkpoints

/** Reads a trailer from the end of one chunk object; null if it is missing. */
async function readTrailerBytes(loc: ChunkLocation): Promise<Buffer | null> {
  const tail = await getChunkTail(loc, TAIL_GUESS_BYTES);
  if (!tail) return null;
  const need = trailerBytesIn(tail);
  if (need !== null && need > tail.length && need <= GRANULE_BYTES * 64) return getChunkTail(loc, need);
  return tail;
}

/**
 * The descriptor of a segment from the first of `locations` whose trailer is intact and names
 * this segment; null if none is. A missing, unreadable or damaged chunk is skipped.
 */
export async function readSegmentDescriptor(volumeId: string, segmentId: string, locations: readonly ChunkLocation[]): Promise<SegmentDescriptor | null> {
  for (const loc of locations) {
    try {
      const tail = await readTrailerBytes(loc);
      if (!tail) continue;
      const d = parseTrailer(tail);
      if (d.volumeId === volumeId && d.segmentId === segmentId) return d;
      console.warn(`chunk ${loc.bucket}/${loc.key} has the trailer of ${d.volumeId}/${d.segmentId}; skipped`);
    } catch (err) {
      console.warn(`chunk ${loc.bucket}/${loc.key}: no usable trailer (${(err as Error).message}); trying another chunk`);
    }
  }
  return null;
}

/** Descriptors of many segments, read in parallel; segments with no usable trailer are absent. */
async function readDescriptors(volumeId: string, segments: ReadonlyMap<string, readonly ChunkLocation[]>): Promise<Map<string, SegmentDescriptor>> {
  const out = new Map<string, SegmentDescriptor>();
  await forEachLimited(segments, IO_CONCURRENCY, async ([segmentId, locations]) => {
    const d = await readSegmentDescriptor(volumeId, segmentId, locations);
    if (d) out.set(segmentId, d);
  });
  return out;
}

/**
 * The descriptors of the committed segments with `after.seq < seq <= upto.seq`, from their
 * records in the Segments table (exactly the committed ones) and their trailers, checked to
 * form the chain from `after` to `upto`.
 */
async function committedDescriptors(volumeId: string, after: { seq: number; segmentId: string }, upto: { seq: number; segmentId: string }): Promise<SegmentDescriptor[]> {
  if (upto.seq <= after.seq) return [];
  const records = await listSegmentRecordsBetween(volumeId, after.seq, upto.seq);
  const byId = await readDescriptors(volumeId, new Map(records.map((r) => [r.segmentId, r.locations])));
  return orderChain(byId, upto, after).map((id) => byId.get(id)!);
}

/** A checkpoint as read back: its descriptor and its pages. */
export interface LoadedCheckpoint {
  descriptor: CheckpointDescriptor;
  pages: StoredPage[];
}

/** Finds a checkpoint's chunks by listing the sleds (when its placement is stale or unknown). */
async function locateCheckpointChunks(volumeId: string, checkpointId: string, chunkCount: number): Promise<Array<ChunkLocation | null>> {
  const found = await listChunks(volumeId, config().sledBuckets, { namePrefix: `${checkpointId}.` });
  const out: Array<ChunkLocation | null> = Array.from({ length: chunkCount }, () => null);
  for (const c of found) {
    const parsed = parseObjectChunkKey(c.key);
    if (parsed && parsed.objectId === checkpointId && parsed.chunkIndex < chunkCount) out[parsed.chunkIndex] = { bucket: c.bucket, key: c.key };
  }
  return out;
}

/**
 * Reads a checkpoint back, verified: every granule against its CRC32C (rebuilt from parity when
 * up to m chunks are missing or corrupt), then the whole payload against `expectedCrc` and the
 * descriptor's own. Throws CheckpointUnreadableError otherwise.
 */
export async function readCheckpoint(
  volume: Pick<VolumeRecord, 'volumeId' | 'dataChunks' | 'parityChunks'>,
  checkpointId: string,
  opts: { placement?: string; expectedCrc?: number } = {},
): Promise<LoadedCheckpoint> {
  const chunkCount = volume.dataChunks + volume.parityChunks;
  const placed = opts.placement ? parsePlacement(opts.placement, volume.volumeId, checkpointId, config().sledBuckets) : null;
  try {
    if (placed && placed.length === chunkCount && placed.every((l) => l !== null)) {
      try {
        return await readCheckpointAt(volume.volumeId, checkpointId, placed, opts.expectedCrc);
      } catch (err) {
        if (!(err instanceof CheckpointUnreadableError)) throw err;
        // Chunks may have moved (evacuation) since the placement was recorded: look for them.
      }
    }
    const found = await locateCheckpointChunks(volume.volumeId, checkpointId, chunkCount);
    return await readCheckpointAt(volume.volumeId, checkpointId, found, opts.expectedCrc);
  } catch (err) {
    if (err instanceof CheckpointUnreadableError) throw err;
    throw new CheckpointUnreadableError(`checkpoint ${volume.volumeId}/${checkpointId} could not be read: ${(err as Error).message}`, { cause: err });
  }
}

async function readCheckpointAt(volumeId: string, checkpointId: string, locations: ReadonlyArray<ChunkLocation | null>, expectedCrc: number | undefined): Promise<LoadedCheckpoint> {
  let descriptor: CheckpointDescriptor | null = null;
  for (const loc of locations) {
    if (!loc) continue;
    try {
      const tail = await readTrailerBytes(loc);
      if (!tail) continue;
      const d = decodeTrailer<CheckpointDescriptor & { chunkIndex: number }>(tail, CHECKPOINT_FOOTER_MAGIC);
      if (d.kind === 'checkpoint' && d.volumeId === volumeId && d.checkpointId === checkpointId) {
        descriptor = d;
        break;
      }
    } catch (err) {
      console.warn(`checkpoint chunk ${loc.bucket}/${loc.key}: no usable trailer (${(err as Error).message})`);
    }
  }
  if (!descriptor) throw new CheckpointUnreadableError(`no chunk of checkpoint ${volumeId}/${checkpointId} has a readable trailer`);
  const { k, m } = descriptor;
  invariant(locations.length === k + m, () => `checkpoint ${checkpointId} has ${k + m} chunks, ${locations.length} locations`);
  // The verified segment reader reads checkpoints too: same chunk layout, same granule CRCs.
  const asRecord: SegmentRecord = {
    volumeId,
    segmentId: checkpointId,
    seq: descriptor.seq,
    prev: '',
    k,
    m,
    chunkSizeBytes: descriptor.chunkSizeBytes,
    granuleBytes: descriptor.granuleBytes,
    blockSizeBytes: CHECKPOINT_ALIGN_BYTES,
    payloadBytes: descriptor.payloadBytes,
    // A chunk with no known location is asked for at a key that does not exist: read as missing.
    locations: locations.map((l, i) => l ?? { bucket: config().sledBuckets[0]!, key: chunkKey(driveName(0), volumeId, `${checkpointId}-unplaced`, i) }),
    crcs: descriptor.crcs,
    createdAt: descriptor.createdAt,
  };
  let payload: Buffer;
  try {
    [payload] = (await readPayload(asRecord, [{ start: 0, end: descriptor.payloadBytes }])) as [Buffer];
  } catch (err) {
    throw new CheckpointUnreadableError(`checkpoint ${volumeId}/${checkpointId}: ${(err as Error).message}`, { cause: err });
  }
  const crc = crc32c(payload);
  if (crc !== descriptor.payloadCrc || (expectedCrc !== undefined && crc !== expectedCrc)) {
    throw new CheckpointUnreadableError(`checkpoint ${volumeId}/${checkpointId}: payload CRC32C ${crc} differs from the recorded ${expectedCrc ?? descriptor.payloadCrc}`);
  }
  const pages = decodeCheckpointPayload(payload);
  invariant(pages.length === descriptor.pages, () => `checkpoint ${checkpointId}: ${pages.length} pages, descriptor says ${descriptor.pages}`);
  return { descriptor, pages };
}

// ---------------------------------------------------------------------------------------
// Taking a checkpoint

/** Milliseconds spent in each phase of a job, for its report (the bench prints them). */
function phaseClock<P extends string>(): { lap(phase: P): void; laps: Partial<Record<P, number>> } {
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

/** What the API shows of a checkpoint. */
export interface CheckpointView {
  checkpointId: string;
  seq: number;
  pages: number;
  payloadBytes: number;
  payloadCrc: number;
}

function pointerView(p: CheckpointPointer): CheckpointView {
  return { checkpointId: p.id, seq: p.seq, pages: p.pages, payloadBytes: p.bytes, payloadCrc: p.crc };
}

export type CheckpointOutcome =
  /** A new checkpoint was written and recorded as the latest. */
  | ({
      done: 'written';
      volumeId: string;
      checkpoint: CheckpointView;
      removedCheckpoints: number;
      elapsedMs: number;
      phasesMs: Partial<Record<CheckpointPhase, number>>;
    } & MapProvenance)
  /** The latest checkpoint already covers the requested seq (a duplicate or late request). */
  | { done: 'up-to-date'; volumeId: string; checkpoint: CheckpointView | null }
  /** Another job recorded a checkpoint at least as new while this one ran; this one's chunks were deleted. */
  | { done: 'superseded'; volumeId: string; checkpoint: CheckpointView | null }
  /** Nothing to do: the volume is being deleted or rebuilt. */
  | { done: 'skipped'; volumeId: string; reason: string };

type CheckpointPhase = 'base' | 'build' | 'verify' | 'write' | 'record';

function mustStayActive(v0: VolumeRecord, now: VolumeRecord | null): VolumeRecord {
  if (!now || now.state !== 'active' || (now.rebuilds ?? 0) !== (v0.rebuilds ?? 0)) {
    throw new UnavailableError(`volume ${v0.volumeId} was deleted or rebuilt while its checkpoint was taken; retry`, { retryAfterSeconds: 5 });
  }
  return now;
}

/** How a checkpoint's page map was obtained. */
export interface MapProvenance {
  method: 'replay' | 'scan';
  /** The checkpoint a `replay` started from (null: from the first write). */
  baseCheckpointId: string | null;
  segmentsReplayed: number;
  verified: boolean;
  /** Pages compared with the live items; pages changed by commits during the comparison are skipped. */
  pagesVerified: number;
  pagesSkipped: number;
  /** `scan` only: times the scan was repaired because commits overtook it. */
  settleRounds: number;
}

/** A page map as of one commit, and how it was obtained. */
interface BuiltMap extends MapProvenance {
  seq: number;
  headSegmentId: string;
  map: Map<number, StoredPage>;
}

/**
 * The map at the head `v0` read, by construction: the base checkpoint plus the committed
 * segments after it. Then every page that no commit touched since `v0` is compared with its
 * live item; any difference means the live map and the chain disagree, and nothing is written.
 */
async function mapByReplay(v0: VolumeRecord, base: RebuildBase, clock: ReturnType<typeof phaseClock<CheckpointPhase>>): Promise<BuiltMap> {
  const { volumeId, pageBlocks } = v0;
  const descs = await committedDescriptors(volumeId, { seq: base.seq, segmentId: base.headSegmentId }, { seq: v0.headSeq, segmentId: v0.headSegmentId });
  const map = new Map(base.pages.map((p) => [p.page, p]));
  for (const d of descs) replaySegment(map, d, pageBlocks);
  clock.lap('build');

  const live = new Map<number, StoredPage>();
  for await (const p of listStoredPages(volumeId)) live.set(p.page, p);
  const now = mustStayActive(v0, await getVolume(volumeId));
  // Commits after v0 may have changed pages during the scan: those pages are not compared.
  const later = await committedDescriptors(volumeId, { seq: v0.headSeq, segmentId: v0.headSegmentId }, { seq: now.headSeq, segmentId: now.headSegmentId });
  const moved = new Set(later.flatMap((d) => touchedPages(d, pageBlocks)));
  let pagesVerified = 0;
  for (const page of new Set([...map.keys(), ...live.keys()])) {
    if (moved.has(page)) continue;
    const want = map.get(page);
    const have = live.get(page);
    if (!want || !have || !samePage(want, have)) {
      const describe = (p: StoredPage | undefined) => (p ? `version ${p.version}` : 'no item');
      throw new ConflictError(
        `the live page map of volume ${volumeId} does not match its commit chain at page ${page} (live: ${describe(have)}, checkpoint ${base.checkpointId ?? 'of the first write'} plus ${descs.length} commits: ${describe(want)}); no checkpoint was written: rebuild the page map`,
      );
    }
    pagesVerified++;
  }
  return {
    seq: v0.headSeq,
    headSegmentId: v0.headSegmentId,
    map,
    method: 'replay',
    baseCheckpointId: base.checkpointId,
    segmentsReplayed: descs.length,
    verified: true,
    pagesVerified,
    pagesSkipped: moved.size,
    settleRounds: 0,
  };
}

/**
 * The map from a scan of the live page items, settled at a head that did not move while the
 * pages changed by overtaking commits were read again (docs/checkpoints.md). Used when no
 * checkpoint is near enough to replay from; nothing to verify it against.
 */
async function mapByScan(v0: VolumeRecord): Promise<BuiltMap> {
  const { volumeId } = v0;
  const map = new Map<number, StoredPage>();
  for await (const p of listStoredPages(volumeId)) map.set(p.page, p);
  let known = v0;
  const touched = new Set<number>();
  for (let settleRounds = 0; ; settleRounds++) {
    const now = mustStayActive(v0, await getVolume(volumeId));
    if (now.headSeq === known.headSeq) {
      return { seq: known.headSeq, headSegmentId: known.headSegmentId, map, method: 'scan', baseCheckpointId: null, segmentsReplayed: 0, verified: false, pagesVerified: 0, pagesSkipped: 0, settleRounds };
    }
    if (settleRounds >= SETTLE_ROUNDS_MAX) {
      throw new UnavailableError(`volume ${volumeId} kept committing during ${SETTLE_ROUNDS_MAX} rounds of its checkpoint scan; retry later`, { retryAfterSeconds: 10 });
    }
    const descs = await committedDescriptors(volumeId, { seq: known.headSeq, segmentId: known.headSegmentId }, { seq: now.headSeq, segmentId: now.headSegmentId });
    for (const d of descs) for (const p of touchedPages(d, v0.pageBlocks)) touched.add(p);
    const fresh = await getStoredPages(volumeId, [...touched]);
    for (const p of touched) {
      const item = fresh.get(p);
      if (item) map.set(p, item);
      else map.delete(p);
    }
    known = now;
  }
}

/**
 * Takes a checkpoint of a volume's page map, unless the latest checkpoint already covers
 * `requestedAtSeq` (default: the head). The map is the previous checkpoint plus the segments
 * committed since (exact whatever the write load), checked page by page against the live
 * items; without a checkpoint within `replaySegmentsMax` commits it is a settled scan.
 * Idempotent: duplicates and late requests return `up-to-date`, and concurrent jobs leave the
 * newest checkpoint recorded.
 *
 * @example
 * const out = await takeCheckpoint('vol-0123456789abcdef');
 * if (out.done === 'written') console.log(out.checkpoint.seq, out.checkpoint.payloadBytes);
 */
export async function takeCheckpoint(volumeId: string, opts: { requestedAtSeq?: number; replaySegmentsMax?: number } = {}): Promise<CheckpointOutcome> {
  const started = performance.now();
  const v0 = await getVolume(volumeId);
  if (!v0) throw new NotFoundError(`volume ${volumeId} does not exist`);
  if (v0.state !== 'active') return { done: 'skipped', volumeId, reason: `volume ${volumeId} is ${v0.state}` };
  const target = opts.requestedAtSeq ?? v0.headSeq;
  if (v0.headSeq === 0 || (v0.checkpoint && v0.checkpoint.seq >= target)) {
    return { done: 'up-to-date', volumeId, checkpoint: v0.checkpoint ? pointerView(v0.checkpoint) : null };
  }

  // 1. The map at a known head (docs/checkpoints.md).
  const clock = phaseClock<CheckpointPhase>();
  const unreadable: RebuildReport['unreadableCheckpoints'] = [];
  const base = await findBase(v0, unreadable, opts.replaySegmentsMax ?? CHECKPOINT_REPLAY_SEGMENTS_MAX);
  for (const u of unreadable) console.warn(`checkpoint of ${volumeId}: ${u.checkpointId} is unreadable (${u.reason})`);
  clock.lap('base');
  const built = base ? await mapByReplay(v0, base, clock) : await mapByScan(v0);
  clock.lap(base ? 'verify' : 'build');

  // 2. Write the object set, then record it if it is newer than the recorded one.
  const { seq, headSegmentId, map, ...provenance } = built;
  const payload = encodeCheckpointPayload(map.values());
  const checkpointId = newCheckpointId(seq);
  const k = v0.dataChunks;
  const m = v0.parityChunks;
  const { chunkSizeBytes, shards, crcs } = await encodeStripes(k, m, CHECKPOINT_ALIGN_BYTES, payload);
  const descriptor: CheckpointDescriptor = {
    v: 1,
    kind: 'checkpoint',
    volumeId,
    checkpointId,
    seq,
    headSegmentId,
    k,
    m,
    chunkSizeBytes,
    granuleBytes: GRANULE_BYTES,
    payloadBytes: payload.length,
    payloadCrc: crc32c(payload),
    pages: map.size,
    method: built.method,
    verified: built.verified,
    crcs,
    createdAt: new Date().toISOString(),
  };
  const chunks = shards.map((shard, chunkIndex) => Buffer.concat([shard, encodeTrailer({ ...descriptor, chunkIndex }, CHECKPOINT_FOOTER_MAGIC)]));
  const buckets = config().sledBuckets;
  const locations = placeChunks(volumeId, checkpointId, k + m, buckets);
  await uploadChunksAt(locations, chunks, chunks.map((c) => crc32c(c)), chunkSizeBytes);
  const pointer: CheckpointPointer = {
    id: checkpointId,
    seq,
    crc: descriptor.payloadCrc,
    bytes: payload.length,
    pages: map.size,
    placement: formatPlacement(locations, buckets),
  };
  clock.lap('write');
  const recorded = await recordCheckpoint(volumeId, pointer);
  if (!recorded.recorded) {
    await deleteChunksQuietly(locations);
    const latest = recorded.current?.checkpoint;
    return { done: 'superseded', volumeId, checkpoint: latest ? pointerView(latest) : null };
  }

  // 3. Retention. A failure here leaves extra checkpoints, which the next pass removes.
  let removedCheckpoints = 0;
  try {
    removedCheckpoints = await applyRetention(recorded.current ?? v0, pointer);
  } catch (err) {
    console.error(`retention after checkpoint ${volumeId}/${checkpointId} failed; the next checkpoint retries it:`, err);
  }
  clock.lap('record');
  return {
    done: 'written',
    volumeId,
    checkpoint: pointerView(pointer),
    ...provenance,
    removedCheckpoints,
    elapsedMs: Math.round(performance.now() - started),
    phasesMs: clock.laps,
  };
}

/** The volume's checkpoint object sets on the sleds, grouped by id. */
async function listCheckpointSets(volumeId: string): Promise<Map<string, { set: CheckpointSet; chunks: Map<number, VolumeChunk> }>> {
  const listed = await listChunks(volumeId, config().sledBuckets, { namePrefix: CHECKPOINT_ID_PREFIX });
  const sets = new Map<string, { set: CheckpointSet; chunks: Map<number, VolumeChunk> }>();
  for (const c of listed) {
    const parsed = parseObjectChunkKey(c.key);
    const seq = parsed ? checkpointIdSeq(parsed.objectId) : null;
    if (!parsed || seq === null) continue;
    let entry = sets.get(parsed.objectId);
    if (!entry) sets.set(parsed.objectId, (entry = { set: { id: parsed.objectId, seq, chunks: 0, lastModifiedMs: 0 }, chunks: new Map() }));
    entry.chunks.set(parsed.chunkIndex, c);
    entry.set.chunks = entry.chunks.size;
    entry.set.lastModifiedMs = Math.max(entry.set.lastModifiedMs, c.lastModified?.getTime() ?? 0);
  }
  return sets;
}

/** Keeps the newest CHECKPOINT_RETAIN checkpoints, raises the floor, deletes the rest. */
async function applyRetention(volume: VolumeRecord, latest: CheckpointPointer): Promise<number> {
  const sets = await listCheckpointSets(volume.volumeId);
  const listed = [...sets.values()].map((s) => s.set);
  // "Now" on S3's clock: the newest chunk listed, at the latest the one just written. A local
  // clock that runs ahead could otherwise delete a set whose job is still recording it.
  const nowMs = Math.max(0, ...listed.map((s) => s.lastModifiedMs));
  const plan = planRetention(listed, latest, { retain: CHECKPOINT_RETAIN, k: volume.dataChunks, nowMs, graceMs: CHECKPOINT_GRACE_MS });
  // The floor first: GC then keeps no more than the kept checkpoints need; a crash before the
  // deletes below only leaves extra checkpoints for the next pass.
  await raiseCheckpointFloor(volume.volumeId, plan.floorSeq);
  const doomed = plan.remove.flatMap((id) => [...(sets.get(id)?.chunks.values() ?? [])]);
  await forEachLimited(doomed, IO_CONCURRENCY, (c) => deleteChunk({ bucket: c.bucket, key: c.key }));
  return plan.remove.length;
}

/** One retained checkpoint as `GET /volumes/{id}/checkpoints` lists it. */
export interface CheckpointListing {
  checkpointId: string;
  seq: number;
  latest: boolean;
  chunksFound: number;
  readable: boolean;
  pages?: number;
  payloadBytes?: number;
  method?: 'replay' | 'scan';
  verified?: boolean;
  createdAt?: string;
}

/** The checkpoints of a volume found on the sleds, newest first, with the recorded pointer and floor. */
export async function listCheckpoints(volumeId: string): Promise<{ volumeId: string; latest: CheckpointView | null; floorSeq: number | null; checkpoints: CheckpointListing[] }> {
  const v = await getVolume(volumeId);
  if (!v) throw new NotFoundError(`volume ${volumeId} does not exist`);
  const sets = [...(await listCheckpointSets(volumeId)).values()].sort((a, b) => b.set.seq - a.set.seq || a.set.id.localeCompare(b.set.id));
  const k = v.dataChunks;
  const checkpoints = await Promise.all(
    sets.map(async ({ set, chunks }): Promise<CheckpointListing> => {
      const entry: CheckpointListing = { checkpointId: set.id, seq: set.seq, latest: set.id === v.checkpoint?.id, chunksFound: set.chunks, readable: set.chunks >= k };
      for (const c of chunks.values()) {
        try {
          const tail = await readTrailerBytes(c);
          if (!tail) continue;
          const d = decodeTrailer<CheckpointDescriptor>(tail, CHECKPOINT_FOOTER_MAGIC);
          return { ...entry, pages: d.pages, payloadBytes: d.payloadBytes, method: d.method, verified: d.verified, createdAt: d.createdAt };
        } catch {
          // Try the next chunk's trailer.
        }
      }
      return entry;
    }),
  );
  return { volumeId, latest: v.checkpoint ? pointerView(v.checkpoint) : null, floorSeq: v.checkpointFloorSeq ?? null, checkpoints };
}

/**
 * One step of the scheduled sweep: scans up to `volumesPerStep` volumes after `startAfter`, queues a
 * checkpoint for each active volume with commits after its latest checkpoint (unless its
 * automatic checkpoints are off), and queues the next step if the scan is not done.
 */
export async function sweepCheckpoints(startAfter?: string, volumesPerStep = SWEEP_VOLUMES_PER_MESSAGE): Promise<{ scanned: number; queued: number; next?: string }> {
  const page = await listVolumes(volumesPerStep, startAfter);
  const due = page.volumes.filter(
    (v) => v.state === 'active' && (v.checkpointEveryCommits ?? DEFAULT_CHECKPOINT_EVERY_COMMITS) > 0 && v.headSeq > (v.checkpoint?.seq ?? 0),
  );
  await sendCheckpointMessages(due.map((v) => ({ type: 'checkpoint-volume', volumeId: v.volumeId, requestedAtSeq: v.headSeq })));
  if (page.next) await sendCheckpointMessage({ type: 'checkpoint-sweep', startAfter: page.next });
  return page.next ? { scanned: page.volumes.length, queued: due.length, next: page.next } : { scanned: page.volumes.length, queued: due.length };
}

// ---------------------------------------------------------------------------------------
// Rebuild

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
  phasesMs: Partial<Record<'checkpoint' | 'chain' | 'replay' | 'records' | 'write', number>>;
}

/** The base of a rebuild: a readable checkpoint, or the empty map before the first write. */
interface RebuildBase {
  checkpointId: string | null;
  seq: number;
  headSegmentId: string;
  pages: StoredPage[];
}

/**
 * The newest readable base within `maxDistance` commits of the head: the recorded checkpoint,
 * else older ones found on the sleds (listed only then), else the empty map before the first
 * write if nothing was ever reclaimed. Null if none is within reach.
 */
async function findBase(v: VolumeRecord, unreadable: RebuildReport['unreadableCheckpoints'], maxDistance = Infinity): Promise<RebuildBase | null> {
  const near = (seq: number) => seq <= v.headSeq && v.headSeq - seq <= maxDistance;
  const tryLoad = async (id: string, opts: { placement?: string; expectedCrc?: number } = {}): Promise<RebuildBase | null> => {
    try {
      const loaded = await readCheckpoint(v, id, opts);
      return { checkpointId: id, seq: loaded.descriptor.seq, headSegmentId: loaded.descriptor.headSegmentId, pages: loaded.pages };
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
  if (v.checkpointFloorSeq === undefined && near(0)) return { checkpointId: null, seq: 0, headSegmentId: '', pages: [] };
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
  const { volume: v, tookOver } = await fenceForRebuild(volumeId, token);
  // Whether the stored map may differ from the one this rebuild found fenced: then only a
  // completed rebuild may lift the fence.
  let writing = tookOver;
  try {
    const clock = phaseClock<'checkpoint' | 'chain' | 'replay' | 'records' | 'write'>();
    const unreadableCheckpoints: RebuildReport['unreadableCheckpoints'] = [];
    const base = await findBase(v, unreadableCheckpoints);
    if (!base) {
      throw new DataUnavailableError(
        `volume ${volumeId}: no readable checkpoint (${unreadableCheckpoints.map((u) => u.checkpointId).join(', ') || 'none found'}), and segments up to seq ${v.checkpointFloorSeq} may have been reclaimed; the page map cannot be rebuilt`,
      );
    }
    clock.lap('checkpoint');

    // Segments after the checkpoint, from the sleds alone: their ids start with their seq.
    const listed = await listChunks(volumeId, config().sledBuckets, { startAfterName: `${pad12(base.seq)}.` });
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
    const map = new Map(base.pages.map((p) => [p.page, p]));
    for (const id of chain) replaySegment(map, descriptors.get(id)!, v.pageBlocks);
    clock.lap('replay');

    // Every segment the map references needs its record (reads find chunks and CRCs there):
    // restore lost ones from the chunks' trailers before the pages are written.
    // (Restored records change no page: they do not keep the fence up if the rebuild fails.)
    const records = await restoreSegmentRecords(v, map, bySegment, descriptors);
    clock.lap('records');

    const current = new Map<number, StoredPage>();
    for await (const p of listStoredPages(volumeId)) current.set(p.page, p);
    const puts = [...map.values()].filter((p) => {
      const have = current.get(p.page);
      return !have || !samePage(have, p);
    });
    const deletes = [...current.keys()].filter((page) => !map.has(page));
    writing ||= puts.length + deletes.length > 0;
    await writeRebuiltPages(volumeId, token, puts, deletes);
    if (!(await unfenceAfterRebuild(volumeId, token))) {
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
      elapsedMs: Math.round(performance.now() - started),
      phasesMs: clock.laps,
    };
  } catch (err) {
    // Nothing written (and not taking over a rebuild that may have written): the stored map is
    // as it was before any rebuild, so serving may resume. Otherwise the fence stays until a
    // rebuild completes.
    if (!writing) await unfenceAfterRebuild(volumeId, token).catch((e) => console.error(`could not lift the rebuild fence of ${volumeId}:`, e));
    if (err instanceof RebuildFenceLostError) throw new ConflictError(err.message, { cause: err });
    throw err;
  }
}

/**
 * Restores the records of segments that `map` references and the Segments table lacks (a lost
 * or rolled-back table), from the trailers of their chunks on the sleds: the descriptor holds
 * everything a record does but the chunk locations, which are where the chunks are found (a
 * chunk found nowhere keeps the key it would have, and reads rebuild it from the others).
 * Existing records are never overwritten. Returns how many were restored, and the segments
 * that have no readable trailer left anywhere.
 */
async function restoreSegmentRecords(
  v: VolumeRecord,
  map: ReadonlyMap<number, StoredPage>,
  listedAfterBase: ReadonlyMap<string, ChunkLocation[]>,
  descriptors: ReadonlyMap<string, SegmentDescriptor>,
): Promise<{ restored: number; unrecoverable: string[] }> {
  const own = `${v.volumeId}/`;
  const referenced = new Set<string>();
  for (const p of map.values()) for (const ref of p.segs) if (ref.startsWith(own)) referenced.add(ref.slice(own.length));
  if (referenced.size === 0) return { restored: 0, unrecoverable: [] };
  const existing = await getSegmentRecords([...referenced].map((id) => segmentRef(v.volumeId, id)));
  const lost = [...referenced].filter((id) => !existing.has(segmentRef(v.volumeId, id))).sort();
  if (lost.length === 0) return { restored: 0, unrecoverable: [] };
  console.warn(JSON.stringify({ msg: 'segment records missing; restoring them from the sleds', volumeId: v.volumeId, segments: lost.length }));
  // Where the chunks are: the rebuild's listing covers segments after its checkpoint; older
  // ones need one listing of the whole volume.
  let where: ReadonlyMap<string, ChunkLocation[]> = listedAfterBase;
  if (lost.some((id) => !listedAfterBase.has(id))) {
    const all = new Map<string, ChunkLocation[]>();
    const wanted = new Set(lost);
    for (const c of await listChunks(v.volumeId, config().sledBuckets)) {
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
    const record: SegmentRecord = {
      volumeId: v.volumeId,
      segmentId,
      seq: d.seq,
      prev: d.prev,
      k: d.k,
      m: d.m,
      chunkSizeBytes: d.chunkSizeBytes,
      granuleBytes: d.granuleBytes,
      blockSizeBytes: d.blockSizeBytes,
      payloadBytes: d.payloadBytes,
      locations,
      crcs: d.crcs,
      createdAt: d.createdAt,
    };
    if (await putSegmentRecordIfAbsent(record)) restored++;
  });
  if (unrecoverable.length > 0) {
    console.error(JSON.stringify({ msg: 'segments referenced by the page map have no record and no readable chunk; their blocks cannot be read', volumeId: v.volumeId, segments: unrecoverable.sort() }));
  }
  return { restored, unrecoverable: unrecoverable.sort() };
}

/** Parses the optional `{ "mode": "run" | "queue" }` body of the checkpoint and rebuild routes. */
export function parseMode(body: Record<string, unknown>): 'run' | 'queue' {
  const extra = Object.keys(body).filter((k) => k !== 'mode');
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; the body takes only "mode"`);
  if (body.mode === undefined || body.mode === 'run') return 'run';
  if (body.mode === 'queue') return 'queue';
  throw new InvalidInputError(`mode must be "run" or "queue", got ${JSON.stringify(body.mode)}`);
}
