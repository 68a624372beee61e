/**
 * The DynamoDB adapter for consistency groups (docs/consistency-groups.md): the group item and
 * group snapshot items in the Snapshots table under the group's id, membership (`groupId`) and
 * write barriers (`barrier`) on volume items, and the transactions of a group snapshot.
 */
import {
  type AttributeValue,
  DeleteItemCommand,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  TransactWriteItemsCommand,
  type TransactWriteItem,
  UpdateItemCommand,
} from '@aws-sdk/client-dynamodb';
import { config } from '../../core/config.ts';
import { invariant } from '../../core/errors.ts';
import type { SnapshotRecord, VolumeRecord, WriteBarrier } from '../../core/records.ts';
import type {
  GroupMemberSnapshot,
  GroupRecord,
  GroupSnapshotRecord,
  GroupSnapshotState,
  GroupStore,
  MemberRefusal,
  MembershipOutcome,
} from '../../core/groups.ts';
import { dynamo } from '../clients.ts';
import { N, S, conditionFailed, itemToVolume, num, str } from './items.ts';
import { batchGet } from './pages.ts';
import { cancellation, snapshotPointUpdate, snapshotToItem } from './snapshots.ts';
import { NO_LIVE_BARRIER } from './transactions.ts';

/** The sort key of a group's own item in its partition (group snapshot ids start with `gsnap-`). */
const GROUP_ITEM = '#group';
const GROUP_SNAPSHOT_PREFIX = 'gsnap-';
const QUERY_PAGES_MAX = 10_000;

function groupToItem(g: GroupRecord): Record<string, AttributeValue> {
  const item: Record<string, AttributeValue> = {
    volumeId: S(g.groupId),
    snapshotId: S(GROUP_ITEM),
    name: S(g.name),
    members: { L: g.members.map(S) },
    createdAt: S(g.createdAt),
    version: N(g.version),
  };
  if (g.owner !== undefined) item.owner = S(g.owner);
  return item;
}

function itemToGroup(item: Record<string, AttributeValue>): GroupRecord {
  const g: GroupRecord = {
    groupId: str(item.volumeId),
    name: str(item.name),
    members: (item.members?.L ?? []).map(str),
    createdAt: str(item.createdAt),
    version: num(item.version),
  };
  if (item.owner?.S !== undefined) g.owner = item.owner.S;
  return g;
}

function groupSnapshotToItem(g: GroupSnapshotRecord): Record<string, AttributeValue> {
  return {
    volumeId: S(g.groupId),
    snapshotId: S(g.groupSnapshotId),
    state: S(g.state),
    members: { L: g.members.map((m) => ({ M: { volumeId: S(m.volumeId), snapshotId: S(m.snapshotId), seq: N(m.seq) } })) },
    createdAt: S(g.createdAt),
    leaseExpiresAtMs: N(g.leaseExpiresAtMs),
  };
}

function itemToGroupSnapshot(item: Record<string, AttributeValue>): GroupSnapshotRecord {
  return {
    groupId: str(item.volumeId),
    groupSnapshotId: str(item.snapshotId),
    state: str(item.state) as GroupSnapshotState,
    members: (item.members?.L ?? []).map((m) => ({ volumeId: str(m.M!.volumeId), snapshotId: str(m.M!.snapshotId), seq: num(m.M!.seq) })),
    createdAt: str(item.createdAt),
    leaseExpiresAtMs: num(item.leaseExpiresAtMs),
  };
}

const groupKey = (groupId: string, sort: string) => ({ volumeId: S(groupId), snapshotId: S(sort) });

export async function getGroup(groupId: string): Promise<GroupRecord | null> {
  const out = await dynamo().send(
    new GetItemCommand({ TableName: config().snapshotsTable, Key: groupKey(groupId, GROUP_ITEM), ConsistentRead: true, ReturnConsumedCapacity: 'TOTAL' }),
  );
  return out.Item ? itemToGroup(out.Item) : null;
}

/** A member's volume item gains `groupId` while it exists, serves and is in no group. */
function joinItem(volumeId: string, groupId: string): TransactWriteItem {
  return {
    Update: {
      TableName: config().volumesTable,
      Key: { volumeId: S(volumeId) },
      UpdateExpression: 'SET groupId = :g',
      ConditionExpression: [
        'attribute_exists(volumeId)', // the volume exists
        '#state = :active', // and serves
        'attribute_not_exists(groupId)', // and is in no group yet
      ].join(' AND '),
      ExpressionAttributeNames: { '#state': 'state' },
      ExpressionAttributeValues: { ':g': S(groupId), ':active': S('active') },
      ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
    },
  };
}

function leaveItem(volumeId: string, groupId: string): TransactWriteItem {
  return {
    Update: {
      TableName: config().volumesTable,
      Key: { volumeId: S(volumeId) },
      UpdateExpression: 'REMOVE groupId',
      ConditionExpression: 'groupId = :g', // still in this group
      ExpressionAttributeValues: { ':g': S(groupId) },
      ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
    },
  };
}

async function membershipTransaction(items: TransactWriteItem[], volumeOf: (i: number) => string | undefined): Promise<MembershipOutcome> {
  invariant(items.length <= 100, 'a membership change fits one transaction');
  try {
    await dynamo().send(new TransactWriteItemsCommand({ TransactItems: items, ReturnConsumedCapacity: 'TOTAL' }));
    return { ok: true };
  } catch (err) {
    const reasons = cancellation(err);
    if (!reasons) throw err;
    for (let i = 0; i < reasons.length; i++) {
      if (reasons[i]?.Code !== 'ConditionalCheckFailed') continue;
      const volumeId = volumeOf(i);
      if (volumeId === undefined) return { ok: false, groupChanged: true };
      const item = reasons[i]!.Item;
      return { ok: false, volumeId, current: item?.volumeId ? itemToVolume(item) : null };
    }
    throw err;
  }
}

/** Puts a new group and sets `groupId` on every member, in one transaction. */
export async function createGroup(g: GroupRecord): Promise<MembershipOutcome> {
  const items: TransactWriteItem[] = [
    { Put: { TableName: config().snapshotsTable, Item: groupToItem(g), ConditionExpression: 'attribute_not_exists(snapshotId)' } },
    ...g.members.map((v) => joinItem(v, g.groupId)),
  ];
  return membershipTransaction(items, (i) => (i === 0 ? undefined : g.members[i - 1]));
}

/** Replaces the member list of group `g` (at `g.version`) by `members`: joins `add`, releases `remove`. */
export async function changeGroupMembers(g: GroupRecord, members: string[], add: string[], remove: string[]): Promise<MembershipOutcome> {
  const items: TransactWriteItem[] = [
    {
      Update: {
        TableName: config().snapshotsTable,
        Key: groupKey(g.groupId, GROUP_ITEM),
        UpdateExpression: 'SET members = :m, version = :next',
        ConditionExpression: 'version = :v', // nobody changed the group since we read it
        ExpressionAttributeValues: { ':m': { L: members.map(S) }, ':v': N(g.version), ':next': N(g.version + 1) },
      },
    },
    ...add.map((v) => joinItem(v, g.groupId)),
    ...remove.map((v) => leaveItem(v, g.groupId)),
  ];
  const order = [...add, ...remove];
  return membershipTransaction(items, (i) => (i === 0 ? undefined : order[i - 1]));
}

/** Deletes group `g` (at `g.version`) and releases its members, in one transaction. */
export async function deleteGroup(g: GroupRecord): Promise<MembershipOutcome> {
  const items: TransactWriteItem[] = [
    {
      Delete: {
        TableName: config().snapshotsTable,
        Key: groupKey(g.groupId, GROUP_ITEM),
        ConditionExpression: 'version = :v',
        ExpressionAttributeValues: { ':v': N(g.version) },
      },
    },
    ...g.members.map((v) => leaveItem(v, g.groupId)),
  ];
  return membershipTransaction(items, (i) => (i === 0 ? undefined : g.members[i - 1]));
}

/** The volume items of `volumeIds` (consistent reads, one BatchGetItem per 100), in that order; null for a missing one. */
export async function getVolumes(volumeIds: readonly string[]): Promise<Array<VolumeRecord | null>> {
  const items = await batchGet(
    config().volumesTable,
    volumeIds.map((v) => ({ volumeId: S(v) })),
  );
  const byId = new Map(items.map((item) => [str(item.volumeId), itemToVolume(item)]));
  return volumeIds.map((v) => byId.get(v) ?? null);
}

export async function getGroupSnapshot(groupId: string, groupSnapshotId: string): Promise<GroupSnapshotRecord | null> {
  const out = await dynamo().send(
    new GetItemCommand({
      TableName: config().snapshotsTable,
      Key: groupKey(groupId, groupSnapshotId),
      ConsistentRead: true,
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
  return out.Item ? itemToGroupSnapshot(out.Item) : null;
}

/**
 * The group snapshot items of a group (any state), in id order: every one, or with `after` only
 * those after that id (which need not exist any more), and with `limit` at most that many.
 */
export async function listGroupSnapshots(groupId: string, opts: { after?: string; limit?: number } = {}): Promise<GroupSnapshotRecord[]> {
  const out: GroupSnapshotRecord[] = [];
  let start: Record<string, AttributeValue> | undefined = opts.after === undefined ? undefined : groupKey(groupId, opts.after);
  for (let n = 0; ; n++) {
    invariant(n < QUERY_PAGES_MAX, 'query of group snapshots did not end');
    const got = await dynamo().send(
      new QueryCommand({
        TableName: config().snapshotsTable,
        KeyConditionExpression: 'volumeId = :g AND begins_with(snapshotId, :prefix)',
        ExpressionAttributeValues: { ':g': S(groupId), ':prefix': S(GROUP_SNAPSHOT_PREFIX) },
        ExclusiveStartKey: start,
        ...(opts.limit === undefined ? {} : { Limit: opts.limit - out.length }),
        ConsistentRead: true,
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    out.push(...(got.Items ?? []).map(itemToGroupSnapshot));
    start = got.LastEvaluatedKey;
    if (!start || (opts.limit !== undefined && out.length >= opts.limit)) return out;
  }
}

/**
 * A member's snapshot point: `SET snapSeq = :seq` while the volume's head is still `seq`, it
 * serves, no purge runs, it is still in the group, the requester is not fenced, and (on the
 * one-transaction path) no barrier is live.
 */
function memberSnapshotUpdate(m: GroupMemberSnapshot, groupId: string, nowMs: number | undefined): TransactWriteItem {
  return snapshotPointUpdate(m.record.volumeId, m.record.seq, m.writer, {
    parts: [
      'groupId = :group', // and it is still a member of the group
      ...(nowMs === undefined ? [] : [NO_LIVE_BARRIER]), // and no other group snapshot holds it still
    ],
    values: { ':group': S(groupId), ...(nowMs === undefined ? {} : { ':nowMs': N(nowMs) }) },
  });
}

function memberItems(members: readonly GroupMemberSnapshot[], groupId: string, nowMs: number | undefined): TransactWriteItem[] {
  const table = config().snapshotsTable;
  return members.flatMap((m) => [
    memberSnapshotUpdate(m, groupId, nowMs),
    { Put: { TableName: table, Item: snapshotToItem(m.record), ConditionExpression: 'attribute_not_exists(snapshotId)' } },
  ]);
}

async function memberTransaction(items: TransactWriteItem[], members: readonly GroupMemberSnapshot[]): Promise<MemberRefusal[]> {
  invariant(items.length <= 100, () => `${items.length} items in one transaction`);
  try {
    await dynamo().send(new TransactWriteItemsCommand({ TransactItems: items, ReturnConsumedCapacity: 'TOTAL' }));
    return [];
  } catch (err) {
    const reasons = cancellation(err);
    if (!reasons) throw err;
    const refused: MemberRefusal[] = [];
    members.forEach((m, i) => {
      const r = reasons[2 * i];
      if (r?.Code === 'ConditionalCheckFailed') refused.push({ volumeId: m.record.volumeId, current: r.Item?.volumeId ? itemToVolume(r.Item) : null });
    });
    // A refused record put means the snapshot id is taken (it has random bits): retried as a moved head.
    if (refused.length === 0 && reasons.some((r) => r?.Code === 'ConditionalCheckFailed'))
      refused.push({ volumeId: members[0]!.record.volumeId, current: null });
    if (refused.length === 0) throw err;
    return refused;
  }
}

/**
 * The one-transaction group snapshot: every member's snapshot point and record, and the group
 * snapshot item, all or nothing. Returns the members whose conditions failed (empty: taken).
 */
export async function takeGroupSnapshotAtOnce(gs: GroupSnapshotRecord, members: readonly GroupMemberSnapshot[]): Promise<MemberRefusal[]> {
  const items = [
    ...memberItems(members, gs.groupId, Date.now()),
    { Put: { TableName: config().snapshotsTable, Item: groupSnapshotToItem(gs), ConditionExpression: 'attribute_not_exists(snapshotId)' } },
  ];
  return memberTransaction(items, members);
}

/** Step 4 of the barrier path for some members: snapshot points and `pending` records. */
export async function snapshotMembers(groupId: string, members: readonly GroupMemberSnapshot[]): Promise<MemberRefusal[]> {
  return memberTransaction(memberItems(members, groupId, undefined), members);
}

export async function putGroupSnapshot(gs: GroupSnapshotRecord): Promise<void> {
  await dynamo().send(
    new PutItemCommand({
      TableName: config().snapshotsTable,
      Item: groupSnapshotToItem(gs),
      ConditionExpression: 'attribute_not_exists(snapshotId)',
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
}

/**
 * Moves a group snapshot from `from` to `to`, with `members` when given. `pending -> ready` holds
 * only while the lease has not passed by this clock, `pending -> deleting` (an abort by another
 * party) only once it has; one conditional write on one item, so exactly one of them wins.
 */
export async function setGroupSnapshotState(
  groupId: string,
  groupSnapshotId: string,
  from: GroupSnapshotState,
  to: GroupSnapshotState,
  opts: { lease?: 'live' | 'passed'; members?: GroupSnapshotRecord['members'] } = {},
): Promise<boolean> {
  const nowMs = Date.now();
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().snapshotsTable,
        Key: groupKey(groupId, groupSnapshotId),
        UpdateExpression: opts.members ? 'SET #state = :to, members = :m' : 'SET #state = :to',
        ConditionExpression: [
          '#state = :from', // it is still in the state we act on
          ...(opts.lease === 'live' ? ['leaseExpiresAtMs > :nowMs'] : []), // and its coordinator's lease holds
          ...(opts.lease === 'passed' ? ['leaseExpiresAtMs < :nowMs'] : []), // or has passed (an abort)
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: {
          ':from': S(from),
          ':to': S(to),
          ...(opts.lease === undefined ? {} : { ':nowMs': N(nowMs) }),
          ...(opts.members
            ? { ':m': groupSnapshotToItem({ groupId, groupSnapshotId, state: to, members: opts.members, createdAt: '', leaseExpiresAtMs: 0 }).members! }
            : {}),
        },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}

export async function deleteGroupSnapshotItem(groupId: string, groupSnapshotId: string): Promise<void> {
  await dynamo().send(new DeleteItemCommand({ TableName: config().snapshotsTable, Key: groupKey(groupId, groupSnapshotId), ReturnConsumedCapacity: 'TOTAL' }));
}

/**
 * Raises the barrier on every volume in one transaction (100 volumes per transaction; a group
 * has at most 64): all are raised, or none and false (a live barrier of another group snapshot,
 * or a volume not serving or not in the group).
 */
export async function raiseBarriers(volumeIds: readonly string[], groupId: string, barrier: WriteBarrier): Promise<boolean> {
  const nowMs = Date.now();
  const items = volumeIds.map(
    (volumeId): TransactWriteItem => ({
      Update: {
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET barrier = :b',
        ConditionExpression: [
          '#state = :active', // the volume serves
          'groupId = :group', // and is a member of the group
          NO_LIVE_BARRIER, // and no other group snapshot holds it still
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: {
          ':b': { M: { id: S(barrier.id), expiresAtMs: N(barrier.expiresAtMs) } },
          ':active': S('active'),
          ':group': S(groupId),
          ':nowMs': N(nowMs),
        },
      },
    }),
  );
  for (let i = 0; i < items.length; i += 100) {
    try {
      await dynamo().send(new TransactWriteItemsCommand({ TransactItems: items.slice(i, i + 100), ReturnConsumedCapacity: 'TOTAL' }));
    } catch (err) {
      if (cancellation(err)?.some((r) => r?.Code === 'ConditionalCheckFailed')) return false;
      throw err;
    }
  }
  return true;
}

/** Drops this group snapshot's barriers: in one transaction, or one by one when one of them is no longer its. */
export async function dropBarriers(volumeIds: readonly string[], groupSnapshotId: string): Promise<void> {
  const items = volumeIds.map(
    (volumeId): TransactWriteItem => ({
      Update: {
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'REMOVE barrier',
        ConditionExpression: 'barrier.id = :id', // ours, not one a later group snapshot raised after ours expired
        ExpressionAttributeValues: { ':id': S(groupSnapshotId) },
      },
    }),
  );
  if (items.length > 0 && items.length <= 100) {
    try {
      await dynamo().send(new TransactWriteItemsCommand({ TransactItems: items, ReturnConsumedCapacity: 'TOTAL' }));
      return;
    } catch (err) {
      if (!cancellation(err)) throw err;
    }
  }
  await Promise.all(volumeIds.map((v) => dropBarrier(v, groupSnapshotId)));
}

/** Moves member records `pending -> ready`: in one transaction, or one by one when one of them is not pending. */
export async function readyMembers(records: ReadonlyArray<Pick<SnapshotRecord, 'volumeId' | 'snapshotId'>>): Promise<void> {
  const items = records.map(
    (r): TransactWriteItem => ({
      Update: {
        TableName: config().snapshotsTable,
        Key: { volumeId: S(r.volumeId), snapshotId: S(r.snapshotId) },
        UpdateExpression: 'SET #state = :ready',
        ConditionExpression: '#state = :pending',
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':pending': S('pending'), ':ready': S('ready') },
      },
    }),
  );
  if (items.length > 0 && items.length <= 100) {
    try {
      await dynamo().send(new TransactWriteItemsCommand({ TransactItems: items, ReturnConsumedCapacity: 'TOTAL' }));
      return;
    } catch (err) {
      if (!cancellation(err)) throw err;
    }
  }
  await Promise.all(records.map((r) => setSnapshotState(r, 'pending', 'ready')));
}

/** Drops a barrier if it is still this group snapshot's. */
export async function dropBarrier(volumeId: string, groupSnapshotId: string): Promise<void> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'REMOVE barrier',
        ConditionExpression: 'barrier.id = :id', // ours, not one a later group snapshot raised after ours expired
        ExpressionAttributeValues: { ':id': S(groupSnapshotId) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
  } catch (err) {
    if (!conditionFailed(err)) throw err;
  }
}

/** Moves a member snapshot record from `from` to `to`; false when it is not in state `from` (or gone). */
export async function setSnapshotState(s: Pick<SnapshotRecord, 'volumeId' | 'snapshotId'>, from: string, to: string): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().snapshotsTable,
        Key: { volumeId: S(s.volumeId), snapshotId: S(s.snapshotId) },
        UpdateExpression: 'SET #state = :to',
        ConditionExpression: '#state = :from',
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':from': S(from), ':to': S(to) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}

export const dynamoGroupStore: GroupStore = {
  getVolumes,
  getGroup,
  createGroup,
  changeGroupMembers,
  deleteGroup,
  getGroupSnapshot,
  listGroupSnapshots,
  takeGroupSnapshotAtOnce,
  snapshotMembers,
  putGroupSnapshot,
  setGroupSnapshotState,
  deleteGroupSnapshotItem,
  raiseBarriers,
  dropBarriers,
  readyMembers,
  setSnapshotState,
};
