/**
 * The vault's records (docs/backup.md, "The vault"): backups, packs, restores. Pure types and
 * ids; the catalog in shared/backup/catalog.ts stores them.
 */
import { randomBytes } from 'node:crypto';
import { NotFoundError } from '../core/errors.ts';

export type BackupState = 'queued' | 'running' | 'complete' | 'failed' | 'deleting';

export interface BackupRecord {
  backupId: string;
  volumeId: string;
  snapshotId: string;
  snapshotSeq: number;
  sizeBytes: number;
  blockSizeBytes: number;
  owner?: string;
  /** The backup whose chain this one continues; absent for a full backup. */
  base?: string;
  /** The clone relation: the backup of the parent volume this backup's chain continues from. */
  parent?: string;
  /** The snapshot of the base when the backup was made (its changed blocks are counted from it). */
  baseSnapshotId?: string;
  state: BackupState;
  /** Pack ids, oldest first: this backup's own entries (and those merged forward into it). */
  layers: string[];
  bytesToShip: number;
  bytesShipped: number;
  blocksChanged: number;
  createdAt: string;
  startedAt?: string;
  updatedAt: string;
  completedAt?: string;
  error?: string;
  /** Optimistic concurrency: every update is conditional on it. */
  version: number;
}

/** `[first block, block count, byte offset in the pack, or -1: the blocks are zeros]`. */
export type PackExtent = [number, number, number];

export interface PackRecord {
  packId: string;
  backupId: string;
  seq: number;
  extents: PackExtent[];
  /** One CRC-32C per data block, in pack order. */
  crcs: Uint32Array;
  /** Bytes of the pack object (0: zero extents only, no object). */
  bytes: number;
  /** Where in the changed-block list (a byte offset of the volume) this pack stops. */
  endByte: number;
}

export type RestoreState = 'queued' | 'running' | 'complete' | 'failed';

export interface RestoreRecord {
  restoreId: string;
  backupId: string;
  site: string;
  volumeId: string;
  sizeBytes: number;
  owner?: string;
  state: RestoreState;
  bytesToRestore: number;
  bytesRestored: number;
  /** Restored blocks are those below this one in the block map's order. */
  nextBlock: number;
  /** For a clone: the restore of its parent at this site. */
  parentRestoreId?: string;
  /** Taken when complete: clones restored later at this site are made from it. */
  snapshotId?: string;
  createdAt: string;
  startedAt?: string;
  updatedAt: string;
  completedAt?: string;
  error?: string;
  version: number;
}

const BACKUP_ID = /^bkp-([0-9a-f]{16})-([0-9a-f]{12})-([0-9a-f]{6})$/;
const RESTORE_ID = /^rst-([0-9a-f]{12})-([0-9a-f]{8})$/;

export function newBackupId(volumeId: string, now = Date.now()): string {
  return `bkp-${volumeId.slice('vol-'.length)}-${now.toString(16).padStart(12, '0')}-${randomBytes(3).toString('hex')}`;
}

/** The volume a backup id names. */
export function volumeOfBackup(backupId: string): string {
  return `vol-${checkBackupId(backupId).slice('bkp-'.length, 'bkp-'.length + 16)}`;
}

export function newRestoreId(now = Date.now()): string {
  return `rst-${now.toString(16).padStart(12, '0')}-${randomBytes(4).toString('hex')}`;
}

export const isBackupId = (id: string): boolean => BACKUP_ID.test(id);
export const isRestoreId = (id: string): boolean => RESTORE_ID.test(id);

/** Whether `id` is a backup id naming volume `volumeId` (false for anything else: never a 404). */
export function isBackupOf(id: string, volumeId: string): boolean {
  return volumeId.startsWith('vol-') && BACKUP_ID.exec(id)?.[1] === volumeId.slice('vol-'.length);
}

/** 404 for a string that cannot be a backup id (never looked up). */
export function checkBackupId(id: string): string {
  if (!BACKUP_ID.test(id)) throw new NotFoundError(`backup ${id} does not exist`);
  return id;
}

export function checkRestoreId(id: string): string {
  if (!RESTORE_ID.test(id)) throw new NotFoundError(`restore ${id} does not exist`);
  return id;
}

export function packIdOf(backupId: string, seq: number): string {
  return `${backupId}/${String(seq).padStart(6, '0')}`;
}

export function packKey(packId: string): string {
  return `packs/${packId}`;
}
