/**
 * The catalog's listings (docs/backup.md, "Listing without a volume"): one small item per backup,
 * group backup, restore and group restore in a partition of its kind, so that `GET /backups`,
 * `GET /group-backups`, `GET /restores` and `GET /group-restores` read those partitions and
 * then the records, instead of scanning the catalog (whose pack records hold every block's CRC).
 * Those lists are paged as `GET /volumes` is (`limit`, `next`; shared/core/paging.ts): `readPage` reads one page.
 */
import { BatchGetItemCommand, DeleteItemCommand, QueryCommand, TransactWriteItemsCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
import type { Page } from '../core/paging.ts';
import { vaultConfig } from '../core/vault-config.ts';
import { vaultDynamo } from '../aws/vault-clients.ts';

type Item = Record<string, AttributeValue>;
export type ListedKind = 'backup' | 'group-backup' | 'restore' | 'group-restore';

const table = () => vaultConfig().table;
const listingKey = (kind: ListedKind, id: string): Item => ({ pk: { S: `list#${kind}` }, sk: { S: id } });
const BATCH_ROUNDS_MAX = 20;

/**
 * Puts a new record (condition: absent) and its listing item in one transaction. Throws
 * ConditionalCheckFailedException, as a conditional put would, when the record exists.
 */
export async function putListed(record: Item, kind: ListedKind, id: string): Promise<void> {
  try {
    await vaultDynamo().send(
      new TransactWriteItemsCommand({
        TransactItems: [
          { Put: { TableName: table(), Item: record, ConditionExpression: 'attribute_not_exists(pk)' } },
          { Put: { TableName: table(), Item: listingKey(kind, id) } },
        ],
      }),
    );
  } catch (err) {
    const reasons = (err as { CancellationReasons?: Array<{ Code?: string }> }).CancellationReasons;
    if (reasons?.[0]?.Code === 'ConditionalCheckFailed') {
      const refused = new Error(`${kind} ${id} exists already`);
      refused.name = 'ConditionalCheckFailedException';
      throw refused;
    }
    throw err;
  }
}

/** The id a listing item names. */
export const listedId = (item: Item): string => item.sk!.S!;

/** Removes a listing item (after its record: a listing left behind by a crash lists nothing, its record being gone). */
export async function removeListing(kind: ListedKind, id: string): Promise<void> {
  await vaultDynamo().send(new DeleteItemCommand({ TableName: table(), Key: listingKey(kind, id) }));
}

/**
 * Every item of the catalog partition `pk` (whose sort key starts with `skPrefix`, when given),
 * in sort-key order: one consistent Query, paged.
 */
export async function queryPartition(pk: string, skPrefix?: string): Promise<Item[]> {
  const out: Item[] = [];
  let start: Item | undefined;
  do {
    const page = await vaultDynamo().send(
      new QueryCommand({
        TableName: table(),
        ConsistentRead: true,
        KeyConditionExpression: skPrefix === undefined ? 'pk = :pk' : 'pk = :pk AND begins_with(sk, :prefix)',
        ExpressionAttributeValues: { ':pk': { S: pk }, ...(skPrefix === undefined ? {} : { ':prefix': { S: skPrefix } }) },
        ...(start ? { ExclusiveStartKey: start } : {}),
      }),
    );
    out.push(...(page.Items ?? []));
    start = page.LastEvaluatedKey;
  } while (start);
  return out;
}

/** The items at `keys` (consistent reads, 100 per request); missing ones are left out. */
export async function getItems(keys: readonly Item[]): Promise<Item[]> {
  const out: Item[] = [];
  for (let i = 0; i < keys.length; i += 100) {
    let pending: Item[] = keys.slice(i, i + 100);
    for (let round = 0; pending.length > 0; round++) {
      if (round >= BATCH_ROUNDS_MAX) throw new Error(`the vault left ${pending.length} keys unread after ${round} BatchGetItem rounds`);
      const res = await vaultDynamo().send(new BatchGetItemCommand({ RequestItems: { [table()]: { Keys: pending, ConsistentRead: true } } }));
      out.push(...(res.Responses?.[table()] ?? []));
      pending = (res.UnprocessedKeys?.[table()]?.Keys as Item[] | undefined) ?? [];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Pages: `limit` and `next` are read as every list reads them (shared/core/paging.ts)

/** A page reads at most this many entries, whatever its filter keeps; it then ends early, with `next`. */
const PAGE_READ_MAX = 10_000;
/** The most items one Query of a page asks for. */
const PAGE_QUERY_MAX = 1000;

/** Where a page reads: a listing partition (`list#<kind>`, whose sort keys are the ids) or a partition of records. */
export interface PageSource<T> {
  pk: string;
  /** What the sort keys hold before the id (empty in a listing partition). */
  skPrefix: string;
  /** The records of the items read, in any order (a listing item whose record is gone gives none). */
  records(items: Item[]): Promise<T[]>;
  idOf(record: T): string;
}

/**
 * One page of a list in id order: the records after `start` that `keep` accepts, at most `limit`,
 * and `next` when more may follow: the id of the page's last entry, or, when the page ends
 * early at PAGE_READ_MAX entries read (a filter that keeps few), of the last one read.
 */
export async function readPage<T>(source: PageSource<T>, start: string | undefined, limit: number, keep: (record: T) => boolean): Promise<Page<T>> {
  const kept: T[] = [];
  const byId = (a: T, b: T) => (source.idOf(a) < source.idOf(b) ? -1 : 1);
  let after = start;
  let read = 0;
  // One more than the page: whether it exists says whether the list goes on.
  let batch = limit + 1;
  for (;;) {
    const out = await vaultDynamo().send(
      new QueryCommand({
        TableName: table(),
        ConsistentRead: true,
        KeyConditionExpression: source.skPrefix === '' ? 'pk = :pk' : 'pk = :pk AND begins_with(sk, :prefix)',
        ExpressionAttributeValues: { ':pk': { S: source.pk }, ...(source.skPrefix === '' ? {} : { ':prefix': { S: source.skPrefix } }) },
        // The entry `after` names need not exist any more (a deleted backup): the Query starts after its place.
        ...(after === undefined ? {} : { ExclusiveStartKey: { pk: { S: source.pk }, sk: { S: source.skPrefix + after } } }),
        Limit: batch,
      }),
    );
    const items = out.Items ?? [];
    read += items.length;
    for (const record of (await source.records(items)).sort(byId)) {
      if (!keep(record)) continue;
      if (kept.length === limit) return { items: kept, next: source.idOf(kept[limit - 1]!) };
      kept.push(record);
    }
    if (!out.LastEvaluatedKey) return { items: kept };
    after = out.LastEvaluatedKey.sk!.S!.slice(source.skPrefix.length);
    if (read >= PAGE_READ_MAX) return { items: kept, next: after };
    batch = Math.min(PAGE_QUERY_MAX, batch * 2);
  }
}
