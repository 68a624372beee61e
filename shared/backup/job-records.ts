/**
 * A backup's job record at the primary (docs/backup.md, "Poison jobs and an unreachable vault"):
 * what the worker could not write into the vault because the vault did not answer, and the
 * settling of a vault record that a job record says has failed.
 */
import { UnavailableError } from '../core/errors.ts';
import type { NoteKey } from '../core/ports.ts';
import { describeVault, isVaultUnreachable } from '../aws/vault-clients.ts';
import { notes, pageMap } from '../ports.ts';
import { changeBackup, getBackup } from './catalog.ts';
import { volumeOfBackup, type BackupRecord } from './records.ts';

export interface BackupJobRecord {
  backupId: string;
  volumeId: string;
  owner?: string;
  state: 'running' | 'failed';
  error: string;
  attempts: number;
  recordedAt: string;
}

const jobKey = (backupId: string): NoteKey => ({ partition: backupId, sort: '#job' });

/** What a failed attempt says: what failed (the vault, named, when it did not answer) and why. */
export function failureText(err: unknown): string {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return isVaultUnreachable(err) ? `the vault is unreachable (${describeVault()}): ${text}` : text;
}

export async function recordJobAtPrimary(backupId: string, state: BackupJobRecord['state'], error: string, attempts: number): Promise<void> {
  const volumeId = volumeOfBackup(backupId);
  const owner = (await pageMap().getVolume(volumeId))?.owner;
  const job: BackupJobRecord = { backupId, volumeId, state, error, attempts, recordedAt: new Date().toISOString() };
  if (owner !== undefined) job.owner = owner;
  await notes().put(jobKey(backupId), { ...job });
}

export async function readJobRecord(backupId: string): Promise<BackupJobRecord | null> {
  return (await notes().get(jobKey(backupId))) as BackupJobRecord | null;
}

export async function forgetJobRecord(backupId: string): Promise<void> {
  await notes().delete(jobKey(backupId));
}

/**
 * A `queued` or `running` record whose job record at this site says the job failed gets that
 * failure (the worker could not write it while the vault was down). Returns the record as it
 * now is. One read at the primary; nothing for a finished record.
 */
export async function settleBackup(r: BackupRecord): Promise<BackupRecord> {
  if (r.state !== 'queued' && r.state !== 'running') return r;
  const job = await readJobRecord(r.backupId);
  if (!job || job.state !== 'failed') return r;
  const settled = await changeBackup(r.backupId, (x) => {
    if (x.state !== 'queued' && x.state !== 'running') return false;
    x.state = 'failed';
    x.error = job.error;
    return true;
  });
  return settled ?? r;
}

/** What `GET /backups/{id}` shows: the vault's record (settled), or this site's job record when the vault does not answer. */
export async function readBackupOrJob(backupId: string): Promise<{ record: BackupRecord } | { job: BackupJobRecord } | null> {
  try {
    const stored = await getBackup(backupId);
    return stored ? { record: await settleBackup(stored.record) } : null;
  } catch (err) {
    if (!isVaultUnreachable(err)) throw err;
    const job = await readJobRecord(backupId);
    if (!job) throw new UnavailableError(`${failureText(err)}; this site holds no record of backup ${backupId}`, { cause: err, retryAfterSeconds: 30 });
    return { job };
  }
}
