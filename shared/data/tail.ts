/**
 * The tail of a folding volume (docs/page-map.md, "Folding"): the committed segments not yet in
 * its page items, cached by each head (their extents never change), and the live pages with
 * the tail laid over them.
 */
import { foldTailBound } from '../core/config.ts';
import { DataUnavailableError } from '../core/errors.ts';
import { segmentRef, type PageRecord, type SegmentRecord, type VolumeRecord } from '../core/records.ts';
import { overlay, splitByPage, type Extent } from './extents.ts';
import { pageMap } from '../ports.ts';

/** The volume fields the tail and the overlay need. */
export type TailVolume = Pick<VolumeRecord, 'volumeId' | 'pageBlocks' | 'headSeq' | 'headSegmentId' | 'foldedSeq' | 'foldedSegmentId'>;

/** Whether a volume commits by folding (its protocol is fixed at creation). */
export function isFolding<V extends Pick<VolumeRecord, 'foldedSeq'>>(v: V): v is V & { foldedSeq: number } {
  return v.foldedSeq !== undefined;
}

/**
 * Whether commit `seq` of volume `v` is still in its tail (not yet folded into the page items);
 * never for a volume that does not fold.
 */
export function inTail(v: Pick<VolumeRecord, 'foldedSeq'>, seq: number): boolean {
  return v.foldedSeq !== undefined && v.foldedSeq < seq;
}

/**
 * Whether a folding volume's newest snapshot tag (and so perhaps others) lies in its tail
 * (docs/page-map.md, "Snapshots on a tail"): the folder's batches then stop at each such tag.
 */
export function tagInTail(v: Pick<VolumeRecord, 'foldedSeq' | 'snapSeq'>): boolean {
  return v.snapSeq !== undefined && inTail(v, v.snapSeq);
}

/** Whether a commit after `headSeq` (default: the volume's head) would find the tail of folding volume `v` full: it must be folded first. */
export function tailFull(v: Pick<VolumeRecord, 'foldedSeq' | 'foldTailMax' | 'headSeq'>, headSeq = v.headSeq): boolean {
  return isFolding(v) && headSeq - v.foldedSeq >= foldTailBound(v);
}

/** A committed segment of a tail: its extents split by page, as a fold lays them over the pages. */
export interface TailSegment {
  seq: number;
  segmentId: string;
  prev: string;
  byPage: Map<number, Extent[]>;
}

/** A segment's extents as page-map extents (a zero extent has no segment). */
export function segmentExtents(rec: Pick<SegmentRecord, 'volumeId' | 'segmentId'>, extents: ReadonlyArray<readonly [number, number, number]>): Extent[] {
  const ref = segmentRef(rec.volumeId, rec.segmentId);
  return extents.map(([first, count, offset]) => (offset < 0 ? { first, count, seg: null, segBlock: 0 } : { first, count, seg: ref, segBlock: offset }));
}

export function tailSegmentOf(rec: SegmentRecord, pageBlocks: number): TailSegment {
  if (!rec.extents) {
    throw new DataUnavailableError(
      `segment ${rec.segmentId} of volume ${rec.volumeId} is in the unfolded tail but its record has no extents; rebuild the page map`,
    );
  }
  return { seq: rec.seq, segmentId: rec.segmentId, prev: rec.prev, byPage: splitByPage(segmentExtents(rec, rec.extents), pageBlocks) };
}

/**
 * The tail segments this head has cached, by volume, then by seq, within a budget of extents
 * (each costs about 150 bytes of memory here): a head serving many folding volumes keeps the
 * most recently used tails and forgets the rest (reads then query their records again). A
 * segment that does not fit even alone is not cached.
 */
export class TailCache {
  private readonly volumes = new Map<string, { segments: Map<number, TailSegment>; extents: number }>();
  private total = 0;
  /** The volume last moved to the most recently used end. */
  private lastUsed: string | undefined;

  constructor(readonly maxExtents: number) {}

  /** Extents cached in all. */
  get extents(): number {
    return this.total;
  }

  get(volumeId: string, seq: number): TailSegment | undefined {
    const t = this.volumes.get(volumeId);
    if (!t) return undefined;
    this.use(volumeId, t);
    return t.segments.get(seq);
  }

  /** Moves a volume to the most recently used end (once per run of uses: a read asks for every seq of its tail). */
  private use(volumeId: string, t: { segments: Map<number, TailSegment>; extents: number }): void {
    if (this.lastUsed === volumeId) return;
    this.volumes.delete(volumeId);
    this.volumes.set(volumeId, t);
    this.lastUsed = volumeId;
  }

  set(volumeId: string, segment: TailSegment): void {
    const size = extentCount(segment);
    if (size > this.maxExtents) return;
    let t = this.volumes.get(volumeId);
    if (!t) this.volumes.set(volumeId, (t = { segments: new Map(), extents: 0 }));
    this.use(volumeId, t);
    const old = t.segments.get(segment.seq);
    if (old) this.take(t, extentCount(old));
    t.segments.set(segment.seq, segment);
    t.extents += size;
    this.total += size;
    for (const id of [...this.volumes.keys()]) {
      if (this.total <= this.maxExtents) break;
      if (id === volumeId) continue;
      this.forget(id);
    }
    // Still over: this volume's oldest segments go.
    for (const [seq, seg] of t.segments) {
      if (this.total <= this.maxExtents) break;
      t.segments.delete(seq);
      this.take(t, extentCount(seg));
    }
  }

  /** Forgets a volume's segments up to `seq` (folded: no read overlays them again). */
  dropUpTo(volumeId: string, seq: number): void {
    const t = this.volumes.get(volumeId);
    if (!t) return;
    for (const [s, seg] of t.segments) {
      if (s > seq) continue;
      t.segments.delete(s);
      this.take(t, extentCount(seg));
    }
  }

  forget(volumeId: string): void {
    const t = this.volumes.get(volumeId);
    if (!t) return;
    this.total -= t.extents;
    this.volumes.delete(volumeId);
    if (this.lastUsed === volumeId) this.lastUsed = undefined;
  }

  private take(t: { extents: number }, n: number): void {
    t.extents -= n;
    this.total -= n;
  }
}

function extentCount(s: TailSegment): number {
  let n = 0;
  for (const e of s.byPage.values()) n += e.length;
  return Math.max(1, n);
}

/** Extents the tails cached by one head may hold in all (about 150 MB). */
export const TAIL_CACHE_EXTENTS_MAX = 1_000_000;
const tails = new TailCache(TAIL_CACHE_EXTENTS_MAX);

/** A segment this head just committed to a folding volume: reads of this head need not query it. */
export function rememberTailSegment(v: Pick<VolumeRecord, 'pageBlocks'>, rec: SegmentRecord): void {
  if (rec.extents) tails.set(rec.volumeId, tailSegmentOf(rec, v.pageBlocks));
}

/** Drops what this head cached of a volume's tail (the volume was rebuilt or deleted). */
export function forgetTail(volumeId: string): void {
  tails.forget(volumeId);
}

/**
 * The committed segments with seq in `(from, upto]` (default: the volume's tail as read), oldest
 * first, one per seq. Records are written in their commit's transaction, so every seq up to a
 * head read before them has one; a gap is damage, reported as 503.
 */
export async function tailSegments(v: TailVolume, from = v.foldedSeq ?? v.headSeq, upto = v.headSeq): Promise<TailSegment[]> {
  tails.dropUpTo(v.volumeId, v.foldedSeq ?? 0);
  const out: TailSegment[] = [];
  const missing: number[] = [];
  for (let seq = from + 1; seq <= upto; seq++) {
    const hit = tails.get(v.volumeId, seq);
    out.push(hit!);
    if (!hit) missing.push(seq);
  }
  if (missing.length > 0) {
    const found = await pageMap().listSegmentRecordsBetween(v.volumeId, missing[0]! - 1, missing[missing.length - 1]!);
    const bySeq = new Map<number, SegmentRecord[]>();
    for (const r of found) bySeq.set(r.seq, [...(bySeq.get(r.seq) ?? []), r]);
    for (const seq of missing) {
      const recs = bySeq.get(seq) ?? [];
      if (recs.length !== 1) {
        throw new DataUnavailableError(
          `volume ${v.volumeId} has ${recs.length} segment records at seq ${seq} of its unfolded tail (${from}, ${upto}]; ` +
            'rebuilding the page map (POST /volumes/{volumeId}/rebuild) restores them from the sleds',
        );
      }
      const segment = tailSegmentOf(recs[0]!, v.pageBlocks);
      out[seq - from - 1] = segment;
      tails.set(v.volumeId, segment);
    }
  }
  return out;
}

/**
 * Lays `tail` (oldest first) over a page item: every segment above the page's fold point
 * (`max(foldedTo, foldedSeq)`), one by one, version + 1 each, as their commits would have.
 * Laying a segment the page already holds again changes nothing (docs/page-map.md), so a fold
 * point below the true one is safe. Null when no segment of the tail touches the page.
 */
export function foldPage(page: number, item: PageRecord | undefined, tail: readonly TailSegment[], foldedSeq: number): PageRecord | null {
  const from = Math.max(item?.foldedTo ?? 0, foldedSeq);
  let extents = item?.extents ?? [];
  let version = item?.version ?? 0;
  let touched = false;
  for (const s of tail) {
    if (s.seq <= from) continue;
    const top = s.byPage.get(page);
    if (!top) continue;
    extents = overlay(extents, top);
    version++;
    touched = true;
  }
  if (!touched) return null;
  const out: PageRecord = { page, version, extents, foldedTo: tail[tail.length - 1]!.seq };
  if (item?.frozenTag !== undefined) out.frozenTag = item.frozenTag;
  return out;
}

/**
 * The pages `pageNums` of the live volume as of the volume item `v`: the page items (`pages` if
 * already read with it, else read now, after it) with the tail up to `v.headSeq` laid over
 * them. On a volume that does not fold, the page items as they are.
 */
export async function livePages(v: TailVolume, pageNums: readonly number[], pages?: Map<number, PageRecord>): Promise<Map<number, PageRecord>> {
  const read = pages ?? (await pageMap().getPages(v, pageNums));
  if (!isFolding(v) || v.headSeq <= v.foldedSeq) return read;
  const tail = await tailSegments(v);
  const out = new Map(read);
  for (const p of pageNums) {
    const folded = foldPage(p, read.get(p), tail, v.foldedSeq);
    if (folded) out.set(p, folded);
  }
  return out;
}
