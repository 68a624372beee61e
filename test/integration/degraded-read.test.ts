/**
 * Degraded reads over HTTP (shared/data/segment-reader.ts): a chunk answered 404 is asked last
 * for a while, so later reads of the segment cost k GETs, like healthy ones; a chunk remembered
 * lost is still asked when the others do not suffice; and a rebuilt 4 MiB read lands byte-exact.
 */
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { s3 } from '#shared/aws/clients.ts';
import { getSegmentRecord } from '#shared/aws/pagemap/pages.ts';
import { testApi } from './helpers.ts';

const MiB = 1024 * 1024;

const { api } = testApi({ sledgeEnv: true });

async function segmentOf(volumeId: string, segmentId: string) {
  const rec = await getSegmentRecord(volumeId, segmentId);
  expect(rec).not.toBeNull();
  return rec!;
}

const gets = (r: { headers: Headers }) => Number(r.headers.get('x-sledge-ranged-gets'));
const rebuilt = (r: { headers: Headers }) => Number(r.headers.get('x-sledge-rebuilt-granules'));
const rounds = (r: { headers: Headers }) => Number(r.headers.get('x-sledge-get-rounds'));

describe('degraded reads', () => {
  it('asks k chunks once the lost ones are known, and returns the same bytes', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB, dataChunks: 4, parityChunks: 2 });
    const data = randomBytes(4 * MiB);
    const w = await api.write(vol.volumeId, 0, data);
    const rec = await segmentOf(vol.volumeId, w.segmentId);
    const healthy = await api.readRaw(vol.volumeId, 0, data.length);
    expect(healthy.body.equals(data)).toBe(true);
    expect(gets(healthy)).toBe(4);
    expect(rebuilt(healthy)).toBe(0);
    expect(rounds(healthy)).toBe(1);
    // Lose data chunks 0 and 1: the bytes of half the payload must come from parity.
    for (const loc of rec.locations.slice(0, 2)) await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    const first = await api.readRaw(vol.volumeId, 0, data.length);
    expect(first.status).toBe(200);
    expect(first.body.equals(data)).toBe(true);
    // 4 asked (2 answered 404), then the 2 parity chunks, each asked as a 404 came back.
    expect(gets(first)).toBe(6);
    expect(rebuilt(first)).toBe(2 * 16);
    expect(rounds(first)).toBe(2);
    const second = await api.readRaw(vol.volumeId, 0, data.length);
    expect(second.body.equals(data)).toBe(true);
    expect(gets(second)).toBe(4);
    expect(rebuilt(second)).toBe(2 * 16);
    // The lost chunks known, the parity chunks are asked with the others, in one round.
    expect(rounds(second)).toBe(1);
    // A read inside one lost chunk, cutting granules: rebuilt from 4 others, still exact.
    const part = await api.readRaw(vol.volumeId, 64 * 1024 + 4096, 3 * 4096);
    expect(part.body.equals(data.subarray(64 * 1024 + 4096, 64 * 1024 + 4 * 4096))).toBe(true);
    expect(gets(part)).toBe(4);
    expect(rounds(part)).toBe(1);
  });

  it('still asks a chunk remembered lost when the others do not suffice', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB, dataChunks: 4, parityChunks: 2 });
    const data = randomBytes(MiB);
    const w = await api.write(vol.volumeId, 0, data);
    const rec = await segmentOf(vol.volumeId, w.segmentId);
    const [c0, c1, , , p0] = rec.locations;
    // Chunk 0 goes missing and a read learns it.
    const saved = Buffer.from(await (await s3().send(new GetObjectCommand({ Bucket: c0!.bucket, Key: c0!.key }))).Body!.transformToByteArray());
    await s3().send(new DeleteObjectCommand({ Bucket: c0!.bucket, Key: c0!.key }));
    const learned = await api.readRaw(vol.volumeId, 0, data.length);
    expect(learned.body.equals(data)).toBe(true);
    expect(rebuilt(learned)).toBeGreaterThan(0);
    // It comes back, and two others are lost: chunk 0 is one of the only k = 4 left.
    await s3().send(new PutObjectCommand({ Bucket: c0!.bucket, Key: c0!.key, Body: saved }));
    for (const loc of [c1!, p0!]) await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    const r = await api.readRaw(vol.volumeId, 0, data.length);
    expect(r.status).toBe(200);
    expect(r.body.equals(data)).toBe(true);
    // And once read again, it is no longer remembered lost: its granules are read, not rebuilt.
    const again = await api.readRaw(vol.volumeId, 0, 256 * 1024);
    expect(again.body.equals(data.subarray(0, 256 * 1024))).toBe(true);
    expect(rebuilt(again)).toBe(0);
  });
});
