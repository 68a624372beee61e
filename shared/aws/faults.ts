/**
 * Fault injection in the real request path (docs/evacuation.md, section 8).
 *
 * One middleware on the S3 and DynamoDB clients, at the innermost step of the SDK's stack
 * (after its retry logic, so every attempt is judged and the SDK retries an injected error as
 * it would a real one), and the same judgement in the head's own chunk requests, which do not
 * go through the SDK (shared/aws/s3-direct.ts), once per attempt of theirs. A request that a rule matches either never reaches the endpoint
 * (`phase: 'before'`) or reaches it and loses its response (`phase: 'after'`), and fails with
 * an error shaped like the service's own 5xx, or hangs and then fails as the SDK's timeout
 * does. Nothing is mocked: every request that is not faulted goes to the real endpoint.
 *
 * Rules come from `SLEDGE_FAULTS` (a JSON array) when this module loads, and from
 * `setFaults()` in-process (tests).
 *
 * @example
 * setFaults([{ service: 's3', bucket: sled, prefix: 'd01/', ops: ['PutObject'], rate: 1 }]);
 * // ... every PUT to drive d01 of that sled now fails with a 500 InternalError
 * clearFaults();
 */
import { ENV } from '../core/config.ts';
import { InvalidInputError } from '../core/errors.ts';
import { ServiceShapedError } from './errors.ts';

export type FaultService = 's3' | 'dynamodb' | 'sqs';

export interface FaultRule {
  service: FaultService;
  /** S3: the bucket (sled); absent matches every bucket. */
  bucket?: string;
  /** S3: a key prefix, usually a drive (`d01/`); matched against `Key`, or `Prefix` for listings. */
  prefix?: string;
  /** DynamoDB: the table; for transactions, any item's table. Absent matches every table. */
  table?: string;
  /** SQS: a substring of the queue URL (`gc`, `evacuation`, `checkpoint`). Absent matches every queue. */
  queue?: string;
  /** SDK operation names (`PutObject`, `GetObject`, `TransactWriteItems`...); absent matches all. */
  ops?: string[];
  /** Probability per attempt, 0 to 1. Default 1. */
  rate?: number;
  /**
   * `error` (default) fails at once with a 5xx; `hang` waits `hangMs` and then fails like a
   * timeout; `throttle` fails at once with the service's throttling error (DynamoDB
   * `ThrottlingException`, S3 `SlowDown`, SQS `RequestThrottled`), which the SDK retries with
   * backoff as it would a real one.
   */
  mode?: 'error' | 'hang' | 'throttle';
  /** The error's HTTP status: 500 (InternalError, default) or 503 (ServiceUnavailable). */
  status?: 500 | 503;
  /** How long a hang lasts before the timeout error. Default: the S3 client's request timeout. */
  hangMs?: number;
  /** `before` (default): never sent. `after`: sent and applied, then the response is lost. */
  phase?: 'before' | 'after';
  /** The rule fires at most this many times, then is spent. Default: no limit. */
  count?: number;
}

/** The request timeout the S3 client is built with (shared/aws/clients.ts); a hang lasts this long by default. */
export const S3_REQUEST_TIMEOUT_MS = 30_000;
const HANG_MS_MAX = 120_000;

/**
 * An injected failure, shaped like a service error (`name` is the service's error code, with
 * `$fault` and `$metadata.httpStatusCode`) so that the SDK and Sledge treat it as a real one.
 */
export class InjectedFaultError extends ServiceShapedError {
  readonly injected = true;
  constructor(code: string, status: number, message: string, opts: { throttling?: boolean } = {}) {
    super(code, status, message, { fault: opts.throttling ? 'client' : 'server', throttling: opts.throttling });
  }
}

/** An injected hang that ended like the SDK's own request timeout (which the SDK retries). */
export class InjectedTimeoutError extends Error {
  readonly injected = true;
  readonly code = 'ETIMEDOUT';
  readonly $metadata = {};
  constructor(message: string) {
    super(message);
    this.name = 'TimeoutError';
  }
}

interface ActiveRule {
  rule: Required<Pick<FaultRule, 'service' | 'rate' | 'mode' | 'phase'>> & FaultRule;
  fired: number;
}

let rules: ActiveRule[] = [];
const stats = { matched: 0, fired: 0 };

/** Validates rules (a clear 400-style message for a bad `SLEDGE_FAULTS`). */
export function parseFaultRules(input: unknown): FaultRule[] {
  if (!Array.isArray(input)) throw new InvalidInputError('fault rules must be a JSON array');
  return input.map((r, i) => {
    if (typeof r !== 'object' || r === null) throw new InvalidInputError(`fault rule ${i} is not an object`);
    const rule = r as FaultRule;
    if (rule.service !== 's3' && rule.service !== 'dynamodb' && rule.service !== 'sqs')
      throw new InvalidInputError(`fault rule ${i}: service must be s3, dynamodb or sqs`);
    if (rule.rate !== undefined && !(typeof rule.rate === 'number' && rule.rate >= 0 && rule.rate <= 1))
      throw new InvalidInputError(`fault rule ${i}: rate must be from 0 to 1`);
    if (rule.mode !== undefined && rule.mode !== 'error' && rule.mode !== 'hang' && rule.mode !== 'throttle')
      throw new InvalidInputError(`fault rule ${i}: mode must be error, hang or throttle`);
    if (rule.phase !== undefined && rule.phase !== 'before' && rule.phase !== 'after')
      throw new InvalidInputError(`fault rule ${i}: phase must be before or after`);
    if (rule.status !== undefined && rule.status !== 500 && rule.status !== 503) throw new InvalidInputError(`fault rule ${i}: status must be 500 or 503`);
    if (rule.hangMs !== undefined && !(Number.isInteger(rule.hangMs) && rule.hangMs >= 0 && rule.hangMs <= HANG_MS_MAX)) {
      throw new InvalidInputError(`fault rule ${i}: hangMs must be an integer from 0 to ${HANG_MS_MAX}`);
    }
    if (rule.count !== undefined && !(Number.isInteger(rule.count) && rule.count >= 0))
      throw new InvalidInputError(`fault rule ${i}: count must be a non-negative integer`);
    return rule;
  });
}

let dice: () => number = Math.random;

/**
 * Replaces the active rules. `random` (a PRNG in [0, 1)) lets a randomized test replay its
 * dice from a seed; which request meets which roll still depends on scheduling.
 */
export function setFaults(next: FaultRule[], opts: { random?: () => number } = {}): void {
  dice = opts.random ?? Math.random;
  rules = parseFaultRules(next).map((rule) => ({
    rule: { ...rule, rate: rule.rate ?? 1, mode: rule.mode ?? 'error', phase: rule.phase ?? 'before' },
    fired: 0,
  }));
}

export function clearFaults(): void {
  rules = [];
}

/** How many requests matched a rule and how many were faulted, since the process started. */
export function faultStats(): { matched: number; fired: number; rules: Array<{ rule: FaultRule; fired: number }> } {
  return { matched: stats.matched, fired: stats.fired, rules: rules.map((r) => ({ rule: r.rule, fired: r.fired })) };
}

function tablesOf(input: Record<string, unknown>): string[] {
  if (typeof input.TableName === 'string') return [input.TableName];
  const out: string[] = [];
  const items = (input.TransactItems ?? []) as Array<Record<string, { TableName?: string }>>;
  for (const item of items) for (const part of Object.values(item)) if (part?.TableName) out.push(part.TableName);
  for (const t of Object.keys((input.RequestItems ?? {}) as object)) out.push(t);
  return out;
}

/** The rule that fires for this request, if any (pure apart from the dice and counters). */
export function matchFault(service: FaultService, operation: string, input: Record<string, unknown>, random: () => number = dice): ActiveRule | undefined {
  for (const active of rules) {
    const r = active.rule;
    if (r.service !== service) continue;
    if (r.ops && !r.ops.includes(operation)) continue;
    if (service === 's3') {
      if (r.bucket !== undefined && input.Bucket !== r.bucket) continue;
      const key = typeof input.Key === 'string' ? input.Key : typeof input.Prefix === 'string' ? input.Prefix : '';
      if (r.prefix !== undefined && !key.startsWith(r.prefix)) continue;
    } else if (service === 'dynamodb') {
      if (r.table !== undefined && !tablesOf(input).includes(r.table)) continue;
    } else if (r.queue !== undefined && !String(input.QueueUrl ?? '').includes(r.queue)) continue;
    if (r.count !== undefined && active.fired >= r.count) continue;
    stats.matched++;
    if (random() >= r.rate) continue;
    active.fired++;
    stats.fired++;
    return active;
  }
  return undefined;
}

function faultError(service: FaultService, operation: string, r: FaultRule): Error {
  if (r.mode === 'throttle') {
    const [code, status] = service === 's3' ? ['SlowDown', 503] : service === 'sqs' ? ['RequestThrottled', 400] : ['ThrottlingException', 400];
    return new InjectedFaultError(code, status, `injected throttling (${code}) on ${service} ${operation} (SLEDGE_FAULTS / setFaults)`, { throttling: true });
  }
  const status = r.status ?? 500;
  const code =
    service === 's3'
      ? status === 503
        ? 'ServiceUnavailable'
        : 'InternalError'
      : service === 'sqs'
        ? status === 503
          ? 'ServiceUnavailable'
          : 'InternalError'
        : status === 503
          ? 'ServiceUnavailable'
          : 'InternalServerError';
  return new InjectedFaultError(code, status, `injected ${status} on ${service} ${operation} (SLEDGE_FAULTS / setFaults)`);
}

type Next = (args: unknown) => Promise<unknown>;
interface StackLike {
  add(mw: (next: Next, context: { commandName?: string }) => Next, options: { step: 'deserialize'; name: string; priority: 'low' }): void;
}

/**
 * One attempt of a request under the fault rules: `send` unless a rule fires for it. A rule
 * that fires fails the attempt before sending (`before`), or after sending it and giving its
 * answer to `lose` (`after`: the request was applied, its response is lost); then at once, or
 * after a hang that ends like a timeout. The SDK's clients (`addFaultMiddleware`) and the head's
 * own chunk requests (shared/aws/s3-direct.ts) both go through here, once per attempt.
 */
export async function underFaults<T>(
  service: FaultService,
  operation: string,
  input: Record<string, unknown>,
  send: () => Promise<T>,
  lose?: (answer: T) => void,
): Promise<T> {
  if (rules.length === 0) return send();
  const active = matchFault(service, operation, input);
  if (!active) return send();
  const r = active.rule;
  if (r.phase === 'after') {
    const answer = await send();
    lose?.(answer);
  }
  if (r.mode === 'hang') {
    const ms = r.hangMs ?? S3_REQUEST_TIMEOUT_MS;
    await new Promise((resolve) => setTimeout(resolve, ms));
    throw new InjectedTimeoutError(`injected hang of ${ms} ms on ${service} ${operation} ended like a request timeout`);
  }
  throw faultError(service, operation, r);
}

/** Adds the fault middleware to a client's stack (shared/aws/clients.ts calls this once per client). */
export function addFaultMiddleware(stack: unknown, service: FaultService): void {
  (stack as StackLike).add(
    (next, context) => async (args) => {
      if (rules.length === 0) return next(args);
      const operation = String(context.commandName ?? '').replace(/Command$/, '');
      const input = ((args as { input?: Record<string, unknown> }).input ?? {}) as Record<string, unknown>;
      return underFaults(
        service,
        operation,
        input,
        () => next(args),
        (out) => {
          // The response is lost: its connection goes with it. Left unread, its body would hold
          // the socket forever, and the client's pool would run dry after enough lost responses.
          (out as { response?: { body?: { destroy?: () => void } } } | undefined)?.response?.body?.destroy?.();
        },
      );
    },
    // Innermost: after the retry middleware, so every attempt is judged on its own.
    { step: 'deserialize', name: 'sledgeFaults', priority: 'low' },
  );
}

function loadFromEnvironment(): void {
  const raw = process.env[ENV.faults];
  if (!raw) return;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    throw new InvalidInputError(`SLEDGE_FAULTS is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  setFaults(parseFaultRules(parsed));
  console.warn(`fault injection on: ${rules.length} rule(s) from SLEDGE_FAULTS`);
}

loadFromEnvironment();
