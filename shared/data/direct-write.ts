/**
 * Direct writes (docs/nbd-gateway.md, "Direct writes"): a gateway encodes a segment itself,
 * asks for a write plan (the segment's identity, its placement and presigned PUT URLs with the
 * chunks' lengths and CRC32Cs signed in), uploads the chunks, and asks for a commit by
 * reference. The head keeps no state between the two: the commit carries the descriptor, which
 * is checked field by field and rebuilt, and the chunks are verified by their stored length and
 * CRC32C before the ordinary commit runs.
 */
import { config } from '../core/config.ts';
import { ConflictError, FencedError, InvalidInputError } from '../core/errors.ts';
import { MAX_PAGES_PER_COMMIT, segmentRef } from '../core/records.ts';
import type { VolumeRecord } from '../core/records.ts';
import { writeRefusal } from '../control/reservations.ts';
import { writableDrives } from '../maintenance/drives.ts';
import { foldVolume } from '../maintenance/fold.ts';
import { chunkStore, pageMap } from '../ports.ts';
import { crc32cBase64 } from './crc32c.ts';
import { splitByPage, type Extent } from './extents.ts';
import { placeStripe } from './placement.ts';
import { rememberGeometry } from './read.ts';
import {
  GRANULE_BYTES,
  canonicalDescriptor,
  chunkObjectOf,
  chunkSizeFor,
  isSegmentId,
  newSegmentId,
  segmentIdSeq,
  type DescriptorExtent,
  type SegmentDescriptor,
  type WriterIdentity,
} from './segments.ts';
import { type ChunkLocation, parseChunkKey } from './sleds.ts';
import { isFolding, tailFull } from './tail.ts';
import { HEAD_ID, MAX_IO_BYTES, checkRange, requireActive } from './volume-rules.ts';
import { deleteChunksQuietly } from './upload.ts';
import { MAX_SEGMENT_EXTENTS, afterCommit, completeWrite, prepareWrite, type WritePiece, type WriteResult } from './write.ts';

/**
 * How long a write plan is good for: its PUT URLs expire, and its commit is refused, this long
 * after the head made it. Below evacuation's settle time (60 s), like the API path's head
 * timeout: a chunk placed on a drive lands and commits within it.
 */
export const DIRECT_WRITE_SECONDS = 25;

/** How far ahead of the head a plan may build (`after`): a gateway's batches in flight. */
export const PLAN_AHEAD_MAX = 8;

/** How far in the future a plan's `createdAt` may lie (another head's clock). */
const CLOCK_SKEW_MS = 5_000;

/** A write plan: the segment to encode the trailers from, where its chunks go, and how to PUT them. */
export interface WritePlan {
  descriptor: SegmentDescriptor;
  locations: ChunkLocation[];
  /** Per chunk: the presigned URL and the exact headers to send with it. */
  puts: Array<{ url: string; headers: Record<string, string> }>;
  expiresAtMs: number;
}

// ---------------------------------------------------------------------------------------
// Checking what a gateway sends (every problem is a 400 that changes nothing)

function fields(body: Record<string, unknown>, allowed: readonly string[], what: string): void {
  const extra = Object.keys(body).find((k) => !allowed.includes(k));
  if (extra !== undefined) throw new InvalidInputError(`unknown field ${extra} in ${what}; it takes ${allowed.join(', ')}`);
}

function int(value: unknown, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidInputError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function object(value: unknown, name: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidInputError(`${name} must be an object`);
  return value as Record<string, unknown>;
}

function array(value: unknown, name: string, max: number): unknown[] {
  if (!Array.isArray(value)) throw new InvalidInputError(`${name} must be an array`);
  if (value.length > max) throw new InvalidInputError(`${name} holds at most ${max} entries, this one ${value.length}`);
  return value;
}

/** The extents of a write, sorted and checked as a write is (range, overlap, at most 4 MiB of data). */
function checkExtents(v: VolumeRecord, raw: unknown): WritePiece[] {
  const list = array(raw, 'extents', MAX_SEGMENT_EXTENTS);
  if (list.length === 0) throw new InvalidInputError('a write needs at least one extent');
  const pieces = list.map((e, i) => {
    const o = object(e, `extents[${i}]`);
    fields(o, ['offset', 'length', 'zero'], `extents[${i}]`);
    if (o.zero !== undefined && typeof o.zero !== 'boolean') throw new InvalidInputError(`extents[${i}].zero must be a boolean`);
    const offset = int(o.offset, `extents[${i}].offset`);
    const length = int(o.length, `extents[${i}].length`, 1);
    checkRange(v, offset, length, null);
    return { offset, length, zero: o.zero === true };
  });
  pieces.sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < pieces.length; i++) {
    const prev = pieces[i - 1]!;
    if (prev.offset + prev.length > pieces[i]!.offset) throw new InvalidInputError(`extents at ${prev.offset} and ${pieces[i]!.offset} overlap`);
  }
  const dataBytes = pieces.filter((p) => !p.zero).reduce((n, p) => n + p.length, 0);
  if (dataBytes === 0) throw new InvalidInputError('a direct write carries data; send zeros alone through POST /volumes/{volumeId}/batch');
  if (dataBytes > MAX_IO_BYTES) throw new InvalidInputError(`a write carries at most ${MAX_IO_BYTES} bytes of data, this one ${dataBytes}`);
  // A data piece's bytes come from the gateway's chunks; `data` marks it (prepareWrite reads only its length here).
  return pieces.map((p) => (p.zero ? { offset: p.offset, length: p.length } : { offset: p.offset, length: p.length, data: EMPTY }));
}

const EMPTY = Buffer.alloc(0);

/** The descriptor extents and payload size of sorted pieces, laid out as prepareWrite lays them. */
function layout(v: VolumeRecord, pieces: readonly WritePiece[]): { extents: DescriptorExtent[]; payloadBytes: number } {
  const bs = v.blockSizeBytes;
  let segBlock = 0;
  const extents: DescriptorExtent[] = pieces.map((p) => {
    if (!p.data) return [p.offset / bs, p.length / bs, -1];
    const e: DescriptorExtent = [p.offset / bs, p.length / bs, segBlock];
    segBlock += p.length / bs;
    return e;
  });
  const incoming: Extent[] = extents.map(([first, count, at]) => ({
    first,
    count,
    seg: at < 0 ? null : segmentRef(v.volumeId, 'x'),
    segBlock: Math.max(0, at),
  }));
  if (isFolding(v)) {
    if (extents.length > MAX_SEGMENT_EXTENTS)
      throw new InvalidInputError(`this write has ${extents.length} extents; one commit holds at most ${MAX_SEGMENT_EXTENTS}`);
  } else {
    const pages = splitByPage(incoming, v.pageBlocks).size;
    if (pages > MAX_PAGES_PER_COMMIT)
      throw new InvalidInputError(`this write touches ${pages} pages; one commit holds at most ${MAX_PAGES_PER_COMMIT}: split it`);
  }
  return { extents, payloadBytes: segBlock * bs };
}

/** The granule CRCs of k+m chunks of `chunkSizeBytes`, checked in shape. */
function checkCrcs(v: VolumeRecord, chunkSizeBytes: number, raw: unknown): number[][] {
  const chunks = v.dataChunks + v.parityChunks;
  const granules = Math.ceil(chunkSizeBytes / GRANULE_BYTES);
  const list = array(raw, 'crcs', chunks);
  if (list.length !== chunks) throw new InvalidInputError(`crcs lists ${list.length} chunks; this volume's segments have ${chunks}`);
  return list.map((c, i) => {
    const row = array(c, `crcs[${i}]`, granules);
    if (row.length !== granules) throw new InvalidInputError(`crcs[${i}] lists ${row.length} granules; a chunk of ${chunkSizeBytes} bytes has ${granules}`);
    return row.map((x, g) => int(x, `crcs[${i}][${g}]`, 0, 0xffffffff));
  });
}

function checkChunkSize(v: VolumeRecord, payloadBytes: number, raw: unknown): number {
  const expected = chunkSizeFor(payloadBytes, v.dataChunks, v.blockSizeBytes);
  const got = int(raw, 'chunkSizeBytes', 1);
  if (got !== expected)
    throw new InvalidInputError(`chunkSizeBytes is ${got}; ${payloadBytes} bytes over ${v.dataChunks} data chunks of whole blocks make ${expected}`);
  return got;
}

/** The writer a commit of `key` records: the key's generation now (prepareWrite does the same). */
function writerOf(v: VolumeRecord, key: string | undefined): WriterIdentity {
  if (key === undefined) return { id: HEAD_ID };
  const generation = v.reservations.registrants[key];
  return generation === undefined ? { id: HEAD_ID, key } : { id: HEAD_ID, key, generation };
}

function fencing(v: VolumeRecord, key: string | undefined): void {
  const refusal = writeRefusal(v.volumeId, v.reservations, key);
  if (refusal) throw new FencedError(refusal);
}

// ---------------------------------------------------------------------------------------
// The plan

/**
 * A write plan (`POST /volumes/{id}/write-plan`): body `{ extents, chunkSizeBytes, crcs, after? }`.
 * Checked as a write (and fenced as one); nothing is written anywhere.
 */
export async function planWrite(volumeId: string, body: Record<string, unknown>, key: string | undefined): Promise<WritePlan> {
  fields(body, ['extents', 'chunkSizeBytes', 'crcs', 'after'], 'a write plan');
  const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
  rememberGeometry(v);
  const pieces = checkExtents(v, body.extents);
  const { extents, payloadBytes } = layout(v, pieces);
  const chunkSizeBytes = checkChunkSize(v, payloadBytes, body.chunkSizeBytes);
  const crcs = checkCrcs(v, chunkSizeBytes, body.crcs);
  let base = { seq: v.headSeq, segmentId: v.headSegmentId };
  if (body.after !== undefined) {
    const after = object(body.after, 'after');
    fields(after, ['seq', 'segmentId'], 'after');
    const seq = int(after.seq, 'after.seq', 1);
    if (!isSegmentId(after.segmentId) || segmentIdSeq(after.segmentId) !== seq) {
      throw new InvalidInputError('after.segmentId must be the segment id of after.seq');
    }
    if (seq < v.headSeq || seq > v.headSeq + PLAN_AHEAD_MAX || (seq === v.headSeq && after.segmentId !== v.headSegmentId)) {
      throw new ConflictError(`after names segment ${after.segmentId}, but the head is at ${v.headSeq} (${v.headSegmentId}); plan on the head`);
    }
    base = { seq, segmentId: after.segmentId };
  }
  fencing(v, key);
  const seq = base.seq + 1;
  const createdAtMs = Date.now();
  const descriptor = directDescriptor(v, {
    segmentId: newSegmentId(seq),
    seq,
    prev: base.segmentId,
    writer: writerOf(v, key),
    extents,
    chunkSizeBytes,
    payloadBytes,
    createdAt: new Date(createdAtMs).toISOString(),
    crcs,
  });
  const locations = placeStripe(volumeId, descriptor.segmentId, v.dataChunks + v.parityChunks, config().sledBuckets, await writableDrives());
  const puts = await Promise.all(
    locations.map((loc, i) => {
      const o = chunkObjectOf(descriptor, i);
      return chunkStore().presignChunkPut(loc, o.bytes, o.crc, DIRECT_WRITE_SECONDS);
    }),
  );
  return { descriptor, locations, puts, expiresAtMs: createdAtMs + DIRECT_WRITE_SECONDS * 1000 };
}

// ---------------------------------------------------------------------------------------
// The commit by reference

/** The descriptor a gateway sends back, checked field by field against the volume and rebuilt. */
function checkDescriptor(v: VolumeRecord, raw: unknown, key: string | undefined): { d: SegmentDescriptor; pieces: WritePiece[] } {
  const o = object(raw, 'descriptor');
  fields(
    o,
    [
      'v',
      'volumeId',
      'segmentId',
      'seq',
      'prev',
      'writer',
      'k',
      'm',
      'blockSizeBytes',
      'extents',
      'chunkSizeBytes',
      'granuleBytes',
      'payloadBytes',
      'createdAt',
      'crcs',
    ],
    'a descriptor',
  );
  if (o.v !== 1) throw new InvalidInputError('descriptor.v must be 1');
  if (o.volumeId !== v.volumeId) throw new InvalidInputError(`the descriptor is of volume ${String(o.volumeId)}, not ${v.volumeId}`);
  const seq = int(o.seq, 'descriptor.seq', 1, 1e12 - 1);
  if (!isSegmentId(o.segmentId) || segmentIdSeq(o.segmentId) !== seq) {
    throw new InvalidInputError('descriptor.segmentId must be a segment id whose prefix is descriptor.seq');
  }
  if (typeof o.prev !== 'string' || (o.prev !== '' && !isSegmentId(o.prev))) throw new InvalidInputError('descriptor.prev must be a segment id');
  if (o.k !== v.dataChunks || o.m !== v.parityChunks)
    throw new InvalidInputError(`the descriptor has k=${String(o.k)}, m=${String(o.m)}; this volume ${v.dataChunks}+${v.parityChunks}`);
  if (o.blockSizeBytes !== v.blockSizeBytes || o.granuleBytes !== GRANULE_BYTES)
    throw new InvalidInputError('the descriptor has another block or granule size');
  const w = object(o.writer, 'descriptor.writer');
  fields(w, ['id', 'key', 'generation'], 'descriptor.writer');
  if (typeof w.id !== 'string' || w.id.length === 0 || w.id.length > 200) throw new InvalidInputError('descriptor.writer.id must be a string');
  if (w.key !== key) throw new InvalidInputError('the descriptor was planned for another reservation key than this request presents');
  const writer: WriterIdentity = { id: w.id };
  if (key !== undefined) writer.key = key;
  if (w.generation !== undefined) writer.generation = int(w.generation, 'descriptor.writer.generation');
  const rawExtents = array(o.extents, 'descriptor.extents', MAX_SEGMENT_EXTENTS);
  const pieces = checkExtents(
    v,
    rawExtents.map((e, i) => {
      const t = array(e, `descriptor.extents[${i}]`, 3);
      if (t.length !== 3) throw new InvalidInputError(`descriptor.extents[${i}] must be [firstBlock, blockCount, segmentBlock]`);
      return {
        offset: int(t[0], `descriptor.extents[${i}][0]`) * v.blockSizeBytes,
        length: int(t[1], `descriptor.extents[${i}][1]`, 1) * v.blockSizeBytes,
        zero: t[2] === -1,
      };
    }),
  );
  const { extents, payloadBytes } = layout(v, pieces);
  // In order, and each data extent at the payload offset the head would give it.
  if (JSON.stringify(extents) !== JSON.stringify(rawExtents)) throw new InvalidInputError('descriptor.extents are not laid out in order, end to end');
  if (o.payloadBytes !== payloadBytes) throw new InvalidInputError(`descriptor.payloadBytes must be ${payloadBytes}`);
  const chunkSizeBytes = checkChunkSize(v, payloadBytes, o.chunkSizeBytes);
  const crcs = checkCrcs(v, chunkSizeBytes, o.crcs);
  if (typeof o.createdAt !== 'string' || Number.isNaN(Date.parse(o.createdAt)) || new Date(Date.parse(o.createdAt)).toISOString() !== o.createdAt) {
    throw new InvalidInputError('descriptor.createdAt must be an ISO time');
  }
  const d = directDescriptor(v, { segmentId: o.segmentId, seq, prev: o.prev, writer, extents, chunkSizeBytes, payloadBytes, createdAt: o.createdAt, crcs });
  return { d, pieces };
}

/** Location i must be chunk i of this segment on a sled of this deployment, on k+m distinct sleds. */
function checkLocations(d: SegmentDescriptor, raw: unknown): ChunkLocation[] {
  const list = array(raw, 'locations', d.k + d.m);
  if (list.length !== d.k + d.m) throw new InvalidInputError(`locations lists ${list.length} chunks; the segment has ${d.k + d.m}`);
  const sleds = config().sledBuckets;
  const locations = list.map((l, i) => {
    const o = object(l, `locations[${i}]`);
    fields(o, ['bucket', 'key'], `locations[${i}]`);
    if (typeof o.bucket !== 'string' || !sleds.includes(o.bucket)) throw new InvalidInputError(`locations[${i}].bucket is not a sled of this deployment`);
    const p = typeof o.key === 'string' ? parseChunkKey(o.key) : null;
    if (!p || p.volumeId !== d.volumeId || p.segmentId !== d.segmentId || p.chunkIndex !== i) {
      throw new InvalidInputError(`locations[${i}].key must be chunk ${i} of segment ${d.segmentId} of this volume`);
    }
    return { bucket: o.bucket, key: o.key as string };
  });
  if (new Set(locations.map((l) => l.bucket)).size !== locations.length) throw new InvalidInputError('the locations put two chunks on one sled');
  return locations;
}

/**
 * A commit by reference (`POST /volumes/{id}/commit`): body `{ descriptor, locations }`. Answers
 * the write's result; a repeat of a commit that applied answers the same. Refusals: 400 for a
 * request that is wrong in itself, 409 for a plan that can no longer commit (fenced, expired,
 * the head moved, a drive left service, a chunk missing or not as described). Nothing is
 * changed by a refusal but the deletion of chunks that can provably never be committed.
 */
export async function commitByReference(volumeId: string, body: Record<string, unknown>, key: string | undefined): Promise<WriteResult> {
  fields(body, ['descriptor', 'locations'], 'a commit');
  const v0 = requireActive(await pageMap().getVolume(volumeId), volumeId);
  rememberGeometry(v0);
  const { d, pieces } = checkDescriptor(v0, body.descriptor, key);
  const locations = checkLocations(d, body.locations);
  const result: WriteResult = {
    volumeId,
    segmentId: d.segmentId,
    commitSeq: d.seq,
    bytesWritten: d.payloadBytes,
    bytesZeroed: pieces.filter((p) => !p.data).reduce((n, p) => n + p.length, 0),
  };
  // A repeat of a commit that applied (its answer was lost): the volume item was read first,
  // then the record, so a commit applying in between is found by one or the other.
  if (v0.headSegmentId === d.segmentId || (await pageMap().getSegmentRecord(volumeId, d.segmentId))) return result;
  if (d.seq <= v0.headSeq) {
    // The head passed the segment's seq without it: it can never commit. Its chunks go.
    await deleteChunksQuietly(locations);
    throw new ConflictError(`the head of ${volumeId} moved past ${d.seq} without segment ${d.segmentId}; plan again`);
  }
  if (d.seq > v0.headSeq + 1) throw new ConflictError(`segment ${d.segmentId} builds on commit ${d.seq - 1}, which is not made; the head is at ${v0.headSeq}`);
  if (d.prev !== v0.headSegmentId) {
    await deleteChunksQuietly(locations); // its prev is not the segment at seq - 1: it can never commit
    throw new ConflictError(`segment ${d.segmentId} builds on ${d.prev}, but commit ${v0.headSeq} is ${v0.headSegmentId}; plan again`);
  }
  const ageMs = Date.now() - Date.parse(d.createdAt);
  if (ageMs < -CLOCK_SKEW_MS) throw new InvalidInputError('descriptor.createdAt lies in the future');
  if (ageMs > DIRECT_WRITE_SECONDS * 1000)
    throw new ConflictError(`the write plan of segment ${d.segmentId} expired ${Math.round(ageMs / 1000)} s after it was made; plan again`);
  fencing(v0, key);
  const writable = await writableDrives();
  locations.forEach((loc, i) => {
    if (!(writable.get(loc.bucket) ?? []).includes(parseChunkKey(loc.key)!.drive)) throw new ConflictError(`chunk ${i}'s drive is leaving service; plan again`);
  });
  // Every chunk is exactly the object the descriptor makes: its length and stored CRC32C.
  const stats = await Promise.all(locations.map((loc) => chunkStore().statChunk(loc)));
  stats.forEach((st, i) => {
    const want = chunkObjectOf(d, i);
    if (!st) throw new ConflictError(`chunk ${i} of segment ${d.segmentId} is not uploaded`);
    if (st.bytes !== want.bytes) throw new ConflictError(`chunk ${i} of segment ${d.segmentId} is ${st.bytes} bytes, not ${want.bytes}`);
    if (st.crc32c !== crc32cBase64(want.crc))
      throw new ConflictError(`chunk ${i} of segment ${d.segmentId} is stored with another CRC32C than its descriptor gives`);
  });
  let v = v0;
  if (tailFull(v)) {
    // The tail is full (docs/page-map.md, "Folding"): fold first, as a write through the API does.
    await foldVolume(volumeId, { batchesMax: 1 });
    v = requireActive(await pageMap().getVolume(volumeId), volumeId);
    if (v.headSeq !== v0.headSeq) throw new ConflictError(`the head of ${volumeId} moved while its tail was folded; plan again`);
  }
  const prepared = await prepareWrite(v, pieces, key === undefined ? { id: HEAD_ID } : { id: HEAD_ID, key }, { uploaded: { descriptor: d, locations } });
  const outcome = await completeWrite(prepared);
  // Settled as never committed (another commit moved the head first); its chunks are deleted.
  if (!outcome) throw new ConflictError(`another commit moved the head of ${volumeId} first; plan again`);
  await afterCommit(v, prepared, outcome);
  return outcome;
}

/**
 * The descriptor of a gateway's segment of volume `v`: what the plan hands out and what the
 * commit rebuilds from the gateway's fields, built by this one function so the two cannot differ
 * in what the volume decides (format, k, m, block and granule size).
 */
function directDescriptor(
  v: VolumeRecord,
  f: Pick<SegmentDescriptor, 'segmentId' | 'seq' | 'prev' | 'writer' | 'extents' | 'chunkSizeBytes' | 'payloadBytes' | 'createdAt' | 'crcs'>,
): SegmentDescriptor {
  return canonicalDescriptor({
    v: 1,
    volumeId: v.volumeId,
    ...f,
    k: v.dataChunks,
    m: v.parityChunks,
    blockSizeBytes: v.blockSizeBytes,
    granuleBytes: GRANULE_BYTES,
  });
}
