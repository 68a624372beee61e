/**
 * Presigned chunk URLs (shared/aws/chunk-store.ts): the head resolves where a bucket's requests
 * go once and puts each chunk's key in the path itself. Every target it builds must be exactly
 * what the S3 client resolves for the same request, and a URL built so must work over HTTP.
 */
import { randomBytes } from 'node:crypto';
import { CreateBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { s3 } from '#shared/aws/clients.ts';
import { presignChunkRange, presignSdkResolutions, resolveTarget, resolveWithSdk } from '#shared/aws/presign.ts';
import { testApi } from './helpers.ts';

testApi({ sledgeEnv: true });

const KEYS = [
  'd01/vol-0123456789abcdef/seg-00000001/c0',
  'd07/vol-x/seg-9.chunk_5-a',
  'plain',
  // Keys the S3 client escapes: resolved by the SDK every time, and still the same.
  'has space/and+plus',
  'x//double',
  'ümlaut/key',
  '/leading',
];

describe('presigned chunk targets', () => {
  it('are what the S3 client resolves, for every kind, bucket and key, asked twice', async () => {
    for (const kind of ['GetObject', 'PutObject'] as const) {
      for (const bucket of ['sledge-sled-a', 'sledge-sled-b']) {
        for (let round = 0; round < 2; round++) {
          for (const key of KEYS) {
            const loc = { bucket, key };
            expect(await resolveTarget(kind, loc), `${kind} ${bucket}/${key}`).toEqual(await resolveWithSdk(kind, loc));
          }
        }
      }
    }
  });

  it('are resolved by the SDK once per bucket and kind for plain keys, every time for others', async () => {
    const loc = (key: string) => ({ bucket: 'sledge-sled-c', key });
    await resolveTarget('GetObject', loc('warm'));
    const before = presignSdkResolutions();
    for (let i = 0; i < 100; i++) await resolveTarget('GetObject', loc(`d0${i % 8}/vol-1/seg-${i}/c${i % 6}`));
    expect(presignSdkResolutions()).toBe(before);
    await resolveTarget('GetObject', loc('needs escaping/ü'));
    await resolveTarget('PutObject', loc('d01/vol-1/seg-1/c0'));
    await resolveTarget('PutObject', loc('d01/vol-1/seg-2/c0'));
    // The escaped key, then the PUT's probe.
    expect(presignSdkResolutions()).toBe(before + 2);
  });

  it('give a URL that reads exactly its range', async () => {
    const bucket = `presign-test-${randomBytes(4).toString('hex')}`;
    await s3().send(new CreateBucketCommand({ Bucket: bucket }));
    const key = 'd02/vol-presign/seg-1/c3';
    const body = randomBytes(256 * 1024);
    await s3().send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    const url = await presignChunkRange({ bucket, key }, 65_536, 131_072, 60);
    const res = await fetch(url, { headers: { range: 'bytes=65536-131071' } });
    expect(res.status).toBe(206);
    expect(Buffer.from(await res.arrayBuffer()).equals(body.subarray(65_536, 131_072))).toBe(true);
  });
});
