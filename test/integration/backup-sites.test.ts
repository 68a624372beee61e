import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSeparateEndpoint } from '#local/endpoint.ts';
import { VAULT_ENV } from '#shared/core/vault-config.ts';
import { Api, http, useSledgeEnv } from './helpers.ts';
import { MiB, backup, firstDifference, json, readAll, restore, snapshot, waitState } from './backup-helpers.ts';
import { startSite, type Site } from './site-helpers.ts';
import { runBackupModel, vaultPackBytes } from './backup-model.ts';

/**
 * Backups across sites (docs/backup.md): a second Sledge deployment, its own endpoint and
 * tables, restores from the first one's vault (the disaster-recovery case); and a worker
 * process killed with SIGKILL mid-backup and mid-restore, whose job another process resumes
 * after the message's visibility timeout without shipping again what is in the vault.
 */
const BLOCK = 4096;

let url: string;
let api: Api;
const cleanups: Array<() => Promise<void>> = [];
// Every site process deploys the same stack: synthesized once, by the first (local/stack.ts).
const synthCache = mkdtempSync(join(tmpdir(), 'sledge-site-synth-'));
beforeAll(() => {
  url = useSledgeEnv().apiUrl;
  api = new Api(url);
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  rmSync(synthCache, { recursive: true, force: true });
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
    dr = await site({ AWS_ENDPOINT_URL: await endpoint(), [VAULT_ENV.endpointUrl]: vaultUrl });
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

  it('restores every backup of a volume and two clones exactly, before and after deleting half of them at random (seeded)', async () => {
    await runBackupModel(url, dr.apiUrl);
  });
});

describe('a worker killed mid-job', () => {
  it('resumes a backup and a restore from where the killed process left them, and ends exactly', async () => {
    const env = {
      AWS_ENDPOINT_URL: await endpoint(),
      [VAULT_ENV.endpointUrl]: await endpoint(),
      // 512 KiB packs: 32 of them, so the kill lands between two.
      [VAULT_ENV.packBytes]: String(MiB / 2),
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
    const resumedAtBlock = Math.min(...third.logged('restore').map((x) => x.resumedAtBlock as number));
    expect(resumedAtBlock).toBeGreaterThan(0);
    const [got, want] = await Promise.all([readAll(third.apiUrl, 'volumes', r.json.volumeId, SIZE), readAll(third.apiUrl, 'snapshots', s.snapshotId, SIZE)]);
    expect(firstDifference(got, want)).toBeNull();
    await third.stop();
  });
});
