/**
 * What the local stand-ins for Lambda's SQS event source mappings and EventBridge schedules
 * read from the synthesized stack, so that they run as deployed: batch size, concurrency and
 * partial batch failures of each mapping, the function's timeout, each queue's visibility
 * timeout, and each schedule's rate, target queue and message.
 *
 * Everything comes from the template `deployLocalStack` returns; nothing here is a second copy
 * of a value in `cdk/stack.ts`. A setting the stand-ins cannot reproduce is an error, not a
 * silent difference.
 */
import type { LocalStackDeployment } from './stack.ts';

/** Lambda's and SQS's documented defaults for properties a template leaves out. */
const DEFAULTS = {
  /** AWS::Lambda::EventSourceMapping BatchSize for SQS. */
  batchSize: 10,
  /** AWS::Lambda::Function Timeout. */
  functionTimeoutSeconds: 3,
  /** AWS::SQS::Queue VisibilityTimeout. */
  visibilityTimeoutSeconds: 30,
} as const;

export interface EventSourceSettings {
  mappingLogicalId: string;
  /** The function the mapping invokes. */
  functionLogicalId: string;
  queueLogicalId: string;
  /** The queue's URL on the local endpoint. */
  queueUrl: string;
  batchSize: number;
  /** `ScalingConfig.MaximumConcurrency`, when the mapping sets one. */
  maximumConcurrency?: number;
  reportBatchItemFailures: boolean;
  /** The invoked function's `Timeout`. */
  functionTimeoutSeconds: number;
  /** The queue's `VisibilityTimeout`. */
  visibilityTimeoutSeconds: number;
}

export interface ScheduleSettings {
  ruleLogicalId: string;
  /** As in the template, e.g. `rate(1 minute)`. */
  expression: string;
  intervalMs: number;
  targets: Array<{ queueLogicalId: string; queueUrl: string; input: string; maximumRetryAttempts: number }>;
}

interface Resource {
  Type: string;
  Properties?: Record<string, unknown>;
}

function resourcesOf(deployment: LocalStackDeployment): Record<string, Resource> {
  return (deployment.template as { Resources: Record<string, Resource> }).Resources;
}

/** The logical ID a `{ Ref }` or `{ Fn::GetAtt: [id, attribute] }` names. */
function referencedId(value: unknown, where: string): string {
  if (value && typeof value === 'object') {
    const ref = (value as { Ref?: unknown }).Ref;
    if (typeof ref === 'string') return ref;
    const getAtt = (value as { 'Fn::GetAtt'?: unknown })['Fn::GetAtt'];
    if (Array.isArray(getAtt) && typeof getAtt[0] === 'string') return getAtt[0];
    if (typeof getAtt === 'string') return getAtt.split('.')[0] ?? '';
  }
  throw new Error(`${where}: ${JSON.stringify(value)} does not name a resource of the stack`);
}

function queueUrlOf(deployment: LocalStackDeployment, queueLogicalId: string, where: string): string {
  const url = deployment.resources[queueLogicalId];
  if (resourcesOf(deployment)[queueLogicalId]?.Type !== 'AWS::SQS::Queue' || url === undefined) {
    throw new Error(`${where}: ${queueLogicalId} is not a queue the local stack deployed`);
  }
  return url;
}

function optionalNumber(value: unknown, where: string): number | undefined {
  if (value === undefined) return undefined;
  const n = typeof value === 'string' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isFinite(n)) throw new Error(`${where}: ${JSON.stringify(value)} is not a number`);
  return n;
}

/** Every SQS event source mapping of the stack, with the settings of its function and queue. */
export function eventSources(deployment: LocalStackDeployment): EventSourceSettings[] {
  const resources = resourcesOf(deployment);
  const found: EventSourceSettings[] = [];
  for (const [mappingLogicalId, mapping] of Object.entries(resources)) {
    if (mapping.Type !== 'AWS::Lambda::EventSourceMapping') continue;
    const where = `event source mapping ${mappingLogicalId}`;
    const p = mapping.Properties ?? {};
    const queueLogicalId = referencedId(p.EventSourceArn, where);
    const functionLogicalId = referencedId(p.FunctionName, where);
    const fn = resources[functionLogicalId];
    if (fn?.Type !== 'AWS::Lambda::Function') throw new Error(`${where}: ${functionLogicalId} is not a function of the stack`);
    const queue = resources[queueLogicalId];
    if (queue?.Type !== 'AWS::SQS::Queue') throw new Error(`${where}: only SQS event sources run locally, not ${queue?.Type ?? queueLogicalId}`);
    if ((optionalNumber(p.MaximumBatchingWindowInSeconds, where) ?? 0) > 0) {
      throw new Error(`${where}: MaximumBatchingWindowInSeconds is not reproduced by the local poller (local/sqs-poller.ts)`);
    }
    if (p.FilterCriteria !== undefined) throw new Error(`${where}: FilterCriteria is not reproduced by the local poller (local/sqs-poller.ts)`);
    const maximumConcurrency = optionalNumber((p.ScalingConfig as { MaximumConcurrency?: unknown } | undefined)?.MaximumConcurrency, where);
    found.push({
      mappingLogicalId,
      functionLogicalId,
      queueLogicalId,
      queueUrl: queueUrlOf(deployment, queueLogicalId, where),
      batchSize: optionalNumber(p.BatchSize, where) ?? DEFAULTS.batchSize,
      ...(maximumConcurrency !== undefined ? { maximumConcurrency } : {}),
      reportBatchItemFailures: Array.isArray(p.FunctionResponseTypes) && p.FunctionResponseTypes.includes('ReportBatchItemFailures'),
      functionTimeoutSeconds: optionalNumber(fn.Properties?.Timeout, where) ?? DEFAULTS.functionTimeoutSeconds,
      visibilityTimeoutSeconds: optionalNumber(queue.Properties?.VisibilityTimeout, where) ?? DEFAULTS.visibilityTimeoutSeconds,
    });
  }
  return found;
}

const RATE_UNITS_MS: Record<string, number> = { minute: 60_000, hour: 3_600_000, day: 86_400_000 };

/** Milliseconds between runs of `rate(value unit)`; cron expressions are not reproduced locally. */
export function rateIntervalMs(expression: string): number {
  const match = /^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$/.exec(expression);
  if (!match) throw new Error(`schedule expression ${JSON.stringify(expression)} is not rate(<n> <unit>); the local scheduler runs only rates`);
  const value = Number(match[1]);
  const written = match[2] ?? '';
  const unit = written.replace(/s$/, '');
  const plural = written !== unit;
  if (value < 1 || plural === (value === 1)) {
    throw new Error(`schedule expression ${JSON.stringify(expression)}: EventBridge wants a singular unit for 1 and a plural one otherwise`);
  }
  return value * (RATE_UNITS_MS[unit] ?? Number.NaN);
}

/** Every enabled EventBridge schedule of the stack whose targets are queues. */
export function schedules(deployment: LocalStackDeployment): ScheduleSettings[] {
  const found: ScheduleSettings[] = [];
  for (const [ruleLogicalId, rule] of Object.entries(resourcesOf(deployment))) {
    if (rule.Type !== 'AWS::Events::Rule') continue;
    const where = `rule ${ruleLogicalId}`;
    const p = rule.Properties ?? {};
    if (typeof p.ScheduleExpression !== 'string') throw new Error(`${where}: only scheduled rules run locally`);
    if (p.State !== undefined && p.State !== 'ENABLED') continue;
    const targets = ((p.Targets as Array<Record<string, unknown>> | undefined) ?? []).map((target) => {
      const queueLogicalId = referencedId(target.Arn, where);
      if (typeof target.Input !== 'string') throw new Error(`${where}: a target without a constant Input is not reproduced locally`);
      const retry = optionalNumber((target.RetryPolicy as { MaximumRetryAttempts?: unknown } | undefined)?.MaximumRetryAttempts, where);
      // EventBridge retries a failed delivery for up to 24 h (185 attempts) unless told otherwise.
      return { queueLogicalId, queueUrl: queueUrlOf(deployment, queueLogicalId, where), input: target.Input, maximumRetryAttempts: retry ?? 185 };
    });
    found.push({ ruleLogicalId, expression: p.ScheduleExpression, intervalMs: rateIntervalMs(p.ScheduleExpression), targets });
  }
  return found;
}
