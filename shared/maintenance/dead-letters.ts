/**
 * The dead-letter queues, for operators (docs/evacuation.md, section 7): peek at what failed
 * five times, and move it back to its source queue once the cause is fixed.
 */
import { config } from '../core/config.ts';
import { InvalidInputError } from '../core/errors.ts';
import type { QueuedMessage } from '../core/ports.ts';
import { WORK_QUEUE_NAMES, type WorkQueueName } from '../core/work-messages.ts';
import { workQueue } from '../ports.ts';
import { failureNotes } from './failure-notes.ts';

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
  /** Why it failed, from the worker's failure note (docs/backup.md, "Failure notes"); absent when none was recorded. */
  reason?: string;
  /** The receive on which it last failed, and when. */
  failedAttempts?: number;
  failedAt?: string;
}

export interface DeadLetterQueueView {
  queue: WorkQueueName;
  deadLetterQueueUrl: string;
  approximateCount: number;
  messages: DeadLetter[];
}

/** Receives up to `max` distinct messages, holding each for HOLD_SECONDS (bounded rounds). */
async function receiveDistinct(queueUrl: string, max: number): Promise<QueuedMessage[]> {
  const seen = new Map<string, QueuedMessage>();
  for (let round = 0; round < RECEIVE_ROUNDS_MAX && seen.size < max; round++) {
    const got = await workQueue().receive(queueUrl, Math.min(10, max - seen.size), HOLD_SECONDS);
    if (got.length === 0) break;
    for (const m of got) if (m.messageId && !seen.has(m.messageId)) seen.set(m.messageId, m);
  }
  return [...seen.values()];
}

async function release(queueUrl: string, messages: readonly QueuedMessage[]): Promise<void> {
  for (let i = 0; i < messages.length; i += 10) await workQueue().release(queueUrl, messages.slice(i, i + 10));
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
    const approximateCount = await workQueue().approximateCount(q.deadLetterQueueUrl);
    const messages = await receiveDistinct(q.deadLetterQueueUrl, PEEK_MAX);
    await release(q.deadLetterQueueUrl, messages);
    // A missing note only means the reason is not known here (the worker's log has it).
    const why = await failureNotes(messages.map((m) => m.body)).catch(() => new Map<string, never>());
    out.push({
      queue: q.name,
      deadLetterQueueUrl: q.deadLetterQueueUrl,
      approximateCount,
      messages: messages.map((m) => {
        const body = m.body;
        const sent = Number(m.attributes.SentTimestamp);
        const note = why.get(body);
        return {
          ...(note ? { reason: note.reason, failedAttempts: note.receiveCount, failedAt: note.failedAt } : {}),
          messageId: m.messageId,
          body: body.slice(0, BODY_SHOWN_MAX),
          bodyTruncated: body.length > BODY_SHOWN_MAX,
          receiveCount: Number(m.attributes.ApproximateReceiveCount ?? 0),
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
  if (queue !== undefined && !WORK_QUEUE_NAMES.includes(queue as WorkQueueName))
    throw new InvalidInputError(`queue must be one of ${WORK_QUEUE_NAMES.join(', ')}, got ${JSON.stringify(queue)}`);
  const ids = body.messageIds;
  if (ids !== undefined && !(Array.isArray(ids) && ids.length > 0 && ids.length <= REDRIVE_MAX && ids.every((i) => typeof i === 'string' && i.length > 0))) {
    throw new InvalidInputError(`messageIds must be a non-empty array of at most ${REDRIVE_MAX} message ids`);
  }
  const wanted = ids === undefined ? null : new Set(ids as string[]);
  const moved = { gc: 0, evacuation: 0, checkpoint: 0 };
  for (const q of queues()) {
    if (queue !== undefined && q.name !== queue) continue;
    const messages = await receiveDistinct(q.deadLetterQueueUrl, REDRIVE_MAX);
    const keep: QueuedMessage[] = [];
    for (const m of messages) {
      if (wanted && !wanted.has(m.messageId)) {
        keep.push(m);
        continue;
      }
      await workQueue().resend(q.queueUrl, m);
      await workQueue().delete(q.deadLetterQueueUrl, m);
      moved[q.name]++;
    }
    await release(q.deadLetterQueueUrl, keep);
  }
  return { moved };
}
