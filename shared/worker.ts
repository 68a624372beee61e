/**
 * Background work from SQS. Records are processed one at a time and failures are reported
 * per record (`batchItemFailures`), so one poison message does not redeliver a whole batch;
 * after the queue's maxReceiveCount it moves to the dead-letter queue.
 */
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { handleEvacuationMessage, parseEvacuationMessage, type EvacuationMessage } from './evacuation.ts';
import { collectVolume, sweep, type GcMessage } from './gc.ts';
import { reclaimVolume } from './volumes.ts';

type WorkMessage = { type: 'reclaim-volume'; volumeId: string } | GcMessage | EvacuationMessage;

/** A message no handler understands: it fails every time and ends in the dead-letter queue. */
export class UnknownWorkMessageError extends Error {
  override name = 'UnknownWorkMessageError';
}

function parse(body: string): WorkMessage {
  let msg: Record<string, unknown>;
  try {
    msg = JSON.parse(body) as Record<string, unknown>;
  } catch (err) {
    throw new UnknownWorkMessageError(`work message is not JSON: ${body.slice(0, 200)}`, { cause: err });
  }
  if (typeof msg !== 'object' || msg === null) throw new UnknownWorkMessageError(`work message is not an object: ${body.slice(0, 200)}`);
  if ((msg.type === 'reclaim-volume' || msg.type === 'gc-volume') && typeof msg.volumeId === 'string') return msg as WorkMessage;
  if (msg.type === 'gc-sweep' && (msg.startAfter === undefined || typeof msg.startAfter === 'string')) return msg as WorkMessage;
  const evacuation = parseEvacuationMessage(msg);
  if (evacuation) return evacuation;
  throw new UnknownWorkMessageError(`unknown work message: ${body.slice(0, 200)}`);
}

async function run(msg: WorkMessage): Promise<unknown> {
  switch (msg.type) {
    case 'reclaim-volume':
      return reclaimVolume(msg.volumeId);
    case 'gc-volume':
      return collectVolume(msg.volumeId);
    case 'gc-sweep':
      return sweep(msg.startAfter);
    default:
      return handleEvacuationMessage(msg);
  }
}

export async function handleWorkEvent(event: SQSEvent): Promise<SQSBatchResponse> {
  const batchItemFailures: SQSBatchResponse['batchItemFailures'] = [];
  for (const record of event.Records) {
    try {
      const msg = parse(record.body);
      const result = await run(msg);
      if (msg.type !== 'move-chunks') console.log(JSON.stringify({ msg: `work done: ${msg.type}`, messageId: record.messageId, result }));
    } catch (err) {
      console.error(`work message ${record.messageId} failed (receive ${record.attributes?.ApproximateReceiveCount}):`, err);
      // A message id appears once in the response even if a batch delivered it twice.
      if (!batchItemFailures.some((f) => f.itemIdentifier === record.messageId)) batchItemFailures.push({ itemIdentifier: record.messageId });
    }
  }
  return { batchItemFailures };
}
