/**
 * The randomized backup test's body (docs/backup.md), run by backup-sites.test.ts against the
 * primary and a second site: a volume and two clones of its first snapshot, rounds of random
 * writes and trims, a snapshot and a backup of each per round; every backup restored at the
 * second site and compared byte for byte with the model's snapshot, and the bytes each backup
 * put in the vault compared with the model's changed blocks; then backups deleted in random
 * order, the rest restored again. The seed is printed; replay with SLEDGE_SEED=<seed>.
 * SLEDGE_BACKUP_MODEL_ROUNDS sets the rounds (default 3).
 */
import { randomBytes } from 'node:crypto';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { expect } from 'vitest';
import { forEachLimited } from '#shared/core/async.ts';
import { DEFAULT_VAULT_BUCKET, VAULT_ENV } from '#shared/core/vault-config.ts';
import { seeded } from '../unit/seed.ts';
import { Api, http } from './helpers.ts';
import { backup, firstDifference, readAll, restore, snapshot } from './backup-helpers.ts';

const BLOCK = 4096;
const SIZE = 4 * 1024 * 1024;
const BLOCKS = SIZE / BLOCK;
const ROUNDS = Number(process.env.SLEDGE_BACKUP_MODEL_ROUNDS ?? 3);

interface ModelVolume {
  volumeId: string;
  bytes: Buffer;
  /** Blocks written since the snapshot of this volume's last backup (or since it was made). */
  written: Set<number>;
}

interface ModelBackup {
  backupId: string;
  snapshotId: string;
  bytes: Buffer;
}

/** Bytes of pack objects a backup put in the vault. */
export async function vaultPackBytes(backupId: string): Promise<number> {
  const s3 = new S3Client({ endpoint: process.env[VAULT_ENV.endpointUrl]!, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } });
  try {
    let total = 0;
    let token: string | undefined;
    do {
      const page = await s3.send(new ListObjectsV2Command({ Bucket: DEFAULT_VAULT_BUCKET, Prefix: `packs/${backupId}/`, ContinuationToken: token }));
      for (const o of page.Contents ?? []) total += o.Size ?? 0;
      token = page.NextContinuationToken;
    } while (token);
    return total;
  } finally {
    s3.destroy();
  }
}

export async function runBackupModel(primaryUrl: string, secondUrl: string): Promise<void> {
  const rng = seeded('backup model');
  const api = new Api(primaryUrl);
  const origin = await api.createVolume({ sizeBytes: SIZE });
  const base: ModelVolume = { volumeId: origin.volumeId, bytes: Buffer.alloc(SIZE), written: new Set() };
  const write = async (v: ModelVolume, block: number, count: number) => {
    const data = randomBytes(count * BLOCK);
    await api.write(v.volumeId, block * BLOCK, data);
    data.copy(v.bytes, block * BLOCK);
    for (let i = 0; i < count; i++) v.written.add(block + i);
  };
  const trim = async (v: ModelVolume, block: number, count: number) => {
    await api.trim(v.volumeId, block * BLOCK, count * BLOCK);
    v.bytes.fill(0, block * BLOCK, (block + count) * BLOCK);
  };
  for (let i = 0; i < 6; i++) await write(base, rng.int(BLOCKS - 8), 1 + rng.int(8));
  const backups: ModelBackup[] = [];
  /** Snapshot, back up, and check what the backup put in the vault against the model. */
  const backUp = async (v: ModelVolume) => {
    const s = await snapshot(primaryUrl, v.volumeId);
    const b = await backup(primaryUrl, v.volumeId, s.snapshotId);
    // The changed blocks that are not zeros at the snapshot, and nothing else, went to the vault.
    const expected = [...v.written].filter((block) => !v.bytes.subarray(block * BLOCK, (block + 1) * BLOCK).equals(Buffer.alloc(BLOCK))).length * BLOCK;
    expect(await vaultPackBytes(b.backupId), `bytes ${b.backupId} put in the vault`).toBe(expected);
    v.written.clear();
    backups.push({ backupId: b.backupId, snapshotId: s.snapshotId, bytes: Buffer.from(v.bytes) });
    return { snapshotId: s.snapshotId, backup: b };
  };
  const first = await backUp(base);
  const clones: ModelVolume[] = [];
  for (let i = 0; i < 2; i++) {
    const c = await api.createVolume({ sourceSnapshotId: first.snapshotId });
    clones.push({ volumeId: c.volumeId, bytes: Buffer.from(base.bytes), written: new Set() });
  }
  const volumes = [base, ...clones];
  for (let round = 0; round < ROUNDS; round++) {
    for (const v of volumes) {
      const ops = 2 + rng.int(5);
      for (let op = 0; op < ops; op++) {
        const block = rng.int(BLOCKS - 16);
        const count = 1 + rng.int(16);
        if (rng.next() < 0.2) await trim(v, block, count);
        else await write(v, block, count);
      }
      const { backup: b } = await backUp(v);
      // A clone's first backup continues its parent's: the relation is kept.
      if (v !== base && round === 0) expect(b.parent).toBe(first.backup.backupId);
    }
  }
  const check = async (b: ModelBackup) => {
    const r = await restore(secondUrl, b.backupId);
    const got = await readAll(secondUrl, 'volumes', r.volumeId, SIZE);
    expect(firstDifference(got, b.bytes), `restore of ${b.backupId} at the second site`).toBeNull();
  };
  // The restores are independent: a few at a time.
  await forEachLimited(backups, 3, check);
  // Delete half of them in random order; the others still restore exactly.
  const order = [...backups].sort(() => rng.next() - 0.5);
  const doomed = order.slice(0, Math.floor(order.length / 2));
  for (const b of doomed) {
    const del = await http(`${primaryUrl}/backups/${b.backupId}`, { method: 'DELETE' });
    expect(del.status, del.body.toString()).toBe(202);
    for (let i = 0; i < 300 && (await http(`${primaryUrl}/backups/${b.backupId}`)).status !== 404; i++) await new Promise((r) => setTimeout(r, 100));
    expect((await http(`${primaryUrl}/backups/${b.backupId}`)).status).toBe(404);
  }
  await forEachLimited(order.slice(doomed.length), 3, check);
  // Every pack of a deleted backup that no remaining backup names is gone from the vault.
  const remainingBytes = (await Promise.all(doomed.map((b) => vaultPackBytes(b.backupId)))).reduce((a, x) => a + x, 0);
  console.log(`backup model: ${backups.length} backups, ${doomed.length} deleted; ${remainingBytes} bytes of deleted backups' packs still referenced`);
}
