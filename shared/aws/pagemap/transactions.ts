/**
 * The DynamoDB transactions of the page map: the segment commit with its fencing condition
 * (docs/page-map.md, docs/reservations.md), a chunk move (docs/evacuation.md, section 3), and
 * the fenced page writes of a rebuild (docs/checkpoints.md).
 */
import { type AttributeValue, TransactWriteItemsCommand, TransactionCanceledException, type TransactWriteItem } from '@aws-sdk/client-dynamodb';
import { intentAllows } from '../../control/read-leases.ts';
import { HOLDER_TYPES, REGISTRANT_TYPES, writeAllowed } from '../../control/reservations.ts';
import { config, foldTailBound } from '../../core/config.ts';
import { invariant } from '../../core/errors.ts';
import {
  CommitRefusedError,
  MAX_PAGES_PER_COMMIT,
  RebuildFenceLostError,
  type CommitWriter,
  type MoveOutcome,
  type PageChange,
  type SegmentRecord,
  type StoredFrozen,
  type StoredPage,
  type VolumeRecord,
} from '../../core/records.ts';
import { formatLocation, type ChunkLocation } from '../../data/sleds.ts';
import { dynamo } from '../clients.ts';
import {
  N,
  S,
  frozenKey,
  isTombstone,
  itemToSegment,
  itemToVolume,
  pageKey,
  pageToItem,
  segmentToItem,
  storedFrozenToItem,
  storedPageToItem,
} from './items.ts';

/**
 * The named parts of the writer's access rule (docs/reservations.md), joined with AND into the
 * volume item's commit condition, with the values they use. This is `writeAllowed`
 * (shared/control/reservations.ts) stated for DynamoDB, from the same access table (ACCESS,
 * through HOLDER_TYPES and REGISTRANT_TYPES); a maintenance writer is fenced on the generation.
 */
export function fencingCondition(writer: CommitWriter): { parts: string[]; names: Record<string, string>; values: Record<string, AttributeValue> } {
  if (writer.maintenanceAtGeneration !== undefined) {
    invariant(writer.key === undefined, 'a maintenance writer presents no key');
    return {
      parts: ['resGen = :maintenanceGen'], // the reservations are exactly as the maintenance writer read them
      names: {},
      values: { ':maintenanceGen': N(writer.maintenanceAtGeneration) },
    };
  }
  if (writer.key === undefined) {
    // Without a key, a writer may commit only while there is no reservation at all.
    return { parts: ['attribute_not_exists(resType)'], names: {}, values: {} };
  }
  invariant(writer.keyGeneration !== undefined, 'a writer with a key needs its registration generation');
  const holderTypes = HOLDER_TYPES.map((_, i) => `:holderType${i}`);
  const registrantTypes = REGISTRANT_TYPES.map((_, i) => `:registrantType${i}`);
  return {
    parts: [
      'registrants.#writerKey = :writerKeyGen', // still registered, by the very registration it started with
      [
        '(attribute_not_exists(resType)', // and there is no reservation,
        `OR (resType IN (${holderTypes.join(', ')}) AND resHolder = :writerKey)`, // or it holds a holder-type one,
        `OR resType IN (${registrantTypes.join(', ')}))`, // or the type lets every registrant write
      ].join(' '),
    ],
    names: { '#writerKey': writer.key },
    values: {
      ':writerKeyGen': N(writer.keyGeneration),
      ':writerKey': S(writer.key),
      ...Object.fromEntries(HOLDER_TYPES.map((t, i) => [`:holderType${i}`, S(t)])),
      ...Object.fromEntries(REGISTRANT_TYPES.map((t, i) => [`:registrantType${i}`, S(t)])),
    },
  };
}

/**
 * The commit-condition part that keeps commits behind a raised write barrier
 * (docs/consistency-groups.md): none, or one whose lease has passed by the writer's clock
 * (`:nowMs`). Group snapshots use it too, so that one never overtakes another's barrier.
 */
export const NO_LIVE_BARRIER = '(attribute_not_exists(barrier) OR barrier.expiresAtMs < :nowMs)';

/**
 * The named condition parts and updates a commit adds on a folding volume (docs/page-map.md,
 * "Folding"): a tail commit (no pages) keeps the tail within its bound; a direct commit (pages)
 * needs an empty tail and moves the folded point with the head. None on other volumes.
 */
function foldParts(
  volume: VolumeRecord,
  segment: SegmentRecord,
  direct: boolean,
): { parts: string[]; set: string[]; values: Record<string, AttributeValue>; foldFloor?: number } {
  if (volume.foldedSeq === undefined) return { parts: [], set: [], values: {} };
  if (direct) {
    return {
      parts: ['foldedSeq = :prevSeq'], // and every earlier commit is in the page items (the tail is empty)
      set: ['foldedSeq = :seq', 'foldedSegmentId = :segment'],
      values: {},
    };
  }
  const foldFloor = segment.seq - foldTailBound(volume);
  return { parts: ['foldedSeq >= :foldFloor'], set: [], values: { ':foldFloor': N(foldFloor) }, foldFloor }; // and the tail stays within its bound
}

/**
 * The commit-condition parts of multi-attach (docs/nbd-gateway.md, "The commit condition"), from
 * the volume item as the writer's head read it: no intent (no reader ever attached), or the
 * intent it read still open, and every read lease it read expired at `:nowMs` or having
 * acknowledged that epoch. Leases created later need no part: their readers cache only after
 * seeing the intent closed, which fails this condition.
 */
export function intentCondition(volume: VolumeRecord): { parts: string[]; names: Record<string, string>; values: Record<string, AttributeValue> } {
  if (!volume.writeIntent) return { parts: ['attribute_not_exists(writeIntent)'], names: {}, values: {} };
  const keys = Object.keys(volume.readLeases ?? {});
  return {
    parts: [
      'writeIntent.#intentEpoch = :intentEpoch AND writeIntent.#intentOpen = :intentOpen', // the intent we read is still open
      // and every reader we read has dropped its cache for this opening, or its lease has run out
      ...keys.map(
        (_, i) =>
          `(attribute_not_exists(readLeases.#lease${i}) OR readLeases.#lease${i}.expiresAtMs < :nowMs OR readLeases.#lease${i}.ackedEpoch >= :intentEpoch)`,
      ),
    ],
    names: { '#intentEpoch': 'epoch', '#intentOpen': 'open', ...Object.fromEntries(keys.map((k, i) => [`#lease${i}`, k])) },
    values: { ':intentEpoch': N(volume.writeIntent.epoch), ':intentOpen': { BOOL: true } },
  };
}

/**
 * Commits a segment: moves the volume's head from `volume.headSeq` to `segment.seq`, records
 * the segment, and replaces the changed pages, in one transaction. See docs/page-map.md. On a
 * folding volume a commit without pages is a tail commit: two items, whatever the scatter.
 *
 * Throws CommitRefusedError when a condition failed (nothing was changed); any other error
 * leaves the outcome unknown, and the caller resolves it with `getSegmentRecord`.
 */
export async function commitSegment(
  volume: VolumeRecord,
  segment: SegmentRecord,
  changes: readonly PageChange[],
  writer: CommitWriter = {},
  clientRequestToken?: string,
): Promise<void> {
  const fencing = fencingCondition(writer);
  const intent = intentCondition(volume);
  invariant(segment.seq === volume.headSeq + 1, 'segment built on a different head');
  invariant(segment.prev === volume.headSegmentId, 'segment prev is not the head it was built on');
  invariant(changes.length <= MAX_PAGES_PER_COMMIT, () => `${changes.length} pages in one commit, max ${MAX_PAGES_PER_COMMIT}`);
  const cfg = config();
  const nowMs = Date.now();
  const now = new Date(nowMs).toISOString();
  const direct = changes.length > 0;
  const fold = foldParts(volume, segment, direct);
  invariant(volume.foldedSeq === undefined || direct || segment.extents !== undefined, 'a tail commit records its extents');
  const items: TransactWriteItem[] = [
    {
      Update: {
        TableName: cfg.volumesTable,
        Key: { volumeId: S(volume.volumeId) },
        UpdateExpression: ['SET headSeq = :seq', 'headSegmentId = :segment', 'updatedAt = :now', ...fold.set].join(', '),
        ConditionExpression: [
          'attribute_exists(volumeId)', // the volume still exists
          '#state = :active', // and is not being deleted
          'headSeq = :prevSeq', // and nobody committed since we read the head we built on
          ...fencing.parts, // and the writer has not been fenced off (docs/reservations.md)
          // and no snapshot was taken since we froze the changed pages (docs/snapshots.md)
          volume.snapSeq === undefined ? 'attribute_not_exists(snapSeq)' : 'snapSeq = :snapSeq',
          NO_LIVE_BARRIER, // and no group snapshot holds a write barrier on it (docs/consistency-groups.md)
          ...fold.parts, // and, folding, the tail allows it (docs/page-map.md, "Folding")
          ...intent.parts, // and no reader may still cache what this commit changes (docs/nbd-gateway.md, "Multi-attach")
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state', ...fencing.names, ...intent.names },
        ExpressionAttributeValues: {
          ...fencing.values,
          ...fold.values,
          ...intent.values,
          ':seq': N(segment.seq),
          ':prevSeq': N(volume.headSeq),
          ':segment': S(segment.segmentId),
          ':active': S('active'),
          ':now': S(now),
          ':nowMs': N(nowMs),
          ...(volume.snapSeq === undefined ? {} : { ':snapSeq': N(volume.snapSeq) }),
        },
        ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
      },
    },
    {
      Put: {
        TableName: cfg.segmentsTable,
        Item: segmentToItem(segment),
        // Segment ids are unique; a repeat would mean two commits claim one segment.
        ConditionExpression: 'attribute_not_exists(segmentId)',
      },
    },
    ...changes.map(
      (c): TransactWriteItem => ({
        Put: {
          TableName: cfg.pagesTable,
          // `ft`: the writer made sure the page is frozen under the newest snapshot's tag (docs/snapshots.md).
          // `foldedTo`: a direct commit on a folding volume leaves its pages folded to its own seq.
          Item: pageToItem(
            volume.volumeId,
            c.page,
            (c.oldVersion ?? 0) + 1,
            c.extents,
            volume.pageBlocks,
            volume.snapSeq,
            volume.foldedSeq === undefined ? undefined : segment.seq,
          ),
          ...(c.oldVersion === null
            ? { ConditionExpression: 'attribute_not_exists(page)' } // the page had no item when we read it
            : {
                ConditionExpression: 'version = :v', // the page is the version we merged into
                ExpressionAttributeValues: { ':v': N(c.oldVersion) },
              }),
        },
      }),
    ),
  ];
  try {
    // The token makes DynamoDB answer a repeat of an applied commit with success (the SDK reuses
    // it across its own retries; the writer passes it again when it resends the transaction).
    await dynamo().send(new TransactWriteItemsCommand({ TransactItems: items, ReturnConsumedCapacity: 'TOTAL', ClientRequestToken: clientRequestToken }));
  } catch (err) {
    if (!(err instanceof TransactionCanceledException) && (err as { name?: string })?.name !== 'TransactionCanceledException') throw err;
    const reasons = (err as TransactionCanceledException).CancellationReasons ?? [];
    const vol = reasons[0];
    if (vol?.Code === 'ConditionalCheckFailed') {
      const current = vol.Item ? itemToVolume(vol.Item) : undefined;
      if (!current) throw new CommitRefusedError('volume-gone', `volume ${volume.volumeId} does not exist`);
      if (current.state !== 'active') throw new CommitRefusedError('volume-not-active', `volume ${volume.volumeId} is ${current.state}`, current);
      const r = current.reservations;
      if (writer.maintenanceAtGeneration !== undefined && r.generation !== writer.maintenanceAtGeneration) {
        throw new CommitRefusedError(
          'fenced',
          `maintenance commit refused: the reservations of volume ${volume.volumeId} changed (generation ${writer.maintenanceAtGeneration} -> ${r.generation})`,
          current,
        );
      }
      // The same rule as the condition: still registered by the same registration, and allowed by the reservation.
      const allowed = writer.maintenanceAtGeneration !== undefined || writeAllowed(r, writer.key, writer.keyGeneration);
      if (!allowed) {
        throw new CommitRefusedError(
          'fenced',
          `commit refused: writer ${writer.key ?? '(no key)'} was fenced off volume ${volume.volumeId} ` +
            `(reservation generation ${r.generation}${r.reservation ? `, reserved ${r.reservation.type} by ${r.reservation.holder}` : ''})`,
          current,
        );
      }
      if (current.headSeq === volume.headSeq && current.snapSeq === volume.snapSeq && current.barrier && current.barrier.expiresAtMs >= nowMs) {
        throw new CommitRefusedError('barrier-raised', `group snapshot ${current.barrier.id} holds a write barrier on volume ${volume.volumeId}`, current);
      }
      if (current.headSeq === volume.headSeq && current.snapSeq !== volume.snapSeq) {
        throw new CommitRefusedError('snapshot-moved', `a snapshot of volume ${volume.volumeId} was taken while this commit was prepared`, current);
      }
      const tailRefused = direct ? current.foldedSeq !== volume.headSeq : (current.foldedSeq ?? 0) < (fold.foldFloor ?? 0);
      if (current.headSeq === volume.headSeq && volume.foldedSeq !== undefined && tailRefused) {
        throw new CommitRefusedError(
          'tail-full',
          `volume ${volume.volumeId} has ${current.headSeq - (current.foldedSeq ?? 0)} commits not yet folded into its pages ` +
            (direct ? '(this commit needs none)' : `(at most ${foldTailBound(volume)})`),
          current,
        );
      }
      if (current.headSeq === volume.headSeq && !intentAllows(volume, current, nowMs)) {
        throw new CommitRefusedError('intent-unacked', `volume ${volume.volumeId} has readers that have not dropped their caches for this write`, current);
      }
      throw new CommitRefusedError('head-moved', `volume ${volume.volumeId} head moved from ${volume.headSeq} to ${current.headSeq}`, current);
    }
    if (reasons[1]?.Code === 'ConditionalCheckFailed') {
      // The segment id holds a record or a tombstone: a settled attempt of this very commit.
      throw new CommitRefusedError('segment-taken', `segment ${segment.segmentId} of volume ${volume.volumeId} already has a record or a tombstone`);
    }
    if (reasons.slice(2).some((r) => r?.Code === 'ConditionalCheckFailed')) {
      throw new CommitRefusedError('page-moved', `a page of volume ${volume.volumeId} changed without a head change`);
    }
    // TransactionConflict, throttling and the like: the caller retries the same transaction.
    throw err;
  }
}

/**
 * Points chunk `index` of a segment at `to`, in one transaction with a check that the target
 * drive takes new chunks. Refused (nothing changed) when the segment is gone, the chunk is no
 * longer at `from`, or the target drive is not active. Other errors leave the outcome unknown:
 * the caller re-reads the record.
 */
export async function moveChunkLocation(
  volumeId: string,
  segmentId: string,
  index: number,
  from: ChunkLocation,
  to: ChunkLocation,
  targetDriveId: string,
): Promise<MoveOutcome> {
  invariant(Number.isInteger(index) && index >= 0 && index < 64, () => `bad chunk index ${index}`);
  const cfg = config();
  try {
    await dynamo().send(
      new TransactWriteItemsCommand({
        TransactItems: [
          {
            Update: {
              TableName: cfg.segmentsTable,
              Key: { volumeId: S(volumeId), segmentId: S(segmentId) },
              // The index is part of the expression: DynamoDB takes list indexes only as literals.
              UpdateExpression: `SET locations[${index}] = :to`,
              ConditionExpression: [
                'attribute_exists(segmentId)', // the segment was not collected meanwhile
                `locations[${index}] = :from`, // and nobody moved this chunk since we read the record
              ].join(' AND '),
              ExpressionAttributeValues: { ':to': S(formatLocation(to)), ':from': S(formatLocation(from)) },
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
            },
          },
          {
            ConditionCheck: {
              TableName: cfg.drivesTable,
              Key: { driveId: S(targetDriveId) },
              ConditionExpression: '#state = :active', // no record may come to point at a drive that stopped taking chunks
              ExpressionAttributeNames: { '#state': 'state' },
              ExpressionAttributeValues: { ':active': S('active') },
            },
          },
        ],
        ReturnConsumedCapacity: 'TOTAL',
      }),
    );
    return { kind: 'moved' };
  } catch (err) {
    if (!(err instanceof TransactionCanceledException) && (err as { name?: string })?.name !== 'TransactionCanceledException') throw err;
    const reasons = (err as TransactionCanceledException).CancellationReasons ?? [];
    if (reasons[0]?.Code === 'ConditionalCheckFailed') {
      const item = reasons[0].Item;
      return item && !isTombstone(item)
        ? { kind: 'refused', reason: 'location-changed', current: itemToSegment(item) }
        : { kind: 'refused', reason: 'record-gone', current: null };
    }
    if (reasons[1]?.Code === 'ConditionalCheckFailed') return { kind: 'refused', reason: 'target-inactive', current: null };
    throw err;
  }
}

/** Page writes per rebuild transaction: 100 items, one of them the fence check. */
const REBUILD_WRITES_PER_TRANSACTION = 99;

/**
 * Writes rebuilt pages and deletes pages the rebuilt map lacks, in transactions that each also
 * check the fence (`state = rebuilding AND rebuildToken = :token`): a rebuild that lost its
 * fence can never overwrite a page committed after the fence was lifted.
 */
export async function writeRebuiltPages(volumeId: string, token: string, puts: readonly StoredPage[], deletes: readonly number[]): Promise<void> {
  const table = config().pagesTable;
  await writeWhileFenced(volumeId, token, [
    ...puts.map((p): TransactWriteItem => ({ Put: { TableName: table, Item: storedPageToItem(volumeId, p) } })),
    ...deletes.map((page): TransactWriteItem => ({ Delete: { TableName: table, Key: pageKey(volumeId, page) } })),
  ]);
}

/** Writes and deletes rebuilt frozen pages, under the same fence as the pages (docs/checkpoints.md, "Frozen pages"). */
export async function writeRebuiltFrozen(
  volumeId: string,
  token: string,
  puts: readonly StoredFrozen[],
  deletes: ReadonlyArray<{ tag: number; page: number }>,
): Promise<void> {
  const table = config().pagesTable;
  await writeWhileFenced(volumeId, token, [
    ...puts.map((f): TransactWriteItem => ({ Put: { TableName: table, Item: storedFrozenToItem(volumeId, f) } })),
    ...deletes.map((k): TransactWriteItem => ({ Delete: { TableName: table, Key: frozenKey(volumeId, k.tag, k.page) } })),
  ]);
}

/** Sends `writes` in transactions of REBUILD_WRITES_PER_TRANSACTION, each with a check that `token`'s rebuild still holds the fence. */
async function writeWhileFenced(volumeId: string, token: string, writes: readonly TransactWriteItem[]): Promise<void> {
  const cfg = config();
  for (let i = 0; i < writes.length; i += REBUILD_WRITES_PER_TRANSACTION) {
    const fence: TransactWriteItem = {
      ConditionCheck: {
        TableName: cfg.volumesTable,
        Key: { volumeId: S(volumeId) },
        ConditionExpression: [
          '#state = :rebuilding', // the volume is still fenced for a rebuild
          'rebuildToken = :token', // by this rebuild
        ].join(' AND '),
        ExpressionAttributeNames: { '#state': 'state' },
        ExpressionAttributeValues: { ':rebuilding': S('rebuilding'), ':token': S(token) },
      },
    };
    try {
      await dynamo().send(
        new TransactWriteItemsCommand({ TransactItems: [fence, ...writes.slice(i, i + REBUILD_WRITES_PER_TRANSACTION)], ReturnConsumedCapacity: 'TOTAL' }),
      );
    } catch (err) {
      const reasons = (err as TransactionCanceledException).CancellationReasons ?? [];
      if (reasons[0]?.Code === 'ConditionalCheckFailed') {
        throw new RebuildFenceLostError(`the rebuild of volume ${volumeId} lost its fence to another rebuild; it stopped writing pages`, { cause: err });
      }
      throw err;
    }
  }
}
