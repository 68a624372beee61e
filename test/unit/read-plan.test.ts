/**
 * Read plans (shared/data/read-plan.ts, docs/nbd-gateway.md "Direct data reads"): how extents
 * of one segment become ranged GETs of data chunks, widened to whole granules, merged per chunk,
 * with each granule's CRC and where each piece goes in the answer; and the gateway's check of a
 * plan's shape (gateway/direct-read.ts).
 */
import { describe, expect, it } from 'vitest';
import { planSegment, type ReadPlan } from '#shared/data/read-plan.ts';
import { checkPlan, DirectReadError } from '#gateway/direct-read.ts';
import type { SegmentRecord } from '#shared/core/records.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 4096;
const GRANULE = 64 * KiB;

/** A 4+2 segment whose chunk i granule g has CRC i * 1000 + g (a label, not a checksum). */
function segment(chunkSizeBytes: number, payloadBytes = 4 * chunkSizeBytes): SegmentRecord {
  const granules = Math.ceil(chunkSizeBytes / GRANULE);
  return {
    volumeId: 'vol-a',
    segmentId: '000000000001-abcd',
    seq: 1,
    prev: '',
    k: 4,
    m: 2,
    chunkSizeBytes,
    granuleBytes: GRANULE,
    blockSizeBytes: BS,
    payloadBytes,
    locations: Array.from({ length: 6 }, (_, i) => ({ bucket: 'b', key: `d00/vol-a/seg.${i}` })),
    crcs: Array.from({ length: 6 }, (_, c) => Array.from({ length: granules }, (_, g) => c * 1000 + g)),
    createdAt: '2026-01-01T00:00:00Z',
  };
}

const extent = (first: number, count: number, segBlock: number) => ({ first, count, seg: 'vol-a/000000000001-abcd', segBlock });

describe('planSegment', () => {
  it('a whole 4 MiB segment is one GET per data chunk, never parity', () => {
    const rec = segment(MiB);
    const gets = planSegment(rec, [extent(0, 1024, 0)], 0, BS);
    expect(gets.map((g) => [g.chunk, g.start, g.end, g.crcs.length])).toEqual([
      [0, 0, MiB, 16],
      [1, 0, MiB, 16],
      [2, 0, MiB, 16],
      [3, 0, MiB, 16],
    ]);
    expect(gets[2]!.crcs).toEqual(rec.crcs[2]);
    expect(gets.map((g) => g.pieces)).toEqual([0, 1, 2, 3].map((i) => [{ at: i * MiB, from: 0, length: MiB }]));
  });

  it('a small extent fetches its whole granules and places the bytes at its offset in the read', () => {
    const rec = segment(MiB);
    // Blocks 100..101 of the read hold segment blocks 20..21: bytes 81920..90111 of chunk 0, granule 1.
    const gets = planSegment(rec, [extent(100, 2, 20)], 90, BS);
    expect(gets).toEqual([{ chunk: 0, start: GRANULE, end: 2 * GRANULE, granuleBytes: GRANULE, crcs: [1], pieces: [{ at: 10 * BS, from: 20 * BS - GRANULE, length: 2 * BS }] }]);
  });

  it('merges granule runs of one chunk that touch, and splits those that do not and extents across chunks', () => {
    const rec = segment(MiB);
    const perChunk = MiB / BS;
    const gets = planSegment(
      rec,
      [
        extent(0, 16, 0), // chunk 0, granule 0
        extent(16, 16, 16), // chunk 0, granule 1: joins
        extent(32, 1, 200), // chunk 0, granule 12: a run of its own
        extent(33, 8, perChunk - 4), // across chunks 0 and 1
      ],
      0,
      BS,
    );
    expect(gets.map((g) => [g.chunk, g.start, g.end])).toEqual([
      [0, 0, 2 * GRANULE],
      [0, 12 * GRANULE, 13 * GRANULE],
      [0, 15 * GRANULE, MiB],
      [1, 0, GRANULE],
    ]);
    expect(gets[0]!.pieces).toEqual([
      { at: 0, from: 0, length: GRANULE },
      { at: GRANULE, from: GRANULE, length: GRANULE },
    ]);
    expect(gets[2]!.pieces).toEqual([{ at: 33 * BS, from: GRANULE - 4 * BS, length: 4 * BS }]);
    expect(gets[3]!.pieces).toEqual([{ at: 37 * BS, from: 0, length: 4 * BS }]);
  });

  it('a chunk that is not a whole number of granules ends its last GET at the chunk end', () => {
    const cs = 3 * GRANULE + 4 * BS;
    const rec = segment(cs);
    const gets = planSegment(rec, [extent(0, cs / BS, 0)], 0, BS);
    expect(gets[0]).toMatchObject({ chunk: 0, start: 0, end: cs, crcs: [0, 1, 2, 3] });
  });

  it('refuses an extent beyond the payload', () => {
    const rec = segment(MiB, 3 * MiB);
    expect(() => planSegment(rec, [extent(0, 8, 3 * (MiB / BS) - 4)], 0, BS)).toThrow(/beyond segment/);
  });
});

describe('checkPlan', () => {
  const plan = (gets: ReadPlan['gets']): ReadPlan => ({ offset: 0, length: MiB, expiresAtMs: 0, gets });
  const get = { url: 'http://s3/x', start: 0, end: 2 * GRANULE, granuleBytes: GRANULE, crcs: [1, 2] };

  it('accepts a plan whose pieces lie inside their GETs and the read', () => {
    expect(() => checkPlan(plan([{ ...get, pieces: [{ at: MiB - GRANULE, from: GRANULE, length: GRANULE }] }]), 0, MiB)).not.toThrow();
  });

  it('refuses another range, a piece outside its GET or the read, and a wrong CRC count', () => {
    const ok = plan([{ ...get, pieces: [{ at: 0, from: 0, length: GRANULE }] }]);
    expect(() => checkPlan(ok, 4096, MiB)).toThrow(DirectReadError);
    expect(() => checkPlan(plan([{ ...get, pieces: [{ at: 0, from: GRANULE, length: 2 * GRANULE }] }]), 0, MiB)).toThrow(DirectReadError);
    expect(() => checkPlan(plan([{ ...get, pieces: [{ at: MiB - 4096, from: 0, length: 8192 }] }]), 0, MiB)).toThrow(DirectReadError);
    expect(() => checkPlan(plan([{ ...get, crcs: [1], pieces: [] }]), 0, MiB)).toThrow(DirectReadError);
  });
});
