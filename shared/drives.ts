/**
 * The drive registry: one DynamoDB item per drive (a key prefix in a sled bucket) with its
 * state, capacity budget, usage and service load. S3 has no capacity limit, so a drive's
 * capacity is a budget the operator sets (default 1 TiB); usage is what Sledge accounts to it.
 */
import { type AttributeValue, PutItemCommand, ScanCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import { dynamo } from './aws.ts';
import { config } from './config.ts';
import { DRIVES_PER_SLED, driveName } from './sleds.ts';

export type DriveState = 'active' | 'spare' | 'retiring' | 'retired' | 'failed';
export const DEFAULT_DRIVE_CAPACITY_BYTES = 1024 ** 4;

export interface DriveRecord {
  driveId: string;
  sled: string;
  sledIndex: number;
  drive: string;
  state: DriveState;
  capacityBytes: number;
  usedBytes: number;
  /** How much normal service leans on this drive (recent chunk traffic); lower is better for a dump. */
  serviceLoad: number;
  /** Whether a dump area is already prepared on it (no preparation needed before a dump). */
  dumpPrepared: boolean;
  /** The dump being written to it now, if any. */
  dumpInProgress?: string;
  dumps: Record<string, DumpAttributes>;
}

/** What a drive item says about a dump written to it (seed 001: the "coredump attributes"). */
export interface DumpAttributes {
  state: 'in-progress' | 'complete' | 'failed';
  volumeId: string;
  head: string;
  key: string;
  sizeBytes: number;
  startedAt: string;
  completedAt?: string;
}

const S = (s: string): AttributeValue => ({ S: s });
const N = (n: number): AttributeValue => ({ N: String(n) });

export function driveId(bucket: string, drive: string): string {
  return `${bucket}/${drive}`;
}

export function dumpToAttribute(d: DumpAttributes): AttributeValue {
  const m: Record<string, AttributeValue> = {
    state: S(d.state),
    volumeId: S(d.volumeId),
    head: S(d.head),
    key: S(d.key),
    sizeBytes: N(d.sizeBytes),
    startedAt: S(d.startedAt),
  };
  if (d.completedAt) m.completedAt = S(d.completedAt);
  return { M: m };
}

function itemToDrive(item: Record<string, AttributeValue>): DriveRecord {
  const dumps: Record<string, DumpAttributes> = {};
  for (const [id, a] of Object.entries(item.dumps?.M ?? {})) {
    const m = a.M ?? {};
    const d: DumpAttributes = {
      state: (m.state?.S ?? 'failed') as DumpAttributes['state'],
      volumeId: m.volumeId?.S ?? '',
      head: m.head?.S ?? '',
      key: m.key?.S ?? '',
      sizeBytes: Number(m.sizeBytes?.N ?? 0),
      startedAt: m.startedAt?.S ?? '',
    };
    if (m.completedAt?.S) d.completedAt = m.completedAt.S;
    dumps[id] = d;
  }
  const rec: DriveRecord = {
    driveId: item.driveId?.S ?? '',
    sled: item.sled?.S ?? '',
    sledIndex: Number(item.sledIndex?.N ?? 0),
    drive: item.drive?.S ?? '',
    state: (item.state?.S ?? 'active') as DriveState,
    capacityBytes: Number(item.capacityBytes?.N ?? DEFAULT_DRIVE_CAPACITY_BYTES),
    usedBytes: Number(item.usedBytes?.N ?? 0),
    serviceLoad: Number(item.serviceLoad?.N ?? 0),
    dumpPrepared: item.dumpPrepared?.BOOL ?? false,
    dumps,
  };
  if (item.dumpInProgress?.S) rec.dumpInProgress = item.dumpInProgress.S;
  return rec;
}

/** Adds registry items for drives that have none (idempotent: existing items are kept). */
export async function ensureDriveRegistry(): Promise<void> {
  const buckets = config().sledBuckets;
  await Promise.all(
    buckets.flatMap((bucket, sledIndex) =>
      Array.from({ length: DRIVES_PER_SLED }, async (_, d) => {
        try {
          await dynamo().send(
            new PutItemCommand({
              TableName: config().drivesTable,
              Item: {
                driveId: S(driveId(bucket, driveName(d))),
                sled: S(bucket),
                sledIndex: N(sledIndex),
                drive: S(driveName(d)),
                state: S('active'),
                capacityBytes: N(DEFAULT_DRIVE_CAPACITY_BYTES),
                usedBytes: N(0),
                serviceLoad: N(0),
                dumpPrepared: { BOOL: false },
                dumps: { M: {} },
              },
              ConditionExpression: 'attribute_not_exists(driveId)', // never reset a drive that exists
            }),
          );
        } catch (err) {
          if ((err as { name?: string }).name !== 'ConditionalCheckFailedException') throw err;
        }
      }),
    ),
  );
}

let registryReady = false;

/** Every drive in the registry, creating missing items first (once per process). */
export async function listDrives(): Promise<DriveRecord[]> {
  if (!registryReady) {
    await ensureDriveRegistry();
    registryReady = true;
  }
  const out: DriveRecord[] = [];
  let start: Record<string, AttributeValue> | undefined;
  for (let page = 0; page < 1000; page++) {
    const res = await dynamo().send(new ScanCommand({ TableName: config().drivesTable, ExclusiveStartKey: start, ConsistentRead: true }));
    out.push(...(res.Items ?? []).map(itemToDrive));
    start = res.LastEvaluatedKey;
    if (!start) break;
  }
  return out.sort((a, b) => a.driveId.localeCompare(b.driveId));
}

/** Sets registry attributes of one drive (operators and tests describe drives this way). */
export async function updateDrive(id: string, attrs: Partial<Pick<DriveRecord, 'state' | 'capacityBytes' | 'usedBytes' | 'serviceLoad' | 'dumpPrepared'>>): Promise<void> {
  const names: Record<string, string> = {};
  const values: Record<string, AttributeValue> = {};
  const sets = Object.entries(attrs).map(([k, v], i) => {
    names[`#k${i}`] = k;
    values[`:v${i}`] = typeof v === 'boolean' ? { BOOL: v } : typeof v === 'number' ? N(v) : S(String(v));
    return `#k${i} = :v${i}`;
  });
  if (sets.length === 0) return;
  await dynamo().send(
    new UpdateItemCommand({
      TableName: config().drivesTable,
      Key: { driveId: S(id) },
      UpdateExpression: `SET ${sets.join(', ')}`,
      ConditionExpression: 'attribute_exists(driveId)', // only drives in the registry
      ExpressionAttributeNames: names,
      ExpressionAttributeValues: values,
    }),
  );
}
