/**
 * The DynamoDB adapter for volume items: create, read, list, grow, delete, reservations and
 * head leases, the checkpoint pointer and floor, and the rebuild fence (docs/page-map.md,
 * docs/reservations.md, docs/checkpoints.md). Every conditional write names each part of its
 * condition with the state it allows.
 */
import { type AttributeValue, DeleteItemCommand, GetItemCommand, PutItemCommand, QueryCommand, ScanCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import type { ReservationState } from '../../control/reservations.ts';
import { config, VOLUMES_BY_OWNER_INDEX } from '../../core/config.ts';
import { ConflictError, NotFoundError } from '../../core/errors.ts';
import type { CheckpointPointer, HeadDesignation, VolumeRecord } from '../../core/records.ts';
import { dynamo } from '../clients.ts';
import { batchGet } from './pages.ts';
import { N, S, checkpointToAttribute, conditionFailed, headsToAttribute, itemToVolume, reservationAttributes, str, volumeToItem } from './items.ts';

export async function getVolume(volumeId: string): Promise<VolumeRecord | null> {
  const out = await dynamo().send(
    new GetItemCommand({ TableName: config().volumesTable, Key: { volumeId: S(volumeId) }, ConsistentRead: true, ReturnConsumedCapacity: 'TOTAL' }),
  );
  return out.Item ? itemToVolume(out.Item) : null;
}

/** Like getVolume, but a missing volume is a NotFoundError. */
export async function requireVolume(volumeId: string): Promise<VolumeRecord> {
  const v = await getVolume(volumeId);
  if (!v) throw new NotFoundError(`volume ${volumeId} does not exist`);
  return v;
}

export async function putNewVolume(v: VolumeRecord): Promise<void> {
  await dynamo().send(
    new PutItemCommand({
      TableName: config().volumesTable,
      Item: volumeToItem(v),
      // A fresh random id never exists; the condition makes a collision loud instead of silent.
      ConditionExpression: 'attribute_not_exists(volumeId)',
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
}

/**
 * One page of the volume list; `next` (the id of the page's last volume) continues it.
 *
 * Without `owner` (operators): a consistent scan of the table, in its own order.
 * With `owner` (a tenant): a query of that owner's partition of `VOLUMES_BY_OWNER_INDEX`, in
 * volume id order, then a consistent read of the page's volume items. Only the owner's volumes
 * are ever read, a page holds `limit` of them unless it is the last, and `next` is always one
 * of the owner's own volumes. `startAfter` may be any volume id: the page starts after that
 * place in the owner's ids. The index is eventually consistent, so a volume created a moment
 * ago may be missing from a tenant's list for that moment; a volume the index still names but
 * whose item is gone (deleted meanwhile) is left out.
 */
export async function listVolumes(limit: number, startAfter?: string, owner?: string): Promise<{ volumes: VolumeRecord[]; next?: string }> {
  if (owner !== undefined) return listOwnedVolumes(limit, owner, startAfter);
  const out = await dynamo().send(
    new ScanCommand({
      TableName: config().volumesTable,
      Limit: limit,
      ExclusiveStartKey: startAfter ? { volumeId: S(startAfter) } : undefined,
      ConsistentRead: true,
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
  const volumes = (out.Items ?? []).map(itemToVolume);
  const next = out.LastEvaluatedKey?.volumeId?.S;
  return next ? { volumes, next } : { volumes };
}

async function listOwnedVolumes(limit: number, owner: string, startAfter?: string): Promise<{ volumes: VolumeRecord[]; next?: string }> {
  const out = await dynamo().send(
    new QueryCommand({
      TableName: config().volumesTable,
      IndexName: VOLUMES_BY_OWNER_INDEX,
      KeyConditionExpression: '#owner = :owner',
      ExpressionAttributeNames: { '#owner': 'owner' },
      ExpressionAttributeValues: { ':owner': S(owner) },
      Limit: limit,
      // An index's start key is the index key and the table key: here the owner and a volume id.
      ExclusiveStartKey: startAfter ? { owner: S(owner), volumeId: S(startAfter) } : undefined,
      ReturnConsumedCapacity: 'TOTAL',
    }),
  );
  const ids = (out.Items ?? []).map((item) => str(item.volumeId));
  const items = await batchGet(
    config().volumesTable,
    ids.map((id) => ({ volumeId: S(id) })),
  );
  const byId = new Map(items.map((item) => [str(item.volumeId), itemToVolume(item)]));
  // In id order, as the index gave them; an owner never changes, but the check costs nothing.
  const volumes = ids.flatMap((id) => {
    const v = byId.get(id);
    return v && v.owner === owner ? [v] : [];
  });
  // Always one of the owner's volumes: the index holds no other in this partition.
  const next = out.LastEvaluatedKey?.volumeId?.S;
  return next ? { volumes, next } : { volumes };
}

/** Grows a volume. Conditions: it is active and not already larger. */
export async function growVolume(volumeId: string, sizeBytes: number): Promise<VolumeRecord> {
  try {
    const out = await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET sizeBytes = :size, updatedAt = :now',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state = :active', // and is not being deleted
          'sizeBytes <= :size', // and growing (or the same size, which is a no-op)
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':size': N(sizeBytes), ':active': S('active'), ':now': S(new Date().toISOString()) },
        ReturnValues: 'ALL_NEW',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return itemToVolume(out.Attributes!);
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    const old = err.Item ? itemToVolume(err.Item) : null;
    if (!old) throw new NotFoundError(`volume ${volumeId} does not exist`);
    if (old.state !== 'active') throw new ConflictError(`volume ${volumeId} is ${old.state}`);
    throw new ConflictError(`volume ${volumeId} is ${old.sizeBytes} bytes; it can grow but not shrink to ${sizeBytes}`);
  }
}

/**
 * Marks an active volume without snapshots `deleting`: true, or false when it already is (or is
 * being reclaimed); 'has-snapshots' when it still has a snapshot tag (a snapshot was taken since
 * the caller looked, or the purge of the last one has not finished).
 */
export async function markDeleting(volumeId: string): Promise<boolean | 'has-snapshots'> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET #state = :deleting, updatedAt = :now',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state = :active', // and is serving
          // and has no snapshot: taking one sets snapSeq in the same transaction as its record,
          // and the purge of the last one removes it after the records (docs/snapshots.md)
          'attribute_not_exists(snapSeq)',
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':deleting': S('deleting'), ':active': S('active'), ':now': S(new Date().toISOString()) },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    if (!err.Item) throw new NotFoundError(`volume ${volumeId} does not exist`);
    if (str(err.Item.state) === 'rebuilding') throw new ConflictError(`volume ${volumeId} is being rebuilt; delete it when the rebuild is done`);
    if (str(err.Item.state) === 'active' && err.Item.snapSeq !== undefined) return 'has-snapshots';
    return false;
  }
}

export async function deleteVolumeItem(volumeId: string): Promise<void> {
  await dynamo().send(new DeleteItemCommand({ TableName: config().volumesTable, Key: { volumeId: S(volumeId) }, ReturnConsumedCapacity: 'TOTAL' }));
}

/** A head designation written with a reservation change (docs/reservations.md, "Heads"). */
export interface HeadsChange {
  heads: HeadDesignation;
  /** Only if the primary is still this head and, when `leaseLapsedBeforeMs` is given, its lease ran out before then. */
  primaryWas?: { head: string; leaseLapsedBeforeMs?: number };
}

function headsExtra(change: HeadsChange): {
  set: Record<string, AttributeValue>;
  condition?: { expression: string; names?: Record<string, string>; values: Record<string, AttributeValue> };
} {
  const was = change.primaryWas;
  if (!was) return { set: { heads: headsToAttribute(change.heads) } };
  const lapsed = was.leaseLapsedBeforeMs !== undefined;
  return {
    set: { heads: headsToAttribute(change.heads) },
    condition: {
      // The primary we preempt is the one we read, and (unless forced) its lease has lapsed.
      expression: lapsed ? '#heads.#primary = :oldPrimary AND #heads.#lease < :nowMs' : '#heads.#primary = :oldPrimary',
      names: { '#heads': 'heads', '#primary': 'primary', ...(lapsed ? { '#lease': 'leaseExpiresAtMs' } : {}) },
      values: { ':oldPrimary': S(was.head), ...(lapsed ? { ':nowMs': N(was.leaseLapsedBeforeMs!) } : {}) },
    },
  };
}

/**
 * Stores a new reservation state computed from the one read at generation `expected`.
 * Returns false if someone changed the reservations since (the caller re-reads and retries).
 * `change` sets the head designation in the same write, with its own condition.
 */
export async function storeReservations(volumeId: string, expected: number, next: ReservationState, change?: HeadsChange): Promise<boolean> {
  const extra = change ? headsExtra(change) : undefined;
  const attrs = reservationAttributes(next);
  const sets = Object.entries({ ...attrs, ...(extra?.set ?? {}) }).map(([k], i) => `#a${i} = :a${i}`);
  const names: Record<string, string> = { '#state': 'state' };
  const values: Record<string, AttributeValue> = { ':expected': N(expected), ':active': S('active'), ':now': S(new Date().toISOString()) };
  Object.entries({ ...attrs, ...(extra?.set ?? {}) }).forEach(([k, v], i) => {
    names[`#a${i}`] = k;
    values[`:a${i}`] = v;
  });
  const removes = next.reservation ? [] : ['resHolder', 'resType'];
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: `SET ${sets.join(', ')}, updatedAt = :now${removes.length ? ` REMOVE ${removes.join(', ')}` : ''}`,
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state = :active', // and is not being deleted
          'resGen = :expected', // and nobody changed its reservations since we read them
          ...(extra?.condition ? [extra.condition.expression] : []),
        ].join(' AND '),
        ExpressionAttributeNames: { ...names, ...(extra?.condition?.names ?? {}) },
        ExpressionAttributeValues: { ...values, ...(extra?.condition?.values ?? {}) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (conditionFailed(err)) return false;
    throw err;
  }
}

/**
 * Sets attributes of an active volume under extra named conditions (for head leases).
 * Returns the item as it was when the condition failed, or null on success.
 */
export async function updateVolumeIf(
  volumeId: string,
  set: Record<string, AttributeValue>,
  condition: { parts: string[]; names?: Record<string, string>; values?: Record<string, AttributeValue> },
): Promise<{ ok: true } | { ok: false; current: VolumeRecord | null }> {
  const names: Record<string, string> = { '#state': 'state', ...(condition.names ?? {}) };
  const values: Record<string, AttributeValue> = { ':active': S('active'), ':now': S(new Date().toISOString()), ...(condition.values ?? {}) };
  const sets = Object.entries(set).map(([k, v], i) => {
    names[`#s${i}`] = k;
    values[`:s${i}`] = v;
    return `#s${i} = :s${i}`;
  });
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: `SET ${sets.join(', ')}, updatedAt = :now`,
        ConditionExpression: ['attribute_exists(volumeId)', '#state = :active', ...condition.parts].join(' AND '),
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return { ok: true };
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return { ok: false, current: err.Item ? itemToVolume(err.Item) : null };
  }
}

/**
 * Extends the primary's lease: sets the head designation on condition that `primary` is still
 * the primary, by the registration it was read with. The item as it was when refused, else ok.
 */
export async function renewLease(
  volumeId: string,
  heads: HeadDesignation,
  primary: { head: string; key: string; keyGeneration: number },
): Promise<{ ok: true } | { ok: false; current: VolumeRecord | null }> {
  return updateVolumeIf(
    volumeId,
    { heads: headsToAttribute(heads) },
    {
      parts: [
        '#heads.#primary = :head', // still the primary
        'registrants.#key = :gen', // by the same registration (not preempted since we read)
      ],
      names: { '#key': primary.key, '#heads': 'heads', '#primary': 'primary' },
      values: { ':head': S(primary.head), ':gen': N(primary.keyGeneration) },
    },
  );
}

/**
 * Records `pointer` as the volume's latest checkpoint if it is newer than the recorded one.
 * Returns false (and changes nothing) when the recorded checkpoint is as new or newer.
 */
export async function recordCheckpoint(volumeId: string, pointer: CheckpointPointer): Promise<{ recorded: boolean; current: VolumeRecord | null }> {
  try {
    const out = await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET #checkpoint = :pointer',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          // and this checkpoint is newer than the recorded one: the pointer only moves forward
          '(attribute_not_exists(#checkpoint) OR #checkpoint.#seq < :seq)',
        ].join(' AND '),
        ExpressionAttributeNames: { '#checkpoint': 'checkpoint', '#seq': 'seq' },
        ExpressionAttributeValues: {
          ':seq': N(pointer.seq),
          ':pointer': checkpointToAttribute(pointer),
        },
        ReturnValues: 'ALL_NEW',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return { recorded: true, current: itemToVolume(out.Attributes!) };
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    const current = err.Item ? itemToVolume(err.Item) : null;
    // A retry whose first attempt applied (its response was lost) finds its own pointer there.
    return { recorded: current?.checkpoint?.id === pointer.id, current };
  }
}

/** Raises the checkpoint floor to `seq`; a floor already as high is left alone. */
export async function raiseCheckpointFloor(volumeId: string, seq: number): Promise<void> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET checkpointFloorSeq = :seq',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '(attribute_not_exists(checkpointFloorSeq) OR checkpointFloorSeq < :seq)', // and the floor only rises
        ].join(' AND '),
        ExpressionAttributeValues: { ':seq': N(seq) },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
  } catch (err) {
    if (!conditionFailed(err)) throw err;
  }
}

/**
 * Fences a volume for a rebuild: `state` becomes `rebuilding` under `token`, which from then
 * on refuses every commit (they require `active`). A rebuild that finds the volume already
 * fenced takes over with its own token (`tookOver`: the map may be half rewritten by the
 * rebuild it replaces). Returns the volume as fenced.
 */
export async function fenceForRebuild(volumeId: string, token: string): Promise<{ volume: VolumeRecord; tookOver: boolean }> {
  try {
    const out = await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET #state = :rebuilding, rebuildToken = :token, rebuilds = if_not_exists(rebuilds, :zero) + :one, updatedAt = :now',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state IN (:active, :rebuilding)', // and is serving, or is fenced by a rebuild that this one takes over
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: {
          ':rebuilding': S('rebuilding'),
          ':active': S('active'),
          ':token': S(token),
          ':zero': N(0),
          ':one': N(1),
          ':now': S(new Date().toISOString()),
        },
        ReturnValues: 'ALL_OLD',
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    const old = itemToVolume(out.Attributes!);
    return { volume: { ...old, state: 'rebuilding', rebuildToken: token, rebuilds: (old.rebuilds ?? 0) + 1 }, tookOver: old.state === 'rebuilding' };
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    if (!err.Item) throw new NotFoundError(`volume ${volumeId} does not exist`);
    throw new ConflictError(`volume ${volumeId} is ${str(err.Item.state)}; only an active volume can be rebuilt`);
  }
}

/** Lifts the rebuild fence held under `token`. Returns false if another rebuild took it over. */
export async function unfenceAfterRebuild(volumeId: string, token: string, folded?: { seq: number; segmentId: string }): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        // A folding volume's rebuilt pages hold every commit: its folded point is the head (docs/page-map.md, "Folding").
        UpdateExpression: `SET #state = :active, updatedAt = :now${folded ? ', foldedSeq = :foldedSeq, foldedSegmentId = :foldedSegment' : ''} REMOVE rebuildToken`,
        ConditionExpression: [
          '#state = :rebuilding', // the volume is fenced for a rebuild
          'rebuildToken = :token', // and the fence is ours, not a rebuild's that took over
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: {
          ':active': S('active'),
          ':rebuilding': S('rebuilding'),
          ':token': S(token),
          ':now': S(new Date().toISOString()),
          ...(folded ? { ':foldedSeq': N(folded.seq), ':foldedSegment': S(folded.segmentId) } : {}),
        },
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return true;
  } catch (err) {
    if (!conditionFailed(err)) throw err;
    return false;
  }
}
