/**
 * Background work from SQS. Records are processed one at a time and failures are reported
 * per record (`batchItemFailures`), so one poison message does not redeliver a whole batch;
 * after the queue's maxReceiveCount it moves to the dead-letter queue.
 */
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { reclaimVolume } from './volumes.ts';

type WorkMessage = { type: 'reclaim-volume'; volumeId: string };

function parse(body: string): WorkMessage {
  const msg = JSON.parse(body) as Partial<WorkMessage>;
  if (msg?.type === 'reclaim-volume' && typeof msg.volumeId === 'string') return msg as WorkMessage;
  throw new Error(`unknown work message: ${body.slice(0, 200)}`);
}

export async function handleWorkEvent(event: SQSEvent): Promise<SQSBatchResponse> {
  const batchItemFailures: SQSBatchResponse['batchItemFailures'] = [];
  for (const record of event.Records) {
    try {
      const msg = parse(record.body);
      const result = await reclaimVolume(msg.volumeId);
      console.log(JSON.stringify({ msg: 'reclaimed volume', volumeId: msg.volumeId, ...result }));
    } catch (err) {
      console.error(`work message ${record.messageId} failed (receive ${record.attributes?.ApproximateReceiveCount}):`, err);
      batchItemFailures.push({ itemIdentifier: record.messageId });
    }
  }
  return { batchItemFailures };
}
