/**
 * DynamoDB capacity units computed from the items a request writes or a response returns,
 * by DynamoDB's published rules (item size = attribute names + values; reads are charged per
 * 4 KB, halved when eventually consistent; writes per 1 KB; transactions double both).
 *
 * Used by the request-counting middleware so that benchmarks report the units a request would
 * cost on AWS, on any endpoint: local emulators report fixed placeholder numbers instead.
 */
import type { AttributeValue } from '@aws-sdk/client-dynamodb';

/** Size in bytes of one attribute value, as DynamoDB bills it. */
export function valueSize(v: AttributeValue): number {
  if (v.S !== undefined) return Buffer.byteLength(v.S, 'utf8');
  if (v.N !== undefined) {
    // Numbers: about one byte per two significant digits, plus one.
    const digits = v.N.replace(/^-/, '').replace(/\./, '').replace(/^0+/, '').replace(/0+$/, '').length;
    return Math.ceil(Math.max(1, digits) / 2) + 1;
  }
  if (v.B !== undefined) return v.B.length;
  if (v.BOOL !== undefined || v.NULL !== undefined) return 1;
  if (v.L !== undefined) return 3 + v.L.reduce((n, x) => n + 1 + valueSize(x), 0);
  if (v.M !== undefined) return 3 + Object.entries(v.M).reduce((n, [k, x]) => n + 1 + Buffer.byteLength(k) + valueSize(x), 0);
  if (v.SS !== undefined) return v.SS.reduce((n, s) => n + Buffer.byteLength(s), 0);
  if (v.NS !== undefined) return v.NS.reduce((n, s) => n + valueSize({ N: s }), 0);
  if (v.BS !== undefined) return v.BS.reduce((n, b) => n + b.length, 0);
  return 0;
}

export function itemSize(item: Record<string, AttributeValue> | undefined): number {
  if (!item) return 0;
  return Object.entries(item).reduce((n, [k, v]) => n + Buffer.byteLength(k) + valueSize(v), 0);
}

const readUnits = (bytes: number, consistent: boolean) => Math.max(1, Math.ceil(bytes / 4096)) * (consistent ? 1 : 0.5);
const writeUnits = (bytes: number) => Math.max(1, Math.ceil(bytes / 1024));

type Input = Record<string, any>;
type Output = Record<string, any>;

/** The values an update expression sets (condition-only values are not stored, so not billed). */
function setValues(updateExpression: string | undefined, values: Record<string, AttributeValue> | undefined): Record<string, AttributeValue> {
  const used = new Set((updateExpression ?? '').match(/:[A-Za-z0-9_]+/g) ?? []);
  return Object.fromEntries(Object.entries(values ?? {}).filter(([k]) => used.has(k)));
}

/**
 * Units for one successful request. For an update, the written item size is estimated from the
 * key and the new values (exact for the small fixed-shape items Sledge updates, which stay
 * under 1 KB); for a put, from the item written.
 */
export function capacityUnits(operation: string, input: Input, output: Output): { read: number; write: number; writeBy?: Record<string, number> } {
  switch (operation) {
    case 'GetItem':
      return { read: output.Item ? readUnits(itemSize(output.Item), !!input.ConsistentRead) : readUnits(0, !!input.ConsistentRead), write: 0 };
    case 'BatchGetItem': {
      let read = 0;
      for (const [table, items] of Object.entries(output.Responses ?? {})) {
        const consistent = !!input.RequestItems?.[table]?.ConsistentRead;
        for (const item of items as Record<string, AttributeValue>[]) read += readUnits(itemSize(item), consistent);
      }
      return { read, write: 0 };
    }
    case 'Query':
    case 'Scan': {
      const bytes = (output.Items ?? []).reduce((n: number, i: Record<string, AttributeValue>) => n + itemSize(i), 0);
      return { read: readUnits(bytes, !!input.ConsistentRead), write: 0 };
    }
    case 'PutItem': {
      const write = writeUnits(itemSize(input.Item));
      return { read: 0, write, writeBy: { [`PutItem ${input.TableName}`]: write } };
    }
    case 'UpdateItem':
      return {
        read: 0,
        write: writeUnits(
          output.Attributes ? itemSize(output.Attributes) : itemSize(input.Key) + itemSize(setValues(input.UpdateExpression, input.ExpressionAttributeValues)),
        ),
      };
    case 'DeleteItem':
      return { read: 0, write: writeUnits(itemSize(input.Key)) };
    case 'BatchWriteItem': {
      let write = 0;
      for (const reqs of Object.values(input.RequestItems ?? {})) {
        for (const r of reqs as Array<{ PutRequest?: { Item: Record<string, AttributeValue> }; DeleteRequest?: { Key: Record<string, AttributeValue> } }>) {
          write += writeUnits(itemSize(r.PutRequest?.Item ?? r.DeleteRequest?.Key));
        }
      }
      return { read: 0, write };
    }
    case 'TransactWriteItems': {
      let write = 0;
      const writeBy: Record<string, number> = {};
      for (const t of input.TransactItems ?? []) {
        let units = 0;
        let what = '';
        if (t.Put) [units, what] = [2 * writeUnits(itemSize(t.Put.Item)), `Put ${t.Put.TableName}`];
        else if (t.Update)
          [units, what] = [
            2 * writeUnits(itemSize(t.Update.Key) + itemSize(setValues(t.Update.UpdateExpression, t.Update.ExpressionAttributeValues))),
            `Update ${t.Update.TableName}`,
          ];
        else if (t.Delete) [units, what] = [2 * writeUnits(itemSize(t.Delete.Key)), `Delete ${t.Delete.TableName}`];
        else if (t.ConditionCheck) [units, what] = [2 * writeUnits(itemSize(t.ConditionCheck.Key)), `ConditionCheck ${t.ConditionCheck.TableName}`];
        write += units;
        const key = `TransactWriteItems ${what}`;
        writeBy[key] = (writeBy[key] ?? 0) + units;
      }
      return { read: 0, write, writeBy };
    }
    default:
      return { read: 0, write: 0 };
  }
}
