import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createGroupSnapshot } from '#shared/control/group-snapshots.ts';
import { writeData } from '#shared/data/write.ts';
import { pageMap } from '#shared/ports.ts';
import { http, testApi } from './helpers.ts';

/**
 * A group-snapshot coordinator SIGKILLed with write barriers raised (docs/consistency-groups.md,
 * "When the coordinator dies"): a real child process (group-coordinator.ts) takes a group
 * snapshot on the barrier path and is killed at one of three steps: with every barrier up,
 * after one member's snapshot point was written, and just after the commit point. In each case
 * a write to a member is held until the barrier's lease passes and then goes through, and the
 * group snapshot is then either absent (its written members deleted, never readable) or complete
 * (every member readable, holding exactly what was written before).
 */
const BLOCK = 4096;
const LEASE_MS = 6000;
const CHILD = fileURLToPath(new URL('./group-coordinator.ts', import.meta.url));

const { api, apiUrl: url } = testApi({ sledgeEnv: true });

/** Starts the coordinator, waits for it to reach `step`, and SIGKILLs it there. */
async function coordinatorKilledAt(groupId: string, step: 'barriers' | 'members' | 'commit'): Promise<string> {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, groupId, String(LEASE_MS), step], {
    env: process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code, signal) => resolve(signal === 'SIGKILL' ? -9 : code)));
  const gsid = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the coordinator did not reach ${step} in 120 s: ${err}`)), 120_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line).groupSnapshotId);
      }
    });
    void exited.then((code) => reject(new Error(`the coordinator exited (${code}) before ${step}: ${err}`)));
  });
  child.kill('SIGKILL');
  expect(await exited).toBe(-9);
  return gsid;
}

async function setup(): Promise<{ volumes: string[]; groupId: string }> {
  const volumes: string[] = [];
  for (let i = 0; i < 3; i++) {
    const v = (await api.createVolume({ sizeBytes: 1024 * 1024 })).volumeId;
    await api.write(v, 0, Buffer.alloc(BLOCK, 0x10 + i));
    volumes.push(v);
  }
  const r = await http(`${url}/consistency-groups`, {
    method: 'POST',
    body: JSON.stringify({ name: 'killed', volumeIds: volumes }),
    headers: { 'content-type': 'application/json' },
  });
  expect(r.status, r.body.toString()).toBe(201);
  return { volumes, groupId: r.json.groupId };
}

describe('a group-snapshot coordinator killed with barriers raised', () => {
  for (const step of ['barriers', 'members'] as const) {
    it(`killed at step "${step}": writes wait out the lease, and the group snapshot is absent`, async () => {
      const { volumes, groupId } = await setup();
      const gsid = await coordinatorKilledAt(groupId, step);
      const items = await Promise.all(volumes.map((v) => pageMap().getVolume(v)));
      for (const v of items) expect(v?.barrier?.id).toBe(gsid);
      const expiresAtMs = items[0]!.barrier!.expiresAtMs;

      // A write to a member is held by the dead coordinator's barrier until its lease passes, then commits.
      const result = await writeData(volumes[1]!, BLOCK, Buffer.alloc(BLOCK, 0x77));
      expect(Date.now()).toBeGreaterThanOrEqual(expiresAtMs);
      expect(result.commitSeq).toBe(items[1]!.headSeq + 1);
      expect((await api.read(volumes[1]!, BLOCK, BLOCK)).equals(Buffer.alloc(BLOCK, 0x77))).toBe(true);

      // What the coordinator wrote before it died (one member's snapshot, at step "members") is
      // pending, and no reader sees it.
      const ofIt = async () => (await Promise.all(volumes.map((v) => pageMap().listSnapshots(v)))).flat().filter((s) => s.groupSnapshotId === gsid);
      const written = await ofIt();
      expect(written.map((s) => s.state)).toEqual(step === 'members' ? ['pending'] : []);
      for (const s of written) expect((await http(`${url}/snapshots/${s.snapshotId}`)).status).toBe(404);
      // Nothing of the group snapshot is visible: readers abort it once its lease passed, and
      // what it wrote is deleted (the purge may already have removed it).
      expect((await http(`${url}/consistency-groups/${groupId}/snapshots/${gsid}`)).status).toBe(404);
      expect((await http(`${url}/consistency-groups/${groupId}/snapshots`)).json.groupSnapshots).toEqual([]);
      for (const s of await ofIt()) expect(s.state).toBe('deleting');
      for (const s of written) expect((await http(`${url}/snapshots/${s.snapshotId}`)).status).toBe(404);
      for (const v of volumes) expect((await http(`${url}/volumes/${v}/snapshots`)).json.snapshots).toEqual([]);

      // The group takes group snapshots again, on either path.
      const again = await createGroupSnapshot(groupId, { id: 'test' }, { transactionMembers: 1, leaseMs: LEASE_MS });
      expect(again.snapshots.length).toBe(3);
      const snap = await http(`${url}/snapshots/${again.snapshots[1]!.snapshotId}/data?offset=${BLOCK}&length=${BLOCK}`);
      expect(snap.body.equals(Buffer.alloc(BLOCK, 0x77))).toBe(true);
    });
  }

  it('killed just after the commit point: the group snapshot is complete and every member reads as before', async () => {
    const { volumes, groupId } = await setup();
    const gsid = await coordinatorKilledAt(groupId, 'commit');
    // The barriers were dropped before the commit point: writes go on at once.
    for (const v of volumes) expect((await pageMap().getVolume(v))?.barrier).toBeUndefined();
    await writeData(volumes[0]!, 0, Buffer.alloc(BLOCK, 0x99));
    // The members are still `pending`; a reader of the group snapshot finishes them.
    const pending = (await Promise.all(volumes.map((v) => pageMap().listSnapshots(v)))).flat().filter((s) => s.groupSnapshotId === gsid);
    expect(pending.map((s) => s.state)).toEqual(['pending', 'pending', 'pending']);
    const gs = await http(`${url}/consistency-groups/${groupId}/snapshots/${gsid}`);
    expect(gs.status, gs.body.toString()).toBe(200);
    expect(gs.json.state).toBe('ready');
    expect(gs.json.snapshots.map((s: any) => s.volumeId)).toEqual(volumes);
    for (const [i, s] of gs.json.snapshots.entries()) {
      expect((await http(`${url}/snapshots/${s.snapshotId}`)).json.state).toBe('ready');
      const data = await http(`${url}/snapshots/${s.snapshotId}/data?offset=0&length=${BLOCK}`);
      expect(data.body.equals(Buffer.alloc(BLOCK, 0x10 + i))).toBe(true);
    }
  });
});
