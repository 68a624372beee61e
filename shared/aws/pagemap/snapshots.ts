/**
 * The DynamoDB adapter for snapshots (docs/snapshots.md): snapshot records in the Snapshots
 * table, frozen pages in the Pages table under `<volumeId>#frozen` with the key
 * `tag × 10^8 + page`, the snapshot transaction, clone creation and the purge's volume fields.
 */
import {
  type AttributeValue,
  DeleteItemCommand,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  TransactWriteItemsCommand,
  TransactionCanceledException,
  type TransactWriteItem,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import { config } from '../../core/config.ts';
import { ConflictError, NotFoundError, UnavailableError, invariant } from '../../core/errors.ts';
import {
  CommitRefusedError,
  type CommitWriter,
  type FlattenProgress,
  type FrozenPage,
  type SnapshotRecord,
  type StoredFrozen,
  type VolumeRecord,
} from '../../core/records.ts';
import { decodePage, encodePage } from '../../data/extents.ts';
import { dynamo } from '../clients.ts';
import {
  N,
  S,
  PAGE_SPAN,
  attributeToParent,
  conditionFailed,
  contentsOf,
  contentsToAttributes,
  frozenKey,
  frozenPartition,
  flattenToAttribute,
  itemToVolume,
  num,
  parentToAttribute,
  str,
  volumeToItem,
} from './items.ts';
import { batchGet, queryVolumeItems } from './pages.ts';
import { fencingCondition } from './transactions.ts';

const QUERY_PAGES_MAX = 100_000;

/**
 * A purge's lock lapses after this long: longer than any function may run (Lambda's limit is 15
 * minutes), so only a purge that crashed loses it; its redelivered message then takes it over.
 */
const PURGE_LOCK_LEASE_MS = 16 * 60 * 1000;

function itemToFrozen(volumeId: string, item: Record<string, AttributeValue>, pageBlocks: number): FrozenPage {
  const page = num(item.p);
  return { tag: num(item.tag), page, version: num(item.version), extents: decodePage(contentsOf(volumeId, item), page, pageBlocks) };
}

function frozenToItem(volumeId: string, f: FrozenPage, pageBlocks: number): Record<string, AttributeValue> {
  const enc = encodePage(f.extents, f.page, pageBlocks);
  return { ...frozenKey(volumeId, f.tag, f.page), tag: N(f.tag), p: N(f.page), version: N(f.version), ...contentsToAttributes(volumeId, enc) };
}

/**
 * Puts frozen pages that do not exist yet (each on `attribute_not_exists`); a refused put means
 * the copy is already there, which is all the protocol needs (docs/snapshots.md).
 */
export async function freezePages(volumeId: string, pageBlocks: number, pages: readonly FrozenPage[]): Promise<number> {
  let written = 0;
  await Promise.all(
    pages.map(async (f) => {
      try {
        await dynamo().send(
          new PutItemCommand({
            TableName: config().pagesTable,
            Item: frozenToItem(volumeId, f, pageBlocks),
            ConditionExpression: 'attribute_not_exists(page)', // the first copy under a tag is the page as it was then
            ReturnConsumedCapacity: 'TOTAL',
          }),
        );
        written++;
      } catch (err) {
        if (!conditionFailed(err)) throw err;
      }
    }),
  );
  return written;
}

/** The frozen pages among `keys` that exist (consistent reads). */
export async function getFrozenPages(volumeId: string, pageBlocks: number, keys: ReadonlyArray<{ tag: number; page: number }>): Promise<FrozenPage[]> {
  const items = await batchGet(
    config().pagesTable,
    keys.map((k) => frozenKey(volumeId, k.tag, k.page)),
  );
  return items.map((item) => itemToFrozen(volumeId, item, pageBlocks));
}

/** Frozen page items with `fromTag <= tag < toTag` (all tags from `fromTag` when `toTag` is absent), raw, in tag then page order. */
async function* frozenItems(volumeId: string, fromTag: number, toTag?: number): AsyncGenerator<Record<string, AttributeValue>> {
  let start: Record<string, AttributeValue> | undefined;
  const from = (BigInt(fromTag) * PAGE_SPAN).toString();
  const to = toTag === undefined ? undefined : (BigInt(toTag) * PAGE_SPAN - 1n).toString();
  if (to !== undefined && BigInt(to) < BigInt(from)) return;
  for (let n = 0; ; n++) {
    invariant(n < QUERY_PAGES_MAX, 'query of frozen pages did not end');
    const out = await dynamo().send(
      new QueryCommand({
        TableName: config().pagesTable,
        KeyConditionExpression: to === undefined ? 'volumeId = :v AND page >= :from' : 'volumeId = :v AND page BETWEEN :from AND :to',
        ExpressionAttributeValues: { ':v': S(frozenPartition(volumeId)), ':from': { N: from }, ...(to === undefined ? {} : { ':to': { N: to } }) },
        ExclusiveStartKey: start,
        ConsistentRead: true,
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    yield* out.Items ?? [];
    start = out.LastEvaluatedKey;
    if (!start) return;
  }
}

/** Frozen pages with `fromTag <= tag < toTag` (all tags when `toTag` is absent), in tag then page order. */
export async function* listFrozenPages(volumeId: string, pageBlocks: number, fromTag: number, toTag?: number): AsyncGenerator<FrozenPage> {
  for await (const item of frozenItems(volumeId, fromTag, toTag)) yield itemToFrozen(volumeId, item, pageBlocks);
}

/** Every frozen page item of a volume as stored (not decoded), in tag then page order: what a checkpoint copies. */
export async function* listStoredFrozen(volumeId: string): AsyncGenerator<StoredFrozen> {
  for await (const item of frozenItems(volumeId, 0)) {
    yield { tag: num(item.tag), page: num(item.p), version: num(item.version), ...contentsOf(volumeId, item) };
  }
}

export async function deleteFrozenPage(volumeId: string, tag: number, page: number): Promise<void> {
  await dynamo().send(new DeleteItemCommand({ TableName: config().pagesTable, Key: frozenKey(volumeId, tag, page), ReturnConsumedCapacity: 'TOTAL' }));
}

// ---------------------------------------------------------------------------------------
// Snapshot records

export function snapshotToItem(s: SnapshotRecord): Record<string, AttributeValue> {
  const item: Record<string, AttributeValue> = {
    volumeId: S(s.volumeId),
    snapshotId: S(s.snapshotId),
    seq: N(s.seq),
    sizeBytes: N(s.sizeBytes),
    createdAt: S(s.createdAt),
    state: S(s.state),
  };
  if (s.name !== undefined) item.name = S(s.name);
  if (s.parent) item.parent = parentToAttribute(s.parent);
  if (s.dependants.length > 0) item.dependants = { SS: s.dependants };
  if (s.groupSnapshotId !== undefined) item.groupSnapshotId = S(s.groupSnapshotId);
  return item;
}

export function itemToSnapshot(item: Record<string, AttributeValue>): SnapshotRecord {
  const s: SnapshotRecord = {
    volumeId: str(item.volumeId),
    snapshotId: str(item.snapshotId),
    seq: num(item.seq),
    sizeBytes: num(item.sizeBytes),
    createdAt: str(item.createdAt),
    state: str(item.state) as SnapshotRecord['state'],
    dependants: item.dependants?.SS ?? [],
  };
  if (item.name?.S !== undefined) s.name = item.name.S;
  const parent = attributeToParent(item.parent);
  if (parent) s.parent = parent;
  if (item.groupSnapshotId?.S !== undefined) s.groupSnapshotId = item.groupSnapshotId.S;
  return s;
}

export async function getSnapshot(volumeId: string, snapshotId: string): Promise<SnapshotRecord | null> {
  const out = await dynamo().send(
    new GetItemCommand({
      TableName: config().snapshotsTable,
      Key: { volumeId: S(volumeId), snapshotId: S(snapshotId) },
      ConsistentRead: true,
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
  return out.Item ? itemToSnapshot(out.Item) : null;
}

/** Every snapshot record of a volume (ready or deleting), in seq order. */
export async function listSnapshots(volumeId: string): Promise<SnapshotRecord[]> {
  const out: SnapshotRecord[] = [];
  for await (const item of queryVolumeItems(config().snapshotsTable, volumeId)) out.push(itemToSnapshot(item));
  return out;
}

export function cancellation(err: unknown): Array<{ Code?: string; Item?: Record<string, AttributeValue> }> | null {
  if (!(err instanceof TransactionCanceledException) && (err as { name?: string })?.name !== 'TransactionCanceledException') return null;
  return (err as TransactionCanceledException).CancellationReasons ?? [];
}

/** The update of a dependant set on a parent snapshot that must still be ready. */
function dependantUpdate(parent: { volumeId: string; snapshotId: string }, dependant: string, action: 'ADD' | 'DELETE'): TransactWriteItem {
  return {
    Update: {
      TableName: config().snapshotsTable,
      Key: { volumeId: S(parent.volumeId), snapshotId: S(parent.snapshotId) },
      UpdateExpression: `${action} dependants :d`,
      ...(action === 'ADD' ? { ConditionExpression: '#state = :ready' } : {}), // nothing may come to depend on a snapshot being deleted
      ...(action === 'ADD' ? { ExpressionAttributeNames: { '#state': 'state' } } : {}),
      ExpressionAttributeValues: { ':d': { SS: [dependant] }, ...(action === 'ADD' ? { ':ready': S('ready') } : {}) },
    },
  };
}

/**
 * A snapshot point on a volume item: `SET snapSeq = :seq` while the volume exists, serves, its
 * head is still `seq`, no purge runs and the writer is not fenced, plus the caller's `extra`
 * condition parts (a group snapshot's). Its first item of the snapshot transactions. A folding
 * volume's tail needs no condition: the new tag may lie in it (docs/page-map.md, "Snapshots on a
 * tail").
 */
export function snapshotPointUpdate(
  volumeId: string,
  seq: number,
  writer: CommitWriter,
  extra: { parts: string[]; values: Record<string, AttributeValue> } = { parts: [], values: {} },
): TransactWriteItem {
  const fencing = fencingCondition(writer);
  return {
    Update: {
      TableName: config().volumesTable,
      Key: { volumeId: S(volumeId) },
      UpdateExpression: 'SET snapSeq = :seq',
      ConditionExpression: [
        'attribute_exists(volumeId)', // the volume exists
        '#state = :active', // and is serving
        'headSeq = :seq', // and nothing committed since we read the head the snapshot is of
        'attribute_not_exists(snapPurge)', // and no purge is moving frozen pages between tags
        ...fencing.parts, // and the requester is not fenced off
        ...extra.parts,
      ].join(' AND '),
      ExpressionAttributeNames: { '#state': 'state', ...fencing.names },
      ExpressionAttributeValues: { ...fencing.values, ...extra.values, ':seq': N(seq), ':active': S('active') },
      ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
    },
  };
}

/**
 * Takes a snapshot at `volume.headSeq`: sets `snapSeq` on the volume item while its head, state
 * and the writer's fencing still hold, and puts the record (and, for a clone, adds it to its
 * parent snapshot's dependants). CommitRefusedError when a condition failed.
 */
export async function createSnapshotRecord(volume: VolumeRecord, snap: SnapshotRecord, writer: CommitWriter): Promise<void> {
  const cfg = config();
  const items: TransactWriteItem[] = [
    snapshotPointUpdate(volume.volumeId, snap.seq, writer),
    { Put: { TableName: cfg.snapshotsTable, Item: snapshotToItem(snap), ConditionExpression: 'attribute_not_exists(snapshotId)' } },
  ];
  if (snap.parent) items.push(dependantUpdate(snap.parent, snap.snapshotId, 'ADD'));
  try {
    await dynamo().send(new TransactWriteItemsCommand({ TransactItems: items, ReturnConsumedCapacity: 'TOTAL' }));
  } catch (err) {
    const reasons = cancellation(err);
    if (!reasons) throw err;
    if (reasons[0]?.Code === 'ConditionalCheckFailed') {
      const current = reasons[0].Item ? itemToVolume(reasons[0].Item) : undefined;
      if (!current) throw new CommitRefusedError('volume-gone', `volume ${volume.volumeId} does not exist`);
      if (current.state !== 'active') throw new CommitRefusedError('volume-not-active', `volume ${volume.volumeId} is ${current.state}`, current);
      if (current.headSeq !== snap.seq) throw new CommitRefusedError('head-moved', `volume ${volume.volumeId} committed while the snapshot was taken`, current);
      if (current.snapPurge !== undefined) {
        throw new UnavailableError(`deleted snapshots of volume ${volume.volumeId} are being purged; retry in a few seconds`, { retryAfterSeconds: 2 });
      }
      throw new CommitRefusedError('fenced', `the reservation of volume ${volume.volumeId} does not allow this key to take a snapshot`, current);
    }
    if (reasons[2]?.Code === 'ConditionalCheckFailed') throw new ConflictError(`the parent snapshot ${snap.parent?.snapshotId} is being deleted`);
    throw err;
  }
}

/** Creates a clone's volume item and adds it to its parent snapshot's dependants, in one transaction. */
export async function createCloneVolume(clone: VolumeRecord): Promise<void> {
  invariant(clone.parent, 'a clone has a parent');
  const cfg = config();
  try {
    await dynamo().send(
      new TransactWriteItemsCommand({
        TransactItems: [
          { Put: { TableName: cfg.volumesTable, Item: volumeToItem(clone), ConditionExpression: 'attribute_not_exists(volumeId)' } },
          dependantUpdate(clone.parent, clone.volumeId, 'ADD'),
        ],
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
  } catch (err) {
    const reasons = cancellation(err);
    if (reasons?.[1]?.Code === 'ConditionalCheckFailed') throw new NotFoundError(`snapshot ${clone.parent.snapshotId} does not exist or is being deleted`);
    throw err;
  }
}

/** Removes a dependant from a snapshot record (a clone deleted or flattened, a clone's snapshot purged). */
export async function removeDependant(parent: { volumeId: string; snapshotId: string }, dependant: string): Promise<void> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().snapshotsTable,
        Key: { volumeId: S(parent.volumeId), snapshotId: S(parent.snapshotId) },
        UpdateExpression: 'DELETE dependants :d',
        ConditionExpression: 'attribute_exists(snapshotId)',
        ExpressionAttributeValues: { ':d': { SS: [dependant] } },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
  } catch (err) {
    if (!conditionFailed(err)) throw err;
  }
}

/**
 * `ready -> deleting` while nothing depends on the snapshot. Returns the record as it is when
 * refused (dependants, already deleting), null when it does not exist.
 */
export async function markSnapshotDeleting(volumeId: string, snapshotId: string): Promise<{ ok: true } | { ok: false; current: SnapshotRecord | null }> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().snapshotsTable,
        Key: { volumeId: S(volumeId), snapshotId: S(snapshotId) },
        UpdateExpression: 'SET #state = :deleting',
        ConditionExpression: [
          '#state = :ready', // a snapshot that exists and is not being deleted
          'attribute_not_exists(dependants)', // and that no clone reads through
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':ready': S('ready'), ':deleting': S('deleting') },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return { ok: true };
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return { ok: false, current: err.Item ? itemToSnapshot(err.Item) : null };
  }
}

export async function deleteSnapshotRecord(volumeId: string, snapshotId: string): Promise<void> {
  await dynamo().send(
    new DeleteItemCommand({ TableName: config().snapshotsTable, Key: { volumeId: S(volumeId), snapshotId: S(snapshotId) }, ReturnConsumedCapacity: 'TOTAL' }),
  );
}

/** Takes (or re-takes, with the same token) the volume's purge lock; false when another purge holds it or a rebuild runs. */
export async function lockSnapshotPurge(volumeId: string, token: string): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET snapPurge = :token, snapPurgeUntil = :until',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state <> :rebuilding', // and no rebuild is rewriting its frozen pages (docs/checkpoints.md, "Frozen pages")
          // and no other purge holds the lock, or the one that does outlived any function that could hold it (it crashed)
          '(attribute_not_exists(snapPurge) OR snapPurge = :token OR snapPurgeUntil < :now)',
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: {
          ':token': S(token),
          ':rebuilding': S('rebuilding'),
          ':now': N(Date.now()),
          ':until': N(Date.now() + PURGE_LOCK_LEASE_MS),
        },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}

/** Releases the purge lock; with `dropSnapSeq`, also removes `snapSeq` if it is still that value. */
export async function unlockSnapshotPurge(volumeId: string, token: string, dropSnapSeq?: number): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: dropSnapSeq === undefined ? 'REMOVE snapPurge, snapPurgeUntil' : 'REMOVE snapPurge, snapPurgeUntil, snapSeq',
        ConditionExpression: [
          'snapPurge = :token', // our purge holds the lock
          ...(dropSnapSeq === undefined ? [] : ['snapSeq = :snapSeq']), // and no snapshot was taken since we looked
        ].join(' AND '),
        ExpressionAttributeValues: { ':token': S(token), ...(dropSnapSeq === undefined ? {} : { ':snapSeq': N(dropSnapSeq) }) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}

/** Records a clone's flatten progress while it still has `parent` (false when it has not: finished or deleted). */
export async function setFlattenProgress(volumeId: string, parentSnapshotId: string, progress: FlattenProgress): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET flatten = :f',
        ConditionExpression: [
          '#state = :active', // the clone is serving
          'parent.snapshotId = :parent', // and still reads through this parent
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':f': flattenToAttribute(progress), ':active': S('active'), ':parent': S(parentSnapshotId) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}

/**
 * Ends a flatten: the clone stops reading through its parent (every block the parent covered
 * was copied; pages only ever gain coverage, so that stays true); false when refused.
 */
export async function finishFlatten(volumeId: string, parentSnapshotId: string): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'REMOVE parent, flatten',
        ConditionExpression: [
          '#state = :active', // the clone is serving
          'parent.snapshotId = :parent', // and still has this parent
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':active': S('active'), ':parent': S(parentSnapshotId) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}
