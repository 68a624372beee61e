import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { encodeBatch } from '#shared/api/batch.ts';
import { http, testApi } from './helpers.ts';

const MiB = 1024 * 1024;
const { api, apiUrl: url } = testApi({ sledgeEnv: true });

const json = { 'content-type': 'application/json' };
const bin = { 'content-type': 'application/octet-stream' };

async function countVolumes(): Promise<number> {
  let n = 0;
  let next: string | undefined;
  do {
    const r = await http(`${url}/volumes?limit=1000${next ? `&next=${next}` : ''}`);
    n += r.json.volumes.length;
    next = r.json.next;
  } while (next);
  return n;
}

describe('bad input gets a clear 4xx and changes nothing', () => {
  it('refuses bad volume creations', async () => {
    const before = await countVolumes();
    const cases: Array<[string | Buffer, Record<string, string>, number, RegExp]> = [
      ['{"sizeBytes": 1048576', json, 400, /not valid JSON/],
      ['[1,2]', json, 400, /JSON object/],
      ['', json, 400, /empty/],
      ['{"sizeBytes": 1048576}', { 'content-type': 'text/plain' }, 415, /application\/json/],
      ['{}', json, 400, /sizeBytes is required/],
      ['{"sizeBytes": -4096}', json, 400, /sizeBytes must be between/],
      ['{"sizeBytes": 4097}', json, 400, /4097 is not a multiple of the block size 4096/],
      ['{"sizeBytes": "1GiB"}', json, 400, /must be an integer/],
      ['{"sizeBytes": 1048576, "blockSizeBytes": 3000}', json, 400, /power of two/],
      ['{"sizeBytes": 1048576, "dataChunks": 8, "parityChunks": 3}', json, 400, /needs that many sleds; this deployment has 8/],
      ['{"sizeBytes": 1048576, "parityChunks": 0}', json, 400, /parityChunks must be from 1 to 4/],
      ['{"sizeBytes": 1048576, "colour": "red"}', json, 400, /unknown field "colour"/],
      ['{"sizeBytes": 1048576, "foldTailMax": 1025}', json, 400, /foldTailMax must be from 0 \(do not fold\) to 1024, got 1025/],
      ['{"sizeBytes": 1048576, "foldTailMax": -1}', json, 400, /foldTailMax must be from 0/],
      ['{"sizeBytes": 1048576, "foldTailMax": "256"}', json, 400, /foldTailMax must be an integer/],
      [JSON.stringify({ sizeBytes: 1048576, name: 'x'.repeat(100_000) }), json, 413, /over the limit/],
    ];
    for (const [body, headers, status, message] of cases) {
      const r = await http(`${url}/volumes`, { method: 'POST', body, headers });
      expect(r.status, `${String(body).slice(0, 60)} -> ${r.body.toString().slice(0, 200)}`).toBe(status);
      expect(r.json.message).toMatch(message);
      expect(r.json.retryable).toBe(false);
    }
    expect(await countVolumes()).toBe(before);
  });

  it('refuses a malformed percent-escape in a path with 400, not 500', async () => {
    for (const path of ['/volumes/%zz', '/volumes/%zz/data?offset=0&length=4096', '/snapshots/%E0%A4%A']) {
      const r = await http(`${url}${path}`);
      expect(r.status, `${path} -> ${r.body.toString()}`).toBeLessThan(500);
      expect(r.status).toBeGreaterThanOrEqual(400);
    }
    const r = await http(`${url}/volumes/%zz`);
    expect(r.status).toBe(400);
    expect(r.json.message).toMatch(/malformed percent-escape/);
  });

  it('refuses bad reads, writes, batches and trims without changing the volume', async () => {
    const vol = await api.createVolume({ sizeBytes: 8 * MiB });
    const id = vol.volumeId;
    const data = randomBytes(MiB);
    await api.write(id, 0, data);
    const seqBefore = (await api.describe(id)).json.commitSeq;

    const cases: Array<[string, string, Buffer | string | undefined, Record<string, string>, number, RegExp]> = [
      ['PUT', `/volumes/${id}/data?offset=4097`, randomBytes(4096), bin, 400, /offset 4097 is not a multiple of the block size 4096/],
      ['PUT', `/volumes/${id}/data?offset=0`, randomBytes(4000), bin, 400, /length 4000 is not a multiple of the block size 4096/],
      ['PUT', `/volumes/${id}/data?offset=${8 * MiB - 4096}`, randomBytes(8192), bin, 400, /beyond the end of volume/],
      ['PUT', `/volumes/${id}/data?offset=-4096`, randomBytes(4096), bin, 400, /non-negative integer/],
      ['PUT', `/volumes/${id}/data`, randomBytes(4096), bin, 400, /offset is required/],
      ['PUT', `/volumes/${id}/data?offset=0`, Buffer.alloc(0), bin, 400, /body is empty/],
      ['PUT', `/volumes/${id}/data?offset=0`, randomBytes(4 * MiB + 4096), bin, 413, /at most 4194304 bytes/],
      ['PUT', `/volumes/${id}/data?offset=0`, randomBytes(4096), json, 415, /application\/octet-stream/],
      ['PUT', `/volumes/vol-doesnotexist/data?offset=0`, randomBytes(4096), bin, 404, /volume vol-doesnotexist does not exist/],
      ['GET', `/volumes/${id}/data?offset=0&length=${4 * MiB + 4096}`, undefined, {}, 400, /over the limit of 4194304 bytes/],
      ['GET', `/volumes/${id}/data?offset=0&length=0`, undefined, {}, 400, /positive integer/],
      ['GET', `/volumes/${id}/data?offset=12&length=4096`, undefined, {}, 400, /not a multiple of the block size/],
      ['GET', `/volumes/${id}/data?offset=${8 * MiB}&length=4096`, undefined, {}, 400, /beyond the end/],
      ['GET', `/volumes/${id}/data?offset=abc&length=4096`, undefined, {}, 400, /must be a non-negative integer/],
      ['GET', `/volumes/vol-nope/data?offset=0&length=4096`, undefined, {}, 404, /does not exist/],
      ['POST', `/volumes/${id}/trim`, '{"offset": 0}', json, 400, /numeric offset and length/],
      ['POST', `/volumes/${id}/trim`, '{"offset": 0, "length": 4096', json, 400, /not valid JSON/],
      ['POST', `/volumes/${id}/trim`, '{"offset": 4096, "length": 100}', json, 400, /not a multiple of the block size/],
      ['POST', `/volumes/${id}/trim`, JSON.stringify({ offset: 0, length: 16 * MiB }), json, 400, /beyond the end/],
      ['POST', `/volumes/${id}/batch`, Buffer.from('nonsense'), { 'content-type': 'application/vnd.sledge.batch' }, 400, /must start with/],
      [
        'POST',
        `/volumes/${id}/batch`,
        encodeBatch([
          { offset: 0, data: randomBytes(8192) },
          { offset: 4096, data: randomBytes(4096) },
        ]),
        { 'content-type': 'application/vnd.sledge.batch' },
        400,
        /overlap/,
      ],
      [
        'POST',
        `/volumes/${id}/batch`,
        Buffer.concat([encodeBatch([{ offset: 0, data: randomBytes(4096) }]), Buffer.alloc(10)]),
        { 'content-type': 'application/vnd.sledge.batch' },
        400,
        /bytes after the last extent/,
      ],
      [
        'POST',
        `/volumes/${id}/batch`,
        encodeBatch([
          { offset: 0, data: randomBytes(4096) },
          { offset: 20 * MiB, data: randomBytes(4096) },
        ]),
        { 'content-type': 'application/vnd.sledge.batch' },
        400,
        /beyond the end/,
      ],
      ['PATCH', `/volumes/${id}`, '{"sizeBytes": 4194304}', json, 409, /can grow but not shrink/],
      ['PATCH', `/volumes/${id}`, '{"sizeBytes": 8388609}', json, 400, /not a multiple of the block size/],
      ['PATCH', `/volumes/${id}`, '{"blockSizeBytes": 512}', json, 400, /only sizeBytes can be changed/],
      ['GET', `/volumes/vol-missing`, undefined, {}, 404, /does not exist/],
      ['DELETE', `/volumes/vol-missing`, undefined, {}, 404, /does not exist/],
      ['POST', `/volumes/${id}`, undefined, {}, 405, /not supported/],
      ['GET', `/nothing-here`, undefined, {}, 404, /no route/],
    ];
    for (const [method, path, body, headers, status, message] of cases) {
      const r = await http(`${url}${path}`, { method, body, headers });
      expect(r.status, `${method} ${path} -> ${r.body.toString().slice(0, 200)}`).toBe(status);
      expect(r.json.message, `${method} ${path}`).toMatch(message);
    }
    const after = await api.describe(id);
    expect(after.json.commitSeq).toBe(seqBefore);
    expect(after.json.sizeBytes).toBe(8 * MiB);
    expect((await api.read(id, 0, MiB)).equals(data)).toBe(true);
    expect((await api.read(id, MiB, MiB)).equals(Buffer.alloc(MiB))).toBe(true);
  });
  it('refuses bad read-lease requests; a registered reader gets its lease', async () => {
    const id = (await api.createVolume({ sizeBytes: 8 * MiB })).volumeId;
    const lease = `/volumes/${id}/read-lease`;
    const cases: Array<[string, string, number, RegExp]> = [
      [lease, '{"action": "renew", "key": "r1"', 400, /not valid JSON/],
      [lease, '{"action": "grab", "key": "r1"}', 400, /action must be/],
      [lease, '{"action": "renew", "key": "bad key!"}', 400, /key/],
      [lease, '{"action": "renew", "key": "r1", "leaseMs": 500}', 400, /leaseMs must be from/],
      [lease, '{"action": "renew", "key": "r1", "ackEpoch": "1"}', 400, /ackEpoch/],
      [lease, '{"action": "renew", "key": "r1", "extra": true}', 400, /unknown field/],
      [lease, '{"action": "renew", "key": "r1"}', 409, /not registered/],
      ['/volumes/vol-0000000000000000/read-lease', '{"action": "renew", "key": "r1"}', 404, /does not exist/],
    ];
    for (const [path, body, status, message] of cases) {
      const r = await http(`${url}${path}`, { method: 'POST', body, headers: json });
      expect(r.status, `${path} ${body} -> ${r.body.toString().slice(0, 200)}`).toBe(status);
      expect(r.json.message, `${path} ${body}`).toMatch(message);
    }
    expect((await api.describe(id)).json.commitSeq).toBe(0);
    expect((await http(`${url}/volumes/${id}/reservations`, { method: 'POST', body: '{"action": "register", "key": "r1"}', headers: json })).status).toBe(200);
    const ok = await http(`${url}${lease}`, { method: 'POST', body: '{"action": "renew", "key": "r1"}', headers: json });
    expect(ok.status, ok.body.toString()).toBe(200);
    // The first lease creates the write intent open, already acknowledged by this empty reader.
    expect(ok.json).toMatchObject({ key: 'r1', leaseMs: 6000, ackedEpoch: 1, intent: { epoch: 1, open: true }, headSeq: 0 });
    expect((await http(`${url}${lease}`, { method: 'POST', body: '{"action": "release", "key": "r1"}', headers: json })).json).toMatchObject({ released: true });
  });
});
