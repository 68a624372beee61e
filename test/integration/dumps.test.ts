import { randomBytes } from 'node:crypto';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, describe, expect, it } from 'vitest';
import { s3 } from '#shared/aws/clients.ts';
import { listDrives } from '#shared/maintenance/drives.ts';
import { updateDrive } from '#shared/aws/drive-registry.ts';
import { failHead } from '#shared/control/heads.ts';
import { getVolume } from '#shared/aws/pagemap/volumes.ts';
import { prepareWrite } from '#shared/data/write.ts';
import { http, testApi } from './helpers.ts';

const GiB = 1024 ** 3;
const json = { 'content-type': 'application/json' };

const { apiUrl: url } = testApi({ sledgeEnv: true });

/** Puts every drive back in a neutral state so other tests see the defaults. */
async function resetDrives(): Promise<void> {
  for (const d of await listDrives()) await updateDrive(d.driveId, { state: 'active', capacityBytes: 1024 * GiB, usedBytes: 0, serviceLoad: 0, dumpPrepared: false });
}

afterAll(resetDrives);

describe('diagnostic dumps', () => {
  it('writes a forced failure dump to the drive the criteria choose, while a reserve takes over', async () => {
    const drives = await listDrives();
    expect(drives.length).toBe(32); // 8 sleds x 4 drives
    // Make the drives differ: all busy, except three candidates that differ in preparation and fit.
    for (const d of drives) await updateDrive(d.driveId, { state: 'active', serviceLoad: 100, capacityBytes: 1024 * GiB, usedBytes: 0, dumpPrepared: false });
    const [tooSmall, unprepared, prepared, preparedSnug] = drives;
    await updateDrive(tooSmall!.driveId, { state: 'spare', serviceLoad: 0, capacityBytes: 100 }); // cannot fit a dump
    await updateDrive(unprepared!.driveId, { state: 'spare', serviceLoad: 0 }); // needs preparation
    await updateDrive(prepared!.driveId, { state: 'spare', serviceLoad: 0, dumpPrepared: true });
    await updateDrive(preparedSnug!.driveId, { state: 'spare', serviceLoad: 0, dumpPrepared: true, usedBytes: 1024 * GiB - 1024 * 1024 }); // fits, least spare room

    const created = await http(`${url}/volumes`, { method: 'POST', body: JSON.stringify({ sizeBytes: 4 * 1024 * 1024 }), headers: json });
    const id: string = created.json.volumeId;
    const heads = (path: string, body: unknown, method = 'POST') => http(`${url}/volumes/${id}/heads${path}`, { method, body: JSON.stringify(body), headers: json });
    expect((await heads('', { primary: 'p', reserves: ['r1', 'r2'], leaseDurationMs: 60_000 }, 'PUT')).status).toBe(200);
    // The primary has a write in flight (uploaded, not committed) when it fails.
    const prepared1 = await prepareWrite((await getVolume(id))!, [{ offset: 0, length: 4096, data: randomBytes(4096) }], { id: 'p', key: 'head:p' });

    // The head fails; its dump is held open until the takeover is over.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const dump = await failHead(id, 'p', new Error('invariant broken: test failure'), { gate });
    expect(dump.driveId).toBe(preparedSnug!.driveId);
    const during = (await http(`${url}/dumps`)).json.dumps.find((d: { dumpId: string }) => d.dumpId === dump.dumpId);
    expect(during).toMatchObject({ state: 'in-progress', volumeId: id, head: 'p', driveId: preparedSnug!.driveId });

    // Takeover completes without waiting for the dump, and I/O continues.
    const promoted = await heads('/promote', { head: 'r1', force: true });
    expect(promoted.status).toBe(200);
    expect(promoted.json.primary).toBe('r1');
    const w = await http(`${url}/volumes/${id}/data?offset=0`, { method: 'PUT', body: randomBytes(4096), headers: { 'content-type': 'application/octet-stream', 'x-sledge-reservation-key': 'head:r1' } });
    expect(w.status).toBe(200);
    expect((await http(`${url}/dumps`)).json.dumps.find((d: { dumpId: string }) => d.dumpId === dump.dumpId).state).toBe('in-progress');

    release();
    await dump.done;
    const after = (await http(`${url}/dumps`)).json.dumps.find((d: { dumpId: string }) => d.dumpId === dump.dumpId);
    expect(after.state).toBe('complete');
    expect(Date.parse(after.completedAt)).toBeGreaterThanOrEqual(Date.parse(after.startedAt));
    const bucket = preparedSnug!.sled;
    await s3().send(new HeadObjectCommand({ Bucket: bucket, Key: after.key }));
    // A later head reads it back through the registry's attributes.
    const content = (await http(`${url}/dumps/${dump.dumpId}`)).json;
    expect(content).toMatchObject({ volumeId: id, head: 'p', error: { message: 'invariant broken: test failure' } });
    expect(prepared1.record.segmentId).toBeTruthy();
  });

  it('prepares an unprepared drive when it is the best one, and the API forces a failure dump', async () => {
    const drives = await listDrives();
    for (const d of drives) await updateDrive(d.driveId, { state: 'active', serviceLoad: 100, dumpPrepared: false, usedBytes: 0, capacityBytes: 1024 * GiB });
    const target = drives[5]!;
    await updateDrive(target.driveId, { serviceLoad: 1 }); // least needed by service, though unprepared
    const created = await http(`${url}/volumes`, { method: 'POST', body: JSON.stringify({ sizeBytes: 4 * 1024 * 1024 }), headers: json });
    const id: string = created.json.volumeId;
    const r = await http(`${url}/volumes/${id}/heads/fail`, { method: 'POST', body: JSON.stringify({ head: 'h1', reason: 'chaos' }), headers: json });
    expect(r.status, r.body.toString()).toBe(200);
    expect(r.json).toMatchObject({ driveId: target.driveId, state: 'complete' });
    await s3().send(new HeadObjectCommand({ Bucket: target.sled, Key: `${target.drive}/dumps/.prepared` }));
    expect((await listDrives()).find((d) => d.driveId === target.driveId)?.dumpPrepared).toBe(true);
    expect((await http(`${url}/dumps/${r.json.dumpId}`)).json.error.message).toBe('chaos');
  });
});
