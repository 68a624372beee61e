/**
 * The drive registry: one item per drive (a key prefix in a sled bucket) with its
 * state, capacity budget, usage and service load. S3 has no capacity limit, so a drive's
 * capacity is a budget the operator sets (default 1 TiB). Usage and service load are not
 * maintained (docs/evacuation.md, section 4): they read 0 unless an operator sets them.
 */
import { randomBytes } from 'node:crypto';
import { ENV } from '../core/config.ts';
import { ConflictError, invariant, NotFoundError } from '../core/errors.ts';
import type { DriveErrorKind, DriveRecord, EvacuationState } from '../core/drive-records.ts';
import type { WritableDrives } from '../data/placement.ts';
import { driveRegistry } from '../ports.ts';

let registryReady: Promise<void> | undefined;

/** Every drive in the registry, creating missing items first (once per process, even when called concurrently). */
export async function listDrives(): Promise<DriveRecord[]> {
  registryReady ??= driveRegistry()
    .ensureDrives()
    .catch((err: unknown) => {
      registryReady = undefined;
      throw err;
    });
  await registryReady;
  const out = await driveRegistry().scanDrives();
  return out.sort((a, b) => a.driveId.localeCompare(b.driveId));
}

/** Like getDrive, but a drive that is not in the registry is a NotFoundError. */
export async function requireDrive(id: string): Promise<DriveRecord> {
  if (!registryReady) await listDrives();
  else await registryReady;
  const d = await driveRegistry().getDrive(id);
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

// ---------------------------------------------------------------------------------------
// Write errors, lost chunks and the retiring thresholds (docs/evacuation.md, section 1 and
// "Drives that keep losing chunks")

/** Failed chunk writes (each after every retry) within the window that retire a drive. */
export const WRITE_ERROR_RETIRE_THRESHOLD = 3;

export const WRITE_ERROR_WINDOW_MS = 10 * 60_000;

/** Lost or damaged chunks (each confirmed by a repair) within the window that retire a drive, unless SLEDGE_LOST_CHUNK_RETIRE_THRESHOLD says otherwise. */
export const LOST_CHUNK_RETIRE_THRESHOLD = 3;

/** The lost-chunk threshold in force: SLEDGE_LOST_CHUNK_RETIRE_THRESHOLD (a whole number; 0 never retires), else the default. */
export function lostChunkRetireThreshold(): number {
  const raw = process.env[ENV.lostChunkRetireThreshold];
  if (raw === undefined || raw === '') return LOST_CHUNK_RETIRE_THRESHOLD;
  invariant(
    /^\d+$/.test(raw),
    () => `${ENV.lostChunkRetireThreshold} must be a whole number (0 turns retirement for lost chunks off), not ${JSON.stringify(raw)}`,
  );
  return Number(raw);
}

/**
 * Counts one error of `kind` against a drive, in a sliding window of WRITE_ERROR_WINDOW_MS.
 * Returns the count in the window after this one. Two conditional updates at most per attempt,
 * at most 3 attempts.
 */
export async function recordDriveError(id: string, kind: DriveErrorKind, nowMs = Date.now()): Promise<number> {
  const cutoff = nowMs - WRITE_ERROR_WINDOW_MS;
  for (let attempt = 0; attempt < 3; attempt++) {
    const counted = await driveRegistry().countDriveError(id, kind, cutoff);
    if (counted) return (kind === 'write' ? counted.writeErrors : counted.lostChunks) ?? 1;
    const opened = await driveRegistry().openDriveErrorWindow(id, kind, cutoff, nowMs);
    if (opened) return 1;
    // Another head opened the window between our two updates (or the drive is not in the registry).
    if (attempt === 0 && !(await driveRegistry().getDrive(id))) throw new NotFoundError(`drive ${id} is not in the registry`);
  }
  throw new ConflictError(`the ${kind === 'write' ? 'write-error' : 'lost-chunk'} window of drive ${id} kept changing; the error was not counted`);
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
    // Only if the drive is still in the state we decided from (active, spare or failed).
    const started = await driveRegistry().startRetirement(id, d.state, evac, nowMs);
    if (started) {
      forgetDriveStates();
      return { started: true, drive: started };
    }
  }
  throw new ConflictError(`drive ${id} kept changing state; retry`);
}

/** `retiring -> retired` once the drive is found empty. Null if the run or state changed. */
export function completeRetirement(id: string, run: string, nowMs = Date.now()): Promise<DriveRecord | null> {
  return driveRegistry()
    .markRetired(id, run, nowMs)
    .then((d) => {
      forgetDriveStates();
      return d;
    });
}

/** Puts a drive back in service and forgets its errors and evacuation (operators and tests). Null when the drive is not in the registry. */
export async function reactivateDrive(id: string): Promise<DriveRecord | null> {
  const d = await driveRegistry().reactivate(id);
  forgetDriveStates();
  return d;
}
