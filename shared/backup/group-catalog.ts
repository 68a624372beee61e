/**
 * Group backups and group restores in the vault's catalog (docs/consistency-groups.md, "Backing
 * up and restoring a group"): their records and ids. Their states are derived from the member
 * records, never stored; a group restore stores only what its job decides (the group made).
 */
import { randomBytes } from 'node:crypto';
import { DeleteItemCommand, GetItemCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
import { NotFoundError } from '../core/errors.ts';
import { vaultConfig } from '../core/vault-config.ts';
import { vaultDynamo } from '../aws/vault-clients.ts';
import { getItems, listedId, putListed, readPage, removeListing } from './listing.ts';
import type { Page } from '../core/paging.ts';
import { changeVersionedDoc } from './versioned-docs.ts';

type Item = Record<string, AttributeValue>;

export interface GroupBackupRecord {
  groupBackupId: string;
  groupId: string;
  groupName: string;
  groupSnapshotId: string;
  owner?: string;
  members: Array<{ volumeId: string; snapshotId: string; backupId: string }>;
  createdAt: string;
}

export interface GroupRestoreRecord {
  groupRestoreId: string;
  groupBackupId: string;
  site: string;
  owner?: string;
  /** With a group to make at the restoring site: its name and chosen id. */
  groupName?: string;
  groupId?: string;
  groupMade?: boolean;
  /** Why the job gave up (the group could not be made). */
  error?: string;
  members: Array<{ sourceVolumeId: string; backupId: string; restoreId: string; volumeId: string }>;
  createdAt: string;
  updatedAt: string;
  version: number;
}

const GROUP_BACKUP_ID = /^gbkp-([0-9a-f]{16})-[0-9a-f]{12}-[0-9a-f]{6}$/;
const GROUP_RESTORE_ID = /^grst-[0-9a-f]{12}-[0-9a-f]{8}$/;
const table = () => vaultConfig().table;

export function newGroupBackupId(groupId: string, now = Date.now()): string {
  return `gbkp-${groupId.slice('cg-'.length)}-${now.toString(16).padStart(12, '0')}-${randomBytes(3).toString('hex')}`;
}

export function newGroupRestoreId(now = Date.now()): string {
  return `grst-${now.toString(16).padStart(12, '0')}-${randomBytes(4).toString('hex')}`;
}

export const isGroupBackupId = (id: string): boolean => GROUP_BACKUP_ID.test(id);
export const isGroupRestoreId = (id: string): boolean => GROUP_RESTORE_ID.test(id);

/** The consistency group a group backup id names. */
export function groupOfGroupBackup(groupBackupId: string): string {
  return `cg-${GROUP_BACKUP_ID.exec(checkGroupBackupId(groupBackupId))![1]}`;
}

/** 404 for a string that cannot be a group backup id (never looked up). */
export function checkGroupBackupId(id: string): string {
  if (!GROUP_BACKUP_ID.test(id)) throw new NotFoundError(`group backup ${id} does not exist`);
  return id;
}

export function checkGroupRestoreId(id: string): string {
  if (!GROUP_RESTORE_ID.test(id)) throw new NotFoundError(`group restore ${id} does not exist`);
  return id;
}

/** A group's backups are one partition (the id names the group). */
function groupBackupKey(groupBackupId: string): Item {
  return { pk: { S: `group#${groupOfGroupBackup(groupBackupId)}` }, sk: { S: `gbkp#${groupBackupId}` } };
}

function groupRestoreKey(groupRestoreId: string): Item {
  return { pk: { S: `grst#${groupRestoreId}` }, sk: { S: 'group-restore' } };
}

export async function putGroupBackup(g: GroupBackupRecord): Promise<void> {
  await putListed({ ...groupBackupKey(g.groupBackupId), kind: { S: 'group-backup' }, doc: { S: JSON.stringify(g) } }, 'group-backup', g.groupBackupId);
}

/** Deletes a group backup's record, then its listing item. */
export async function deleteGroupBackupRecord(groupBackupId: string): Promise<void> {
  await vaultDynamo().send(new DeleteItemCommand({ TableName: table(), Key: groupBackupKey(groupBackupId) }));
  await removeListing('group-backup', groupBackupId);
}

export async function getGroupBackup(groupBackupId: string): Promise<GroupBackupRecord | null> {
  const out = await vaultDynamo().send(new GetItemCommand({ TableName: table(), Key: groupBackupKey(groupBackupId), ConsistentRead: true }));
  return out.Item ? (JSON.parse(out.Item.doc!.S!) as GroupBackupRecord) : null;
}

/**
 * One page of group backups in id order (so by group, oldest first within one) after `start`,
 * those `keep` accepts: of one group when given (its partition), else of the listing, then the records.
 */
export async function listGroupBackupsPage(
  groupId: string | undefined,
  start: string | undefined,
  limit: number,
  keep: (g: GroupBackupRecord) => boolean,
): Promise<Page<GroupBackupRecord>> {
  const parse = (item: Item) => JSON.parse(item.doc!.S!) as GroupBackupRecord;
  const idOf = (g: GroupBackupRecord) => g.groupBackupId;
  const source =
    groupId === undefined
      ? {
          pk: 'list#group-backup',
          skPrefix: '',
          idOf,
          records: async (items: Item[]) => (await getItems(items.map(listedId).map(groupBackupKey))).map(parse),
        }
      : { pk: `group#${groupId}`, skPrefix: 'gbkp#', idOf, records: async (items: Item[]) => items.map(parse) };
  return readPage(source, start, limit, keep);
}

/** Puts a new group restore record and its listing item (ConditionalCheckFailedException when it exists). */
export async function putGroupRestore(g: GroupRestoreRecord): Promise<void> {
  const { version: _v, ...doc } = g;
  await putListed(
    { ...groupRestoreKey(g.groupRestoreId), kind: { S: 'group-restore' }, version: { N: '0' }, doc: { S: JSON.stringify(doc) } },
    'group-restore',
    g.groupRestoreId,
  );
}

/** One page of the listed group restores after `start`, those `keep` accepts, oldest first (ids begin with their creation time). */
export async function listGroupRestoresPage(
  start: string | undefined,
  limit: number,
  keep: (g: GroupRestoreRecord) => boolean,
): Promise<Page<GroupRestoreRecord>> {
  const records = async (items: Item[]) => (await getItems(items.map(listedId).map(groupRestoreKey))).map(toGroupRestore);
  return readPage({ pk: 'list#group-restore', skPrefix: '', idOf: (g) => g.groupRestoreId, records }, start, limit, keep);
}

function toGroupRestore(item: Item): GroupRestoreRecord {
  return { ...(JSON.parse(item.doc!.S!) as GroupRestoreRecord), version: Number(item.version!.N) };
}

export async function getGroupRestore(groupRestoreId: string): Promise<GroupRestoreRecord | null> {
  const out = await vaultDynamo().send(new GetItemCommand({ TableName: table(), Key: groupRestoreKey(groupRestoreId), ConsistentRead: true }));
  return out.Item ? toGroupRestore(out.Item) : null;
}

/** Reads, changes and writes a group restore record until the write wins (or `change` returns false). */
export async function changeGroupRestore(groupRestoreId: string, change: (g: GroupRestoreRecord) => boolean): Promise<GroupRestoreRecord | null> {
  return changeVersionedDoc(`group restore ${groupRestoreId}`, groupRestoreKey(groupRestoreId), () => getGroupRestore(groupRestoreId), change);
}
