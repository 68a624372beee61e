/**
 * Snapshots (docs/snapshots.md): take, list, describe, delete and purge, and changed-block lists.
 * Clones are made in shared/control/volumes.ts; views and snapshot reads in shared/data/.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { ConflictError, FencedError, InvalidInputError, NotFoundError, UnavailableError } from '../core/errors.ts';
import { CommitRefusedError, MAX_PAGES_PER_COMMIT, type SnapshotRecord, type VolumeRecord } from '../core/records.ts';
import { sleep } from '../core/async.ts';
import { decimalParam, pageLimit, pageStart } from '../core/paging.ts';
import type { Extent } from '../data/extents.ts';
import type { WriterIdentity } from '../data/segments.ts';
import { requireActive } from '../data/volume-rules.ts';
import { commitWriter, completeWrite, prepareWrite, type WriteResult } from '../data/write.ts';
import { inTail, tagInTail } from '../data/tail.ts';
import { foldVolume, queueFold } from '../maintenance/fold.ts';
import {
  checkSnapshotIdField,
  forgetSnapshot,
  isSnapshotOf,
  ownPages,
  requireSnapshot,
  snapshotFolded,
  snapshotViewPoint,
  snapshotVolume,
  viewPages,
  type ViewPoint,
} from '../data/views.ts';
import { writeRefusal } from './reservations.ts';
import { pageMap, workQueue } from '../ports.ts';

/** Ready snapshots per volume. */
export const MAX_SNAPSHOTS_PER_VOLUME = 128;
const SNAPSHOT_ATTEMPT_MAX = 8;

/** How long taking a snapshot waits for a purge of deleted snapshots to release the volume's lock before answering 503. */
const SNAPSHOT_PURGE_WAIT_MS = 20_000;

/** What the API shows of a snapshot. */
export interface SnapshotView {
  snapshotId: string;
  volumeId: string;
  name?: string;
  sizeBytes: number;
  blockSizeBytes: number;
  /** Blocks per page map page (as the volume's; a gateway sizes its write-back by it). */
  pageBlocks: number;
  createdAt: string;
  commitSeq: number;
  state: string;
  parent?: { volumeId: string; snapshotId: string };
  dependants: string[];
}

export function snapshotView(s: SnapshotRecord, geometry: { blockSizeBytes: number; pageBlocks: number }): SnapshotView {
  const out: SnapshotView = {
    snapshotId: s.snapshotId,
    volumeId: s.volumeId,
    sizeBytes: s.sizeBytes,
    blockSizeBytes: geometry.blockSizeBytes,
    pageBlocks: geometry.pageBlocks,
    createdAt: s.createdAt,
    commitSeq: s.seq,
    state: s.state,
    dependants: s.dependants,
  };
  if (s.name !== undefined) out.name = s.name;
  if (s.parent) out.parent = { volumeId: s.parent.volumeId, snapshotId: s.parent.snapshotId };
  return out;
}

export function snapshotIdFor(volumeId: string, seq: number): string {
  return `snap-${volumeId.slice('vol-'.length)}-${String(seq).padStart(12, '0')}-${randomBytes(3).toString('hex')}`;
}

function parseName(body: unknown): string | undefined {
  if (body === undefined || body === null) return undefined;
  if (typeof body !== 'object' || Array.isArray(body)) throw new InvalidInputError('the body must be a JSON object');
  const extra = Object.keys(body).filter((k) => k !== 'name');
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; allowed: name`);
  const name = (body as { name?: unknown }).name;
  if (name === undefined) return undefined;
  if (typeof name !== 'string' || name.length === 0 || name.length > 128) throw new InvalidInputError('name must be a string of 1 to 128 characters');
  return name;
}

/**
 * Takes a snapshot of a volume at its current head: every write acknowledged before the call is
 * in it, none that starts after it returns is (docs/snapshots.md, "Taking a snapshot").
 */
export async function createSnapshot(volumeId: string, body: unknown, requester: WriterIdentity): Promise<SnapshotView> {
  const name = parseName(body);
  // A purge of deleted snapshots holds the volume's lock for a moment (it moves frozen pages
  // between tags, and a new tag would race it): wait it out for a while rather than answer 503.
  const purgeWaitUntil = Date.now() + SNAPSHOT_PURGE_WAIT_MS;
  for (let attempt = 0; attempt < SNAPSHOT_ATTEMPT_MAX; attempt++) {
    if (attempt > 0) await sleep(Math.random() * Math.min(500, 10 * 2 ** attempt));
    const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
    if (v.snapPurge !== undefined && Date.now() < purgeWaitUntil) {
      attempt--;
      await sleep(250);
      continue;
    }
    const refusal = writeRefusal(volumeId, v.reservations, requester.key);
    if (refusal) throw new FencedError(`${refusal} (taking a snapshot is refused like a write)`);
    const existing = await pageMap().listSnapshots(volumeId);
    const ready = existing.filter((s) => s.state === 'ready');
    if (ready.length >= MAX_SNAPSHOTS_PER_VOLUME) {
      throw new InvalidInputError(`volume ${volumeId} has ${ready.length} snapshots, the most it may have; delete some first`);
    }
    const writer: WriterIdentity =
      requester.key === undefined ? { id: requester.id } : { id: requester.id, key: requester.key, generation: v.reservations.registrants[requester.key]! };
    const snap: SnapshotRecord = {
      volumeId,
      snapshotId: snapshotIdFor(volumeId, v.headSeq),
      seq: v.headSeq,
      sizeBytes: v.sizeBytes,
      createdAt: new Date().toISOString(),
      state: 'ready',
      dependants: [],
    };
    if (name !== undefined) snap.name = name;
    if (v.parent) snap.parent = v.parent;
    try {
      await pageMap().createSnapshotRecord(v, snap, commitWriter(writer));
    } catch (err) {
      if (err instanceof UnavailableError && Date.now() < purgeWaitUntil) {
        attempt--; // a purge took the lock since the read: wait for it as above
        await sleep(250);
        continue;
      }
      if (!(err instanceof CommitRefusedError)) throw err;
      if (err.reason === 'head-moved') continue;
      if (err.reason === 'fenced') throw new FencedError(err.message);
      requireActive(err.currentVolume ?? null, volumeId);
      throw err;
    }
    // A tag in a folding volume's tail: the worker folds up to it, for its readers and the next
    // snapshot (docs/page-map.md, "Snapshots on a tail").
    if (inTail(v, snap.seq)) await queueFold(volumeId, snap.seq);
    // Deleted snapshots below the new one can be purged now (the newest tag waits for this).
    if (existing.some((s) => s.state === 'deleting')) await queuePurge(volumeId);
    return snapshotView(snap, v);
  }
  throw new UnavailableError(`volume ${volumeId} kept committing while the snapshot was taken; retry`, { retryAfterSeconds: 1 });
}

export async function describeSnapshot(snapshotId: string): Promise<SnapshotView> {
  const { snapshot, volume } = await requireSnapshot(snapshotId);
  return snapshotView(snapshot, volume);
}

export async function listSnapshotViews(
  volumeId: string,
  limitParam: string | undefined,
  nextParam: string | undefined,
): Promise<{ snapshots: SnapshotView[]; next?: string }> {
  const limit = pageLimit(limitParam);
  // Any snapshot id of this volume, a deleted one's too: the page starts after its place in id order.
  const next = pageStart(nextParam, `the snapshots of ${volumeId}`, (id) => isSnapshotOf(id, volumeId));
  const v = await pageMap().getVolume(volumeId);
  if (!v || v.state === 'deleting') throw new NotFoundError(`volume ${volumeId} does not exist`);
  const all = (await pageMap().listSnapshots(volumeId)).filter((s) => s.state === 'ready' && (next === undefined || s.snapshotId > next));
  const page = all.slice(0, limit).map((s) => snapshotView(s, v));
  return all.length > limit ? { snapshots: page, next: page[page.length - 1]!.snapshotId } : { snapshots: page };
}

/** Deletes a snapshot: 409 while clones read through it; otherwise it is gone at once for readers and purged by a job. */
export async function deleteSnapshot(snapshotId: string): Promise<SnapshotView> {
  const volumeId = snapshotVolume(snapshotId);
  const marked = await pageMap().markSnapshotDeleting(volumeId, snapshotId);
  if (!marked.ok) {
    const current = marked.current;
    if (!current) throw new NotFoundError(`snapshot ${snapshotId} does not exist`);
    if (current.state === 'ready') {
      throw new ConflictError(`snapshot ${snapshotId} has dependants (${current.dependants.join(', ')}); flatten or delete them first`);
    }
  }
  forgetSnapshot(snapshotId);
  const s = await pageMap().getSnapshot(volumeId, snapshotId);
  // A snapshot being deleted is never read again, so it stops depending on its parent at once
  // (the purge only moves frames within its own volume); the purge removes it again, harmlessly.
  if (s?.parent) await pageMap().removeDependant(s.parent, snapshotId);
  await queuePurge(volumeId);
  const v = await pageMap().getVolume(volumeId);
  return s
    ? snapshotView(s, v ?? { blockSizeBytes: 0, pageBlocks: 0 })
    : { snapshotId, volumeId, sizeBytes: 0, blockSizeBytes: 0, pageBlocks: 0, createdAt: '', commitSeq: 0, state: 'deleted', dependants: [] };
}

export async function queuePurge(volumeId: string): Promise<void> {
  await workQueue().send({ type: 'snapshot-purge', volumeId });
}

/**
 * Purges a volume's snapshots in state `deleting` (docs/snapshots.md, "Deleting a snapshot"):
 * moves each one's frozen pages down to the next older tag where that tag lacks them, then
 * deletes the record. Holds the volume's purge lock; another purge running means retry later.
 */
export async function purgeSnapshots(volumeId: string): Promise<{ purged: number; framesMoved: number; framesDeleted: number; deferred: number }> {
  const token = randomUUID();
  const out = { purged: 0, framesMoved: 0, framesDeleted: 0, deferred: 0 };
  const v = await pageMap().getVolume(volumeId);
  if (!v) return out;
  if (!(await pageMap().lockSnapshotPurge(volumeId, token))) {
    throw new UnavailableError(`another purge of volume ${volumeId}'s snapshots is running, or its page map is being rebuilt; this message is retried`);
  }
  let dropSnapSeq: number | undefined;
  try {
    // Snapshots cannot be taken while the lock is held, so snapSeq and the ready set stay as read.
    const locked = (await pageMap().getVolume(volumeId)) ?? v;
    const records = await pageMap().listSnapshots(volumeId);
    // A `pending` member of a group snapshot may still become ready: it counts as kept.
    const ready = records.filter((s) => s.state !== 'deleting');
    const deleting = records.filter((s) => s.state === 'deleting').sort((a, b) => b.seq - a.seq);
    if (ready.length === 0) {
      // Nothing left to freeze for: every frozen page goes, then the records, then snapSeq.
      for await (const f of pageMap().listFrozenPages(volumeId, locked.pageBlocks, 0)) {
        await pageMap().deleteFrozenPage(volumeId, f.tag, f.page);
        out.framesDeleted++;
      }
      for (const d of deleting) await finishRecord(d, out);
      dropSnapSeq = locked.snapSeq;
      return out;
    }
    const remaining = new Map(records.map((s) => [s.snapshotId, s]));
    const frozenUnder = freezeTagFloor(locked, records);
    for (const d of deleting) {
      const sameTagReady = ready.some((s) => s.seq === d.seq);
      if (!sameTagReady && d.seq >= frozenUnder) {
        out.deferred++; // commits or folds may still freeze under it; it goes once they cannot
        continue;
      }
      if (!sameTagReady) {
        const older = [...remaining.values()].filter((s) => s.snapshotId !== d.snapshotId && s.seq < d.seq).map((s) => s.seq);
        const target = older.length > 0 ? Math.max(...older) : undefined;
        // Only other deleted snapshots share the tag: they keep the frames (processed later).
        const sharedWithDeleting = [...remaining.values()].some((s) => s.snapshotId !== d.snapshotId && s.seq === d.seq);
        if (!sharedWithDeleting) await moveFrames(volumeId, locked.pageBlocks, d.seq, target, out);
      }
      await finishRecord(d, out);
      remaining.delete(d.snapshotId);
    }
    return out;
  } finally {
    const released = await pageMap().unlockSnapshotPurge(volumeId, token, dropSnapSeq);
    if (!released) console.warn(`snapshot purge of ${volumeId} found its lock or snapSeq changed when releasing it`);
  }
}

/**
 * The oldest tag that commits or folds may still freeze pages under: the newest tag (`snapSeq`)
 * on a volume that does not fold; on a folding volume, the newest tag at or below its folded
 * point, since a fold batch below a tag in the tail freezes under that one (docs/page-map.md,
 * "Snapshots on a tail"). A deleted snapshot at or above it waits for a later purge.
 */
function freezeTagFloor(v: VolumeRecord, records: readonly SnapshotRecord[]): number {
  if (!tagInTail(v)) return v.snapSeq ?? Number.POSITIVE_INFINITY;
  const below = records.map((s) => s.seq).filter((t) => t <= v.foldedSeq!);
  return below.length > 0 ? Math.max(...below) : Number.NEGATIVE_INFINITY;
}

/** Moves the frozen pages of tag `from` to tag `to` where `to` lacks them (deleting them when there is no `to`). */
async function moveFrames(volumeId: string, pageBlocks: number, from: number, to: number | undefined, out: { framesMoved: number; framesDeleted: number }) {
  for await (const f of pageMap().listFrozenPages(volumeId, pageBlocks, from, from + 1)) {
    if (to !== undefined) out.framesMoved += await pageMap().freezePages(volumeId, pageBlocks, [{ ...f, tag: to }]);
    await pageMap().deleteFrozenPage(volumeId, f.tag, f.page);
    out.framesDeleted++;
  }
}

async function finishRecord(d: SnapshotRecord, out: { purged: number }): Promise<void> {
  if (d.parent) await pageMap().removeDependant(d.parent, d.snapshotId);
  await pageMap().deleteSnapshotRecord(d.volumeId, d.snapshotId);
  forgetSnapshot(d.snapshotId);
  out.purged++;
}

// ---------------------------------------------------------------------------------------
// Changed blocks

const CHANGED_LIMIT_DEFAULT = 1000;
const CHANGED_LIMIT_MAX = 10000;
const CHANGED_PAGES_PER_BATCH = 64;

/** Same mapping: both never written, both zeros, or the same block of the same segment. */
function sameMapping(a: Extent | undefined, b: Extent | undefined, block: number): boolean {
  if (!a || !b) return !a && !b;
  if (a.seg !== b.seg) return false;
  return a.seg === null || a.segBlock + (block - a.first) === b.segBlock + (block - b.first);
}

function extentAt(extents: readonly Extent[], block: number): Extent | undefined {
  return extents.find((e) => e.first <= block && block < e.first + e.count);
}

/** The pages whose mapping may differ between `base` (or nothing) and `target`, along the clone chain. */
async function candidatePages(target: ViewPoint, base: { volumeId: string; seq: number } | null, depth = 0): Promise<Set<number>> {
  const out = new Set<number>();
  const volumeId = target.volume.volumeId;
  // The frozen copies (and, on a folding volume, the page items) say what changed up to the
  // target once the folder has passed it (docs/page-map.md, "Snapshots on a tail").
  if (target.atSeq !== undefined) await snapshotFolded(target as ViewPoint & { atSeq: number });
  if (base && base.volumeId === volumeId) {
    // Pages frozen under tags in [base, target) changed in between (docs/snapshots.md).
    for await (const f of pageMap().listFrozenPages(volumeId, target.volume.pageBlocks, base.seq, target.atSeq)) out.add(f.page);
    return out;
  }
  // Everything this volume's own map covers (its own writes since it was made), then the parent's.
  const v = await pageMap().getVolume(volumeId);
  if (v) for await (const p of pageMap().listPages(v)) out.add(p.page);
  if (target.parent && depth < 16) {
    const parentVolume = await pageMap().getVolume(target.parent.volumeId);
    const parentSnap = await pageMap().getSnapshot(target.parent.volumeId, target.parent.snapshotId);
    if (parentVolume && parentSnap) for (const p of await candidatePages(snapshotViewPoint(parentVolume, parentSnap), base, depth + 1)) out.add(p);
  }
  return out;
}

/** Whether `base` is `target`'s own volume's older snapshot or a snapshot on its clone chain at or before the branch point. */
async function checkBase(target: SnapshotRecord, base: SnapshotRecord): Promise<void> {
  if (base.volumeId === target.volumeId) {
    if (base.seq > target.seq) throw new InvalidInputError(`base ${base.snapshotId} is newer than ${target.snapshotId}; pass the older snapshot as base`);
    return;
  }
  let parent = target.parent;
  for (let depth = 0; parent && depth < 16; depth++) {
    if (parent.volumeId === base.volumeId) {
      if (base.seq > parent.seq) throw new InvalidInputError(`base ${base.snapshotId} is newer than the snapshot ${parent.snapshotId} the clone was made from`);
      return;
    }
    const next = await pageMap().getSnapshot(parent.volumeId, parent.snapshotId);
    parent = next?.parent;
  }
  throw new InvalidInputError(`base ${base.snapshotId} is not a snapshot of ${target.volumeId} or of a volume it was cloned from`);
}

/**
 * The byte extents whose blocks may differ between `base` and the snapshot (every block
 * written or trimmed in between), or, without a base, every block written or trimmed up to it.
 */
export async function changedBlocks(
  snapshotId: string,
  baseId: string | undefined,
  limitParam: string | undefined,
  nextParam: string | undefined,
): Promise<{ blockSizeBytes: number; extents: Array<{ offset: number; length: number }>; next?: string }> {
  const limit = pageLimit(limitParam, { max: CHANGED_LIMIT_MAX, fallback: CHANGED_LIMIT_DEFAULT });
  // The byte offset an earlier answer gave, in decimal (none, or an empty one: the start).
  const startByte = nextParam === undefined || nextParam === '' ? 0 : decimalParam(nextParam);
  if (startByte === undefined) throw new InvalidInputError(`next must be a token from an earlier answer, got ${nextParam}`);
  const { snapshot, volume } = await requireSnapshot(snapshotId);
  const bs = volume.blockSizeBytes;
  if (startByte % bs !== 0) throw new InvalidInputError(`next must be a token from an earlier answer, got ${nextParam}`);
  const targetVp = snapshotViewPoint(volume, snapshot);
  let baseVp: ViewPoint | null = null;
  let baseRef: { volumeId: string; seq: number } | null = null;
  if (baseId !== undefined) {
    const base = await requireSnapshot(baseId).catch((err: unknown) => {
      throw err instanceof NotFoundError ? new NotFoundError(`base snapshot ${baseId} does not exist`) : err;
    });
    await checkBase(snapshot, base.snapshot);
    baseVp = snapshotViewPoint(base.volume, base.snapshot);
    baseRef = { volumeId: base.snapshot.volumeId, seq: base.snapshot.seq };
  }
  const startBlock = startByte / bs;
  const endBlock = Math.floor(snapshot.sizeBytes / bs);
  const pages = [...(await candidatePages(targetVp, baseRef))]
    .filter((p) => (p + 1) * volume.pageBlocks > startBlock && p * volume.pageBlocks < endBlock)
    .sort((a, b) => a - b);
  const extents: Array<{ offset: number; length: number }> = [];
  // A batch of pages at a time: one read of each view's own pages per batch.
  for (let i = 0; i < pages.length; i += CHANGED_PAGES_PER_BATCH) {
    const batch = pages.slice(i, i + CHANGED_PAGES_PER_BATCH);
    const [t, b] = await Promise.all([viewPages(targetVp, batch), baseVp ? viewPages(baseVp, batch) : Promise.resolve(new Map<number, Extent[]>())]);
    for (const page of batch) {
      const first = Math.max(page * volume.pageBlocks, startBlock);
      const end = Math.min((page + 1) * volume.pageBlocks, endBlock);
      const te = t.get(page) ?? [];
      const be = b.get(page) ?? [];
      for (let block = first; block < end; block++) {
        if (sameMapping(extentAt(te, block), extentAt(be, block), block)) continue;
        const last = extents[extents.length - 1];
        if (last && last.offset + last.length === block * bs) last.length += bs;
        else {
          if (extents.length === limit) return { blockSizeBytes: bs, extents, next: String(block * bs) };
          extents.push({ offset: block * bs, length: bs });
        }
      }
    }
  }
  return { blockSizeBytes: bs, extents };
}

// ---------------------------------------------------------------------------------------
// Rollback

/**
 * Rolls a volume back to one of its snapshots (docs/snapshots.md, "Rollback"): every page
 * changed since the snapshot gets the snapshot's page again, in one commit, fenced like any
 * write and recorded in the chain (the segment's descriptor carries the pages), so that a
 * checkpoint or rebuild replays it. At most one commit's worth of pages may have changed.
 */
export async function rollbackVolume(
  volumeId: string,
  body: unknown,
  requester: WriterIdentity,
): Promise<WriteResult & { snapshotId: string; pagesRolledBack: number }> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidInputError('the body must be a JSON object with snapshotId');
  const extra = Object.keys(body).filter((k) => k !== 'snapshotId');
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${JSON.stringify(extra[0])}; a rollback takes snapshotId`);
  const snapshotId = checkSnapshotIdField((body as { snapshotId?: unknown }).snapshotId, 'snapshotId');
  const { snapshot, volume } = await requireSnapshot(snapshotId);
  if (snapshot.volumeId !== volumeId) throw new InvalidInputError(`snapshot ${snapshotId} is of volume ${snapshot.volumeId}, not ${volumeId}`);
  const vp = snapshotViewPoint(volume, snapshot);
  for (let attempt = 0; attempt < SNAPSHOT_ATTEMPT_MAX; attempt++) {
    if (attempt > 0) await sleep(Math.random() * Math.min(500, 10 * 2 ** attempt));
    let v = requireActive(await pageMap().getVolume(volumeId), volumeId);
    if (inTail(v, v.headSeq)) {
      // The changed pages are found by their frozen copies, which the folder makes, and a
      // rollback is a direct commit, which needs an empty tail (docs/page-map.md, "Folding").
      await foldVolume(volumeId);
      v = requireActive(await pageMap().getVolume(volumeId), volumeId);
    }
    const refusal = writeRefusal(volumeId, v.reservations, requester.key);
    if (refusal) throw new FencedError(refusal);
    if (snapshot.parent?.snapshotId !== v.parent?.snapshotId) {
      // The snapshot reads through to a parent the volume no longer has (it was flattened since).
      throw new ConflictError(
        `snapshot ${snapshotId} reads through to ${snapshot.parent?.snapshotId ?? 'no parent'} and volume ${volumeId} now to ` +
          `${v.parent?.snapshotId ?? 'none'} (it was flattened since): clone the snapshot instead`,
      );
    }
    // Pages changed since the snapshot are exactly those frozen under a tag at or above it.
    const changed = new Set<number>();
    for await (const f of pageMap().listFrozenPages(volumeId, v.pageBlocks, snapshot.seq)) changed.add(f.page);
    if (changed.size === 0) {
      return { volumeId, segmentId: null, commitSeq: v.headSeq, bytesWritten: 0, bytesZeroed: 0, snapshotId, pagesRolledBack: 0 };
    }
    if (changed.size > MAX_PAGES_PER_COMMIT) {
      throw new ConflictError(
        `${changed.size} pages of volume ${volumeId} changed since snapshot ${snapshotId}; a rollback is one commit of at most ` +
          `${MAX_PAGES_PER_COMMIT} pages: clone the snapshot instead (POST /volumes with sourceSnapshotId)`,
      );
    }
    const target = await ownPages(
      vp,
      [...changed].sort((a, b) => a - b),
    );
    const prepared = await prepareWrite(v, [], requester, { replacePages: target });
    const done = await completeWrite(prepared);
    if (done) return { ...done, snapshotId, pagesRolledBack: changed.size };
  }
  throw new UnavailableError(`volume ${volumeId} kept committing while the rollback was prepared; retry`, { retryAfterSeconds: 1 });
}
