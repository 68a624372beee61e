/**
 * The bundled local endpoint (local/moto-server.py) writes the answers of DynamoDB item reads
 * itself instead of through moto's serializer (its docstring, point 7), and accounts CPU per
 * operation (point 8). Through the AWS SDK, as Sledge reads them: every attribute type comes
 * back exactly as written, from each item read, and the accounting names each operation.
 */
import { randomBytes } from 'node:crypto';
import {
  BatchGetItemCommand,
  CreateTableCommand,
  DeleteTableCommand,
  DynamoDBClient,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  ScanCommand,
  TransactGetItemsCommand,
  type AttributeValue,
} from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';

let endpointUrl: string;
let ddb: DynamoDBClient;
const table = `sledge-endpoint-answers-${Date.now().toString(36)}`;

/** An item of every attribute type DynamoDB has, with non-ASCII text and binary of every byte value. */
function itemOf(page: number): Record<string, AttributeValue> {
  return {
    volumeId: { S: 'vol-endpoint-answers' },
    page: { N: String(page) },
    version: { N: '1234567890123' },
    fraction: { N: '-2.5e-3' },
    pg: { B: Uint8Array.from({ length: 256 }, (_, i) => (i + page) % 256) },
    blobs: { BS: [randomBytes(40), randomBytes(7)] },
    tags: { SS: ['a', 'é', '雪'] },
    numbers: { NS: ['1', '2.5'] },
    nested: { M: { none: { NULL: true }, no: { BOOL: false }, list: { L: [{ S: 'x' }, { N: '7' }, { B: randomBytes(3) }] } } },
  };
}

/** Items compared as the SDK gives them back (binary as bytes, sets in any order). */
function normal(item: Record<string, AttributeValue> | undefined): unknown {
  if (item === undefined) return undefined;
  return JSON.parse(
    JSON.stringify(item, (_, v) => {
      if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
      if (v && typeof v === 'object' && v.type === 'Buffer' && Array.isArray(v.data)) return Buffer.from(v.data).toString('base64');
      if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return [...v].sort();
      return v;
    }),
  );
}

async function operations(): Promise<Record<string, { requests: number; cpuSeconds: number }>> {
  const r = await fetch(`${endpointUrl}/_sledge/endpoint`);
  expect(r.status, 'the local endpoint must be local/moto-server.py').toBe(200);
  const { cpuByOperation } = (await r.json()) as { cpuByOperation?: Record<string, { requests: number; cpuSeconds: number }> };
  expect(cpuByOperation, "the local endpoint must be this checkout's local/moto-server.py, which accounts CPU per operation").toBeDefined();
  return cpuByOperation!;
}

const items = [0, 1, 2].map(itemOf);

beforeAll(async () => {
  endpointUrl = inject('endpointUrl');
  ddb = new DynamoDBClient({ endpoint: endpointUrl, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } });
  await ddb.send(
    new CreateTableCommand({
      TableName: table,
      KeySchema: [
        { AttributeName: 'volumeId', KeyType: 'HASH' },
        { AttributeName: 'page', KeyType: 'RANGE' },
      ],
      AttributeDefinitions: [
        { AttributeName: 'volumeId', AttributeType: 'S' },
        { AttributeName: 'page', AttributeType: 'N' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
    }),
  );
  for (const item of items) await ddb.send(new PutItemCommand({ TableName: table, Item: item }));
});

afterAll(async () => {
  await ddb.send(new DeleteTableCommand({ TableName: table }));
  ddb.destroy();
});

describe('the local endpoint', () => {
  const key = (page: number) => ({ volumeId: items[0]!.volumeId!, page: { N: String(page) } });

  it('gives back every attribute type exactly as written, from each item read', async () => {
    const before = await operations();
    const got = await ddb.send(new GetItemCommand({ TableName: table, Key: key(1), ConsistentRead: true }));
    expect(normal(got.Item)).toEqual(normal(items[1]));
    expect((await ddb.send(new GetItemCommand({ TableName: table, Key: key(9) }))).Item, 'a missing item').toBeUndefined();

    const batch = await ddb.send(new BatchGetItemCommand({ RequestItems: { [table]: { Keys: [key(0), key(2), key(9)], ConsistentRead: true } } }));
    const byPage = (list: Array<Record<string, AttributeValue>> | undefined) => [...(list ?? [])].sort((a, b) => Number(a.page!.N) - Number(b.page!.N)).map(normal);
    expect(byPage(batch.Responses?.[table])).toEqual([normal(items[0]), normal(items[2])]);
    expect(batch.UnprocessedKeys ?? {}).toEqual({});

    const q = await ddb.send(
      new QueryCommand({ TableName: table, KeyConditionExpression: 'volumeId = :v', ExpressionAttributeValues: { ':v': items[0]!.volumeId! }, Limit: 2, ConsistentRead: true }),
    );
    expect([q.Count, q.ScannedCount]).toEqual([2, 2]);
    expect(q.Items!.map(normal)).toEqual([normal(items[0]), normal(items[1])]);
    expect(q.LastEvaluatedKey).toEqual(key(1));
    const counted = await ddb.send(new QueryCommand({ TableName: table, KeyConditionExpression: 'volumeId = :v', ExpressionAttributeValues: { ':v': items[0]!.volumeId! }, Select: 'COUNT' }));
    expect([counted.Count, counted.Items]).toEqual([3, undefined]);

    const scan = await ddb.send(new ScanCommand({ TableName: table, ConsistentRead: true }));
    expect(byPage(scan.Items)).toEqual(items.map(normal));

    const tx = await ddb.send(new TransactGetItemsCommand({ TransactItems: [{ Get: { TableName: table, Key: key(2) } }, { Get: { TableName: table, Key: key(9) } }] }));
    expect(tx.Responses!.map((r) => normal(r.Item))).toEqual([normal(items[2]), undefined]);

    // The endpoint accounted each of these operations, with some CPU each. A request is
    // accounted once its answer is written, which can be just after the client has read it: the
    // last one may take a moment to show (at most 5 s here). The control plane shares this
    // endpoint, so its own requests of the same kinds may add to the counts.
    const expected: Record<string, number> = { GetItem: 2, BatchGetItem: 1, Query: 2, Scan: 1, TransactGetItems: 1 };
    const served = (now: Awaited<ReturnType<typeof operations>>, op: string) => (now[`DynamoDB:${op}`]?.requests ?? 0) - (before[`DynamoDB:${op}`]?.requests ?? 0);
    let after = await operations();
    for (let i = 0; i < 100 && Object.entries(expected).some(([op, n]) => served(after, op) < n); i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      after = await operations();
    }
    for (const [op, n] of Object.entries(expected)) {
      const name = `DynamoDB:${op}`;
      expect(served(after, op), name).toBeGreaterThanOrEqual(n);
      expect(after[name]!.cpuSeconds, name).toBeGreaterThan(before[name]?.cpuSeconds ?? 0);
    }
  });
});
