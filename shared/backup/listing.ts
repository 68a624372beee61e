/**
 * The catalog's listings (docs/backup.md, "Listing without a volume"): one small item per backup,
 * group backup, restore and group restore in a partition of its kind, so that `GET /backups`,
 * `GET /group-backups`, `GET /restores` and `GET /group-restores` read those partitions and
 * then the records, instead of scanning the catalog (whose pack records hold every block's CRC).
 */
import { BatchGetItemCommand, DeleteItemCommand, QueryCommand, TransactWriteItemsCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
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

/** Removes a listing item (after its record: a listing left behind by a crash lists nothing, its record being gone). */
export async function removeListing(kind: ListedKind, id: string): Promise<void> {
  await vaultDynamo().send(new DeleteItemCommand({ TableName: table(), Key: listingKey(kind, id) }));
}

/** The ids listed for `kind`, in id order (one Query, paged). */
export async function listedIds(kind: ListedKind): Promise<string[]> {
  return (await queryPartition(`list#${kind}`)).map((item) => item.sk!.S!);
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
