/**
 * The drive registry on DynamoDB: one item per drive. Every conditional update names each part
 * of its condition with the state it allows; `evac.<name>` paths are escaped (escapeEvacPaths).
 */
import { type AttributeValue, ConditionalCheckFailedException, GetItemCommand, PutItemCommand, ScanCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import { config } from '../core/config.ts';
import {
  DEFAULT_DRIVE_CAPACITY_BYTES,
  driveId,
  type DriveErrorKind,
  type DriveRecord,
  type DriveState,
  type DumpAttributes,
  type EvacuationState,
} from '../core/drive-records.ts';
import type { DriveRegistry } from '../core/ports.ts';
import { DRIVES_PER_SLED, driveName } from '../data/sleds.ts';
import { dynamo } from './clients.ts';

const S = (s: string): AttributeValue => ({ S: s });

const N = (n: number): AttributeValue => ({ N: String(n) });

function dumpToAttribute(d: DumpAttributes): AttributeValue {
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
  rec.writeErrors = Number(item.writeErrors?.N ?? 0);
  rec.writeErrorsTotal = Number(item.writeErrorsTotal?.N ?? 0);
  if (item.writeErrorWindowStartMs?.N) rec.writeErrorWindowStartMs = Number(item.writeErrorWindowStartMs.N);
  if (item.lostChunksTotal?.N) {
    rec.lostChunks = Number(item.lostChunks?.N ?? 0);
    rec.lostChunksTotal = Number(item.lostChunksTotal.N);
    if (item.lostChunkWindowStartMs?.N) rec.lostChunkWindowStartMs = Number(item.lostChunkWindowStartMs.N);
  }
  if (item.retiringSinceMs?.N) rec.retiringSinceMs = Number(item.retiringSinceMs.N);
  if (item.evac?.M) rec.evacuation = attributeToEvacuation(item.evac.M);
  return rec;
}

const EVAC_NUMBERS = [
  'pass',
  'step',
  'sentStep',
  'passStartedAtMs',
  'checks',
  'startedAtMs',
  'chunksTotal',
  'bytesTotal',
  'chunksMoved',
  'bytesMoved',
  'chunksRebuilt',
  'chunksDropped',
  'bytesDropped',
  'unmanagedObjects',
  'lastProgressAtMs',
] as const;

function attributeToEvacuation(m: Record<string, AttributeValue>): EvacuationState {
  const e = { run: m.run?.S ?? '', reason: m.reason?.S ?? '', rebuildOnly: m.rebuildOnly?.BOOL ?? false, cursor: m.cursor?.S ?? '' } as EvacuationState;
  for (const k of EVAC_NUMBERS) (e as unknown as Record<string, number>)[k] = Number(m[k]?.N ?? 0);
  if (m.completedAtMs?.N) e.completedAtMs = Number(m.completedAtMs.N);
  return e;
}

function evacuationToAttribute(e: EvacuationState): AttributeValue {
  const m: Record<string, AttributeValue> = { run: S(e.run), reason: S(e.reason), rebuildOnly: { BOOL: e.rebuildOnly }, cursor: S(e.cursor) };
  for (const k of EVAC_NUMBERS) m[k] = N(e[k]);
  if (e.completedAtMs !== undefined) m.completedAtMs = N(e.completedAtMs);
  return { M: m };
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

/** Sets registry attributes of one drive (operators and tests describe drives this way). */
export async function updateDrive(
  id: string,
  attrs: Partial<Pick<DriveRecord, 'state' | 'capacityBytes' | 'usedBytes' | 'serviceLoad' | 'dumpPrepared'>>,
): Promise<void> {
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

function conditionFailed(err: unknown): err is ConditionalCheckFailedException {
  return err instanceof ConditionalCheckFailedException || (err as { name?: string })?.name === 'ConditionalCheckFailedException';
}

/** One drive, read consistently; null if it is not in the registry. */
export async function getDrive(id: string): Promise<DriveRecord | null> {
  const out = await dynamo().send(new GetItemCommand({ TableName: config().drivesTable, Key: { driveId: S(id) }, ConsistentRead: true }));
  return out.Item ? itemToDrive(out.Item) : null;
}

/**
 * One conditional `UpdateItem` on a drive item, its condition given as named parts (each with
 * a comment at the call site). Returns the item after the update, or null when the condition
 * failed (nothing changed). `evac.<name>` paths are escaped (see escapeEvacPaths).
 */
async function updateDriveIf(
  id: string,
  change: { update: string; parts: string[]; names?: Record<string, string>; values?: Record<string, AttributeValue> },
): Promise<DriveRecord | null> {
  const names: Record<string, string> = { ...(change.names ?? {}) };
  const update = escapeEvacPaths(change.update, names);
  const condition = escapeEvacPaths(['attribute_exists(driveId)', ...change.parts].join(' AND '), names);
  try {
    const out = await dynamo().send(
      new UpdateItemCommand({
        TableName: config().drivesTable,
        Key: { driveId: S(id) },
        UpdateExpression: update,
        ConditionExpression: condition, // always: a drive in the registry, and the caller's parts
        ...(Object.keys(names).length > 0 ? { ExpressionAttributeNames: names } : {}),
        ...(change.values ? { ExpressionAttributeValues: change.values } : {}),
        ReturnValues: 'ALL_NEW',
      }),
    );
    return itemToDrive(out.Attributes!);
  } catch (err) {
    if (conditionFailed(err)) return null;
    throw err;
  }
}

/**
 * Writes `evac.<name>` paths as `#evac.#ev_<name>`: several of the names (cursor, step, pass)
 * are DynamoDB reserved words, and escaping all of them keeps the expressions readable.
 */
function escapeEvacPaths(expression: string, names: Record<string, string>): string {
  return expression.replace(/\bevac\.(\w+)/g, (_, field: string) => {
    names['#evac'] = 'evac';
    names[`#ev_${field}`] = field;
    return `#evac.#ev_${field}`;
  });
}

/** The parts of every evacuation update's condition: the drive is retiring under this run. */
function runCondition(run: string): { parts: string[]; names: Record<string, string>; values: Record<string, AttributeValue> } {
  return {
    parts: [
      '#state = :retiring', // the drive is still being evacuated
      'evac.run = :run', // by this run, not an older or newer one
    ],
    names: { '#state': 'state' },
    values: { ':retiring': S('retiring'), ':run': S(run) },
  };
}

function updateEvacuation(
  id: string,
  run: string,
  update: string,
  extra: { parts?: string[]; names?: Record<string, string>; values?: Record<string, AttributeValue> },
): Promise<DriveRecord | null> {
  const base = runCondition(run);
  return updateDriveIf(id, {
    update,
    parts: [...base.parts, ...(extra.parts ?? [])],
    names: { ...base.names, ...(extra.names ?? {}) },
    values: { ...base.values, ...(extra.values ?? {}) },
  });
}

/**
 * Advances the scan chain from `step` to `step + 1` at `cursor`, adding what the page listed
 * to the totals on the first pass. Null when the step already moved (a duplicate won).
 */
export const advanceScan: DriveRegistry['advanceScan'] = (id, run, step, cursor, listed, firstPass) => {
  const totals = firstPass
    ? ', evac.chunksTotal = evac.chunksTotal + :chunks, evac.bytesTotal = evac.bytesTotal + :bytes, evac.unmanagedObjects = evac.unmanagedObjects + :unmanaged'
    : '';
  return updateEvacuation(id, run, `SET evac.step = :next, evac.cursor = :cursor${totals}`, {
    parts: ['evac.step = :step'], // nobody advanced this step yet
    values: {
      ':step': N(step),
      ':next': N(step + 1),
      ':cursor': S(cursor),
      ...(firstPass ? { ':chunks': N(listed.chunks), ':bytes': N(listed.bytes), ':unmanaged': N(listed.unmanaged) } : {}),
    },
  });
};

/** Records that the message for `step` was sent (so a duplicate does not send it again). */
export async function markStepSent(id: string, run: string, step: number): Promise<void> {
  await updateEvacuation(id, run, 'SET evac.sentStep = :step', { parts: ['evac.sentStep < :step'], values: { ':step': N(step) } });
}

/** Adds to the progress counters (by the worker that did the work; at most once per chunk). */
export async function addEvacuationProgress(
  id: string,
  run: string,
  delta: { chunksMoved?: number; bytesMoved?: number; chunksRebuilt?: number; chunksDropped?: number; bytesDropped?: number },
  nowMs = Date.now(),
): Promise<void> {
  const entries = Object.entries(delta).filter(([, v]) => v !== undefined && v !== 0) as Array<[string, number]>;
  if (entries.length === 0) return;
  const names: Record<string, string> = {};
  const values: Record<string, AttributeValue> = { ':now': N(nowMs) };
  const sets = entries.map(([k, v], i) => {
    names[`#c${i}`] = k;
    values[`:c${i}`] = N(v);
    return `evac.#c${i} = evac.#c${i} + :c${i}`;
  });
  await updateEvacuation(id, run, `SET ${sets.join(', ')}, evac.lastProgressAtMs = :now`, { names, values });
}

/** Starts pass `pass + 1` of the scan at step `step` (condition: the pass and step are as read). */
export function startNextPass(id: string, run: string, pass: number, step: number, nowMs = Date.now()): Promise<DriveRecord | null> {
  return updateEvacuation(id, run, 'SET evac.pass = :nextPass, evac.step = :nextStep, evac.cursor = :empty, evac.passStartedAtMs = :now, evac.checks = :zero', {
    parts: [
      'evac.pass = :pass', // nobody started the next pass yet
      'evac.step = :step', // and the scan is where the finishing check saw it
    ],
    values: { ':pass': N(pass), ':nextPass': N(pass + 1), ':step': N(step), ':nextStep': N(step + 1), ':empty': S(''), ':now': N(nowMs), ':zero': N(0) },
  });
}

/** Counts one finish check of a pass (condition: the count is as read, so duplicates collapse). */
export function countFinishCheck(id: string, run: string, pass: number, checks: number): Promise<DriveRecord | null> {
  return updateEvacuation(id, run, 'SET evac.checks = :next', {
    parts: ['evac.pass = :pass', 'evac.checks = :checks'], // the pass and count we decided from
    values: { ':pass': N(pass), ':checks': N(checks), ':next': N(checks + 1) },
  });
}

/** Every drive item, read consistently (pages of a Scan, at most 1,000), in no particular order. */
export async function scanDrives(): Promise<DriveRecord[]> {
  const out: DriveRecord[] = [];
  let start: Record<string, AttributeValue> | undefined;
  for (let page = 0; page < 1000; page++) {
    const res = await dynamo().send(new ScanCommand({ TableName: config().drivesTable, ExclusiveStartKey: start, ConsistentRead: true }));
    out.push(...(res.Items ?? []).map(itemToDrive));
    start = res.LastEvaluatedKey;
    if (!start) break;
  }
  return out;
}

/** The drive item's attributes for each kind of error window. */
const ERROR_WINDOWS: Record<DriveErrorKind, { count: string; start: string; total: string }> = {
  write: { count: 'writeErrors', start: 'writeErrorWindowStartMs', total: 'writeErrorsTotal' },
  lost: { count: 'lostChunks', start: 'lostChunkWindowStartMs', total: 'lostChunksTotal' },
};

/** Counts one error of `kind` into the drive's open window. Null when no window is open (nothing changed). */
export function countDriveError(id: string, kind: DriveErrorKind, cutoffMs: number): Promise<DriveRecord | null> {
  const f = ERROR_WINDOWS[kind];
  return updateDriveIf(id, {
    update: `SET ${f.count} = if_not_exists(${f.count}, :zero) + :one, ${f.total} = if_not_exists(${f.total}, :zero) + :one`,
    parts: [`${f.start} > :cutoff`], // the error window is still open: count into it
    values: { ':zero': N(0), ':one': N(1), ':cutoff': N(cutoffMs) },
  });
}

/** Opens a window of `kind` at `nowMs` with this error in it. Null when a window is open (nothing changed). */
export function openDriveErrorWindow(id: string, kind: DriveErrorKind, cutoffMs: number, nowMs: number): Promise<DriveRecord | null> {
  const f = ERROR_WINDOWS[kind];
  return updateDriveIf(id, {
    update: `SET ${f.count} = :one, ${f.start} = :now, ${f.total} = if_not_exists(${f.total}, :zero) + :one`,
    parts: [`(attribute_not_exists(${f.start}) OR ${f.start} <= :cutoff)`], // no open window: open one
    values: { ':zero': N(0), ':one': N(1), ':cutoff': N(cutoffMs), ':now': N(nowMs) },
  });
}

/** Moves a drive to `retiring` with the run `evac`. Null when its state is no longer `seen` (nothing changed). */
export function startRetirement(id: string, seen: DriveState, evac: EvacuationState, nowMs: number): Promise<DriveRecord | null> {
  return updateDriveIf(id, {
    update: 'SET #state = :retiring, retiringSinceMs = :now, evac = :evac',
    parts: ['#state = :seen'], // still in the state we decided from (active, spare or failed)
    names: { '#state': 'state' },
    values: { ':retiring': S('retiring'), ':now': N(nowMs), ':evac': evacuationToAttribute(evac), ':seen': S(seen) },
  });
}

/** `retiring -> retired` under this run. Null if the run or state changed. */
export function markRetired(id: string, run: string, nowMs: number): Promise<DriveRecord | null> {
  return updateEvacuation(id, run, 'SET #state = :retired, evac.completedAtMs = :now, evac.lastProgressAtMs = :now', {
    values: { ':retired': S('retired'), ':now': N(nowMs) },
  });
}

/** Puts a drive back in service and forgets its errors and evacuation. Null when the drive is not in the registry. */
export function reactivate(id: string): Promise<DriveRecord | null> {
  return updateDriveIf(id, {
    update: 'SET #state = :active, writeErrors = :zero, lostChunks = :zero REMOVE evac, retiringSinceMs, writeErrorWindowStartMs, lostChunkWindowStartMs',
    parts: [],
    names: { '#state': 'state' },
    values: { ':active': S('active'), ':zero': N(0) },
  });
}

/** Claims a drive for a dump: false when another dump is being written there. */
export async function claimDump(driveId: string, dumpId: string, attrs: DumpAttributes): Promise<boolean> {
  try {
    await dynamo().send(
      new UpdateItemCommand({
        TableName: config().drivesTable,
        Key: { driveId: S(driveId) },
        UpdateExpression: 'SET dumpInProgress = :id, dumps.#id = :dump',
        ConditionExpression: 'attribute_exists(driveId) AND attribute_not_exists(dumpInProgress)', // no other dump is being written there
        ExpressionAttributeNames: { '#id': dumpId },
        ExpressionAttributeValues: { ':id': S(dumpId), ':dump': dumpToAttribute(attrs) },
      }),
    );
    return true;
  } catch (err) {
    if ((err as { name?: string }).name === 'ConditionalCheckFailedException') return false;
    throw err;
  }
}

/** Marks a claimed dump complete and the drive's dump area prepared, while the claim is still `dumpId`'s. */
export async function completeDump(driveId: string, dumpId: string, nowIso: string): Promise<void> {
  await dynamo().send(
    new UpdateItemCommand({
      TableName: config().drivesTable,
      Key: { driveId: S(driveId) },
      UpdateExpression: 'SET dumps.#id.#state = :complete, dumps.#id.completedAt = :now, dumpPrepared = :true REMOVE dumpInProgress',
      ConditionExpression: 'dumpInProgress = :id', // still ours
      ExpressionAttributeNames: { '#id': dumpId, '#state': 'state' },
      ExpressionAttributeValues: { ':complete': S('complete'), ':now': S(nowIso), ':true': { BOOL: true }, ':id': S(dumpId) },
    }),
  );
}

/** The drive-registry port (shared/core/ports.ts) on DynamoDB. */
export const dynamoDriveRegistry: DriveRegistry = {
  ensureDrives: ensureDriveRegistry,
  scanDrives,
  getDrive,
  updateDrive,
  countDriveError,
  openDriveErrorWindow,
  startRetirement,
  advanceScan,
  markStepSent,
  addEvacuationProgress,
  startNextPass,
  countFinishCheck,
  markRetired,
  reactivate,
  claimDump,
  completeDump,
};
