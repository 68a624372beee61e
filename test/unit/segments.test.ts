import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { crc32c } from '#shared/data/crc32c.ts';
import { codec } from '#shared/data/erasure.ts';
import { FOOTER_BYTES, GRANULE_BYTES, SEGMENT_FOOTER_MAGIC, chunkSizeFor, encodeSegment, encodeTrailer, newSegmentId, parseTrailer, trailerBytesFromFooter } from '#shared/data/segments.ts';
import { seeded } from './seed.ts';

describe('segment format', () => {
  it('sizes chunks in whole blocks so no block straddles two chunks', () => {
    expect(chunkSizeFor(4096, 4, 4096)).toBe(4096);
    expect(chunkSizeFor(4 * 1024 * 1024, 4, 4096)).toBe(1024 * 1024);
    expect(chunkSizeFor(5 * 4096, 4, 4096)).toBe(2 * 4096);
  });

  it('stores plain data in data chunks, a self-describing trailer in every chunk, and checksums that match', async () => {
    const payload = randomBytes(3 * GRANULE_BYTES + 5 * 4096);
    const seg = await encodeSegment(
      { volumeId: 'vol-1', segmentId: newSegmentId(7), seq: 7, prev: 'p', writer: { id: 'w' }, k: 4, m: 2, blockSizeBytes: 4096, extents: [[0, payload.length / 4096, 0]] },
      payload,
    );
    const cs = seg.descriptor.chunkSizeBytes;
    expect(seg.chunks).toHaveLength(6);
    expect(Buffer.concat(seg.chunks.slice(0, 4).map((c) => c.subarray(0, cs))).subarray(0, payload.length).equals(payload)).toBe(true);
    seg.chunks.forEach((chunk, i) => {
      // The checksum sent to S3 is the whole object's, derived without a second pass.
      expect(seg.objectCrcs[i]).toBe(crc32c(chunk));
      const trailerBytes = trailerBytesFromFooter(chunk.subarray(chunk.length - FOOTER_BYTES));
      expect(chunk.length).toBe(cs + trailerBytes);
      const d = parseTrailer(chunk.subarray(cs));
      expect(d).toMatchObject({ volumeId: 'vol-1', seq: 7, prev: 'p', chunkIndex: i, k: 4, m: 2, payloadBytes: payload.length });
      for (let g = 0; g * GRANULE_BYTES < cs; g++) expect(crc32c(chunk.subarray(g * GRANULE_BYTES, Math.min(cs, (g + 1) * GRANULE_BYTES)))).toBe(d.crcs[i]![g]);
    });
    // A damaged trailer is refused.
    const bad = Buffer.from(seg.chunks[0]!.subarray(cs));
    bad[5] = bad[5]! ^ 1;
    expect(() => parseTrailer(bad)).toThrow(/checksum mismatch/);
  });

  it('lays out chunks exactly as the plain definition does, for payloads in one or many parts', async () => {
    // The definition, written the slow obvious way: concatenate, pad, cut into k chunks,
    // parity per granule from fresh copies, trailer appended with Buffer.concat.
    const reference = async (k: number, m: number, bs: number, payload: Buffer, createdAt: string, meta: Record<string, unknown>) => {
      const cs = chunkSizeFor(payload.length, k, bs);
      const padded = Buffer.concat([payload, Buffer.alloc(k * cs - payload.length)]);
      const data = Array.from({ length: k }, (_, i) => Buffer.from(padded.subarray(i * cs, (i + 1) * cs)));
      const parity = Array.from({ length: m }, () => Buffer.alloc(cs));
      for (let a = 0; a < cs; a += GRANULE_BYTES) {
        const b = Math.min(cs, a + GRANULE_BYTES);
        const out = await codec().encode(k, m, data.map((d) => Buffer.from(d.subarray(a, b))));
        out.forEach((p, j) => p.copy(parity[j]!, a));
      }
      const shards = [...data, ...parity];
      const crcs = shards.map((s) => Array.from({ length: Math.ceil(cs / GRANULE_BYTES) }, (_, g) => crc32c(s.subarray(g * GRANULE_BYTES, Math.min(cs, (g + 1) * GRANULE_BYTES)))));
      const descriptor = { v: 1, ...meta, chunkSizeBytes: cs, granuleBytes: GRANULE_BYTES, payloadBytes: payload.length, createdAt, crcs };
      return shards.map((s, i) => Buffer.concat([s, encodeTrailer({ ...descriptor, chunkIndex: i }, SEGMENT_FOOTER_MAGIC)]));
    };
    const { seed, next: rand } = seeded('segment layout');
    for (const [k, m, blocks, cuts] of [
      [4, 2, 1, 1],
      [4, 2, 5, 3],
      [4, 2, 1024, 7],
      [6, 3, 97, 4],
      [8, 3, 700, 2],
    ] as const) {
      const payload = Buffer.alloc(blocks * 4096);
      for (let i = 0; i < payload.length; i += 4) payload.writeUInt32LE((rand() * 2 ** 32) >>> 0, i);
      // Cut into `cuts` parts at random block boundaries, so parts straddle chunk boundaries.
      const edges = [...new Set([0, ...Array.from({ length: cuts - 1 }, () => Math.floor(rand() * blocks) * 4096), payload.length])].sort((a, b) => a - b);
      const parts = edges.slice(1).map((e, i) => payload.subarray(edges[i], e));
      const meta = { volumeId: 'vol-ref', segmentId: newSegmentId(3), seq: 3, prev: 'x', writer: { id: 'w', key: 'head:a', generation: 2 }, k, m, blockSizeBytes: 4096, extents: [[0, blocks, 0]] as Array<[number, number, number]> };
      const seg = await encodeSegment(meta, parts);
      const want = await reference(k, m, 4096, payload, seg.descriptor.createdAt, meta);
      expect(seg.chunks.length, `seed ${seed}`).toBe(k + m);
      seg.chunks.forEach((c, i) => {
        expect(c.equals(want[i]!), `seed ${seed}, ${k}+${m}, ${blocks} blocks in ${parts.length} parts, chunk ${i}`).toBe(true);
        expect(seg.objectCrcs[i]).toBe(crc32c(want[i]!));
      });
    }
  });

  it('rebuilds any one granule from the same byte range of any k chunks', async () => {
    const payload = randomBytes(8 * GRANULE_BYTES + 3 * 4096);
    const k = 4;
    const m = 2;
    const seg = await encodeSegment(
      { volumeId: 'v', segmentId: newSegmentId(1), seq: 1, prev: '', writer: { id: 'w' }, k, m, blockSizeBytes: 4096, extents: [[0, payload.length / 4096, 0]] },
      payload,
    );
    const cs = seg.descriptor.chunkSizeBytes;
    for (let g = 0; g * GRANULE_BYTES < cs; g++) {
      const a = g * GRANULE_BYTES;
      const b = Math.min(cs, a + GRANULE_BYTES);
      const pieces = seg.chunks.map((c) => c.subarray(a, b));
      for (const lost of [
        [0, 1],
        [2, 5],
        [3, 4],
      ]) {
        const shards = pieces.map((p, i) => (lost.includes(i) ? null : Buffer.from(p)));
        const full = await codec().reconstruct(k, m, shards);
        for (const i of lost) expect(full[i]!.equals(pieces[i]!), `granule ${g}, chunk ${i}`).toBe(true);
      }
    }
  });
});
