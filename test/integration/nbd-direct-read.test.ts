/**
 * Direct data reads (docs/nbd-gateway.md, "Direct data reads"): a cold read through a real
 * gateway fetches the data chunks itself with the head's read plan (no API data read), and a
 * plan whose chunk was then deleted or corrupted still yields the right bytes, through the
 * fallback API read. Holes cost no GET. The route refuses bad input and other tenants.
 */
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { s3 } from '#shared/aws/clients.ts';
import { getSegmentRecord } from '#shared/aws/pagemap/pages.ts';
import { DirectReadError, readPlanned } from '#gateway/direct-read.ts';
import { VolumeClient } from '#gateway/volume-client.ts';
import { Api, PROFILES, testApi, testTempDir } from './helpers.ts';
import { describeRun, nbdsh, startGateway } from './nbd-tools.ts';

const MiB = 1024 * 1024;

const dir = testTempDir('sledge-nbd-direct-');
const { api, apiUrl } = testApi({ sledgeEnv: true });

async function chunkOf(volumeId: string, segmentId: string, chunk: number) {
  const rec = await getSegmentRecord(volumeId, segmentId);
  expect(rec).not.toBeNull();
  return rec!.locations[chunk]!;
}

describe('direct data reads', () => {
  it('a cold read through the gateway fetches data chunks with the plan, and no API data read', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    const data = randomBytes(8 * MiB);
    await api.write(vol.volumeId, 0, data.subarray(0, 4 * MiB));
    await api.write(vol.volumeId, 4 * MiB, data.subarray(4 * MiB));
    // Read-ahead off: exactly the two 4 MiB windows the client asks for are read.
    const gw = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'gw.sock')], ['--read-cache-mib', '0']);
    let digest: string;
    try {
      const r = await nbdsh(gw.uri, `import hashlib\nprint(hashlib.sha256(h.pread(${4 * MiB}, 0) + h.pread(${4 * MiB}, ${4 * MiB})).hexdigest())`);
      expect(r.code, describeRun('nbdsh', r)).toBe(0);
      digest = r.stdout.trim();
    } finally {
      expect(await gw.stop(), gw.output()).toBe(0);
    }
    expect(digest).toBe(createHash('sha256').update(data).digest('hex'));
    const m = /direct reads: (\d+) read plans, (\d+) read directly, (\d+) chunk GETs, (\d+) fallbacks, (\d+) API data reads/.exec(gw.output());
    expect(m, gw.output()).not.toBeNull();
    const [, plans, direct, gets, fallbacks, apiReads] = m!.map(Number);
    console.log(`8 MiB cold: ${plans} plans, ${direct} direct, ${gets} chunk GETs, ${fallbacks} fallbacks, ${apiReads} API data reads`);
    // Two 4 MiB segments of 4 data chunks: one GET per data chunk, none of parity, no API read.
    expect({ plans, direct, gets, fallbacks, apiReads }).toEqual({ plans: 2, direct: 2, gets: 8, fallbacks: 0, apiReads: 0 });
  });

  it('a plan whose chunk was then deleted or corrupted still yields the right bytes, through the API read', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    const data = randomBytes(4 * MiB);
    const w = await api.write(vol.volumeId, 0, data);
    const client = new VolumeClient(apiUrl, vol.volumeId, { retryBudgetMs: 10_000 });

    // Deleted after the plan (as GC or an evacuation would): the planned GET fails, the read does not.
    const plan = await client.readPlan(0, 4 * MiB);
    expect(plan.gets.length).toBe(4);
    const loc = await chunkOf(vol.volumeId, w.segmentId, 2);
    const original = Buffer.from(await (await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }))).Body!.transformToByteArray());
    await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    await expect(readPlanned(plan, 10_000)).rejects.toThrow(DirectReadError);
    expect((await client.read(0, 4 * MiB)).equals(data)).toBe(true);
    expect({ fallbacks: client.direct.fallbacks, reads: client.sent.reads }).toEqual({ fallbacks: 1, reads: 1 });

    // Corrupted in place (same length): a granule fails its checksum, the API read rebuilds it.
    const bad = Buffer.from(original);
    bad[MiB - 1] = bad[MiB - 1]! ^ 0x01;
    await s3().send(new PutObjectCommand({ Bucket: loc.bucket, Key: loc.key, Body: bad }));
    await expect(readPlanned(await client.readPlan(0, 4 * MiB), 10_000)).rejects.toThrow(/checksum/);
    expect((await client.read(0, 4 * MiB)).equals(data)).toBe(true);
    expect({ fallbacks: client.direct.fallbacks, reads: client.sent.reads }).toEqual({ fallbacks: 2, reads: 2 });

    // Restored: a fresh plan reads directly again.
    await s3().send(new PutObjectCommand({ Bucket: loc.bucket, Key: loc.key, Body: original }));
    const fresh = await client.readPlan(0, 4 * MiB);
    expect((await readPlanned(fresh, 10_000)).equals(data)).toBe(true);
  });

  it('reads asked in one step share one plan of up to 16 MiB; a failed GET sends each of them through the API', async () => {
    const vol = await api.createVolume({ sizeBytes: 32 * MiB });
    const data = randomBytes(20 * MiB);
    const segments: string[] = [];
    for (let i = 0; i < 5; i++) segments.push((await api.write(vol.volumeId, i * 4 * MiB, data.subarray(i * 4 * MiB, (i + 1) * 4 * MiB))).segmentId);
    const client = new VolumeClient(apiUrl, vol.volumeId, { retryBudgetMs: 10_000 });
    // Five 4 MiB reads at once: the first four in one 16 MiB plan, the fifth in another.
    const got = await Promise.all([0, 1, 2, 3, 4].map((i) => client.read(i * 4 * MiB, 4 * MiB)));
    expect(Buffer.concat(got).equals(data)).toBe(true);
    expect({ plans: client.sent.plans, direct: client.direct.reads, gets: client.direct.gets, reads: client.sent.reads }).toEqual({ plans: 2, direct: 2, gets: 20, reads: 0 });
    // A chunk of the second segment gone: the shared plan's GET fails, and each of its four reads
    // is read through the API (which rebuilds the chunk from parity).
    const loc = await chunkOf(vol.volumeId, segments[1]!, 1);
    await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    const again = await Promise.all([0, 1, 2, 3].map((i) => client.read(i * 4 * MiB, 4 * MiB)));
    expect(Buffer.concat(again).equals(data.subarray(0, 16 * MiB))).toBe(true);
    expect({ plans: client.sent.plans, fallbacks: client.direct.fallbacks, reads: client.sent.reads }).toEqual({ plans: 3, fallbacks: 1, reads: 4 });
  });

  it('holes and trims cost no GET; a read across data and a hole gets both right', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    const data = randomBytes(MiB);
    await api.write(vol.volumeId, MiB, data);
    await api.trim(vol.volumeId, MiB + 256 * 1024, 256 * 1024);
    const client = new VolumeClient(apiUrl, vol.volumeId, { retryBudgetMs: 10_000 });
    expect((await client.readPlan(8 * MiB, 4 * MiB)).gets).toEqual([]);
    const expected = Buffer.alloc(4 * MiB);
    data.copy(expected, MiB);
    expected.fill(0, MiB + 256 * 1024, MiB + 512 * 1024);
    const plan = await client.readPlan(0, 4 * MiB);
    // 1 MiB in one segment of 4 data chunks of 256 KiB; the trimmed quarter is not fetched.
    expect(plan.gets.length).toBe(3);
    expect((await client.read(0, 4 * MiB)).equals(expected)).toBe(true);
    expect({ direct: client.direct.reads, fallbacks: client.direct.fallbacks, reads: client.sent.reads }).toEqual({ direct: 1, fallbacks: 0, reads: 0 });
  });

  it('the plan route refuses bad input, and another tenant gets 404', async () => {
    const vol = await api.createVolume({ sizeBytes: 64 * MiB });
    const plan = (q: string, as = api) => as.http(`${apiUrl}/volumes/${vol.volumeId}/read-plan?${q}`);
    expect((await plan('offset=1&length=4096')).status).toBe(400);
    // A plan covers up to 16 MiB (a read-ahead window), four times what one read may ask.
    expect((await plan(`offset=0&length=${16 * MiB}`)).status).toBe(200);
    expect((await plan(`offset=0&length=${16 * MiB + 4096}`)).status).toBe(400);
    expect((await plan(`offset=${64 * MiB}&length=4096`)).status).toBe(400);
    expect((await plan('offset=0')).status).toBe(400);
    expect((await api.http(`${apiUrl}/volumes/vol-00000000000000000/read-plan?offset=0&length=4096`)).status).toBe(404);
    expect((await plan('offset=0&length=4096', new Api(apiUrl, { as: PROFILES.tenantA }))).status).toBe(404);
    expect((await plan('offset=0&length=4096')).status).toBe(200);
  });
});
