/**
 * A local stand-in for Lambda's SQS event source mapping (with `ReportBatchItemFailures`).
 *
 * For each bound queue one loop long-polls ReceiveMessage, hands the batch to the handler
 * as the `SQSEvent` Lambda would build, and deletes what Lambda would delete:
 *
 * - the handler resolves with nothing, `{}`, or an empty/null `batchItemFailures`: every message;
 * - it resolves with valid `batchItemFailures`: every message except the failed ones, which
 *   reappear when their visibility timeout runs out;
 * - it throws, or names an item that is empty, not a string or not in the batch, or returns
 *   something that is not a batch response: nothing (the whole batch is retried).
 *
 * Messages left undeleted are never touched again by the poller: redelivery and
 * dead-lettering are SQS's job (visibility timeout and the queue's RedrivePolicy).
 *
 * As deployed, like an event source mapping:
 * - Visibility: the queue's own visibility timeout, unless a binding overrides it (tests do, so
 *   that a failed message returns in seconds rather than the stack's 12 minutes). Lambda refuses
 *   a mapping whose queue's visibility timeout is shorter than the function's timeout, so on AWS
 *   no message comes back while an invocation still holds it; when an override is shorter, the
 *   poller keeps the batch invisible while its handler runs (ChangeMessageVisibility every third
 *   of the override), so the override shortens only the wait after a failure.
 * - Function timeout: a handler still running `functionTimeoutSeconds` after its invocation
 *   began is abandoned, as Lambda ends an invocation that times out: the batch counts as
 *   failed, nothing is deleted, and its messages return when their visibility timeout runs out.
 *   In-process code cannot be killed, so the abandoned call runs on in the background and its
 *   result is ignored (on Lambda its execution environment would be stopped).
 * - Concurrency: each queue has one receive loop that hands batches to up to `maxConcurrency`
 *   concurrent invocations and receives no more while that many are running; queues are polled
 *   concurrently.
 */
import {
  ChangeMessageVisibilityBatchCommand,
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SQSClient,
  type Message,
  type MessageAttributeValue,
} from '@aws-sdk/client-sqs';
import type { SQSBatchResponse, SQSEvent, SQSMessageAttribute, SQSRecord, SQSRecordAttributes } from 'aws-lambda';

export type SqsHandler = (event: SQSEvent) => Promise<SQSBatchResponse | void>;

export interface QueueBinding {
  queueUrl: string;
  /** Looked up with GetQueueAttributes when absent. */
  queueArn?: string;
  handler: SqsHandler;
  /** Messages per batch, 1 to 10 000; default 10. Above 10, up to that many are gathered with several receives. */
  batchSize?: number;
  /**
   * VisibilityTimeout passed to ReceiveMessage, overriding the queue's own; default the queue's
   * own. When shorter than the function's timeout, a batch is kept invisible while it runs.
   */
  visibilityTimeoutSeconds?: number;
  /**
   * Long-poll wait, 0 to 20; default 1. (Lambda's pollers wait 20 s; a short wait lets `idle()`
   * and `stop()` answer soon after the queue empties.)
   */
  waitTimeSeconds?: number;
  /** The function's timeout, 1 to 900 s; default 3, Lambda's default. */
  functionTimeoutSeconds?: number;
  /**
   * Batches of this queue in flight at once, 1 to 1000: the event source mapping's
   * `ScalingConfig.MaximumConcurrency`, or the 5 concurrent batches Lambda starts a standard
   * queue with. Default 5.
   */
  maxConcurrency?: number;
  /**
   * `FunctionResponseTypes: ['ReportBatchItemFailures']`; default true. When false, a handler
   * that resolves has processed the whole batch, whatever it returns (as Lambda then reads no
   * batch response).
   */
  reportBatchItemFailures?: boolean;
}

export interface PollerOptions {
  /** Default: a client from the environment (honours AWS_ENDPOINT_URL; region us-east-1 when AWS_REGION is unset). */
  sqs?: SQSClient;
  /** Receives SQS errors (before each retry), `SqsHandlerError`s and `InvalidBatchResponseError`s. Default: console.error. */
  onError?: (err: unknown) => void;
}

export interface Poller {
  /**
   * Ends long polls and backoff waits at once, waits for batches in progress (and their
   * deletes), but not for handlers abandoned at their timeout. Idempotent.
   */
  stop(): Promise<void>;
  /**
   * Resolves when every queue has been seen empty by a receive that began after this call
   * and after the last batch finished, with no batch in flight. (Messages still invisible
   * after a failure are not seen, so they do not count.) Resolves at once once stopped.
   */
  idle(): Promise<void>;
}

/** The handler threw; the whole batch is left for redelivery. `cause` is what it threw. */
export class SqsHandlerError extends Error {
  override name = 'SqsHandlerError';
  constructor(
    readonly queueUrl: string,
    readonly messageIds: string[],
    cause: unknown,
  ) {
    super(`handler for ${queueUrl} failed on a batch of ${messageIds.length}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/** The handler's result was not a valid batch response; as Lambda does, the whole batch counts as failed. */
export class InvalidBatchResponseError extends Error {
  override name = 'InvalidBatchResponseError';
  constructor(
    readonly queueUrl: string,
    readonly messageIds: string[],
    readonly response: unknown,
    reason: string,
  ) {
    super(`handler for ${queueUrl} returned an invalid batch response (${reason}); the whole batch of ${messageIds.length} will be retried`);
  }
}

/**
 * The handler ran past the function's timeout; as Lambda does, the invocation failed and the
 * whole batch is left for redelivery. The call itself is abandoned, not stopped.
 */
export class SqsHandlerTimeoutError extends Error {
  override name = 'SqsHandlerTimeoutError';
  constructor(
    readonly queueUrl: string,
    readonly messageIds: string[],
    readonly timeoutSeconds: number,
  ) {
    super(`handler for ${queueUrl} timed out after ${timeoutSeconds} s on a batch of ${messageIds.length}; the batch will be retried`);
  }
}

/** A DeleteMessageBatch entry SQS refused; the message will be delivered again. */
export class DeleteFailedError extends Error {
  override name = 'DeleteFailedError';
  constructor(
    readonly queueUrl: string,
    readonly messageId: string,
    readonly code: string | undefined,
    detail: string | undefined,
  ) {
    super(`could not delete message ${messageId} from ${queueUrl}: ${code ?? 'unknown'}${detail ? ` (${detail})` : ''}`);
  }
}

const BACKOFF_BASE_MS = 100;
const BACKOFF_CAP_MS = 5_000;
const EMPTY_POLL_PAUSE_MS = 100;
const DELETE_ATTEMPTS = 3;
/** Lambda's defaults for a function and for a standard queue's event source mapping. */
const DEFAULT_FUNCTION_TIMEOUT_SECONDS = 3;
const DEFAULT_MAX_CONCURRENCY = 5;
const KNOWN_ATTRIBUTES = ['ApproximateReceiveCount', 'SentTimestamp', 'SenderId', 'ApproximateFirstReceiveTimestamp'] as const;

/** Capped exponential backoff with jitter: attempt 1 waits about 100 ms, never more than 5 s. */
export function backoffMs(attempt: number): number {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

function toLambdaAttribute(a: MessageAttributeValue): SQSMessageAttribute {
  return {
    ...(a.StringValue !== undefined ? { stringValue: a.StringValue } : {}),
    ...(a.BinaryValue !== undefined ? { binaryValue: base64(a.BinaryValue) } : {}),
    stringListValues: a.StringListValues ?? [],
    binaryListValues: (a.BinaryListValues ?? []).map(base64),
    dataType: a.DataType ?? 'String',
  };
}

/** The `SQSRecord` Lambda builds from a received message. */
export function toSqsRecord(message: Message, eventSourceARN: string, awsRegion: string): SQSRecord {
  const received: Record<string, string | undefined> = { ...message.Attributes };
  const attributes: Record<string, string> = {};
  for (const name of KNOWN_ATTRIBUTES) {
    const v = received[name];
    if (v !== undefined) attributes[name] = v;
  }
  for (const [name, v] of Object.entries(received)) if (v !== undefined && !(name in attributes)) attributes[name] = v;

  const messageAttributes: Record<string, SQSMessageAttribute> = {};
  for (const [name, value] of Object.entries(message.MessageAttributes ?? {})) messageAttributes[name] = toLambdaAttribute(value);

  const record: SQSRecord = {
    messageId: message.MessageId ?? '',
    receiptHandle: message.ReceiptHandle ?? '',
    body: message.Body ?? '',
    attributes: attributes as unknown as SQSRecordAttributes,
    messageAttributes,
    md5OfBody: message.MD5OfBody ?? '',
    eventSource: 'aws:sqs',
    eventSourceARN,
    awsRegion,
  };
  if (message.MD5OfMessageAttributes !== undefined) {
    // Lambda puts it between md5OfBody and eventSource.
    const { eventSource, eventSourceARN: arn, awsRegion: region, ...head } = record;
    return { ...head, md5OfMessageAttributes: message.MD5OfMessageAttributes, eventSource, eventSourceARN: arn, awsRegion: region };
  }
  return record;
}

export type BatchOutcome = { kind: 'ok'; failed: Set<string> } | { kind: 'invalid'; reason: string };

/** Interprets a handler's result the way Lambda does with ReportBatchItemFailures. */
export function interpretBatchResponse(response: unknown, messageIds: ReadonlySet<string>): BatchOutcome {
  if (response === undefined || response === null) return { kind: 'ok', failed: new Set() };
  if (typeof response !== 'object' || Array.isArray(response)) return { kind: 'invalid', reason: 'not an object' };
  const failures = (response as { batchItemFailures?: unknown }).batchItemFailures;
  if (failures === undefined || failures === null) return { kind: 'ok', failed: new Set() };
  if (!Array.isArray(failures)) return { kind: 'invalid', reason: 'batchItemFailures is not an array' };
  const failed = new Set<string>();
  for (const item of failures as unknown[]) {
    const id = typeof item === 'object' && item !== null ? (item as { itemIdentifier?: unknown }).itemIdentifier : undefined;
    if (typeof id !== 'string' || id === '') return { kind: 'invalid', reason: `itemIdentifier ${JSON.stringify(id ?? null)} is not a message id` };
    if (!messageIds.has(id)) return { kind: 'invalid', reason: `itemIdentifier ${JSON.stringify(id)} is not in the batch` };
    failed.add(id);
  }
  return { kind: 'ok', failed };
}

function defaultClient(): SQSClient {
  return new SQSClient(process.env['AWS_REGION'] ? {} : { region: 'us-east-1' });
}

function isAbort(err: unknown, signal: AbortSignal): boolean {
  return signal.aborted || (err instanceof Error && err.name === 'AbortError');
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

function validate(b: QueueBinding): void {
  const check = (name: string, v: number | undefined, min: number, max: number) => {
    if (v !== undefined && !(Number.isInteger(v) && v >= min && v <= max)) {
      throw new RangeError(`${name} for ${b.queueUrl} must be an integer from ${min} to ${max}, got ${v}`);
    }
  };
  check('batchSize', b.batchSize, 1, 10_000);
  check('waitTimeSeconds', b.waitTimeSeconds, 0, 20);
  check('visibilityTimeoutSeconds', b.visibilityTimeoutSeconds, 0, 43_200);
  check('functionTimeoutSeconds', b.functionTimeoutSeconds, 1, 900);
  check('maxConcurrency', b.maxConcurrency, 1, 1000);
}

interface BindingState {
  binding: QueueBinding;
  arn?: string;
  region?: string;
  /** The last completed receive: the tick at which it started and whether it was empty. */
  last?: { startTick: number; empty: boolean };
}

export function startPoller(bindings: QueueBinding[], opts: PollerOptions = {}): Poller {
  bindings.forEach(validate);
  const sqs = opts.sqs ?? defaultClient();
  const report = (err: unknown) => {
    try {
      (opts.onError ?? ((e: unknown) => console.error('[sqs-poller]', e)))(err);
    } catch {
      // a throwing error sink must not kill the loop
    }
  };
  const controller = new AbortController();
  const signal = controller.signal;
  const states: BindingState[] = bindings.map((binding) => ({ binding }));

  // idle() bookkeeping: a logical clock, ticked at each receive start and batch end.
  let tick = 0;
  let lastBatchEndTick = 0;
  let inFlight = 0;
  let waiters: Array<{ since: number; resolve: () => void }> = [];
  const checkIdle = () => {
    if (waiters.length === 0) return;
    if (signal.aborted) {
      waiters.forEach((w) => w.resolve());
      waiters = [];
      return;
    }
    if (inFlight > 0) return;
    waiters = waiters.filter((w) => {
      const after = Math.max(w.since, lastBatchEndTick);
      const idle = states.every((s) => s.last !== undefined && s.last.empty && s.last.startTick > after);
      if (idle) w.resolve();
      return !idle;
    });
  };

  async function resolveArn(s: BindingState): Promise<void> {
    let arn = s.binding.queueArn;
    if (arn === undefined) {
      const out = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: s.binding.queueUrl, AttributeNames: ['QueueArn'] }), { abortSignal: signal });
      arn = out.Attributes?.QueueArn;
      if (!arn) throw new Error(`GetQueueAttributes returned no QueueArn for ${s.binding.queueUrl}`);
    }
    s.arn = arn;
    s.region = arn.split(':')[3] || (await sqs.config.region());
  }

  async function receive(s: BindingState): Promise<Message[]> {
    const b = s.binding;
    const want = b.batchSize ?? 10;
    const messages: Message[] = [];
    for (;;) {
      const max = Math.min(10, want - messages.length);
      const out = await sqs.send(
        new ReceiveMessageCommand({
          QueueUrl: b.queueUrl,
          MaxNumberOfMessages: max,
          WaitTimeSeconds: messages.length === 0 ? (b.waitTimeSeconds ?? 1) : 0,
          ...(b.visibilityTimeoutSeconds !== undefined ? { VisibilityTimeout: b.visibilityTimeoutSeconds } : {}),
          MessageSystemAttributeNames: ['All'],
          MessageAttributeNames: ['All'],
        }),
        { abortSignal: signal },
      );
      const got = out.Messages ?? [];
      messages.push(...got);
      // (A failure of a follow-up receive for a batch above 10 is thrown away with what was
      // gathered; those messages come back after their visibility timeout.)
      if (got.length < max || messages.length >= want || signal.aborted) return messages;
    }
  }

  async function deleteMessages(s: BindingState, messages: Message[]): Promise<void> {
    for (let i = 0; i < messages.length; i += 10) {
      let chunk = messages.slice(i, i + 10);
      for (let attempt = 1; chunk.length > 0; attempt++) {
        try {
          const out = await sqs.send(
            new DeleteMessageBatchCommand({
              QueueUrl: s.binding.queueUrl,
              Entries: chunk.map((m, j) => ({ Id: String(j), ReceiptHandle: m.ReceiptHandle })),
            }),
          );
          const retry: Message[] = [];
          for (const f of out.Failed ?? []) {
            const m = chunk[Number(f.Id)];
            if (m === undefined) continue;
            if (f.SenderFault === false && attempt < DELETE_ATTEMPTS) retry.push(m);
            else report(new DeleteFailedError(s.binding.queueUrl, m.MessageId ?? '', f.Code, f.Message));
          }
          chunk = retry;
        } catch (err) {
          report(err);
          if (attempt >= DELETE_ATTEMPTS) {
            for (const m of chunk) report(new DeleteFailedError(s.binding.queueUrl, m.MessageId ?? '', 'DeleteMessageBatch failed', String(err)));
            break;
          }
        }
        if (chunk.length > 0) await new Promise((r) => setTimeout(r, backoffMs(attempt)));
      }
    }
  }

  /** The handler's result, or `timedOut` once the function's timeout passes first. */
  function invoke(b: QueueBinding, event: SQSEvent): Promise<{ timedOut: false; response: unknown } | { timedOut: true }> {
    const timeoutMs = (b.functionTimeoutSeconds ?? DEFAULT_FUNCTION_TIMEOUT_SECONDS) * 1000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => resolve({ timedOut: true }), timeoutMs);
      let call: Promise<SQSBatchResponse | void>;
      try {
        call = Promise.resolve(b.handler(event));
      } catch (err) {
        call = Promise.reject(err);
      }
      // Settling after the timeout changes nothing: the promise is already resolved.
      call.then(
        (response) => {
          clearTimeout(timer);
          resolve({ timedOut: false, response });
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  /**
   * With a visibility override shorter than the function's timeout: every third of the override, makes
   * the batch invisible for another override, until the returned function stops it.
   */
  function keepInvisible(s: BindingState, messages: Message[]): () => void {
    const b = s.binding;
    const seconds = b.visibilityTimeoutSeconds;
    if (seconds === undefined || seconds < 1 || seconds >= (b.functionTimeoutSeconds ?? DEFAULT_FUNCTION_TIMEOUT_SECONDS)) return () => {};
    let stopped = false;
    const extend = async () => {
      for (let i = 0; i < messages.length && !stopped; i += 10) {
        try {
          const out = await sqs.send(
            new ChangeMessageVisibilityBatchCommand({
              QueueUrl: b.queueUrl,
              Entries: messages.slice(i, i + 10).map((m, j) => ({ Id: String(j), ReceiptHandle: m.ReceiptHandle, VisibilityTimeout: seconds })),
            }),
          );
          // (After the batch ended, a refusal only means its messages were already deleted.)
          if (!stopped) for (const f of out.Failed ?? []) report(new Error(`could not extend the visibility of a message of ${b.queueUrl}: ${f.Code ?? 'unknown'} (${f.Message ?? ''})`));
        } catch (err) {
          if (!stopped) report(err);
        }
      }
    };
    const timer = setInterval(() => void extend(), (seconds * 1000) / 3);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }

  async function processBatch(s: BindingState, messages: Message[]): Promise<void> {
    const b = s.binding;
    const records = messages.map((m) => toSqsRecord(m, s.arn ?? '', s.region ?? ''));
    const ids = records.map((r) => r.messageId);
    let outcome: Awaited<ReturnType<typeof invoke>>;
    const stopExtending = keepInvisible(s, messages);
    try {
      outcome = await invoke(b, { Records: records });
    } catch (err) {
      report(new SqsHandlerError(b.queueUrl, ids, err));
      return; // delete nothing: the batch comes back after the visibility timeout
    } finally {
      stopExtending();
    }
    if (outcome.timedOut) {
      report(new SqsHandlerTimeoutError(b.queueUrl, ids, b.functionTimeoutSeconds ?? DEFAULT_FUNCTION_TIMEOUT_SECONDS));
      return; // as for a throw
    }
    const response = outcome.response;
    const interpreted = (b.reportBatchItemFailures ?? true) ? interpretBatchResponse(response, new Set(ids)) : ({ kind: 'ok', failed: new Set() } as const);
    if (interpreted.kind === 'invalid') {
      report(new InvalidBatchResponseError(b.queueUrl, ids, response, interpreted.reason));
      return;
    }
    const done = messages.filter((m) => !interpreted.failed.has(m.MessageId ?? ''));
    await deleteMessages(s, done);
  }

  async function run(s: BindingState): Promise<void> {
    const maxConcurrency = s.binding.maxConcurrency ?? DEFAULT_MAX_CONCURRENCY;
    const running = new Set<Promise<void>>();
    let failures = 0;
    const fail = async (err: unknown) => {
      failures++;
      report(err);
      await sleep(backoffMs(failures), signal);
    };
    while (!signal.aborted) {
      if (running.size >= maxConcurrency) {
        // Every slot is busy: receive nothing more (its visibility clock would run) until one frees.
        await Promise.race(running);
        continue;
      }
      if (s.arn === undefined) {
        try {
          await resolveArn(s);
        } catch (err) {
          if (isAbort(err, signal)) break;
          await fail(err);
          continue;
        }
      }
      const startTick = ++tick;
      let messages: Message[];
      try {
        messages = await receive(s);
      } catch (err) {
        if (isAbort(err, signal)) break;
        s.last = undefined;
        await fail(err);
        continue;
      }
      failures = 0;
      if (messages.length === 0) {
        s.last = { startTick, empty: true };
        checkIdle();
        if ((s.binding.waitTimeSeconds ?? 1) === 0) await sleep(EMPTY_POLL_PAUSE_MS, signal);
        continue;
      }
      s.last = { startTick, empty: false };
      // Counted before the next receive starts, so idle() never sees an empty receive while a
      // batch received before it is still on its way to the handler.
      inFlight++;
      const batch: Promise<void> = processBatch(s, messages)
        .catch(report)
        .finally(() => {
          running.delete(batch);
          inFlight--;
          lastBatchEndTick = ++tick;
          checkIdle();
        });
      running.add(batch);
    }
    // stop(): wait for the batches in progress (not for handlers already abandoned at their timeout).
    await Promise.all(running);
  }

  const loops = states.map((s) => run(s));
  let stopping: Promise<void> | undefined;

  return {
    stop() {
      stopping ??= (async () => {
        controller.abort();
        checkIdle();
        await Promise.all(loops);
        checkIdle();
      })();
      return stopping;
    },
    idle() {
      if (signal.aborted) return Promise.resolve();
      return new Promise<void>((resolve) => {
        waiters.push({ since: ++tick, resolve });
        checkIdle();
      });
    },
  };
}
