import { BatchWriteItemCommand, GetItemCommand, PutItemCommand, TransactWriteItemsCommand } from '@aws-sdk/client-dynamodb';
import { beforeAll, describe, expect, it } from 'vitest';
import { dynamo } from '#shared/aws/clients.ts';
import { config } from '#shared/core/config.ts';
import { useSledgeEnv } from './helpers.ts';

/**
 * The commit protocol relies on DynamoDB transactions being atomic and isolated. These tests
 * check that the local endpoint gives both (moto alone does not under concurrency; see
 * local/moto-server.py), so the protocol tests above test the protocol, not the emulator.
 */
beforeAll(() => {
  useSledgeEnv();
});

const S = (s: string) => ({ S: s });
const N = (n: number) => ({ N: String(n) });

async function getPage(volumeId: string, page: number) {
  const out = await dynamo().send(new GetItemCommand({ TableName: config().pagesTable, Key: { volumeId: S(volumeId), page: N(page) }, ConsistentRead: true }));
  return out.Item;
}

describe('DynamoDB transactions on the local endpoint', () => {
  it('a cancelled transaction changes nothing, even items listed after the failed condition', async () => {
    const vol = `txn-${Date.now()}`;
    await dynamo().send(new PutItemCommand({ TableName: config().pagesTable, Item: { volumeId: S(vol), page: N(0), version: N(1) } }));
    await expect(
      dynamo().send(
        new TransactWriteItemsCommand({
          TransactItems: [
            { ConditionCheck: { TableName: config().pagesTable, Key: { volumeId: S(vol), page: N(0) }, ConditionExpression: 'version = :v', ExpressionAttributeValues: { ':v': N(99) } } },
            { Put: { TableName: config().pagesTable, Item: { volumeId: S(vol), page: N(1), version: N(1) } } },
            { Update: { TableName: config().pagesTable, Key: { volumeId: S(vol), page: N(2) }, UpdateExpression: 'SET version = :one', ExpressionAttributeValues: { ':one': N(1) } } },
          ],
        }),
      ),
    ).rejects.toThrow(/cancel/i);
    expect((await getPage(vol, 0))?.version).toEqual(N(1));
    expect(await getPage(vol, 1)).toBeUndefined();
    expect(await getPage(vol, 2)).toBeUndefined();
  });

  it('concurrent transactions, half of them cancelled, keep every committed write', async () => {
    const vol = `txn-par-${Date.now()}`;
    // A table with some bulk widens the window in which an emulator that backs up and
    // restores whole tables can lose a concurrent commit (moto_server alone fails this test).
    const filler = Buffer.alloc(2048, 7);
    for (let b = 0; b < 40; b++) {
      await dynamo().send(
        new BatchWriteItemCommand({
          RequestItems: { [config().pagesTable]: Array.from({ length: 25 }, (_, j) => ({ PutRequest: { Item: { volumeId: S(`${vol}-filler`), page: N(b * 25 + j), ext: { B: filler } } } })) },
        }),
      );
    }
    const n = 48;
    const results = await Promise.allSettled(
      Array.from({ length: n }, (_, i) =>
        dynamo().send(
          new TransactWriteItemsCommand({
            TransactItems: [
              // Odd-numbered transactions fail their condition (the guard item never exists).
              ...(i % 2 === 1
                ? [{ ConditionCheck: { TableName: config().pagesTable, Key: { volumeId: S(vol), page: N(100_000) }, ConditionExpression: 'attribute_exists(version)' } }]
                : []),
              { Put: { TableName: config().pagesTable, Item: { volumeId: S(vol), page: N(i), version: N(i) } } },
            ],
          }),
        ),
      ),
    );
    for (let i = 0; i < n; i++) {
      expect(results[i]!.status, `transaction ${i}`).toBe(i % 2 === 0 ? 'fulfilled' : 'rejected');
      const item = await getPage(vol, i);
      if (i % 2 === 0) expect(item?.version, `committed page ${i}`).toEqual(N(i));
      else expect(item, `cancelled page ${i}`).toBeUndefined();
    }
  });
});
