/**
 * The messages on the checkpoint queue (`SLEDGE_CHECKPOINT_QUEUE_URL`) and how they are sent.
 * Every one is idempotent: it may arrive twice, late, or out of order (docs/checkpoints.md).
 */
import { SendMessageBatchCommand, SendMessageCommand } from '@aws-sdk/client-sqs';
import { sqs } from '../aws/clients.ts';
import { config } from '../core/config.ts';
import { invariant } from '../core/errors.ts';

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

/** Raised for a message body that is not one of the checkpoint queue's messages. */
export class BadCheckpointMessageError extends Error {
  override name = 'BadCheckpointMessageError';
}

const isVolumeId = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 128;

/** Parses a checkpoint-queue message body, or returns null if its `type` is not one of them. */
export function parseCheckpointMessage(body: unknown): CheckpointQueueMessage | null {
  if (typeof body !== 'object' || body === null) return null;
  const msg = body as Record<string, unknown>;
  switch (msg.type) {
    case 'checkpoint-volume': {
      const seq = msg.requestedAtSeq;
      if (!isVolumeId(msg.volumeId) || (seq !== undefined && !(Number.isSafeInteger(seq) && (seq as number) >= 0))) {
        throw new BadCheckpointMessageError(`checkpoint-volume needs a volumeId and an optional non-negative integer requestedAtSeq: ${JSON.stringify(msg).slice(0, 200)}`);
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

/** Puts one message on the checkpoint queue. */
export async function sendCheckpointMessage(message: CheckpointQueueMessage): Promise<void> {
  await sqs().send(new SendMessageCommand({ QueueUrl: config().checkpointQueueUrl, MessageBody: JSON.stringify(message) }));
}

/** SQS takes at most 10 messages per batch. */
const SEND_BATCH_MAX = 10;

/** Puts messages on the checkpoint queue, 10 per request; throws if any was not accepted. */
export async function sendCheckpointMessages(messages: readonly CheckpointQueueMessage[]): Promise<void> {
  for (let i = 0; i < messages.length; i += SEND_BATCH_MAX) {
    const batch = messages.slice(i, i + SEND_BATCH_MAX);
    const out = await sqs().send(
      new SendMessageBatchCommand({
        QueueUrl: config().checkpointQueueUrl,
        Entries: batch.map((m, j) => ({ Id: String(j), MessageBody: JSON.stringify(m) })),
      }),
    );
    const failed = out.Failed ?? [];
    invariant(failed.length === 0, () => `${failed.length} checkpoint messages were not accepted: ${failed[0]?.Message ?? failed[0]?.Code}`);
  }
}

/** The default number of commits between automatic checkpoints of a volume. */
export const DEFAULT_CHECKPOINT_EVERY_COMMITS = 1000;

/**
 * After a successful commit at `seq`: asks for a checkpoint when `seq` is a multiple of the
 * volume's interval. The write is already durable, so a failed send is logged, not thrown
 * (the scheduled sweep catches up).
 */
export async function checkpointAfterCommit(volume: { volumeId: string; checkpointEveryCommits?: number }, seq: number): Promise<boolean> {
  const every = volume.checkpointEveryCommits ?? DEFAULT_CHECKPOINT_EVERY_COMMITS;
  if (every <= 0 || seq % every !== 0) return false;
  try {
    await sendCheckpointMessage({ type: 'checkpoint-volume', volumeId: volume.volumeId, requestedAtSeq: seq });
    return true;
  } catch (err) {
    console.error(`could not queue the checkpoint of volume ${volume.volumeId} at seq ${seq}; the sweep will take it:`, err);
    return false;
  }
}
