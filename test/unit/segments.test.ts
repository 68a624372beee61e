import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { crc32c } from '#shared/crc32c.ts';
import { codec } from '#shared/erasure.ts';
import { FOOTER_BYTES, GRANULE_BYTES, chunkSizeFor, encodeSegment, newSegmentId, parseTrailer, trailerBytesFromFooter } from '#shared/segments.ts';

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
