import { randomBytes } from 'node:crypto';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { s3 } from '#shared/aws/clients.ts';
import { FencedError } from '#shared/core/errors.ts';
import { getPages } from '#shared/aws/pagemap/pages.ts';
import { getVolume } from '#shared/aws/pagemap/volumes.ts';
import { completeWrite, prepareWrite } from '#shared/data/write.ts';
import { http, type HttpResult, testApi } from './helpers.ts';

const MiB = 1024 * 1024;
const { api, apiUrl: url } = testApi({ sledgeEnv: true });

const json = { 'content-type': 'application/json' };

function reserve(volumeId: string, body: Record<string, unknown> | string): Promise<HttpResult> {
  return http(`${url}/volumes/${volumeId}/reservations`, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), headers: json });
}

function writeAs(volumeId: string, key: string | undefined, offset: number, data: Buffer): Promise<HttpResult> {
  return http(`${url}/volumes/${volumeId}/data?offset=${offset}`, {
    method: 'PUT',
    body: data,
    headers: { 'content-type': 'application/octet-stream', ...(key ? { 'x-sledge-reservation-key': key } : {}) },
  });
}

function readAs(volumeId: string, key: string | undefined, offset: number, length: number): Promise<HttpResult> {
  return http(`${url}/volumes/${volumeId}/data?offset=${offset}&length=${length}`, { headers: key ? { 'x-sledge-reservation-key': key } : {} });
}

async function expectOk(r: Promise<HttpResult>): Promise<HttpResult> {
  const res = await r;
  expect(res.status, res.body.toString().slice(0, 300)).toBe(200);
  return res;
}

async function expectConflict(r: Promise<HttpResult>, message: RegExp, error = 'ConflictError'): Promise<void> {
  const res = await r;
  expect(res.status, res.body.toString().slice(0, 300)).toBe(409);
  expect(res.json.error).toBe(error);
  expect(res.json.message).toMatch(message);
}

describe('reservation commands over HTTP', () => {
  it('runs every command with SCSI-3 semantics and refuses each error case with 409', async () => {
    const { volumeId: id } = await api.createVolume({ sizeBytes: 4 * MiB });
    const block = randomBytes(4096);

    expect((await expectOk(reserve(id, { action: 'register', key: 'a' }))).json.generation).toBe(1);
    expect((await expectOk(reserve(id, { action: 'register', key: 'a' }))).json.generation).toBe(1); // no-op
    await expectOk(reserve(id, { action: 'register', key: 'b' }));
    await expectConflict(reserve(id, { action: 'reserve', key: 'c', type: 'write-exclusive' }), /key c is not registered/);
    await expectOk(reserve(id, { action: 'reserve', key: 'a', type: 'write-exclusive' }));
    await expectConflict(reserve(id, { action: 'reserve', key: 'b', type: 'exclusive-access' }), /reserved write-exclusive by key a; key b cannot reserve/);

    // Write-exclusive: only the holder writes; everyone reads.
    await expectConflict(writeAs(id, undefined, 0, block), /writes must present a reservation key/, 'FencedError');
    await expectConflict(writeAs(id, 'b', 0, block), /key b may not write/, 'FencedError');
    await expectConflict(writeAs(id, 'stranger', 0, block), /key stranger is not registered/, 'FencedError');
    await expectOk(writeAs(id, 'a', 0, block));
    expect((await expectOk(readAs(id, undefined, 0, 4096))).body.equals(block)).toBe(true);

    await expectConflict(reserve(id, { action: 'release', key: 'b' }), /does not hold it/);
    await expectConflict(reserve(id, { action: 'release', key: 'a', type: 'exclusive-access' }), /release named type exclusive-access/);
    await expectOk(reserve(id, { action: 'release', key: 'a', type: 'write-exclusive' }));

    // Exclusive access: only the holder reads.
    await expectOk(reserve(id, { action: 'reserve', key: 'a', type: 'exclusive-access' }));
    await expectConflict(readAs(id, undefined, 0, 4096), /reads must present a reservation key/, 'FencedError');
    await expectConflict(readAs(id, 'b', 0, 4096), /key b may not read/, 'FencedError');
    await expectOk(readAs(id, 'a', 0, 4096));

    // Preempt: the reservation moves to the preemptor and the victim is fenced.
    await expectConflict(reserve(id, { action: 'preempt', key: 'b', victimKey: 'nobody' }), /nobody is not registered/);
    await expectConflict(reserve(id, { action: 'preempt', key: 'nobody', victimKey: 'a' }), /key nobody is not registered/);
    const pre = await expectOk(reserve(id, { action: 'preempt', key: 'b', victimKey: 'a' }));
    expect(pre.json.reservation).toEqual({ holder: 'b', type: 'exclusive-access' });
    await expectConflict(writeAs(id, 'a', 0, block), /key a is not registered/, 'FencedError');
    await expectOk(writeAs(id, 'b', 4096, block));

    // Registrants-only: every registrant writes, strangers do not.
    await expectOk(reserve(id, { action: 'register', key: 'a' }));
    await expectOk(reserve(id, { action: 'release', key: 'b' }));
    await expectOk(reserve(id, { action: 'reserve', key: 'b', type: 'write-exclusive-registrants-only' }));
    await expectOk(writeAs(id, 'a', 8192, block));
    await expectConflict(writeAs(id, undefined, 8192, block), /present a reservation key/, 'FencedError');

    // preempt-and-abort fences the victim like preempt.
    await expectOk(reserve(id, { action: 'preempt-and-abort', key: 'b', victimKey: 'a' }));
    await expectConflict(writeAs(id, 'a', 8192, block), /not registered/, 'FencedError');

    await expectConflict(reserve(id, { action: 'unregister', key: 'a' }), /key a is not registered/);
    await expectConflict(reserve(id, { action: 'clear', key: 'a' }), /key a is not registered/);
    const before = (await http(`${url}/volumes/${id}/reservations`)).json.generation;
    const cleared = await expectOk(reserve(id, { action: 'clear', key: 'b' }));
    expect(cleared.json).toMatchObject({ generation: before + 1, registrants: [], reservation: null });
    await expectOk(writeAs(id, undefined, 12288, block)); // no reservation: anyone writes again

    // Bad input: 400, and the generation does not move.
    const gen = (await http(`${url}/volumes/${id}/reservations`)).json.generation;
    const bad: Array<[Record<string, unknown> | string, RegExp]> = [
      [{ key: 'a' }, /action must be one of/],
      [{ action: 'register', key: 'bad key' }, /key must be/],
      [{ action: 'reserve', key: 'a' }, /reserve needs a type/],
      [{ action: 'reserve', key: 'a', type: 'mine' }, /type must be one of/],
      [{ action: 'register', key: 'a', victimKey: 'b' }, /only for preempt/],
      [{ action: 'register', key: 'a', extra: true }, /unknown field/],
      ['{"action": "register"', /not valid JSON/],
    ];
    for (const [body, message] of bad) {
      const r = await reserve(id, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json.message).toMatch(message);
    }
    const badHeader = await http(`${url}/volumes/${id}/data?offset=0`, { method: 'PUT', body: block, headers: { 'content-type': 'application/octet-stream', 'x-sledge-reservation-key': 'no spaces' } });
    expect(badHeader.status).toBe(400);
    expect((await reserve('vol-missing', { action: 'register', key: 'a' })).status).toBe(404);
    expect((await http(`${url}/volumes/${id}/reservations`)).json.generation).toBe(gen);
  });
});

describe('fencing', () => {
  it('refuses the commit of a writer preempted between its upload and its commit', async () => {
    const { volumeId: id } = await api.createVolume({ sizeBytes: 4 * MiB });
    await expectOk(reserve(id, { action: 'register', key: 'old' }));
    await expectOk(reserve(id, { action: 'register', key: 'new' }));
    await expectOk(reserve(id, { action: 'reserve', key: 'old', type: 'write-exclusive' }));
    const stale = randomBytes(8192);
    const fresh = randomBytes(8192);
    await expectOk(writeAs(id, 'old', 0, randomBytes(8192)));

    // The old holder uploads its chunks, then stalls.
    const v = (await getVolume(id))!;
    const prepared = await prepareWrite(v, [{ offset: 0, length: 8192, data: stale }], { id: 'stalled-head', key: 'old' });
    // Meanwhile it is preempted and the new holder writes the same blocks.
    await expectOk(reserve(id, { action: 'preempt', key: 'new', victimKey: 'old' }));
    await expectOk(writeAs(id, 'new', 0, fresh));
    const pagesBefore = await getPages(v, [0]);

    // It resumes and commits: refused by DynamoDB's condition, nothing changes.
    await expect(completeWrite(prepared)).rejects.toThrow(FencedError);
    const pagesAfter = await getPages(v, [0]);
    expect(pagesAfter.get(0)).toEqual(pagesBefore.get(0));
    expect((await getVolume(id))!.headSeq).toBe(prepared.volume.headSeq + 1); // only the new holder's commit
    expect((await api.read(id, 0, 8192)).equals(fresh)).toBe(true);
    // Its orphan chunks were deleted (they were never visible).
    for (const loc of prepared.locations) {
      await expect(s3().send(new HeadObjectCommand({ Bucket: loc.bucket, Key: loc.key }))).rejects.toMatchObject({ $metadata: { httpStatusCode: 404 } });
    }
  });

  it('refuses a stalled commit even after the preempted key registers again', async () => {
    const { volumeId: id } = await api.createVolume({ sizeBytes: 4 * MiB });
    await expectOk(reserve(id, { action: 'register', key: 'h' }));
    await expectOk(reserve(id, { action: 'register', key: 'p' }));
    await expectOk(reserve(id, { action: 'reserve', key: 'h', type: 'write-exclusive-registrants-only' }));
    const prepared = await prepareWrite((await getVolume(id))!, [{ offset: 0, length: 4096, data: randomBytes(4096) }], { id: 'h-head', key: 'h' });
    await expectOk(reserve(id, { action: 'preempt', key: 'p', victimKey: 'h' }));
    await expectOk(reserve(id, { action: 'register', key: 'h' })); // same key, new registration generation
    await expect(completeWrite(prepared)).rejects.toThrow(FencedError);
    expect((await api.read(id, 0, 4096)).equals(Buffer.alloc(4096))).toBe(true);
  });
});

describe('primary and reserve heads', () => {
  it('fails over when the primary stops renewing: I/O continues and the old primary is fenced', async () => {
    const { volumeId: id } = await api.createVolume({ sizeBytes: 4 * MiB });
    const put = (path: string, body: unknown, method = 'POST') => http(`${url}/volumes/${id}/heads${path}`, { method, body: JSON.stringify(body), headers: json });
    expect((await put('', { primary: 'p', reserves: ['r1'] }, 'PUT')).status).toBe(400); // two reserves at least
    const designated = await put('', { primary: 'p', reserves: ['r1', 'r2'], leaseDurationMs: 400 }, 'PUT');
    expect(designated.status).toBe(200);
    expect(designated.json).toMatchObject({ primary: 'p', reserves: ['r1', 'r2'], leaseLapsed: false });

    const a = randomBytes(4096);
    await expectOk(writeAs(id, 'head:p', 0, a));
    expect((await put('/renew', { head: 'p' })).status).toBe(200);
    expect((await put('/renew', { head: 'r1' })).status).toBe(409); // only the primary renews
    await expectConflict(put('/promote', { head: 'r1' }), /lease of primary p .* runs until/);

    // The primary stops renewing; once the lease lapses a reserve takes over.
    await new Promise((r) => setTimeout(r, 600));
    expect((await http(`${url}/volumes/${id}/heads`)).json.leaseLapsed).toBe(true);
    const promoted = await put('/promote', { head: 'r1' });
    expect(promoted.status).toBe(200);
    expect(promoted.json).toMatchObject({ primary: 'r1', reserves: ['r2'], leaseLapsed: false });
    await expectConflict(put('/promote', { head: 'r2' }), /lease of primary r1/); // a second takeover is refused

    const b = randomBytes(4096);
    await expectOk(writeAs(id, 'head:r1', 4096, b));
    // The old primary wakes up: its writes and renewals are refused.
    await expectConflict(writeAs(id, 'head:p', 0, randomBytes(4096)), /head:p is not registered/, 'FencedError');
    await expectConflict(put('/renew', { head: 'p' }), /not the primary/, 'FencedError');
    expect((await api.read(id, 0, 4096)).equals(a)).toBe(true);
    expect((await api.read(id, 4096, 4096)).equals(b)).toBe(true);
    // It may come back as a reserve, with a new registration.
    expect((await put('/join', { head: 'p' })).json.reserves).toEqual(['r2', 'p']);
  });
});

describe('lease watchdog', () => {
  it('promotes the first registered reserve of a volume whose lease lapsed, once', async () => {
    const { handleWorkEvent } = await import('#shared/maintenance/worker.ts');
    const { volumeId: id } = await api.createVolume({ sizeBytes: 4 * MiB });
    const put = (body: unknown) => http(`${url}/volumes/${id}/heads`, { method: 'PUT', body: JSON.stringify(body), headers: json });
    expect((await put({ primary: 'p', reserves: ['r1', 'r2'], leaseDurationMs: 200 })).status).toBe(200);
    // r1 was fenced and not re-registered: the watchdog must skip it and pick r2.
    await expectOk(reserve(id, { action: 'unregister', key: 'head:r1' }));
    await new Promise((r) => setTimeout(r, 300));
    const record = (n: number) => ({ messageId: `m${n}`, receiptHandle: `h${n}`, body: JSON.stringify({ type: 'sweep-leases' }), attributes: { ApproximateReceiveCount: '1' } });
    // Delivered twice, as SQS may: the second sweep finds a live lease and changes nothing.
    const out = await handleWorkEvent({ Records: [record(1), record(2)] } as never);
    expect(out.batchItemFailures).toEqual([]);
    const view = (await http(`${url}/volumes/${id}/heads`)).json;
    // (Not leaseLapsed: the new 200 ms lease may lapse again before this read on a busy machine.)
    expect(view).toMatchObject({ primary: 'r2', reserves: ['r1'] });
    await expectConflict(writeAs(id, 'head:p', 0, randomBytes(4096)), /not registered/, 'FencedError');
    await expectOk(writeAs(id, 'head:r2', 0, randomBytes(4096)));
  });
});
