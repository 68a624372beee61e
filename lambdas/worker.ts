// The worker: SQS event source mapping -> background jobs, with partial batch failures.
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { handleWorkEvent } from '#shared/maintenance/worker.ts';
import { logColdStart } from './cold-start.ts';

logColdStart('worker');

export async function handler(event: SQSEvent): Promise<SQSBatchResponse> {
  return handleWorkEvent(event);
}
