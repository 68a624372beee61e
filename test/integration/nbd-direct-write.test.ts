/**
 * Direct writes (docs/nbd-gateway.md, "Direct writes"): a gateway encodes its write-backs,
 * uploads the chunks with the head's write plan and has the head commit them by reference.
 * Real clients write through a real gateway and read back; the head refuses (with 4xx, changing
 * nothing) a commit whose chunk was tampered with, is missing or was stored without its CRC32C,
 * a commit that is wrong in itself, and a fenced writer's commit; a repeated commit applies
 * once; a head without the route makes the gateway write through the API.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { s3 } from '#shared/aws/clients.ts';
import { dataPiece } from '#shared/api/batch.ts';
import { crc32c } from '#shared/data/crc32c.ts';
import { createVolume } from '#shared/control/volumes.ts';
import { type EncodedBatch, encodeDirectBatch, putChunks, type WritePlan } from '#gateway/direct-write.ts';
import { VolumeApiError, VolumeClient } from '#gateway/volume-client.ts';
import { apiProxy, http, testApi, testTempDir } from './helpers.ts';
import { describeRun, run, startGateway, TOOLS_ENV } from './nbd-tools.ts';

const MiB = 1024 * 1024;
// Volumes this process creates itself (createVolume below) fold, with a tail of at most 4 commits.
process.env.SLEDGE_FOLD_TAIL_MAX = '4';

const dir = testTempDir('sledge-nbd-dwrite-');
const { api, apiUrl } = testApi({ sledgeEnv: true });

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The "direct writes:" counts of a gateway's exit line. */
function directCounts(output: string) {
  const m = /direct writes: (\d+) write plans, (\d+) written directly, (\d+) chunk PUTs, (\d+) commits, (\d+) fallbacks, (\d+) API batches/.exec(output);
  expect(m, output).not.toBeNull();
  const [, plans, written, puts, commits, fallbacks, batches] = m!.map(Number);
  return { plans, written, puts, commits, fallbacks, batches };
}

/** A client attached like a gateway, with the geometry direct writes need. */
async function client(volumeId: string, url = apiUrl) {
  const c = new VolumeClient(url, volumeId, { retryBudgetMs: 5_000, directWrites: true });
  await c.describe();
  return c;
}

/** A batch of `data` at `offset`, encoded, planned and uploaded: everything but the commit. */
async function uploaded(c: VolumeClient, offset: number, data: Buffer): Promise<{ plan: WritePlan; batch: EncodedBatch }> {
  const v = (await api.describe(c.volumeId)).json as { dataChunks: number; parityChunks: number; blockSizeBytes: number };
  const batch = await encodeDirectBatch([dataPiece(offset, data)], v.dataChunks, v.parityChunks, v.blockSizeBytes);
  const plan = await c.writePlan({ extents: batch.extents, chunkSizeBytes: batch.stripes.chunkSizeBytes, crcs: batch.stripes.crcs });
  await putChunks(plan, batch, 10_000);
  return { plan, batch };
}

async function headSeq(volumeId: string): Promise<number> {
  return ((await api.describe(volumeId)).json as { commitSeq: number }).commitSeq;
}

async function refusal(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(VolumeApiError);
    return (err as VolumeApiError).status;
  }
  throw new Error('the request was not refused');
}

describe('direct writes', () => {
  it('nbdcopy and qemu-io write through a gateway that uploads its own chunks; the bytes read back', async () => {
    const vol = await api.createVolume({ sizeBytes: 32 * MiB });
    const data = randomBytes(16 * MiB);
    const file = join(dir, 'in.img');
    writeFileSync(file, data);
    const gw = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'w.sock')], ['--direct-writes']);
    try {
      const copy = await run('nbdcopy', [file, gw.uri], { env: TOOLS_ENV });
      expect(copy.code, describeRun('nbdcopy', copy)).toBe(0);
      // qemu-io: a pattern over part of it, flushed, and read back through the same gateway.
      const q = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0xa5 ${12 * MiB} ${8 * MiB}`, '-c', 'flush', '-c', `read -P 0xa5 ${12 * MiB} ${8 * MiB}`, gw.uri], {
        env: TOOLS_ENV,
      });
      expect(q.code, describeRun('qemu-io', q)).toBe(0);
      expect(q.stdout).not.toMatch(/Pattern verification failed/);
    } finally {
      expect(await gw.stop(), gw.output()).toBe(0);
    }
    const counts = directCounts(gw.output());
    const batches = Number(/(\d+) batches written back/.exec(gw.output())?.[1]);
    console.log(`16 MiB + 8 MiB through a gateway: ${batches} batches written back, ${JSON.stringify(counts)}`);
    // Every batch went directly: one plan, 6 chunk PUTs and one commit each, no API batch.
    expect(batches).toBeGreaterThanOrEqual(5);
    expect(counts).toEqual({ plans: batches, written: batches, puts: 6 * batches, commits: batches, fallbacks: 0, batches: 0 });
    const expected = Buffer.concat([data.subarray(0, 12 * MiB), Buffer.alloc(8 * MiB, 0xa5)]);
    // Read back by the head (the API read rebuilds from the chunks and checks every granule)...
    const viaApi: Buffer[] = [];
    for (let o = 0; o < 20 * MiB; o += 4 * MiB) viaApi.push(await api.read(vol.volumeId, o, 4 * MiB));
    expect(sha(Buffer.concat(viaApi))).toBe(sha(expected));
    // ...and by a fresh gateway (direct reads of the directly written chunks), with nbdcopy.
    const reader = await startGateway(apiUrl, vol.volumeId, ['--socket', join(dir, 'r.sock')]);
    const out = join(dir, 'out.img');
    try {
      const copy = await run('nbdcopy', [reader.uri, out], { env: TOOLS_ENV });
      expect(copy.code, describeRun('nbdcopy', copy)).toBe(0);
    } finally {
      expect(await reader.stop(), reader.output()).toBe(0);
    }
    const back = readFileSync(out);
    expect(sha(back.subarray(0, 20 * MiB))).toBe(sha(expected));
    expect(back.subarray(20 * MiB).equals(Buffer.alloc(12 * MiB))).toBe(true);
  });

  it('a commit whose chunk was tampered with, is missing or lacks its CRC32C is refused with 409 and changes nothing', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    const c = await client(vol.volumeId);
    const data = randomBytes(4 * MiB);
    const { plan } = await uploaded(c, 0, data);
    const loc = plan.locations[2]!;
    const original = Buffer.from(await (await s3().send(new GetObjectCommand({ Bucket: loc.bucket, Key: loc.key }))).Body!.transformToByteArray());
    // Stored as S3 stores an upload with a CRC32C: the checksum of the bytes it received.
    const putHonest = async (body: Buffer) => {
      await s3().send(new PutObjectCommand({ Bucket: loc.bucket, Key: loc.key, Body: body, ChecksumAlgorithm: 'CRC32C' }));
      const head = await s3().send(new HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key, ChecksumMode: 'ENABLED' }));
      const x = Buffer.alloc(4);
      x.writeUInt32BE(crc32c(body) >>> 0);
      expect(head.ChecksumCRC32C).toBe(x.toString('base64'));
    };
    // Tampered: one bit flipped, stored with the CRC32C of what was stored (as S3 computes it).
    const bad = Buffer.from(original);
    bad[1000] = bad[1000]! ^ 0x01;
    await putHonest(bad);
    expect(await refusal(c.commit(plan))).toBe(409);
    // Stored without a CRC32C at all.
    await s3().send(new PutObjectCommand({ Bucket: loc.bucket, Key: loc.key, Body: original }));
    expect(await refusal(c.commit(plan))).toBe(409);
    // Missing.
    await s3().send(new DeleteObjectCommand({ Bucket: loc.bucket, Key: loc.key }));
    expect(await refusal(c.commit(plan))).toBe(409);
    // Nothing changed: no commit, the blocks read as zeros, and the other chunks are still there.
    expect(await headSeq(vol.volumeId)).toBe(0);
    expect((await api.read(vol.volumeId, 0, 4 * MiB)).equals(Buffer.alloc(4 * MiB))).toBe(true);
    // The genuine chunk back in place: the very same commit now applies, and the bytes read back.
    await putHonest(original);
    const done = await c.commit(plan);
    expect(done.commitSeq).toBe(1);
    expect((await api.read(vol.volumeId, 0, 4 * MiB)).equals(data)).toBe(true);
  });

  it('bad plans and commits get 400 and change nothing: wrong CRCs, foreign chunks, another volume, edited extents', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    const other = await api.createVolume({ sizeBytes: 16 * MiB });
    const c = await client(vol.volumeId);
    const data = randomBytes(MiB);
    const { plan, batch } = await uploaded(c, 0, data);
    const body = { extents: batch.extents, chunkSizeBytes: batch.stripes.chunkSizeBytes, crcs: batch.stripes.crcs };
    // Plans: a CRC list of the wrong shape, a wrong chunk size, an extent past the end, unknown fields, zeros only.
    expect(await refusal(c.writePlan({ ...body, crcs: body.crcs.slice(1) }))).toBe(400);
    expect(await refusal(c.writePlan({ ...body, chunkSizeBytes: body.chunkSizeBytes + 4096 }))).toBe(400);
    expect(await refusal(c.writePlan({ ...body, extents: [{ offset: 16 * MiB, length: MiB }] }))).toBe(400);
    expect(await refusal(c.writePlan({ ...body, extra: 1 } as never))).toBe(400);
    expect(await refusal(c.writePlan({ ...body, extents: [{ offset: 0, length: MiB, zero: true }] }))).toBe(400);
    // Commits: the chunks of another segment, a descriptor edited (its extents moved), another volume's descriptor.
    const d = plan.descriptor;
    const foreign = { ...plan, locations: plan.locations.map((l) => ({ ...l, key: l.key.replace(d.segmentId, '000000000001-00000000') })) };
    expect(await refusal(c.commit(foreign))).toBe(400);
    const moved = { ...plan, descriptor: { ...d, extents: [[256, 256, 0]] as Array<[number, number, number]> } };
    expect(await refusal(c.commit(moved))).toBe(409); // a valid descriptor, but not the uploaded objects: their CRC differs
    const elsewhere = await client(other.volumeId);
    expect(await refusal(elsewhere.commit(plan))).toBe(400);
    // Not JSON, not an object, the wrong type, empty fields.
    const json = { 'content-type': 'application/json' };
    const raw: Array<[string, string, Record<string, string>, number]> = [
      ['write-plan', '{"extents": [', json, 400],
      ['write-plan', '[1]', json, 400],
      ['write-plan', JSON.stringify(body), { 'content-type': 'text/plain' }, 415],
      ['write-plan', '{}', json, 400],
      ['commit', '', json, 400],
      ['commit', '{"descriptor": {}, "locations": []}', json, 400],
      ['commit', JSON.stringify({ descriptor: { ...d, crcs: [] }, locations: plan.locations }), json, 400],
      ['commit', JSON.stringify({ descriptor: { ...d, createdAt: 'yesterday' }, locations: plan.locations }), json, 400],
    ];
    for (const [route, text, headers, status] of raw) {
      const r = await http(`${apiUrl}/volumes/${vol.volumeId}/${route}`, { method: 'POST', body: text, headers });
      expect(r.status, `${route} ${text.slice(0, 60)}: ${r.body.toString()}`).toBe(status);
    }
    expect(await headSeq(vol.volumeId)).toBe(0);
    expect(await headSeq(other.volumeId)).toBe(0);
    // The genuine commit still applies.
    expect((await c.commit(plan)).commitSeq).toBe(1);
    expect((await api.read(vol.volumeId, 0, MiB)).equals(data)).toBe(true);
  });

  it('a commit sent again after a lost answer applies once; a plan built on it chains', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    const c = await client(vol.volumeId);
    const a = randomBytes(MiB);
    const b = randomBytes(MiB);
    const first = await uploaded(c, 0, a);
    // Planned on the first before it commits (a gateway's pipelined batches).
    const v = (await api.describe(vol.volumeId)).json as { dataChunks: number; parityChunks: number; blockSizeBytes: number };
    const batch = await encodeDirectBatch([dataPiece(MiB, b)], v.dataChunks, v.parityChunks, v.blockSizeBytes);
    const second = await c.writePlan({
      extents: batch.extents,
      chunkSizeBytes: batch.stripes.chunkSizeBytes,
      crcs: batch.stripes.crcs,
      after: { seq: first.plan.descriptor.seq, segmentId: first.plan.descriptor.segmentId },
    });
    expect(second.descriptor.seq).toBe(2);
    await putChunks(second, batch, 10_000);
    // Out of order: the second cannot commit before the first.
    expect(await refusal(c.commit(second))).toBe(409);
    const r1 = await c.commit(first.plan);
    const r1again = await c.commit(first.plan);
    expect(r1again).toEqual(r1);
    expect(await headSeq(vol.volumeId)).toBe(1);
    expect((await c.commit(second)).commitSeq).toBe(2);
    expect(await c.commit(first.plan)).toEqual(r1); // still the same answer after the head moved on
    expect(await headSeq(vol.volumeId)).toBe(2);
    expect((await api.read(vol.volumeId, 0, 2 * MiB)).equals(Buffer.concat([a, b]))).toBe(true);
  });

  it("a fenced writer's direct commit is refused and changes nothing", async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    const c = await client(vol.volumeId);
    await c.reserve({ action: 'register', key: 'gw-a' });
    await c.reserve({ action: 'reserve', key: 'gw-a', type: 'write-exclusive' });
    c.reservationKey = 'gw-a';
    const { plan } = await uploaded(c, 0, randomBytes(MiB));
    // Another gateway preempts: gw-a is fenced between its uploads and its commit.
    const other = await client(vol.volumeId);
    await other.reserve({ action: 'register', key: 'gw-b' });
    await other.reserve({ action: 'preempt', key: 'gw-b', victimKey: 'gw-a', type: 'write-exclusive' });
    expect(await refusal(c.commit(plan))).toBe(409);
    // Its plans are refused too, and the API fallback with them.
    expect(await refusal(c.writePlan({ extents: [{ offset: 0, length: MiB }], chunkSizeBytes: plan.descriptor.chunkSizeBytes, crcs: plan.descriptor.crcs }))).toBe(409);
    await expect(c.writeBatch([dataPiece(0, randomBytes(MiB))])).rejects.toThrow(/409/);
    expect(await headSeq(vol.volumeId)).toBe(0);
    // The new holder writes directly.
    other.reservationKey = 'gw-b';
    const data = randomBytes(MiB);
    await other.writeBatch([dataPiece(0, data)]);
    expect({ direct: other.direct.writes, batches: other.sent.batches }).toEqual({ direct: 1, batches: 0 });
    expect((await api.read(vol.volumeId, 0, MiB)).equals(data)).toBe(true);
  });

  it('a folding volume commits direct writes by tail, and folds its full tail first', async () => {
    const v = await createVolume({ sizeBytes: 32 * MiB });
    expect(v.foldedSeq).toBe(0);
    const c = await client(v.volumeId);
    const data = randomBytes(10 * MiB);
    // Ten 1 MiB batches, four in flight as the gateway sends them (chained plans): the tail of 4 fills twice.
    let next = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let i = next++; i < 10; i = next++) await c.writeBatch([dataPiece(i * MiB, data.subarray(i * MiB, (i + 1) * MiB))]);
      }),
    );
    expect({ direct: c.direct.writes, fallbacks: c.direct.writeFallbacks, batches: c.sent.batches }).toEqual({ direct: 10, fallbacks: 0, batches: 0 });
    const after = (await api.describe(v.volumeId)).json as { commitSeq: number; foldedSeq: number };
    expect(after.commitSeq).toBe(10);
    expect(after.foldedSeq).toBeGreaterThanOrEqual(6);
    const back: Buffer[] = [];
    for (let o = 0; o < 10 * MiB; o += 4 * MiB) back.push(await api.read(v.volumeId, o, Math.min(4 * MiB, 10 * MiB - o)));
    expect(Buffer.concat(back).equals(data)).toBe(true);
  });

  it('a head without the write-plan route: the gateway writes through the API from then on', async () => {
    const vol = await api.createVolume({ sizeBytes: 16 * MiB });
    // An older head, as seen over HTTP: every request passes through, but /write-plan is unknown.
    const proxy = await apiProxy(apiUrl, (req, res) => {
      if (!req.url?.includes('/write-plan')) return false;
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'NotFoundError', message: `no route for POST ${req.url}` }));
      return true;
    });
    try {
      const c = await client(vol.volumeId, proxy.url);
      const a = randomBytes(MiB);
      const b = randomBytes(MiB);
      await c.writeBatch([dataPiece(0, a)]);
      await c.writeBatch([dataPiece(MiB, b)]);
      expect({ plans: c.sent.writePlans, direct: c.direct.writes, fallbacks: c.direct.writeFallbacks, batches: c.sent.batches, on: c.directWrites }).toEqual({
        plans: 1,
        direct: 0,
        fallbacks: 1,
        batches: 2,
        on: false,
      });
      expect((await api.read(vol.volumeId, 0, 2 * MiB)).equals(Buffer.concat([a, b]))).toBe(true);
    } finally {
      await proxy.close();
    }
  });
});
