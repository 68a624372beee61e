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
import { getItems, listedIds, putListed, queryPartition, removeListing } from './listing.ts';
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
  const group = `cg-${GROUP_BACKUP_ID.exec(checkGroupBackupId(groupBackupId))![1]}`;
  return { pk: { S: `group#${group}` }, sk: { S: `gbkp#${groupBackupId}` } };
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

/** A group's group backups (one Query), or every one (the listing, then the records), oldest first. */
export async function listGroupBackups(groupId?: string): Promise<GroupBackupRecord[]> {
  const items =
    groupId === undefined ? await getItems((await listedIds('group-backup')).map(groupBackupKey)) : await queryPartition(`group#${groupId}`, 'gbkp#');
  return items.map((item) => JSON.parse(item.doc!.S!) as GroupBackupRecord).sort((a, b) => (a.groupBackupId < b.groupBackupId ? -1 : 1));
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

/** Every listed group restore, oldest first (ids begin with their creation time). */
export async function listGroupRestores(): Promise<GroupRestoreRecord[]> {
  const items = await getItems((await listedIds('group-restore')).map(groupRestoreKey));
  return items.map(toGroupRestore).sort((a, b) => (a.groupRestoreId < b.groupRestoreId ? -1 : 1));
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
