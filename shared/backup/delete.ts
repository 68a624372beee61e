/**
 * Deleting a backup by merging it forward (docs/backup.md, "Deleting a backup"), and verifying
 * one by reading every block of its chain back from the vault.
 */
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { ConflictError, NotFoundError, UnavailableError } from '../core/errors.ts';
import { vaultConfig } from '../core/vault-config.ts';
import { vaultS3 } from '../aws/vault-clients.ts';
import { workQueue } from '../ports.ts';
import {
  addChild,
  addPackRef,
  changeBackup,
  deleteBackupRecord,
  deletePackRecord,
  getBackup,
  getRestore,
  listPacks,
  releaseBackup,
  removeChild,
  removePackRef,
  updateBackup,
} from './catalog.ts';
import { packKey } from './records.ts';
import { settleBackup } from './job-records.ts';
import { backupChain, blockMap, readPackBlocks, BadBlockError } from './restore.ts';

/** A queued or running backup whose record has not changed for this long may be deleted. */
export const STALE_MS = 15 * 60_000;

/** `DELETE /backups/{id}` (202): the record goes to `deleting` and the job is queued. 409 while it runs or a restore holds it. */
export async function deleteBackup(backupId: string): Promise<{ backupId: string; state: string }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const stored = await getBackup(backupId);
    if (!stored) throw new NotFoundError(`backup ${backupId} does not exist`);
    const x = await settleBackup(stored.record); // a job that failed while the vault was down may be deleted at once
    if (x.state === 'deleting') {
      await workQueue().send({ type: 'backup-delete', backupId }); // a delete asked again runs its job again
      return { backupId, state: 'deleting' };
    }
    // A job whose record has not moved for STALE_MS is taken for dead (its worker cannot reach the vault, or is gone).
    const stale = Date.now() - Date.parse(x.updatedAt) > STALE_MS;
    if (x.state !== 'complete' && x.state !== 'failed' && !stale) {
      throw new ConflictError(`backup ${backupId} is ${x.state}; delete it once it is complete or failed (or has not moved for ${STALE_MS / 60_000} minutes)`);
    }
    if (stored.restoring.length > 0) {
      await releaseEndedHolds(backupId, stored.restoring);
      continue;
    }
    x.state = 'deleting';
    x.updatedAt = new Date().toISOString();
    if (!(await updateBackup(x, { unheld: true }))) continue; // changed or held meanwhile: read again
    await workQueue().send({ type: 'backup-delete', backupId });
    return { backupId, state: 'deleting' };
  }
  throw new ConflictError(`backup ${backupId} kept changing; retry`);
}

/** Removes the holds of restores that ended without removing them (or never got their record); 409 naming a live one. */
async function releaseEndedHolds(backupId: string, restoreIds: readonly string[]): Promise<void> {
  for (const restoreId of restoreIds) {
    const r = await getRestore(restoreId);
    if (r && r.state !== 'complete' && r.state !== 'failed') {
      throw new ConflictError(`backup ${backupId} is being restored by ${restoreId} (${r.state}); delete it once the restore has ended`);
    }
    await releaseBackup(backupId, restoreId);
  }
}

/** One `backup-delete` message: merge into each child, drop the references, delete what nothing uses. */
export async function deleteStep(backupId: string): Promise<Record<string, unknown>> {
  const stored = await getBackup(backupId);
  if (!stored) return { backupId, skipped: 'already deleted' };
  const d = stored.record;
  if (d.state !== 'deleting') return { backupId, skipped: `backup is ${d.state}` };
  let merged = 0;
  for (const childId of stored.children) {
    const child = (await getBackup(childId))?.record;
    if (!child || child.base !== backupId) continue;
    if (child.state === 'queued' || child.state === 'running') {
      throw new UnavailableError(`backup ${childId} based on ${backupId} is ${child.state}; the delete waits for it (the message is retried)`);
    }
    for (const packId of d.layers) await addPackRef(packId, childId);
    const updated = await changeBackup(childId, (c) => {
      if (c.base !== backupId) return false;
      c.layers = [...d.layers, ...c.layers];
      if (d.base === undefined) delete c.base;
      else c.base = d.base;
      if (d.baseSnapshotId === undefined) delete c.baseSnapshotId;
      else c.baseSnapshotId = d.baseSnapshotId;
      // The clone relation moves with the base: the chain now continues from D's base.
      if (c.parent === backupId) {
        if (d.parent !== undefined) c.parent = d.parent;
        else delete c.parent;
      }
      return true;
    });
    if (d.base && updated) await addChild(d.base, childId, false);
    merged++;
  }
  if (d.base) await removeChild(d.base, backupId);
  let packsDeleted = 0;
  // Its layers, and the packs it made but never listed (it was deleted before it completed).
  const own = (await listPacks(backupId)).map((p) => p.packId);
  for (const packId of new Set([...d.layers, ...own])) {
    if ((await removePackRef(packId, backupId)) > 0) continue;
    await vaultS3().send(new DeleteObjectCommand({ Bucket: vaultConfig().bucket, Key: packKey(packId) }));
    await deletePackRecord(packId);
    packsDeleted++;
  }
  await deleteBackupRecord(backupId);
  return { backupId, mergedInto: merged, packsDeleted };
}

/** `POST /backups/{id}/verify`: every data block of the backup's chain read back and checked. */
export async function verifyBackup(backupId: string): Promise<Record<string, unknown>> {
  const b = (await getBackup(backupId))?.record;
  if (!b) throw new NotFoundError(`backup ${backupId} does not exist`);
  if (b.state !== 'complete') throw new ConflictError(`backup ${backupId} is ${b.state}; only a complete backup can be verified`);
  const { own, crossing } = await backupChain(b);
  const chain = [...own];
  // The parent's chain too: a clone's backup restores only with it.
  for (let c = crossing; c; ) {
    const next = await backupChain(c);
    chain.push(...next.own);
    c = next.crossing;
  }
  const bs = b.blockSizeBytes;
  const { packs } = await blockMap(chain, bs);
  let blocks = 0;
  let bytes = 0;
  const badBlocks: string[] = [];
  for (const p of packs.values()) {
    for (const [, count, offset] of p.extents) {
      if (offset === -1) continue;
      const crcs = Array.from({ length: count }, (_, k) => p.crcs[offset / bs + k]!);
      try {
        await readPackBlocks(p.packId, offset, count, bs, crcs);
      } catch (err) {
        if (!(err instanceof BadBlockError) && (err as Error).name !== 'NoSuchKey') throw err;
        badBlocks.push(`${p.packId}@${offset}: ${(err as Error).message}`);
      }
      blocks += count;
      bytes += count * bs;
    }
  }
  return { backupId, packs: packs.size, blocks, bytes, badBlocks, ok: badBlocks.length === 0 };
}
