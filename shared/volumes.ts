/**
 * Volumes: create, describe, grow, delete, and the data path (write, batch, read, trim).
 * Validation happens here, before anything is written, so bad input changes nothing.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { SendMessageCommand } from '@aws-sdk/client-sqs';
import { sqs } from './aws.ts';
import { DEFAULT_CHECKPOINT_EVERY_COMMITS, checkpointAfterCommit } from './checkpoint-messages.ts';
import { config } from './config.ts';
import { DataUnavailableError, FencedError, InvalidInputError, NotFoundError, UnavailableError, invariant } from './errors.ts';
import { clip, overlay, splitByPage, type Extent } from './extents.ts';
import {
  CommitRefusedError,
  storeReservations,
  MAX_PAGES_PER_COMMIT,
  commitSegment,
  deleteItems,
  deleteVolumeItem,
  getPages,
  getSegmentRecord,
  getSegmentRecords,
  getVolume,
  getVolumeWithPages,
  growVolume,
  listPages,
  listSegmentRecords,
  listSegmentTombstones,
  tombstoneSegment,
  listVolumes,
  markDeleting,
  pageKey,
  putNewVolume,
  segmentKey,
  segmentRef,
  sleep,
  type CommitWriter,
  type PageChange,
  type PageRecord,
  type SegmentRecord,
  type VolumeRecord,
} from './pagemap.ts';
import { readPayload, type PayloadRange, type ReadReport } from './segment-reader.ts';
import { encodeSegment, newSegmentId, type WriterIdentity } from './segments.ts';
import { EMPTY_RESERVATIONS, apply, parseCommand, readRefusal, writeRefusal, type ReservationState } from './reservations.ts';
import { deleteChunk, formatLocation, isPreconditionFailed, listVolumeChunks, putChunk, storedChunkEquals, type ChunkLocation } from './sleds.ts';
import { writableDrives } from './drives.ts';
import { noteWriteError } from './evacuation.ts';
import { placeStripe, replacementLocation, sledsDistinct, type WritableDrives } from './placement.ts';

export const DEFAULT_BLOCK_SIZE_BYTES = 4096;
export const DEFAULT_DATA_CHUNKS = 4;
export const DEFAULT_PARITY_CHUNKS = 2;
/** Blocks per page-map item (1 MiB of address space at 4 KiB blocks). */
export const PAGE_BLOCKS = 256;
/** The largest single read or write, and the largest data in one batch. */
export const MAX_IO_BYTES = 4 * 1024 * 1024;
/** 64 TiB, the same ceiling as an EBS io2 Block Express volume. */
export const MAX_VOLUME_BYTES = 64 * 1024 ** 4;
const COMMIT_ATTEMPT_MAX = 8;
const UPLOAD_ATTEMPT_MAX = 3;
/** Replacement drives tried for one chunk whose PUT keeps failing (docs/evacuation.md, section 1). */
const REPLACEMENT_MAX = 3;

/** The identity this process writes segments under. */
export const HEAD_ID = `head-${process.pid}-${randomBytes(4).toString('hex')}`;

/** What the API shows of a volume. */
export interface VolumeView {
  volumeId: string;
  name?: string;
  sizeBytes: number;
  blockSizeBytes: number;
  dataChunks: number;
  parityChunks: number;
  pageBlocks: number;
  state: string;
  commitSeq: number;
  createdAt: string;
  updatedAt: string;
  checkpointEveryCommits: number;
  /** The seq of the latest checkpoint, or null before the first. */
  checkpointSeq: number | null;
}

export function view(v: VolumeRecord): VolumeView {
  const out: VolumeView = {
    volumeId: v.volumeId,
    sizeBytes: v.sizeBytes,
    blockSizeBytes: v.blockSizeBytes,
    dataChunks: v.dataChunks,
    parityChunks: v.parityChunks,
    pageBlocks: v.pageBlocks,
    state: v.state,
    commitSeq: v.headSeq,
    createdAt: v.createdAt,
    updatedAt: v.updatedAt,
    checkpointEveryCommits: v.checkpointEveryCommits ?? DEFAULT_CHECKPOINT_EVERY_COMMITS,
    checkpointSeq: v.checkpoint?.seq ?? null,
  };
  if (v.name !== undefined) out.name = v.name;
  return out;
}

// ---------------------------------------------------------------------------------------
// Validation helpers

function integerField(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new InvalidInputError(`${name} must be an integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

function checkAligned(value: number, blockSizeBytes: number, name: string): void {
  if (value % blockSizeBytes !== 0) throw new InvalidInputError(`${name} ${value} is not a multiple of the block size ${blockSizeBytes}`);
}

/** Checks a byte range against the volume: aligned, non-empty, inside the volume. */
export function checkRange(v: VolumeRecord, offset: number, length: number, maxLength: number | null): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new InvalidInputError(`offset must be a non-negative integer, got ${offset}`);
  if (!Number.isSafeInteger(length) || length <= 0) throw new InvalidInputError(`length must be a positive integer, got ${length}`);
  checkAligned(offset, v.blockSizeBytes, 'offset');
  checkAligned(length, v.blockSizeBytes, 'length');
  if (maxLength !== null && length > maxLength) throw new InvalidInputError(`length ${length} is over the limit of ${maxLength} bytes per request`);
  if (offset + length > v.sizeBytes) {
    throw new InvalidInputError(`range [${offset}, ${offset + length}) is beyond the end of volume ${v.volumeId} (${v.sizeBytes} bytes)`);
  }
}

/** The volume, if it can serve now: 404 if missing or being deleted, 503 while a rebuild holds it. */
export function requireActive(v: VolumeRecord | null, volumeId: string): VolumeRecord {
  if (!v) throw new NotFoundError(`volume ${volumeId} does not exist`);
  if (v.state === 'rebuilding') throw rebuildingError(volumeId);
  if (v.state !== 'active') throw new NotFoundError(`volume ${volumeId} is being deleted`);
  return v;
}

/** I/O while a page-map rebuild holds the fence: retry once it is done (docs/checkpoints.md). */
function rebuildingError(volumeId: string): UnavailableError {
  return new UnavailableError(`volume ${volumeId} is being rebuilt from its checkpoint; retry when the rebuild is done`, { retryAfterSeconds: 5 });
}

// ---------------------------------------------------------------------------------------
// Control operations

export interface CreateVolumeInput {
  sizeBytes?: unknown;
  blockSizeBytes?: unknown;
  dataChunks?: unknown;
  parityChunks?: unknown;
  name?: unknown;
  checkpointEveryCommits?: unknown;
}

const CREATE_FIELDS = new Set(['sizeBytes', 'blockSizeBytes', 'dataChunks', 'parityChunks', 'name', 'checkpointEveryCommits']);

/**
 * Creates a volume.
 *
 * @example
 * const v = await createVolume({ sizeBytes: 1 << 30 }); // 1 GiB, 4 KiB blocks, RS 4+2
 */
export async function createVolume(input: CreateVolumeInput): Promise<VolumeView> {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new InvalidInputError('the body must be a JSON object');
  for (const key of Object.keys(input)) {
    if (!CREATE_FIELDS.has(key)) throw new InvalidInputError(`unknown field ${JSON.stringify(key)}; allowed: ${[...CREATE_FIELDS].join(', ')}`);
  }
  const blockSizeBytes = input.blockSizeBytes === undefined ? DEFAULT_BLOCK_SIZE_BYTES : integerField(input.blockSizeBytes, 'blockSizeBytes');
  if (blockSizeBytes < 512 || blockSizeBytes > 65536 || (blockSizeBytes & (blockSizeBytes - 1)) !== 0) {
    throw new InvalidInputError(`blockSizeBytes must be a power of two from 512 to 65536, got ${blockSizeBytes}`);
  }
  if (input.sizeBytes === undefined) throw new InvalidInputError('sizeBytes is required');
  const sizeBytes = integerField(input.sizeBytes, 'sizeBytes');
  if (sizeBytes <= 0 || sizeBytes > MAX_VOLUME_BYTES) throw new InvalidInputError(`sizeBytes must be between 1 block and ${MAX_VOLUME_BYTES}, got ${sizeBytes}`);
  checkAligned(sizeBytes, blockSizeBytes, 'sizeBytes');
  const dataChunks = input.dataChunks === undefined ? DEFAULT_DATA_CHUNKS : integerField(input.dataChunks, 'dataChunks');
  const parityChunks = input.parityChunks === undefined ? DEFAULT_PARITY_CHUNKS : integerField(input.parityChunks, 'parityChunks');
  if (dataChunks < 1 || dataChunks > 16) throw new InvalidInputError(`dataChunks must be from 1 to 16, got ${dataChunks}`);
  if (parityChunks < 1 || parityChunks > 4) throw new InvalidInputError(`parityChunks must be from 1 to 4, got ${parityChunks}`);
  const sleds = config().sledBuckets.length;
  if (dataChunks + parityChunks > sleds) {
    throw new InvalidInputError(`dataChunks + parityChunks = ${dataChunks + parityChunks} needs that many sleds; this deployment has ${sleds}`);
  }
  let name: string | undefined;
  if (input.name !== undefined) {
    if (typeof input.name !== 'string' || input.name.length === 0 || input.name.length > 128) throw new InvalidInputError('name must be a string of 1 to 128 characters');
    name = input.name;
  }
  const checkpointEveryCommits =
    input.checkpointEveryCommits === undefined ? DEFAULT_CHECKPOINT_EVERY_COMMITS : integerField(input.checkpointEveryCommits, 'checkpointEveryCommits');
  if (checkpointEveryCommits < 0 || checkpointEveryCommits > 1e9) {
    throw new InvalidInputError(`checkpointEveryCommits must be from 0 (no automatic checkpoints) to 1000000000, got ${checkpointEveryCommits}`);
  }
  const now = new Date().toISOString();
  const record: VolumeRecord = {
    volumeId: `vol-${randomBytes(8).toString('hex')}`,
    sizeBytes,
    blockSizeBytes,
    dataChunks,
    parityChunks,
    pageBlocks: PAGE_BLOCKS,
    state: 'active',
    headSeq: 0,
    headSegmentId: '',
    reservations: EMPTY_RESERVATIONS,
    createdAt: now,
    updatedAt: now,
    checkpointEveryCommits,
  };
  if (name !== undefined) record.name = name;
  await putNewVolume(record);
  return view(record);
}

export async function describeVolume(volumeId: string): Promise<VolumeView> {
  const v = await getVolume(volumeId);
  if (!v) throw new NotFoundError(`volume ${volumeId} does not exist`);
  return view(v);
}

export async function listVolumeViews(limitParam: string | undefined, next: string | undefined): Promise<{ volumes: VolumeView[]; next?: string }> {
  const limit = limitParam === undefined ? 100 : Number(limitParam);
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > 1000) throw new InvalidInputError(`limit must be an integer from 1 to 1000, got ${limitParam}`);
  const page = await listVolumes(limit, next);
  return page.next ? { volumes: page.volumes.map(view), next: page.next } : { volumes: page.volumes.map(view) };
}

/** Grows a volume to `sizeBytes`. Shrinking is refused: it would silently drop data. */
export async function resizeVolume(volumeId: string, body: unknown): Promise<VolumeView> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidInputError('the body must be a JSON object');
  const extra = Object.keys(body).filter((k) => k !== 'sizeBytes');
  if (extra.length > 0) throw new InvalidInputError(`only sizeBytes can be changed, not ${extra.join(', ')}`);
  const sizeBytes = integerField((body as { sizeBytes?: unknown }).sizeBytes, 'sizeBytes');
  const v = requireActive(await getVolume(volumeId), volumeId);
  if (sizeBytes > MAX_VOLUME_BYTES) throw new InvalidInputError(`sizeBytes must be at most ${MAX_VOLUME_BYTES}`);
  checkAligned(sizeBytes, v.blockSizeBytes, 'sizeBytes');
  return view(await growVolume(volumeId, sizeBytes));
}

function deletedView(volumeId: string): VolumeView {
  const now = new Date().toISOString();
  return { volumeId, sizeBytes: 0, blockSizeBytes: 0, dataChunks: 0, parityChunks: 0, pageBlocks: 0, state: 'deleted', commitSeq: 0, createdAt: now, updatedAt: now, checkpointEveryCommits: 0, checkpointSeq: null };
}

export interface ReclaimMessage {
  type: 'reclaim-volume';
  volumeId: string;
}

/**
 * Deletes a volume: it stops serving at once, and a background job reclaims its chunks and
 * items. Deleting a volume that is already being deleted queues the job again (harmless).
 */
export async function deleteVolume(volumeId: string): Promise<VolumeView> {
  await markDeleting(volumeId);
  const message: ReclaimMessage = { type: 'reclaim-volume', volumeId };
  await sqs().send(new SendMessageCommand({ QueueUrl: config().gcQueueUrl, MessageBody: JSON.stringify(message) }));
  const v = await getVolume(volumeId);
  // A reclaim that already finished leaves no item: report the volume as deleted.
  return v ? view(v) : { ...deletedView(volumeId) };
}

/** Bounded parallelism for background deletes. */
export async function forEachLimited<T>(items: AsyncIterable<T> | Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<number> {
  const inflight = new Set<Promise<void>>();
  let n = 0;
  for await (const item of items) {
    const p = fn(item).finally(() => inflight.delete(p));
    inflight.add(p);
    n++;
    if (inflight.size >= limit) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  return n;
}

/**
 * Reclaims a deleted volume: every segment record, then every chunk on every sled (committed,
 * orphaned or stray), every page item, then the volume item. Idempotent: a repeat finds less
 * to do.
 *
 * Records go first: an evacuation move in flight commits its new location with a condition
 * that the record exists, so once the records are gone no move can leave a copy behind; a move
 * that committed before put its copy on a sled before the listing below began.
 */
export async function reclaimVolume(volumeId: string): Promise<{ chunksDeleted: number; pagesDeleted: number; segmentsDeleted: number }> {
  const v = await getVolume(volumeId);
  if (!v) return { chunksDeleted: 0, pagesDeleted: 0, segmentsDeleted: 0 };
  invariant(v.state === 'deleting', `refusing to reclaim volume ${volumeId} in state ${v.state}`);
  const segKeys: ReturnType<typeof segmentKey>[] = [];
  for await (const s of listSegmentRecords(volumeId)) {
    segKeys.push(segmentKey(volumeId, s.segmentId));
    forgetSegment(segmentRef(volumeId, s.segmentId));
  }
  for await (const t of listSegmentTombstones(volumeId)) segKeys.push(segmentKey(volumeId, t.segmentId));
  await deleteItems('segments', segKeys);
  const chunksDeleted = await forEachLimited(listVolumeChunks(volumeId, config().sledBuckets), 16, deleteChunk);
  const pageKeys: ReturnType<typeof pageKey>[] = [];
  for await (const p of listPages(v)) pageKeys.push(pageKey(volumeId, p.page));
  await deleteItems('pages', pageKeys);
  await deleteVolumeItem(volumeId);
  return { chunksDeleted, pagesDeleted: pageKeys.length, segmentsDeleted: segKeys.length };
}

// ---------------------------------------------------------------------------------------
// The data path

/** One extent of a write: data for `data` blocks, or zeros when `data` is absent. */
export interface WritePiece {
  offset: number;
  length: number;
  data?: Buffer;
}

export interface WriteResult {
  volumeId: string;
  segmentId: string | null;
  commitSeq: number;
  bytesWritten: number;
  bytesZeroed: number;
}

/** Validates pieces against the volume; returns them sorted by offset. */
function checkPieces(v: VolumeRecord, pieces: readonly WritePiece[]): WritePiece[] {
  if (pieces.length === 0) throw new InvalidInputError('a write needs at least one extent');
  let dataBytes = 0;
  for (const p of pieces) {
    checkRange(v, p.offset, p.length, null);
    if (p.data) {
      invariant(p.data.length === p.length, 'piece data length differs from its length');
      dataBytes += p.length;
    }
  }
  if (dataBytes > MAX_IO_BYTES) throw new InvalidInputError(`a write carries at most ${MAX_IO_BYTES} bytes of data, this one ${dataBytes}`);
  const sorted = [...pieces].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    if (prev.offset + prev.length > sorted[i]!.offset) {
      throw new InvalidInputError(`extents [${prev.offset}, ${prev.offset + prev.length}) and [${sorted[i]!.offset}, ...) overlap`);
    }
  }
  return sorted;
}

/** Writes one block-aligned buffer at `offset`. Succeeds only once durable. */
export async function writeData(volumeId: string, offset: number, data: Buffer, writer: WriterIdentity = { id: HEAD_ID }): Promise<WriteResult> {
  if (data.length === 0) throw new InvalidInputError('the body is empty; send the bytes to write');
  if (data.length > MAX_IO_BYTES) throw new InvalidInputError(`a write carries at most ${MAX_IO_BYTES} bytes, this one ${data.length}`);
  return writePieces(volumeId, [{ offset, length: data.length, data }], writer);
}

/** Trims (zeroes) a range. Ranges over more pages than one commit holds become several commits. */
export async function trimRange(volumeId: string, offset: number, length: number, writer: WriterIdentity = { id: HEAD_ID }): Promise<WriteResult> {
  const v = requireActive(await getVolume(volumeId), volumeId);
  checkRange(v, offset, length, null);
  const span = MAX_PAGES_PER_COMMIT * v.pageBlocks * v.blockSizeBytes;
  let last: WriteResult | undefined;
  for (let pos = offset; pos < offset + length; ) {
    // Cut at page-group boundaries so each commit touches at most MAX_PAGES_PER_COMMIT pages.
    const end = Math.min(offset + length, (Math.floor(pos / span) + 1) * span);
    last = await writePieces(volumeId, [{ offset: pos, length: end - pos }], writer);
    pos = end;
  }
  return { ...last!, bytesZeroed: length };
}

/**
 * Writes several extents (data or zeros) as one segment and one commit: all or nothing.
 *
 * @example
 * await writePieces(id, [{ offset: 0, length: 4096, data }, { offset: 1 << 20, length: 8192 }]);
 */
export async function writePieces(volumeId: string, pieces: readonly WritePiece[], writer: WriterIdentity = { id: HEAD_ID }): Promise<WriteResult> {
  const entry: InflightWrite = { writer: writer.id, key: writer.key, extents: pieces.map((p) => ({ offset: p.offset, length: p.length, zero: !p.data })), startedAt: new Date().toISOString() };
  const set = inflight.get(volumeId) ?? new Set();
  inflight.set(volumeId, set.add(entry));
  try {
    for (let attempt = 0; attempt < COMMIT_ATTEMPT_MAX; attempt++) {
      if (attempt > 0) await sleep(Math.random() * Math.min(500, 10 * 2 ** attempt));
      const early = await readVolumeWithPages(volumeId, pieces);
      const v = requireActive(early ? early.volume : await getVolume(volumeId), volumeId);
      rememberGeometry(v);
      const sorted = checkPieces(v, pieces);
      const prepared = await prepareWrite(v, sorted, writer, { pages: early ?? undefined });
      entry.prepared = { segmentId: prepared.record.segmentId, locations: prepared.locations, pages: prepared.changes };
      const outcome = await completeWrite(prepared);
      if (outcome) {
        await checkpointAfterCommit(v, outcome.commitSeq);
        await maybeQueueGc(volumeId, outcome.commitSeq);
        return outcome;
      }
    }
    throw new UnavailableError(`volume ${volumeId} is busy: ${COMMIT_ATTEMPT_MAX} commit attempts lost to concurrent writers; retry`, { retryAfterSeconds: 1 });
  } finally {
    set.delete(entry);
    if (set.size === 0) inflight.delete(volumeId);
  }
}

/**
 * The volume item and the pages a write touches, in one request, when the volume's geometry is
 * known from an earlier request (it never changes) and the pieces could pass validation; null
 * otherwise (the caller reads the volume alone, and prepareWrite the pages).
 */
async function readVolumeWithPages(volumeId: string, pieces: readonly WritePiece[]): Promise<(PrefetchedPages & { volume: VolumeRecord | null }) | null> {
  const g = geometryCache.get(volumeId);
  if (!g) return null;
  const covered = new Set<number>();
  for (const p of pieces) {
    const plausible = Number.isSafeInteger(p.offset) && Number.isSafeInteger(p.length) && p.offset >= 0 && p.length > 0;
    if (!plausible || p.offset % g.blockSizeBytes !== 0 || p.length % g.blockSizeBytes !== 0) return null;
    for (const page of pageRange(g, p.offset, p.length)) covered.add(page);
    if (covered.size > MAX_PAGES_PER_COMMIT) return null; // refused later, with its own message
  }
  const { volume, pages } = await getVolumeWithPages(g, [...covered]);
  return { volume, pages, covered };
}

/** Page items read ahead of prepareWrite: `pages` holds those of `covered` that exist. */
export interface PrefetchedPages {
  pages: Map<number, PageRecord>;
  covered: Set<number>;
}

/**
 * Every `gcEveryCommits` commits the head queues a GC pass of the volume (docs/evacuation.md,
 * section 6). Best effort: the write is already durable, and the next trigger comes soon.
 */
async function maybeQueueGc(volumeId: string, commitSeq: number): Promise<void> {
  const every = config().gcEveryCommits;
  if (every === 0 || commitSeq % every !== 0) return;
  try {
    await sqs().send(new SendMessageCommand({ QueueUrl: config().gcQueueUrl, MessageBody: JSON.stringify({ type: 'gc-volume', volumeId }) }));
  } catch (err) {
    console.warn(`could not queue GC of ${volumeId} after commit ${commitSeq}:`, err);
  }
}

/** A write this process is carrying: what a diagnostic dump records if the head fails. */
export interface InflightWrite {
  writer: string;
  key: string | undefined;
  extents: Array<{ offset: number; length: number; zero: boolean }>;
  startedAt: string;
  /** Once its chunks are uploaded: the segment, where its chunks are, and the pages it merged. */
  prepared?: { segmentId: string; locations: ChunkLocation[]; pages: PageChange[] };
}

const inflight = new Map<string, Set<InflightWrite>>();

/** The writes in flight for a volume in this process. */
export function inflightWrites(volumeId: string): InflightWrite[] {
  return [...(inflight.get(volumeId) ?? [])];
}

/** A write whose chunks are uploaded and whose commit is ready to send. */
export interface PreparedWrite {
  volume: VolumeRecord;
  record: SegmentRecord;
  changes: PageChange[];
  writer: WriterIdentity;
  result: WriteResult;
  locations: ChunkLocation[];
  /**
   * The `ClientRequestToken` every attempt of this commit carries, so that DynamoDB answers a
   * repeat of an applied transaction with success. Correctness does not rest on it.
   */
  commitToken?: string;
}

/**
 * Steps 1 to 3 of the commit protocol (docs/page-map.md): check, build, upload. The commit
 * is `completeWrite`. They are separate so that tests can stall a writer between the two,
 * as a paused head would be.
 */
export async function prepareWrite(v: VolumeRecord, pieces: WritePiece[], requester: WriterIdentity, opts: { maintenance?: boolean; pages?: PrefetchedPages } = {}): Promise<PreparedWrite> {
  const bs = v.blockSizeBytes;
  // Fencing, part one: refuse at once what the reservation state refuses now. Part two is the
  // commit's own condition, which refuses it again if the state changes before the commit.
  // A maintenance writer (compaction) is fenced by the reservation generation at commit instead.
  const refusal = opts.maintenance ? null : writeRefusal(v.volumeId, v.reservations, requester.key);
  if (refusal) throw new FencedError(refusal);
  const writer: WriterIdentity = requester.key === undefined ? { id: requester.id } : { id: requester.id, key: requester.key, generation: v.reservations.registrants[requester.key]! };
  const seq = v.headSeq + 1;
  const segmentId = newSegmentId(seq);
  const ref = segmentRef(v.volumeId, segmentId);
  const incoming: Extent[] = [];
  const payloadParts: Buffer[] = [];
  let segBlock = 0;
  for (const p of pieces) {
    if (p.data) {
      incoming.push({ first: p.offset / bs, count: p.length / bs, seg: ref, segBlock });
      payloadParts.push(p.data);
      segBlock += p.length / bs;
    } else {
      incoming.push({ first: p.offset / bs, count: p.length / bs, seg: null, segBlock: 0 });
    }
  }
  const byPage = splitByPage(incoming, v.pageBlocks);
  if (byPage.size > MAX_PAGES_PER_COMMIT) {
    throw new InvalidInputError(`this write touches ${byPage.size} pages of ${v.pageBlocks * bs} bytes; one commit holds at most ${MAX_PAGES_PER_COMMIT}: split it`);
  }
  // The pages are needed only for the commit. Read with the volume item when they could be
  // (one request fewer), else now, while the segment is encoded and uploaded, which keeps the
  // round trip off the write's critical path.
  const prefetched = opts.pages && [...byPage.keys()].every((p) => opts.pages!.covered.has(p)) ? opts.pages.pages : undefined;
  const pagesRead = prefetched ? Promise.resolve(prefetched) : getPages(v, [...byPage.keys()]);
  pagesRead.catch(() => undefined); // Awaited below; this only stops an early rejection going unhandled.

  const encoded = await encodeSegment(
    {
      volumeId: v.volumeId,
      segmentId,
      seq,
      prev: v.headSegmentId,
      writer,
      k: v.dataChunks,
      m: v.parityChunks,
      blockSizeBytes: bs,
      extents: incoming.map((e) => [e.first, e.count, e.seg === null ? -1 : e.segBlock]),
    },
    payloadParts,
  );
  let locations: ChunkLocation[];
  try {
    const writable = await writableDrives();
    const planned = placeStripe(v.volumeId, segmentId, v.dataChunks + v.parityChunks, config().sledBuckets, writable);
    locations = await uploadChunks(v.volumeId, segmentId, planned, encoded.chunks, encoded.objectCrcs, encoded.descriptor.chunkSizeBytes, writable);
  } finally {
    // Every PUT of the chunks has settled (uploadChunks waits for all of them, failed or not).
    encoded.release();
  }
  let current: Awaited<typeof pagesRead>;
  try {
    current = await pagesRead;
  } catch (err) {
    await deleteChunksQuietly(locations);
    throw err;
  }
  const changes: PageChange[] = [...byPage].map(([page, top]) => {
    const old = current.get(page);
    return { page, oldVersion: old ? old.version : null, extents: overlay(old?.extents ?? [], top) };
  });

  const d = encoded.descriptor;
  const record: SegmentRecord = {
    volumeId: v.volumeId,
    segmentId,
    seq,
    prev: d.prev,
    k: d.k,
    m: d.m,
    chunkSizeBytes: d.chunkSizeBytes,
    granuleBytes: d.granuleBytes,
    blockSizeBytes: bs,
    payloadBytes: d.payloadBytes,
    locations,
    crcs: d.crcs,
    createdAt: d.createdAt,
  };
  const result: WriteResult = {
    volumeId: v.volumeId,
    segmentId,
    commitSeq: seq,
    bytesWritten: d.payloadBytes,
    bytesZeroed: pieces.filter((p) => !p.data).reduce((n, p) => n + p.length, 0),
  };
  return { volume: v, record, changes, writer, result, locations, commitToken: randomUUID() };
}

/**
 * Step 4 of the commit protocol. Returns the result once committed, or null when another
 * commit moved the head first (the caller prepares again); throws FencedError when the
 * writer's reservation no longer allows it. A refusal may answer a retry of an attempt that
 * applied (its response was lost), so every refusal is settled with `commitOutcome` before
 * anything is deleted (docs/page-map.md, "Settling an outcome").
 */
export async function completeWrite(prepared: PreparedWrite, writerOverride?: CommitWriter): Promise<WriteResult | null> {
  const { volume: v, record, changes, writer, result, locations } = prepared;
  const fencedOn = writerOverride ?? commitWriter(writer);
  const commitToken = prepared.commitToken ?? randomUUID();
  try {
    await commitSegment(v, record, changes, fencedOn, commitToken);
    return result;
  } catch (err) {
    if (err instanceof CommitRefusedError) return settleRefusal(prepared, err);
    // The outcome is unknown: find out from the volume item and the segment record.
    return resolveUnknownOutcome(prepared, fencedOn, commitToken, err);
  }
}

/** What became of a segment's commit, as far as can be proven (docs/page-map.md). */
export type CommitOutcome = 'committed' | 'never' | 'pending';

/**
 * Settles a commit from `observed`, the volume item as it was read (or returned by a refusal)
 * **before** this call reads the segment record. `never` is a proof: the head has moved past
 * `seq - 1` without the segment, so its transaction can no longer apply.
 */
export async function commitOutcome(record: Pick<SegmentRecord, 'volumeId' | 'segmentId' | 'seq'>, observed: Pick<VolumeRecord, 'headSeq' | 'headSegmentId'> | null): Promise<CommitOutcome> {
  if (!observed) return 'pending'; // the volume is gone: its reclaim deletes everything, not us
  if (observed.headSegmentId === record.segmentId) return 'committed';
  if (observed.headSeq < record.seq) return 'pending'; // the head still stands where we built on (or the commit is not due)
  // The head moved past seq - 1: the transaction cannot apply any more; the record says whether it did.
  return (await getSegmentRecord(record.volumeId, record.segmentId)) ? 'committed' : 'never';
}

async function settleRefusal(prepared: PreparedWrite, err: CommitRefusedError): Promise<WriteResult | null> {
  const { volume: v, record, result, locations } = prepared;
  let outcome = await commitOutcome(record, err.currentVolume ?? null);
  // Pending (the head still stands at seq - 1: fenced, or not active): make it final. A
  // tombstone under the segment id refuses the commit for good, or finds its record.
  if (outcome === 'pending' && err.reason !== 'volume-gone') outcome = (await tombstoneSegment(v.volumeId, record.segmentId, record.seq)) === 'tombstoned' ? 'never' : 'committed';
  if (outcome === 'committed') {
    console.warn(`commit of ${v.volumeId}/${record.segmentId} was refused (${err.reason}) after an earlier attempt of it applied; acknowledged`);
    return result;
  }
  // Pending only when the volume is gone: its reclaim deletes the chunks.
  if (outcome === 'never') await deleteChunksQuietly(locations);
  if (err.reason === 'fenced') throw new FencedError(err.message);
  if (err.reason === 'volume-gone') throw new NotFoundError(`volume ${v.volumeId} does not exist`);
  if (err.reason === 'volume-not-active' && err.currentVolume?.state === 'rebuilding') throw rebuildingError(v.volumeId);
  if (err.reason === 'volume-not-active') throw new NotFoundError(`volume ${v.volumeId} is being deleted`);
  if (err.reason === 'page-moved') console.error(`commit refused with page-moved on ${v.volumeId}: ${err.message}`);
  invariant(outcome === 'never', () => `a ${err.reason} refusal of ${record.segmentId} settled as ${outcome}`);
  return null;
}

/** Attempts to settle an unknown outcome before the write answers 503. */
const UNKNOWN_OUTCOME_ATTEMPT_MAX = 6;

async function resolveUnknownOutcome(prepared: PreparedWrite, writer: CommitWriter, commitToken: string, firstError: unknown): Promise<WriteResult | null> {
  const { volume: v, record, changes, result, locations } = prepared;
  let lastError = firstError;
  for (let attempt = 0; attempt < UNKNOWN_OUTCOME_ATTEMPT_MAX; attempt++) {
    await sleep(50 * 2 ** attempt);
    try {
      // The volume item first, then the record: in the other order our transaction could
      // apply between the two reads and be taken for never committed.
      const now = await getVolume(v.volumeId);
      const outcome = await commitOutcome(record, now);
      if (outcome === 'committed') return result;
      if (outcome === 'never') {
        await deleteChunksQuietly(locations);
        return null;
      }
      if (!now) throw new NotFoundError(`volume ${v.volumeId} does not exist`);
      // Pending: send the very same transaction again (same token). If an earlier attempt
      // applies first, this one is refused and settled as committed.
      await commitSegment(v, record, changes, writer, commitToken);
      return result;
    } catch (err) {
      if (err instanceof CommitRefusedError) return settleRefusal(prepared, err);
      if (err instanceof NotFoundError) throw err;
      lastError = err;
    }
  }
  throw new UnavailableError(`commit of segment ${record.segmentId} to volume ${v.volumeId} could not be confirmed; retry the write`, {
    cause: lastError,
    retryAfterSeconds: 2,
  });
}

function commitWriter(writer: WriterIdentity): CommitWriter {
  return writer.key === undefined ? {} : { key: writer.key, keyGeneration: writer.generation };
}

/**
 * One chunk PUT with bounded retries on top of the SDK's own. A 412 means the key exists: it is
 * never overwritten, and counts as written only if the stored object is exactly this chunk (an
 * earlier attempt whose response was lost, retried by the SDK or by this loop).
 */
async function putWithRetries(loc: ChunkLocation, chunk: Buffer, crc: number): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await putChunk(loc, chunk, crc);
      return;
    } catch (err) {
      if (isPreconditionFailed(err)) {
        if (await storedChunkEquals(loc, chunk, crc)) return;
        throw err;
      }
      if (attempt >= UPLOAD_ATTEMPT_MAX) throw err;
      await sleep(50 * 2 ** attempt);
    }
  }
}

/**
 * Uploads chunks to exactly the given locations (checkpoints place their own stripes), all or
 * nothing: on any failure the chunks written are deleted and the upload fails with 503.
 */
export async function uploadChunksAt(locations: ChunkLocation[], chunks: Buffer[], crcs: number[], chunkSizeBytes: number): Promise<void> {
  invariant(locations.length === chunks.length, 'one location per chunk');
  invariant(chunks.every((c) => c.length >= chunkSizeBytes), 'every chunk has its data');
  const results = await Promise.allSettled(chunks.map((chunk, i) => putWithRetries(locations[i]!, chunk, crcs[i]!)));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed.length > 0) {
    await deleteChunksQuietly(locations);
    throw new UnavailableError(`${failed.length} of ${chunks.length} chunk uploads failed: ${String(failed[0]!.reason?.message ?? failed[0]!.reason)}`, { cause: failed[0]!.reason });
  }
}

/**
 * Uploads the k+m chunks of a segment, each to its planned location; a chunk whose drive keeps
 * failing is written again, from memory, to a drive on a sled the stripe does not use (seed
 * 000; docs/evacuation.md, section 1). Returns the final locations, which the commit records.
 * Without a free sled the write fails with 503 rather than put two chunks on one sled.
 */
async function uploadChunks(
  volumeId: string,
  segmentId: string,
  planned: ChunkLocation[],
  chunks: Buffer[],
  crcs: number[],
  chunkSizeBytes: number,
  writable: WritableDrives,
): Promise<ChunkLocation[]> {
  invariant(planned.length === chunks.length, 'one location per chunk');
  invariant(chunks.every((c) => c.length > chunkSizeBytes), 'every chunk has data and a trailer');
  // The stripe as it stands: a replacement is chosen and recorded here synchronously, so two
  // chunks failing at once cannot pick the same free sled.
  const stripe = [...planned];
  const failed: Array<{ loc: ChunkLocation; err: unknown }> = [];
  const results = await Promise.allSettled(
    chunks.map(async (chunk, i) => {
      const tried = new Set<string>();
      for (let replacement = 0; ; replacement++) {
        const loc = stripe[i]!;
        try {
          await putWithRetries(loc, chunk, crcs[i]!);
          return;
        } catch (err) {
          if (isPreconditionFailed(err)) throw err;
          failed.push({ loc, err });
          tried.add(loc.bucket);
          if (replacement >= REPLACEMENT_MAX) throw err;
          const next = replacementLocation(volumeId, segmentId, i, stripe, tried, config().sledBuckets, writable);
          if (!next) {
            throw new UnavailableError(
              `chunk ${i} of segment ${segmentId} could not be written to ${formatLocation(loc)}, and no other sled with an active drive is free for it; two chunks of a stripe never share a sled`,
              { cause: err, retryAfterSeconds: 5 },
            );
          }
          console.warn(`chunk ${i} of ${volumeId}/${segmentId}: ${formatLocation(loc)} failed (${(err as Error).message}); writing it to ${formatLocation(next)}`);
          stripe[i] = next;
        }
      }
    }),
  );
  // Count the failures against their drives before answering (each may retire its drive).
  const drivesFailed = new Map<string, { loc: ChunkLocation; err: unknown }>();
  for (const f of failed) drivesFailed.set(`${f.loc.bucket}/${f.loc.key.split('/')[0]}`, f);
  await Promise.all([...drivesFailed.values()].map((f) => noteWriteError(f.loc, f.err)));
  const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (rejected.length > 0) {
    await deleteChunksQuietly([...stripe, ...failed.map((f) => f.loc)]);
    const first = rejected[0]!.reason;
    if (first instanceof UnavailableError) throw first;
    throw new UnavailableError(`${rejected.length} of ${chunks.length} chunk uploads failed: ${String(first?.message ?? first)}`, { cause: first });
  }
  // A PUT that failed may still have stored its object (a lost response): it is unreferenced.
  if (failed.length > 0) void deleteChunksQuietly(failed.map((f) => f.loc));
  invariant(sledsDistinct(stripe), () => `stripe of ${segmentId} lost distinct sleds after replacements`);
  return stripe;
}

export async function deleteChunksQuietly(locations: ChunkLocation[]): Promise<void> {
  // Best effort: an orphan chunk left behind is unreferenced and reclaimed by GC.
  await Promise.allSettled(locations.map((l) => deleteChunk(l)));
}

/** The parts of a volume record that never change after creation. */
type Geometry = Pick<VolumeRecord, 'volumeId' | 'blockSizeBytes' | 'pageBlocks'>;
const geometryCache = new Map<string, Geometry>();
const GEOMETRY_CACHE_MAX = 4096;

function rememberGeometry(v: VolumeRecord): void {
  if (geometryCache.has(v.volumeId)) return;
  if (geometryCache.size >= GEOMETRY_CACHE_MAX) geometryCache.delete(geometryCache.keys().next().value!);
  geometryCache.set(v.volumeId, { volumeId: v.volumeId, blockSizeBytes: v.blockSizeBytes, pageBlocks: v.pageBlocks });
}

/** Page numbers covering a block-aligned byte range. */
function pageRange(g: Geometry, offset: number, length: number): number[] {
  const first = offset / g.blockSizeBytes;
  const end = first + length / g.blockSizeBytes;
  const pages: number[] = [];
  for (let p = Math.floor(first / g.pageBlocks); p * g.pageBlocks < end; p++) pages.push(p);
  return pages;
}

/** Bounded cache of segment records; they are immutable apart from chunk locations. */
const segmentCache = new Map<string, SegmentRecord>();
const SEGMENT_CACHE_MAX = 4096;

function rememberSegment(ref: string, rec: SegmentRecord): void {
  if (!segmentCache.has(ref) && segmentCache.size >= SEGMENT_CACHE_MAX) segmentCache.delete(segmentCache.keys().next().value!);
  segmentCache.set(ref, rec);
}

/** Drops a segment's record from this process's cache (after it moved a chunk or deleted it). */
export function forgetSegment(ref: string): void {
  segmentCache.delete(ref);
}

async function segmentRecordsFor(refs: string[]): Promise<Map<string, SegmentRecord>> {
  const out = new Map<string, SegmentRecord>();
  const missing: string[] = [];
  for (const ref of refs) {
    const hit = segmentCache.get(ref);
    if (hit) out.set(ref, hit);
    else missing.push(ref);
  }
  if (missing.length > 0) {
    const fetched = await getSegmentRecords(missing);
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
): Promise<Buffer> {
  // A volume's geometry never changes, so once known, its pages are read in the same request
  // as the volume item (which still decides existence, state and size).
  const known = geometryCache.get(volumeId);
  const plausible = Number.isSafeInteger(offset) && offset >= 0 && length > 0 && length <= MAX_IO_BYTES;
  const together = known && plausible && offset % known.blockSizeBytes === 0 && length % known.blockSizeBytes === 0;
  // Anything implausible is refused below, after a volume read only.
  const both = together ? await getVolumeWithPages(known, pageRange(known, offset, length)) : null;
  const fresh = both ? both.volume : await getVolume(volumeId);
  const early = both?.pages ?? null;
  const v = requireActive(fresh, volumeId);
  rememberGeometry(v);
  const refusal = readRefusal(volumeId, v.reservations, key);
  if (refusal) throw new FencedError(refusal);
  checkRange(v, offset, length, MAX_IO_BYTES);
  const bs = v.blockSizeBytes;
  const first = offset / bs;
  const end = first + length / bs;
  const pageNums = pageRange(v, offset, length);
  const pages = early ?? (await getPages(v, pageNums));
  const extents = pageNums.flatMap((p) => clip(pages.get(p)?.extents ?? [], first, end)).filter((e) => e.seg !== null);

  const out = Buffer.alloc(length);
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
      const parts = await readSegmentFollowingMoves(ref, records.get(ref)!, ranges, report);
      list.forEach((e, i) => parts[i]!.copy(out, (e.first - first) * bs));
    }),
  );
  return out;
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
async function readSegmentFollowingMoves(ref: string, rec: SegmentRecord, ranges: PayloadRange[], report: ReadReport): Promise<Buffer[]> {
  const first: ReadReport = { rangedGets: 0, badGranules: 0, rebuiltGranules: 0, missingChunks: 0 };
  let parts: Buffer[] | undefined;
  let failure: unknown;
  try {
    parts = await readPayload(rec, ranges, first);
  } catch (err) {
    if (!(err instanceof DataUnavailableError)) throw err;
    failure = err;
  }
  const merge = (r: ReadReport) => {
    report.rangedGets += r.rangedGets;
    report.badGranules += r.badGranules;
    report.rebuiltGranules += r.rebuiltGranules;
    report.missingChunks = (report.missingChunks ?? 0) + (r.missingChunks ?? 0);
  };
  if (!failure && !first.missingChunks) {
    merge(first);
    return parts!;
  }
  segmentCache.delete(ref);
  const fresh = await getSegmentRecord(rec.volumeId, rec.segmentId);
  if (fresh) rememberSegment(ref, fresh);
  if (!fresh || sameLocations(fresh, rec)) {
    merge(first);
    if (failure) throw failure;
    return parts!;
  }
  // A chunk moved: the first attempt's rebuild work is not what the client should see.
  report.rangedGets += first.rangedGets;
  report.missingChunks = (report.missingChunks ?? 0) + (first.missingChunks ?? 0);
  return readPayload(fresh, ranges, report);
}

// ---------------------------------------------------------------------------------------
// Reservations

export interface ReservationView {
  volumeId: string;
  generation: number;
  registrants: Array<{ key: string; generation: number }>;
  reservation: { holder: string; type: string } | null;
}

export function reservationView(volumeId: string, r: ReservationState): ReservationView {
  return {
    volumeId,
    generation: r.generation,
    registrants: Object.entries(r.registrants)
      .map(([key, generation]) => ({ key, generation }))
      .sort((a, b) => a.generation - b.generation),
    reservation: r.reservation,
  };
}

export async function describeReservations(volumeId: string): Promise<ReservationView> {
  const v = requireActive(await getVolume(volumeId), volumeId);
  return reservationView(volumeId, v.reservations);
}

const RESERVATION_ATTEMPT_MAX = 8;

/**
 * Runs one reservation command (docs/reservations.md): read the state, apply the rule, store
 * the result on condition that the generation did not move; re-read and retry when it did.
 */
export async function reservationCommand(volumeId: string, body: Record<string, unknown>): Promise<ReservationView> {
  const cmd = parseCommand(body);
  for (let attempt = 0; attempt < RESERVATION_ATTEMPT_MAX; attempt++) {
    if (attempt > 0) await sleep(Math.random() * 20 * 2 ** attempt);
    const v = requireActive(await getVolume(volumeId), volumeId);
    const next = apply(volumeId, v.reservations, cmd);
    if (next === v.reservations) return reservationView(volumeId, next);
    if (await storeReservations(volumeId, v.reservations.generation, next)) return reservationView(volumeId, next);
  }
  throw new UnavailableError(`reservations of volume ${volumeId} kept changing under ${RESERVATION_ATTEMPT_MAX} attempts; retry`);
}
