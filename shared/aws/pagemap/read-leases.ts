/**
 * The volume item's multi-attach attributes on DynamoDB (docs/nbd-gateway.md, "Multi-attach with
 * lease-guarded caches"): the readers' lease map with the write intent, and the head's opening of
 * the intent. Every write is conditioned on the state it was computed from.
 */
import { type AttributeValue, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import type { LeaseUpdate } from '../../control/read-leases.ts';
import { config } from '../../core/config.ts';
import type { VolumeRecord, WriteIntent } from '../../core/records.ts';
import { dynamo } from '../clients.ts';
import { N, S, conditionFailed } from './items.ts';

export function intentToAttribute(intent: WriteIntent): AttributeValue {
  return { M: { epoch: N(intent.epoch), open: { BOOL: intent.open } } };
}

/**
 * The condition part "the intent is as `read` saw it" (absent, or this epoch and state), with
 * its names and values. `#intentEpoch` and `#intentOpen` name the intent's fields.
 */
function intentAsRead(read: VolumeRecord): { part: string; values: Record<string, AttributeValue> } {
  if (!read.writeIntent) return { part: 'attribute_not_exists(writeIntent)', values: {} };
  return {
    part: '(writeIntent.#intentEpoch = :readEpoch AND writeIntent.#intentOpen = :readOpen)',
    values: { ':readEpoch': N(read.writeIntent.epoch), ':readOpen': { BOOL: read.writeIntent.open } },
  };
}

/**
 * Stores a renewal or release computed from `read`: the whole lease map, the intent, and
 * `leaseRev + 1`. False when the leases, the intent or (for a renewal that closes the intent, or
 * finds it closed) the head changed since `read`: the caller reads again and applies again.
 */
export async function storeReadLeases(read: VolumeRecord, update: LeaseUpdate): Promise<boolean> {
  const asRead = intentAsRead(read);
  // A renewal that leaves the intent closed (or closes it) tells the reader the head: it must be
  // the head at the time of the write, which it is while the intent is closed (no commit applies),
  // and for a close the head the reader saw.
  const headPinned = !update.intent.open;
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(read.volumeId) },
        UpdateExpression: 'SET readLeases = :leases, writeIntent = :intent, leaseRev = :nextRev',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          '#state = :active', // and is not being deleted
          read.leaseRev === undefined ? 'attribute_not_exists(leaseRev)' : 'leaseRev = :rev', // and no other renewal rewrote the leases since
          asRead.part, // and the intent is as read (no opening or closing since)
          ...(headPinned ? ['headSeq = :headSeq'] : []), // and, where it matters, no commit since
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state', ...(read.writeIntent ? { '#intentEpoch': 'epoch', '#intentOpen': 'open' } : {}) },
        ExpressionAttributeValues: {
          ':active': S('active'),
          ':leases': {
            M: Object.fromEntries(Object.entries(update.leases).map(([k, l]) => [k, { M: { expiresAtMs: N(l.expiresAtMs), ackedEpoch: N(l.ackedEpoch) } }])),
          },
          ':intent': intentToAttribute(update.intent),
          ':nextRev': N((read.leaseRev ?? 0) + 1),
          ...(read.leaseRev === undefined ? {} : { ':rev': N(read.leaseRev) }),
          ...asRead.values,
          ...(headPinned ? { ':headSeq': N(read.headSeq) } : {}),
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

/**
 * Opens a closed intent (epoch + 1) for a commit: conditioned on the epoch and state as read,
 * so two heads opening at once open it once. False when it changed since.
 */
export async function openWriteIntent(volumeId: string, read: WriteIntent): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().volumesTable,
        Key: { volumeId: S(volumeId) },
        UpdateExpression: 'SET writeIntent = :opened',
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume exists
          'writeIntent.#intentEpoch = :readEpoch AND writeIntent.#intentOpen = :false', // and the intent is the closed one we read
        ].join(' AND '),
        ExpressionAttributeNames: { '#intentEpoch': 'epoch', '#intentOpen': 'open' },
        ExpressionAttributeValues: {
          ':opened': intentToAttribute({ epoch: read.epoch + 1, open: true }),
          ':readEpoch': N(read.epoch),
          ':false': { BOOL: false },
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
