/**
 * Reading segment trailers and checkpoints back from the sleds, verified (docs/checkpoints.md).
 */
import { config } from '../../core/config.ts';
import { crc32c } from '../../data/crc32c.ts';
import { invariant } from '../../core/errors.ts';
import { type SegmentRecord, type StoredFrozen, type StoredPage, type VolumeRecord } from '../../core/records.ts';
import { readPayload } from '../../data/segment-reader.ts';
import { GRANULE_BYTES, decodeTrailer, parseTrailer, trailerBytesIn, type SegmentDescriptor } from '../../data/segments.ts';
import { chunkKey, driveName, parseObjectChunkKey, type ChunkLocation, type VolumeChunk } from '../../data/sleds.ts';
import { forEachLimited } from '../../core/async.ts';
import {
  CHECKPOINT_ALIGN_BYTES,
  CHECKPOINT_FOOTER_MAGIC,
  CHECKPOINT_ID_PREFIX,
  CheckpointDescriptor,
  CheckpointUnreadableError,
  IO_CONCURRENCY,
  TAIL_GUESS_BYTES,
  checkpointIdSeq,
  decodeCheckpointContents,
  parsePlacement,
} from './format.ts';
import { CheckpointSet, orderChain } from './chain.ts';
import { chunkStore } from '../../ports.ts';
import { pageMap } from '../../ports.ts';

// ---------------------------------------------------------------------------------------
// Reading trailers and checkpoints

/** Reads a trailer from the end of one chunk object; null if it is missing. */
export async function readTrailerBytes(loc: ChunkLocation): Promise<Buffer | null> {
  const tail = await chunkStore().getChunkTail(loc, TAIL_GUESS_BYTES);
  if (!tail) return null;
  const need = trailerBytesIn(tail);
  if (need !== null && need > tail.length && need <= GRANULE_BYTES * 64) return chunkStore().getChunkTail(loc, need);
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
export async function readDescriptors(volumeId: string, segments: ReadonlyMap<string, readonly ChunkLocation[]>): Promise<Map<string, SegmentDescriptor>> {
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
export async function committedDescriptors(
  volumeId: string,
  after: { seq: number; segmentId: string },
  upto: { seq: number; segmentId: string },
): Promise<SegmentDescriptor[]> {
  if (upto.seq <= after.seq) return [];
  const records = await pageMap().listSegmentRecordsBetween(volumeId, after.seq, upto.seq);
  const byId = await readDescriptors(volumeId, new Map(records.map((r) => [r.segmentId, r.locations])));
  return orderChain(byId, upto, after).map((id) => byId.get(id)!);
}

/** A checkpoint as read back: its descriptor and its pages. */
export interface LoadedCheckpoint {
  descriptor: CheckpointDescriptor;
  pages: StoredPage[];
  /** Its frozen pages; null for a checkpoint taken before checkpoints held them. */
  frozen: StoredFrozen[] | null;
}

/** Finds a checkpoint's chunks by listing the sleds (when its placement is stale or unknown). */
async function locateCheckpointChunks(volumeId: string, checkpointId: string, chunkCount: number): Promise<Array<ChunkLocation | null>> {
  const found = await chunkStore().listChunks(volumeId, config().sledBuckets, { namePrefix: `${checkpointId}.` });
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

async function readCheckpointAt(
  volumeId: string,
  checkpointId: string,
  locations: ReadonlyArray<ChunkLocation | null>,
  expectedCrc: number | undefined,
): Promise<LoadedCheckpoint> {
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
    throw new CheckpointUnreadableError(
      `checkpoint ${volumeId}/${checkpointId}: payload CRC32C ${crc} differs from the recorded ${expectedCrc ?? descriptor.payloadCrc}`,
    );
  }
  const { pages, frozen } = decodeCheckpointContents(payload);
  invariant(pages.length === descriptor.pages, () => `checkpoint ${checkpointId}: ${pages.length} pages, descriptor says ${descriptor.pages}`);
  return { descriptor, pages, frozen };
}

/** The volume's checkpoint object sets on the sleds, grouped by id. */
export async function listCheckpointSets(volumeId: string): Promise<Map<string, { set: CheckpointSet; chunks: Map<number, VolumeChunk> }>> {
  const listed = await chunkStore().listChunks(volumeId, config().sledBuckets, { namePrefix: CHECKPOINT_ID_PREFIX });
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
