/**
 * Every message of the work queues, as one typed union, and the one place that parses and
 * validates a message body. Senders build these objects; the work-queue port (shared/ports.ts)
 * puts each on the queue its type belongs to; the worker (shared/maintenance/worker.ts)
 * dispatches on the parsed union. Every job is idempotent: a message may arrive twice, late,
 * or out of order.
 */

// ---------------------------------------------------------------------------------------
// The GC queue

/** Reclaim a deleted volume's chunks and items. */
export interface ReclaimVolumeMessage {
  type: 'reclaim-volume';
  volumeId: string;
}

/** Promote a reserve of every volume whose primary's lease lapsed (docs/reservations.md). */
export interface SweepLeasesMessage {
  type: 'sweep-leases';
}

/** Purge a volume's snapshots in state `deleting` (docs/snapshots.md, "Deleting a snapshot"). */
export interface SnapshotPurgeMessage {
  type: 'snapshot-purge';
  volumeId: string;
}

/** Copy what a clone still reads from its parent, from page `nextPage` on (docs/snapshots.md, "Flatten"). */
export interface FlattenVolumeMessage {
  type: 'flatten-volume';
  volumeId: string;
  nextPage: number;
}

/** Fold a folding volume's tail into its page items (docs/page-map.md, "Folding"). */
export interface FoldVolumeMessage {
  type: 'fold-volume';
  volumeId: string;
  /** Fold up to this seq (a snapshot's tag in the tail), however short the tail; absent: the worker's half-tail rule. */
  upTo?: number;
}

/** GC of one volume, or one step of the sweep over all of them (docs/evacuation.md, section 6). */
export type GcMessage = { type: 'gc-volume'; volumeId: string } | { type: 'gc-sweep'; startAfter?: string };

// ---------------------------------------------------------------------------------------
// The evacuation queue (docs/evacuation.md, section 3)

/** Chunks per move-chunks message. */
export const MOVE_BATCH_CHUNKS = 16;

export type EvacuationMessage =
  | { type: 'evacuate-drive'; driveId: string; run: string; step: number; cursor: string }
  | { type: 'move-chunks'; driveId: string; run: string; chunks: Array<{ key: string; sizeBytes: number; lastModifiedMs: number }> }
  | { type: 'finish-pass'; driveId: string; run: string; pass: number; step: number }
  | RepairChunkMessage;

/**
 * A read found chunk `chunk` of a segment at `bucket`/`key` missing or damaged: replace it
 * (docs/evacuation.md, "Read repair").
 */
export interface RepairChunkMessage {
  type: 'repair-chunk';
  volumeId: string;
  segmentId: string;
  chunk: number;
  bucket: string;
  key: string;
}

// ---------------------------------------------------------------------------------------
// The checkpoint queue (docs/checkpoints.md)

/** Checkpoint `volumeId` unless its latest checkpoint is already at `requestedAtSeq` or later. */
export interface CheckpointVolumeMessage {
  type: 'checkpoint-volume';
  volumeId: string;
  /** The head when the checkpoint was asked for; absent means "the head when it runs". */
  requestedAtSeq?: number;
}

/** Ask for a checkpoint of every volume with commits since its latest, 100 volumes a message. */
export interface CheckpointSweepMessage {
  type: 'checkpoint-sweep';
  /** Continue the scan of the Volumes table after this volume id. */
  startAfter?: string;
}

/** Rebuild a volume's page map (queued for volumes too large for one API request). */
export interface RebuildVolumeMessage {
  type: 'rebuild-volume';
  volumeId: string;
}

export type CheckpointQueueMessage = CheckpointVolumeMessage | CheckpointSweepMessage | RebuildVolumeMessage;

// ---------------------------------------------------------------------------------------
// Backups and restores (docs/backup.md), on the GC queue

export type BackupMessage =
  | { type: 'backup-volume'; backupId: string }
  | { type: 'backup-delete'; backupId: string }
  | { type: 'restore-volume'; restoreId: string }
  | { type: 'group-restore'; groupRestoreId: string };

// ---------------------------------------------------------------------------------------
// The union and its queues

export type WorkMessage =
  | ReclaimVolumeMessage
  | SweepLeasesMessage
  | SnapshotPurgeMessage
  | FlattenVolumeMessage
  | FoldVolumeMessage
  | GcMessage
  | EvacuationMessage
  | CheckpointQueueMessage
  | BackupMessage;

export const WORK_QUEUE_NAMES = ['gc', 'evacuation', 'checkpoint'] as const;
export type WorkQueueName = (typeof WORK_QUEUE_NAMES)[number];

/** The queue each message type is sent to. */
export function queueOf(message: WorkMessage): WorkQueueName {
  switch (message.type) {
    case 'reclaim-volume':
    case 'snapshot-purge':
    case 'flatten-volume':
    case 'fold-volume':
    case 'sweep-leases':
    case 'gc-volume':
    case 'gc-sweep':
    case 'backup-volume':
    case 'backup-delete':
    case 'restore-volume':
    case 'group-restore':
      return 'gc';
    case 'evacuate-drive':
    case 'move-chunks':
    case 'finish-pass':
    case 'repair-chunk':
      return 'evacuation';
    case 'checkpoint-volume':
    case 'checkpoint-sweep':
    case 'rebuild-volume':
      return 'checkpoint';
  }
}

// ---------------------------------------------------------------------------------------
// Parsing and validation

/** A message body that is not a work message: it goes to the dead-letter queue, where it stays visible. */
export class UnknownWorkMessageError extends Error {
  override name = 'UnknownWorkMessageError';
}

/** Raised for a message body that is not one of the checkpoint queue's messages. */
export class BadCheckpointMessageError extends Error {
  override name = 'BadCheckpointMessageError';
}

/** Parses and validates a work message body. Throws UnknownWorkMessageError (or BadCheckpointMessageError) otherwise. */
export function parseWorkMessage(body: string): WorkMessage {
  let msg: unknown;
  try {
    msg = JSON.parse(body);
  } catch (err) {
    throw new UnknownWorkMessageError(`work message is not JSON: ${body.slice(0, 200)}`, { cause: err });
  }
  if (typeof msg !== 'object' || msg === null) throw new UnknownWorkMessageError(`work message is not an object: ${body.slice(0, 200)}`);
  const m = msg as Record<string, unknown>;
  if (m.type === 'reclaim-volume' && typeof m.volumeId === 'string') return { type: 'reclaim-volume', volumeId: m.volumeId };
  if (m.type === 'gc-volume' && typeof m.volumeId === 'string') return { type: 'gc-volume', volumeId: m.volumeId };
  if (m.type === 'snapshot-purge' && isVolumeId(m.volumeId)) return { type: 'snapshot-purge', volumeId: m.volumeId };
  if (m.type === 'fold-volume' && isVolumeId(m.volumeId)) {
    if (m.upTo === undefined) return { type: 'fold-volume', volumeId: m.volumeId };
    if (Number.isSafeInteger(m.upTo) && (m.upTo as number) >= 0) return { type: 'fold-volume', volumeId: m.volumeId, upTo: m.upTo as number };
  }
  if (m.type === 'flatten-volume' && isVolumeId(m.volumeId) && Number.isSafeInteger(m.nextPage) && (m.nextPage as number) >= 0) {
    return { type: 'flatten-volume', volumeId: m.volumeId, nextPage: m.nextPage as number };
  }
  if (m.type === 'gc-sweep' && (m.startAfter === undefined || typeof m.startAfter === 'string')) {
    return m.startAfter === undefined ? { type: 'gc-sweep' } : { type: 'gc-sweep', startAfter: m.startAfter };
  }
  if ((m.type === 'backup-volume' || m.type === 'backup-delete') && isJobId(m.backupId)) return { type: m.type, backupId: m.backupId };
  if (m.type === 'restore-volume' && isJobId(m.restoreId)) return { type: m.type, restoreId: m.restoreId };
  if (m.type === 'group-restore' && isJobId(m.groupRestoreId)) return { type: m.type, groupRestoreId: m.groupRestoreId };
  const evacuation = parseEvacuationMessage(m);
  if (evacuation) return evacuation;
  if (m.type === 'sweep-leases') return { type: 'sweep-leases' };
  const checkpoint = parseCheckpointMessage(msg);
  if (checkpoint) return checkpoint;
  throw new UnknownWorkMessageError(`unknown work message: ${body.slice(0, 200)}`);
}

/** Parses an evacuation message, or returns null if the body is some other kind of work. */
export function parseEvacuationMessage(msg: Record<string, unknown>): EvacuationMessage | null {
  const str = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
  const int = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
  if (msg.type === 'repair-chunk') {
    const { volumeId, segmentId, chunk, bucket, key } = msg;
    if (isVolumeId(volumeId) && str(segmentId) && int(chunk) && str(bucket) && str(key))
      return { type: 'repair-chunk', volumeId, segmentId, chunk, bucket, key };
    return null;
  }
  const { driveId, run } = msg;
  if (!str(driveId) || !str(run)) return null;
  if (msg.type === 'evacuate-drive' && int(msg.step) && typeof msg.cursor === 'string')
    return { type: 'evacuate-drive', driveId, run, step: msg.step, cursor: msg.cursor };
  if (msg.type === 'finish-pass' && int(msg.pass) && int(msg.step)) return { type: 'finish-pass', driveId, run, pass: msg.pass, step: msg.step };
  if (msg.type === 'move-chunks' && Array.isArray(msg.chunks) && msg.chunks.length <= MOVE_BATCH_CHUNKS) {
    const chunks: Array<{ key: string; sizeBytes: number; lastModifiedMs: number }> = [];
    for (const c of msg.chunks as unknown[]) {
      if (typeof c !== 'object' || c === null) return null;
      const { key, sizeBytes, lastModifiedMs } = c as Record<string, unknown>;
      if (!str(key)) return null;
      // Counters only: carried as sent (the scan that sends them sets both).
      chunks.push({ key, sizeBytes: sizeBytes as number, lastModifiedMs: lastModifiedMs as number });
    }
    return { type: 'move-chunks', driveId, run, chunks };
  }
  return null;
}

const isJobId = (v: unknown): v is string => typeof v === 'string' && /^(bkp|rst|grst)-[0-9a-f-]{1,60}$/.test(v);
const isVolumeId = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 128;

/** Parses a checkpoint-queue message body, or returns null if its `type` is not one of them. */
export function parseCheckpointMessage(body: unknown): CheckpointQueueMessage | null {
  if (typeof body !== 'object' || body === null) return null;
  const msg = body as Record<string, unknown>;
  switch (msg.type) {
    case 'checkpoint-volume': {
      const seq = msg.requestedAtSeq;
      if (!isVolumeId(msg.volumeId) || (seq !== undefined && !(Number.isSafeInteger(seq) && (seq as number) >= 0))) {
        throw new BadCheckpointMessageError(
          `checkpoint-volume needs a volumeId and an optional non-negative integer requestedAtSeq: ${JSON.stringify(msg).slice(0, 200)}`,
        );
      }
      return seq === undefined ? { type: msg.type, volumeId: msg.volumeId } : { type: msg.type, volumeId: msg.volumeId, requestedAtSeq: seq as number };
    }
    case 'checkpoint-sweep':
      if (msg.startAfter !== undefined && !isVolumeId(msg.startAfter)) throw new BadCheckpointMessageError(`checkpoint-sweep startAfter must be a volume id`);
      return msg.startAfter === undefined ? { type: msg.type } : { type: msg.type, startAfter: msg.startAfter as string };
    case 'rebuild-volume':
      if (!isVolumeId(msg.volumeId)) throw new BadCheckpointMessageError('rebuild-volume needs a volumeId');
      return { type: msg.type, volumeId: msg.volumeId };
    default:
      return null;
  }
}
