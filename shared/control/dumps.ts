/**
 * Diagnostic dumps of a failed head's in-flight state, written to one drive chosen by the
 * seed's criteria (docs/dumps.md). Takeover never waits for them.
 */
import { randomBytes } from 'node:crypto';
import { chunkStore, driveRegistry } from '../ports.ts';
import type { DriveRecord, DumpAttributes } from '../core/drive-records.ts';
import { listDrives } from '../maintenance/drives.ts';
import { NotFoundError } from '../core/errors.ts';

/** What a failing head knows about the work it was doing. */
export interface InflightState {
  volumeId: string;
  head: string;
  error: { name: string; message: string; stack?: string };
  pendingWrites: unknown[];
  pageItems: unknown[];
}

export interface DumpHandle {
  dumpId: string;
  driveId: string;
  key: string;
  /** Resolves when the dump is complete on its drive. */
  done: Promise<void>;
}

/**
 * The best drive for a dump of `sizeBytes`, or null if none fits. Order: fits; least needed by
 * normal service (spare before active, then lower load); least preparation; best size match.
 *
 * @example
 * chooseDumpDrive(await listDrives(), 64 * 1024)?.driveId;
 */
export function chooseDumpDrive(drives: readonly DriveRecord[], sizeBytes: number): DriveRecord | null {
  const fits = drives.filter((d) => (d.state === 'active' || d.state === 'spare') && !d.dumpInProgress && d.capacityBytes - d.usedBytes >= sizeBytes);
  const rank = (d: DriveRecord): number[] => [d.state === 'spare' ? 0 : 1, d.serviceLoad, d.dumpPrepared ? 0 : 1, d.capacityBytes - d.usedBytes - sizeBytes];
  fits.sort((a, b) => {
    const ra = rank(a);
    const rb = rank(b);
    for (let i = 0; i < ra.length; i++) if (ra[i] !== rb[i]) return ra[i]! - rb[i]!;
    return a.driveId.localeCompare(b.driveId);
  });
  return fits[0] ?? null;
}

const CLAIM_ATTEMPT_MAX = 8;

/**
 * Starts a dump: picks and claims the drive and marks the dump in progress, then returns.
 * The upload and the completion mark go on in `done`. `gate`, if given, is awaited before the
 * upload (tests use it to hold a dump open while a takeover completes).
 */
export async function startDump(state: InflightState, opts: { gate?: Promise<void> } = {}): Promise<DumpHandle> {
  const body = Buffer.from(JSON.stringify({ ...state, writtenAt: new Date().toISOString() }, null, 1));
  const dumpId = `dump-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  for (let attempt = 0; attempt < CLAIM_ATTEMPT_MAX; attempt++) {
    const drive = chooseDumpDrive(await listDrives(), body.length);
    if (!drive)
      throw new NotFoundError(`no drive can take a dump of ${body.length} bytes (none active or spare with that much free space and no dump in progress)`);
    const key = `${drive.drive}/dumps/${dumpId}.json`;
    const attrs: DumpAttributes = {
      state: 'in-progress',
      volumeId: state.volumeId,
      head: state.head,
      key,
      sizeBytes: body.length,
      startedAt: new Date().toISOString(),
    };
    // Only a drive with no other dump being written to it.
    if (!(await driveRegistry().claimDump(drive.driveId, dumpId, attrs))) continue;
    const done = (async () => {
      await opts.gate;
      if (!drive.dumpPrepared) {
        // Preparation: the dump area's marker, written once per drive.
        await chunkStore().putObject({ bucket: drive.sled, key: `${drive.drive}/dumps/.prepared` }, Buffer.from('sledge dump area\n'));
      }
      await chunkStore().putObject({ bucket: drive.sled, key }, body, { contentType: 'application/json', ifAbsent: true });
      await driveRegistry().completeDump(drive.driveId, dumpId, new Date().toISOString());
    })();
    done.catch((err) => console.error(`dump ${dumpId} on ${drive.driveId} failed:`, err));
    return { dumpId, driveId: drive.driveId, key, done };
  }
  throw new NotFoundError(`could not claim a drive for a dump after ${CLAIM_ATTEMPT_MAX} attempts`);
}

export interface DumpView extends DumpAttributes {
  dumpId: string;
  driveId: string;
}

/** Every dump the registry knows, newest first. */
export async function listDumps(): Promise<DumpView[]> {
  const drives = await listDrives();
  return drives
    .flatMap((d) => Object.entries(d.dumps).map(([dumpId, a]) => ({ dumpId, driveId: d.driveId, ...a })))
    .sort((a, b) => b.startedAt.localeCompare(a.startedAt));
}

/** A dump's contents, found through the registry's attributes. */
export async function readDump(dumpId: string): Promise<unknown> {
  const found = (await listDumps()).find((d) => d.dumpId === dumpId);
  if (!found) throw new NotFoundError(`dump ${dumpId} is not in the drive registry`);
  if (found.state !== 'complete') throw new NotFoundError(`dump ${dumpId} is ${found.state} on ${found.driveId}; read it once it is complete`);
  const bucket = found.driveId.slice(0, found.driveId.indexOf('/'));
  return JSON.parse((await chunkStore().readObject({ bucket, key: found.key })).toString('utf8'));
}
