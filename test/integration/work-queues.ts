/**
 * Work queues private to one test file, and an in-process stand-in for Lambda's SQS event
 * source that can deliver every message twice, late and shuffled.
 *
 * The control plane of the global setup polls the stack's own queues in another process, where
 * this file's fault rules do not apply. A test that drives the worker itself points the
 * worker's queue variables at real queues of its own (same endpoint, same redrive policy as the
 * stack: maxReceiveCount 5) and calls the worker handler with the records it receives.
 */
import { randomBytes } from 'node:crypto';
import {
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  type Message,
} from '@aws-sdk/client-sqs';
import type { SQSBatchResponse, SQSEvent, SQSRecord } from 'aws-lambda';
import { sqs } from '#shared/aws/clients.ts';
import { toSqsRecord } from '#local/sqs-poller.ts';

export const MAX_RECEIVE_COUNT = 5;

/** Creates a queue and its DLQ (maxReceiveCount 5, visibility `visibilitySeconds`). */
export async function privateQueue(label: string, visibilitySeconds = 3): Promise<{ url: string; dlqUrl: string }> {
  const suffix = `${label}-${randomBytes(4).toString('hex')}`;
  const dlq = await sqs().send(new CreateQueueCommand({ QueueName: `test-dlq-${suffix}` }));
  const arn = await sqs().send(new GetQueueAttributesCommand({ QueueUrl: dlq.QueueUrl!, AttributeNames: ['QueueArn'] }));
  const q = await sqs().send(
    new CreateQueueCommand({
      QueueName: `test-${suffix}`,
      Attributes: {
        VisibilityTimeout: String(visibilitySeconds),
        RedrivePolicy: JSON.stringify({ deadLetterTargetArn: arn.Attributes!.QueueArn, maxReceiveCount: MAX_RECEIVE_COUNT }),
      },
    }),
  );
  return { url: q.QueueUrl!, dlqUrl: dlq.QueueUrl! };
}

export interface DriveOptions {
  /** Deliver every message a second time, in a later batch (late), and shuffle every batch. */
  duplicate?: boolean;
  /** A PRNG in [0, 1) for the shuffles (seeded by the test). */
  random?: () => number;
  /** Stop once this says so (checked before every receive). */
  until: () => Promise<boolean>;
  /** Bound on receive rounds. */
  roundsMax: number;
}

export interface DriveReport {
  rounds: number;
  delivered: number;
  duplicatesDelivered: number;
  failed: number;
}

/**
 * Receives from `queueUrl` and hands batches to `handler` until `until()` holds, deleting what
 * the handler did not report as failed (as Lambda does). With `duplicate`, every record is also
 * delivered once more in a later batch; the copies still pending when `until()` holds are
 * delivered at the end, after the job is done (a late duplicate must change nothing).
 */
export async function driveQueue(queueUrl: string, handler: (e: SQSEvent) => Promise<SQSBatchResponse>, opts: DriveOptions): Promise<DriveReport> {
  const random = opts.random ?? Math.random;
  const late: SQSRecord[] = [];
  const report: DriveReport = { rounds: 0, delivered: 0, duplicatesDelivered: 0, failed: 0 };
  const shuffle = <T>(a: T[]): T[] => {
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [a[i], a[j]] = [a[j]!, a[i]!];
    }
    return a;
  };
  for (; report.rounds < opts.roundsMax; report.rounds++) {
    if (await opts.until()) break;
    const out = await sqs().send(
      new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1, MessageSystemAttributeNames: ['All'] }),
    );
    const messages: Message[] = out.Messages ?? [];
    const records = messages.map((m) => toSqsRecord(m, 'arn:aws:sqs:us-east-1:000000000000:test', 'us-east-1'));
    const batch = [...records];
    if (opts.duplicate) {
      // Copies of earlier messages join this batch (late, out of order); this batch's go to later ones.
      const take = Math.min(late.length, 1 + Math.floor(random() * 5));
      for (let i = 0; i < take; i++) batch.push(late.splice(Math.floor(random() * late.length), 1)[0]!);
      late.push(...records.map((r) => ({ ...r })));
      report.duplicatesDelivered += take;
      shuffle(batch);
    }
    if (batch.length === 0) continue;
    report.delivered += batch.length;
    const res = await handler({ Records: batch });
    const failed = new Set(res.batchItemFailures.map((f) => f.itemIdentifier));
    report.failed += failed.size;
    const done = messages.filter((m) => !failed.has(m.MessageId!));
    for (let i = 0; i < done.length; i += 10) {
      await sqs().send(new DeleteMessageBatchCommand({ QueueUrl: queueUrl, Entries: done.slice(i, i + 10).map((m, j) => ({ Id: String(j), ReceiptHandle: m.ReceiptHandle! })) }));
    }
  }
  // The copies still pending arrive after the work is done.
  for (let i = 0; i < late.length; i += 10) {
    const batch = shuffle(late.slice(i, i + 10));
    report.delivered += batch.length;
    report.duplicatesDelivered += batch.length;
    await handler({ Records: batch });
  }
  return report;
}
