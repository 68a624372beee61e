/**
 * What the backup and restore routes (docs/backup.md) need besides their handlers. A backup
 * and a restore belong to the owner of the volume they came from (recorded in the vault, so a
 * second site knows it too); another tenant's answer 404, as for volumes.
 */
import { NotFoundError, UnavailableError } from '../core/errors.ts';
import { hasVault } from '../core/vault-config.ts';
import { owned } from './authz.ts';
import type { Request } from './http.ts';
import { getRestore } from '../backup/catalog.ts';
import { readBackupOrJob } from '../backup/job-records.ts';
import { groupBackupOwner, groupRestoreOwner } from '../backup/groups.ts';
import { checkBackupId, checkRestoreId } from '../backup/records.ts';

export const BACKUP_OWNER = owned('backup', 'backupId');
export const RESTORE_OWNER = owned('restore', 'restoreId');
export const GROUP_BACKUP_OWNER = owned('groupBackup', 'groupBackupId');
export const GROUP_RESTORE_OWNER = owned('groupRestore', 'groupRestoreId');

/** The owner of a group backup or group restore (docs/consistency-groups.md): null without a vault or when it does not exist. */
export async function groupBackupOrRestoreOwner(kind: 'backup' | 'restore', id: string): Promise<string | undefined | null> {
  if (!hasVault()) return null;
  return kind === 'backup' ? groupBackupOwner(id) : groupRestoreOwner(id);
}

/** A tenant restores only its own group backups (another tenant's reads as missing). */
export async function checkGroupRestoreSource(req: Request, body: Record<string, unknown>): Promise<void> {
  const id = body.groupBackupId;
  if (typeof id !== 'string' || req.principal === undefined || req.principal.operator) return;
  if ((await groupBackupOwner(id)) !== req.principal.arn) throw new NotFoundError(`group backup ${id} does not exist`);
}

export function requireVault(): void {
  if (!hasVault()) throw new UnavailableError('this deployment has no backup vault configured (docs/backup.md)', { retryAfterSeconds: 60 });
}

export async function backupOwner(backupId: string): Promise<string | undefined | null> {
  if (!hasVault()) return null;
  try {
    checkBackupId(backupId);
  } catch {
    return null;
  }
  const found = await readBackupOrJob(backupId);
  if (!found) return null;
  return 'job' in found ? found.job.owner : found.record.owner;
}

export async function restoreOwner(restoreId: string): Promise<string | undefined | null> {
  if (!hasVault()) return null;
  try {
    checkRestoreId(restoreId);
  } catch {
    return null;
  }
  const r = await getRestore(restoreId);
  return r ? r.owner : null;
}

/** A tenant restores only its own backups (another tenant's reads as missing). */
export async function checkRestoreSource(req: Request, body: Record<string, unknown>): Promise<void> {
  const id = body.backupId;
  if (typeof id !== 'string' || req.principal === undefined || req.principal.operator) return;
  if ((await backupOwner(id)) !== req.principal.arn) throw new NotFoundError(`backup ${id} does not exist`);
}
