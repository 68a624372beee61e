/**
 * The DynamoDB adapter for page items and segment records: consistent batch reads (with the
 * volume item when the geometry is known), queries of one volume's items, batch deletes, and
 * the conditional puts and deletes of segment records (docs/page-map.md).
 */
import {
  type AttributeValue,
  BatchGetItemCommand,
  BatchWriteItemCommand,
  DeleteItemCommand,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
} from '@aws-sdk/client-dynamodb';
import { config } from '../../core/config.ts';
import { invariant } from '../../core/errors.ts';
import { segmentRef, splitSegmentRef, type PageRecord, type SegmentRecord, type StoredPage, type VolumeRecord } from '../../core/records.ts';
import { sleep } from '../../core/async.ts';
import type { ChunkLocation } from '../../data/sleds.ts';
import { dynamo } from '../clients.ts';
import { unprocessedAfterRetries } from '../errors.ts';
import {
  N,
  S,
  conditionFailed,
  itemToPage,
  locationsToAttribute,
  itemToSegment,
  isTombstone,
  itemToStoredPage,
  itemToVolume,
  num,
  str,
  pageKey,
  segmentKey,
  segmentToItem,
} from './items.ts';

/**
 * Bounds one volume's Query: pages of up to 1 MB, so 100,000 pages is 100 GB of items, far
 * beyond a 64 TiB volume's 64 Mi page items of about 100 bytes.
 */
const QUERY_PAGES_MAX = 100_000;

/** Bounded retries of DynamoDB batch calls that return unprocessed keys. */
const UNPROCESSED_RETRY_MAX = 8;

/** Consistent reads of `keys` (any number) from one table, in BatchGetItems of 100. */
export async function batchGet(table: string, keys: Record<string, AttributeValue>[]): Promise<Record<string, AttributeValue>[]> {
  const items: Record<string, AttributeValue>[] = [];
  for (let i = 0; i < keys.length; i += 100) items.push(...((await batchGetTables({ [table]: keys.slice(i, i + 100) }))[table] ?? []));
  return items;
}

/** One BatchGetItem (at most 100 keys in all) over several tables, consistent reads, retrying unprocessed keys (bounded). */
async function batchGetTables(keysByTable: Record<string, Record<string, AttributeValue>[]>): Promise<Record<string, Record<string, AttributeValue>[]>> {
  const items: Record<string, Record<string, AttributeValue>[]> = {};
  let pending: Record<string, { Keys: Record<string, AttributeValue>[]; ConsistentRead: true }> = {};
  for (const [table, keys] of Object.entries(keysByTable)) if (keys.length > 0) pending[table] = { Keys: keys, ConsistentRead: true };
  for (let attempt = 0; Object.keys(pending).length > 0; attempt++) {
    if (attempt >= UNPROCESSED_RETRY_MAX) throw unprocessedAfterRetries('BatchGetItem', Object.keys(pending), attempt);
    if (attempt > 0) await sleep(Math.min(1000, 20 * 2 ** attempt));
    const out: { Responses?: Record<string, Record<string, AttributeValue>[]>; UnprocessedKeys?: Record<string, { Keys?: Record<string, AttributeValue>[] }> } =
      await dynamo().send(new BatchGetItemCommand({ RequestItems: pending, ReturnConsumedCapacity: 'TOTAL' }));
    for (const [table, got] of Object.entries(out.Responses ?? {})) (items[table] ??= []).push(...got);
    const next: typeof pending = {};
    for (const [table, u] of Object.entries(out.UnprocessedKeys ?? {})) if (u.Keys && u.Keys.length > 0) next[table] = { Keys: u.Keys, ConsistentRead: true };
    pending = next;
  }
  return items;
}

/**
 * The volume item and the stored pages among `pages`, in one BatchGetItem over both tables
 * (consistent reads). The caller knows the volume's geometry (it never changes); the volume
 * item still decides existence, state and size. Missing pages are absent from the map.
 */
export async function getVolumeWithPages(
  geometry: Pick<VolumeRecord, 'volumeId' | 'pageBlocks'>,
  pages: readonly number[],
): Promise<{ volume: VolumeRecord | null; pages: Map<number, PageRecord> }> {
  invariant(pages.length <= 99, () => `${pages.length} pages do not fit one BatchGetItem with the volume`);
  const { volumesTable, pagesTable } = config();
  const got = await batchGetTables({
    [volumesTable]: [{ volumeId: S(geometry.volumeId) }],
    [pagesTable]: pages.map((p) => ({ volumeId: S(geometry.volumeId), page: N(p) })),
  });
  const [item] = got[volumesTable] ?? [];
  const volume = item ? itemToVolume(item) : null;
  const out = new Map<number, PageRecord>();
  for (const p of got[pagesTable] ?? []) {
    const rec = itemToPage(p, geometry.pageBlocks);
    out.set(rec.page, rec);
  }
  return { volume, pages: out };
}

/** The stored pages among `pages` (missing ones are absent from the map). */
export async function getPages(volume: Pick<VolumeRecord, 'volumeId' | 'pageBlocks'>, pages: readonly number[]): Promise<Map<number, PageRecord>> {
  const items = await batchGet(
    config().pagesTable,
    pages.map((p) => ({ volumeId: S(volume.volumeId), page: N(p) })),
  );
  const out = new Map<number, PageRecord>();
  for (const item of items) {
    const rec = itemToPage(item, volume.pageBlocks);
    out.set(rec.page, rec);
  }
  return out;
}

/** Segment records by reference (`<volumeId>/<segmentId>`). Immutable apart from locations. */
export async function getSegmentRecords(refs: readonly string[]): Promise<Map<string, SegmentRecord>> {
  const keys = [...new Set(refs)].map((ref) => {
    const [volumeId, segmentId] = splitSegmentRef(ref);
    return { volumeId: S(volumeId), segmentId: S(segmentId) };
  });
  const items = await batchGet(config().segmentsTable, keys);
  const out = new Map<string, SegmentRecord>();
  for (const item of items) {
    if (isTombstone(item)) continue;
    const rec = itemToSegment(item);
    out.set(segmentRef(rec.volumeId, rec.segmentId), rec);
  }
  return out;
}

export async function getSegmentRecord(volumeId: string, segmentId: string): Promise<SegmentRecord | null> {
  const out = await dynamo().send(
    new GetItemCommand({
      TableName: config().segmentsTable,
      Key: { volumeId: S(volumeId), segmentId: S(segmentId) },
      ConsistentRead: true,
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
  return out.Item && !isTombstone(out.Item) ? itemToSegment(out.Item) : null;
}

/**
 * Makes a segment that has no record uncommittable: puts a tombstone under its id, which the
 * commit's `attribute_not_exists(segmentId)` then refuses. `tombstoned` (also when an earlier
 * attempt put it) proves the segment never committed and never will; `committed` means its
 * record was there first.
 */
export async function tombstoneSegment(volumeId: string, segmentId: string, seq: number): Promise<'tombstoned' | 'committed'> {
  try {
    await dynamo().send(
      new PutItemCommand({
        TableName: config().segmentsTable,
        Item: { volumeId: S(volumeId), segmentId: S(segmentId), seq: N(seq), tombstone: { BOOL: true }, createdAt: S(new Date().toISOString()) },
        ConditionExpression: 'attribute_not_exists(segmentId)', // no record, and no tombstone: the id is free
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return 'tombstoned';
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return err.Item && isTombstone(err.Item) ? 'tombstoned' : 'committed';
  }
}

/** Every tombstone of a volume (GC deletes those the head has passed; a volume's reclaim, all). */
export async function* listSegmentTombstones(volumeId: string): AsyncGenerator<{ segmentId: string; seq: number }> {
  for await (const item of queryVolumeItems(config().segmentsTable, volumeId)) {
    if (isTombstone(item)) yield { segmentId: str(item.segmentId), seq: num(item.seq) };
  }
}

/**
 * Writes a segment record unless one exists (a rebuild restoring a lost record). Returns
 * whether it wrote. Never overwrites: an existing record may carry newer chunk locations.
 */
export async function putSegmentRecordIfAbsent(record: SegmentRecord): Promise<boolean> {
  try {
    await dynamo().send(
      new PutItemCommand({
        TableName: config().segmentsTable,
        Item: segmentToItem(record),
        ConditionExpression: 'attribute_not_exists(segmentId)',
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
 * The items of one volume in a table, in sort-key order, a page of queries at a time
 * (consistent reads). `sortKeyRange` narrows the sort key to `BETWEEN from AND to`.
 */
export async function* queryVolumeItems(
  table: string,
  volumeId: string,
  sortKeyRange?: { name: string; from: AttributeValue; to: AttributeValue },
): AsyncGenerator<Record<string, AttributeValue>> {
  let start: Record<string, AttributeValue> | undefined;
  for (let page = 0; ; page++) {
    invariant(page < QUERY_PAGES_MAX, () => `query of ${table} for volume ${volumeId} did not end after ${QUERY_PAGES_MAX} pages`);
    const out = await dynamo().send(
      new QueryCommand({
        TableName: table,
        KeyConditionExpression: sortKeyRange ? 'volumeId = :v AND #sk BETWEEN :from AND :to' : 'volumeId = :v',
        ...(sortKeyRange ? { ExpressionAttributeNames: { '#sk': sortKeyRange.name } } : {}),
        ExpressionAttributeValues: { ':v': S(volumeId), ...(sortKeyRange ? { ':from': sortKeyRange.from, ':to': sortKeyRange.to } : {}) },
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

/** Every segment record of a volume, in sequence order, a page of queries at a time. */
export async function* listSegmentRecords(volumeId: string): AsyncGenerator<SegmentRecord> {
  for await (const item of queryVolumeItems(config().segmentsTable, volumeId)) if (!isTombstone(item)) yield itemToSegment(item);
}

/** Every page of a volume, in page order. */
export async function* listPages(volume: VolumeRecord): AsyncGenerator<PageRecord> {
  for await (const item of queryVolumeItems(config().pagesTable, volume.volumeId)) yield itemToPage(item, volume.pageBlocks);
}

/** Deletes items by key, 25 at a time, retrying unprocessed ones (bounded). */
export async function deleteItems(table: 'pages' | 'segments', keys: Record<string, AttributeValue>[]): Promise<void> {
  const name = table === 'pages' ? config().pagesTable : config().segmentsTable;
  for (let i = 0; i < keys.length; i += 25) {
    let pending = keys.slice(i, i + 25).map((Key) => ({ DeleteRequest: { Key } }));
    for (let attempt = 0; pending.length > 0; attempt++) {
      if (attempt >= UNPROCESSED_RETRY_MAX) throw unprocessedAfterRetries('BatchWriteItem', [name], attempt);
      if (attempt > 0) await sleep(Math.min(1000, 20 * 2 ** attempt));
      const out = await dynamo().send(new BatchWriteItemCommand({ RequestItems: { [name]: pending }, ReturnConsumedCapacity: 'TOTAL' }));
      pending = (out.UnprocessedItems?.[name] ?? []) as typeof pending;
    }
  }
}

/** Every page item of a volume in stored form, in page order (consistent reads). */
export async function* listStoredPages(volumeId: string): AsyncGenerator<StoredPage> {
  for await (const item of queryVolumeItems(config().pagesTable, volumeId)) yield itemToStoredPage(item);
}

/** The stored pages among `pages` (consistent reads; missing pages are absent from the map). */
export async function getStoredPages(volumeId: string, pages: readonly number[]): Promise<Map<number, StoredPage>> {
  const items = await batchGet(
    config().pagesTable,
    pages.map((p) => pageKey(volumeId, p)),
  );
  return new Map(items.map((item) => [num(item.page), itemToStoredPage(item)]));
}

/** Committed segment records with `afterSeq < seq <= uptoSeq`, in sequence order. */
export async function listSegmentRecordsBetween(volumeId: string, afterSeq: number, uptoSeq: number): Promise<SegmentRecord[]> {
  const out: SegmentRecord[] = [];
  if (uptoSeq <= afterSeq) return out;
  // Segment ids start with their seq in 12 digits, so a key range is a seq range: from the
  // first id of seq afterSeq + 1 to the last of uptoSeq ('.' sorts after '-').
  const range = { name: 'segmentId', from: S(String(afterSeq + 1).padStart(12, '0')), to: S(`${String(uptoSeq).padStart(12, '0')}.`) };
  for await (const item of queryVolumeItems(config().segmentsTable, volumeId, range)) if (!isTombstone(item)) out.push(itemToSegment(item));
  return out;
}

/**
 * Deletes a segment record if its locations are still `locations` (the chunks the caller
 * deleted). Returns the record as it is when they differ (an evacuation moved a chunk), null
 * when deleted or already gone.
 */
export async function deleteSegmentRecordIf(volumeId: string, segmentId: string, locations: readonly ChunkLocation[]): Promise<SegmentRecord | null> {
  try {
    await dynamo().send(
      new DeleteItemCommand({
        TableName: config().segmentsTable,
        Key: { volumeId: S(volumeId), segmentId: S(segmentId) },
        // The chunks deleted were the ones the record names; a moved chunk would be left behind.
        ConditionExpression: 'attribute_not_exists(segmentId) OR locations = :deleted',
        ExpressionAttributeValues: { ':deleted': locationsToAttribute(locations) },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return null;
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return err.Item && !isTombstone(err.Item) ? itemToSegment(err.Item) : null;
  }
}

/** Deletes page items of a volume (batches of 25, unprocessed ones retried). */
export async function deletePages(volumeId: string, pages: readonly number[]): Promise<void> {
  await deleteItems(
    'pages',
    pages.map((p) => pageKey(volumeId, p)),
  );
}

/** Deletes segment records of a volume (batches of 25, unprocessed ones retried). */
export async function deleteSegmentRecords(volumeId: string, segmentIds: readonly string[]): Promise<void> {
  await deleteItems(
    'segments',
    segmentIds.map((id) => segmentKey(volumeId, id)),
  );
}
