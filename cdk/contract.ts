/**
 * The stack's contract with everything outside it: construct IDs (renaming one replaces the
 * resource), the environment variable names, the IAM action lists both the stack and its tests
 * use, and the feature flags of cdk.json.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ENV } from '#shared/core/config.ts';

/** The name of one of the environment variables in `ENV`. */
export type EnvName = (typeof ENV)[keyof typeof ENV];

/**
 * The construct IDs of the stack's resources. They are a contract (see the file comment);
 * `test/cdk/stack.test.ts` asserts the logical IDs they produce.
 */
export const CONSTRUCT_IDS = {
  volumesTable: 'VolumesTable',
  pagesTable: 'PagesTable',
  segmentsTable: 'SegmentsTable',
  snapshotsTable: 'SnapshotsTable',
  drivesTable: 'DrivesTable',
  /** Sled `i` is `Sled${i}`: adding sleds appends, removing sleds removes the highest. */
  sledPrefix: 'Sled',
  gcQueue: 'GcQueue',
  gcDeadLetterQueue: 'GcDeadLetterQueue',
  evacuationQueue: 'EvacuationQueue',
  evacuationDeadLetterQueue: 'EvacuationDeadLetterQueue',
  checkpointQueue: 'CheckpointQueue',
  checkpointDeadLetterQueue: 'CheckpointDeadLetterQueue',
  checkpointSchedule: 'CheckpointSchedule',
  gcSchedule: 'GcSchedule',
  leaseSweepSchedule: 'LeaseSweepSchedule',
  head: 'Head',
  worker: 'Worker',
  httpApi: 'HttpApi',
  apiUrlOutput: 'ApiUrl',
  /** The bucket the sleds' server access logs go to. */
  accessLogsBucket: 'AccessLogs',
  apiAccessLogs: 'ApiAccessLogs',
  headRole: 'HeadRole',
  workerRole: 'WorkerRole',
  operatorRole: 'OperatorRole',
  tenantPolicy: 'TenantApiPolicy',
  operatorPolicy: 'OperatorApiPolicy',
  tenantPolicyOutput: 'TenantPolicyArn',
  operatorRoleOutput: 'OperatorRoleArn',
  /** The customer managed KMS key of the sleds, tables and queues (only with `encryptionKey: 'customer'`). */
  dataKey: 'DataKey',
} as const;

/**
 * The routes only operators may call under `/volumes` (the rest of the operator routes, `/drives`,
 * `/dumps`, `/queues`, are outside the tenant policy's paths). The head refuses them to tenants
 * too (shared/api/routes.ts); the tenant policy denies them so IAM does first.
 */
export const OPERATOR_VOLUME_ROUTES: ReadonlyArray<readonly [method: string, path: string]> = [
  ['POST', '/volumes/*/heads/fail'],
  ['POST', '/volumes/*/gc'],
  ['POST', '/volumes/*/rebuild'],
];

/** The DynamoDB actions the functions use on items (a transaction needs the item actions it contains). */
export const TABLE_ITEM_ACTIONS = [
  'dynamodb:BatchGetItem',
  'dynamodb:BatchWriteItem',
  'dynamodb:ConditionCheckItem',
  'dynamodb:DeleteItem',
  'dynamodb:GetItem',
  'dynamodb:PutItem',
  'dynamodb:Query',
  'dynamodb:Scan',
  'dynamodb:UpdateItem',
] as const;

/**
 * The KMS actions a function needs on the customer managed key (`encryptionKey`), all through
 * S3, DynamoDB or SQS: S3 and SQS make a data key for each object or batch of messages written
 * (GenerateDataKey) and decrypt it to read one back (Decrypt); DynamoDB encrypts and decrypts
 * its table key with the caller's permission (Encrypt, Decrypt) and checks the key
 * (DescribeKey). No ReEncrypt, no key management, and no `*`.
 */
export const DATA_KEY_ACTIONS = ['kms:Decrypt', 'kms:DescribeKey', 'kms:Encrypt', 'kms:GenerateDataKey'] as const;

/** The services through which the functions may use the key (`kms:ViaService`). */
export const DATA_KEY_SERVICES = ['s3', 'dynamodb', 'sqs'] as const;

/** The S3 actions the functions use on chunk objects (HeadObject is authorized as GetObject). */
export const SLED_OBJECT_ACTIONS = ['s3:GetObject', 's3:PutObject', 's3:DeleteObject'] as const;

/**
 * How many times SQS delivers a work message before moving it to the dead-letter queue.
 *
 * Every job is idempotent (docs/evacuation.md, docs/checkpoints.md), so redelivery is safe; five deliveries
 * ride out throttling and a head failover of a few minutes, while a poison message still
 * reaches the dead-letter queue within `5 x visibility timeout`, where it stays visible.
 */
export const MAX_RECEIVE_COUNT = 5;

/** The project root and paths in it, independent of the working directory. */
export const projectRoot = fileURLToPath(new URL('..', import.meta.url));
export const projectPath = (relative: string): string => fileURLToPath(new URL(`../${relative}`, import.meta.url));

/**
 * The `context` of cdk.json: the feature flags `cdk init` recommends for this aws-cdk-lib.
 *
 * The CLI passes them to `cdk/app.ts`; apps built in-process (tests, the local runtime) pass
 * them to `new App({ context })` so they synthesize the same template as `npx cdk synth`.
 */
export function cdkJsonContext(): Record<string, unknown> {
  const cdkJson = JSON.parse(readFileSync(projectPath('cdk.json'), 'utf8')) as { context?: Record<string, unknown> };
  return { ...cdkJson.context };
}

