import { describe, expect, it } from 'vitest';
import { readPlan } from '#shared/backup/backup.ts';
import { seeded } from './seed.ts';

/** The backup job's snapshot reads (shared/backup/backup.ts, docs/backup.md): they cover exactly the listed blocks. */
const BLOCK = 4096;
const MiB = 1024 * 1024;

describe('readPlan', () => {
  it('covers exactly the listed extents from the resume point, in order, each read at most 4 MiB (seeded)', () => {
    const rng = seeded('backup read plan');
    for (let round = 0; round < 200; round++) {
      const extents: Array<{ offset: number; length: number }> = [];
      let cursor = rng.int(64) * BLOCK;
      for (let n = rng.int(40); n > 0; n--) {
        const length = (1 + rng.int(rng.next() < 0.2 ? 3000 : 40)) * BLOCK;
        extents.push({ offset: cursor, length });
        cursor += length + (1 + rng.int(rng.next() < 0.5 ? 100 : 2000)) * BLOCK;
      }
      const resumeAt = extents.length === 0 || rng.next() < 0.5 ? 0 : rng.int(cursor / BLOCK) * BLOCK;
      const plan = readPlan(extents, resumeAt);
      const want = new Set<number>();
      for (const e of extents) for (let b = e.offset; b < e.offset + e.length; b += BLOCK) if (b >= resumeAt) want.add(b);
      const got: number[] = [];
      let lastEnd = -1;
      for (const read of plan) {
        expect(read.length).toBeGreaterThan(0);
        expect(read.length).toBeLessThanOrEqual(4 * MiB);
        expect(read.offset).toBeGreaterThanOrEqual(lastEnd);
        lastEnd = read.offset + read.length;
        for (const [from, to] of read.wanted) {
          expect(from).toBeGreaterThanOrEqual(read.offset);
          expect(to).toBeLessThanOrEqual(read.offset + read.length);
          for (let b = from; b < to; b += BLOCK) got.push(b);
        }
      }
      expect(got).toEqual([...want].sort((a, b) => a - b));
    }
  });
});
