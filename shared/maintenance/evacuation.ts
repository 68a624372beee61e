/**
 * Drive evacuation and retirement (docs/evacuation.md, section 3): SQS messages that scan a
 * retiring drive, move its chunks (copy, or rebuild from k others), and retire it once empty.
 * Every step is idempotent: messages may arrive twice, late or out of order, and a worker may
 * stop at any point.
 */
import { config } from '../core/config.ts';
import { crc32c } from '../data/crc32c.ts';
import {
  beginRetirement,
  completeRetirement,
  forgetDriveStates,
  lostChunkRetireThreshold,
  reactivateDrive,
  recordDriveError,
  requireDrive,
  writableDrives,
  WRITE_ERROR_RETIRE_THRESHOLD,
} from './drives.ts';
import { driveId as makeDriveId, type DriveErrorKind, type DriveRecord, type EvacuationState } from '../core/drive-records.ts';
import { driveView } from './evacuation-progress.ts';
import { invariant } from '../core/errors.ts';
import type { MoveOutcome, SegmentRecord, VolumeRecord } from '../core/records.ts';
import { driveOf, evacuationTarget } from '../data/placement.ts';
import { readChunkData } from '../data/segment-reader.ts';
import { chunkTrailer, FOOTER_BYTES, parseTrailer, segmentIdSeq, trailerBytesFromFooter, granuleCrcs } from '../data/segments.ts';
import { formatLocation, parseChunkKey, sameLocation, type ChunkLocation, type ListedChunk } from '../data/sleds.ts';
import { chunkStore, workQueue } from '../ports.ts';
import { MOVE_BATCH_CHUNKS, type EvacuationMessage, type RepairChunkMessage } from '../core/work-messages.ts';
import { pageMap } from '../ports.ts';
import { driveRegistry } from '../ports.ts';

/** Keys listed per scan step (one ListObjectsV2). */
export const SCAN_PAGE_KEYS = 1000;
/** How many chunks of a move-chunks message (MOVE_BATCH_CHUNKS of them at most) move at once. */
const MOVE_CONCURRENCY = 4;
/** Full passes over a drive before the evacuation gives up to the DLQ. */
export const PASS_MAX = 50;
/** Finish checks per pass before another pass is started regardless. */
const CHECKS_MAX = 100;
/** The longest delay SQS allows on a message. */
const DELAY_SECONDS_MAX = 900;
/** The cursor of a scan that reached the end of the drive. */
const END_OF_DRIVE = ':end';
/** Bytes read from the end of a chunk to find its trailer (re-read exactly if it is longer). */
const TAIL_GUESS_BYTES = 64 * 1024;

/** A move that could not be done now; the message is retried, and after 5 receives dead-lettered. */
export class EvacuationError extends Error {
  override name = 'EvacuationError';
}

// ---------------------------------------------------------------------------------------
// Starting

async function send(message: EvacuationMessage, delaySeconds = 0): Promise<void> {
  await workQueue().send(message, { delaySeconds: Math.min(DELAY_SECONDS_MAX, Math.max(0, Math.ceil(delaySeconds))) });
}

/** The message that continues a run from where the drive item says the scan is. */
function nextMessage(d: DriveRecord): { message: EvacuationMessage; delaySeconds: number } {
  const e = d.evacuation!;
  if (e.cursor === END_OF_DRIVE) {
    return { message: { type: 'finish-pass', driveId: d.driveId, run: e.run, pass: e.pass, step: e.step }, delaySeconds: config().evacuationRecheckSeconds };
  }
  return { message: { type: 'evacuate-drive', driveId: d.driveId, run: e.run, step: e.step, cursor: e.cursor }, delaySeconds: 0 };
}

/**
 * Marks a drive retiring and queues its evacuation (`POST /drives/{sled}/{drive}/retire`). On a
 * drive that is already retiring it queues the current step again, which is harmless (a
 * duplicate of a step is dropped) and restarts a run whose message was lost.
 *
 * @example
 * await retireDrive('sledge-sled-3/d01', 'operator');
 */
export async function retireDrive(id: string, reason: string): Promise<Record<string, unknown>> {
  const { drive } = await beginRetirement(id, reason);
  if (drive.state === 'retiring' && drive.evacuation) {
    const next = nextMessage(drive);
    await send(next.message, 0);
  }
  return driveView(drive);
}

/**
 * `POST /drives/{sled}/{drive}/reactivate`: the drive back to `active` with no error counts and
 * no evacuation (docs/evacuation.md, section 2). A running evacuation stops: its messages name a
 * run that no longer exists and are dropped; chunks it moved stay moved.
 */
export async function reactivateDriveView(id: string): Promise<Record<string, unknown>> {
  const d = await reactivateDrive(id);
  // Not in the registry: requireDrive creates the items of configured drives not made yet (new,
  // so active with no counts: nothing to clear) and answers 404 for any other.
  if (!d) return driveView(await requireDrive(id));
  console.warn(`drive ${id} put back in service by an operator`);
  return driveView(d);
}

/**
 * Counts a failed chunk write against its drive and, when the count crosses the threshold,
 * retires the drive (docs/evacuation.md, section 1). Never throws: the write it came from has
 * already been made durable elsewhere.
 */
export async function noteWriteError(loc: ChunkLocation, cause: unknown): Promise<void> {
  const why = (cause as Error)?.message ?? String(cause);
  await noteDriveError(loc, 'write', WRITE_ERROR_RETIRE_THRESHOLD, `chunk write to ${formatLocation(loc)} failed after retries: ${why}`);
}

/**
 * Counts a chunk a repair found lost or damaged at `loc` against its drive and, when the count
 * crosses the threshold, retires the drive (docs/evacuation.md, "Drives that keep losing
 * chunks"). Never throws: the chunk is already repaired.
 */
export async function noteLostChunk(loc: ChunkLocation, found: 'missing' | 'damaged'): Promise<void> {
  await noteDriveError(loc, 'lost', lostChunkRetireThreshold(), `chunk ${formatLocation(loc)} was ${found}`);
}

async function noteDriveError(loc: ChunkLocation, kind: DriveErrorKind, threshold: number, what: string): Promise<void> {
  const id = makeDriveId(loc.bucket, driveOf(loc));
  const counted = kind === 'write' ? 'failed chunk writes' : 'chunks lost or damaged';
  try {
    const count = await recordDriveError(id, kind);
    console.warn(`${what} (${count} ${counted} in the window on ${id})`);
    if (threshold === 0 || count < threshold) return;
    const { started, drive } = await beginRetirement(id, `${count} ${counted}`);
    if (started) {
      await send(nextMessage(drive).message);
      console.warn(`drive ${id} is retiring after ${count} ${counted}; evacuation ${drive.evacuation?.run} queued`);
    }
  } catch (err) {
    console.error(`could not count ${kind === 'write' ? 'a write error' : 'a lost chunk'} against drive ${id}:`, err);
  }
}

// ---------------------------------------------------------------------------------------
// The scan chain

function currentRun(d: DriveRecord | null, run: string): d is DriveRecord & { evacuation: EvacuationState } {
  return d !== null && d.state === 'retiring' && d.evacuation?.run === run;
}

/** When a step was already advanced by a copy of this message: resend its follow-up if it was never sent. */
async function resumeAfterDuplicate(d: DriveRecord & { evacuation: EvacuationState }): Promise<string> {
  const e = d.evacuation;
  if (e.sentStep >= e.step) return 'duplicate';
  const next = nextMessage(d);
  await send(next.message, next.delaySeconds);
  await driveRegistry().markStepSent(d.driveId, e.run, e.step);
  return 'resent';
}

async function handleScan(msg: Extract<EvacuationMessage, { type: 'evacuate-drive' }>): Promise<string> {
  const d = await driveRegistry().getDrive(msg.driveId);
  if (!currentRun(d, msg.run)) return 'stale';
  const e = d.evacuation;
  if (e.step === msg.step + 1) return resumeAfterDuplicate(d);
  if (e.step !== msg.step) return 'stale';
  const page = await chunkStore().listDrivePage(d.sled, d.drive, msg.cursor, SCAN_PAGE_KEYS);
  const managed = page.objects.filter((o) => parseChunkKey(o.key) !== null);
  const unmanaged = page.objects.length - managed.length;
  const batches: ListedChunk[][] = [];
  for (let i = 0; i < managed.length; i += MOVE_BATCH_CHUNKS) batches.push(managed.slice(i, i + MOVE_BATCH_CHUNKS));
  for (let i = 0; i < batches.length; i += 10) {
    const messages = batches.slice(i, i + 10).map(
      (b): EvacuationMessage => ({
        type: 'move-chunks',
        driveId: d.driveId,
        run: e.run,
        chunks: b.map((c) => ({ key: c.key, sizeBytes: c.sizeBytes, lastModifiedMs: c.lastModifiedMs })),
      }),
    );
    const failed = await workQueue().sendBatch(messages);
    if (failed.length > 0) throw new EvacuationError(`could not queue ${failed.length} move batches for ${d.driveId}: ${failed[0]!.message}`);
  }
  const listed = { chunks: managed.length, bytes: managed.reduce((n, c) => n + c.sizeBytes, 0), unmanaged };
  const advanced = await driveRegistry().advanceScan(d.driveId, e.run, e.step, page.next ?? END_OF_DRIVE, listed, e.pass === 1);
  if (!advanced) {
    const again = await driveRegistry().getDrive(msg.driveId);
    return currentRun(again, msg.run) && again.evacuation.step === msg.step + 1 ? resumeAfterDuplicate(again) : 'stale';
  }
  const next = nextMessage(advanced);
  await send(next.message, next.delaySeconds);
  await driveRegistry().markStepSent(d.driveId, e.run, advanced.evacuation!.step);
  return `queued ${managed.length} chunks in ${batches.length} batches`;
}

async function handleFinish(msg: Extract<EvacuationMessage, { type: 'finish-pass' }>): Promise<string> {
  const d = await driveRegistry().getDrive(msg.driveId);
  if (!currentRun(d, msg.run)) return 'stale';
  const e = d.evacuation;
  if (e.pass !== msg.pass || e.step !== msg.step) return 'stale';
  const cfg = config();
  const listingStartedMs = Date.now();
  const { left, complete } = await chunksLeft(d);
  const settled = listingStartedMs >= (d.retiringSinceMs ?? e.startedAtMs) + cfg.evacuationSettleMs;
  if (left.length === 0 && complete && settled) {
    const done = await completeRetirement(d.driveId, e.run);
    if (done)
      console.log(
        JSON.stringify({ msg: 'drive retired', driveId: d.driveId, run: e.run, moved: e.chunksMoved, rebuilt: e.chunksRebuilt, dropped: e.chunksDropped }),
      );
    return done ? 'retired' : 'stale';
  }
  const counted = await driveRegistry().countFinishCheck(d.driveId, e.run, e.pass, e.checks);
  if (!counted) return 'duplicate';
  const recheck = cfg.evacuationRecheckSeconds;
  const quietMs = 3 * recheck * 1000;
  const moving = Date.now() - e.lastProgressAtMs < quietMs;
  if ((left.length === 0 && complete) || (moving && e.checks + 1 < CHECKS_MAX)) {
    // Empty but not settled yet, or moves still landing: look again later.
    const untilSettled = ((d.retiringSinceMs ?? e.startedAtMs) + cfg.evacuationSettleMs - Date.now()) / 1000;
    await send(msg, left.length === 0 ? Math.max(1, untilSettled) : recheck);
    return left.length === 0 ? 'settling' : 'moving';
  }
  const youngest = left.length === 0 ? 0 : Math.max(...left.map((o) => o.lastModifiedMs));
  const waitMs = youngest + cfg.orphanGraceMs - Date.now();
  if (waitMs > 0 && (await allOrphans(left)) && e.checks + 1 < CHECKS_MAX) {
    // Only uncommitted chunks are left: wait for them to commit or to age past the grace.
    await send(msg, Math.min(DELAY_SECONDS_MAX, waitMs / 1000 + 1));
    return 'waiting for orphans';
  }
  if (e.pass >= PASS_MAX)
    throw new EvacuationError(`drive ${d.driveId} still holds ${left.length}+ chunks after ${PASS_MAX} passes; see the worker's log and the DLQ`);
  const next = await driveRegistry().startNextPass(d.driveId, e.run, e.pass, e.step);
  if (!next) return 'duplicate';
  await send(nextMessage(next).message);
  await driveRegistry().markStepSent(d.driveId, e.run, next.evacuation!.step);
  return `pass ${next.evacuation!.pass} started for ${left.length}+ chunks`;
}

/** Listing pages a finish check reads at most (past unmanaged objects) before it calls the drive not empty. */
const FINISH_LIST_PAGES_MAX = 100;

/** Segment chunks still on the drive (up to a page of them), and whether the listing reached the end. */
async function chunksLeft(d: DriveRecord): Promise<{ left: ListedChunk[]; complete: boolean }> {
  let cursor = '';
  for (let page = 0; page < FINISH_LIST_PAGES_MAX; page++) {
    const p = await chunkStore().listDrivePage(d.sled, d.drive, cursor, SCAN_PAGE_KEYS);
    const left = p.objects.filter((o) => parseChunkKey(o.key) !== null);
    if (left.length > 0) return { left, complete: false };
    if (p.next === undefined) return { left, complete: true };
    cursor = p.next;
  }
  return { left: [], complete: false };
}

async function allOrphans(left: readonly ListedChunk[]): Promise<boolean> {
  for (const o of left.slice(0, 100)) {
    const p = parseChunkKey(o.key)!;
    if (await pageMap().getSegmentRecord(p.volumeId, p.segmentId)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Moving chunks

export type MoveResult = 'moved' | 'rebuilt' | 'dropped' | 'waiting' | 'done-elsewhere' | 'unmanaged';

/** What a read repair did (docs/evacuation.md, "Read repair"). */
export type RepairResult = 'rebuilt' | 'intact' | 'gone' | 'done-elsewhere';

interface MoveContext {
  drive: DriveRecord & { evacuation: EvacuationState };
  volumes: Map<string, Promise<VolumeRecord | null>>;
  nowMs: number;
}

/** Whether a whole chunk object is chunk `index` of this segment with every granule intact. */
export function chunkObjectIsIntact(rec: SegmentRecord, index: number, object: Buffer): boolean {
  if (object.length <= rec.chunkSizeBytes + FOOTER_BYTES) return false;
  const data = object.subarray(0, rec.chunkSizeBytes);
  const crcs = granuleCrcs(data, rec.granuleBytes);
  const expected = rec.crcs[index] ?? [];
  if (crcs.length !== expected.length || crcs.some((c, g) => c !== expected[g])) return false;
  try {
    const d = parseTrailer(object.subarray(rec.chunkSizeBytes));
    return d.volumeId === rec.volumeId && d.segmentId === rec.segmentId && d.chunkIndex === index;
  } catch {
    return false;
  }
}

/** The trailer of chunk `index`, from the trailer of any other readable chunk of the segment. */
async function trailerFromSiblings(rec: SegmentRecord, index: number): Promise<Buffer> {
  for (let j = 0; j < rec.locations.length; j++) {
    if (j === index) continue;
    try {
      let tail = await chunkStore().getChunkTail(rec.locations[j]!, TAIL_GUESS_BYTES);
      if (!tail || tail.length < FOOTER_BYTES) continue;
      const need = trailerBytesFromFooter(tail.subarray(tail.length - FOOTER_BYTES));
      if (tail.length < need) tail = await chunkStore().getChunkTail(rec.locations[j]!, need);
      if (!tail) continue;
      const d = parseTrailer(tail);
      if (d.segmentId !== rec.segmentId || d.volumeId !== rec.volumeId) continue;
      return chunkTrailer(d, index);
    } catch (err) {
      console.warn(`trailer of ${formatLocation(rec.locations[j]!)} unreadable: ${(err as Error).message}`);
    }
  }
  throw new EvacuationError(`segment ${rec.volumeId}/${rec.segmentId}: no readable trailer on any other chunk`);
}

/** The whole object of chunk `index`: copied if intact and `mayRead`, else rebuilt from the others. */
export async function chunkObjectFor(
  rec: SegmentRecord,
  index: number,
  mayRead: boolean,
): Promise<{ body: Buffer; rebuilt: boolean; found?: 'missing' | 'damaged' | 'unreadable' }> {
  let found: 'missing' | 'damaged' | 'unreadable' | undefined;
  if (mayRead) {
    try {
      const object = await chunkStore().getChunk(rec.locations[index]!);
      if (object && chunkObjectIsIntact(rec, index, object)) return { body: object, rebuilt: false };
      found = object ? 'damaged' : 'missing';
      console.warn(`chunk ${formatLocation(rec.locations[index]!)} is ${found}: rebuilding it from the others`);
    } catch (err) {
      found = 'unreadable';
      console.warn(`chunk ${formatLocation(rec.locations[index]!)} unreadable (${(err as Error).message}): rebuilding it from the others`);
    }
  }
  const data = await readChunkData(rec, index, true);
  const body = Buffer.concat([data, await trailerFromSiblings(rec, index)]);
  // Pair assertion: what is about to be written is exactly chunk `index` of this segment.
  invariant(chunkObjectIsIntact(rec, index, body), () => `rebuilt chunk ${index} of ${rec.segmentId} fails its own checks`);
  return { body, rebuilt: true, ...(found ? { found } : {}) };
}

/** PUT with If-None-Match; an existing identical object (an earlier attempt's) counts as written. */
async function putIdempotent(target: ChunkLocation, body: Buffer): Promise<void> {
  const crc = crc32c(body);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await chunkStore().putChunk(target, body, crc);
      return;
    } catch (err) {
      if (!chunkStore().isPreconditionFailed(err)) throw err;
    }
    const existing = await chunkStore().getChunk(target);
    if (existing && existing.equals(body)) return;
    // Not referenced by the record (we checked it points at the old copy): a damaged leftover.
    await chunkStore().deleteChunk(target);
  }
  throw new EvacuationError(`could not write ${formatLocation(target)}: a different object keeps appearing there`);
}

/**
 * Moves one chunk off the retiring drive (docs/evacuation.md, "Moving one chunk"). Returns what
 * happened; throws when it could not be done now (the message is retried).
 */
export async function moveChunk(listed: { key: string; lastModifiedMs: number }, ctx: MoveContext): Promise<{ result: MoveResult; bytes: number }> {
  const d = ctx.drive;
  const parsed = parseChunkKey(listed.key);
  if (!parsed || parsed.drive !== d.drive) return { result: 'unmanaged', bytes: 0 };
  const old: ChunkLocation = { bucket: d.sled, key: listed.key };
  let volume = ctx.volumes.get(parsed.volumeId);
  if (!volume) ctx.volumes.set(parsed.volumeId, (volume = pageMap().getVolume(parsed.volumeId)));
  const v = await volume;
  const rec = await pageMap().getSegmentRecord(parsed.volumeId, parsed.segmentId);
  const dropped = async (): Promise<{ result: MoveResult; bytes: number }> => ({
    result: (await chunkStore().deleteChunkIfPresent(old)) ? 'dropped' : 'done-elsewhere',
    bytes: 0,
  });
  // A volume that is gone or being deleted: its chunks are garbage (reclaim deletes them too).
  if (!v || v.state !== 'active') return dropped();
  if (!rec) {
    // Not committed (yet): a write in flight may still commit it. It is proven never committed
    // once the head, read before the record, has passed its seq, or once a tombstone holds its
    // id (docs/page-map.md); only an old one is deleted even then, as GC does.
    if (ctx.nowMs - listed.lastModifiedMs < config().orphanGraceMs) return { result: 'waiting', bytes: 0 };
    const seq = segmentIdSeq(parsed.segmentId);
    // Head not passed: a tombstone makes the commit impossible, or finds it just committed.
    if (seq > v.headSeq && (await pageMap().tombstoneSegment(parsed.volumeId, parsed.segmentId, seq)) === 'committed') return { result: 'waiting', bytes: 0 };
    return dropped();
  }
  const i = parsed.chunkIndex;
  invariant(i < rec.locations.length, () => `chunk key ${listed.key} has index ${i}, segment has ${rec.locations.length} chunks`);
  // A copy the record does not point at: no record can come to point at it (moves only target
  // active drives, checked in their transaction), so it goes.
  if (!sameLocation(rec.locations[i], old)) return dropped();

  const { body, rebuilt } = await chunkObjectFor(rec, i, !d.evacuation.rebuildOnly);
  return relocate(rec, i, old, body, rebuilt);
}

/**
 * Writes chunk `i` of `rec` (the object `body`, `rebuilt` or copied) to a new drive and moves
 * the record's location there from `old`, then deletes `old` (docs/evacuation.md, "Moving one
 * chunk", steps 4 to 7). Evacuation and read repair both move chunks this way.
 */
async function relocate(rec: SegmentRecord, i: number, old: ChunkLocation, body: Buffer, rebuilt: boolean): Promise<{ result: MoveResult; bytes: number }> {
  let writable = await writableDrives();
  for (let attempt = 0; attempt < 2; attempt++) {
    const target = evacuationTarget(rec.volumeId, rec.segmentId, i, rec.locations, config().sledBuckets, writable);
    if (!target) throw new EvacuationError(`no active drive can take chunk ${i} of ${rec.volumeId}/${rec.segmentId} on a sled its stripe does not use`);
    invariant(target.bucket !== old.bucket || driveOf(target) !== driveOf(old), 'the new location of a chunk is on its old drive');
    try {
      await putIdempotent(target, body);
    } catch (err) {
      if (!chunkStore().isPreconditionFailed(err)) await noteWriteError(target, err);
      throw new EvacuationError(`copy of ${formatLocation(old)} to ${formatLocation(target)} failed: ${(err as Error).message}`, { cause: err });
    }
    const targetId = makeDriveId(target.bucket, driveOf(target));
    let outcome: MoveOutcome | { kind: 'unknown'; current: SegmentRecord | null };
    try {
      outcome = await pageMap().moveChunkLocation(rec.volumeId, rec.segmentId, i, old, target, targetId);
    } catch (err) {
      // The outcome is unknown (timeout, lost response): the record says what happened.
      console.warn(`move of ${formatLocation(old)}: outcome unknown (${(err as Error).message}); re-reading the record`);
      outcome = { kind: 'unknown', current: await pageMap().getSegmentRecord(rec.volumeId, rec.segmentId) };
    }
    if (outcome.kind === 'refused' && outcome.reason === 'target-inactive') {
      // The target stopped taking chunks between our registry read and the transaction.
      await chunkStore().deleteChunk(target);
      forgetDriveStates();
      writable = await writableDrives();
      continue;
    }
    const current = outcome.kind === 'moved' ? null : outcome.current;
    if (outcome.kind === 'moved' || sameLocation(current?.locations[i], target)) {
      // The record points at the new copy (ours, or a duplicate's): only now does the old one go.
      await chunkStore().deleteChunk(old);
      const ours = outcome.kind !== 'refused';
      return { result: ours ? (rebuilt ? 'rebuilt' : 'moved') : 'done-elsewhere', bytes: ours ? body.length : 0 };
    }
    if (outcome.kind === 'unknown' && current !== null && sameLocation(current.locations[i], old)) {
      // Our transaction may still be applied late: leave the copy (a retry finds it, or GC's
      // sweep deletes it as a stray after the grace) and try again later.
      throw new EvacuationError(`move of ${formatLocation(old)} to ${formatLocation(target)}: outcome unknown; retrying later`);
    }
    // The segment was collected, or someone else moved the chunk elsewhere: our copy is unreferenced.
    await chunkStore().deleteChunk(target);
    if (current === null || !sameLocation(current.locations[i], old)) {
      await chunkStore().deleteChunk(old);
      return { result: 'done-elsewhere', bytes: 0 };
    }
    throw new EvacuationError(`move of ${formatLocation(old)} was refused but the record still points at it; retrying later`);
  }
  throw new EvacuationError(`targets for ${formatLocation(old)} kept leaving service; retrying later`);
}

async function handleMoves(msg: Extract<EvacuationMessage, { type: 'move-chunks' }>): Promise<string> {
  const d = await driveRegistry().getDrive(msg.driveId);
  if (!currentRun(d, msg.run)) return 'stale';
  const ctx: MoveContext = { drive: d, volumes: new Map(), nowMs: Date.now() };
  const results: Array<PromiseSettledResult<{ result: MoveResult; bytes: number }>> = [];
  for (let i = 0; i < msg.chunks.length; i += MOVE_CONCURRENCY) {
    results.push(...(await Promise.allSettled(msg.chunks.slice(i, i + MOVE_CONCURRENCY).map((c) => moveChunk(c, ctx)))));
  }
  const delta = { chunksMoved: 0, bytesMoved: 0, chunksRebuilt: 0, chunksDropped: 0, bytesDropped: 0 };
  const failures: unknown[] = [];
  results.forEach((r, i) => {
    if (r.status === 'rejected') return void failures.push(r.reason);
    const { result, bytes } = r.value;
    if (result === 'moved' || result === 'rebuilt') {
      delta.chunksMoved++;
      delta.bytesMoved += bytes;
      if (result === 'rebuilt') delta.chunksRebuilt++;
    } else if (result === 'dropped') {
      delta.chunksDropped++;
      delta.bytesDropped += msg.chunks[i]!.sizeBytes;
    }
  });
  await driveRegistry().addEvacuationProgress(d.driveId, msg.run, delta);
  const summary = results.map((r) => (r.status === 'fulfilled' ? r.value.result : 'failed'));
  if (failures.length > 0) {
    throw new EvacuationError(`${failures.length} of ${msg.chunks.length} chunks of ${d.driveId} could not be moved now: ${(failures[0] as Error)?.message}`, {
      cause: failures[0],
    });
  }
  return summary.join(',');
}

/**
 * Replaces a chunk that a read found missing or damaged (docs/evacuation.md, "Read repair"):
 * nothing if the segment is gone, the chunk has moved since, or it reads intact; else rebuilt
 * from the others and moved to a new drive. Throws when it cannot be done now (retried).
 */
export async function repairChunk(msg: RepairChunkMessage): Promise<RepairResult> {
  const old: ChunkLocation = { bucket: msg.bucket, key: msg.key };
  const v = await pageMap().getVolume(msg.volumeId);
  if (!v || v.state !== 'active') return 'gone';
  const rec = await pageMap().getSegmentRecord(msg.volumeId, msg.segmentId);
  if (!rec) return 'gone';
  if (msg.chunk >= rec.locations.length || !sameLocation(rec.locations[msg.chunk], old)) return 'done-elsewhere';
  const { body, rebuilt, found } = await chunkObjectFor(rec, msg.chunk, true);
  if (!rebuilt) return 'intact';
  const { result } = await relocate(rec, msg.chunk, old, body, true);
  console.warn(`read repair: chunk ${msg.chunk} of ${msg.volumeId}/${msg.segmentId} at ${formatLocation(old)}: ${result}`);
  if (result !== 'rebuilt') return 'done-elsewhere';
  // This repair moved the chunk off a drive that lost it: count it there (an unreadable object,
  // the endpoint failing rather than the drive, is not counted).
  if (found === 'missing' || found === 'damaged') await noteLostChunk(old, found);
  return 'rebuilt';
}

/** Runs one evacuation message. Throws when it must be retried. */
export async function handleEvacuationMessage(msg: EvacuationMessage): Promise<string> {
  switch (msg.type) {
    case 'repair-chunk':
      return repairChunk(msg);
    case 'evacuate-drive':
      return handleScan(msg);
    case 'move-chunks':
      return handleMoves(msg);
    case 'finish-pass':
      return handleFinish(msg);
  }
}

/** `GET /drives/{sled}/{drive}`: the registry item with evacuation progress. */
export async function describeDrive(id: string): Promise<Record<string, unknown>> {
  return driveView(await requireDrive(id));
}
