import { describe, expect, it } from 'vitest';
import { itemSize } from '#shared/aws/capacity.ts';
import { contentsOf, contentsToAttributes, itemToPage, pageToItem } from '#shared/aws/pagemap/items.ts';
import { packPage, unpackPage } from '#shared/aws/pagemap/page-bytes.ts';
import { encodePage, type Extent } from '#shared/data/extents.ts';
import { seeded } from './seed.ts';

const VOL = 'vol-0123456789abcdef';
const PAGE_BLOCKS = 256;

/** A segment id as newSegmentId makes them, from the stream. */
function segmentId(rng: { int: (n: number) => number }): string {
  const hex = Array.from({ length: 8 }, () => '0123456789abcdef'[rng.int(16)]).join('');
  return `${String(1 + rng.int(10 ** 9)).padStart(12, '0')}-${hex}`;
}

/** A page of `page` as random writes leave it: runs of data from a few segments (own or a parent's), runs of zeros, gaps. */
function randomPage(rng: { int: (n: number) => number; next: () => number }, page: number): Extent[] {
  const refs = Array.from({ length: 1 + rng.int(40) }, () => (rng.next() < 0.8 ? VOL : 'vol-parent000000000') + `/${segmentId(rng)}`);
  refs.push(`${VOL}/not-a-segment-id`); // kept verbatim
  const out: Extent[] = [];
  let at = page * PAGE_BLOCKS + rng.int(4);
  while (at < (page + 1) * PAGE_BLOCKS) {
    const count = Math.min(1 + rng.int(rng.next() < 0.7 ? 2 : 60), (page + 1) * PAGE_BLOCKS - at);
    const zero = rng.next() < 0.1;
    out.push({ first: at, count, seg: zero ? null : refs[rng.int(refs.length)]!, segBlock: zero ? 0 : rng.int(2 ** 20) });
    at += count + (rng.next() < 0.5 ? 0 : rng.int(8));
  }
  return out;
}

describe('packed page items (pg)', () => {
  it('unpack(pack(x)) gives back the stored form byte for byte, and items decode to the same extents', () => {
    const rng = seeded('page bytes');
    for (let run = 0; run < 300; run++) {
      const page = rng.int(1 << 20);
      const extents = randomPage(rng, page);
      const enc = encodePage(extents, page, PAGE_BLOCKS);
      const back = unpackPage(VOL, packPage(VOL, enc));
      expect(back.segs).toEqual(enc.segs);
      expect(Buffer.from(back.ext).equals(Buffer.from(enc.ext))).toBe(true);
      const item = pageToItem(VOL, page, 7, extents, PAGE_BLOCKS, undefined, 3);
      expect(item.segs).toBeUndefined();
      expect(item.ext).toBeUndefined();
      expect(itemToPage(item, PAGE_BLOCKS)).toEqual({ page, version: 7, extents, foldedTo: 3 });
    }
  });

  it('reads items written before it (segs and ext) as they were', () => {
    const extents: Extent[] = [
      { first: 512, count: 3, seg: `${VOL}/000000000042-0badcafe`, segBlock: 17 },
      { first: 515, count: 2, seg: null, segBlock: 0 },
      { first: 600, count: 1, seg: 'vol-parent000000000/000000000009-00ff00ff', segBlock: 1023 },
    ];
    const enc = encodePage(extents, 2, PAGE_BLOCKS);
    const legacy = { volumeId: { S: VOL }, page: { N: '2' }, version: { N: '4' }, segs: { L: enc.segs.map((s) => ({ S: s })) }, ext: { B: enc.ext } };
    expect(contentsOf(VOL, legacy)).toEqual(enc);
    expect(itemToPage(legacy, PAGE_BLOCKS)).toEqual({ page: 2, version: 4, extents });
    expect(contentsOf(VOL, contentsToAttributes(VOL, enc))).toEqual(enc);
  });

  it('a page of 4 KiB writes from 128 commits takes under half the item bytes it took in segs and ext', () => {
    const rng = seeded('page bytes size');
    const refs = Array.from({ length: 128 }, () => `${VOL}/${segmentId(rng)}`);
    const extents: Extent[] = [];
    for (let b = 0; b < PAGE_BLOCKS; b += 2) extents.push({ first: 3 * PAGE_BLOCKS + b, count: 1, seg: refs[b / 2]!, segBlock: rng.int(1024) });
    const enc = encodePage(extents, 3, PAGE_BLOCKS);
    const packed = itemSize(pageToItem(VOL, 3, 1, extents, PAGE_BLOCKS));
    const legacy = itemSize({ volumeId: { S: VOL }, page: { N: '3' }, version: { N: '1' }, segs: { L: enc.segs.map((s) => ({ S: s })) }, ext: { B: enc.ext } });
    console.log(`page of 128 extents from 128 segments: ${packed} bytes packed, ${legacy} in segs and ext`);
    expect(packed).toBeLessThan(legacy / 2);
  });

  it('refuses bytes in another format, cut short, or with bytes left over', () => {
    const enc = encodePage([{ first: 0, count: 1, seg: `${VOL}/000000000001-00000000`, segBlock: 0 }], 0, PAGE_BLOCKS);
    const bytes = packPage(VOL, enc);
    expect(() => unpackPage(VOL, Uint8Array.from([9, ...bytes.subarray(1)]))).toThrow(/format 9/);
    expect(() => unpackPage(VOL, bytes.subarray(0, bytes.length - 1))).toThrow(/end early/);
    expect(() => unpackPage(VOL, Uint8Array.from([...bytes, 0]))).toThrow(/trailing/);
    // One extent whose first block is past what a record holds (2^16): format, no references, one extent.
    expect(() => unpackPage(VOL, Uint8Array.from([1, 0, 1, 0x80, 0x80, 0x08, 0, 0, 0]))).toThrow(/out of range/);
  });
});
