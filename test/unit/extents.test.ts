import { describe, expect, it } from 'vitest';
import { clip, coalesce, decodePage, encodePage, overlay, splitByPage, type Extent } from '#shared/data/extents.ts';
import { seeded } from './seed.ts';

const seg = (first: number, count: number, s: string | null, segBlock = 0): Extent => ({ first, count, seg: s, segBlock: s === null ? 0 : segBlock });

/** The model: one entry per block, `seg@block` or 'Z' for zeros, '' for never written. */
function materialize(extents: Extent[], size: number): string[] {
  const out = new Array<string>(size).fill('');
  for (const e of extents) for (let b = 0; b < e.count; b++) out[e.first + b] = e.seg === null ? 'Z' : `${e.seg}@${e.segBlock + b}`;
  return out;
}

describe('overlay', () => {
  it('lets the top extent win and keeps the rest of the base', () => {
    const base = [seg(0, 8, 'a', 0)];
    const top = [seg(2, 2, null)];
    expect(overlay(base, top)).toEqual([seg(0, 2, 'a', 0), seg(2, 2, null), seg(4, 4, 'a', 4)]);
  });

  it('coalesces contiguous runs of one segment and of zeros', () => {
    expect(coalesce([seg(0, 2, 'a', 10), seg(2, 3, 'a', 12), seg(5, 1, null), seg(6, 1, null), seg(7, 1, 'a', 99)])).toEqual([
      seg(0, 5, 'a', 10),
      seg(5, 2, null),
      seg(7, 1, 'a', 99),
    ]);
    // Same segment but not contiguous inside it: must not merge.
    expect(coalesce([seg(0, 2, 'a', 0), seg(2, 2, 'a', 5)])).toHaveLength(2);
  });

  it('matches a per-block model on random overlays', () => {
    const rng = seeded('overlay model');
    const size = 512;
    for (let round = 0; round < 300; round++) {
      let map: Extent[] = [];
      let model = new Array<string>(size).fill('');
      for (let step = 0; step < 20; step++) {
        // A random sorted, non-overlapping set of incoming extents.
        const top: Extent[] = [];
        let pos = rng.int(40);
        while (pos < size && top.length < 5) {
          const count = 1 + rng.int(60);
          if (pos + count > size) break;
          const zero = rng.next() < 0.25;
          top.push(seg(pos, count, zero ? null : `s${round}-${step}`, zero ? 0 : rng.int(1000)));
          pos += count + rng.int(80);
        }
        map = overlay(map, top);
        const m = materialize(top, size);
        model = model.map((v, i) => (m[i] !== '' ? m[i]! : v));
        expect(materialize(map, size)).toEqual(model);
        // Coalesced: no neighbours that continue each other.
        for (let i = 1; i < map.length; i++) {
          const a = map[i - 1]!;
          const b = map[i]!;
          const continues = a.first + a.count === b.first && a.seg === b.seg && (a.seg === null || a.segBlock + a.count === b.segBlock);
          expect(continues).toBe(false);
        }
      }
    }
  });
});

describe('pages', () => {
  it('splits extents at page boundaries with the right segment offsets', () => {
    const pages = splitByPage([seg(250, 12, 'a', 100)], 256);
    expect([...pages]).toEqual([
      [0, [seg(250, 6, 'a', 100)]],
      [1, [seg(256, 6, 'a', 106)]],
    ]);
  });

  it('round-trips the binary page encoding', () => {
    const extents = [seg(256, 3, 'vol-1/000000000001-aa', 7), seg(259, 1, null), seg(300, 256 + 256 - 300, 'vol-2/000000000009-bb', 70000)];
    const enc = encodePage(extents, 1, 256);
    expect(enc.segs).toEqual(['vol-1/000000000001-aa', 'vol-2/000000000009-bb']);
    expect(enc.ext.length).toBe(30);
    expect(decodePage(enc, 1, 256)).toEqual(extents);
  });

  it('refuses extents outside the page', () => {
    expect(() => encodePage([seg(0, 2, 'a')], 1, 256)).toThrow(/outside page 1/);
  });

  it('clips to a block range', () => {
    expect(clip([seg(0, 10, 'a', 0), seg(10, 5, null)], 8, 12)).toEqual([seg(8, 2, 'a', 8), seg(10, 2, null)]);
  });
});
