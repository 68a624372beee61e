/**
 * The folder's writes (docs/page-map.md, "Folding"): a page folded up to a seq, on the
 * condition that it is still the item the folder read, and the volume's folded point, which
 * only rises.
 */
import { PutItemCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import { config } from '../../core/config.ts';
import type { PageRecord } from '../../core/records.ts';
import { dynamo } from '../clients.ts';
import { N, S, conditionFailed, pageToItem } from './items.ts';

/**
 * Writes `folded` (with its `foldedTo`) if the page item is still `read` (null: it had none):
 * same version and same fold point, so a rebuild's page, or another folder's, is never
 * overwritten from a stale read. Returns false when refused.
 */
export async function putFoldedPage(volumeId: string, pageBlocks: number, folded: PageRecord, read: PageRecord | null): Promise<boolean> {
  const parts =
    read === null
      ? ['attribute_not_exists(page)'] // the page had no item when read
      : [
          'version = :version', // the page is the version folded onto
          read.foldedTo === undefined ? 'attribute_not_exists(foldedTo)' : 'foldedTo = :from', // at the fold point read
        ];
  const values = read === null ? {} : { ':version': N(read.version), ...(read.foldedTo === undefined ? {} : { ':from': N(read.foldedTo) }) };
  try {
    await dynamo().send(
      new PutItemCommand({
        TableName: config().pagesTable,
        Item: pageToItem(volumeId, folded.page, folded.version, folded.extents, pageBlocks, folded.frozenTag, folded.foldedTo),
        ConditionExpression: parts.join(' AND '),
        ...(Object.keys(values).length > 0 ? { ExpressionAttributeValues: values } : {}),
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
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
