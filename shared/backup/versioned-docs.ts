/**
 * Catalog records kept as one JSON document with a version (restores, group restores): changed
 * by optimistic concurrency, each write conditioned on the version it read.
 */
import { UpdateItemCommand, type AttributeValue } from '@aws-sdk/client-dynamodb';
import { vaultConfig } from '../core/vault-config.ts';
import { vaultDynamo } from '../aws/vault-clients.ts';

/**
 * Reads the record with `read`, lets `change` edit it, and writes it back under `Key` on
 * condition that its version is still the one read, until a write wins (or `change` returns
 * false: nothing to do). Returns the record as written, or as read when unchanged; null if absent.
 */
export async function changeVersionedDoc<T extends { version: number; updatedAt: string }>(
  what: string,
  Key: Record<string, AttributeValue>,
  read: () => Promise<T | null>,
  change: (doc: T) => boolean,
): Promise<T | null> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const record = await read();
    if (!record || !change(record)) return record;
    record.updatedAt = new Date().toISOString();
    const { version, ...doc } = record;
    try {
      await vaultDynamo().send(
        new UpdateItemCommand({
          TableName: vaultConfig().table,
          Key,
          UpdateExpression: 'SET #doc = :doc, #version = :next',
          ConditionExpression: '#version = :version',
          ExpressionAttributeNames: { '#doc': 'doc', '#version': 'version' },
          ExpressionAttributeValues: { ':doc': { S: JSON.stringify(doc) }, ':version': { N: String(version) }, ':next': { N: String(version + 1) } },
        }),
      );
      record.version = version + 1;
      return record;
    } catch (err) {
      if ((err as Error).name !== 'ConditionalCheckFailedException') throw err;
    }
  }
  throw new Error(`${what} kept changing under 20 updates in a row`);
}
