/**
 * Background work from SQS. Records are processed one at a time and failures are reported
 * per record (`batchItemFailures`), so one poison message does not redeliver a whole batch;
 * after the queue's maxReceiveCount it moves to the dead-letter queue.
 */
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { sweepLeases } from './heads.ts';
import { reclaimVolume } from './volumes.ts';

type WorkMessage = { type: 'reclaim-volume'; volumeId: string } | { type: 'sweep-leases' };

function parse(body: string): WorkMessage {
  const msg = JSON.parse(body) as { type?: unknown; volumeId?: unknown };
  if (msg?.type === 'reclaim-volume' && typeof msg.volumeId === 'string') return { type: 'reclaim-volume', volumeId: msg.volumeId };
  if (msg?.type === 'sweep-leases') return { type: 'sweep-leases' };
  throw new Error(`unknown work message: ${body.slice(0, 200)}`);
}

async function run(msg: WorkMessage): Promise<Record<string, unknown>> {
  switch (msg.type) {
    case 'reclaim-volume':
      return { msg: 'reclaimed volume', volumeId: msg.volumeId, ...(await reclaimVolume(msg.volumeId)) };
    case 'sweep-leases':
      return { msg: 'swept leases', ...(await sweepLeases()) };
  }
}

export async function handleWorkEvent(event: SQSEvent): Promise<SQSBatchResponse> {
  const batchItemFailures: SQSBatchResponse['batchItemFailures'] = [];
  for (const record of event.Records) {
    try {
      console.log(JSON.stringify(await run(parse(record.body))));
    } catch (err) {
      console.error(`work message ${record.messageId} failed (receive ${record.attributes?.ApproximateReceiveCount}):`, err);
      batchItemFailures.push({ itemIdentifier: record.messageId });
    }
  }
  return { batchItemFailures };
}
