/**
 * The drive registry's records (docs/evacuation.md): one per drive, a key prefix in a sled
 * bucket, with its state, capacity budget, usage, write errors, evacuation run and dumps.
 */

export type DriveState = 'active' | 'spare' | 'retiring' | 'retired' | 'failed';

export const DEFAULT_DRIVE_CAPACITY_BYTES = 1024 ** 4;

export interface DriveRecord {
  driveId: string;
  sled: string;
  sledIndex: number;
  drive: string;
  state: DriveState;
  capacityBytes: number;
  /** Not maintained: 0 unless set with `updateDrive` (docs/evacuation.md, section 4). */
  usedBytes: number;
  /**
   * How much normal service leans on this drive; lower is better for a dump. Not maintained
   * either: 0 unless set with `updateDrive`.
   */
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
  /** Chunks a repair found lost or damaged here, in the current window (docs/evacuation.md, "Drives that keep losing chunks"). */
  lostChunks?: number;
  lostChunkWindowStartMs?: number;
  lostChunksTotal?: number;
  /** When the drive became retiring (the settle time counts from here). */
  retiringSinceMs?: number;
  /** The current or last evacuation run. */
  evacuation?: EvacuationState;
}

/** What a drive's error windows count: chunk writes that failed, and chunks found lost or damaged. */
export type DriveErrorKind = 'write' | 'lost';

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

/** What a drive item says about a dump written to it. */
export interface DumpAttributes {
  state: 'in-progress' | 'complete' | 'failed';
  volumeId: string;
  head: string;
  key: string;
  sizeBytes: number;
  startedAt: string;
  completedAt?: string;
}

export function driveId(bucket: string, drive: string): string {
  return `${bucket}/${drive}`;
}
