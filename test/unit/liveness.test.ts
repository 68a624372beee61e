import { describe, expect, it } from 'vitest';
import { isKept } from '#shared/maintenance/gc.ts';
import { freshStoredBytes, groupForCommits, liveness, pagesTouched, planCompaction, spaceRatio, type LiveExtent, type SegmentUsage } from '#shared/maintenance/liveness.ts';
import { overlay, splitByPage, type Extent } from '#shared/data/extents.ts';
import { seeded } from './seed.ts';

const policy = { dataChunks: 4, parityChunks: 2, blockSizeBytes: 4096, targetRatio: 1.1, maxEfficiency: 0.9, maxLiveBytes: 64 << 20, freshOverhead: 0.02, segmentBytesMax: 4 << 20 };

describe('liveness', () => {
  it('counts live blocks per segment and the pages they are in; zero extents count for nothing', () => {
    const l = liveness([
      { page: 0, extents: [{ first: 0, count: 2, seg: 'v/a', segBlock: 0 }, { first: 2, count: 3, seg: null, segBlock: 0 }, { first: 5, count: 1, seg: 'v/b', segBlock: 7 }] },
      { page: 3, extents: [{ first: 768, count: 4, seg: 'v/a', segBlock: 2 }] },
    ]);
    expect(Object.fromEntries(l.liveBlocks)).toEqual({ 'v/a': 6, 'v/b': 1 });
    expect([...l.pagesOf.get('v/a')!]).toEqual([0, 3]);
  });

  it('agrees with a block-by-block model after random overwrites', () => {
    const rng = seeded('liveness');
    const pageBlocks = 16;
    const blocks = 64;
    const model: Array<string | null> = Array(blocks).fill(null);
    const pages = new Map<number, Extent[]>();
    for (let w = 0; w < 60; w++) {
      const first = rng.int(blocks);
      const count = 1 + rng.int(Math.min(8, blocks - first));
      const seg = rng.int(5) === 0 ? null : `v/s${w}`;
      for (let b = first; b < first + count; b++) model[b] = seg;
      for (const [page, top] of splitByPage([{ first, count, seg, segBlock: 0 }], pageBlocks)) pages.set(page, overlay(pages.get(page) ?? [], top));
    }
    const l = liveness([...pages].map(([page, extents]) => ({ page, extents })));
    const expected = new Map<string, number>();
    for (const s of model) if (s) expected.set(s, (expected.get(s) ?? 0) + 1);
    expect(Object.fromEntries(l.liveBlocks)).toEqual(Object.fromEntries(expected));
  });

  it('finds the pages a descriptor touches, skipping zero extents', () => {
    expect(pagesTouched([[0, 1, 0], [250, 10, 1], [1000, 4, -1]], 256)).toEqual([0, 1]);
  });

  it('keeps the head segment and whatever a retention provider declares', () => {
    const rec = (segmentId: string, seq: number) => ({ volumeId: 'v', segmentId, seq });
    expect(isKept(rec('h', 9), 'h', [])).toBe(true);
    expect(isKept(rec('a', 1), 'h', [])).toBe(false);
    expect(isKept(rec('a', 1), 'h', [{ keepAll: true }])).toBe(true);
    expect(isKept(rec('a', 5), 'h', [{ keepSeqAbove: 4 }])).toBe(true);
    expect(isKept(rec('a', 4), 'h', [{ keepSeqAbove: 4 }])).toBe(false);
    expect(isKept(rec('a', 1), 'h', [{ refs: new Set(['v/a']) }])).toBe(true);
  });
});

describe('compaction planning', () => {
  const seg = (ref: string, liveBytes: number, storedBytes: number, kept = false): SegmentUsage => ({ ref, liveBytes, storedBytes, kept });

  it('takes the worst segments first until the projected ratio meets the target', () => {
    const segments = [seg('full', 4 << 20, 6 << 20), seg('half', 2 << 20, 6 << 20), seg('tenth', 400 << 10, 6 << 20), seg('tiny', 4096, 6 * 5120)];
    const plan = planCompaction(segments, policy);
    expect(plan[0]).toBe('tenth');
    expect(plan).not.toContain('full');
    // After the plan, the projected space is within the target.
    const chosen = segments.filter((x) => plan.includes(x.ref));
    const live = segments.reduce((n, s) => n + s.liveBytes, 0);
    const stored = segments.reduce((n, s) => n + s.storedBytes, 0) - chosen.reduce((n, s) => n + s.storedBytes, 0) + freshStoredBytes(chosen.reduce((n, s) => n + s.liveBytes, 0), policy);
    expect(spaceRatio(stored, live, 4, 2)).toBeLessThanOrEqual(1.1);
  });

  it('does not rewrite a lone small segment: it would be just as padded', () => {
    expect(planCompaction([seg('full', 4 << 20, 6 << 20), seg('tiny', 4096, 6 * 5120)], { ...policy, targetRatio: 1.0 })).toEqual([]);
    // Many small ones together are worth it.
    const smalls = Array.from({ length: 50 }, (_, i) => seg(`s${i}`, 4096, 6 * 5120));
    expect(planCompaction(smalls, policy).length).toBeGreaterThan(1);
    expect(freshStoredBytes(4096, policy)).toBeCloseTo(6 * (4096 + 1024) * 1.02);
  });

  it('does nothing when the volume is within the target, and never picks kept or efficient segments', () => {
    expect(planCompaction([seg('a', 4 << 20, 6 << 20), seg('b', 4 << 20, 6.3 * (1 << 20))], policy)).toEqual([]);
    expect(planCompaction([seg('k', 1 << 20, 6 << 20, true), seg('a', 4 << 20, 6 << 20)], policy)).toEqual([]);
    expect(planCompaction([seg('k', 1 << 20, 6 << 20), seg('b', 100, 6 << 20)], { ...policy, maxLiveBytes: 50 })).toEqual([]);
  });

  it('groups live extents into commits by whole pages within the byte and page limits', () => {
    const e = (first: number, count: number, page: number): LiveExtent => ({ first, count, seg: 'v/a', segBlock: 0, page });
    const groups = groupForCommits([e(0, 100, 0), e(300, 200, 1), e(520, 10, 2), e(200, 10, 0)], 4096, 300 * 4096, 2);
    expect(groups.map((g) => g.map((x) => x.first))).toEqual([[0, 200], [300, 520]]);
    expect(groupForCommits([e(0, 1, 0), e(256, 1, 1), e(512, 1, 2)], 4096, 1 << 30, 2).length).toBe(2);
  });
});
