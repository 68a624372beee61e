import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { s3 } from '#shared/aws/clients.ts';
import { encodeBatch } from '#shared/api/batch.ts';
import { getSegmentRecord } from '#shared/aws/pagemap/pages.ts';
import { seeded } from '../unit/seed.ts';
import { testApi } from './helpers.ts';

const MiB = 1024 * 1024;

const { api } = testApi({ sledgeEnv: true });

describe('writes and reads over HTTP', () => {
  it('reads back random data byte-identical at many offsets and sizes', async () => {
    const rng = seeded('offsets and sizes');
    const vol = await api.createVolume({ sizeBytes: 64 * MiB });
    const sizes = [4096, 8192, 12288, 65536, 69632, 256 * 1024, MiB, 3 * MiB + 4096, 4 * MiB];
    const written: Array<[number, Buffer]> = [];
    for (const size of sizes) {
      // Start anywhere block-aligned, including across page (1 MiB) boundaries.
      const offset = rng.int((64 * MiB - size) / 4096) * 4096;
      const data = randomBytes(size);
      await api.write(vol.volumeId, offset, data);
      expect((await api.read(vol.volumeId, offset, size)).equals(data), `size ${size} at ${offset}`).toBe(true);
      written.push([offset, data]);
    }
    // Never-written blocks read as zeros.
    const model = Buffer.alloc(64 * MiB);
    for (const [o, d] of written) d.copy(model, o);
    for (let o = 0; o < 64 * MiB; o += 4 * MiB) {
      expect((await api.read(vol.volumeId, o, 4 * MiB)).equals(model.subarray(o, o + 4 * MiB)), `window at ${o}`).toBe(true);
    }
  });

  it('writes a batch of extents as one segment, zero extents included', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    const base = randomBytes(2 * MiB);
    await api.write(vol.volumeId, 0, base);
    const a = randomBytes(4096);
    const b = randomBytes(3 * 4096);
    const res = await api.batch(
      vol.volumeId,
      encodeBatch([
        { offset: 4096, data: a },
        { offset: 65536, length: 8192, zero: true },
        { offset: MiB + 4096, data: b },
        { offset: 10 * MiB, data: a },
      ]),
    );
    expect(res.commitSeq).toBe(2);
    const expected = Buffer.from(base);
    a.copy(expected, 4096);
    expected.fill(0, 65536, 65536 + 8192);
    b.copy(expected, MiB + 4096);
    expect((await api.read(vol.volumeId, 0, 2 * MiB)).equals(expected)).toBe(true);
    expect((await api.read(vol.volumeId, 10 * MiB, 4096)).equals(a)).toBe(true);
  });

  it('trims ranges to zeros, across pages', async () => {
    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    const data = randomBytes(4 * MiB);
    await api.write(vol.volumeId, 0, data);
    await api.trim(vol.volumeId, MiB - 8192, MiB + 16384);
    const expected = Buffer.from(data);
    expected.fill(0, MiB - 8192, 2 * MiB + 8192);
    expect((await api.read(vol.volumeId, 0, 4 * MiB)).equals(expected)).toBe(true);
  });

  it('lands both of two concurrent writers to the same page', async () => {
    const vol = await api.createVolume({ sizeBytes: 4 * MiB });
    // Eight writers, all to page 0, different blocks: every one must land.
    const blocks = Array.from({ length: 8 }, (_, i) => randomBytes(4096 * (1 + (i % 3))));
    const offsets = blocks.map((_, i) => i * 16 * 4096);
    await Promise.all(blocks.map((b, i) => api.write(vol.volumeId, offsets[i]!, b)));
    for (let i = 0; i < blocks.length; i++) expect((await api.read(vol.volumeId, offsets[i]!, blocks[i]!.length)).equals(blocks[i]!)).toBe(true);
    const d = await api.describe(vol.volumeId);
    expect(d.json.commitSeq).toBe(8);
  });
});

describe('erasure coding under damage', () => {
  async function segmentOf(volumeId: string, segmentId: string) {
    const rec = await getSegmentRecord(volumeId, segmentId);
    expect(rec).not.toBeNull();
    return rec!;
  }

  it('reads correctly with m chunks of a segment deleted, and fails clearly with m+1', async () => {
    for (const [k, m] of [
      [4, 2],
      [5, 3],
    ] as const) {
      const vol = await api.createVolume({ sizeBytes: 8 * MiB, dataChunks: k, parityChunks: m });
      const data = randomBytes(2 * MiB + 4096 * 3);
      const w = await api.write(vol.volumeId, 4096, data);
      const rec = await segmentOf(vol.volumeId, w.segmentId);
      // Delete m chunks, data chunks first (the hardest case: the bytes must come from parity).
      for (const loc of rec.locations.slice(0, m)) await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
      const r = await api.readRaw(vol.volumeId, 4096, data.length);
      expect(r.status).toBe(200);
      expect(r.body.equals(data), `${k}+${m} with ${m} chunks missing`).toBe(true);
      expect(Number(r.headers.get('x-sledge-rebuilt-granules'))).toBeGreaterThan(0);
      // One more missing: the read must fail, not return zeros or garbage.
      const extra = rec.locations[k]!;
      await s3().send(new DeleteObjectCommand({ Bucket: extra.bucket, Key: extra.key }));
      const bad = await api.readRaw(vol.volumeId, 4096, data.length);
      expect(bad.status).toBe(503);
      expect(bad.json.error).toBe('DataUnavailableError');
      expect(bad.json.message).toMatch(new RegExp(`only ${k - 1} of ${k + m} chunks readable`));
    }
  });

  it('detects a chunk whose bytes were altered and still returns the right bytes', async () => {
    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    const data = randomBytes(MiB);
    const w = await api.write(vol.volumeId, 0, data);
    const healthy = await api.readRaw(vol.volumeId, 0, data.length);
    expect(Number(healthy.headers.get('x-sledge-bad-granules'))).toBe(0);
    const rec = await segmentOf(vol.volumeId, w.segmentId);
    // Flip one byte in data chunk 1, keeping the object's length (silent corruption).
    const loc = rec.locations[1]!;
    const obj = await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    const bytes = Buffer.from(await obj.Body!.transformToByteArray());
    bytes[1000] = bytes[1000]! ^ 0x40;
    await s3().send(new PutObjectCommand({ Bucket: loc.bucket, Key: loc.key, Body: bytes }));
    const r = await api.readRaw(vol.volumeId, 0, data.length);
    expect(r.status).toBe(200);
    expect(r.body.equals(data)).toBe(true);
    expect(Number(r.headers.get('x-sledge-bad-granules'))).toBe(1);
    expect(Number(r.headers.get('x-sledge-rebuilt-granules'))).toBe(1);
  });
});
