/**
 * DynamoDB capacity units as the request counter computes them (shared/aws/capacity.ts): the
 * figures every cost row of `npm run bench` rests on, by DynamoDB's published rules (item size
 * = attribute names + values; writes per 1 KB, reads per 4 KB, halved when eventually
 * consistent; transactions double).
 */
import { describe, expect, it } from 'vitest';
import { capacityUnits, itemSize, valueSize } from '#shared/aws/capacity.ts';

/** An item of exactly `bytes` bytes: key `pk` = 'k' (3 bytes) and a binary `b` of the rest. */
function itemOf(bytes: number) {
  return { pk: { S: 'k' }, b: { B: new Uint8Array(bytes - 3 - 1) } };
}

describe('capacity units', () => {
  it('sizes values and items as DynamoDB bills them', () => {
    expect(valueSize({ S: 'héllo' })).toBe(6);
    expect(valueSize({ B: new Uint8Array(10) })).toBe(10);
    expect(valueSize({ N: '12345' })).toBe(4);
    expect(valueSize({ BOOL: true })).toBe(1);
    expect(valueSize({ L: [{ S: 'ab' }, { N: '1' }] })).toBe(3 + (1 + 2) + (1 + 2));
    expect(itemSize(itemOf(1024))).toBe(1024);
    expect(itemSize(undefined)).toBe(0);
  });

  it('bills writes per started KB, with at least one unit', () => {
    expect(capacityUnits('PutItem', { TableName: 'T', Item: itemOf(1024) }, {}).write).toBe(1);
    expect(capacityUnits('PutItem', { TableName: 'T', Item: itemOf(1025) }, {}).write).toBe(2);
    expect(capacityUnits('DeleteItem', { TableName: 'T', Key: { pk: { S: 'k' } } }, {}).write).toBe(1);
  });

  it('bills reads per started 4 KB, half when eventually consistent', () => {
    const out = { Item: itemOf(4097) };
    expect(capacityUnits('GetItem', { TableName: 'T', ConsistentRead: true }, out).read).toBe(2);
    expect(capacityUnits('GetItem', { TableName: 'T' }, out).read).toBe(1);
    expect(capacityUnits('Query', { TableName: 'T' }, { Items: [itemOf(3000), itemOf(3000)] }).read).toBe(1);
  });

  it('doubles every item of a transaction and says what wrote each unit, summing to the total', () => {
    const units = capacityUnits(
      'TransactWriteItems',
      {
        TransactItems: [
          { Put: { TableName: 'Segments', Item: itemOf(3000) } },
          { Put: { TableName: 'Pages', Item: itemOf(500) } },
          { Put: { TableName: 'Pages', Item: itemOf(1500) } },
          { Update: { TableName: 'Volumes', Key: { pk: { S: 'k' } }, UpdateExpression: 'SET h = :h', ExpressionAttributeValues: { ':h': { N: '7' }, ':unused': { B: new Uint8Array(5000) } } } },
          { ConditionCheck: { TableName: 'Volumes', Key: { pk: { S: 'k' } } } },
        ],
      },
      {},
    );
    expect(units.writeBy).toEqual({
      'TransactWriteItems Put Segments': 2 * 3,
      'TransactWriteItems Put Pages': 2 * 1 + 2 * 2,
      // Only the values the update sets are stored; a value named only by a condition is not billed.
      'TransactWriteItems Update Volumes': 2 * 1,
      'TransactWriteItems ConditionCheck Volumes': 2 * 1,
    });
    expect(units.write).toBe(Object.values(units.writeBy!).reduce((a, b) => a + b, 0));
    expect(capacityUnits('PutItem', { TableName: 'Pages', Item: itemOf(2048) }, {}).writeBy).toEqual({ 'PutItem Pages': 2 });
  });
});
