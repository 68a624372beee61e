/**
 * Requests to replace chunks found lost or damaged (docs/evacuation.md, "Read repair" and "The
 * listing check"): reads report what they met, GC passes what their chunk listing lacks. Both go
 * to the evacuation queue as `repair-chunk`, where the worker confirms the loss before it writes
 * anything, so a needless request costs a message and a GET, never data.
 */
import type { SegmentRecord } from '../core/records.ts';
import type { RepairChunkMessage } from '../core/work-messages.ts';
import { ENV } from '../core/config.ts';
import { formatLocation, type ChunkLocation } from './sleds.ts';
import { workQueue } from '../ports.ts';

/** How long a noted chunk location is remembered: a lost chunk asked last, a repair not asked again. */
export const LOST_CHUNK_MEMORY_MS = 10 * 60_000;
const LOCATIONS_MAX = 16_384;

/**
 * Chunk locations (`bucket/key`) this process noted, each remembered for LOST_CHUNK_MEMORY_MS;
 * at most LOCATIONS_MAX, the oldest noted going first. Asking an empty memory costs nothing,
 * which is what healthy reads do.
 */
export class LocationMemory {
  private readonly noted = new Map<string, number>();

  note(loc: ChunkLocation): void {
    const key = formatLocation(loc);
    this.noted.delete(key);
    if (this.noted.size >= LOCATIONS_MAX) this.noted.delete(this.noted.keys().next().value!);
    this.noted.set(key, Date.now());
  }

  /** Whether `loc` was noted within LOST_CHUNK_MEMORY_MS (an older note is dropped). */
  has(loc: ChunkLocation): boolean {
    if (this.noted.size === 0) return false;
    const key = formatLocation(loc);
    const at = this.noted.get(key);
    if (at === undefined) return false;
    if (Date.now() - at < LOST_CHUNK_MEMORY_MS) return true;
    this.noted.delete(key);
    return false;
  }

  forget(loc: ChunkLocation): void {
    if (this.noted.size > 0) this.noted.delete(formatLocation(loc));
  }

  clear(): void {
    this.noted.clear();
  }
}

/** Chunks this process asked to have repaired. */
const repairsAsked = new LocationMemory();

let repairOverride: boolean | undefined;

/** Turns this process's repair requests on or off, whatever SLEDGE_READ_REPAIR says (tests). */
export function setReadRepair(on: boolean | undefined): void {
  repairOverride = on;
}

function repairsOn(): boolean {
  return repairOverride ?? process.env[ENV.readRepair] !== '0';
}

/** Repair requests this process sent (tests, logs). */
export const repairRequests = { sent: 0, failed: 0 };

function repairMessage(rec: SegmentRecord, chunk: number): RepairChunkMessage {
  const loc = rec.locations[chunk]!;
  return { type: 'repair-chunk', volumeId: rec.volumeId, segmentId: rec.segmentId, chunk, bucket: loc.bucket, key: loc.key };
}

/**
 * Whether chunk `chunk` of `rec` should be asked now (repairs on, not asked from this process
 * within LOST_CHUNK_MEMORY_MS); if so, notes it as asked.
 */
function claim(rec: SegmentRecord, chunk: number): boolean {
  const loc = rec.locations[chunk]!;
  if (repairsAsked.has(loc)) return false;
  repairsAsked.note(loc);
  return true;
}

/**
 * Asks the worker to replace chunk `chunk` of `rec`, which a read found missing or damaged:
 * once per location per LOST_CHUNK_MEMORY_MS in this process, without waiting for the send
 * (the read answers as soon as its bytes are verified); a failed send is logged and may be asked
 * again.
 */
export function askRepair(rec: SegmentRecord, chunk: number): void {
  if (!repairsOn() || !claim(rec, chunk)) return;
  repairRequests.sent++;
  workQueue()
    .send(repairMessage(rec, chunk))
    .catch((err: Error) => {
      repairRequests.failed++;
      repairsAsked.forget(rec.locations[chunk]!);
      console.warn(`repair request for ${formatLocation(rec.locations[chunk]!)} not sent: ${err.message}`);
    });
}

/**
 * Asks the worker to replace each of `lost` (a GC pass's confirmed losses), ten to a batch, and
 * waits for the sends. Returns how many were sent; a failed batch is logged and its chunks may
 * be asked again.
 */
export async function askRepairs(lost: ReadonlyArray<{ rec: SegmentRecord; chunk: number }>): Promise<number> {
  if (!repairsOn()) return 0;
  const claimed = lost.filter(({ rec, chunk }) => claim(rec, chunk));
  let sent = 0;
  for (let i = 0; i < claimed.length; i += 10) {
    const batch = claimed.slice(i, i + 10);
    let failed: number;
    try {
      failed = (await workQueue().sendBatch(batch.map(({ rec, chunk }) => repairMessage(rec, chunk)))).length;
    } catch (err) {
      console.warn(`repair requests for ${batch.length} chunks not sent: ${(err as Error).message}`);
      failed = batch.length;
    }
    if (failed > 0) {
      // Which entries failed is not said: all of the batch may be asked again.
      for (const { rec, chunk } of batch) repairsAsked.forget(rec.locations[chunk]!);
    }
    sent += batch.length - failed;
    repairRequests.sent += batch.length - failed;
    repairRequests.failed += failed;
  }
  return sent;
}
