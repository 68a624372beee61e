import { describe, expect, it } from 'vitest';
import { packSegmentExtents, SEGMENT_EXTENT_BYTES_MAX, unpackSegmentExtents } from '#shared/aws/pagemap/items.ts';
import type { PageRecord } from '#shared/core/records.ts';
import { foldPage, TailCache, type TailSegment } from '#shared/data/tail.ts';
import { overlay, splitByPage } from '#shared/data/extents.ts';
import { batchTag } from '#shared/maintenance/fold.ts';
import { seeded } from './seed.ts';

/** Folding (docs/page-map.md, "Folding"): the pure parts. */
const PAGE_BLOCKS = 256;

function randomSegment(rng: ReturnType<typeof seeded>, seq: number, pages: number): TailSegment {
  const extents: Array<[number, number, number]> = [];
  let at = rng.int(PAGE_BLOCKS);
  let offset = 0;
  while (at < pages * PAGE_BLOCKS && extents.length < 12) {
    const count = Math.min(1 + rng.int(300), pages * PAGE_BLOCKS - at);
    const zero = rng.next() < 0.2;
    extents.push([at, count, zero ? -1 : offset]);
    if (!zero) offset += count;
    at += count + rng.int(400);
  }
  const ref = `vol-x/seg-${seq}`;
  const ext = extents.map(([first, count, o]) => (o < 0 ? { first, count, seg: null, segBlock: 0 } : { first, count, seg: ref, segBlock: o }));
  return { seq, segmentId: `seg-${seq}`, prev: `seg-${seq - 1}`, byPage: splitByPage(ext, PAGE_BLOCKS) };
}

describe('folding, pure parts', () => {
  it('packs segment extents and unpacks them unchanged (varint distances; zeros, gaps, far and backward blocks)', () => {
    const extents: Array<[number, number, number]> = [
      [0, 1, 0],
      [2 ** 40 + 7, 256, -1],
      [123_456_789, 1024, 2 ** 31 - 1],
      [5, 2 ** 32 - 1, 3],
      [2 ** 48 - 1, 1, -1],
    ];
    expect(unpackSegmentExtents(packSegmentExtents(extents))).toEqual(extents);
    expect(unpackSegmentExtents(packSegmentExtents([]))).toEqual([]);
  });

  it('packs a scattered 4 KiB write in about 4 bytes an extent, never more than the bound', () => {
    const rng = seeded('fold pack');
    const blocks = new Set<number>();
    while (blocks.size < 1024) blocks.add(rng.int(262_144)); // 1 GiB of 4 KiB blocks
    const extents = [...blocks].sort((a, b) => a - b).map((b, i): [number, number, number] => [b, 1, i]);
    const packed = packSegmentExtents(extents);
    expect(unpackSegmentExtents(packed)).toEqual(extents);
    expect(packed.length).toBeLessThanOrEqual(1 + 4 * 1024);
    const worst: Array<[number, number, number]> = [[2 ** 48 - 1, 2 ** 32 - 1, 2 ** 31 - 1]];
    expect(packSegmentExtents(worst).length).toBeLessThanOrEqual(1 + SEGMENT_EXTENT_BYTES_MAX);
  });

  it('a fold equals laying the commits one by one, and folding from below the true fold point again changes nothing', () => {
    const rng = seeded('fold pure');
    for (let round = 0; round < 50; round++) {
      const pages = 4;
      const tail = Array.from({ length: 1 + rng.int(12) }, (_, i) => randomSegment(rng, i + 1, pages));
      for (let page = 0; page < pages; page++) {
        // The unfolded protocol: each commit overlays its page and adds one to its version.
        let want: PageRecord | undefined;
        for (const s of tail) {
          const top = s.byPage.get(page);
          if (top) want = { page, version: (want?.version ?? 0) + 1, extents: overlay(want?.extents ?? [], top) };
        }
        const folded = foldPage(page, undefined, tail, 0);
        expect(folded === null).toBe(want === undefined);
        if (!folded || !want) continue;
        expect(folded.extents).toEqual(want.extents);
        expect(folded.version).toBe(want.version);
        expect(folded.foldedTo).toBe(tail[tail.length - 1]!.seq);
        // A reader that overlays the whole tail again onto the folded page (its fold point taken as 0) reads the same blocks.
        const again = foldPage(page, { ...folded, foldedTo: undefined }, tail, 0);
        expect(again?.extents ?? folded.extents).toEqual(folded.extents);
        // And from the page's own fold point there is nothing left to lay over it.
        expect(foldPage(page, folded, tail, 0)).toBeNull();
      }
    }
  });

  it('the tail cache stays within its extent budget: least recently used volumes go first, then a volume\'s oldest segments', () => {
    const rng = seeded('tail cache');
    const seg = (seq: number) => randomSegment(rng, seq, 8);
    const size = (s: TailSegment) => [...s.byPage.values()].reduce((n, e) => n + e.length, 0);
    const a1 = seg(1);
    const b1 = seg(1);
    // Room for a1 and b1 at least.
    const budget = Math.max(60, size(a1) + size(b1));
    const cache = new TailCache(budget);
    cache.set('a', a1);
    cache.set('b', b1);
    expect(cache.extents).toBe(size(a1) + size(b1));
    expect(cache.get('a', 1)).toBe(a1); // 'a' is now the most recently used
    let seq = 2;
    for (;;) {
      cache.set('a', seg(seq++));
      expect(cache.extents).toBeLessThanOrEqual(budget);
      const aFirst = cache.get('a', 1);
      const bFirst = cache.get('b', 1);
      if (aFirst === undefined) expect(bFirst, "'b' goes before any of 'a'").toBeUndefined();
      else expect(aFirst).toBe(a1);
      if (bFirst === undefined) break;
    }
    // Then 'a' alone: its oldest segments go, its newest stay.
    for (let i = 0; i < 40; i++) cache.set('a', seg(seq++));
    expect(cache.extents).toBeLessThanOrEqual(budget);
    expect(cache.get('a', 1)).toBeUndefined();
    expect(cache.get('a', seq - 1)).toBeDefined();
    cache.dropUpTo('a', seq - 1);
    expect(cache.extents).toBe(0);
  });
});

/**
 * Snapshots on a tail (docs/page-map.md, "Snapshots on a tail"), as a model: commits touch
 * pages, snapshots are taken at the head whatever the tail holds, folds run in random batches that
 * take batchTag's tag and limit, and every snapshot read (frozen copy under
 * the smallest tag at or above it, else the page item, once folded past it) must be the page as
 * the commits up to the snapshot made it. Pages are their versions here: one more per commit.
 */
describe('snapshots on a tail, modelled', () => {
  interface Page {
    version: number;
    ft?: number;
  }
  it('every snapshot reads its pages at its seq, whatever the interleaving of commits, snapshots and fold batches', () => {
    const rng = seeded('snapshots on a tail');
    const PAGES = 6;
    for (let run = 0; run < 200; run++) {
      const touched: number[][] = [[]]; // touched[seq]: the pages commit seq touched
      const v: { headSeq: number; foldedSeq: number; snapSeq?: number } = { headSeq: 0, foldedSeq: 0 };
      const pages = new Map<number, Page>();
      const frozen = new Map<string, number>();
      const tags: number[] = [];
      const foldBatch = (limitUpTo?: number) => {
        const { tag, limit } = batchTag(v, tags);
        const cap = Math.min(limit, limitUpTo ?? limit);
        const to = Math.min(cap, v.foldedSeq + 1 + rng.int(4));
        if (to <= v.foldedSeq) return;
        for (let p = 0; p < PAGES; p++) {
          let n = 0;
          for (let s = v.foldedSeq + 1; s <= to; s++) if (touched[s]!.includes(p)) n++;
          if (n === 0) continue;
          const item = pages.get(p) ?? { version: 0 };
          // Frozen copies are put-if-absent, as freezePages does.
          if (tag !== undefined && item.ft !== tag && !frozen.has(`${tag}:${p}`)) frozen.set(`${tag}:${p}`, item.version);
          pages.set(p, { version: item.version + n, ...(tag === undefined ? (item.ft === undefined ? {} : { ft: item.ft }) : { ft: tag }) });
        }
        v.foldedSeq = to;
      };
      const foldThrough = (seq: number) => {
        while (v.foldedSeq < seq) foldBatch(seq);
      };
      const expected = (p: number, at: number) => touched.slice(1, at + 1).filter((t) => t.includes(p)).length;
      const readAt = (p: number, at: number) => {
        foldThrough(at);
        const copy = tags.filter((t) => t >= at && frozen.has(`${t}:${p}`)).sort((a, b) => a - b)[0];
        return copy === undefined ? (pages.get(p)?.version ?? 0) : frozen.get(`${copy}:${p}`)!;
      };
      for (let step = 0; step < 60; step++) {
        const r = rng.next();
        if (r < 0.5) {
          v.headSeq++;
          touched.push([...new Set(Array.from({ length: 1 + rng.int(3) }, () => rng.int(PAGES)))]);
        } else if (r < 0.7) {
          // A snapshot at the head, however many tags the tail holds already.
          v.snapSeq = v.headSeq;
          tags.push(v.headSeq);
        } else if (r < 0.9) {
          foldBatch();
        } else if (tags.length > 0) {
          const at = tags[rng.int(tags.length)]!;
          for (let p = 0; p < PAGES; p++) expect(readAt(p, at), `run ${run}, page ${p} at snapshot ${at}`).toBe(expected(p, at));
        }
      }
      foldThrough(v.headSeq);
      for (const at of tags) for (let p = 0; p < PAGES; p++) expect(readAt(p, at), `run ${run}, page ${p} at ${at}, folded`).toBe(expected(p, at));
    }
  });
});
