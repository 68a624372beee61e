import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSeparateEndpoint } from '#local/endpoint.ts';
import { VAULT_ENV } from '#shared/core/vault-config.ts';
import { groupStore } from '#shared/ports.ts';
import { Api, PROFILES, http, testApi, testTempDir } from './helpers.ts';
import { MiB, backup, firstDifference, json, readAll, restore, snapshot, waitState } from './backup-helpers.ts';
import { startPlug, startSite, type Plug, type Site } from './site-helpers.ts';
import { runBackupModel, vaultPackBytes } from './backup-model.ts';

/**
 * Backups across sites (docs/backup.md): a second Sledge deployment, its own endpoint and
 * tables, restores from the first one's vault (the disaster-recovery case); and a worker
 * process killed with SIGKILL mid-backup and mid-restore, whose job another process resumes
 * after the message's visibility timeout without shipping again what is in the vault.
 */
const BLOCK = 4096;

const { api, apiUrl: url } = testApi({ sledgeEnv: true });
const cleanups: Array<() => Promise<void>> = [];
// Every site process deploys the same stack: synthesized once, by the first (local/stack.ts).
const synthCache = testTempDir('sledge-site-synth-');
/** The separate endpoints the tests use (a second site's, a vault's, a killed worker's site's), started side by side. */
let endpoints: { dr: string; vault: string; killed: string };
beforeAll(async () => {
  const [dr, vault, killed] = await Promise.all([endpoint(), endpoint(), endpoint()]);
  endpoints = { dr, vault, killed };
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

async function endpoint(): Promise<string> {
  const e = await startSeparateEndpoint(0);
  cleanups.push(() => e.stop());
  return e.url;
}

async function site(env: Record<string, string>): Promise<Site> {
  const s = await startSite({ SITE_STACK_NAME: 'sledge-site', SLEDGE_LOCAL_SYNTH_CACHE: synthCache, ...env });
  cleanups.push(() => s.stop());
  return s;
}

describe('a second site', () => {
  let dr: Site;
  beforeAll(async () => {
    const vaultUrl = process.env[VAULT_ENV.endpointUrl]!;
    expect(vaultUrl).toBeTruthy();
    expect(vaultUrl).not.toBe(process.env.AWS_ENDPOINT_URL);
    dr = await site({ AWS_ENDPOINT_URL: endpoints.dr, [VAULT_ENV.endpointUrl]: vaultUrl });
  });

  it("restores a volume and its clone from the primary's vault, without reading the primary", async () => {
    const parent = await api.createVolume({ sizeBytes: 8 * MiB });
    await api.write(parent.volumeId, 0, randomBytes(2 * MiB));
    const ps = await snapshot(url, parent.volumeId);
    const pb = await backup(url, parent.volumeId, ps.snapshotId);
    const clone = await api.createVolume({ sourceSnapshotId: ps.snapshotId });
    await api.write(clone.volumeId, 64 * BLOCK, randomBytes(8 * BLOCK));
    const cs = await snapshot(url, clone.volumeId);
    const cb = await backup(url, clone.volumeId, cs.snapshotId);
    expect(cb.parent).toBe(pb.backupId);
    // The vault holds the clone as its own blocks on the parent's: not a second copy of the parent.
    expect(await vaultPackBytes(pb.backupId)).toBe(2 * MiB);
    expect(await vaultPackBytes(cb.backupId)).toBe(8 * BLOCK);

    // The second site has none of the primary's volumes, and sees the vault's backups.
    expect((await http(`${dr.apiUrl}/volumes/${parent.volumeId}`)).status).toBe(404);
    const listed = await http(`${dr.apiUrl}/backups?volumeId=${clone.volumeId}`);
    expect(listed.json.backups.map((b: any) => b.backupId)).toEqual([cb.backupId]);

    const restored = await restore(dr.apiUrl, cb.backupId);
    const [there, here] = await Promise.all([readAll(dr.apiUrl, 'volumes', restored.volumeId, 8 * MiB), readAll(url, 'snapshots', cs.snapshotId, 8 * MiB)]);
    expect(firstDifference(there, here)).toBeNull();
    // The clone is a clone there too, of the parent restored there.
    const parentRestore = (await http(`${dr.apiUrl}/restores/${restored.parentRestoreId}`)).json;
    const described = (await http(`${dr.apiUrl}/volumes/${restored.volumeId}`)).json;
    expect(described.parent.snapshotId).toBe(parentRestore.snapshotId);
    const parentThere = await readAll(dr.apiUrl, 'volumes', parentRestore.volumeId, 8 * MiB);
    expect(firstDifference(parentThere, await readAll(url, 'snapshots', ps.snapshotId, 8 * MiB))).toBeNull();
  });

  it('backs up a group snapshot as a group, and restores it at the second site as new volumes in a new group, all or nothing', async () => {
    const SIZE = 2 * MiB;
    const vols = [await api.createVolume({ sizeBytes: SIZE }), await api.createVolume({ sizeBytes: SIZE })];
    for (const v of vols) await api.write(v.volumeId, 64 * BLOCK, randomBytes(64 * BLOCK));
    const g = await http(`${url}/consistency-groups`, { method: 'POST', ...json({ name: 'db', volumeIds: vols.map((v) => v.volumeId) }) });
    expect(g.status, g.body.toString()).toBe(201);
    const groupId = g.json.groupId as string;
    const gs = await http(`${url}/consistency-groups/${groupId}/snapshots`, { method: 'POST' });
    expect(gs.status, gs.body.toString()).toBe(201);
    // Written after the group snapshot: in no backup of it.
    for (const v of vols) await api.write(v.volumeId, 0, randomBytes(BLOCK));
    const backupsOf = (gsid: string) => `${url}/consistency-groups/${groupId}/snapshots/${gsid}/backups`;

    // Bad input changes nothing.
    const groupHex = groupId.slice('cg-'.length);
    expect((await http(backupsOf(`gsnap-${groupHex}-00000000`), { method: 'POST' })).status).toBe(404);
    expect((await http(backupsOf('gsnap-nope'), { method: 'POST' })).status).toBe(404);
    expect((await http(`${url}/consistency-groups/cg-0000000000000000/snapshots/${gs.json.groupSnapshotId}/backups`, { method: 'POST' })).status).toBe(404);
    expect((await http(backupsOf(gs.json.groupSnapshotId), { method: 'POST', ...json({ x: 1 }) })).status).toBe(400);
    // A group snapshot still being taken (as a coordinator leaves it at its first step), or being deleted: 409.
    const members = gs.json.snapshots.map((m: any) => ({ volumeId: m.volumeId, snapshotId: m.snapshotId, seq: m.commitSeq }));
    for (const [suffix, state] of [['0000000a', 'pending'], ['0000000b', 'deleting']] as const) {
      const id = `gsnap-${groupHex}-${suffix}`;
      await groupStore().putGroupSnapshot({ groupId, groupSnapshotId: id, state, members, createdAt: new Date().toISOString(), leaseExpiresAtMs: Date.now() + 600_000 });
      const refused = await http(backupsOf(id), { method: 'POST' });
      expect(refused.status, `${state}: ${refused.body.toString()}`).toBe(409);
      await groupStore().deleteGroupSnapshotItem(groupId, id);
    }
    expect((await http(`${url}/group-backups?groupId=${groupId}`)).json.groupBackups).toEqual([]);

    const started = await http(backupsOf(gs.json.groupSnapshotId), { method: 'POST' });
    expect(started.status, started.body.toString()).toBe(202);
    const groupBackupId = started.json.groupBackupId as string;
    expect(started.json.backups.map((b: any) => [b.volumeId, b.snapshotId])).toEqual(gs.json.snapshots.map((m: any) => [m.volumeId, m.snapshotId]));
    // Not restorable before every member backup is complete; unknown ids and bad fields are refused.
    const early = await http(`${dr.apiUrl}/group-restores`, { method: 'POST', ...json({ groupBackupId }) });
    expect(early.status, early.body.toString()).toBe(409);
    expect((await http(`${dr.apiUrl}/group-restores`, { method: 'POST', ...json({ groupBackupId: `gbkp-${groupHex}-000000000000-000000` }) })).status).toBe(404);
    expect((await http(`${dr.apiUrl}/group-restores`, { method: 'POST', ...json({ groupBackupId: 'nope' }) })).status).toBe(404);
    expect((await http(`${dr.apiUrl}/group-restores`, { method: 'POST', ...json({ groupBackupId, x: 1 }) })).status).toBe(400);
    expect((await http(`${dr.apiUrl}/group-restores`, { method: 'POST', ...json({ groupBackupId, groupName: '' }) })).status).toBe(400);
    expect((await http(`${dr.apiUrl}/group-backups/gbkp-nope`)).status).toBe(404);
    expect((await http(`${dr.apiUrl}/group-restores/grst-nope`)).status).toBe(404);

    const backedUp = await waitState(url, `/group-backups/${groupBackupId}`, ['complete', 'failed']);
    expect(backedUp.state, JSON.stringify(backedUp)).toBe('complete');
    expect(backedUp.backups.map((b: any) => b.state)).toEqual(['complete', 'complete']);
    expect(backedUp.bytesShipped).toBe(2 * 64 * BLOCK);
    // The second site has no copy of the group; it finds the group's backups in the vault.
    const listed = (await http(`${dr.apiUrl}/group-backups?groupId=${groupId}`)).json.groupBackups;
    expect(listed.map((x: any) => [x.groupBackupId, x.state])).toEqual([[groupBackupId, 'complete']]);
    const all = (await http(`${dr.apiUrl}/group-backups`)).json.groupBackups;
    expect(all.map((x: any) => x.groupBackupId)).toContain(groupBackupId);
    // Another tenant sees none of it (docs/security.md): 404 as for one that does not exist.
    expect((await http(`${url}/group-backups/${groupBackupId}`, { as: PROFILES.tenantB })).status).toBe(404);
    expect((await http(`${url}/group-restores`, { method: 'POST', as: PROFILES.tenantB, ...json({ groupBackupId }) })).status).toBe(404);
    expect((await http(backupsOf(gs.json.groupSnapshotId), { method: 'POST', as: PROFILES.tenantB })).status).toBe(404);
    const theirs = (await http(`${url}/group-backups`, { as: PROFILES.tenantB })).json.groupBackups;
    expect(theirs.map((x: any) => x.groupBackupId)).not.toContain(groupBackupId);

    const r = await http(`${dr.apiUrl}/group-restores`, { method: 'POST', ...json({ groupBackupId, groupName: 'db restored' }) });
    expect(r.status, r.body.toString()).toBe(202);
    // The restores hold the member backups: the group backup cannot be deleted under them.
    const held = await http(`${url}/group-backups/${groupBackupId}`, { method: 'DELETE' });
    expect(held.status, held.body.toString()).toBe(409);
    const restored = await waitState(dr.apiUrl, `/group-restores/${r.json.groupRestoreId}`, ['complete', 'failed']);
    expect(restored.state, JSON.stringify(restored)).toBe('complete');
    expect(restored.groupId).toBe(r.json.groupId);
    for (const m of restored.restores) {
      const snap = gs.json.snapshots.find((x: any) => x.volumeId === m.sourceVolumeId);
      const [there, here] = await Promise.all([readAll(dr.apiUrl, 'volumes', m.volumeId, SIZE), readAll(url, 'snapshots', snap.snapshotId, SIZE)]);
      expect(firstDifference(there, here), m.sourceVolumeId).toBeNull();
    }
    const made = (await http(`${dr.apiUrl}/consistency-groups/${restored.groupId}`)).json;
    expect(made).toMatchObject({ name: 'db restored', volumeIds: restored.restores.map((m: any) => m.volumeId) });

    // All or nothing: without one member backup the group backup is failed and not restorable.
    const gone = started.json.backups[0].backupId;
    expect((await http(`${url}/backups/${gone}`, { method: 'DELETE' })).status).toBe(202);
    const broken = (await http(`${url}/group-backups/${groupBackupId}`)).json;
    expect(broken.state).toBe('failed');
    expect(broken.error).toContain(gone);
    const refused = await http(`${dr.apiUrl}/group-restores`, { method: 'POST', ...json({ groupBackupId }) });
    expect(refused.status, refused.body.toString()).toBe(409);
    // Deleting the group backup deletes the member backups left, then the record.
    const deleted = await http(`${url}/group-backups/${groupBackupId}`, { method: 'DELETE' });
    expect(deleted.status, deleted.body.toString()).toBe(202);
    expect(deleted.json.deleting).toEqual([started.json.backups[1].backupId]);
    expect((await http(`${url}/group-backups/${groupBackupId}`)).status).toBe(404);
    expect((await http(`${url}/group-backups?groupId=${groupId}`)).json.groupBackups).toEqual([]);
    for (const b of started.json.backups) await waitGone(url, `/backups/${b.backupId}`);
  });

  it('restores every backup of a volume and two clones exactly, before and after deleting half of them at random (seeded)', async () => {
    await runBackupModel(url, dr.apiUrl);
  });
});

describe('a worker killed mid-job, and a vault that stops answering', () => {
  it('resumes a backup and a restore from where the killed process left them, and ends exactly; then fails a backup whose vault is unreachable', async () => {
    // The vault behind a relay the test can unplug (below); the relay changes nothing it carries.
    const vault = await startPlug(endpoints.vault);
    cleanups.push(() => vault.close());
    const env = {
      AWS_ENDPOINT_URL: endpoints.killed,
      [VAULT_ENV.endpointUrl]: vault.url,
      // 512 KiB packs: 32 of them, so the kill lands between two.
      [VAULT_ENV.packBytes]: String(MiB / 2),
      // A restore message writes 4 MiB and queues the next: the 16 MiB restore takes several.
      [VAULT_ENV.restoreBytesPerMessage]: String(4 * MiB),
    };
    const first = await site(env);
    const a = new Api(first.apiUrl);
    const SIZE = 16 * MiB;
    const v = await a.createVolume({ sizeBytes: SIZE });
    for (let off = 0; off < SIZE; off += 4 * MiB) await a.write(v.volumeId, off, randomBytes(4 * MiB));
    const s = await snapshot(first.apiUrl, v.volumeId);
    const started = await http(`${first.apiUrl}/volumes/${v.volumeId}/backups`, { method: 'POST', ...json({ snapshotId: s.snapshotId }) });
    expect(started.status).toBe(202);
    const backupId = started.json.backupId;
    let shippedAtKill = 0;
    for (;;) {
      const b = (await http(`${first.apiUrl}/backups/${backupId}`)).json;
      expect(b.state, 'the backup finished before the kill; the test needs it mid-way').not.toBe('complete');
      if (b.bytesShipped >= MiB) {
        first.child.kill('SIGKILL');
        shippedAtKill = b.bytesShipped;
        break;
      }
    }
    await first.stop();
    console.log(`backup: killed the first worker after ${shippedAtKill} bytes shipped`);

    const second = await site(env);
    const done = await waitState(second.apiUrl, `/backups/${backupId}`, ['complete', 'failed']);
    expect(done.state).toBe('complete');
    expect(done.packs).toBe(32);
    const runs = second.logged('backup');
    expect(runs.length).toBeGreaterThan(0);
    // Nothing committed before the kill was shipped again.
    const resumedAt = Math.min(...runs.map((r) => r.resumedAtPack as number));
    expect(resumedAt).toBeGreaterThanOrEqual(Math.floor(shippedAtKill / (MiB / 2)));
    expect(resumedAt).toBeGreaterThan(0);

    // Now a restore, killed mid-way.
    const r = await http(`${second.apiUrl}/restores`, { method: 'POST', ...json({ backupId }) });
    expect(r.status).toBe(202);
    let restoredAtKill = 0;
    for (;;) {
      const x = (await http(`${second.apiUrl}/restores/${r.json.restoreId}`)).json;
      expect(x.state, 'the restore finished before the kill; the test needs it mid-way').not.toBe('complete');
      if (x.bytesRestored > 0) {
        second.child.kill('SIGKILL');
        restoredAtKill = x.bytesRestored;
        break;
      }
    }
    await second.stop();
    console.log(`restore: killed the second worker after ${restoredAtKill} bytes restored`);
    const third = await site(env);
    const restored = await waitState(third.apiUrl, `/restores/${r.json.restoreId}`, ['complete', 'failed']);
    expect(restored.state).toBe('complete');
    const restoreRuns = third.logged('restore');
    const resumedAtBlock = Math.min(...restoreRuns.map((x) => x.resumedAtBlock as number));
    expect(resumedAtBlock).toBeGreaterThan(0);
    // It went on in messages of 4 MiB each: at least one run of the third process handed over to the next.
    const handedOver = restoreRuns.filter((x) => x.continued === true);
    expect(handedOver.length, JSON.stringify(restoreRuns)).toBeGreaterThan(0);
    for (const x of handedOver) expect(x.bytesRestored as number).toBeLessThan(SIZE);
    const [got, want] = await Promise.all([readAll(third.apiUrl, 'volumes', r.json.volumeId, SIZE), readAll(third.apiUrl, 'snapshots', s.snapshotId, SIZE)]);
    expect(firstDifference(got, want)).toBeNull();

    await vaultUnreachable(third, vault, v.volumeId);
    await third.stop();
  });
});

/**
 * A backup whose vault stops answering once it is queued: every attempt fails; the fifth sets
 * it `failed` with the reason and the attempts, kept at the primary while the vault is down and
 * written into the vault's record once it is back; the message is dead-lettered with the same
 * reason; nothing is ever restorable.
 */
async function vaultUnreachable(site: Site, vault: Plug, volumeId: string): Promise<void> {
  const t0 = Date.now();
  const a = new Api(site.apiUrl);
  await a.write(volumeId, 0, randomBytes(MiB));
  const s = await snapshot(site.apiUrl, volumeId);
  const started = await http(`${site.apiUrl}/volumes/${volumeId}/backups`, { method: 'POST', ...json({ snapshotId: s.snapshotId }) });
  expect(started.status, started.body.toString()).toBe(202);
  await vault.unplug();
  const backupId = started.json.backupId as string;
  const retried = new Set<string>();
  let failed: any;
  for (const deadline = Date.now() + 120_000; !failed; ) {
    expect(Date.now(), `backup ${backupId} never failed; retried: ${[...retried].join(' | ')}`).toBeLessThan(deadline);
    const r = await http(`${site.apiUrl}/backups/${backupId}`);
    // 503 until the first attempt has left its record at the primary.
    expect([200, 503], r.body.toString()).toContain(r.status);
    if (r.status === 200 && r.json.state === 'failed') failed = r.json;
    else if (r.status === 200 && r.json.error) retried.add(r.json.error);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const unreachable = `the vault is unreachable (catalog SledgeVaultCatalog / bucket sledge-vault-packs at ${vault.url})`;
  expect(failed).toMatchObject({ backupId, volumeId, state: 'failed', attempts: 5, vaultReachable: false });
  expect(failed.error).toContain(unreachable);
  expect(failed.error).toMatch(/ECONNREFUSED.*; gave up after 5 attempts$/);
  // The attempts before the last said they would be retried.
  expect([...retried].some((e) => e.startsWith(unreachable) && / \(attempt [1-4] of 5, retried\)$/.test(e)), [...retried].join(' | ')).toBe(true);
  // With the vault down nothing can be restored.
  const refused = await http(`${site.apiUrl}/restores`, { method: 'POST', ...json({ backupId }) });
  expect(refused.status, refused.body.toString()).toBe(503);

  // The message is in the dead-letter queue, with the same reason.
  let dead: any;
  for (let i = 0; i < 240 && !dead; i++) {
    const view = (await http(`${site.apiUrl}/queues/dead-letters`)).json;
    dead = view.queues.find((q: any) => q.queue === 'gc').messages.find((m: any) => m.body.includes(backupId));
    if (!dead) await new Promise((resolve) => setTimeout(resolve, 250));
  }
  expect(dead, 'the backup message never reached the dead-letter queue').toBeTruthy();
  expect(dead.failedAttempts).toBe(5);
  expect(dead.reason).toBe(`BackupJobError: ${failed.error}`);

  // The vault is back: its record is settled from the primary's, and never restorable.
  await vault.plug();
  const settled = (await http(`${site.apiUrl}/backups/${backupId}`)).json;
  expect(settled).toMatchObject({ backupId, state: 'failed', error: failed.error });
  expect(settled.vaultReachable).toBeUndefined();
  const listed = (await http(`${site.apiUrl}/backups?volumeId=${volumeId}`)).json.backups.find((b: any) => b.backupId === backupId);
  expect(listed.state).toBe('failed');
  const again = await http(`${site.apiUrl}/restores`, { method: 'POST', ...json({ backupId }) });
  expect(again.status, again.body.toString()).toBe(409);
  expect(again.json.message).toContain('gave up after 5 attempts');
  // A failed backup is deleted at once.
  expect((await http(`${site.apiUrl}/backups/${backupId}`, { method: 'DELETE' })).status).toBe(202);
  await waitGone(site.apiUrl, `/backups/${backupId}`);
  console.log(`vault unreachable: failed after 5 attempts, dead-lettered, settled and deleted in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

async function waitGone(apiUrl: string, path: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if ((await http(`${apiUrl}${path}`)).status === 404) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${path} was never deleted`);
}
