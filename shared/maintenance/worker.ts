/**
 * Background work from SQS. Records are processed one at a time and failures are reported
 * per record (`batchItemFailures`), so one poison message does not redeliver a whole batch;
 * after the queue's maxReceiveCount it moves to the dead-letter queue.
 *
 * One worker serves every work queue; the message's `type` says what to do. Bodies are parsed
 * and validated into the one union of shared/core/work-messages.ts. Every job is idempotent:
 * any message may arrive twice, late, or out of order.
 */
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { rebuildPageMap } from './checkpoints/rebuild.ts';
import { sweepCheckpoints, takeCheckpoint } from './checkpoints/take.ts';
import { NotFoundError } from '../core/errors.ts';
import { parseWorkMessage, type WorkMessage } from '../core/work-messages.ts';
import { handleEvacuationMessage } from './evacuation.ts';
import { collectVolume, sweep } from './gc.ts';
import { sweepLeases } from '../control/heads.ts';
import { reclaimVolume } from '../control/volumes.ts';
import { purgeSnapshots } from '../control/snapshots.ts';
import { flattenStep } from './flatten.ts';
import { foldVolume, workerMinTail } from './fold.ts';
import { pageMap } from '../ports.ts';
import { backupStep } from '../backup/backup.ts';
import { deleteStep } from '../backup/delete.ts';
import { restoreStep } from '../backup/restore.ts';
import { groupRestoreStep } from '../backup/groups.ts';
import { clearFailure, recordFailure } from './failure-notes.ts';

/** Runs one work message; returns what was done, for the log. */
async function runWorkMessage(msg: WorkMessage, receiveCount = 1): Promise<Record<string, unknown>> {
  switch (msg.type) {
    case 'reclaim-volume':
      return { msg: 'reclaimed volume', volumeId: msg.volumeId, ...(await reclaimVolume(msg.volumeId)) };
    case 'flatten-volume':
      return { msg: 'flatten', ...(await flattenStep(msg.volumeId, msg.nextPage)) };
    case 'fold-volume': {
      // Up to a snapshot's tag, so that its readers and the next snapshot find it folded past.
      if (msg.upTo !== undefined) return { msg: 'fold', ...(await foldVolume(msg.volumeId, { upTo: msg.upTo })) };
      // Otherwise half a tail at least (a late or duplicate message finds less and does nothing; writers fold a full tail themselves).
      const v = await pageMap().getVolume(msg.volumeId);
      return { msg: 'fold', ...(await foldVolume(msg.volumeId, { minTail: v ? workerMinTail(v) : 1 })) };
    }
    case 'snapshot-purge':
      return { msg: 'snapshot purge', volumeId: msg.volumeId, ...(await purgeSnapshots(msg.volumeId)) };
    case 'sweep-leases':
      return { msg: 'swept leases', ...(await sweepLeases()) };
    case 'checkpoint-volume':
      try {
        const out = await takeCheckpoint(msg.volumeId, msg.requestedAtSeq === undefined ? {} : { requestedAtSeq: msg.requestedAtSeq });
        return { msg: 'checkpoint', ...out };
      } catch (err) {
        // A volume deleted and reclaimed before its checkpoint ran needs none.
        if (err instanceof NotFoundError) return { msg: 'checkpoint', done: 'skipped', volumeId: msg.volumeId, reason: err.message };
        throw err;
      }
    case 'checkpoint-sweep':
      return { msg: 'checkpoint sweep', ...(await sweepCheckpoints(msg.startAfter)) };
    case 'rebuild-volume':
      return { msg: 'rebuilt page map', ...(await rebuildPageMap(msg.volumeId)) };
    case 'gc-volume':
      return { msg: 'gc', volumeId: msg.volumeId, result: await collectVolume(msg.volumeId) };
    case 'gc-sweep':
      return { msg: 'gc sweep', result: await sweep(msg.startAfter) };
    case 'evacuate-drive':
    case 'move-chunks':
    case 'finish-pass':
    case 'repair-chunk':
      return { msg: `work done: ${msg.type}`, result: await handleEvacuationMessage(msg) };
    // Backups and restores (docs/backup.md): the receive count lets the last try record the failure.
    case 'backup-volume':
      return { msg: 'backup', ...(await backupStep(msg.backupId, receiveCount)) };
    case 'backup-delete':
      return { msg: 'backup delete', ...(await deleteStep(msg.backupId)) };
    case 'restore-volume':
      return { msg: 'restore', ...(await restoreStep(msg.restoreId, receiveCount)) };
    case 'group-restore':
      return { msg: 'group restore', ...(await groupRestoreStep(msg.groupRestoreId)) };
  }
}

export async function handleWorkEvent(event: SQSEvent): Promise<SQSBatchResponse> {
  const batchItemFailures: SQSBatchResponse['batchItemFailures'] = [];
  for (const record of event.Records) {
    const receiveCount = Number(record.attributes?.ApproximateReceiveCount ?? 1) || 1;
    try {
      const result = await runWorkMessage(parseWorkMessage(record.body), receiveCount);
      console.log(JSON.stringify(result));
      // A message that failed before leaves a failure note; once it succeeds the note is stale.
      if (receiveCount > 1) await clearFailure(record.body).catch((err: unknown) => console.error('could not clear a failure note:', err));
    } catch (err) {
      console.error(`work message ${record.messageId} failed (receive ${record.attributes?.ApproximateReceiveCount}):`, err);
      // Why it failed, where the dead-letter peek finds it (docs/backup.md, "Failure notes").
      const queue = record.eventSourceARN?.split(':').pop() ?? '';
      await recordFailure(record.body, queue, receiveCount, err).catch((e: unknown) => console.error('could not record a failure note:', e));
      // A message id appears once in the response even if a batch delivered it twice.
      if (!batchItemFailures.some((f) => f.itemIdentifier === record.messageId)) batchItemFailures.push({ itemIdentifier: record.messageId });
    }
  }
  return { batchItemFailures };
}
