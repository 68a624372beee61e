import { describe, expect, it } from 'vitest';
import { parseCheckpointMessage, BadCheckpointMessageError, parseWorkMessage, UnknownWorkMessageError } from '#shared/core/work-messages.ts';
import { CHECKPOINT_FOOTER_MAGIC, ChainBrokenError, CheckpointFormatError, checkpointIdSeq, decodeCheckpointPayload, encodeCheckpointPayload, formatPlacement, newCheckpointId, parsePlacement, samePage } from '#shared/maintenance/checkpoints/format.ts';
import { orderChain, planRetention, replaySegment, touchedPages, type CheckpointSet } from '#shared/maintenance/checkpoints/chain.ts';
import { parseMode } from '#shared/maintenance/checkpoints/take.ts';
import { decodePage, encodePage, overlay, splitByPage } from '#shared/data/extents.ts';
import type { StoredPage } from '#shared/core/records.ts';
import { decodeTrailer, encodeTrailer, parseTrailer, type DescriptorExtent } from '#shared/data/segments.ts';
import { placeChunks } from '#shared/data/sleds.ts';
import { seeded } from './seed.ts';

const PAGE_BLOCKS = 256;
const VOL = 'vol-00000000000000aa';

/** A random segment: extents (data or zeros) over `pages` pages, sorted and non-overlapping, as a writer builds them. */
function randomSegment(rng: ReturnType<typeof seeded>, seq: number, pages: number): { volumeId: string; segmentId: string; extents: DescriptorExtent[] } {
  const extents: DescriptorExtent[] = [];
  let block = rng.int(PAGE_BLOCKS * 2);
  let segBlock = 0;
  for (let i = 0; i < 1 + rng.int(5) && block < pages * PAGE_BLOCKS - 1; i++) {
    const count = Math.min(pages * PAGE_BLOCKS - block, 1 + (rng.next() < 0.8 ? rng.int(16) : rng.int(700)));
    if (rng.next() < 0.3) extents.push([block, count, -1]);
    else {
      extents.push([block, count, segBlock]);
      segBlock += count;
    }
    block += count + rng.int(300);
  }
  return { volumeId: VOL, segmentId: `${String(seq).padStart(12, '0')}-${(seq * 2654435761 >>> 0).toString(16).padStart(8, '0')}`, extents };
}

describe('checkpoint payload', () => {
  it('round-trips stored pages exactly, segment references shared in one table', () => {
    const rng = seeded('checkpoint payload');
    const map = new Map<number, StoredPage>();
    for (let seq = 1; seq <= 200; seq++) replaySegment(map, randomSegment(rng, seq, 40), PAGE_BLOCKS);
    const pages = [...map.values()];
    const payload = encodeCheckpointPayload([...pages].reverse());
    const back = decodeCheckpointPayload(payload);
    expect(back.map((p) => p.page)).toEqual(pages.map((p) => p.page).sort((a, b) => a - b));
    for (const p of back) expect(samePage(p, map.get(p.page)!), `page ${p.page}`).toBe(true);
    // Exactly the documented layout: header, the string table (each reference once), the pages.
    const distinct = new Set(pages.flatMap((p) => p.segs));
    const tableBytes = [...distinct].reduce((n, r) => n + 2 + Buffer.byteLength(r), 0);
    expect(payload.length).toBe(8 + 4 + tableBytes + 4 + pages.reduce((n, p) => n + 4 + 6 + 2 + 4 * p.segs.length + 4 + p.ext.length, 0));
    expect(encodeCheckpointPayload(back).equals(payload)).toBe(true);
  });

  it('stores a segment reference once however many pages use it', () => {
    // One 4-page write: four pages, one reference.
    const map = new Map<number, StoredPage>();
    replaySegment(map, { volumeId: VOL, segmentId: '000000000001-0000abcd', extents: [[0, 4 * PAGE_BLOCKS, 0]] }, PAGE_BLOCKS);
    const pages = [...map.values()];
    expect(pages).toHaveLength(4);
    const ref = `${VOL}/000000000001-0000abcd`;
    const payload = encodeCheckpointPayload(pages);
    expect(payload.length).toBe(8 + 4 + (2 + ref.length) + 4 + 4 * (4 + 6 + 2 + 4 + 4 + 10));
    expect(payload.indexOf(ref)).toBe(payload.lastIndexOf(ref));
  });

  it('encodes an empty map and refuses malformed payloads with a format error', () => {
    expect(decodeCheckpointPayload(encodeCheckpointPayload([]))).toEqual([]);
    const good = encodeCheckpointPayload([{ page: 3, version: 7, segs: [`${VOL}/000000000001-0000abcd`], ext: encodePage([{ first: 768, count: 4, seg: `${VOL}/000000000001-0000abcd`, segBlock: 0 }], 3, PAGE_BLOCKS).ext }]);
    expect(decodeCheckpointPayload(good)[0]).toMatchObject({ page: 3, version: 7 });
    expect(() => decodeCheckpointPayload(good.subarray(0, good.length - 1))).toThrow(CheckpointFormatError);
    expect(() => decodeCheckpointPayload(Buffer.concat([good, Buffer.alloc(1)]))).toThrow(/after the last page/);
    const badMagic = Buffer.from(good);
    badMagic[0] = 0;
    expect(() => decodeCheckpointPayload(badMagic)).toThrow(/magic/);
    expect(() => encodeCheckpointPayload([{ page: 1, version: 1, segs: [], ext: new Uint8Array() }, { page: 1, version: 2, segs: [], ext: new Uint8Array() }])).toThrow(/twice/);
  });

  it('has a trailer of its own kind, which the segment parser refuses', () => {
    const trailer = encodeTrailer({ kind: 'checkpoint', checkpointId: newCheckpointId(9) }, CHECKPOINT_FOOTER_MAGIC);
    expect(decodeTrailer<{ kind: string }>(trailer, CHECKPOINT_FOOTER_MAGIC).kind).toBe('checkpoint');
    expect(() => parseTrailer(trailer)).toThrow(/SLDGSEG1/);
  });
});

describe('replay', () => {
  it('builds the same pages as the commit path, versions included, and matches a block model', () => {
    const rng = seeded('replay');
    const pages = 12;
    const map = new Map<number, StoredPage>();
    // The commit path (shared/data/write.ts prepareWrite): extents split by page, laid over the old, version + 1.
    const committed = new Map<number, { version: number; extents: ReturnType<typeof decodePage> }>();
    const model: Array<string | null> = Array.from({ length: pages * PAGE_BLOCKS }, () => null);
    for (let seq = 1; seq <= 300; seq++) {
      const seg = randomSegment(rng, seq, pages);
      const ref = `${VOL}/${seg.segmentId}`;
      replaySegment(map, seg, PAGE_BLOCKS);
      const incoming = seg.extents.map(([first, count, off]) => (off < 0 ? { first, count, seg: null, segBlock: 0 } : { first, count, seg: ref, segBlock: off }));
      for (const [page, top] of splitByPage(incoming, PAGE_BLOCKS)) {
        const old = committed.get(page);
        committed.set(page, { version: (old?.version ?? 0) + 1, extents: overlay(old?.extents ?? [], top) });
      }
      for (const [first, count, off] of seg.extents) for (let b = 0; b < count; b++) model[first + b] = off < 0 ? 'zero' : `${ref}@${off + b}`;
      expect(touchedPages(seg, PAGE_BLOCKS).sort((a, b) => a - b)).toEqual([...splitByPage(incoming, PAGE_BLOCKS).keys()].sort((a, b) => a - b));
    }
    expect([...map.keys()].sort((a, b) => a - b)).toEqual([...committed.keys()].sort((a, b) => a - b));
    for (const [page, c] of committed) {
      const enc = encodePage(c.extents, page, PAGE_BLOCKS);
      expect(samePage(map.get(page)!, { page, version: c.version, segs: enc.segs, ext: enc.ext }), `page ${page}`).toBe(true);
      for (const e of decodePage(map.get(page)!, page, PAGE_BLOCKS)) {
        for (let b = 0; b < e.count; b++) expect(model[e.first + b]).toBe(e.seg === null ? 'zero' : `${e.seg}@${e.segBlock + b}`);
      }
    }
  });
});

describe('the commit chain', () => {
  const d = (seq: number, id: string, prev: string) => [id, { segmentId: id, seq, prev }] as const;
  const committed = new Map([d(4, 'd', 'c'), d(5, 'e', 'd'), d(6, 'f', 'e'), d(7, 'g', 'f')]);

  it('walks from the head to the checkpoint and ignores segments off the chain', () => {
    // 'x' lost the race for seq 6 on the same prev; 'y' was uploaded on the head and never committed.
    const byId = new Map([...committed, d(6, 'x', 'e'), d(8, 'y', 'g')]);
    expect(orderChain(byId, { seq: 7, segmentId: 'g' }, { seq: 3, segmentId: 'c' })).toEqual(['d', 'e', 'f', 'g']);
    expect(orderChain(byId, { seq: 5, segmentId: 'e' }, { seq: 5, segmentId: 'e' })).toEqual([]);
  });

  it('refuses a missing link, a wrong seq, and a chain that does not arrive at the checkpoint', () => {
    const missing = new Map(committed);
    missing.delete('e');
    expect(() => orderChain(missing, { seq: 7, segmentId: 'g' }, { seq: 3, segmentId: 'c' })).toThrow(/segment e \(seq 5\) is on the commit chain/);
    const skewed = new Map([...committed, d(9, 'f', 'e')]);
    expect(() => orderChain(skewed, { seq: 7, segmentId: 'g' }, { seq: 3, segmentId: 'c' })).toThrow(ChainBrokenError);
    expect(() => orderChain(committed, { seq: 7, segmentId: 'g' }, { seq: 3, segmentId: 'other' })).toThrow(/reaches seq 3 at segment c/);
    expect(() => orderChain(committed, { seq: 2, segmentId: 'b' }, { seq: 3, segmentId: 'c' })).toThrow(/older than the checkpoint/);
  });
});

describe('retention', () => {
  const set = (id: string, seq: number, chunks = 6, lastModifiedMs = 1_000_000): CheckpointSet => ({ id, seq, chunks, lastModifiedMs });
  const opts = { retain: 3, k: 4, nowMs: 1_000_000, graceMs: 3_600_000 };

  it('keeps the latest and the newest readable older ones; the floor is the oldest kept', () => {
    const sets = [set('a', 10), set('b', 20), set('c', 30), set('d', 40), set('torn', 35, 3)];
    expect(planRetention(sets, { id: 'd', seq: 40 }, opts)).toEqual({ keep: ['d', 'c', 'b'], remove: ['a', 'torn'], floorSeq: 20 });
  });

  it('deletes a duplicate at the latest seq, and newer sets only after the grace period', () => {
    const sets = [set('b', 20), set('dup', 40), set('d', 40), set('fresh', 50), set('stale', 60, 6, 1_000_000 - 3_600_001)];
    const plan = planRetention(sets, { id: 'd', seq: 40 }, opts);
    expect(plan.keep).toEqual(['d', 'b']);
    expect(plan.remove.sort()).toEqual(['dup', 'stale']);
    expect(plan.floorSeq).toBe(20);
  });

  it('keeps the recorded latest even when the listing missed it', () => {
    expect(planRetention([], { id: 'd', seq: 40 }, opts)).toEqual({ keep: ['d'], remove: [], floorSeq: 40 });
  });
});

describe('ids, placement and messages', () => {
  it('names checkpoints by seq, distinct from segments', () => {
    const id = newCheckpointId(42);
    expect(id).toMatch(/^ckpt-000000000042-[0-9a-f]{8}$/);
    expect(checkpointIdSeq(id)).toBe(42);
    expect(checkpointIdSeq('000000000042-0123abcd')).toBeNull();
    expect(() => newCheckpointId(0)).toThrow();
  });

  it('keeps placement as sled indexes and drives, and resolves it back to the same locations', () => {
    const buckets = Array.from({ length: 8 }, (_, i) => `sledge-sled${i}-abcdef`);
    const id = newCheckpointId(7);
    const locations = placeChunks(VOL, id, 6, buckets);
    const placement = formatPlacement(locations, buckets);
    expect(placement).toMatch(/^(\d\/d\d\d,){5}\d\/d\d\d$/);
    expect(parsePlacement(placement, VOL, id, buckets)).toEqual(locations);
    // A sled the deployment no longer has is a chunk to look for elsewhere, not an error.
    expect(parsePlacement(placement, VOL, id, buckets.slice(0, 1)).filter((l) => l === null).length).toBeGreaterThan(0);
    expect(() => formatPlacement([{ bucket: 'elsewhere', key: `d00/${VOL}/${id}.0` }], buckets)).toThrow(/not on a known sled/);
  });

  it('parses the checkpoint queue messages and refuses malformed ones', () => {
    expect(parseCheckpointMessage({ type: 'checkpoint-volume', volumeId: VOL, requestedAtSeq: 5 })).toEqual({ type: 'checkpoint-volume', volumeId: VOL, requestedAtSeq: 5 });
    expect(parseCheckpointMessage({ type: 'checkpoint-sweep' })).toEqual({ type: 'checkpoint-sweep' });
    expect(parseCheckpointMessage({ type: 'rebuild-volume', volumeId: VOL })).toEqual({ type: 'rebuild-volume', volumeId: VOL });
    expect(parseCheckpointMessage({ type: 'reclaim-volume', volumeId: VOL })).toBeNull();
    expect(() => parseCheckpointMessage({ type: 'checkpoint-volume', volumeId: VOL, requestedAtSeq: -1 })).toThrow(BadCheckpointMessageError);
    expect(() => parseCheckpointMessage({ type: 'rebuild-volume' })).toThrow(BadCheckpointMessageError);
    expect(parseWorkMessage(JSON.stringify({ type: 'reclaim-volume', volumeId: VOL }))).toEqual({ type: 'reclaim-volume', volumeId: VOL });
    expect(parseWorkMessage(JSON.stringify({ type: 'fold-volume', volumeId: VOL }))).toEqual({ type: 'fold-volume', volumeId: VOL });
    expect(parseWorkMessage(JSON.stringify({ type: 'fold-volume', volumeId: VOL, upTo: 12 }))).toEqual({ type: 'fold-volume', volumeId: VOL, upTo: 12 });
    expect(() => parseWorkMessage(JSON.stringify({ type: 'fold-volume', volumeId: VOL, upTo: -1 }))).toThrow(UnknownWorkMessageError);
    expect(() => parseWorkMessage(JSON.stringify({ type: 'fold-volume', volumeId: VOL, upTo: '12' }))).toThrow(UnknownWorkMessageError);
    expect(() => parseWorkMessage('{"type":"defragment"}')).toThrow(UnknownWorkMessageError);
    expect(() => parseWorkMessage('not json')).toThrow(UnknownWorkMessageError);
  });

  it('parses the mode of the checkpoint and rebuild routes', () => {
    expect(parseMode({})).toBe('run');
    expect(parseMode({ mode: 'queue' })).toBe('queue');
    expect(() => parseMode({ mode: 'soon' })).toThrow(/mode must be/);
    expect(() => parseMode({ force: true })).toThrow(/unknown field/);
  });
});
