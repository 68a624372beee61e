/**
 * What GC decides, as pure functions (docs/evacuation.md, section 6): live blocks per segment
 * from the page items, which segments to compact to meet the space target, and the pages a
 * segment's extents can ever appear in.
 */
import type { Extent } from '../data/extents.ts';

/** The page items GC reads: their extents. */
export interface PageExtents {
  page: number;
  extents: readonly Extent[];
}

/** Segment reference -> blocks that page extents still point at, and the pages they are in. */
export interface Liveness {
  liveBlocks: Map<string, number>;
  pagesOf: Map<string, Set<number>>;
}

/**
 * Counts, for every segment a page refers to, the blocks still mapped to it. A segment absent
 * from the result has no live block.
 *
 * @example
 * liveness([{ page: 0, extents: [{ first: 0, count: 2, seg: 'vol-1/s1', segBlock: 0 }] }]).liveBlocks.get('vol-1/s1'); // 2
 */
export function liveness(pages: Iterable<PageExtents>): Liveness {
  const liveBlocks = new Map<string, number>();
  const pagesOf = new Map<string, Set<number>>();
  for (const p of pages) {
    for (const e of p.extents) {
      if (e.seg === null) continue;
      liveBlocks.set(e.seg, (liveBlocks.get(e.seg) ?? 0) + e.count);
      let set = pagesOf.get(e.seg);
      if (!set) pagesOf.set(e.seg, (set = new Set()));
      set.add(p.page);
    }
  }
  return { liveBlocks, pagesOf };
}

/** The pages a segment's descriptor extents touch: the only pages that can ever refer to it. */
export function pagesTouched(extents: ReadonlyArray<readonly [number, number, number]>, pageBlocks: number): number[] {
  const pages = new Set<number>();
  for (const [first, count, segBlock] of extents) {
    if (segBlock < 0 || count <= 0) continue; // a zero extent refers to no segment
    for (let p = Math.floor(first / pageBlocks); p <= Math.floor((first + count - 1) / pageBlocks); p++) pages.add(p);
  }
  return [...pages].sort((a, b) => a - b);
}

/** One segment as the compaction planner sees it. */
export interface SegmentUsage {
  ref: string;
  liveBytes: number;
  storedBytes: number;
  /** Kept whatever its liveness (head, retention providers): compacting it would free nothing. */
  kept: boolean;
}

export interface CompactionPolicy {
  dataChunks: number;
  parityChunks: number;
  blockSizeBytes: number;
  /** Stored bytes aimed for, as a multiple of the ideal `live x (k+m)/k`. */
  targetRatio: number;
  /** Segments at or above this efficiency are never rewritten. */
  maxEfficiency: number;
  /** Live bytes rewritten per planning round at most. */
  maxLiveBytes: number;
  /** Stored bytes of a freshly written segment beyond its chunks' data, as a fraction (trailers). */
  freshOverhead: number;
  /** The most payload one rewritten segment holds. */
  segmentBytesMax: number;
}

export const DEFAULT_COMPACTION_POLICY: Omit<CompactionPolicy, 'dataChunks' | 'parityChunks' | 'blockSizeBytes'> = {
  targetRatio: 1.1,
  maxEfficiency: 0.9,
  maxLiveBytes: 64 * 1024 * 1024,
  freshOverhead: 0.02,
  segmentBytesMax: 4 * 1024 * 1024,
};

/** The smallest trailer a chunk carries (descriptor JSON and footer), for the planner's estimate. */
export const TRAILER_BYTES_MIN = 1024;

/** Stored bytes over the ideal for this much live data; 1 is perfect, 0 live data gives Infinity or 1. */
export function spaceRatio(storedBytes: number, liveBytes: number, k: number, m: number): number {
  const ideal = (liveBytes * (k + m)) / k;
  if (ideal === 0) return storedBytes === 0 ? 1 : Infinity;
  return storedBytes / ideal;
}

/**
 * What `liveBytes` take once rewritten into fresh segments: k+m chunks per segment, each
 * rounded up to whole blocks (a small rewrite is padded like a small write), plus trailers.
 */
export function freshStoredBytes(
  liveBytes: number,
  policy: Pick<CompactionPolicy, 'dataChunks' | 'parityChunks' | 'blockSizeBytes' | 'freshOverhead' | 'segmentBytesMax'>,
): number {
  const { dataChunks: k, parityChunks: m, blockSizeBytes: bs } = policy;
  if (liveBytes === 0) return 0;
  const segments = Math.ceil(liveBytes / policy.segmentBytesMax);
  const chunkBytes = Math.ceil(liveBytes / k / bs) * bs + (segments - 1) * bs;
  // Each chunk also carries a trailer: about a KiB of descriptor and checksums, more with many extents.
  return (k + m) * (chunkBytes + segments * TRAILER_BYTES_MIN) * (1 + policy.freshOverhead);
}

/**
 * Chooses segments to compact: worst efficiency first (live x (k+m)/k over stored), only below
 * `maxEfficiency`, until the projected volume ratio is at most `targetRatio` or the rewrite
 * budget is spent; and only if rewriting the chosen ones together saves space (a lone small
 * segment rewritten is just as padded). Segments without live data are not here: they are
 * deleted, not compacted.
 */
export function planCompaction(segments: readonly SegmentUsage[], policy: CompactionPolicy): string[] {
  const { dataChunks: k, parityChunks: m } = policy;
  const expand = (k + m) / k;
  const live = segments.reduce((n, s) => n + s.liveBytes, 0);
  const total = segments.reduce((n, s) => n + s.storedBytes, 0);
  const efficiency = (s: SegmentUsage) => (s.storedBytes === 0 ? 1 : (s.liveBytes * expand) / s.storedBytes);
  const candidates = segments
    .filter((s) => !s.kept && s.liveBytes > 0 && efficiency(s) < policy.maxEfficiency)
    .sort((a, b) => efficiency(a) - efficiency(b) || a.ref.localeCompare(b.ref));
  const chosen: string[] = [];
  let chosenLive = 0;
  let chosenStored = 0;
  for (const s of candidates) {
    const projected = total - chosenStored + freshStoredBytes(chosenLive, policy);
    if (spaceRatio(projected, live, k, m) <= policy.targetRatio) break;
    if (chosenLive + s.liveBytes > policy.maxLiveBytes) break;
    chosen.push(s.ref);
    chosenLive += s.liveBytes;
    chosenStored += s.storedBytes;
  }
  return freshStoredBytes(chosenLive, policy) < chosenStored ? chosen : [];
}

/** A live extent to rewrite, in volume blocks. */
export interface LiveExtent {
  first: number;
  count: number;
  seg: string;
  segBlock: number;
  page: number;
}

/**
 * Groups live extents (sorted by block) into commits of at most `maxBytes` of data and
 * `maxPages` pages, never splitting a page across groups (so each group's pages are untouched
 * by the others).
 */
export function groupForCommits(extents: readonly LiveExtent[], blockSizeBytes: number, maxBytes: number, maxPages: number): LiveExtent[][] {
  const byPage = new Map<number, LiveExtent[]>();
  for (const e of [...extents].sort((a, b) => a.first - b.first)) {
    const list = byPage.get(e.page) ?? [];
    list.push(e);
    byPage.set(e.page, list);
  }
  const groups: LiveExtent[][] = [];
  let current: LiveExtent[] = [];
  let bytes = 0;
  let pages = 0;
  for (const list of byPage.values()) {
    const pageBytes = list.reduce((n, e) => n + e.count * blockSizeBytes, 0);
    if (current.length > 0 && (bytes + pageBytes > maxBytes || pages + 1 > maxPages)) {
      groups.push(current);
      current = [];
      bytes = 0;
      pages = 0;
    }
    current.push(...list);
    bytes += pageBytes;
    pages++;
  }
  if (current.length > 0) groups.push(current);
  return groups;
}
