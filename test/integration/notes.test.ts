import { GetItemCommand } from '@aws-sdk/client-dynamodb';
import { beforeAll, describe, expect, it } from 'vitest';
import { dynamo } from '#shared/aws/clients.ts';
import { NOTE_TTL_SECONDS, dynamoNotes } from '#shared/aws/notes.ts';
import { config } from '#shared/core/config.ts';
import { useSledgeEnv } from './helpers.ts';

beforeAll(() => {
  useSledgeEnv();
});

describe('notes at the primary (job records, failure notes)', () => {
  it('carry an expiry that DynamoDB time to live deletes them by, renewed by each write', async () => {
    const key = { partition: `failure#test-${Date.now()}`, sort: '#note' };
    const expiresAt = async () => {
      const out = await dynamo().send(
        new GetItemCommand({ TableName: config().snapshotsTable, Key: { volumeId: { S: key.partition }, snapshotId: { S: key.sort } }, ConsistentRead: true }),
      );
      return Number(out.Item?.expiresAt?.N);
    };
    const before = Math.floor(Date.now() / 1000);
    await dynamoNotes.put(key, { error: 'first' });
    const first = await expiresAt();
    expect(first).toBeGreaterThanOrEqual(before + NOTE_TTL_SECONDS);
    expect(first).toBeLessThanOrEqual(Math.floor(Date.now() / 1000) + NOTE_TTL_SECONDS);
    expect(await dynamoNotes.get(key)).toEqual({ error: 'first' });
    await new Promise((r) => setTimeout(r, 1100));
    await dynamoNotes.put(key, { error: 'second' });
    expect(await expiresAt()).toBeGreaterThan(first);
    await dynamoNotes.delete(key);
    expect(await dynamoNotes.get(key)).toBeNull();
  });
});
