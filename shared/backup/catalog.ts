/**
 * The vault's catalog table (docs/backup.md): backup, pack and restore records, and site
 * claims. A record's fields are one JSON document (`doc`) beside the few attributes that
 * conditions and sets need (`state`, `version`, `children`, `refs`); every update of a document
 * is conditional on its version, so two workers never lose each other's changes.
 */
import { BatchGetItemCommand, DeleteItemCommand, GetItemCommand, PutItemCommand, UpdateItemCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
import { vaultConfig } from '../core/vault-config.ts';
import { vaultDynamo } from '../aws/vault-clients.ts';
import { getItems, listedId, putListed, queryPartition, readPage, removeListing } from './listing.ts';
import type { Page } from '../core/paging.ts';
import { changeVersionedDoc } from './versioned-docs.ts';
import { volumeOfBackup, type BackupRecord, type PackExtent, type PackRecord, type RestoreRecord } from './records.ts';

type Item = Record<string, AttributeValue>;

const table = () => vaultConfig().table;
const isConditionFailure = (err: unknown) => (err as Error).name === 'ConditionalCheckFailedException';

/** A volume's backups are one partition (the id names the volume), so listing them is one Query. */
function backupKey(backupId: string): Item {
  return { pk: { S: `vol#${volumeOfBackup(backupId)}` }, sk: { S: `backup#${backupId}` } };
}

function restoreKey(restoreId: string): Item {
  return { pk: { S: `restore#${restoreId}` }, sk: { S: 'restore' } };
}

function packItemKey(packId: string): Item {
  const [backupId, seq] = packId.split('/');
  return { pk: { S: `pack#${backupId}` }, sk: { S: seq! } };
}

// ---------------------------------------------------------------------------------------
// Backups

export interface StoredBackup {
  record: BackupRecord;
  children: string[];
  /** The restores holding it (docs/backup.md, "A restore holds its backup"). */
  restoring: string[];
}

function toBackup(item: Item): StoredBackup {
  const record = JSON.parse(item.doc!.S!) as BackupRecord;
  record.version = Number(item.version!.N);
  record.state = item.state!.S as BackupRecord['state'];
  return { record, children: item.children?.SS ?? [], restoring: item.restoring?.SS ?? [] };
}

function backupDoc(r: BackupRecord): string {
  const { version: _v, ...rest } = r;
  return JSON.stringify(rest);
}

export async function getBackup(backupId: string): Promise<StoredBackup | null> {
  const out = await vaultDynamo().send(new GetItemCommand({ TableName: table(), Key: backupKey(backupId), ConsistentRead: true }));
  return out.Item ? toBackup(out.Item) : null;
}

/** Puts a new backup record (condition: absent) with its listing item. */
export async function putNewBackup(r: BackupRecord): Promise<void> {
  const item: Item = {
    ...backupKey(r.backupId),
    kind: { S: 'backup' },
    volumeId: { S: r.volumeId },
    state: { S: r.state },
    version: { N: '0' },
    doc: { S: backupDoc({ ...r, version: 0 }) },
  };
  await putListed(item, 'backup', r.backupId);
}

/**
 * Writes `r` over the stored record if it is still at `r.version` (and, with `unheld`, no restore
 * holds it); false if another update came first.
 */
export async function updateBackup(r: BackupRecord, opts: { unheld?: boolean } = {}): Promise<boolean> {
  try {
    await vaultDynamo().send(
      new UpdateItemCommand({
        TableName: table(),
        Key: backupKey(r.backupId),
        UpdateExpression: 'SET #doc = :doc, #state = :state, #version = :next',
        ConditionExpression: opts.unheld ? '#version = :version AND attribute_not_exists(restoring)' : '#version = :version',
        ExpressionAttributeNames: { '#doc': 'doc', '#state': 'state', '#version': 'version' },
        ExpressionAttributeValues: {
          ':doc': { S: backupDoc(r) },
          ':state': { S: r.state },
          ':version': { N: String(r.version) },
          ':next': { N: String(r.version + 1) },
        },
      }),
    );
    r.version += 1;
    return true;
  } catch (err) {
    if (isConditionFailure(err)) return false;
    throw err;
  }
}

/**
 * Reads, changes and writes a backup record until the write wins (or `change` returns false:
 * nothing to do). Returns the record as written, or as read when unchanged; null if absent.
 */
export async function changeBackup(backupId: string, change: (r: BackupRecord) => boolean): Promise<BackupRecord | null> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const stored = await getBackup(backupId);
    if (!stored) return null;
    const r = stored.record;
    if (!change(r)) return r;
    r.updatedAt = new Date().toISOString();
    if (await updateBackup(r)) return r;
  }
  throw new Error(`backup ${backupId} kept changing under 20 updates in a row`);
}

/** Adds `childId` to the base's children, on condition that the base is complete. False if it is not (any more). */
export async function addChild(baseId: string, childId: string, requireComplete: boolean): Promise<boolean> {
  try {
    await vaultDynamo().send(
      new UpdateItemCommand({
        TableName: table(),
        Key: backupKey(baseId),
        UpdateExpression: 'ADD children :c',
        ConditionExpression: requireComplete ? '#state = :complete' : 'attribute_exists(pk)',
        ExpressionAttributeNames: requireComplete ? { '#state': 'state' } : undefined,
        ExpressionAttributeValues: { ':c': { SS: [childId] }, ...(requireComplete ? { ':complete': { S: 'complete' } } : {}) },
      }),
    );
    return true;
  } catch (err) {
    if (isConditionFailure(err)) return false;
    throw err;
  }
}

/** A restore holds a complete backup (ADD to `restoring`, on condition that it is complete); false if it is not (any more). */
export async function holdBackup(backupId: string, restoreId: string): Promise<boolean> {
  try {
    await vaultDynamo().send(
      new UpdateItemCommand({
        TableName: table(),
        Key: backupKey(backupId),
        UpdateExpression: 'ADD restoring :r',
        ConditionExpression: '#state = :complete',
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':r': { SS: [restoreId] }, ':complete': { S: 'complete' } },
      }),
    );
    return true;
  } catch (err) {
    if (isConditionFailure(err)) return false;
    throw err;
  }
}

/** A restore lets its backup go (an empty set disappears, which is what a delete's condition asks). */
export async function releaseBackup(backupId: string, restoreId: string): Promise<void> {
  try {
    await vaultDynamo().send(
      new UpdateItemCommand({
        TableName: table(),
        Key: backupKey(backupId),
        UpdateExpression: 'DELETE restoring :r',
        ConditionExpression: 'attribute_exists(pk)',
        ExpressionAttributeValues: { ':r': { SS: [restoreId] } },
      }),
    );
  } catch (err) {
    if (!isConditionFailure(err)) throw err;
  }
}

export async function removeChild(baseId: string, childId: string): Promise<void> {
  try {
    await vaultDynamo().send(
      new UpdateItemCommand({
        TableName: table(),
        Key: backupKey(baseId),
        UpdateExpression: 'DELETE children :c',
        ConditionExpression: 'attribute_exists(pk)',
        ExpressionAttributeValues: { ':c': { SS: [childId] } },
      }),
    );
  } catch (err) {
    if (!isConditionFailure(err)) throw err;
  }
}

export async function deleteBackupRecord(backupId: string): Promise<void> {
  await vaultDynamo().send(new DeleteItemCommand({ TableName: table(), Key: backupKey(backupId) }));
  await removeListing('backup', backupId);
}

/** Every backup record of one volume (one Query), oldest first. */
export async function listBackups(volumeId: string): Promise<BackupRecord[]> {
  const items = await queryPartition(`vol#${volumeId}`, 'backup#');
  return items.map((item) => toBackup(item).record).sort((a, b) => (a.backupId < b.backupId ? -1 : 1));
}

/**
 * One page of backup records in id order (so by volume, oldest first within one) after `start`,
 * those `keep` accepts: of one volume when given (its partition), else of the listing, then the records.
 */
export async function listBackupsPage(
  volumeId: string | undefined,
  start: string | undefined,
  limit: number,
  keep: (b: BackupRecord) => boolean,
): Promise<Page<BackupRecord>> {
  const idOf = (b: BackupRecord) => b.backupId;
  const source =
    volumeId === undefined
      ? {
          pk: 'list#backup',
          skPrefix: '',
          idOf,
          records: async (items: Item[]) => (await getItems(items.map(listedId).map(backupKey))).map((i) => toBackup(i).record),
        }
      : { pk: `vol#${volumeId}`, skPrefix: 'backup#', idOf, records: async (items: Item[]) => items.map((i) => toBackup(i).record) };
  return readPage(source, start, limit, keep);
}

// ---------------------------------------------------------------------------------------
// Packs

function toPack(item: Item): PackRecord {
  const backupId = item.pk!.S!.slice('pack#'.length);
  const seq = Number(item.sk!.S);
  const raw = item.crcs?.B ?? new Uint8Array(0);
  const crcs = new Uint32Array(raw.byteLength / 4);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = 0; i < crcs.length; i++) crcs[i] = view.getUint32(i * 4, true);
  return {
    packId: `${backupId}/${item.sk!.S}`,
    backupId,
    seq,
    extents: JSON.parse(item.extents!.S!) as PackExtent[],
    crcs,
    bytes: Number(item.bytes!.N),
    endByte: Number(item.endByte!.N),
  };
}

/** Puts a pack record with its first reference (the backup that made it); false if it was there already. */
export async function putPack(p: PackRecord): Promise<boolean> {
  const crcs = Buffer.alloc(p.crcs.length * 4);
  for (let i = 0; i < p.crcs.length; i++) crcs.writeUInt32LE(p.crcs[i]!, i * 4);
  try {
    await vaultDynamo().send(
      new PutItemCommand({
        TableName: table(),
        Item: {
          ...packItemKey(p.packId),
          kind: { S: 'pack' },
          extents: { S: JSON.stringify(p.extents) },
          crcs: { B: crcs },
          bytes: { N: String(p.bytes) },
          endByte: { N: String(p.endByte) },
          refs: { SS: [p.backupId] },
        },
        ConditionExpression: 'attribute_not_exists(pk)',
      }),
    );
    return true;
  } catch (err) {
    if (isConditionFailure(err)) return false;
    throw err;
  }
}

/** A backup's own packs (those it made), by seq. */
export async function listPacks(backupId: string): Promise<PackRecord[]> {
  return (await queryPartition(`pack#${backupId}`)).map(toPack).sort((a, b) => a.seq - b.seq);
}

/** The pack records of `packIds` (any order); a missing one is absent from the map. */
export async function getPacks(packIds: readonly string[]): Promise<Map<string, PackRecord>> {
  const out = new Map<string, PackRecord>();
  const unique = [...new Set(packIds)];
  for (let i = 0; i < unique.length; i += 100) {
    let keys: Item[] = unique.slice(i, i + 100).map(packItemKey);
    for (let round = 0; keys.length > 0 && round < 20; round++) {
      const res = await vaultDynamo().send(new BatchGetItemCommand({ RequestItems: { [table()]: { Keys: keys, ConsistentRead: true } } }));
      for (const item of res.Responses?.[table()] ?? []) {
        const p = toPack(item);
        out.set(p.packId, p);
      }
      keys = (res.UnprocessedKeys?.[table()]?.Keys as Item[] | undefined) ?? [];
    }
  }
  return out;
}

export async function addPackRef(packId: string, backupId: string): Promise<void> {
  try {
    await vaultDynamo().send(
      new UpdateItemCommand({
        TableName: table(),
        Key: packItemKey(packId),
        UpdateExpression: 'ADD refs :b',
        ConditionExpression: 'attribute_exists(pk)',
        ExpressionAttributeValues: { ':b': { SS: [backupId] } },
      }),
    );
  } catch (err) {
    if (!isConditionFailure(err)) throw err;
  }
}

/** Removes a reference; returns how many remain (0 also when the record is already gone). */
export async function removePackRef(packId: string, backupId: string): Promise<number> {
  try {
    const out = await vaultDynamo().send(
      new UpdateItemCommand({
        TableName: table(),
        Key: packItemKey(packId),
        UpdateExpression: 'DELETE refs :b',
        ConditionExpression: 'attribute_exists(pk)',
        ExpressionAttributeValues: { ':b': { SS: [backupId] } },
        ReturnValues: 'ALL_NEW',
      }),
    );
    return out.Attributes?.refs?.SS?.length ?? 0;
  } catch (err) {
    if (isConditionFailure(err)) return 0;
    throw err;
  }
}

export async function deletePackRecord(packId: string): Promise<void> {
  await vaultDynamo().send(new DeleteItemCommand({ TableName: table(), Key: packItemKey(packId) }));
}

// ---------------------------------------------------------------------------------------
// Restores and site claims

function toRestore(item: Item): RestoreRecord {
  const r = JSON.parse(item.doc!.S!) as RestoreRecord;
  r.version = Number(item.version!.N);
  return r;
}

export async function getRestore(restoreId: string): Promise<RestoreRecord | null> {
  const out = await vaultDynamo().send(new GetItemCommand({ TableName: table(), Key: restoreKey(restoreId), ConsistentRead: true }));
  return out.Item ? toRestore(out.Item) : null;
}

/** Puts a new restore record and its listing item (ConditionalCheckFailedException when it exists). */
export async function putNewRestore(r: RestoreRecord): Promise<void> {
  const { version: _v, ...doc } = r;
  await putListed({ ...restoreKey(r.restoreId), kind: { S: 'restore' }, version: { N: '0' }, doc: { S: JSON.stringify(doc) } }, 'restore', r.restoreId);
}

/** One page of the listed restores after `start`, those `keep` accepts, oldest first (restore ids begin with their creation time). */
export async function listRestoresPage(start: string | undefined, limit: number, keep: (r: RestoreRecord) => boolean): Promise<Page<RestoreRecord>> {
  const records = async (items: Item[]) => (await getItems(items.map(listedId).map(restoreKey))).map(toRestore);
  return readPage({ pk: 'list#restore', skPrefix: '', idOf: (r) => r.restoreId, records }, start, limit, keep);
}

export async function changeRestore(restoreId: string, change: (r: RestoreRecord) => boolean): Promise<RestoreRecord | null> {
  return changeVersionedDoc(`restore ${restoreId}`, restoreKey(restoreId), () => getRestore(restoreId), change);
}

/** The restore at `site` that rebuilds `backupId`: claims it for `restoreId` if unclaimed; returns the claimant. */
export async function claimSiteRestore(site: string, backupId: string, restoreId: string): Promise<string> {
  const Key = { pk: { S: `site#${site}` }, sk: { S: `restored#${backupId}` } };
  try {
    await vaultDynamo().send(
      new PutItemCommand({ TableName: table(), Item: { ...Key, restoreId: { S: restoreId } }, ConditionExpression: 'attribute_not_exists(pk)' }),
    );
    return restoreId;
  } catch (err) {
    if (!isConditionFailure(err)) throw err;
  }
  const out = await vaultDynamo().send(new GetItemCommand({ TableName: table(), Key, ConsistentRead: true }));
  return out.Item!.restoreId!.S!;
}
