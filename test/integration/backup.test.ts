import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { PROFILES, http, testApi } from './helpers.ts';
import { MiB, backup, firstDifference, json, readAll, restore, snapshot, waitState } from './backup-helpers.ts';
import { describeRun, run, SLEDGE_BIN, TOOLS_ENV } from './nbd-tools.ts';
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import { sqs } from '#shared/aws/clients.ts';
import { queueUrl } from '#shared/aws/work-queue.ts';
import { workQueue } from '#shared/ports.ts';
import { getBackup, getRestore, listPacks } from '#shared/backup/catalog.ts';

/**
 * Backups to the vault and restores (docs/backup.md) through the API, against the local
 * endpoint and the vault's own endpoint process: full and incremental backups ship only the
 * changed blocks, restores equal the snapshot byte for byte, a clone's backup keeps its
 * relation, deleting a backup merges it forward, verify, and bad input.
 */
const BLOCK = 4096;
const SIZE = 24 * MiB;

const { api, apiUrl: url } = testApi({ sledgeEnv: true });

async function expectRestoresAs(backupId: string, snapshotId: string, sizeBytes: number): Promise<any> {
  const done = await restore(url, backupId);
  const [restored, expected] = await Promise.all([readAll(url, 'volumes', done.volumeId, sizeBytes), readAll(url, 'snapshots', snapshotId, sizeBytes)]);
  expect(firstDifference(restored, expected)).toBeNull();
  return done;
}

describe('backups and restores', () => {
  it('ships a full backup, then only the changed blocks, and restores each exactly', async () => {
    const v = await api.createVolume({ sizeBytes: SIZE });
    // 2 MiB of data, one zero block written (never shipped), 8 blocks far apart.
    await api.write(v.volumeId, 0, randomBytes(2 * MiB));
    await api.write(v.volumeId, 4 * MiB, Buffer.alloc(BLOCK));
    for (let i = 0; i < 8; i++) await api.write(v.volumeId, 8 * MiB + i * 97 * BLOCK, randomBytes(BLOCK));
    const s1 = await snapshot(url, v.volumeId);
    const b1 = await backup(url, v.volumeId, s1.snapshotId);
    expect(b1.base).toBeUndefined();
    expect(b1.bytesToShip).toBe(2 * MiB + BLOCK + 8 * BLOCK);
    expect(b1.blocksChanged).toBe(b1.bytesToShip / BLOCK);

    await api.write(v.volumeId, 64 * BLOCK, randomBytes(3 * BLOCK));
    await api.trim(v.volumeId, 128 * BLOCK, 2 * BLOCK);
    await api.write(v.volumeId, 20 * MiB, randomBytes(BLOCK));
    const s2 = await snapshot(url, v.volumeId);
    const b2 = await backup(url, v.volumeId, s2.snapshotId);
    expect(b2.base).toBe(b1.backupId);
    expect(b2.bytesToShip).toBe(6 * BLOCK);

    const listed = await http(`${url}/backups?volumeId=${v.volumeId}`);
    expect(listed.status).toBe(200);
    expect(listed.json.backups.map((b: any) => b.backupId)).toEqual([b1.backupId, b2.backupId]);

    const r1 = await expectRestoresAs(b1.backupId, s1.snapshotId, SIZE);
    const r2 = await expectRestoresAs(b2.backupId, s2.snapshotId, SIZE);
    // Both restores are listed, oldest first, as each is described; filters and tenants narrow the list.
    const restores = await http(`${url}/restores`);
    expect(restores.status).toBe(200);
    const ids = restores.json.restores.map((r: any) => r.restoreId);
    expect(ids.indexOf(r1.restoreId)).toBeGreaterThanOrEqual(0);
    expect(ids.indexOf(r2.restoreId)).toBeGreaterThan(ids.indexOf(r1.restoreId));
    expect(restores.json.restores.find((r: any) => r.restoreId === r2.restoreId)).toEqual((await http(`${url}/restores/${r2.restoreId}`)).json);
    expect((await http(`${url}/restores?backupId=${b1.backupId}`)).json.restores.map((r: any) => r.restoreId)).toEqual([r1.restoreId]);
    expect((await http(`${url}/restores?volumeId=${r2.volumeId}`)).json.restores.map((r: any) => r.restoreId)).toEqual([r2.restoreId]);
    const others = await http(`${url}/restores`, { as: PROFILES.tenantB });
    expect(others.status).toBe(200);
    expect(others.json.restores.map((r: any) => r.restoreId)).not.toContain(r1.restoreId);
    const verified = await http(`${url}/backups/${b2.backupId}/verify`, { method: 'POST' });
    expect(verified.status).toBe(200);
    expect(verified.json).toMatchObject({ ok: true, badBlocks: [] });
    expect(verified.json.bytes).toBe(2 * MiB + 8 * BLOCK + 4 * BLOCK);

    // Deleting the full backup merges it forward: the incremental still restores exactly.
    const del = await http(`${url}/backups/${b1.backupId}`, { method: 'DELETE' });
    expect(del.status, del.body.toString()).toBe(202);
    for (let i = 0; i < 200 && (await http(`${url}/backups/${b1.backupId}`)).status !== 404; i++) await new Promise((r) => setTimeout(r, 100));
    expect((await http(`${url}/backups/${b1.backupId}`)).status).toBe(404);
    const after = (await http(`${url}/backups/${b2.backupId}`)).json;
    expect(after.base).toBeUndefined();
    await expectRestoresAs(b2.backupId, s2.snapshotId, SIZE);
  });

  it("backs up a clone as its own blocks on its parent's backup, and restores it as a clone", async () => {
    const parent = await api.createVolume({ sizeBytes: SIZE });
    await api.write(parent.volumeId, 0, randomBytes(4 * MiB));
    const ps = await snapshot(url, parent.volumeId);
    const pb = await backup(url, parent.volumeId, ps.snapshotId);
    const clone = await api.createVolume({ sourceSnapshotId: ps.snapshotId });
    await api.write(clone.volumeId, MiB, randomBytes(4 * BLOCK));
    await api.write(clone.volumeId, 10 * MiB, randomBytes(BLOCK));
    const cs = await snapshot(url, clone.volumeId);
    const cb = await backup(url, clone.volumeId, cs.snapshotId);
    expect(cb.base).toBe(pb.backupId);
    expect(cb.parent).toBe(pb.backupId);
    expect(cb.bytesToShip).toBe(5 * BLOCK);

    const restored = await expectRestoresAs(cb.backupId, cs.snapshotId, SIZE);
    // A clone at this site too: of the parent's restore's snapshot.
    const described = (await api.describe(restored.volumeId)).json;
    const parentRestore = (await http(`${url}/restores/${restored.parentRestoreId}`)).json;
    expect(parentRestore.state).toBe('complete');
    expect(described.parent?.snapshotId).toBe(parentRestore.snapshotId);
  });

  it('refuses bad input with a clear 4xx', async () => {
    const v = await api.createVolume({ sizeBytes: 4 * MiB });
    await api.write(v.volumeId, 0, randomBytes(BLOCK));
    const s = await snapshot(url, v.volumeId);
    const missingSnap = `snap-${v.volumeId.slice(4)}-000000000999-abcdef`;
    expect((await http(`${url}/volumes/${v.volumeId}/backups`, { method: 'POST', ...json({ snapshotId: missingSnap }) })).status).toBe(404);
    expect((await http(`${url}/volumes/${v.volumeId}/backups`, { method: 'POST', ...json({}) })).status).toBe(400);
    expect((await http(`${url}/volumes/${v.volumeId}/backups`, { method: 'POST', ...json({ snapshotId: s.snapshotId, x: 1 }) })).status).toBe(400);
    expect((await http(`${url}/restores`, { method: 'POST', ...json({ backupId: 'bkp-0000000000000000-000000000000-000000' }) })).status).toBe(404);
    expect((await http(`${url}/backups/nope`)).status).toBe(404);
    expect((await http(`${url}/restores/nope`)).status).toBe(404);
    const b = await backup(url, v.volumeId, s.snapshotId);
    // Another tenant sees none of it (docs/security.md): 404 as for a backup that does not exist.
    expect((await http(`${url}/backups/${b.backupId}`, { as: PROFILES.tenantB })).status).toBe(404);
    expect((await http(`${url}/backups/${b.backupId}/verify`, { method: 'POST', as: PROFILES.tenantB })).status).toBe(404);
    expect((await http(`${url}/restores`, { method: 'POST', as: PROFILES.tenantB, ...json({ backupId: b.backupId }) })).status).toBe(404);
    const theirs = await http(`${url}/backups`, { as: PROFILES.tenantB });
    expect(theirs.status).toBe(200);
    expect(theirs.json.backups.map((x: any) => x.backupId)).not.toContain(b.backupId);
    expect((await http(`${url}/restores`, { method: 'POST', ...json({ backupId: b.backupId, sizeBytes: 2 * MiB }) })).status).toBe(400);
    expect((await http(`${url}/restores`, { method: 'POST', ...json({ backupId: b.backupId, sizeBytes: 4 * MiB + 1 }) })).status).toBe(400);
    // A bigger restore is fine, and reads zeros beyond the backup.
    const bigger = await restore(url, b.backupId, 8 * MiB);
    const data = await readAll(url, 'volumes', bigger.volumeId, 8 * MiB);
    expect(firstDifference(data.subarray(0, 4 * MiB), await readAll(url, 'snapshots', s.snapshotId, 4 * MiB))).toBeNull();
    expect(data.subarray(4 * MiB).equals(Buffer.alloc(4 * MiB))).toBe(true);
    // A backup being deleted is not restorable.
    expect((await http(`${url}/backups/${b.backupId}`, { method: 'DELETE' })).status).toBe(202);
    const r = await http(`${url}/restores`, { method: 'POST', ...json({ backupId: b.backupId }) });
    expect([404, 409]).toContain(r.status);
  });
});

describe('a backup being restored', () => {
  it('refuses its deletion (409) until the restore has ended, and the restore ends exactly', async () => {
    const v = await api.createVolume({ sizeBytes: 8 * MiB });
    for (let off = 0; off < 8 * MiB; off += 4 * MiB) await api.write(v.volumeId, off, randomBytes(4 * MiB));
    const s = await snapshot(url, v.volumeId);
    const b = await backup(url, v.volumeId, s.snapshotId);
    const started = await http(`${url}/restores`, { method: 'POST', ...json({ backupId: b.backupId }) });
    expect(started.status, started.body.toString()).toBe(202);
    // The restore holds its backup from the moment it is accepted.
    const refused = await http(`${url}/backups/${b.backupId}`, { method: 'DELETE' });
    const during = (await http(`${url}/restores/${started.json.restoreId}`)).json;
    expect(during.state, 'the restore ended before the delete; the test needs it running').not.toBe('complete');
    expect(refused.status, refused.body.toString()).toBe(409);
    expect(refused.json.message).toContain(`being restored by ${started.json.restoreId}`);
    expect((await http(`${url}/backups/${b.backupId}`)).json.state).toBe('complete');
    const done = await waitState(url, `/restores/${started.json.restoreId}`, ['complete', 'failed']);
    expect(done.state, JSON.stringify(done)).toBe('complete');
    expect(firstDifference(await readAll(url, 'volumes', done.volumeId, 8 * MiB), await readAll(url, 'snapshots', s.snapshotId, 8 * MiB))).toBeNull();
    // Listed without a filter (from the catalog's listing, not a scan) while it exists.
    const listedIds = async () => (await http(`${url}/backups`)).json.backups.map((x: any) => x.backupId);
    expect(await listedIds()).toContain(b.backupId);
    // Once it has ended, the backup may go; a restore asked for after that is refused.
    expect((await http(`${url}/backups/${b.backupId}`, { method: 'DELETE' })).status).toBe(202);
    const late = await http(`${url}/restores`, { method: 'POST', ...json({ backupId: b.backupId }) });
    expect([404, 409]).toContain(late.status);
    for (let i = 0; i < 300 && (await http(`${url}/backups/${b.backupId}`)).status !== 404; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    expect((await http(`${url}/backups/${b.backupId}`)).status).toBe(404);
    expect(await listedIds()).not.toContain(b.backupId);
  });
});

/** Waits until the work queues hold no message, visible or in flight, twice in a row: every late duplicate was received and handled (bounded). */
async function queuesDrained(): Promise<void> {
  const urls = [...new Set((['gc', 'evacuation', 'checkpoint'] as const).map((q) => queueUrl(q)))];
  for (let i = 0, quiet = 0; i < 600; i++) {
    const counts = await Promise.all(
      urls.map(async (QueueUrl) => {
        const a = await sqs().send(new GetQueueAttributesCommand({ QueueUrl, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesDelayed'] }));
        return Number(a.Attributes?.ApproximateNumberOfMessages ?? 0) + Number(a.Attributes?.ApproximateNumberOfMessagesNotVisible ?? 0) + Number(a.Attributes?.ApproximateNumberOfMessagesDelayed ?? 0);
      }),
    );
    quiet = counts.every((n) => n === 0) ? quiet + 1 : 0;
    if (quiet >= 2) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error('the work queues still hold messages after 60 s');
}

describe('duplicate and late messages', () => {
  it('change nothing: a backup run twice at once, and messages for finished jobs', async () => {
    const v = await api.createVolume({ sizeBytes: 16 * MiB });
    for (let off = 0; off < 12 * MiB; off += 4 * MiB) await api.write(v.volumeId, off, randomBytes(4 * MiB));
    const s = await snapshot(url, v.volumeId);
    const started = await http(`${url}/volumes/${v.volumeId}/backups`, { method: 'POST', ...json({ snapshotId: s.snapshotId }) });
    expect(started.status).toBe(202);
    const backupId = started.json.backupId;
    // Two more copies of its message at once: three workers run the same backup.
    await Promise.all([workQueue().send({ type: 'backup-volume', backupId }), workQueue().send({ type: 'backup-volume', backupId })]);
    const done = await waitState(url, `/backups/${backupId}`, ['complete', 'failed']);
    expect(done.state).toBe('complete');
    const packs = await listPacks(backupId);
    expect(packs.map((p) => p.seq)).toEqual([0]);
    expect(done.bytesShipped).toBe(12 * MiB);
    const before = (await getBackup(backupId))!;
    const r = await restore(url, backupId);
    const restoreBefore = (await getRestore(r.restoreId))!;
    // Late duplicates of finished jobs, in any order.
    await workQueue().send({ type: 'restore-volume', restoreId: r.restoreId });
    await workQueue().send({ type: 'backup-volume', backupId });
    await workQueue().send({ type: 'backup-delete', backupId });
    await workQueue().send({ type: 'restore-volume', restoreId: r.restoreId });
    await queuesDrained();
    expect((await getBackup(backupId))!.record).toEqual(before.record);
    expect(await getRestore(r.restoreId)).toEqual(restoreBefore);
    expect(firstDifference(await readAll(url, 'volumes', r.volumeId, 16 * MiB), await readAll(url, 'snapshots', s.snapshotId, 16 * MiB))).toBeNull();
  });
});

describe('sledge backup and sledge restore', () => {
  it('back up and restore with a progress bar, and say what they made', async () => {
    const v = await api.createVolume({ sizeBytes: 8 * MiB });
    await api.write(v.volumeId, 0, randomBytes(3 * MiB));
    const s = await snapshot(url, v.volumeId);
    const env: NodeJS.ProcessEnv = { ...TOOLS_ENV };
    delete env.SLEDGE_DEBUG;
    const b = await run(process.execPath, [SLEDGE_BIN, 'backup', v.volumeId, '--snapshot', s.snapshotId, '--api', url], { env });
    expect(b.code, describeRun('sledge backup', b)).toBe(0);
    const backupId = /^(bkp-\S+): backing up/m.exec(b.stdout)?.[1];
    expect(backupId, b.stdout).toBeTruthy();
    expect(b.stdout).toMatch(/\[#+\] 100% 3\.0 MiB of 3\.0 MiB shipped/);
    expect(b.stdout).toMatch(new RegExp(`${backupId} complete in .*: 3\\.0 MiB of changed blocks in 1 packs`));
    const r = await run(process.execPath, [SLEDGE_BIN, 'restore', backupId!, '--api', url], { env });
    expect(r.code, describeRun('sledge restore', r)).toBe(0);
    const volumeId = /^(vol-[0-9a-f]+) restored from /m.exec(r.stdout)?.[1];
    expect(volumeId, r.stdout).toBeTruthy();
    expect(r.stdout).toMatch(/\[#+\] 100% 3\.0 MiB of 3\.0 MiB restored/);
    expect(firstDifference(await readAll(url, 'volumes', volumeId!, 8 * MiB), await readAll(url, 'snapshots', s.snapshotId, 8 * MiB))).toBeNull();
    const bad = await run(process.execPath, [SLEDGE_BIN, 'restore', 'bkp-nope', '--api', url], { env });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/is not a backup id/);
  });

  it('back up a group snapshot and restore it as a new group (sledge group backup, sledge group restore)', async () => {
    const vols = [await api.createVolume({ sizeBytes: MiB }), await api.createVolume({ sizeBytes: MiB })];
    for (const v of vols) await api.write(v.volumeId, 0, randomBytes(16 * BLOCK));
    const g = await http(`${url}/consistency-groups`, { method: 'POST', ...json({ name: 'pair', volumeIds: vols.map((v) => v.volumeId) }) });
    expect(g.status, g.body.toString()).toBe(201);
    const gs = await http(`${url}/consistency-groups/${g.json.groupId}/snapshots`, { method: 'POST' });
    expect(gs.status, gs.body.toString()).toBe(201);
    const env: NodeJS.ProcessEnv = { ...TOOLS_ENV };
    delete env.SLEDGE_DEBUG;
    const b = await run(process.execPath, [SLEDGE_BIN, 'group', 'backup', g.json.groupId, gs.json.groupSnapshotId, '--api', url], { env });
    expect(b.code, describeRun('sledge group backup', b)).toBe(0);
    const groupBackupId = /^(gbkp-\S+): backing up/m.exec(b.stdout)?.[1];
    expect(groupBackupId, b.stdout).toBeTruthy();
    expect(b.stdout).toMatch(/\[#+\] 100% 128\.0 KiB of 128\.0 KiB shipped/);
    expect(b.stdout).toContain(`${groupBackupId} complete: 2 member backups`);
    const r = await run(process.execPath, [SLEDGE_BIN, 'group', 'restore', groupBackupId!, '--name', 'pair again', '--api', url], { env });
    expect(r.code, describeRun('sledge group restore', r)).toBe(0);
    const done = new RegExp(`complete: (vol-[0-9a-f]+) (vol-[0-9a-f]+) in consistency group (cg-[0-9a-f]+)`).exec(r.stdout);
    expect(done, r.stdout).toBeTruthy();
    const listed = await http(`${url}/group-restores?groupBackupId=${groupBackupId}`);
    expect(listed.status).toBe(200);
    expect(listed.json.groupRestores).toHaveLength(1);
    expect(listed.json.groupRestores[0]).toMatchObject({ groupBackupId, state: 'complete', groupId: done![3] });
    expect(listed.json.groupRestores[0].restores.map((m: any) => m.volumeId)).toEqual([done![1], done![2]]);
    expect((await http(`${url}/group-restores`, { as: PROFILES.tenantB })).json.groupRestores.map((x: any) => x.groupBackupId)).not.toContain(groupBackupId);
    const made = (await http(`${url}/consistency-groups/${done![3]}`)).json;
    expect(made).toMatchObject({ name: 'pair again', volumeIds: [done![1], done![2]] });
    for (const [i, m] of gs.json.snapshots.entries()) {
      expect(firstDifference(await readAll(url, 'volumes', done![1 + i]!, MiB), await readAll(url, 'snapshots', m.snapshotId, MiB))).toBeNull();
    }
  });
});
