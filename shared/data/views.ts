/**
 * Views of a volume's blocks (docs/snapshots.md): the live page map, a snapshot's (frozen pages
 * with the smallest tag at or above its seq, else the live page), and, for clones, the parent
 * snapshot's view under every block the clone's own pages leave uncovered.
 */
import { InvalidInputError, NotFoundError, invariant } from '../core/errors.ts';
import type { ParentRef, SnapshotRecord, VolumeRecord } from '../core/records.ts';
import { clip, type Extent } from './extents.ts';
import { groupStore, pageMap } from '../ports.ts';
import { livePages as liveWithTail, type TailVolume } from './tail.ts';
import { foldThrough } from '../maintenance/fold.ts';

/** Where a view looks: a live volume, or one of its snapshots (`atSeq`). */
export interface ViewPoint {
  volume: Pick<VolumeRecord, 'volumeId' | 'blockSizeBytes' | 'pageBlocks'>;
  /** Blocks at or beyond this read as zeros (a parent smaller than its clone). */
  sizeBytes: number;
  /** The snapshot's seq; absent for the live volume. */
  atSeq?: number;
  /** The snapshot, when the view is one (its pages never change, so they are cached). */
  snapshotId?: string;
  /** Where uncovered blocks read through to. */
  parent?: ParentRef;
}

/** Clone chains deeper than this are refused when a clone is made. */
export const MAX_CLONE_DEPTH = 16;

export function liveViewPoint(v: VolumeRecord): ViewPoint {
  return { volume: v, sizeBytes: v.sizeBytes, ...(v.parent ? { parent: v.parent } : {}) };
}

export function snapshotViewPoint(v: Pick<VolumeRecord, 'volumeId' | 'blockSizeBytes' | 'pageBlocks'>, s: SnapshotRecord): ViewPoint {
  return { volume: v, sizeBytes: s.sizeBytes, atSeq: s.seq, snapshotId: s.snapshotId, ...(s.parent ? { parent: s.parent } : {}) };
}

/** Snapshot pages by `<snapshotId>:<page>`: they never change. */
const snapshotPages = new Map<string, Extent[]>();
const SNAPSHOT_PAGES_MAX = 16384;

/** Parent view points by snapshot id: geometry and the snapshot's own parent never change. */
const parentPoints = new Map<string, ViewPoint>();

function remember(key: string, extents: Extent[]): void {
  if (!snapshotPages.has(key) && snapshotPages.size >= SNAPSHOT_PAGES_MAX) snapshotPages.delete(snapshotPages.keys().next().value!);
  snapshotPages.set(key, extents);
}

/** Drops what this process cached of a snapshot (it was deleted). */
export function forgetSnapshot(snapshotId: string): void {
  parentPoints.delete(snapshotId);
  foldedSnapshots.delete(snapshotId);
  for (const key of snapshotPages.keys()) if (key.startsWith(`${snapshotId}:`)) snapshotPages.delete(key);
}

/**
 * The extents of `pageNums` as the view point's own page map holds them (without its parent).
 * `live` may hold live pages already read (pages absent from it have no item).
 */
export async function ownPages(vp: ViewPoint, pageNums: readonly number[], live?: Map<number, { extents: Extent[] }>): Promise<Map<number, Extent[]>> {
  const out = new Map<number, Extent[]>();
  if (vp.atSeq === undefined) {
    // The live view of a folding volume overlays its tail (docs/page-map.md, "Folding"): a live
    // view point's volume is the whole volume item.
    const pages =
      live ?? ('headSeq' in vp.volume ? await liveWithTail(vp.volume as unknown as TailVolume, pageNums) : await pageMap().getPages(vp.volume, pageNums));
    for (const p of pageNums) out.set(p, pages.get(p)?.extents ?? []);
    return out;
  }
  const missing: number[] = [];
  for (const p of pageNums) {
    const hit = snapshotPages.get(`${vp.snapshotId}:${p}`);
    if (hit) out.set(p, hit);
    else missing.push(p);
  }
  if (missing.length === 0) return out;
  await snapshotFolded(vp as ViewPoint & { atSeq: number });
  // The order matters (docs/snapshots.md, "Reading a snapshot"): the live pages first, then the
  // tags, then the frozen pages. A commit that changed a page after the snapshot froze it first
  // under a tag whose record existed before that commit, so whatever live page was read, a
  // change to it is visible through a tag listed after it.
  const livePages = await pageMap().getPages(vp.volume, missing);
  const atSeq = vp.atSeq;
  const tags = [...new Set((await pageMap().listSnapshots(vp.volume.volumeId)).map((s) => s.seq).filter((t) => t >= atSeq))].sort((a, b) => a - b);
  const frozen = await pageMap().getFrozenPages(
    vp.volume.volumeId,
    vp.volume.pageBlocks,
    tags.flatMap((tag) => missing.map((page) => ({ tag, page }))),
  );
  // Every tag at or above the snapshot's seq may hold its copy; the smallest present wins.
  const best = new Map<number, { tag: number; extents: Extent[] }>();
  for (const f of frozen) {
    const b = best.get(f.page);
    if (!b || f.tag < b.tag) best.set(f.page, { tag: f.tag, extents: f.extents });
  }
  // Pages not frozen under any tag did not change since the snapshot: the live page is its page.
  for (const p of missing) {
    const extents = best.get(p)?.extents ?? livePages.get(p)?.extents ?? [];
    out.set(p, extents);
    if (vp.snapshotId) remember(`${vp.snapshotId}:${p}`, extents);
  }
  return out;
}

/** Snapshots this process found folded past (the folded point only rises). */
const foldedSnapshots = new Set<string>();
const FOLDED_SNAPSHOTS_MAX = 65536;

/**
 * A snapshot taken on a folding volume's tail is read once the folder has passed it: its frozen
 * copies are complete then (docs/page-map.md, "Snapshots on a tail"). One volume read per
 * snapshot per process; a fold of at most one tail the first time.
 */
export async function snapshotFolded(vp: ViewPoint & { atSeq: number }): Promise<void> {
  if (vp.snapshotId && foldedSnapshots.has(vp.snapshotId)) return;
  const v = await pageMap().getVolume(vp.volume.volumeId);
  if (!v) throw new NotFoundError(`volume ${vp.volume.volumeId} does not exist`);
  await foldThrough(v, vp.atSeq);
  if (!vp.snapshotId) return;
  if (foldedSnapshots.size >= FOLDED_SNAPSHOTS_MAX) foldedSnapshots.clear();
  foldedSnapshots.add(vp.snapshotId);
}

/** The view point of a parent snapshot (cached). */
export async function parentViewPoint(parent: ParentRef): Promise<ViewPoint> {
  const hit = parentPoints.get(parent.snapshotId);
  if (hit) return hit;
  const [volume, snap] = await Promise.all([pageMap().getVolume(parent.volumeId), pageMap().getSnapshot(parent.volumeId, parent.snapshotId)]);
  invariant(volume && snap, () => `parent snapshot ${parent.snapshotId} of a clone is missing; a snapshot with clones cannot be deleted`);
  const vp = snapshotViewPoint(volume, snap);
  parentPoints.set(parent.snapshotId, vp);
  return vp;
}

function pagesOf(vp: ViewPoint, first: number, end: number): number[] {
  const pages: number[] = [];
  for (let p = Math.floor(first / vp.volume.pageBlocks); p * vp.volume.pageBlocks < end; p++) pages.push(p);
  return pages;
}

/** The blocks of `[first, end)` that `extents` (sorted, within the range) leave uncovered. */
export function gapsOf(extents: readonly Extent[], first: number, end: number): Array<[number, number]> {
  const gaps: Array<[number, number]> = [];
  let cursor = first;
  for (const e of extents) {
    if (e.first > cursor) gaps.push([cursor, e.first]);
    cursor = Math.max(cursor, e.first + e.count);
  }
  if (cursor < end) gaps.push([cursor, end]);
  return gaps;
}

/**
 * The extents that map blocks `[first, end)` in the view, sorted: data, zeros (trimmed), and
 * nothing for blocks never written anywhere in the chain (they read as zeros too).
 */
export async function viewExtents(vp: ViewPoint, first: number, end: number, live?: Map<number, { extents: Extent[] }>, depth = 0): Promise<Extent[]> {
  invariant(depth <= MAX_CLONE_DEPTH, () => `clone chain deeper than ${MAX_CLONE_DEPTH}`);
  const limit = Math.min(end, Math.floor(vp.sizeBytes / vp.volume.blockSizeBytes));
  if (limit <= first) return [];
  const pages = await ownPages(vp, pagesOf(vp, first, limit), live);
  const own = [...pages.values()].flatMap((extents) => clip(extents, first, limit)).sort((a, b) => a.first - b.first);
  if (!vp.parent) return own;
  const gaps = gapsOf(own, first, limit);
  if (gaps.length === 0) return own;
  const parent = await parentViewPoint(vp.parent);
  invariant(parent.volume.blockSizeBytes === vp.volume.blockSizeBytes, 'a clone has its parent block size');
  const inherited = await Promise.all(gaps.map(([a, b]) => viewExtents(parent, a, b, undefined, depth + 1)));
  return [...own, ...inherited.flat()].sort((a, b) => a.first - b.first);
}

/**
 * The whole-page views of `pages` (any set, one batch of reads for the view point's own pages):
 * each page's extents, with a clone's uncovered blocks filled from its parent.
 */
export async function viewPages(vp: ViewPoint, pages: readonly number[]): Promise<Map<number, Extent[]>> {
  const pb = vp.volume.pageBlocks;
  const limit = Math.floor(vp.sizeBytes / vp.volume.blockSizeBytes);
  const inRange = pages.filter((p) => p * pb < limit);
  const own = await ownPages(vp, inRange);
  const out = new Map<number, Extent[]>();
  for (const p of pages) out.set(p, []);
  for (const p of inRange) {
    const first = p * pb;
    const end = Math.min((p + 1) * pb, limit);
    const mine = clip(own.get(p) ?? [], first, end);
    if (!vp.parent) {
      out.set(p, mine);
      continue;
    }
    const gaps = gapsOf(mine, first, end);
    if (gaps.length === 0) {
      out.set(p, mine);
      continue;
    }
    const parent = await parentViewPoint(vp.parent);
    const inherited = await Promise.all(gaps.map(([a, b]) => viewExtents(parent, a, b)));
    out.set(
      p,
      [...mine, ...inherited.flat()].sort((a, b) => a.first - b.first),
    );
  }
  return out;
}

const SNAPSHOT_ID = /^snap-([0-9a-f]{16})-(\d{12})-([0-9a-f]{6})$/;

/** The volume a snapshot id belongs to (the id carries it); 404 for ids that cannot be snapshots. */
export function snapshotVolume(snapshotId: string): string {
  const m = SNAPSHOT_ID.exec(snapshotId);
  if (!m) throw new NotFoundError(`snapshot ${snapshotId} does not exist`);
  return `vol-${m[1]}`;
}

/** Whether `id` is a snapshot id of volume `volumeId` (false for anything else: never a 404). */
export function isSnapshotOf(id: string, volumeId: string): boolean {
  const m = SNAPSHOT_ID.exec(id);
  return m !== null && volumeId === `vol-${m[1]}`;
}

/** A ready snapshot and its volume's geometry, or 404. */
export async function requireSnapshot(snapshotId: string): Promise<{ snapshot: SnapshotRecord; volume: VolumeRecord }> {
  const volumeId = snapshotVolume(snapshotId);
  const [snapshot, volume] = await Promise.all([pageMap().getSnapshot(volumeId, snapshotId), pageMap().getVolume(volumeId)]);
  if (snapshot?.state === 'pending' && volume && (await committedGroupMember(snapshot))) return { snapshot: { ...snapshot, state: 'ready' }, volume };
  if (!snapshot || snapshot.state !== 'ready' || !volume) throw new NotFoundError(`snapshot ${snapshotId} does not exist`);
  return { snapshot, volume };
}

/**
 * A `pending` member of a group snapshot is a snapshot once its group snapshot is `ready` (the
 * commit point, docs/consistency-groups.md); this finishes its coordinator's last step for it.
 */
async function committedGroupMember(s: SnapshotRecord): Promise<boolean> {
  const m = s.groupSnapshotId === undefined ? null : /^gsnap-([0-9a-f]{16})-/.exec(s.groupSnapshotId);
  if (!m) return false;
  const gs = await groupStore().getGroupSnapshot(`cg-${m[1]}`, s.groupSnapshotId!);
  if (gs?.state !== 'ready') return false;
  await groupStore().setSnapshotState(s, 'pending', 'ready');
  return true;
}

/** Refuses a snapshot id that is malformed as a request field (400), not just unknown. */
export function checkSnapshotIdField(value: unknown, field: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 64) throw new InvalidInputError(`${field} must be a snapshot id`);
  return value;
}
