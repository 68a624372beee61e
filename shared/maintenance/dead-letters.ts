/**
 * The dead-letter queues, for operators (docs/evacuation.md, section 7): peek at what failed
 * five times, and move it back to its source queue once the cause is fixed.
 */
import {
  ChangeMessageVisibilityBatchCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  type Message,
} from '@aws-sdk/client-sqs';
import { sqs } from '../aws/clients.ts';
import { config } from '../core/config.ts';
import { InvalidInputError } from '../core/errors.ts';

export const WORK_QUEUE_NAMES = ['gc', 'evacuation', 'checkpoint'] as const;
export type WorkQueueName = (typeof WORK_QUEUE_NAMES)[number];

/** Messages shown per queue at most, and the bounded number of receives used to find them. */
export const PEEK_MAX = 100;
const RECEIVE_ROUNDS_MAX = 20;
/** Long enough to finish one peek or redrive round; messages are made visible again at once after a peek. */
const HOLD_SECONDS = 30;
/** Messages one redrive request moves at most per queue. */
export const REDRIVE_MAX = 1000;
const BODY_SHOWN_MAX = 4096;

function queues(): Array<{ name: WorkQueueName; queueUrl: string; deadLetterQueueUrl: string }> {
  const c = config();
  return [
    { name: 'gc', queueUrl: c.gcQueueUrl, deadLetterQueueUrl: c.gcDeadLetterQueueUrl },
    { name: 'evacuation', queueUrl: c.evacuationQueueUrl, deadLetterQueueUrl: c.evacuationDeadLetterQueueUrl },
    { name: 'checkpoint', queueUrl: c.checkpointQueueUrl, deadLetterQueueUrl: c.checkpointDeadLetterQueueUrl },
  ];
}

export interface DeadLetter {
  messageId: string;
  body: string;
  bodyTruncated: boolean;
  /** Receives so far, counting the ones on the source queue and this peek's. */
  receiveCount: number;
  sentAt: string | null;
}

export interface DeadLetterQueueView {
  queue: WorkQueueName;
  deadLetterQueueUrl: string;
  approximateCount: number;
  messages: DeadLetter[];
}

/** Receives up to `max` distinct messages, holding each for HOLD_SECONDS (bounded rounds). */
async function receiveDistinct(queueUrl: string, max: number): Promise<Message[]> {
  const seen = new Map<string, Message>();
  for (let round = 0; round < RECEIVE_ROUNDS_MAX && seen.size < max; round++) {
    const out = await sqs().send(
      new ReceiveMessageCommand({
        QueueUrl: queueUrl,
        MaxNumberOfMessages: Math.min(10, max - seen.size),
        VisibilityTimeout: HOLD_SECONDS,
        WaitTimeSeconds: 0,
        MessageSystemAttributeNames: ['All'],
        MessageAttributeNames: ['All'],
      }),
    );
    const got = out.Messages ?? [];
    if (got.length === 0) break;
    for (const m of got) if (m.MessageId && !seen.has(m.MessageId)) seen.set(m.MessageId, m);
  }
  return [...seen.values()];
}

async function release(queueUrl: string, messages: readonly Message[]): Promise<void> {
  for (let i = 0; i < messages.length; i += 10) {
    const entries = messages.slice(i, i + 10).map((m, j) => ({ Id: String(j), ReceiptHandle: m.ReceiptHandle!, VisibilityTimeout: 0 }));
    await sqs().send(new ChangeMessageVisibilityBatchCommand({ QueueUrl: queueUrl, Entries: entries }));
  }
}

/**
 * Every dead-letter queue with up to PEEK_MAX of its messages. Nothing is deleted: the messages
 * are received with a short hold and made visible again before this returns.
 *
 * @example
 * const { queues } = await peekDeadLetters(); // [{ queue: 'gc', approximateCount: 1, messages: [...] }, ...]
 */
export async function peekDeadLetters(): Promise<{ queues: DeadLetterQueueView[] }> {
  const out: DeadLetterQueueView[] = [];
  for (const q of queues()) {
    const attrs = await sqs().send(new GetQueueAttributesCommand({ QueueUrl: q.deadLetterQueueUrl, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] }));
    const messages = await receiveDistinct(q.deadLetterQueueUrl, PEEK_MAX);
    await release(q.deadLetterQueueUrl, messages);
    out.push({
      queue: q.name,
      deadLetterQueueUrl: q.deadLetterQueueUrl,
      approximateCount: Number(attrs.Attributes?.ApproximateNumberOfMessages ?? 0) + Number(attrs.Attributes?.ApproximateNumberOfMessagesNotVisible ?? 0),
      messages: messages.map((m) => {
        const body = m.Body ?? '';
        const sent = Number(m.Attributes?.SentTimestamp);
        return {
          messageId: m.MessageId!,
          body: body.slice(0, BODY_SHOWN_MAX),
          bodyTruncated: body.length > BODY_SHOWN_MAX,
          receiveCount: Number(m.Attributes?.ApproximateReceiveCount ?? 0),
          sentAt: Number.isFinite(sent) ? new Date(sent).toISOString() : null,
        };
      }),
    });
  }
  return { queues: out };
}

/**
 * Moves dead letters back to their source queues: all of them, those of one `queue`, or only
 * `messageIds`. Each is sent to the source, then deleted from the DLQ (a crash between the two
 * leaves a duplicate, which every job tolerates). Returns how many moved per queue.
 */
export async function redriveDeadLetters(body: Record<string, unknown>): Promise<{ moved: Record<WorkQueueName, number> }> {
  const extra = Object.keys(body).filter((k) => k !== 'queue' && k !== 'messageIds');
  if (extra.length > 0) throw new InvalidInputError(`unknown field ${extra[0]}; a redrive takes queue and messageIds`);
  const queue = body.queue;
  if (queue !== undefined && !WORK_QUEUE_NAMES.includes(queue as WorkQueueName)) throw new InvalidInputError(`queue must be one of ${WORK_QUEUE_NAMES.join(', ')}, got ${JSON.stringify(queue)}`);
  const ids = body.messageIds;
  if (ids !== undefined && !(Array.isArray(ids) && ids.length > 0 && ids.length <= REDRIVE_MAX && ids.every((i) => typeof i === 'string' && i.length > 0))) {
    throw new InvalidInputError(`messageIds must be a non-empty array of at most ${REDRIVE_MAX} message ids`);
  }
  const wanted = ids === undefined ? null : new Set(ids as string[]);
  const moved = { gc: 0, evacuation: 0, checkpoint: 0 };
  for (const q of queues()) {
    if (queue !== undefined && q.name !== queue) continue;
    const messages = await receiveDistinct(q.deadLetterQueueUrl, REDRIVE_MAX);
    const keep: Message[] = [];
    for (const m of messages) {
      if (wanted && !wanted.has(m.MessageId!)) {
        keep.push(m);
        continue;
      }
      await sqs().send(new SendMessageCommand({ QueueUrl: q.queueUrl, MessageBody: m.Body ?? '', MessageAttributes: m.MessageAttributes }));
      await sqs().send(new DeleteMessageCommand({ QueueUrl: q.deadLetterQueueUrl, ReceiptHandle: m.ReceiptHandle! }));
      moved[q.name]++;
    }
    await release(q.deadLetterQueueUrl, keep);
  }
  return { moved };
}
