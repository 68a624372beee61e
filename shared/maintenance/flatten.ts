/**
 * Flatten (docs/snapshots.md, "Flatten"): copy into a clone every block it still reads from its
 * parent snapshot, as maintenance commits that fill only blocks the clone's own pages leave
 * uncovered (a client write in between moves the head and refuses the copy, which then reads
 * again), a few pages per message; then the clone drops its parent.
 */
import { livePages } from '../data/tail.ts';
import { ConflictError, FencedError, NotFoundError } from '../core/errors.ts';
import type { FlattenProgress, VolumeRecord } from '../core/records.ts';
import { clip } from '../data/extents.ts';
import { readExtents } from '../data/read.ts';
import { gapsOf, parentViewPoint, viewExtents } from '../data/views.ts';
import { completeWrite, prepareWrite, type WritePiece } from '../data/write.ts';
import { requireActive } from '../data/volume-rules.ts';
import { pageMap, workQueue } from '../ports.ts';

/** Pages copied per message: 16 MiB of blocks at most. */
export const FLATTEN_PAGES_PER_MESSAGE = 16;
const COPY_ATTEMPT_MAX = 8;

/** Pages of the clone that can read through to the parent. */
async function pagesToFlatten(v: VolumeRecord): Promise<number> {
  const parent = await parentViewPoint(v.parent!);
  const blocks = Math.min(v.sizeBytes, parent.sizeBytes) / v.blockSizeBytes;
  return Math.ceil(blocks / v.pageBlocks);
}

/** Starts flattening a clone (202): progress shows in the volume; the work is SQS messages. */
export async function startFlatten(volumeId: string): Promise<{ volumeId: string; pages: number }> {
  const v = requireActive(await pageMap().getVolume(volumeId), volumeId);
  if (!v.parent) throw new ConflictError(`volume ${volumeId} is not a clone (or is already flattened): it has no parent to copy from`);
  const pages = await pagesToFlatten(v);
  const now = new Date().toISOString();
  const progress: FlattenProgress = v.flatten ?? { pagesDone: 0, pages, bytesCopied: 0, startedAt: now, updatedAt: now };
  await pageMap().setFlattenProgress(volumeId, v.parent.snapshotId, progress);
  await workQueue().send({ type: 'flatten-volume', volumeId, nextPage: 0 });
  return { volumeId, pages };
}

/** Copies what page `page` of the clone still reads from its parent; the bytes copied. */
async function copyPage(volumeId: string, page: number): Promise<number> {
  for (let attempt = 0; attempt < COPY_ATTEMPT_MAX; attempt++) {
    const v = await pageMap().getVolume(volumeId);
    if (!v || v.state !== 'active' || !v.parent) return 0;
    const parent = await parentViewPoint(v.parent);
    const first = page * v.pageBlocks;
    const end = Math.min((page + 1) * v.pageBlocks, Math.floor(Math.min(v.sizeBytes, parent.sizeBytes) / v.blockSizeBytes));
    if (end <= first) return 0;
    // With a folding clone's tail laid over (docs/page-map.md, "Folding"): a block written there is the clone's own.
    const own = (await livePages(v, [page])).get(page)?.extents ?? [];
    const gaps = gapsOf(clip(own, first, end), first, end);
    const inherited = (await Promise.all(gaps.map(([a, b]) => viewExtents(parent, a, b)))).flat().filter((e) => e.seg !== null);
    if (inherited.length === 0) return 0; // the parent has nothing there either: the clone reads zeros without it
    const bs = v.blockSizeBytes;
    const pieces: WritePiece[] = [];
    for (const e of inherited.sort((a, b) => a.first - b.first)) {
      const data = await readExtents([{ ...e, first: 0 }], 0, e.count * bs, bs, { rangedGets: 0, badGranules: 0, rebuiltGranules: 0 });
      pieces.push({ offset: e.first * bs, length: e.count * bs, data });
    }
    const prepared = await prepareWrite(v, pieces, { id: 'flatten' }, { maintenance: true });
    const done = await completeWrite(prepared, { maintenanceAtGeneration: v.reservations.generation });
    if (done) return done.bytesWritten;
    // Another commit moved the head: read the page again (a client write may have covered blocks).
  }
  throw new ConflictError(`flatten of ${volumeId} lost the commit race on page ${page} ${COPY_ATTEMPT_MAX} times; the message is retried`);
}

/**
 * One flatten message: copies up to FLATTEN_PAGES_PER_MESSAGE pages from `nextPage`, records
 * progress, and queues the next message, or drops the parent when every page is done.
 * Idempotent: a page already copied has no gap the parent fills.
 */
export async function flattenStep(volumeId: string, nextPage: number): Promise<Record<string, unknown>> {
  const v = await pageMap().getVolume(volumeId);
  if (!v || v.state !== 'active') return { volumeId, skipped: v ? `volume is ${v.state}` : 'no such volume' };
  if (!v.parent) return { volumeId, skipped: 'already flattened' };
  const parent = v.parent;
  const pages = await pagesToFlatten(v);
  const end = Math.min(pages, nextPage + FLATTEN_PAGES_PER_MESSAGE);
  let bytes = 0;
  try {
    for (let page = nextPage; page < end; page++) bytes += await copyPage(volumeId, page);
  } catch (err) {
    if (err instanceof NotFoundError) return { volumeId, skipped: err.message };
    if (err instanceof FencedError)
      throw new ConflictError(`flatten of ${volumeId} was fenced by a reservation change; the message is retried`, { cause: err });
    throw err;
  }
  const now = new Date().toISOString();
  const before = v.flatten ?? { pagesDone: 0, pages, bytesCopied: 0, startedAt: now, updatedAt: now };
  await pageMap().setFlattenProgress(volumeId, parent.snapshotId, {
    ...before,
    pages,
    pagesDone: Math.max(before.pagesDone, end),
    bytesCopied: before.bytesCopied + bytes,
    updatedAt: now,
  });
  if (end < pages) {
    await workQueue().send({ type: 'flatten-volume', volumeId, nextPage: end });
    return { volumeId, pagesDone: end, pages, bytesCopied: bytes };
  }
  if (await pageMap().finishFlatten(volumeId, parent.snapshotId)) await pageMap().removeDependant(parent, volumeId);
  return { volumeId, pagesDone: end, pages, bytesCopied: bytes, flattened: true };
}
