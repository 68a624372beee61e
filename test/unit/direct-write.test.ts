/**
 * Direct writes (docs/nbd-gateway.md, "Direct writes"): the gateway encodes a batch with the
 * shared codec and builds each chunk from the plan's descriptor; the head computes each chunk's
 * length and CRC32C from the descriptor alone. Both must agree, byte for byte, with what the
 * head's own encoder (`encodeSegment`) writes, or every commit by reference would be refused.
 * Randomized: SLEDGE_TEST_SEED picks the payloads (printed).
 */
import { describe, expect, it } from 'vitest';
import { type BatchPartsPiece, dataPiece } from '#shared/api/batch.ts';
import { crc32c } from '#shared/data/crc32c.ts';
import { canonicalDescriptor, chunkObjectOf, encodeSegment, type SegmentDescriptor } from '#shared/data/segments.ts';
import { checkWritePlan, DirectWriteError, encodeDirectBatch, type WritePlan } from '#gateway/direct-write.ts';

const seed = Number(process.env.SLEDGE_TEST_SEED ?? Date.now() % 1_000_000);
console.log(`direct-write unit test seed ${seed} (SLEDGE_TEST_SEED)`);

/** Deterministic bytes from the seed (xorshift32). */
function bytes(n: number, salt: number): Buffer {
  const out = Buffer.alloc(n);
  let x = (seed * 2654435761 + salt * 40503 + 1) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

const BS = 4096;

describe('direct writes: the chunks the gateway builds are the chunks the head would write', () => {
  for (const [k, m, sizes] of [
    [4, 2, [4 * 1024 * 1024]],
    [4, 2, [BS, 3 * BS, 200 * BS]],
    [6, 3, [17 * BS, 64 * 1024]],
    [2, 1, [BS]],
  ] as const) {
    it(`${k}+${m}, extents of ${sizes.join(', ')} bytes`, async () => {
      // Data extents with zero extents between them, in offset order.
      let offset = 0;
      const pieces: BatchPartsPiece[] = [];
      sizes.forEach((n, i) => {
        // Each data extent in two pieces, as the gateway's joined writes arrive.
        const b = bytes(n, i);
        pieces.push({ offset, length: n, parts: n > BS ? [b.subarray(0, BS), b.subarray(BS)] : [b] });
        offset += n;
        pieces.push({ offset, length: 2 * BS, zero: true });
        offset += 2 * BS;
      });
      // The gateway: shuffled input (it sorts), one encoding.
      const batch = await encodeDirectBatch([...pieces].reverse(), k, m, BS);
      let segBlock = 0;
      const extents = pieces.map((p): [number, number, number] => {
        if ('zero' in p) return [p.offset / BS, p.length / BS, -1];
        const e: [number, number, number] = [p.offset / BS, p.length / BS, segBlock];
        segBlock += p.length / BS;
        return e;
      });
      // The head's own encoder, for the same segment, its fields in prepareWrite's order.
      const meta = {
        volumeId: 'vol-0123456789abcdef',
        segmentId: '000000000007-0a1b2c3d',
        seq: 7,
        prev: '000000000006-00ff00ff',
        writer: { id: 'head-1', key: 'gw-a', generation: 3 },
        k,
        m,
        blockSizeBytes: BS,
        extents,
      };
      const head = await encodeSegment(meta, pieces.flatMap((p) => ('zero' in p ? [] : [Buffer.concat(p.parts)])));
      expect(batch.extents).toEqual(pieces.map((p) => ('zero' in p ? { offset: p.offset, length: p.length, zero: true } : { offset: p.offset, length: p.length })));
      expect(batch.stripes.chunkSizeBytes).toBe(head.descriptor.chunkSizeBytes);
      expect(batch.stripes.crcs).toEqual(head.descriptor.crcs);
      // The plan's descriptor, as the head builds it and as it comes back through JSON in another key order.
      const planned = canonicalDescriptor(head.descriptor);
      const shuffled = JSON.parse(JSON.stringify(Object.fromEntries(Object.entries(planned).reverse()))) as SegmentDescriptor;
      for (const d of [planned, canonicalDescriptor(shuffled)]) {
        expect(JSON.stringify(d)).toBe(JSON.stringify(head.descriptor));
        batch.stripes.shards.forEach((shard, i) => {
          const o = chunkObjectOf(d, i);
          const chunk = Buffer.concat([shard, o.trailer]);
          expect(chunk.equals(head.chunks[i]!), `chunk ${i}`).toBe(true);
          expect(o.bytes).toBe(chunk.length);
          expect(o.crc).toBe(head.objectCrcs[i]);
          expect(o.crc).toBe(crc32c(chunk));
        });
      }
      head.release();
    });
  }

  it('refuses a plan that does not describe the batch', async () => {
    const batch = await encodeDirectBatch([dataPiece(0, bytes(8 * BS, 9))], 4, 2, BS);
    const plan = (crcs: number[][], n = 6): WritePlan => ({
      descriptor: { chunkSizeBytes: batch.stripes.chunkSizeBytes, crcs } as SegmentDescriptor,
      locations: Array.from({ length: n }, () => ({ bucket: 'b', key: 'k' })),
      puts: Array.from({ length: n }, () => ({ url: 'http://x', headers: {} })),
      expiresAtMs: 0,
    });
    expect(() => checkWritePlan(plan(batch.stripes.crcs), batch)).not.toThrow();
    const wrong = batch.stripes.crcs.map((c) => [...c]);
    wrong[5]![0] = (wrong[5]![0]! + 1) >>> 0;
    expect(() => checkWritePlan(plan(wrong), batch)).toThrow(DirectWriteError);
    expect(() => checkWritePlan(plan(batch.stripes.crcs, 5), batch)).toThrow(DirectWriteError);
  });
});
