/**
 * AWS SDK clients, built once per process. The SDK's own endpoint configuration
 * (`AWS_ENDPOINT_URL`) points them at a local endpoint; there is no "local" branch here.
 *
 * Every client carries a middleware that counts requests by service and operation and sums
 * the DynamoDB capacity units the service reports, so benchmarks count requests exactly.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { capacityUnits } from './capacity.ts';
import { addFaultMiddleware, S3_REQUEST_TIMEOUT_MS } from './faults.ts';

export interface RequestCounts {
  /** `Service:Operation` -> number of requests sent (retries included: each is billed). */
  requests: Record<string, number>;
  /** `Service:Operation` -> milliseconds spent waiting for responses (summed over requests). */
  millis: Record<string, number>;
  /** DynamoDB read and write capacity units, computed from item sizes (see capacity.ts). */
  dynamoReadUnits: number;
  dynamoWriteUnits: number;
  /** What wrote (`PutItem <table>`, `TransactWriteItems Put <table>`, `UpdateItem`, ...) -> its write units, which sum to `dynamoWriteUnits`. */
  dynamoWriteUnitsBy: Record<string, number>;
}

const counts: RequestCounts = { requests: {}, millis: {}, dynamoReadUnits: 0, dynamoWriteUnits: 0, dynamoWriteUnitsBy: {} };

/** A snapshot of the counters since the process started (or the last reset). */
export function requestCounts(): RequestCounts {
  return {
    requests: { ...counts.requests },
    millis: { ...counts.millis },
    dynamoReadUnits: counts.dynamoReadUnits,
    dynamoWriteUnits: counts.dynamoWriteUnits,
    dynamoWriteUnitsBy: { ...counts.dynamoWriteUnitsBy },
  };
}

export function resetRequestCounts(): void {
  counts.requests = {};
  counts.millis = {};
  counts.dynamoReadUnits = 0;
  counts.dynamoWriteUnits = 0;
  counts.dynamoWriteUnitsBy = {};
}

/**
 * Counts one attempt of a request (`Service:Operation`) and the milliseconds it waited: the
 * SDK clients' middleware does it for theirs, shared/aws/s3-direct.ts for the chunk requests it
 * sends itself.
 */
export function countRequest(key: string, millis: number): void {
  counts.requests[key] = (counts.requests[key] ?? 0) + 1;
  counts.millis[key] = (counts.millis[key] ?? 0) + millis;
}

type AnyClient = S3Client | DynamoDBClient | SQSClient;

type Next = (args: unknown) => Promise<{ output: unknown }>;
type Middleware = (next: Next, context: { commandName?: string }) => (args: unknown) => Promise<{ output: unknown }>;
/** The part of the SDK's middleware stack used here, typed once for all three clients. */
interface MiddlewareStackLike {
  add(middleware: Middleware, options: { step: 'initialize' | 'finalizeRequest'; name: string }): void;
  remove(name: string): boolean;
}

/** Clients already instrumented: putting one back (`setClients`) must not add its middleware twice. */
const instrumented = new WeakSet<object>();

function instrument<C extends AnyClient>(client: C, service: string): C {
  if (instrumented.has(client)) return client;
  instrumented.add(client);
  const stack = client.middlewareStack as unknown as MiddlewareStackLike;
  // Sledge gives the clients no logger, and the SDK's default one discards everything; but its
  // logger middleware still builds a redacted copy of every request's input and output for it
  // (walking a commit's transaction items, a page read's attributes): CPU for nothing.
  stack.remove('loggerMiddleware');
  // 'finalizeRequest' runs once per attempt, so retries are counted as the service bills them.
  stack.add(
    (next, context) => async (args) => {
      const key = `${service}:${String(context.commandName ?? 'unknown').replace(/Command$/, '')}`;
      const start = performance.now();
      try {
        return await next(args);
      } finally {
        countRequest(key, performance.now() - start);
      }
    },
    { step: 'finalizeRequest', name: 'sledgeRequestCounter' },
  );
  // Fault injection (shared/aws/faults.ts): a no-op unless rules are set.
  if (service === 'S3') addFaultMiddleware(stack, 's3');
  if (service === 'DynamoDB') addFaultMiddleware(stack, 'dynamodb');
  if (service === 'SQS') addFaultMiddleware(stack, 'sqs');
  if (service === 'DynamoDB') {
    stack.add(
      (next, context) => async (args) => {
        const result = await next(args);
        const operation = String(context.commandName ?? '').replace(/Command$/, '');
        const units = capacityUnits(operation, (args as { input: Record<string, unknown> }).input, result.output as Record<string, unknown>);
        counts.dynamoReadUnits += units.read;
        counts.dynamoWriteUnits += units.write;
        for (const [what, n] of Object.entries(units.writeBy ?? (units.write > 0 ? { [operation]: units.write } : {}))) {
          counts.dynamoWriteUnitsBy[what] = (counts.dynamoWriteUnitsBy[what] ?? 0) + n;
        }
        return result;
      },
      { step: 'initialize', name: 'sledgeCapacityCounter' },
    );
  }
  return client;
}

let s3Client: S3Client | undefined;
let dynamoClient: DynamoDBClient | undefined;
let sqsClient: SQSClient | undefined;

/**
 * Path-style addressing works on AWS and on every local emulator; virtual-hosted style needs
 * DNS for every bucket name, which local endpoints do not have.
 */
/**
 * Chunk PUTs carry a CRC32C that S3 verifies (see chunk-store.ts), so hashing every body again with
 * SHA-256 for the signature buys nothing; the request is signed with UNSIGNED-PAYLOAD, as S3
 * clients do over TLS. Headers, key and checksum stay signed.
 */
function unsignedPayload(client: S3Client): S3Client {
  const stack = client.middlewareStack as unknown as {
    add(mw: (next: (args: unknown) => Promise<unknown>) => (args: unknown) => Promise<unknown>, opts: { step: 'build'; name: string }): void;
  };
  stack.add(
    (next) => async (args) => {
      const request = (args as { request?: { headers?: Record<string, string> } }).request;
      if (request?.headers) request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', name: 'sledgeUnsignedPayload' },
  );
  return client;
}

export function s3(): S3Client {
  return (s3Client ??= instrument(
    unsignedPayload(
      new S3Client({
        forcePathStyle: true,
        maxAttempts: 3,
        // A chunk is at most a few MiB; a request idle this long is treated as lost (and retried).
        requestHandler: { requestTimeout: S3_REQUEST_TIMEOUT_MS, connectionTimeout: 5_000 },
        // Chunk PUTs carry their own CRC32C (computed once, natively); the SDK need not
        // compute another checksum over every byte of every request.
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      }),
    ),
    'S3',
  ));
}

export function dynamo(): DynamoDBClient {
  return (dynamoClient ??= instrument(new DynamoDBClient({ maxAttempts: 5 }), 'DynamoDB'));
}

export function sqs(): SQSClient {
  return (sqsClient ??= instrument(new SQSClient({ maxAttempts: 5 }), 'SQS'));
}

/** Replaces the clients (tests inject clients pointed elsewhere or wrapped for faults). */
export function setClients(clients: { s3?: S3Client; dynamo?: DynamoDBClient; sqs?: SQSClient }): void {
  if (clients.s3) s3Client = instrument(clients.s3, 'S3');
  if (clients.dynamo) dynamoClient = instrument(clients.dynamo, 'DynamoDB');
  if (clients.sqs) sqsClient = instrument(clients.sqs, 'SQS');
}
