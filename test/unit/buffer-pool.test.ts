import { describe, expect, it } from 'vitest';
import { BufferPool } from '#shared/data/buffer-pool.ts';

describe('buffer pool', () => {
  const MiB = 1024 * 1024;

  it('reuses a released buffer of the same size class and hands out exact lengths', () => {
    const pool = new BufferPool({ minBytes: 1024, maxBytes: 16 * MiB, classBytes: MiB, keepPerClass: 2 });
    const a = pool.take(3 * MiB + 5);
    expect(a.buffer.length).toBe(3 * MiB + 5);
    const backing = a.buffer.buffer;
    a.release();
    const b = pool.take(3 * MiB + 100); // the same 4 MiB class
    expect(b.buffer.buffer).toBe(backing);
    expect(b.buffer.length).toBe(3 * MiB + 100);
    const c = pool.take(3 * MiB); // still leased: a new one
    expect(c.buffer.buffer).not.toBe(backing);
    expect(pool.stats).toMatchObject({ leases: 3, reused: 1, allocated: 2 });
  });

  it('refuses a second release, and does not pool sizes outside its range', () => {
    const pool = new BufferPool({ minBytes: 1024, maxBytes: MiB, classBytes: MiB, keepPerClass: 2 });
    const a = pool.take(4096);
    a.release();
    expect(() => a.release()).toThrow(/released twice/);
    const small = pool.take(10);
    const big = pool.take(2 * MiB);
    small.release();
    big.release();
    expect(pool.stats.unpooled).toBe(2);
    expect(pool.take(2 * MiB).buffer.buffer).not.toBe(big.buffer.buffer);
  });

  it('keeps at most keepPerClass free buffers per class', () => {
    const pool = new BufferPool({ minBytes: 1, maxBytes: 4 * MiB, classBytes: MiB, keepPerClass: 1 });
    const a = pool.take(MiB);
    const b = pool.take(MiB);
    a.release();
    b.release();
    const c = pool.take(MiB);
    const d = pool.take(MiB);
    expect([a.buffer.buffer, b.buffer.buffer]).toContain(c.buffer.buffer);
    expect([a.buffer.buffer, b.buffer.buffer]).not.toContain(d.buffer.buffer);
  });

  it('overwrites a released buffer when poisoning is on (the tests run with it)', () => {
    expect(process.env.SLEDGE_POOL_POISON).toBe('1');
    const pool = new BufferPool({ minBytes: 1, maxBytes: 4 * MiB, classBytes: MiB, keepPerClass: 1 });
    const a = pool.take(4096);
    a.buffer.fill(7);
    const view = a.buffer;
    a.release();
    expect(view.every((x) => x === 0xdb)).toBe(true);
  });
});
