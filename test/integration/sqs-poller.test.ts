import { createHash, randomBytes } from 'node:crypto';
import {
  CreateQueueCommand,
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
  SendMessageCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import type { SQSEvent, SQSRecord } from 'aws-lambda';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { startSchedules } from '#local/schedules.ts';
import {
  InvalidBatchResponseError,
  SqsHandlerError,
  SqsHandlerTimeoutError,
  startPoller,
  type Poller,
  type QueueBinding,
  type SqsHandler,
} from '#local/sqs-poller.ts';

/** The integration project's global setup provides its endpoint; run alone, the usual local one. */
function endpointUrl(): string {
  let provided: unknown;
  try {
    provided = (inject as (key: string) => unknown)('endpointUrl');
  } catch {
    provided = undefined;
  }
  return typeof provided === 'string' && provided !== '' ? provided : (process.env.AWS_ENDPOINT_URL ?? 'http://127.0.0.1:4566');
}

const endpoint = endpointUrl();
const sqs = new SQSClient({ endpoint, region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } });
const runId = `${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
const createdQueues: string[] = [];
let queueCounter = 0;

interface TestQueue {
  url: string;
  arn: string;
  dlqUrl: string;
  dlqArn: string;
}

/** A fresh queue (visibility timeout 1 s unless given) whose RedrivePolicy sends to a fresh DLQ after 2 receives. */
async function makeQueue(visibilityTimeoutSeconds = 1): Promise<TestQueue> {
  const name = `sledge-it-poller-${runId}-${++queueCounter}`;
  const dlq = await sqs.send(new CreateQueueCommand({ QueueName: `${name}-dlq` }));
  const dlqUrl = dlq.QueueUrl!;
  createdQueues.push(dlqUrl);
  const dlqArn = await arnOf(dlqUrl);
  const q = await sqs.send(
    new CreateQueueCommand({
      QueueName: name,
      Attributes: { VisibilityTimeout: String(visibilityTimeoutSeconds), RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount: 2 }) },
    }),
  );
  const url = q.QueueUrl!;
  createdQueues.push(url);
  return { url, arn: await arnOf(url), dlqUrl, dlqArn };
}

async function arnOf(url: string): Promise<string> {
  const out = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] }));
  return out.Attributes!.QueueArn!;
}

async function counts(url: string): Promise<{ visible: number; inFlight: number }> {
  const out = await sqs.send(
    new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] }),
  );
  return { visible: Number(out.Attributes?.ApproximateNumberOfMessages), inFlight: Number(out.Attributes?.ApproximateNumberOfMessagesNotVisible) };
}

async function sendAll(url: string, bodies: string[]): Promise<void> {
  for (let i = 0; i < bodies.length; i += 10) {
    const out = await sqs.send(
      new SendMessageBatchCommand({ QueueUrl: url, Entries: bodies.slice(i, i + 10).map((b, j) => ({ Id: String(j), MessageBody: b })) }),
    );
    expect(out.Failed ?? []).toEqual([]);
  }
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function gate(): { promise: Promise<void>; open: () => void } {
  let open = () => {};
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Records every delivery: body -> the ApproximateReceiveCount of each delivery, in order. */
function recorder(decide: (record: SQSRecord, invocation: number) => 'ok' | 'fail' | 'throw' | 'bogus') {
  const deliveries = new Map<string, string[]>();
  const events: SQSEvent[] = [];
  const handler: SqsHandler = async (event) => {
    events.push(event);
    const invocation = events.length;
    const failures: string[] = [];
    let thrown = false;
    let bogus = false;
    for (const r of event.Records) {
      deliveries.set(r.body, [...(deliveries.get(r.body) ?? []), r.attributes.ApproximateReceiveCount]);
      const d = decide(r, invocation);
      if (d === 'fail') failures.push(r.messageId);
      if (d === 'throw') thrown = true;
      if (d === 'bogus') bogus = true;
    }
    if (thrown) throw new Error(`handler failure on invocation ${invocation}`);
    if (bogus) return { batchItemFailures: [{ itemIdentifier: 'not-a-message-id' }] };
    return failures.length > 0 ? { batchItemFailures: failures.map((itemIdentifier) => ({ itemIdentifier })) } : undefined;
  };
  return { deliveries, events, handler };
}

const running: Poller[] = [];
function poll(bindings: QueueBinding[]): { poller: Poller; errors: unknown[] } {
  const errors: unknown[] = [];
  const poller = startPoller(bindings, { sqs, onError: (e) => errors.push(e) });
  running.push(poller);
  return { poller, errors };
}

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop()));
  for (const url of createdQueues) {
    try {
      await sqs.send(new DeleteQueueCommand({ QueueUrl: url }));
    } catch {
      // already gone
    }
  }
  sqs.destroy();
});

describe('startPoller against a local SQS', () => {
  it('builds records as Lambda does and deletes what the handler processed', async () => {
    const q = await makeQueue();
    const sent = await sqs.send(
      new SendMessageCommand({
        QueueUrl: q.url,
        MessageBody: 'shape',
        MessageAttributes: {
          str: { DataType: 'String', StringValue: 'hello' },
          num: { DataType: 'Number', StringValue: '42' },
          bin: { DataType: 'Binary', BinaryValue: new Uint8Array([0, 1, 254, 255]) },
        },
      }),
    );
    const { events, handler } = recorder(() => 'ok');
    const { poller, errors } = poll([{ queueUrl: q.url, handler }]);
    await waitFor('a delivery', () => events.length > 0);
    await poller.idle();

    expect(events).toHaveLength(1);
    const record = events[0]!.Records[0]!;
    expect(Object.keys(record)).toEqual([
      'messageId',
      'receiptHandle',
      'body',
      'attributes',
      'messageAttributes',
      'md5OfBody',
      'md5OfMessageAttributes',
      'eventSource',
      'eventSourceARN',
      'awsRegion',
    ]);
    expect(record.messageId).toBe(sent.MessageId);
    expect(record.receiptHandle).toEqual(expect.any(String));
    expect(record.body).toBe('shape');
    expect(record.md5OfBody).toBe(createHash('md5').update('shape').digest('hex'));
    expect(record.md5OfMessageAttributes).toBe(sent.MD5OfMessageAttributes);
    expect(record.eventSource).toBe('aws:sqs');
    expect(record.eventSourceARN).toBe(q.arn);
    expect(record.awsRegion).toBe('us-east-1');
    expect(record.attributes).toMatchObject({
      ApproximateReceiveCount: '1',
      SentTimestamp: expect.stringMatching(/^\d{13}$/),
      SenderId: expect.any(String),
      ApproximateFirstReceiveTimestamp: expect.stringMatching(/^\d{13}$/),
    });
    expect(Object.keys(record.attributes).slice(0, 4)).toEqual(['ApproximateReceiveCount', 'SentTimestamp', 'SenderId', 'ApproximateFirstReceiveTimestamp']);
    expect(record.messageAttributes).toEqual({
      str: { stringValue: 'hello', stringListValues: [], binaryListValues: [], dataType: 'String' },
      num: { stringValue: '42', stringListValues: [], binaryListValues: [], dataType: 'Number' },
      bin: { binaryValue: Buffer.from([0, 1, 254, 255]).toString('base64'), stringListValues: [], binaryListValues: [], dataType: 'Binary' },
    });
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toEqual([]);
    await poller.stop();
  });

  it('redelivers only the messages named in batchItemFailures', async () => {
    const q = await makeQueue();
    await sendAll(q.url, ['a', 'b', 'c']);
    const { deliveries, events, handler } = recorder((r) => (r.body === 'b' && r.attributes.ApproximateReceiveCount === '1' ? 'fail' : 'ok'));
    const { poller, errors } = poll([{ queueUrl: q.url, handler }]);
    await waitFor('b to come back', () => (deliveries.get('b') ?? []).length >= 2);
    await poller.idle();

    expect(events[0]?.Records.map((r) => r.body).sort()).toEqual(['a', 'b', 'c']);
    expect(Object.fromEntries(deliveries)).toEqual({ a: ['1'], b: ['1', '2'], c: ['1'] });
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(await counts(q.dlqUrl)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toEqual([]);
    await poller.stop();
  });

  it('leaves a message that always fails to the RedrivePolicy, which moves it to the DLQ', async () => {
    const q = await makeQueue();
    await sendAll(q.url, ['poison', 'good']);
    const { deliveries, handler } = recorder((r) => (r.body === 'poison' ? 'fail' : 'ok'));
    const { poller, errors } = poll([{ queueUrl: q.url, handler }]);

    let dead: string | undefined;
    await waitFor('the poison message in the DLQ', async () => {
      const out = await sqs.send(new ReceiveMessageCommand({ QueueUrl: q.dlqUrl, WaitTimeSeconds: 1, MaxNumberOfMessages: 10 }));
      dead = out.Messages?.[0]?.Body;
      return dead !== undefined;
    });
    await poller.idle();

    expect(dead).toBe('poison');
    // Received maxReceiveCount (2) times; the third receive attempt moved it instead.
    expect(Object.fromEntries(deliveries)).toEqual({ poison: ['1', '2'], good: ['1'] });
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toEqual([]);
    await poller.stop();
  });

  it('redelivers the whole batch when the handler throws', async () => {
    const q = await makeQueue();
    await sendAll(q.url, ['m1', 'm2']);
    const { deliveries, events, handler } = recorder((_r, invocation) => (invocation === 1 ? 'throw' : 'ok'));
    const { poller, errors } = poll([{ queueUrl: q.url, handler }]);
    await waitFor('both messages twice', () => ['m1', 'm2'].every((b) => (deliveries.get(b) ?? []).length >= 2));
    await poller.idle();

    expect(events[0]?.Records.map((r) => r.body).sort()).toEqual(['m1', 'm2']);
    expect(Object.fromEntries(deliveries)).toEqual({ m1: ['1', '2'], m2: ['1', '2'] });
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(SqsHandlerError);
    expect((errors[0] as SqsHandlerError).cause).toEqual(new Error('handler failure on invocation 1'));
    await poller.stop();
  });

  it('treats an itemIdentifier that is not in the batch as a failure of the whole batch', async () => {
    const q = await makeQueue();
    await sendAll(q.url, ['x1', 'x2']);
    const { deliveries, handler } = recorder((_r, invocation) => (invocation === 1 ? 'bogus' : 'ok'));
    const { poller, errors } = poll([{ queueUrl: q.url, handler }]);
    await waitFor('both messages twice', () => ['x1', 'x2'].every((b) => (deliveries.get(b) ?? []).length >= 2));
    await poller.idle();

    expect(Object.fromEntries(deliveries)).toEqual({ x1: ['1', '2'], x2: ['1', '2'] });
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(InvalidBatchResponseError);
    await poller.stop();
  });

  it('gathers batches above 10 messages and polls several queues', async () => {
    const [q1, q2] = await Promise.all([makeQueue(), makeQueue()]);
    const bodies = Array.from({ length: 25 }, (_, i) => `n${i}`);
    await sendAll(q1!.url, bodies);
    await sendAll(q2!.url, ['other']);
    const r1 = recorder(() => 'ok');
    const r2 = recorder(() => 'ok');
    const { poller, errors } = poll([
      { queueUrl: q1!.url, queueArn: q1!.arn, handler: r1.handler, batchSize: 25 },
      { queueUrl: q2!.url, handler: r2.handler, batchSize: 1 },
    ]);
    await waitFor('all messages', () => r1.deliveries.size === 25 && r2.deliveries.size === 1);
    await poller.idle();

    expect(r1.events[0]?.Records).toHaveLength(25);
    expect(r1.events).toHaveLength(1);
    expect([...r1.deliveries.keys()].sort()).toEqual([...bodies].sort());
    expect(r2.events[0]?.Records[0]?.eventSourceARN).toBe(q2!.arn);
    expect(await counts(q1!.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(await counts(q2!.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toEqual([]);
    await poller.stop();
  });

  it('ends a long poll promptly on stop()', async () => {
    const q = await makeQueue();
    const { handler } = recorder(() => 'ok');
    const { poller } = poll([{ queueUrl: q.url, handler, waitTimeSeconds: 20 }]);
    await new Promise((r) => setTimeout(r, 500)); // now inside a 20 s long poll
    const t0 = Date.now();
    await poller.stop();
    expect(Date.now() - t0).toBeLessThan(2_000);
    await poller.idle(); // resolves at once once stopped
  });

  it('reports SQS errors and retries with backoff until stopped', async () => {
    const missing = endpoint.replace(/\/$/, '') + `/123456789012/sledge-it-poller-${runId}-missing`;
    const { handler } = recorder(() => 'ok');
    const { poller, errors } = poll([{ queueUrl: missing, handler }]);
    await waitFor('repeated errors', () => errors.length >= 3, 15_000);
    const t0 = Date.now();
    await poller.stop();
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(errors.every((e) => e instanceof Error)).toBe(true);
    const n = errors.length;
    await new Promise((r) => setTimeout(r, 300));
    expect(errors).toHaveLength(n); // nothing after stop
  });

  it('abandons a handler that runs past the function timeout and lets its batch come back', async () => {
    const q = await makeQueue();
    await sendAll(q.url, ['slow', 'fine']);
    const stuck = gate();
    const deliveries: string[][] = [];
    let abandonedResult: 'pending' | 'returned' = 'pending';
    const handler: SqsHandler = async (event) => {
      deliveries.push(event.Records.map((r) => `${r.body}#${r.attributes.ApproximateReceiveCount}`).sort());
      if (deliveries.length === 1) {
        // Runs on past the 1 s timeout; its answer, when it comes, would have deleted the batch.
        await stuck.promise;
        abandonedResult = 'returned';
      }
      return undefined;
    };
    const { poller, errors } = poll([{ queueUrl: q.url, handler, functionTimeoutSeconds: 1 }]);
    await waitFor('the batch delivered again', () => deliveries.length >= 2);
    await poller.idle();

    expect(deliveries).toEqual([
      ['fine#1', 'slow#1'],
      ['fine#2', 'slow#2'],
    ]);
    // The second delivery came while the first call was still running: it had been abandoned.
    expect(abandonedResult).toBe('pending');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(SqsHandlerTimeoutError);
    expect((errors[0] as SqsHandlerTimeoutError).timeoutSeconds).toBe(1);
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    stuck.open();
    await poller.stop();
    expect(abandonedResult).toBe('returned');
    expect(errors).toHaveLength(1);
  });

  it("uses the queue's own visibility timeout unless the binding overrides it", async () => {
    // Visibility 30 s on the queue: a failed message stays invisible, where an override of 1 s
    // brings it back.
    const q = await makeQueue(30);
    await sendAll(q.url, ['held']);
    const first = recorder(() => 'fail');
    const own = poll([{ queueUrl: q.url, handler: first.handler }]);
    await waitFor('a delivery', () => first.events.length > 0);
    await own.poller.idle();
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 1 });
    expect(Object.fromEntries(first.deliveries)).toEqual({ held: ['1'] });
    await own.poller.stop();

    const q2 = await makeQueue(30);
    await sendAll(q2.url, ['back']);
    const second = recorder((r) => (r.attributes.ApproximateReceiveCount === '1' ? 'fail' : 'ok'));
    const overridden = poll([{ queueUrl: q2.url, handler: second.handler, visibilityTimeoutSeconds: 1 }]);
    await waitFor('the message back', () => (second.deliveries.get('back') ?? []).length >= 2);
    await overridden.poller.idle();
    expect(Object.fromEntries(second.deliveries)).toEqual({ back: ['1', '2'] });
    expect(await counts(q2.url)).toEqual({ visible: 0, inFlight: 0 });
    expect([...own.errors, ...overridden.errors]).toEqual([]);
    await overridden.poller.stop();
  });

  it('keeps a running batch invisible when the visibility override is shorter than the function timeout', async () => {
    // Lambda refuses a queue whose visibility timeout is below the function's timeout, so no
    // message returns while its invocation runs; the override must not change that.
    const q = await makeQueue(30);
    await sendAll(q.url, ['long']);
    let attempt = 0;
    const { deliveries, handler } = recorder(() => 'ok');
    const slowOnce: SqsHandler = async (event) => {
      const response = await handler(event);
      // 5 s, with a 2 s override: without the extensions it would be delivered twice more.
      if (++attempt === 1) await new Promise((r) => setTimeout(r, 5_000));
      return response;
    };
    const { poller, errors } = poll([{ queueUrl: q.url, handler: slowOnce, visibilityTimeoutSeconds: 2, functionTimeoutSeconds: 30 }]);
    await waitFor('a delivery', () => deliveries.size > 0);
    await poller.idle();

    expect(Object.fromEntries(deliveries)).toEqual({ long: ['1'] });
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toEqual([]);
    await poller.stop();
  });

  it('runs at most maxConcurrency batches of a queue at once, and receives no more meanwhile', async () => {
    const q = await makeQueue(60);
    await sendAll(q.url, ['c1', 'c2', 'c3', 'c4', 'c5', 'c6']);
    const hold = gate();
    let active = 0;
    let mostActive = 0;
    const seen: string[] = [];
    const handler: SqsHandler = async (event) => {
      active++;
      mostActive = Math.max(mostActive, active);
      seen.push(...event.Records.map((r) => r.body));
      await hold.promise;
      active--;
    };
    const { poller, errors } = poll([{ queueUrl: q.url, handler, batchSize: 1, maxConcurrency: 2, functionTimeoutSeconds: 60 }]);
    await waitFor('two batches running', () => active === 2);
    // Long enough for a poller that ignored the bound to receive more (its receives take ms).
    await new Promise((r) => setTimeout(r, 1_500));
    expect(active).toBe(2);
    expect(seen).toHaveLength(2);
    expect(await counts(q.url)).toEqual({ visible: 4, inFlight: 2 });
    hold.open();
    await waitFor('every message', () => seen.length === 6);
    await poller.idle();

    expect([...seen].sort()).toEqual(['c1', 'c2', 'c3', 'c4', 'c5', 'c6']);
    expect(mostActive).toBe(2);
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toEqual([]);
    await poller.stop();
  });

  it('deletes the whole batch when the mapping does not report batch item failures', async () => {
    const q = await makeQueue();
    await sendAll(q.url, ['p', 'q']);
    const { deliveries, handler } = recorder((r) => (r.body === 'p' ? 'fail' : 'ok'));
    const { poller, errors } = poll([{ queueUrl: q.url, handler, reportBatchItemFailures: false }]);
    await waitFor('a delivery', () => deliveries.size === 2);
    await poller.idle();

    expect(Object.fromEntries(deliveries)).toEqual({ p: ['1'], q: ['1'] });
    expect(await counts(q.url)).toEqual({ visible: 0, inFlight: 0 });
    expect(errors).toEqual([]);
    await poller.stop();
  });
});

describe('startSchedules against a local SQS', () => {
  it("sends each rule's message to its target queue once per interval until stopped", async () => {
    const q = await makeQueue();
    const errors: unknown[] = [];
    const scheduler = startSchedules(
      [
        {
          ruleLogicalId: 'TestSchedule',
          expression: 'rate(1 minute)',
          // Shortened for the test; the control plane passes the rule's own interval.
          intervalMs: 300,
          targets: [{ queueLogicalId: 'TestQueue', queueUrl: q.url, input: '{"type":"sweep-leases"}', maximumRetryAttempts: 2 }],
        },
      ],
      { sqs, onError: (e) => errors.push(e) },
    );
    await waitFor('three runs', async () => (await counts(q.url)).visible >= 3);
    await scheduler.stop();
    const after = (await counts(q.url)).visible;
    await new Promise((r) => setTimeout(r, 900));
    expect((await counts(q.url)).visible).toBe(after); // nothing after stop
    const out = await sqs.send(new ReceiveMessageCommand({ QueueUrl: q.url, MaxNumberOfMessages: 10 }));
    expect(new Set(out.Messages?.map((m) => m.Body))).toEqual(new Set(['{"type":"sweep-leases"}']));
    expect(errors).toEqual([]);
  });
});
