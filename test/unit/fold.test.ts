import { describe, expect, it } from 'vitest';
import { packSegmentExtents, SEGMENT_EXTENT_BYTES_MAX, unpackSegmentExtents } from '#shared/aws/pagemap/items.ts';
import type { PageRecord } from '#shared/core/records.ts';
import { foldPage, TailCache, type TailSegment } from '#shared/data/tail.ts';
import { overlay, splitByPage } from '#shared/data/extents.ts';
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
    const cache = new TailCache(60);
    const seg = (seq: number) => randomSegment(rng, seq, 8);
    const size = (s: TailSegment) => [...s.byPage.values()].reduce((n, e) => n + e.length, 0);
    const a1 = seg(1);
    const b1 = seg(1);
    cache.set('a', a1);
    cache.set('b', b1);
    expect(cache.extents).toBe(size(a1) + size(b1));
    expect(cache.get('a', 1)).toBe(a1); // 'a' is now the most recently used
    let seq = 2;
    while (cache.get('b', 1) !== undefined) {
      cache.set('a', seg(seq++));
      expect(cache.extents).toBeLessThanOrEqual(60);
      expect(cache.get('a', 1)).toBe(a1); // 'b' goes before any of 'a'
    }
    // Then 'a' alone: its oldest segments go, its newest stay.
    for (let i = 0; i < 20; i++) cache.set('a', seg(seq++));
    expect(cache.extents).toBeLessThanOrEqual(60);
    expect(cache.get('a', 1)).toBeUndefined();
    expect(cache.get('a', seq - 1)).toBeDefined();
    cache.dropUpTo('a', seq - 1);
    expect(cache.extents).toBe(0);
  });
});
