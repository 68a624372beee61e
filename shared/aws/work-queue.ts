/**
 * The work queues on SQS: the only place that knows SQS request shapes. Each message goes to
 * the queue of its type (`queueOf`); dead letters are received, released, moved back and
 * deleted here for shared/maintenance/dead-letters.ts.
 */
import {
  ChangeMessageVisibilityBatchCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
  SendMessageCommand,
  type MessageAttributeValue,
} from '@aws-sdk/client-sqs';
import { config } from '../core/config.ts';
import { invariant } from '../core/errors.ts';
import type { QueuedMessage, WorkQueue } from '../core/ports.ts';
import { queueOf, type WorkMessage, type WorkQueueName } from '../core/work-messages.ts';
import { sqs } from './clients.ts';

/** The URL of a work queue. */
export function queueUrl(name: WorkQueueName): string {
  const c = config();
  return name === 'gc' ? c.gcQueueUrl : name === 'evacuation' ? c.evacuationQueueUrl : c.checkpointQueueUrl;
}

async function send(message: WorkMessage, opts: { delaySeconds?: number } = {}): Promise<void> {
  await sqs().send(
    new SendMessageCommand({
      QueueUrl: queueUrl(queueOf(message)),
      MessageBody: JSON.stringify(message),
      ...(opts.delaySeconds !== undefined ? { DelaySeconds: opts.delaySeconds } : {}),
    }),
  );
}

async function sendBatch(messages: readonly WorkMessage[]): Promise<Array<{ code?: string; message?: string }>> {
  invariant(messages.length >= 1 && messages.length <= 10, () => `a batch holds 1 to 10 messages, not ${messages.length}`);
  const queue = queueOf(messages[0]!);
  invariant(
    messages.every((m) => queueOf(m) === queue),
    'every message of a batch goes to one queue',
  );
  const out = await sqs().send(
    new SendMessageBatchCommand({ QueueUrl: queueUrl(queue), Entries: messages.map((m, j) => ({ Id: String(j), MessageBody: JSON.stringify(m) })) }),
  );
  return (out.Failed ?? []).map((f) => ({ code: f.Code, message: f.Message }));
}

async function approximateCount(url: string): Promise<number> {
  const attrs = await sqs().send(
    new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] }),
  );
  return Number(attrs.Attributes?.ApproximateNumberOfMessages ?? 0) + Number(attrs.Attributes?.ApproximateNumberOfMessagesNotVisible ?? 0);
}

async function receive(url: string, max: number, holdSeconds: number): Promise<QueuedMessage[]> {
  const out = await sqs().send(
    new ReceiveMessageCommand({
      QueueUrl: url,
      MaxNumberOfMessages: max,
      VisibilityTimeout: holdSeconds,
      WaitTimeSeconds: 0,
      MessageSystemAttributeNames: ['All'],
      MessageAttributeNames: ['All'],
    }),
  );
  return (out.Messages ?? []).map((m) => ({
    messageId: m.MessageId ?? '',
    body: m.Body ?? '',
    receiptHandle: m.ReceiptHandle ?? '',
    attributes: { ...(m.Attributes ?? {}) } as Record<string, string>,
    messageAttributes: m.MessageAttributes,
  }));
}

async function release(url: string, messages: readonly QueuedMessage[]): Promise<void> {
  const entries = messages.map((m, j) => ({ Id: String(j), ReceiptHandle: m.receiptHandle, VisibilityTimeout: 0 }));
  await sqs().send(new ChangeMessageVisibilityBatchCommand({ QueueUrl: url, Entries: entries }));
}

async function resend(url: string, message: QueuedMessage): Promise<void> {
  await sqs().send(
    new SendMessageCommand({
      QueueUrl: url,
      MessageBody: message.body,
      MessageAttributes: message.messageAttributes as Record<string, MessageAttributeValue> | undefined,
    }),
  );
}

async function deleteMessage(url: string, message: QueuedMessage): Promise<void> {
  await sqs().send(new DeleteMessageCommand({ QueueUrl: url, ReceiptHandle: message.receiptHandle }));
}

/** The work-queue port (shared/core/ports.ts) on SQS. */
export const sqsWorkQueue: WorkQueue = { send, sendBatch, approximateCount, receive, release, resend, delete: deleteMessage };
