/**
 * The folder (docs/page-map.md, "Folding"): moves a folding volume's tail of committed segments
 * into its page items, many segments per page write. Run as `fold-volume` work and inline by
 * writers whose tail is full. Idempotent: a message may arrive twice, late, or out of order, and
 * any number of folders may run at once; each page write is conditioned on the item it read.
 */
import { foldTailBound } from '../core/config.ts';
import { DataUnavailableError, UnavailableError } from '../core/errors.ts';
import { FOLDED_CREATES_MAX, type FrozenPage, type PageRecord, type VolumeRecord } from '../core/records.ts';
import { foldPage, inTail, isFolding, tagInTail, tailSegments, type TailSegment } from '../data/tail.ts';
import { pageMap, workQueue } from '../ports.ts';

export interface FoldReport {
  volumeId: string;
  /** The folded point before and after. */
  fromSeq: number;
  toSeq: number;
  segmentsFolded: number;
  pagesWritten: number;
  /** Pages already at the target (another folder, or an earlier attempt killed mid-merge, wrote them). */
  pagesSkipped: number;
  /** Page writes refused because the item changed since it was read (read again and retried). */
  pagesRetried: number;
  framesFrozen: number;
  skipped?: string;
}

export interface FoldOptions {
  /** Folds at most this many batches (default: until the tail is empty as read). */
  batchesMax?: number;
  /** A batch takes the oldest segments that together touch at most this many pages (default 4,096; at least one segment). */
  pagesMax?: number;
  /**
   * Does nothing while the tail holds fewer commits than this (default 0): the worker's folds
   * wait for half a tail, so that each page write carries many commits (a fold started on a
   * short tail rewrites the same pages for a few commits each).
   */
  minTail?: number;
  /**
   * Folds only until `foldedSeq` reaches this seq (a snapshot's, for its readers and takers),
   * however many batches that takes, and whatever `minTail` says.
   */
  upTo?: number;
  /**
   * Pages created in one transaction at most (default and most: 99). Tests make it small, so
   * that a hook runs between the creations of one step.
   */
  createsMax?: number;
  /**
   * Test hooks: after a step's pages are read, after each page write or creating transaction of
   * a batch, with the pages written so far (a test kills the folder there), and before raising
   * the folded point.
   */
  hooks?: { afterPagesRead?: () => Promise<void>; afterPageWrite?: (written: number) => Promise<void>; beforeAdvance?: (seq: number) => Promise<void> };
}

/** Pages read (and written) per step of a batch. */
const PAGES_PER_STEP = 100;
/** Page writes in flight at once. */
const PAGE_WRITES_IN_FLIGHT = 16;
/** Times one page write is retried after its item changed under it. */
const PAGE_RETRY_MAX = 5;
/** Pages one batch writes at most (more when its first segment alone touches more). */
const PAGES_PER_BATCH_MAX = 4096;
/** Batches one call folds at most (the worker queues the rest). */
const BATCHES_MAX = 16;

/**
 * Queues a fold of a volume (best effort: writers fold inline when the tail fills), or, with
 * `upTo`, of its tail up to a snapshot just taken on it (best effort too: its readers and the
 * next snapshot fold up to it themselves when they find it still in the tail).
 */
export async function queueFold(volumeId: string, upTo?: number): Promise<void> {
  try {
    await workQueue().send(upTo === undefined ? { type: 'fold-volume', volumeId } : { type: 'fold-volume', volumeId, upTo });
  } catch (err) {
    console.warn(`could not queue a fold of ${volumeId}:`, err);
  }
}

/**
 * Folds the tail of a volume: each batch takes the segments `(foldedSeq, F]`, lays them over
 * every page they touch (freezing each first under the batch's tag, see batchTag) and writes each page
 * once, then raises `foldedSeq` to `F`.
 *
 * @example
 * const r = await foldVolume('vol-0123'); // { fromSeq: 0, toSeq: 40, pagesWritten: 733, ... }
 */
export async function foldVolume(volumeId: string, opts: FoldOptions = {}): Promise<FoldReport> {
  const report: FoldReport = { volumeId, fromSeq: 0, toSeq: 0, segmentsFolded: 0, pagesWritten: 0, pagesSkipped: 0, pagesRetried: 0, framesFrozen: 0 };
  const batchesMax = opts.batchesMax ?? (opts.upTo === undefined ? BATCHES_MAX : Number.POSITIVE_INFINITY);
  let first = true;
  for (let batch = 0; batch < batchesMax; ) {
    const v = await pageMap().getVolume(volumeId);
    if (!v || v.state !== 'active' || !isFolding(v))
      return { ...report, skipped: v ? (isFolding(v) ? `volume is ${v.state}` : 'volume does not fold') : 'no such volume' };
    if (first) report.fromSeq = report.toSeq = v.foldedSeq;
    if (opts.upTo !== undefined && v.foldedSeq >= opts.upTo) return report;
    if (first && opts.upTo === undefined && v.headSeq - v.foldedSeq < (opts.minTail ?? 1))
      return { ...report, skipped: `tail of ${v.headSeq - v.foldedSeq} commits` };
    first = false;
    if (v.foldedSeq >= v.headSeq) return report;
    // Tags in the tail are found in the snapshot records, read after the volume item: a snapshot
    // taken later is at a head at or above this batch's end (docs/page-map.md, "Snapshots on a tail").
    const tags = tagInTail(v) ? (await pageMap().listSnapshots(volumeId)).map((s) => s.seq) : [];
    const { tag, limit } = batchTag(v, tags);
    const read = await tailSegments(v, v.foldedSeq, Math.min(limit, v.foldedSeq + foldTailBound(v)));
    checkChain(v, read);
    const tail = withinPages(read, opts.pagesMax ?? PAGES_PER_BATCH_MAX);
    const target = tail[tail.length - 1]!.seq;
    const done = await foldBatch(v, tag, tail, report, opts);
    if (!done) continue; // the volume stopped serving: read it again (and stop)
    await opts.hooks?.beforeAdvance?.(target);
    await pageMap().advanceFoldedSeq(volumeId, target, tail[tail.length - 1]!.segmentId);
    report.toSeq = Math.max(report.toSeq, target);
    report.segmentsFolded += tail.length;
    batch++;
    if (opts.upTo !== undefined && target >= opts.upTo) return report; // no need to read the volume again to know
  }
  return report;
}

/**
 * Makes sure a folding volume is folded at least up to `seq`, a snapshot's: whatever reads a
 * snapshot's frozen copies needs them complete, and they are once the folder has passed it
 * (docs/page-map.md, "Snapshots on a tail"). `v` may be stale (the folded point only rises).
 * Nothing to do for a volume that does not fold. 503 while the volume cannot be folded (a
 * rebuild, which folds everything, holds it).
 *
 * @example
 * await foldThrough(volume, snapshot.seq); // then read its frozen pages as on any volume
 */
export async function foldThrough(v: Pick<VolumeRecord, 'volumeId' | 'foldedSeq'>, seq: number): Promise<void> {
  if (!inTail(v, seq)) return;
  const report = await foldVolume(v.volumeId, { upTo: seq });
  if (report.toSeq >= seq) return;
  const now = await pageMap().getVolume(v.volumeId);
  if (now && (now.foldedSeq ?? seq) >= seq) return; // another folder (or a rebuild) got there
  throw new UnavailableError(
    `volume ${v.volumeId} is ${now ? now.state : 'gone'}: its commits up to seq ${seq} cannot be folded now (${report.skipped ?? 'no progress'}); retry`,
    { retryAfterSeconds: 2 },
  );
}

/**
 * The tag a batch starting at `v.foldedSeq` freezes under and writes as its pages' `ft` (the
 * newest tag at or below the batch's start), and the seq the batch may reach at most (the first
 * tag above it, else the head): a batch never folds across a tag (docs/page-map.md, "Snapshots
 * on a tail"). `tags` are the seqs of the volume's snapshot records, read after `v`; they are
 * only needed when a tag lies in the tail (else `snapSeq`, the newest, is the batch's tag).
 *
 * @example
 * batchTag({ headSeq: 10, foldedSeq: 3, snapSeq: 8 }, [2, 5, 8]); // { tag: 2, limit: 5 }
 */
export function batchTag(
  v: Pick<VolumeRecord, 'headSeq' | 'snapSeq'> & { foldedSeq: number },
  tags: readonly number[],
): { tag: number | undefined; limit: number } {
  if (!tagInTail(v)) return { tag: v.snapSeq, limit: v.headSeq };
  let tag: number | undefined;
  let limit = v.snapSeq!; // the newest tag, even if its record were gone
  for (const t of tags) {
    if (t <= v.foldedSeq) tag = tag === undefined ? t : Math.max(tag, t);
    else limit = Math.min(limit, t);
  }
  return { tag, limit };
}

/**
 * The first segments of `tail` that together touch at most `pagesMax` pages (at least one
 * segment): a batch's page writes, and so the time a writer folding inline waits, stay bounded
 * however scattered the commits were (a full tail of 512 commits over a large volume could touch
 * half a million pages).
 */
function withinPages(tail: readonly TailSegment[], pagesMax: number): readonly TailSegment[] {
  const pages = new Set<number>();
  for (let i = 0; i < tail.length; i++) {
    for (const p of tail[i]!.byPage.keys()) pages.add(p);
    if (pages.size > pagesMax && i > 0) return tail.slice(0, i);
  }
  return tail;
}

/** The tail must be the chain: each segment's predecessor is the one before, the first's the folded point. */
function checkChain(v: VolumeRecord & { foldedSeq: number }, tail: readonly TailSegment[]): void {
  let prev = v.foldedSegmentId ?? '';
  for (const s of tail) {
    if (s.prev !== prev) {
      throw new DataUnavailableError(
        `segment ${s.segmentId} (seq ${s.seq}) of volume ${v.volumeId} names ${s.prev || 'nothing'} as its predecessor, ` +
          `but the chain holds ${prev || 'nothing'} there; rebuild the page map`,
      );
    }
    prev = s.segmentId;
  }
}

/**
 * Writes every page `tail` touches, folded to its last seq, freezing each first under `tag`.
 * False when the volume stopped serving (the caller reads it again and stops).
 */
async function foldBatch(
  v: VolumeRecord & { foldedSeq: number },
  tag: number | undefined,
  tail: readonly TailSegment[],
  report: FoldReport,
  opts: FoldOptions,
): Promise<boolean> {
  const touched = [...new Set(tail.flatMap((s) => [...s.byPage.keys()]))].sort((a, b) => a - b);
  for (let i = 0; i < touched.length; i += PAGES_PER_STEP) {
    const step = touched.slice(i, i + PAGES_PER_STEP);
    const read = await pageMap().getPages(v, step);
    await opts.hooks?.afterPagesRead?.();
    // A snapshot taken since `v` was read needs no start over: its tag is at a head at or above
    // this batch's end, so `tag` is still the newest at or below the batch's start, and a page
    // already folded past the new tag is at or above the batch's end, which foldPage skips.
    const now = await pageMap().getVolume(v.volumeId);
    if (!now || now.state !== 'active') return false;
    const folds = step.map((page) => ({ page, item: read.get(page) ?? null, folded: foldPage(page, read.get(page), tail, v.foldedSeq) }));
    if (tag !== undefined) {
      // Copy on first change after a snapshot, as writers of the unfolded protocol do (docs/snapshots.md).
      const freeze: FrozenPage[] = folds
        .filter((f) => f.folded && f.item?.frozenTag !== tag)
        .map((f) => ({ tag, page: f.page, version: f.item?.version ?? 0, extents: f.item?.extents ?? [] }));
      if (freeze.length > 0) report.framesFrozen += await pageMap().freezePages(v.volumeId, v.pageBlocks, freeze);
    }
    report.pagesSkipped += folds.filter((f) => !f.folded).length;
    const pending = folds.filter((f) => f.folded);
    try {
      // Pages with no item are created together, a transaction of up to `createsMax` sharing one
      // check that the volume serves; the others are written one by one, many at a time.
      const creates = pending.filter((f) => f.item === null);
      const groupMax = Math.max(1, Math.min(FOLDED_CREATES_MAX, opts.createsMax ?? FOLDED_CREATES_MAX));
      // Both lanes settle before the step ends, failed or not: a step that returned while the
      // other lane still wrote (or ran a test's hook) would report, and be followed by, work
      // that is not over.
      const lanes = await Promise.allSettled([
        (async () => {
          for (let g = 0; g < creates.length; g += groupMax) {
            await createFolded(v, tag, tail, creates.slice(g, g + groupMax), report);
            await opts.hooks?.afterPageWrite?.(report.pagesWritten);
          }
        })(),
        inFlight(
          pending.filter((f) => f.item !== null),
          PAGE_WRITES_IN_FLIGHT,
          async (f) => {
            await writeFolded(v, tag, tail, f.page, f.item, f.folded!, report);
            await opts.hooks?.afterPageWrite?.(report.pagesWritten);
          },
        ),
      ]);
      const failed = lanes.find((l): l is PromiseRejectedResult => l.status === 'rejected');
      if (failed) throw failed.reason;
    } catch (err) {
      if (err instanceof VolumeStoppedError) return false; // deleted (or fenced by a rebuild) mid-step: the caller reads it again and stops
      throw err;
    }
  }
  return true;
}

/** A page the folder would create was refused because the volume no longer serves. */
class VolumeStoppedError extends Error {
  constructor(volumeId: string) {
    super(`volume ${volumeId} stopped serving during its fold`);
  }
}

/**
 * Creates folded pages that had no item when read, in one transaction; when any of them has an
 * item now (another folder, or a rebuild, wrote it), writes each one by one instead, reading
 * again those that changed.
 */
async function createFolded(
  v: VolumeRecord & { foldedSeq: number },
  tag: number | undefined,
  tail: readonly TailSegment[],
  group: readonly { page: number; folded: PageRecord | null }[],
  report: FoldReport,
): Promise<void> {
  const put = await pageMap().createFoldedPages(
    v.volumeId,
    v.pageBlocks,
    group.map((f) => underTag(f.folded!, tag)),
  );
  if (put === 'stopped') throw new VolumeStoppedError(v.volumeId);
  if (put === 'written') {
    report.pagesWritten += group.length;
    return;
  }
  await inFlight(group, PAGE_WRITES_IN_FLIGHT, (f) => writeFolded(v, tag, tail, f.page, null, f.folded!, report));
}

/** A folded page as written under the batch's tag (its `ft`: the copy under that tag is made). */
function underTag(folded: PageRecord, tag: number | undefined): PageRecord {
  return tag === undefined ? folded : { ...folded, frozenTag: tag };
}

/** Writes one folded page; when its item changed since it was read, reads it again and folds that. */
async function writeFolded(
  v: VolumeRecord & { foldedSeq: number },
  tag: number | undefined,
  tail: readonly TailSegment[],
  page: number,
  item: PageRecord | null,
  folded: PageRecord,
  report: FoldReport,
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const put = await pageMap().putFoldedPage(v.volumeId, v.pageBlocks, underTag(folded, tag), item);
    if (put === 'written') {
      report.pagesWritten++;
      return;
    }
    if (put === 'stopped') throw new VolumeStoppedError(v.volumeId);
    report.pagesRetried++;
    if (attempt >= PAGE_RETRY_MAX) throw new Error(`page ${page} of volume ${v.volumeId} kept changing during its fold`);
    item = (await pageMap().getPages(v, [page])).get(page) ?? null;
    const again = foldPage(page, item ?? undefined, tail, v.foldedSeq);
    if (!again) {
      report.pagesSkipped++; // another folder (or a rebuild) brought it to the target first
      return;
    }
    if (tag !== undefined && item?.frozenTag !== tag) {
      // The item changed, but not past the batch's end (foldPage skips those), so not past a
      // newer tag either: its copy under the batch's tag is made, as above.
      report.framesFrozen += await pageMap().freezePages(v.volumeId, v.pageBlocks, [{ tag, page, version: item?.version ?? 0, extents: item?.extents ?? [] }]);
    }
    folded = again;
  }
}

/** Runs `task` over `items`, `limit` at a time; after the first failure no new task starts, and it is thrown once all running ones end. */
async function inFlight<T>(items: readonly T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const results = await Promise.allSettled(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      try {
        while (!failed && next < items.length) await task(items[next++]!);
      } catch (err) {
        failed = true;
        throw err;
      }
    }),
  );
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) throw failure.reason;
}

/** What the worker waits for before it folds (FoldOptions.minTail): half the volume's tail bound. */
export function workerMinTail(v: { foldTailMax?: number }): number {
  return Math.max(1, Math.floor(foldTailBound(v) / 2));
}

/** Whether a fold is due after commit `seq` of a folding volume: every half tail. */
export function foldDue(v: { foldTailMax?: number }, seq: number): boolean {
  const every = Math.max(1, Math.floor(foldTailBound(v) / 2));
  return seq % every === 0;
}
