/**
 * Extent maps: which blocks of a volume live where. Pure functions, no I/O.
 *
 * An extent maps `count` blocks starting at volume block `first` either to a run of blocks
 * inside a segment (`seg` is the segment reference, `segBlock` the block offset inside the
 * segment payload) or to zeros (`seg === null`, a trimmed or zeroed range).
 *
 * Lists of extents are always sorted by `first`, non-overlapping and coalesced; every function
 * here takes and returns lists in that form.
 */
import { invariant } from '../core/errors.ts';

export interface Extent {
  first: number;
  count: number;
  /** `<ownerVolumeId>/<segmentId>`, or null for blocks that read as zeros. */
  seg: string | null;
  /** Block offset inside the segment payload; 0 for zero extents. */
  segBlock: number;
}

/** Index used in the binary page encoding for zero extents. */
export const ZERO_SEGMENT_INDEX = 0xffff;
export const EXTENT_RECORD_BYTES = 10;

/** True when `b` continues `a` exactly (same target, contiguous in volume and segment). */
function continues(a: Extent, b: Extent): boolean {
  if (a.first + a.count !== b.first || a.seg !== b.seg) return false;
  return a.seg === null || a.segBlock + a.count === b.segBlock;
}

/** Merges neighbours that continue each other. Input must be sorted and non-overlapping. */
export function coalesce(extents: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    if (e.count === 0) continue;
    const last = out[out.length - 1];
    if (last && continues(last, e)) last.count += e.count;
    else out.push({ ...e });
  }
  return out;
}

/** Throws unless `extents` is sorted, non-overlapping and has positive counts. */
export function assertWellFormed(extents: readonly Extent[], what = 'extents'): void {
  let end = -Infinity;
  for (const e of extents) {
    invariant(Number.isSafeInteger(e.first) && e.first >= 0, () => `${what}: bad first block ${e.first}`);
    invariant(Number.isSafeInteger(e.count) && e.count > 0, () => `${what}: bad block count ${e.count}`);
    invariant(e.first >= end, () => `${what}: extent at block ${e.first} overlaps the previous one ending at ${end}`);
    invariant(e.seg !== null || e.segBlock === 0, () => `${what}: zero extent with a segment offset`);
    end = e.first + e.count;
  }
}

/**
 * The part of `e` between volume blocks `from` (inclusive) and `to` (exclusive), or null.
 */
export function sliceExtent(e: Extent, from: number, to: number): Extent | null {
  const start = Math.max(e.first, from);
  const end = Math.min(e.first + e.count, to);
  if (end <= start) return null;
  return { first: start, count: end - start, seg: e.seg, segBlock: e.seg === null ? 0 : e.segBlock + (start - e.first) };
}

/** The extents restricted to blocks `[from, to)`. */
export function clip(extents: readonly Extent[], from: number, to: number): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const s = sliceExtent(e, from, to);
    if (s) out.push(s);
  }
  return out;
}

/**
 * Lays `top` over `base`: where they overlap, `top` wins. Both inputs sorted and
 * non-overlapping; the result is sorted, non-overlapping and coalesced.
 *
 * @example
 * overlay([{ first: 0, count: 8, seg: 'v/a', segBlock: 0 }], [{ first: 2, count: 2, seg: null, segBlock: 0 }])
 * // -> [0..2 in a at 0], [2..4 zeros], [4..8 in a at 4]
 */
export function overlay(base: readonly Extent[], top: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  let t = 0;
  for (const b of base) {
    // Emit the pieces of `b` not covered by any extent of `top`.
    let cursor = b.first;
    const end = b.first + b.count;
    while (t < top.length && top[t]!.first + top[t]!.count <= cursor) t++;
    let i = t;
    while (cursor < end) {
      const cover = top[i];
      if (!cover || cover.first >= end) {
        out.push(sliceExtent(b, cursor, end)!);
        break;
      }
      if (cover.first > cursor) out.push(sliceExtent(b, cursor, cover.first)!);
      cursor = Math.max(cursor, cover.first + cover.count);
      i++;
    }
  }
  out.push(...top.map((e) => ({ ...e })));
  out.sort((a, b) => a.first - b.first);
  const merged = coalesce(out);
  assertWellFormed(merged, 'overlay result');
  return merged;
}

/** Splits extents at page boundaries: page number -> the extents inside that page. */
export function splitByPage(extents: readonly Extent[], pageBlocks: number): Map<number, Extent[]> {
  const pages = new Map<number, Extent[]>();
  for (const e of extents) {
    let first = e.first;
    const end = e.first + e.count;
    while (first < end) {
      const page = Math.floor(first / pageBlocks);
      const pageEnd = Math.min(end, (page + 1) * pageBlocks);
      const piece = sliceExtent(e, first, pageEnd)!;
      let list = pages.get(page);
      if (!list) pages.set(page, (list = []));
      list.push(piece);
      first = pageEnd;
    }
  }
  return pages;
}

/** The binary form of one page's extents, as stored in its DynamoDB item. */
export interface EncodedPage {
  /** Segment references used by this page; `ext` records index into it. */
  segs: string[];
  /** 10 bytes per extent: first block in page u16, count u16, segment index u16 (0xFFFF zeros), segment block u32. */
  ext: Uint8Array;
}

/**
 * Encodes the extents of page `page` (all inside it) into the compact stored form.
 *
 * @example
 * const enc = encodePage([{ first: 256, count: 8, seg: 'vol-1/000000000001-ab12cd34', segBlock: 0 }], 1, 256);
 * decodePage(enc, 1, 256); // the same extent back
 */
export function encodePage(extents: readonly Extent[], page: number, pageBlocks: number): EncodedPage {
  invariant(pageBlocks <= 0x10000, `pageBlocks ${pageBlocks} does not fit the u16 encoding`);
  assertWellFormed(extents, `page ${page}`);
  const base = page * pageBlocks;
  const segs: string[] = [];
  const index = new Map<string, number>();
  const ext = new Uint8Array(extents.length * EXTENT_RECORD_BYTES);
  const view = new DataView(ext.buffer);
  extents.forEach((e, n) => {
    invariant(e.first >= base && e.first + e.count <= base + pageBlocks, () => `extent at block ${e.first} is outside page ${page}`);
    let segIndex = ZERO_SEGMENT_INDEX;
    if (e.seg !== null) {
      let found = index.get(e.seg);
      if (found === undefined) {
        found = segs.length;
        invariant(found < ZERO_SEGMENT_INDEX, 'too many segments in one page');
        segs.push(e.seg);
        index.set(e.seg, found);
      }
      segIndex = found;
    }
    const o = n * EXTENT_RECORD_BYTES;
    // The count is stored minus one so that a full page of 65536 blocks would still fit.
    view.setUint16(o, e.first - base);
    view.setUint16(o + 2, e.count - 1);
    view.setUint16(o + 4, segIndex);
    view.setUint32(o + 6, e.segBlock);
  });
  return { segs, ext };
}

/** Decodes a page's stored form back into absolute extents. */
export function decodePage(encoded: EncodedPage, page: number, pageBlocks: number): Extent[] {
  invariant(encoded.ext.length % EXTENT_RECORD_BYTES === 0, `page ${page}: extent bytes ${encoded.ext.length} not a multiple of ${EXTENT_RECORD_BYTES}`);
  const view = new DataView(encoded.ext.buffer, encoded.ext.byteOffset, encoded.ext.byteLength);
  const base = page * pageBlocks;
  const out: Extent[] = [];
  for (let o = 0; o < encoded.ext.length; o += EXTENT_RECORD_BYTES) {
    const segIndex = view.getUint16(o + 4);
    let seg: string | null = null;
    if (segIndex !== ZERO_SEGMENT_INDEX) {
      seg = encoded.segs[segIndex] ?? null;
      invariant(seg !== null, () => `page ${page}: segment index ${segIndex} out of range`);
    }
    out.push({ first: base + view.getUint16(o), count: view.getUint16(o + 2) + 1, seg, segBlock: view.getUint32(o + 6) });
  }
  assertWellFormed(out, `stored page ${page}`);
  return out;
}
