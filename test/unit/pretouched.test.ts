/**
 * The gateway's pretouched memory (gateway/pretouched.ts) with its real worker thread: pieces
 * of touched slabs never overlap, are as long as asked, and hold what is written to them; small
 * and oversized requests, an empty reserve and a closed reserve take fresh memory at once.
 */
import { describe, expect, it } from 'vitest';
import { PretouchedMemory } from '#gateway/pretouched.ts';

const MiB = 1024 * 1024;

/** Waits until the worker has handed back a slab (or fails after 5 s). */
async function untilReady(m: PretouchedMemory, bytes: number): Promise<Buffer> {
  for (let waited = 0; waited < 5_000; waited += 10) {
    const before = m.stats.pretouchedBytes;
    const b = m.take(bytes);
    if (m.stats.pretouchedBytes > before) return b;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error('the worker never handed back a touched slab');
}

describe('PretouchedMemory', () => {
  it('hands out non-overlapping pieces of touched shared slabs, then fresh memory when none is ready', async () => {
    const m = new PretouchedMemory({ slabBytes: 4 * MiB, reserveBytes: 8 * MiB, minBytes: MiB });
    try {
      // The first large request starts the worker and is served plainly.
      const first = m.take(MiB);
      expect(first.buffer instanceof SharedArrayBuffer).toBe(false);
      expect(m.stats).toEqual({ pretouchedBytes: 0, plainBytes: MiB });
      const a = await untilReady(m, 3 * MiB);
      expect(a.buffer instanceof SharedArrayBuffer).toBe(true);
      expect(a.length).toBe(3 * MiB);
      // Touched memory of a fresh slab is zero (the worker writes zeros over zeros).
      expect(a.every((x) => x === 0)).toBe(true);
      // What is left of the slab (1 MiB) is too small for 2 MiB: the next slab, or fresh memory.
      const pieces = [a, m.take(MiB), m.take(2 * MiB)];
      pieces.forEach((p, i) => p.fill(i + 1));
      expect(pieces[0]!.every((x) => x === 1)).toBe(true);
      expect(pieces[1]!.every((x) => x === 2)).toBe(true);
      expect(pieces[2]!.every((x) => x === 3)).toBe(true);
      // The 1 MiB piece is the rest of the first slab, right after the 3 MiB one.
      expect(pieces[1]!.buffer).toBe(a.buffer);
      expect(pieces[1]!.byteOffset).toBe(3 * MiB);
      expect(m.stats.pretouchedBytes).toBeGreaterThanOrEqual(4 * MiB);
    } finally {
      m.close();
    }
  });

  it('serves small, oversized and unreserved requests plainly, and never starts a worker for them', () => {
    const m = new PretouchedMemory({ slabBytes: 4 * MiB, reserveBytes: 8 * MiB, minBytes: MiB });
    expect(m.take(4096).length).toBe(4096);
    expect(m.take(5 * MiB).length).toBe(5 * MiB);
    expect(m.stats).toEqual({ pretouchedBytes: 0, plainBytes: 4096 + 5 * MiB });
    expect((m as unknown as { worker: unknown }).worker).toBeUndefined();
    const none = new PretouchedMemory({ slabBytes: 4 * MiB, reserveBytes: 0 });
    expect(none.take(2 * MiB).length).toBe(2 * MiB);
    expect((none as unknown as { worker: unknown }).worker).toBeUndefined();
  });

  it('takes fresh memory once closed', async () => {
    const m = new PretouchedMemory({ slabBytes: 2 * MiB, reserveBytes: 4 * MiB, minBytes: MiB });
    await untilReady(m, MiB);
    m.close();
    const after = m.take(MiB);
    expect(after.buffer instanceof SharedArrayBuffer).toBe(false);
    expect(after.length).toBe(MiB);
  });
});
