/**
 * Sending the messages of the checkpoint queue (`SLEDGE_CHECKPOINT_QUEUE_URL`; their types are in
 * shared/core/work-messages.ts). Every one is idempotent: it may arrive twice, late, or out of
 * order (docs/checkpoints.md).
 */
import { invariant } from '../core/errors.ts';
import type { CheckpointQueueMessage } from '../core/work-messages.ts';
import { workQueue } from '../ports.ts';

/** Puts one message on the checkpoint queue. */
export async function sendCheckpointMessage(message: CheckpointQueueMessage): Promise<void> {
  await workQueue().send(message);
}

/** SQS takes at most 10 messages per batch. */
const SEND_BATCH_MAX = 10;

/** Puts messages on the checkpoint queue, 10 per request; throws if any was not accepted. */
export async function sendCheckpointMessages(messages: readonly CheckpointQueueMessage[]): Promise<void> {
  for (let i = 0; i < messages.length; i += SEND_BATCH_MAX) {
    const batch = messages.slice(i, i + SEND_BATCH_MAX);
    const failed = await workQueue().sendBatch(batch);
    invariant(failed.length === 0, () => `${failed.length} checkpoint messages were not accepted: ${failed[0]?.message ?? failed[0]?.code}`);
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
