/**
 * The folder's writes (docs/page-map.md, "Folding"): a page folded up to a seq, on the
 * condition that it is still the item the folder read, and the volume's folded point, which
 * only rises.
 */
import { type AttributeValue, PutItemCommand, TransactionCanceledException, TransactWriteItemsCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import { config } from '../../core/config.ts';
import { FOLDED_CREATES_MAX, type PageRecord } from '../../core/records.ts';
import { dynamo } from '../clients.ts';
import { N, S, conditionFailed, pageToItem } from './items.ts';

/**
 * Writes `folded` (with its `foldedTo`) if the page item is still `read` (null: it had none):
 * same version and same fold point, so a rebuild's page, or another folder's, is never
 * overwritten from a stale read. 'changed' when the item is not as read.
 *
 * A page the folder creates (it had no item) is put in one transaction with a check that the
 * volume still serves: 'stopped' when it does not. Without it, a folder whose step began before
 * the volume was deleted could create the item after the reclaim listed the pages, leaving a
 * stray item behind (docs/page-map.md, "Folding", the deletion row). A page that had an item
 * needs no check: its reclaim deletes it, and a write after that fails its version condition.
 */
export async function putFoldedPage(volumeId: string, pageBlocks: number, folded: PageRecord, read: PageRecord | null): Promise<FoldedPut> {
  const Item = pageToItem(volumeId, folded.page, folded.version, folded.extents, pageBlocks, folded.frozenTag, folded.foldedTo);
  if (read === null) return createFoldedItems(volumeId, [Item]);
  try {
    await dynamo().send(
      new PutItemCommand({
        TableName: config().pagesTable,
        Item,
        ConditionExpression: [
          'version = :version', // the page is the version folded onto
          read.foldedTo === undefined ? 'attribute_not_exists(foldedTo)' : 'foldedTo = :from', // at the fold point read
        ].join(' AND '),
        ExpressionAttributeValues: { ':version': N(read.version), ...(read.foldedTo === undefined ? {} : { ':from': N(read.foldedTo) }) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return 'written';
  } catch (err) {
    if (conditionFailed(err)) return 'changed';
    throw err;
  }
}

/** The outcome of a folded page write. */
export type FoldedPut = 'written' | 'changed' | 'stopped';

/**
 * Creates folded pages that had no item when read, all or none, in one transaction with one
 * check that the volume still serves (at most FOLDED_CREATES_MAX): a page's first write then
 * costs about what a commit's does (2 write units) instead of twice that. 'stopped' when the
 * volume no longer serves; 'changed' when any page got an item since it was read (or the
 * transaction met another on the same items): nothing is written, and the caller writes the
 * pages one by one, reading again those that changed.
 */
export async function createFoldedPages(volumeId: string, pageBlocks: number, pages: readonly PageRecord[]): Promise<FoldedPut> {
  if (pages.length === 0) return 'written';
  if (pages.length > FOLDED_CREATES_MAX) throw new RangeError(`${pages.length} folded pages in one transaction, max ${FOLDED_CREATES_MAX}`);
  return createFoldedItems(
    volumeId,
    pages.map((p) => pageToItem(volumeId, p.page, p.version, p.extents, pageBlocks, p.frozenTag, p.foldedTo)),
  );
}

async function createFoldedItems(volumeId: string, items: readonly Record<string, AttributeValue>[]): Promise<FoldedPut> {
  try {
    await dynamo().send(
      new TransactWriteItemsCommand({
        TransactItems: [
          {
            ConditionCheck: {
              TableName: config().volumesTable,
              Key: { volumeId: S(volumeId) },
              ConditionExpression: 'attribute_exists(volumeId) AND #state = :active', // the volume still serves
              ExpressionAttributeNames: { '#state': 'state' },
              ExpressionAttributeValues: { ':active': S('active') },
            },
          },
          // Each page had no item when read.
          ...items.map((Item) => ({ Put: { TableName: config().pagesTable, Item, ConditionExpression: 'attribute_not_exists(page)' } })),
        ],
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return 'written';
  } catch (err) {
    if (!(err instanceof TransactionCanceledException) && (err as { name?: string })?.name !== 'TransactionCanceledException') throw err;
    const reasons = (err as TransactionCanceledException).CancellationReasons ?? [];
    if (reasons[0]?.Code === 'ConditionalCheckFailed') return 'stopped';
    if (reasons.slice(1).some((r) => r.Code === 'ConditionalCheckFailed')) return 'changed';
    // A commit or another folder's transaction on the volume or a page at the same moment: read again and retry.
    if (reasons.some((r) => r.Code === 'TransactionConflict')) return 'changed';
    throw err;
  }
}

/** Raises the volume's folded point to `seq` (segment `segmentId`) while it serves; false when refused (already there, or not active). */
export async function advanceFoldedSeq(volumeId: string, seq: number, segmentId: string): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET foldedSeq = :seq, foldedSegmentId = :segment',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state = :active', // and serves (a rebuild sets the folded point itself when it lifts its fence)
          'foldedSeq < :seq', // and the folded point only rises
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':seq': N(seq), ':segment': S(segmentId), ':active': S('active') },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}
