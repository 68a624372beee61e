/**
 * Runs in the `integration-portable` project only (vitest.config.ts), next to data-path.test.ts:
 * proves that the control plane those tests talk to serves writes and reads with the portable
 * erasure codec and CRC-32C (test/integration/portable-plane.ts), while the native ones are
 * available on this machine, so the run is not the integration project's path again.
 */
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { s3 } from '#shared/aws/clients.ts';
import { crc32cNative } from '#shared/data/crc32c.ts';
import { loadNativeCodec } from '#shared/data/erasure/native.ts';
import { getSegmentRecord } from '#shared/aws/pagemap/pages.ts';
import { seeded } from '../unit/seed.ts';
import { Api, http, useSledgeEnv } from './helpers.ts';
import type { PortableStats } from './portable-plane.ts';

const MiB = 1024 * 1024;
let api: Api;

beforeAll(() => {
  api = new Api(useSledgeEnv().apiUrl);
});

async function stats(): Promise<PortableStats> {
  const r = await http(inject('portableStatsUrl'));
  expect(r.status).toBe(200);
  return r.json as PortableStats;
}

describe('the portable control plane', () => {
  it('is a different path from the integration project\'s: the native implementations load here', () => {
    expect(crc32cNative).not.toBeNull();
    expect(loadNativeCodec()?.name).toBe('native');
  });

  it('encodes writes and rebuilds reads with the portable codec, and checksums with the portable CRC', async () => {
    const rng = seeded('portable codecs');
    const before = await stats();
    expect(before).toMatchObject({ crc32cImpl: 'portable', crc32cIsPortable: true, codec: 'portable' });

    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    const data = Buffer.from(Array.from({ length: MiB + 4096 }, () => rng.int(256)));
    const written = await api.write(vol.volumeId, 0, data);
    expect((await api.read(vol.volumeId, 0, data.length)).equals(data)).toBe(true);
    // Without data chunk 0 the read must rebuild from parity, through the codec's reconstruct.
    const rec = await getSegmentRecord(vol.volumeId, written.segmentId);
    const loc = rec!.locations[0]!;
    await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    const rebuilt = await api.readRaw(vol.volumeId, 0, data.length);
    expect(rebuilt.status).toBe(200);
    expect(rebuilt.body.equals(data)).toBe(true);
    expect(Number(rebuilt.headers.get('x-sledge-rebuilt-granules'))).toBeGreaterThan(0);

    const after = await stats();
    expect(after.calls.portable.encode).toBeGreaterThan(before.calls.portable.encode);
    expect(after.calls.portable.reconstruct).toBeGreaterThan(before.calls.portable.reconstruct);
    expect(after.calls.native).toEqual({ encode: 0, reconstruct: 0 });
  });
});
