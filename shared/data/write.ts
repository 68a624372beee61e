/**
 * The write path: writes, trims and batches as segments, and the commit protocol of
 * docs/page-map.md with its outcome settling ("Settling an outcome"): `prepareWrite` checks,
 * builds and uploads; `completeWrite` commits and settles a refusal or an unknown outcome.
 * The chain that orders one writer's pipelined writes is shared/data/write-pipeline.ts.
 */
import { randomUUID } from 'node:crypto';
import { checkpointAfterCommit } from '../maintenance/checkpoint-messages.ts';
import { config } from '../core/config.ts';
import { ConflictError, FencedError, InvalidInputError, NotFoundError, UnavailableError, invariant } from '../core/errors.ts';
import { encodePage, overlay, splitByPage, type Extent } from './extents.ts';
import {
  CommitRefusedError,
  MAX_PAGES_PER_COMMIT,
  segmentRef,
  type CommitWriter,
  type FrozenPage,
  type PageChange,
  type PageRecord,
  type SegmentRecord,
  type VolumeRecord,
  type WriteBarrier,
} from '../core/records.ts';
import { sleep } from '../core/async.ts';
import { encodeSegment, newSegmentId, segmentRecordOf, type SegmentDescriptor, type WriterIdentity } from './segments.ts';
import { writeRefusal } from '../control/reservations.ts';
import { type ChunkLocation } from './sleds.ts';
import { writableDrives } from '../maintenance/drives.ts';
import { placeStripe } from './placement.ts';
import { HEAD_ID, MAX_IO_BYTES, checkRange, rebuildingError, requireActive } from './volume-rules.ts';
import { deleteChunksQuietly, uploadChunks } from './upload.ts';
import { geometryCache, pageRange, rememberGeometry } from './read.ts';
import { workQueue } from '../ports.ts';
import { pageMap } from '../ports.ts';
import { joinChain, leaveChain, pagesAfter, pagesOf, PredecessorFailedError } from './write-pipeline.ts';
import { isFolding, rememberTailSegment, tailFull } from './tail.ts';
import { foldDue, foldVolume, queueFold } from '../maintenance/fold.ts';

/** Extents one segment of a folding volume holds at most: its record stays under DynamoDB's 400 KB item (at most 18 bytes each, about 4 for a scattered 4 KiB write). */
export const MAX_SEGMENT_EXTENTS = 16384;
import { INTENT_WAIT_MAX_MS, openIntentAndWait } from './intent-wait.ts';

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

export const COMMIT_ATTEMPT_MAX = 8;

/** Writes one block-aligned buffer at `offset`. Succeeds only once durable. */
export async function writeData(volumeId: string, offset: number, data: Buffer, writer: WriterIdentity = { id: HEAD_ID }): Promise<WriteResult> {
  if (data.length === 0) throw new InvalidInputError('the body is empty; send the bytes to write');
  if (data.length > MAX_IO_BYTES) throw new InvalidInputError(`a write carries at most ${MAX_IO_BYTES} bytes, this one ${data.length}`);
  return writePieces(volumeId, [{ offset, length: data.length, data }], writer);
}

/** Trims (zeroes) a range. Ranges over more pages than one commit holds become several commits. */
export async function trimRange(volumeId: string, offset: number, length: number, writer: WriterIdentity = { id: HEAD_ID }): Promise<WriteResult> {
  const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
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
  const entry: InflightWrite = {
    writer: writer.id,
    key: writer.key,
    extents: pieces.map((p) => ({ offset: p.offset, length: p.length, zero: !p.data })),
    startedAt: new Date().toISOString(),
  };
  const set = inflight.get(volumeId) ?? new Set();
  inflight.set(volumeId, set.add(entry));
  // Pipelining (shared/data/write-pipeline.ts): the write this process started last on the volume, if the same writer's.
  const { link, predecessor } = joinChain(volumeId, writer);
  try {
    for (let attempt = 0; attempt < COMMIT_ATTEMPT_MAX; attempt++) {
      if (attempt > 0) await sleep(Math.random() * Math.min(500, 10 * 2 ** attempt));
      // The first attempt builds on the predecessor when there is one; retries on the head.
      let base = attempt === 0 && predecessor ? await predecessor.built.promise : null;
      if (base && tailFull(base.volume, base.seq)) {
        // A commit on the predecessor would find the tail full (docs/page-map.md, "Folding") and be
        // refused: wait for the predecessor to settle, then fold and commit on the head below, in
        // order, instead of uploading a segment bound to be refused.
        await predecessor!.settled.promise;
        base = null;
      }
      let v: VolumeRecord;
      let opts: { pages?: PrefetchedPages; readPages?: (pages: number[]) => Promise<Map<number, PageRecord>> };
      if (base) {
        v = { ...base.volume, headSeq: base.seq, headSegmentId: base.segmentId };
        const volume = v;
        opts = { readPages: (pages) => pagesAfter(predecessor!, volume, pages) };
      } else {
        const early = await readVolumeWithPages(volumeId, pieces);
        v = requireActive(early ? early.volume : await pageMap().getVolume(volumeId), volumeId);
        rememberGeometry(v);
        opts = { pages: early ?? undefined };
        if (tailFull(v)) {
          // The tail is full (docs/page-map.md, "Folding"): the write waits while it is folded here.
          await foldVolume(volumeId, { batchesMax: 1 });
          v = requireActive(await pageMap().getVolume(volumeId), volumeId);
          opts = {};
        }
      }
      const sorted = checkPieces(v, pieces);
      const volume = v;
      let prepared: PreparedWrite;
      let outcome: WriteResult | null;
      try {
        prepared = await prepareWrite(v, sorted, writer, {
          ...opts,
          ...(attempt === 0 ? { onBuilt: (seq: number, segmentId: string) => link.built.resolve({ volume, seq, segmentId }) } : {}),
        });
        entry.prepared = { segmentId: prepared.record.segmentId, locations: prepared.locations, pages: prepared.changes };
        outcome = await completeWrite(prepared);
      } catch (err) {
        if (attempt === 0) link.settled.resolve(null);
        // The predecessor did not commit: this attempt's chunks are deleted; start over on the head.
        if (err instanceof PredecessorFailedError) continue;
        throw err;
      }
      if (attempt === 0) link.settled.resolve(outcome ? pagesOf(prepared.changes) : null);
      if (outcome) {
        await afterCommit(v, prepared, outcome);
        return outcome;
      }
    }
    throw new UnavailableError(`volume ${volumeId} is busy: ${COMMIT_ATTEMPT_MAX} commit attempts lost to concurrent writers; retry`, { retryAfterSeconds: 1 });
  } finally {
    leaveChain(volumeId, link);
    set.delete(entry);
    if (set.size === 0) inflight.delete(volumeId);
  }
}

/** What follows every commit of a write (direct or by reference): the tail, fold, checkpoint and GC triggers. */
export async function afterCommit(v: VolumeRecord, prepared: PreparedWrite, outcome: WriteResult): Promise<void> {
  if (isFolding(v) && prepared.changes.length === 0) {
    rememberTailSegment(v, prepared.record);
    // Up to this commit, not to whatever the head is when the worker runs: a message redelivered
    // after its worker outlived its timeout then folds the same range, and skips the pages the
    // first attempt wrote instead of folding them again to a newer head.
    if (foldDue(v, outcome.commitSeq)) await queueFold(v.volumeId, outcome.commitSeq);
  }
  await checkpointAfterCommit(v, outcome.commitSeq);
  await maybeQueueGc(v.volumeId, outcome.commitSeq);
}

/**
 * The volume item and the pages a write touches, in one request, when the volume's geometry is
 * known from an earlier request (it never changes) and the pieces could pass validation; null
 * otherwise (the caller reads the volume alone, and prepareWrite the pages).
 */
async function readVolumeWithPages(volumeId: string, pieces: readonly WritePiece[]): Promise<(PrefetchedPages & { volume: VolumeRecord | null }) | null> {
  const g = geometryCache.get(volumeId);
  // A folding volume's tail commit reads no page (docs/page-map.md, "Folding").
  if (!g || g.folding) return null;
  const covered = new Set<number>();
  for (const p of pieces) {
    const plausible = Number.isSafeInteger(p.offset) && Number.isSafeInteger(p.length) && p.offset >= 0 && p.length > 0;
    if (!plausible || p.offset % g.blockSizeBytes !== 0 || p.length % g.blockSizeBytes !== 0) return null;
    for (const page of pageRange(g, p.offset, p.length)) covered.add(page);
    if (covered.size > MAX_PAGES_PER_COMMIT) return null; // refused later, with its own message
  }
  const { volume, pages } = await pageMap().getVolumeWithPages(g, [...covered]);
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
    await workQueue().send({ type: 'gc-volume', volumeId });
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
  /** Pages to freeze under the newest snapshot's tag before the commit (docs/snapshots.md). */
  freeze?: FrozenPage[];
  /** Every page the commit changes, as it was read (`tag` unset), to freeze again under a newer snapshot. */
  before?: FrozenPage[];
}

/**
 * Steps 1 to 3 of the commit protocol (docs/page-map.md): check, build, upload. The commit
 * is `completeWrite`. They are separate so that tests can stall a writer between the two,
 * as a paused head would be.
 */
export async function prepareWrite(
  v: VolumeRecord,
  pieces: WritePiece[],
  requester: WriterIdentity,
  opts: {
    maintenance?: boolean;
    pages?: PrefetchedPages;
    /** Reads the pages the commit changes (instead of the page map), after the upload started. */
    readPages?: (pages: number[]) => Promise<Map<number, PageRecord>>;
    /** Told the segment's seq and id as soon as they are chosen, before anything is uploaded. */
    onBuilt?: (seq: number, segmentId: string) => void;
    /** A rollback: these pages are replaced whole (docs/snapshots.md, "Rollback"). */
    replacePages?: Map<number, Extent[]>;
    /**
     * A segment a gateway encoded and uploaded itself (docs/nbd-gateway.md, "Direct writes"),
     * already checked against `pieces` and its chunks verified: it is committed as is, nothing
     * is encoded or uploaded, and its chunks are not deleted when the pages cannot be read.
     */
    uploaded?: { descriptor: SegmentDescriptor; locations: ChunkLocation[] };
  } = {},
): Promise<PreparedWrite> {
  const bs = v.blockSizeBytes;
  // Fencing, part one: refuse at once what the reservation state refuses now. Part two is the
  // commit's own condition, which refuses it again if the state changes before the commit.
  // A maintenance writer (compaction) is fenced by the reservation generation at commit instead.
  const refusal = opts.maintenance ? null : writeRefusal(v.volumeId, v.reservations, requester.key);
  if (refusal) throw new FencedError(refusal);
  let writer: WriterIdentity =
    requester.key === undefined ? { id: requester.id } : { id: requester.id, key: requester.key, generation: v.reservations.registrants[requester.key]! };
  const uploaded = opts.uploaded;
  if (uploaded) {
    const d = uploaded.descriptor;
    // The segment names the head it was planned on; only that head can take it.
    if (d.seq !== v.headSeq + 1 || d.prev !== v.headSegmentId) throw new ConflictError(`segment ${d.segmentId} was planned on another head; plan again`);
    if (d.writer.key !== writer.key || d.writer.generation !== writer.generation) {
      throw new FencedError(`segment ${d.segmentId} was planned under reservation key generation ${d.writer.generation}, which is no longer the key's`);
    }
    writer = d.writer;
  }
  const seq = uploaded ? uploaded.descriptor.seq : v.headSeq + 1;
  const segmentId = uploaded ? uploaded.descriptor.segmentId : newSegmentId(seq);
  opts.onBuilt?.(seq, segmentId);
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
  // A rollback replaces pages whole: one block of zeros carries the descriptor, no extents.
  const replace = opts.replacePages;
  if (replace) {
    invariant(pieces.length === 0, 'a page replacement carries no extents');
    payloadParts.push(Buffer.alloc(bs));
  }
  // A folding volume's commit records the segment's extents and writes no page (docs/page-map.md,
  // "Folding"); a page replacement is a direct commit, which writes its pages.
  const tail = isFolding(v) && !replace;
  if (tail && incoming.length > MAX_SEGMENT_EXTENTS) {
    throw new InvalidInputError(`this write has ${incoming.length} extents; one commit holds at most ${MAX_SEGMENT_EXTENTS}: split it`);
  }
  const byPage = tail ? new Map<number, Extent[]>() : (replace ?? splitByPage(incoming, v.pageBlocks));
  if (byPage.size > MAX_PAGES_PER_COMMIT) {
    throw new InvalidInputError(
      `this write touches ${byPage.size} pages of ${v.pageBlocks * bs} bytes; one commit holds at most ${MAX_PAGES_PER_COMMIT}: split it`,
    );
  }
  // The pages are needed only for the commit. Read with the volume item when they could be
  // (one request fewer), else now, while the segment is encoded and uploaded, which keeps the
  // round trip off the write's critical path.
  const prefetched = opts.pages && [...byPage.keys()].every((p) => opts.pages!.covered.has(p)) ? opts.pages.pages : undefined;
  const pages = [...byPage.keys()];
  let pagesRead: Promise<Map<number, PageRecord>>;
  if (prefetched) pagesRead = Promise.resolve(prefetched);
  // A pipelined write waits for its predecessor's commit here (readPages settles with it). A tail
  // commit reads no page but must wait too: sent earlier, it would find the head behind it.
  else if (opts.readPages) pagesRead = opts.readPages(pages);
  else if (tail) pagesRead = Promise.resolve(new Map<number, PageRecord>());
  else pagesRead = pageMap().getPages(v, pages);
  pagesRead.catch(() => undefined); // Awaited below; this only stops an early rejection going unhandled.

  let d: SegmentDescriptor;
  let locations: ChunkLocation[];
  if (uploaded) {
    d = uploaded.descriptor;
    locations = uploaded.locations;
  } else {
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
        ...(replace
          ? {
              pages: [...replace].map(([page, extents]): [number, string[], string] => {
                const enc = encodePage(extents, page, v.pageBlocks);
                return [page, enc.segs, Buffer.from(enc.ext).toString('base64')];
              }),
            }
          : {}),
      },
      payloadParts,
    );
    try {
      const writable = await writableDrives();
      const planned = placeStripe(v.volumeId, segmentId, v.dataChunks + v.parityChunks, config().sledBuckets, writable);
      locations = await uploadChunks(v.volumeId, segmentId, planned, encoded.chunks, encoded.objectCrcs, encoded.descriptor.chunkSizeBytes, writable);
    } finally {
      // Every PUT of the chunks has settled (uploadChunks waits for all of them, failed or not).
      encoded.release();
    }
    d = encoded.descriptor;
  }
  let current: Awaited<typeof pagesRead>;
  try {
    current = await pagesRead;
  } catch (err) {
    // A gateway's uploaded segment stays: its commit may be sent again (GC removes it otherwise).
    if (!uploaded) await deleteChunksQuietly(locations);
    throw err;
  }
  const changes: PageChange[] = [...byPage].map(([page, top]) => {
    const old = current.get(page);
    return { page, oldVersion: old ? old.version : null, extents: replace ? top : overlay(old?.extents ?? [], top) };
  });
  // Copy on first write after a snapshot (docs/snapshots.md): each changed page as it was, under
  // the newest snapshot's tag; put only where absent, just before the commit.
  const tag = v.snapSeq;
  const freeze: FrozenPage[] =
    tag === undefined
      ? []
      : [...byPage.keys()]
          // A page whose last commit already made sure of a copy under this tag needs no put.
          .filter((page) => current.get(page)?.frozenTag !== tag)
          .map((page) => {
            const old = current.get(page);
            return { tag, page, version: old?.version ?? 0, extents: old?.extents ?? [] };
          });

  // The descriptor was built from this segment's id, seq and block size (encodeSegment above).
  const record: SegmentRecord = segmentRecordOf(d, locations);
  if (tail) record.extents = d.extents;
  const result: WriteResult = {
    volumeId: v.volumeId,
    segmentId,
    commitSeq: seq,
    bytesWritten: d.payloadBytes,
    bytesZeroed: pieces.filter((p) => !p.data).reduce((n, p) => n + p.length, 0),
  };
  const before = [...byPage.keys()].map((page): FrozenPage => {
    const old = current.get(page);
    return { tag: 0, page, version: old?.version ?? 0, extents: old?.extents ?? [] };
  });
  return { volume: v, record, changes, writer, result, locations, commitToken: randomUUID(), freeze, before };
}

/**
 * Step 4 of the commit protocol. Returns the result once committed, or null when another
 * commit moved the head first (the caller prepares again); throws FencedError when the
 * writer's reservation no longer allows it. A refusal may answer a retry of an attempt that
 * applied (its response was lost), so every refusal is settled with `commitOutcome` before
 * anything is deleted (docs/page-map.md, "Settling an outcome").
 */
export async function completeWrite(prepared: PreparedWrite, writerOverride?: CommitWriter): Promise<WriteResult | null> {
  const { record, changes, writer, result } = prepared;
  const v = prepared.volume;
  const fencedOn = writerOverride ?? commitWriter(writer);
  const commitToken = prepared.commitToken ?? randomUUID();
  if (prepared.freeze && prepared.freeze.length > 0) {
    try {
      // The pages were read after the volume item: if a snapshot was taken in between, a page may
      // already hold a commit made after it, and freezing that under the older tag would change
      // the older snapshot. The tag is still current now, so the pages read before are as of it;
      // otherwise no copy is put, and the commit is refused ('snapshot-moved') and prepared again.
      const now = await pageMap().getVolume(v.volumeId);
      if (now?.snapSeq === v.snapSeq) await pageMap().freezePages(v.volumeId, v.pageBlocks, prepared.freeze);
    } catch (err) {
      await deleteChunksQuietly(prepared.locations); // no commit was sent for this segment
      throw err;
    }
    prepared.freeze = [];
  }
  let token = commitToken;
  for (let refrozen = 0, startedMs = Date.now(); ; ) {
    try {
      await pageMap().commitSegment(prepared.volume, record, changes, fencedOn, token);
      return result;
    } catch (err) {
      const moved = err instanceof CommitRefusedError && err.reason === 'snapshot-moved' ? err.currentVolume : undefined;
      if (moved?.snapSeq !== undefined && moved.headSeq === v.headSeq && prepared.before && refrozen < REFREEZE_MAX) {
        // A snapshot (a group snapshot, often) was taken after the pages were read, and nothing
        // committed since: the pages as read are the pages at its tag. Freeze them under it and
        // send the same segment again, instead of building and uploading it anew. The refused
        // attempt applied nothing; the new one gets a new token (its parameters differ).
        try {
          await pageMap().freezePages(
            v.volumeId,
            v.pageBlocks,
            prepared.before.map((p) => ({ ...p, tag: moved.snapSeq! })),
          );
        } catch (freezeErr) {
          await deleteChunksQuietly(prepared.locations); // no attempt of this commit applied or is outstanding
          throw freezeErr;
        }
        prepared.volume = { ...prepared.volume, snapSeq: moved.snapSeq };
        token = randomUUID();
        refrozen++;
        continue;
      }
      const barrier = err instanceof CommitRefusedError && err.reason === 'barrier-raised' ? err.currentVolume?.barrier : undefined;
      if (barrier && Date.now() - startedMs < BARRIER_WAIT_MAX_MS) {
        // A group snapshot holds the volume still (docs/consistency-groups.md): the condition
        // refused this attempt, so nothing applied. Wait for the barrier to drop or expire, and
        // send the commit again under a new token (its timestamp differs, so the old one would
        // not match).
        await waitForBarrier(v.volumeId, barrier);
        token = randomUUID();
        continue;
      }
      if (err instanceof CommitRefusedError && err.reason === 'intent-unacked' && Date.now() - startedMs < INTENT_WAIT_MAX_MS) {
        // Readers share the volume (docs/nbd-gateway.md, "Multi-attach"): the condition refused
        // this attempt, so nothing applied. Open the write intent, wait for the readers to drop
        // their caches (or their leases to run out), and send the same segment again on the
        // intent and leases as now read, under a new token.
        const now = await openIntentAndWait(v.volumeId, startedMs + INTENT_WAIT_MAX_MS);
        if (now) prepared.volume = { ...prepared.volume, writeIntent: now.writeIntent, readLeases: now.readLeases };
        token = randomUUID();
        continue;
      }
      if (err instanceof CommitRefusedError) return settleRefusal(prepared, err);
      // The outcome is unknown: find out from the volume item and the segment record.
      return resolveUnknownOutcome(prepared, fencedOn, token, err);
    }
  }
}

/** Snapshots a commit follows (freezing its pages again) before it is settled like any refusal. */
const REFREEZE_MAX = 16;

/** The longest a commit waits behind write barriers before it is settled like any refusal. */
const BARRIER_WAIT_MAX_MS = 120_000;

/**
 * Waits until `barrier` is gone from the volume item (dropped, replaced, or past its lease by
 * this process's clock), polling every 10 ms at first and then less often.
 */
async function waitForBarrier(volumeId: string, barrier: WriteBarrier): Promise<void> {
  for (let poll = 0; ; poll++) {
    const untilExpiryMs = barrier.expiresAtMs - Date.now();
    if (untilExpiryMs < 0) return;
    await sleep(Math.min(untilExpiryMs + 1, poll < 10 ? 10 : 100));
    const now = await pageMap().getVolume(volumeId);
    if (!now?.barrier || now.barrier.id !== barrier.id || now.barrier.expiresAtMs < Date.now()) return;
  }
}

/** What became of a segment's commit, as far as can be proven (docs/page-map.md). */
export type CommitOutcome = 'committed' | 'never' | 'pending';

/**
 * Settles a commit from `observed`, the volume item as it was read (or returned by a refusal)
 * **before** this call reads the segment record. `never` is a proof: the head has moved past
 * `seq - 1` without the segment, so its transaction can no longer apply.
 */
export async function commitOutcome(
  record: Pick<SegmentRecord, 'volumeId' | 'segmentId' | 'seq'>,
  observed: Pick<VolumeRecord, 'headSeq' | 'headSegmentId'> | null,
): Promise<CommitOutcome> {
  if (!observed) return 'pending'; // the volume is gone: its reclaim deletes everything, not us
  if (observed.headSegmentId === record.segmentId) return 'committed';
  if (observed.headSeq < record.seq) return 'pending'; // the head still stands where we built on (or the commit is not due)
  // The head moved past seq - 1: the transaction cannot apply any more; the record says whether it did.
  return (await pageMap().getSegmentRecord(record.volumeId, record.segmentId)) ? 'committed' : 'never';
}

async function settleRefusal(prepared: PreparedWrite, err: CommitRefusedError): Promise<WriteResult | null> {
  const { volume: v, record, result, locations } = prepared;
  let outcome = await commitOutcome(record, err.currentVolume ?? null);
  // Pending (the head still stands at seq - 1: fenced, or not active): make it final. A
  // tombstone under the segment id refuses the commit for good, or finds its record.
  if (outcome === 'pending' && err.reason !== 'volume-gone') {
    outcome = (await pageMap().tombstoneSegment(v.volumeId, record.segmentId, record.seq)) === 'tombstoned' ? 'never' : 'committed';
  }
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
      const now = await pageMap().getVolume(v.volumeId);
      const outcome = await commitOutcome(record, now);
      if (outcome === 'committed') return result;
      if (outcome === 'never') {
        await deleteChunksQuietly(locations);
        return null;
      }
      if (!now) throw new NotFoundError(`volume ${v.volumeId} does not exist`);
      // Pending: send the very same transaction again (same token). If an earlier attempt
      // applies first, this one is refused and settled as committed.
      await pageMap().commitSegment(v, record, changes, writer, commitToken);
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

export function commitWriter(writer: WriterIdentity): CommitWriter {
  return writer.key === undefined ? {} : { key: writer.key, keyGeneration: writer.generation };
}
