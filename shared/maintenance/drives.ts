/**
 * The drive registry: one DynamoDB item per drive (a key prefix in a sled bucket) with its
 * state, capacity budget, usage and service load. S3 has no capacity limit, so a drive's
 * capacity is a budget the operator sets (default 1 TiB); usage is what Sledge accounts to it.
 */
import { type AttributeValue, ConditionalCheckFailedException, GetItemCommand, PutItemCommand, ScanCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import { randomBytes } from 'node:crypto';
import { dynamo } from '../aws/clients.ts';
import { config } from '../core/config.ts';
import { ConflictError, NotFoundError } from '../core/errors.ts';
import type { WritableDrives } from '../data/placement.ts';
import { DRIVES_PER_SLED, driveName } from '../data/sleds.ts';

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
  /** Chunk writes that failed after every retry, in the current window (docs/evacuation.md, section 1). */
  writeErrors?: number;
  writeErrorWindowStartMs?: number;
  writeErrorsTotal?: number;
  /** When the drive became retiring (the settle time counts from here). */
  retiringSinceMs?: number;
  /** The current or last evacuation run. */
  evacuation?: EvacuationState;
}

/** The counters of an evacuation run, as stored and as shown. */
export interface EvacuationCounters {
  chunksTotal: number;
  bytesTotal: number;
  chunksMoved: number;
  bytesMoved: number;
  /** Moved chunks that were rebuilt from k others because they could not be read. */
  chunksRebuilt: number;
  /** Chunks deleted instead of moved: orphans past the grace, strays, chunks of deleted volumes. */
  chunksDropped: number;
  bytesDropped: number;
  /** Objects on the drive that are not segment chunks (dumps), left in place. */
  unmanagedObjects: number;
}

/** What the drive item records of an evacuation run (docs/evacuation.md, sections 3 and 4). */
export interface EvacuationState extends EvacuationCounters {
  run: string;
  reason: string;
  /** Rebuild every chunk without reading it (the drive was declared failed). */
  rebuildOnly: boolean;
  pass: number;
  /** The scan chain: the next step to run, the key it lists after, the last step whose message was sent. */
  step: number;
  cursor: string;
  sentStep: number;
  passStartedAtMs: number;
  /** Finish checks made in this pass. */
  checks: number;
  startedAtMs: number;
  lastProgressAtMs: number;
  completedAtMs?: number;
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
  rec.writeErrors = Number(item.writeErrors?.N ?? 0);
  rec.writeErrorsTotal = Number(item.writeErrorsTotal?.N ?? 0);
  if (item.writeErrorWindowStartMs?.N) rec.writeErrorWindowStartMs = Number(item.writeErrorWindowStartMs.N);
  if (item.retiringSinceMs?.N) rec.retiringSinceMs = Number(item.retiringSinceMs.N);
  if (item.evac?.M) rec.evacuation = attributeToEvacuation(item.evac.M);
  return rec;
}

const EVAC_NUMBERS = [
  'pass', 'step', 'sentStep', 'passStartedAtMs', 'checks', 'startedAtMs', 'chunksTotal', 'bytesTotal', 'chunksMoved', 'bytesMoved',
  'chunksRebuilt', 'chunksDropped', 'bytesDropped', 'unmanagedObjects', 'lastProgressAtMs',
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

let registryReady: Promise<void> | undefined;

/** Every drive in the registry, creating missing items first (once per process, even when called concurrently). */
export async function listDrives(): Promise<DriveRecord[]> {
  registryReady ??= ensureDriveRegistry().catch((err: unknown) => {
    registryReady = undefined;
    throw err;
  });
  await registryReady;
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

function conditionFailed(err: unknown): err is ConditionalCheckFailedException {
  return err instanceof ConditionalCheckFailedException || (err as { name?: string })?.name === 'ConditionalCheckFailedException';
}

/** One drive, read consistently; null if it is not in the registry. */
export async function getDrive(id: string): Promise<DriveRecord | null> {
  const out = await dynamo().send(new GetItemCommand({ TableName: config().drivesTable, Key: { driveId: S(id) }, ConsistentRead: true }));
  return out.Item ? itemToDrive(out.Item) : null;
}

/** Like getDrive, but a drive that is not in the registry is a NotFoundError. */
export async function requireDrive(id: string): Promise<DriveRecord> {
  if (!registryReady) await listDrives();
  else await registryReady;
  const d = await getDrive(id);
  if (!d) throw new NotFoundError(`drive ${id} is not in the registry; GET /drives lists them as <sled>/<drive>`);
  return d;
}

// ---------------------------------------------------------------------------------------
// Which drives take new chunks (placement reads this through a short cache)

/** How long a process trusts its copy of the drive states for placement (docs/evacuation.md, section 2). */
export const REGISTRY_CACHE_TTL_MS = 5_000;

let writableCache: { atMs: number; drives: Promise<WritableDrives> } | undefined;

/** Sled bucket -> drives in state `active`, from a copy at most REGISTRY_CACHE_TTL_MS old (one registry read for concurrent callers). */
export async function writableDrives(nowMs = Date.now()): Promise<WritableDrives> {
  if (writableCache && nowMs - writableCache.atMs < REGISTRY_CACHE_TTL_MS) return writableCache.drives;
  const entry = { atMs: nowMs, drives: listDrives().then(writableFrom) };
  writableCache = entry;
  entry.drives.catch(() => {
    if (writableCache === entry) writableCache = undefined;
  });
  return entry.drives;
}

/** The writable map of a list of drives (pure). */
export function writableFrom(drives: readonly DriveRecord[]): WritableDrives {
  const map = new Map<string, string[]>();
  for (const d of drives) {
    if (d.state !== 'active') continue;
    const list = map.get(d.sled) ?? [];
    list.push(d.drive);
    map.set(d.sled, list);
  }
  for (const list of map.values()) list.sort();
  return map;
}

/** Forgets the cached drive states (after this process changed one, and in tests). */
export function forgetDriveStates(): void {
  writableCache = undefined;
}

/**
 * One conditional `UpdateItem` on a drive item, its condition given as named parts (each with
 * a comment at the call site). Returns the item after the update, or null when the condition
 * failed (nothing changed). `evac.<name>` paths are escaped (see escapeEvacPaths).
 */
async function updateDriveIf(id: string, change: { update: string; parts: string[]; names?: Record<string, string>; values?: Record<string, AttributeValue> }): Promise<DriveRecord | null> {
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

// ---------------------------------------------------------------------------------------
// Write errors and the retiring threshold (docs/evacuation.md, section 1)

/** Failed chunk writes (each after every retry) within the window that retire a drive. */
export const WRITE_ERROR_RETIRE_THRESHOLD = 3;

export const WRITE_ERROR_WINDOW_MS = 10 * 60_000;

/**
 * Counts one failed chunk write against a drive, in a sliding window. Returns the count in the
 * window after this one. Two conditional updates at most per attempt, at most 3 attempts.
 */
export async function recordWriteError(id: string, nowMs = Date.now()): Promise<number> {
  const cutoff = nowMs - WRITE_ERROR_WINDOW_MS;
  const values = { ':zero': N(0), ':one': N(1), ':cutoff': N(cutoff) };
  for (let attempt = 0; attempt < 3; attempt++) {
    const counted = await updateDriveIf(id, {
      update: 'SET writeErrors = if_not_exists(writeErrors, :zero) + :one, writeErrorsTotal = if_not_exists(writeErrorsTotal, :zero) + :one',
      parts: ['writeErrorWindowStartMs > :cutoff'], // the error window is still open: count into it
      values,
    });
    if (counted) return counted.writeErrors ?? 1;
    const opened = await updateDriveIf(id, {
      update: 'SET writeErrors = :one, writeErrorWindowStartMs = :now, writeErrorsTotal = if_not_exists(writeErrorsTotal, :zero) + :one',
      parts: ['(attribute_not_exists(writeErrorWindowStartMs) OR writeErrorWindowStartMs <= :cutoff)'], // no open window: open one
      values: { ...values, ':now': N(nowMs) },
    });
    if (opened) return 1;
    // Another head opened the window between our two updates (or the drive is not in the registry).
    if (attempt === 0 && !(await getDrive(id))) throw new NotFoundError(`drive ${id} is not in the registry`);
  }
  throw new ConflictError(`the write-error window of drive ${id} kept changing; the error was not counted`);
}

// ---------------------------------------------------------------------------------------
// Retirement and evacuation state

/** A fresh evacuation run. */
export function newEvacuation(reason: string, rebuildOnly: boolean, nowMs: number): EvacuationState {
  return {
    run: `run-${nowMs.toString(36)}-${randomBytes(3).toString('hex')}`,
    reason,
    rebuildOnly,
    pass: 1,
    step: 0,
    cursor: '',
    sentStep: 0,
    passStartedAtMs: nowMs,
    checks: 0,
    startedAtMs: nowMs,
    chunksTotal: 0,
    bytesTotal: 0,
    chunksMoved: 0,
    bytesMoved: 0,
    chunksRebuilt: 0,
    chunksDropped: 0,
    bytesDropped: 0,
    unmanagedObjects: 0,
    lastProgressAtMs: nowMs,
  };
}

/**
 * Moves a drive to `retiring` with a fresh evacuation run. Returns `started: false` with the
 * drive as it is when it was already retiring or retired (nothing changes then).
 */
export async function beginRetirement(id: string, reason: string, nowMs = Date.now()): Promise<{ started: boolean; drive: DriveRecord }> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const d = await requireDrive(id);
    if (d.state === 'retiring' || d.state === 'retired') return { started: false, drive: d };
    const evac = newEvacuation(reason, d.state === 'failed', nowMs);
    const started = await updateDriveIf(id, {
      update: 'SET #state = :retiring, retiringSinceMs = :now, evac = :evac',
      parts: ['#state = :seen'], // still in the state we decided from (active, spare or failed)
      names: { '#state': 'state' },
      values: { ':retiring': S('retiring'), ':now': N(nowMs), ':evac': evacuationToAttribute(evac), ':seen': S(d.state) },
    });
    if (started) {
      forgetDriveStates();
      return { started: true, drive: started };
    }
  }
  throw new ConflictError(`drive ${id} kept changing state; retry`);
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

function updateEvacuation(id: string, run: string, update: string, extra: { parts?: string[]; names?: Record<string, string>; values?: Record<string, AttributeValue> }): Promise<DriveRecord | null> {
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
export function advanceScan(id: string, run: string, step: number, cursor: string, listed: { chunks: number; bytes: number; unmanaged: number }, firstPass: boolean): Promise<DriveRecord | null> {
  const totals = firstPass ? ', evac.chunksTotal = evac.chunksTotal + :chunks, evac.bytesTotal = evac.bytesTotal + :bytes, evac.unmanagedObjects = evac.unmanagedObjects + :unmanaged' : '';
  return updateEvacuation(id, run, `SET evac.step = :next, evac.cursor = :cursor${totals}`, {
    parts: ['evac.step = :step'], // nobody advanced this step yet
    values: {
      ':step': N(step),
      ':next': N(step + 1),
      ':cursor': S(cursor),
      ...(firstPass ? { ':chunks': N(listed.chunks), ':bytes': N(listed.bytes), ':unmanaged': N(listed.unmanaged) } : {}),
    },
  });
}

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

/** `retiring -> retired` once the drive is found empty. Null if the run or state changed. */
export function completeRetirement(id: string, run: string, nowMs = Date.now()): Promise<DriveRecord | null> {
  return updateEvacuation(id, run, 'SET #state = :retired, evac.completedAtMs = :now, evac.lastProgressAtMs = :now', {
    values: { ':retired': S('retired'), ':now': N(nowMs) },
  }).then((d) => {
    forgetDriveStates();
    return d;
  });
}

/** Puts a drive back in service and forgets its errors and evacuation (operators and tests). */
export async function reactivateDrive(id: string): Promise<void> {
  await dynamo().send(
    new UpdateItemCommand({
      TableName: config().drivesTable,
      Key: { driveId: S(id) },
      UpdateExpression: 'SET #state = :active, writeErrors = :zero REMOVE evac, retiringSinceMs, writeErrorWindowStartMs',
      ConditionExpression: 'attribute_exists(driveId)', // only drives in the registry
      ExpressionAttributeNames: { '#state': 'state' },
      ExpressionAttributeValues: { ':active': S('active'), ':zero': N(0) },
    }),
  );
  forgetDriveStates();
}
