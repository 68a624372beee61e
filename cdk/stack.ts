/**
 * The Sledge stack: everything one Sledge deployment needs, and nothing that runs while
 * nobody does I/O.
 *
 * - Five DynamoDB tables: `Volumes`, `Pages` (the page map and snapshots' frozen pages),
 *   `Segments` (chunk maps), `Snapshots` and `Drives` (the drive registry).
 * - `sledCount` S3 buckets, the sleds. A stripe puts its k+m chunks on k+m different sleds.
 * - Three SQS work queues (`GcQueue`, `EvacuationQueue`, `CheckpointQueue`), each with its own
 *   dead-letter queue.
 * - The head function behind an HTTP API, and one worker function fed by the three queues.
 * - An EventBridge schedule that puts a checkpoint sweep on the checkpoint queue
 *   (docs/checkpoints.md).
 * - Security (docs/security.md): IAM authorization (SigV4) on every API route unless turned
 *   off explicitly; one role per function with only the actions and resources it uses; an
 *   operator role and the managed policies a tenant and an operator get, on execute-api ARNs;
 *   API access logs and stage throttling; server access logs of the sleds in a log bucket;
 *   optionally a customer managed KMS key for the sleds, tables and queues (`encryptionKey`).
 *   cdk-nag's AwsSolutions pack finds nothing (test/cdk/stack.test.ts); each suppression below
 *   carries its reason and is listed in docs/security.md.
 *
 * Construct IDs are a contract: renaming one replaces the resource, and for a table or a
 * sled that means losing its data. They are listed in `CONSTRUCT_IDS` below and asserted by
 * `test/cdk/stack.test.ts`. The local runtime (`local/stack.ts`) deploys this same stack's
 * data resources to the local endpoint and reads the functions' environment from it, so there
 * is no second list of resources or variables to keep in step.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CfnOutput, Duration, Fn, RemovalPolicy, Stack, type StackProps, Validations } from 'aws-cdk-lib';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpIamAuthorizer } from 'aws-cdk-lib/aws-apigatewayv2-authorizers';
import { HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { SqsEventSource } from 'aws-cdk-lib/aws-lambda-event-sources';
import { NodejsFunction, OutputFormat, type NodejsFunctionProps } from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { ENV } from '#shared/core/config.ts';
import { nativeCrcBundling } from './native-crc.ts';
import { VAULT_ENV } from '#shared/core/vault-config.ts';

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
const projectRoot = fileURLToPath(new URL('..', import.meta.url));
const projectPath = (relative: string): string => fileURLToPath(new URL(`../${relative}`, import.meta.url));

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

export interface SledgeStackProps extends StackProps {
  /**
   * How many sleds (S3 buckets, i.e. failure domains) to create.
   *
   * A volume's stripe of k+m chunks needs k+m distinct sleds, so this bounds the widest
   * erasure code a volume can use; the default fits the default 4+2 code with two spare sleds
   * for copy-on-write after a failed chunk PUT and for evacuation. An integer from 1 to 64:
   * each sled adds two ARNs to both functions' IAM policies, which have a size limit.
   *
   * @default 8
   */
  readonly sledCount?: number;

  /**
   * Memory of the head function, in MB. Lambda gives CPU in proportion to memory, and the
   * head erasure-codes every segment it writes, so the default buys one full vCPU.
   *
   * @default 1769
   */
  readonly headMemoryMb?: number;

  /**
   * Timeout of the head function. API Gateway HTTP APIs end an integration after 30 s, so a
   * longer timeout would only bill for work whose answer nobody can receive.
   *
   * @default Duration.seconds(29)
   */
  readonly headTimeout?: Duration;

  /**
   * Memory of the worker function, in MB. Evacuation rebuilds chunks from k others, which is
   * CPU-bound like the head's encoding, but workers are not latency-sensitive.
   *
   * @default 1024
   */
  readonly workerMemoryMb?: number;

  /**
   * Timeout of the worker function. Each work queue's visibility timeout is six times this
   * (AWS's guidance for SQS event sources), so a message is not redelivered while a slow or
   * retried invocation still holds it.
   *
   * @default Duration.minutes(2)
   */
  readonly workerTimeout?: Duration;

  /**
   * How many messages the worker receives per invocation. The worker handles them one at a
   * time and reports partial batch failures, so a larger batch amortizes cold starts without
   * letting one poison message redeliver the others.
   *
   * @default 10
   */
  readonly workerBatchSize?: number;

  /**
   * How often an EventBridge rule puts a checkpoint sweep (`{"type":"checkpoint-sweep"}`) on the
   * checkpoint queue. The sweep queues a checkpoint of every active volume with commits since
   * its latest checkpoint (volumes created with `checkpointEveryCommits: 0` are left out), so a
   * volume that writes less than every N commits per interval is still checkpointed this often.
   * Between 1 minute and 1 day.
   *
   * @default Duration.hours(1)
   */
  readonly checkpointSweepInterval?: Duration;

  /**
   * How often an EventBridge rule puts a GC sweep (`{"type":"gc-sweep"}`) on the GC queue: a
   * GC pass of every active volume (dead segments, compaction, orphans). Heads also queue a
   * pass every `SLEDGE_GC_EVERY_COMMITS` commits; the sweep covers volumes that stopped
   * writing. Between 1 hour and 7 days.
   *
   * @default Duration.hours(6)
   */
  readonly gcSweepInterval?: Duration;

  /**
   * How often an EventBridge rule puts a lease sweep (`{"type":"sweep-leases"}`) on the GC
   * queue. The sweep promotes the first registered reserve head of every volume whose primary's
   * lease has lapsed (docs/dumps.md), so a failover happens within this interval plus the
   * lease. EventBridge schedules run at most once a minute. Between 1 minute and 1 hour.
   *
   * @default Duration.minutes(1)
   */
  readonly leaseSweepInterval?: Duration;

  /**
   * The Lambda runtime of both functions.
   *
   * @default SLEDGE_FUNCTION_RUNTIME (Node.js 24)
   */
  readonly functionRuntime?: lambda.Runtime;

  /**
   * How long the functions' CloudWatch log groups keep events.
   *
   * @default logs.RetentionDays.ONE_MONTH
   */
  readonly logRetention?: logs.RetentionDays;

  /**
   * What CloudFormation does with the tables and the sleds when they leave the stack.
   * `RETAIN` keeps a volume's data when the stack is deleted or a resource is replaced by
   * mistake, and also turns on DynamoDB deletion protection. `DESTROY` deletes the tables;
   * a sled bucket is deleted only if it is empty (CloudFormation never deletes a non-empty
   * bucket), so empty the sleds first.
   *
   * @default RemovalPolicy.RETAIN
   */
  readonly dataRemovalPolicy?: RemovalPolicy;

  /**
   * Require SigV4-signed requests (IAM authorization) on the HTTP API, and tell the head to
   * accept only requests that carry an IAM identity. `false` is the explicit opt-out: anyone
   * who knows the URL can then read and write every volume and call every operator route (the
   * head treats every caller as an operator), which is fine for a sandbox account only
   * (docs/security.md).
   *
   * @default true
   */
  readonly apiIamAuthorization?: boolean;

  /**
   * Who may assume the operator role the stack creates (`OperatorRole`, which has
   * `OperatorApiPolicy`).
   *
   * @default the account (its IAM policies then decide who)
   */
  readonly operatorRoleTrust?: iam.IPrincipal;

  /**
   * More operator principals besides the operator role: ARNs of IAM users or roles (a role's
   * sessions count as the role). They also need `OperatorApiPolicy` (or equivalent) in IAM.
   *
   * @default none
   */
  readonly operatorPrincipalArns?: readonly string[];

  /**
   * The stage's throttling: requests per second and burst, across all callers. API Gateway
   * answers 429 beyond them.
   *
   * @default { rateLimit: 2000, burstLimit: 1000 }
   */
  readonly apiThrottle?: { readonly rateLimit: number; readonly burstLimit: number };

  /**
   * Reserved concurrency of the head: invocations the worker and other functions of the account
   * can never take from it. Lambda keeps 100 of the account's concurrency unreserved, so an
   * account needs at least this plus 100 (new accounts may have less).
   *
   * @default none (the head shares the account's pool; the worker's is capped by `workerMaxConcurrency`)
   */
  readonly headReservedConcurrency?: number;

  /**
   * The vault backups go to (docs/backup.md, `SledgeVaultStack`, usually in another region or
   * account): both functions get its names (`SLEDGE_VAULT_*`) and access to its bucket,
   * catalog table and key. Without it the backup routes answer 503.
   *
   * @default none
   */
  readonly vault?: { bucketName: string; tableName: string; region: string; keyArn: string; account?: string };

  /**
   * The most concurrent worker invocations each work queue's event source mapping starts (2 to
   * 1000), so background work cannot take the concurrency the head needs for I/O.
   *
   * @default 5
   */
  readonly workerMaxConcurrency?: number;

  /**
   * Add the `AWS::CDK::Metadata` version-reporting resource. Off unless asked for: the local
   * endpoint's CloudFormation does not know the type, and without it the template depends
   * only on the code.
   *
   * @default false
   */
  readonly analyticsReporting?: boolean;

  /**
   * The key that encrypts the sleds (SSE-KMS with S3 bucket keys), the tables and the work
   * queues with their dead-letter queues.
   *
   * - `'aws-managed'`: SSE-S3 sleds, DynamoDB's AWS owned key, SSE-SQS queues; no key to manage
   *   and no KMS requests to pay for.
   * - `'customer'`: the stack creates a customer managed key (`DataKey`) with yearly automatic
   *   rotation, retained or deleted with the data (`dataRemovalPolicy`), and uses it for all
   *   three. Its key policy is KMS's default (the account's IAM decides) plus EventBridge's use
   *   for the schedules' messages; each function role gets `DATA_KEY_ACTIONS` on it only
   *   through S3, DynamoDB and SQS. Revoking or disabling the key makes the data unreadable.
   * - A key (`kms.IKey`): the same with a key made elsewhere. Its policy must then let the
   *   account's IAM policies grant its use, and let `events.amazonaws.com` use
   *   GenerateDataKey and Decrypt (the stack cannot change an imported key's policy).
   *
   * The server access log bucket stays SSE-S3: S3 delivers server access logs only to such a
   * bucket. Changing this on a deployed stack re-encrypts nothing already stored: new objects
   * and messages use the new setting, DynamoDB switches a table's key in place.
   *
   * @default 'aws-managed'
   */
  readonly encryptionKey?: 'aws-managed' | 'customer' | kms.IKey;
}

export interface SledgeFunctionProps extends Omit<NodejsFunctionProps, 'entry' | 'logGroup'> {
  /** The handler file, relative to the project root, e.g. `lambdas/api.ts`. It exports `handler`. */
  readonly entry: string;
  /**
   * How long the function's log group keeps events.
   *
   * @default logs.RetentionDays.ONE_MONTH
   */
  readonly logRetention?: logs.RetentionDays;
  /**
   * What happens to the log group when it leaves the stack.
   *
   * @default RemovalPolicy.DESTROY (logs are diagnostics, not data)
   */
  readonly logRemovalPolicy?: RemovalPolicy;
}

/**
 * The Lambda runtime of Sledge's functions.
 *
 * Node.js 24, not the Node.js 20 the project develops on: Lambda deprecated nodejs20.x on
 * 2026-04-30 and no longer creates functions with it (cfn-lint E2533), and 24 is the runtime
 * with the longest support ahead. The project targets Node.js >= 20 (package.json `engines`),
 * so code the tests run on 20 runs on 24.
 */
export const SLEDGE_FUNCTION_RUNTIME = lambda.Runtime.NODEJS_24_X;

/**
 * A Sledge Lambda function: the project's defaults in one place.
 *
 * Node.js 24 (see `SLEDGE_FUNCTION_RUNTIME`) on ARM64 (cheaper per GB-second than x86 for
 * the same work), ESM output, source maps (with `NODE_OPTIONS=--enable-source-maps`, which
 * NodejsFunction does not set), JSON logs into a log group with a retention, and an esbuild
 * bundle that includes the AWS SDK, so the function runs the SDK version the tests ran
 * rather than whatever the runtime ships.
 *
 * `@ronomon/reed-solomon` is external and not shipped: it is a native addon built for the
 * build machine, and the shared codec falls back to the portable implementation when the
 * import fails, so Lambda never needs the native build.
 *
 * An ARM64 function's asset also carries the Linux arm64 (glibc) build of the `@node-rs/crc32`
 * addon, at the version and integrity package-lock.json pins (`nativeCrcBundling`, cdk/native-crc.ts),
 * which shared/data/crc32c.ts loads from next to `index.mjs` and checks, falling back to the
 * portable CRC-32C where it does not load. Synth then fetches that package with `npm pack`
 * (npm's cache, or the registry); `bundling.commandHooks` replaces the step.
 */
export class SledgeFunction extends NodejsFunction {
  constructor(scope: Construct, id: string, props: SledgeFunctionProps) {
    const { entry: relativeEntry, logRetention, logRemovalPolicy, bundling, ...rest } = props;
    const architecture = rest.architecture ?? lambda.Architecture.ARM_64;
    const logGroup = new logs.LogGroup(scope, `${id}LogGroup`, {
      retention: logRetention ?? logs.RetentionDays.ONE_MONTH,
      removalPolicy: logRemovalPolicy ?? RemovalPolicy.DESTROY,
    });
    super(scope, id, {
      runtime: SLEDGE_FUNCTION_RUNTIME,
      timeout: Duration.seconds(29),
      memorySize: 1024,
      loggingFormat: lambda.LoggingFormat.JSON,
      ...rest,
      architecture,
      // The bundle's source maps are used only when Node is told to; stacks then name the
      // TypeScript files and lines.
      environment: { NODE_OPTIONS: '--enable-source-maps', ...rest.environment },
      entry: projectPath(relativeEntry),
      handler: 'handler',
      projectRoot,
      depsLockFilePath: projectPath('package-lock.json'),
      // The log group is a sibling, created before the function: a child could not be created
      // before `super`, and an explicit group (unlike the deprecated `logRetention` prop) needs
      // no custom resource.
      logGroup,
      bundling: {
        format: OutputFormat.ESM,
        // No `target`: NodejsFunction derives it from the runtime.
        // Prefer packages' ESM builds; fall back to CommonJS ones.
        mainFields: ['module', 'main'],
        // CommonJS dependencies bundled into an ESM file still call `require` for Node
        // built-ins; give them one.
        banner: "import { createRequire as __sledgeCreateRequire } from 'node:module'; const require = __sledgeCreateRequire(import.meta.url);",
        sourceMap: true,
        sourcesContent: false,
        minify: true,
        keepNames: true,
        externalModules: ['@ronomon/reed-solomon'],
        // The addon is built for arm64 only; an x86 function would carry a file it cannot load.
        ...(architecture.name === lambda.Architecture.ARM_64.name ? nativeCrcBundling() : {}),
        ...bundling,
      },
    });
  }
}

/**
 * Acknowledges a cdk-nag finding on `scope` (CDK's policy validation, which cdk-nag 3 reads),
 * with the reason. Every call is listed in docs/security.md.
 */
export function acknowledge(scope: Construct, id: string, reason: string): void {
  Validations.of(scope).acknowledge({ id, reason });
}

/**
 * A role for one function: Lambda may assume it, it has no AWS managed policy, and it may
 * write only to the function's own log group. Everything else is granted by the `bind*`
 * functions, which set the variable that names a resource and grant what its use needs.
 */
export function functionRole(scope: Construct, id: string, description: string): iam.Role {
  return new iam.Role(scope, id, { assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'), description });
}

/** Sets `envName` on `fn` to the table's name and grants the item actions Sledge uses on it (`TABLE_ITEM_ACTIONS`). */
export function bindTable(fn: lambda.Function, envName: EnvName, table: dynamodb.ITable): void {
  fn.addEnvironment(envName, table.tableName);
  table.grant(fn, ...TABLE_ITEM_ACTIONS);
}

/**
 * Sets `envName` on `fn` to the buckets' names, comma-joined in sled order, and grants what
 * chunk storage needs: get, put and delete their objects (GC and evacuation delete chunks), and
 * list them (reclaim, evacuation and orphan scans).
 */
export function bindBuckets(fn: lambda.Function, envName: EnvName, buckets: readonly s3.IBucket[]): void {
  fn.addEnvironment(envName, Fn.join(',', buckets.map((bucket) => bucket.bucketName)));
  fn.addToRolePolicy(new iam.PolicyStatement({ actions: [...SLED_OBJECT_ACTIONS], resources: buckets.map((bucket) => bucket.arnForObjects('*')) }));
  fn.addToRolePolicy(new iam.PolicyStatement({ actions: ['s3:ListBucket'], resources: buckets.map((bucket) => bucket.bucketArn) }));
}

/**
 * Sets `envName` on `fn` to the queue's URL and grants sending to it. The queue actions only:
 * CDK's `grantSendMessages` would add `kms:GenerateDataKey*` and `kms:ReEncrypt*` on an
 * encrypted queue's key, and `grantDataKey` grants the key's use instead.
 */
export function bindQueue(fn: lambda.Function, envName: EnvName, queue: sqs.IQueue): void {
  fn.addEnvironment(envName, queue.queueUrl);
  fn.addToRolePolicy(new iam.PolicyStatement({ actions: ['sqs:SendMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'], resources: [queue.queueArn] }));
}

/**
 * Grants `fn` the use of the data key that what it binds is encrypted with: `DATA_KEY_ACTIONS`,
 * on that key only, and only through S3, DynamoDB and SQS in the stack's region (so the role
 * cannot decrypt with the key directly).
 */
export function grantDataKey(fn: lambda.Function, key: kms.IKey): void {
  const stack = Stack.of(fn);
  fn.addToRolePolicy(
    new iam.PolicyStatement({
      actions: [...DATA_KEY_ACTIONS],
      resources: [key.keyArn],
      conditions: { StringEquals: { 'kms:ViaService': DATA_KEY_SERVICES.map((service) => `${service}.${stack.region}.${stack.urlSuffix}`) } },
    }),
  );
}

/**
 * Sets `envName` on `fn` to a dead-letter queue's URL and, with `grant` (the head, which serves
 * the operator's peek and redrive), grants receive, change visibility and delete on the DLQ
 * (sending back to the source queue is granted by `bindQueue`). The worker gets the variable,
 * which its configuration requires, and no access. The queue actions only, as in `bindQueue`.
 */
export function bindDeadLetterQueue(fn: lambda.Function, envName: EnvName, deadLetterQueue: sqs.IQueue, opts: { grant?: boolean } = {}): void {
  fn.addEnvironment(envName, deadLetterQueue.queueUrl);
  if (!(opts.grant ?? true)) return;
  fn.addToRolePolicy(
    new iam.PolicyStatement({
      actions: ['sqs:ReceiveMessage', 'sqs:ChangeMessageVisibility', 'sqs:GetQueueUrl', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes'],
      resources: [deadLetterQueue.queueArn],
    }),
  );
}

/** A work queue and its dead-letter queue. */
export interface WorkQueue {
  readonly queue: sqs.Queue;
  readonly deadLetterQueue: sqs.Queue;
}

export class SledgeStack extends Stack {
  readonly volumesTable: dynamodb.Table;
  readonly pagesTable: dynamodb.Table;
  readonly segmentsTable: dynamodb.Table;
  /** Snapshot records, one partition per volume (docs/snapshots.md). */
  readonly snapshotsTable: dynamodb.Table;
  /** The drive registry: one item per drive (sled bucket + prefix), with its state, usage and dumps. */
  readonly drivesTable: dynamodb.Table;
  /** The sleds, in order: sled `i` is `sleds[i]`. */
  readonly sleds: readonly s3.Bucket[];
  readonly gcQueue: WorkQueue;
  readonly evacuationQueue: WorkQueue;
  readonly checkpointQueue: WorkQueue;
  readonly checkpointSchedule: events.Rule;
  /** Puts `{"type":"gc-sweep"}` on the GC queue: every active volume gets a GC pass. */
  readonly gcSchedule: events.Rule;
  /** Puts `{"type":"sweep-leases"}` on the GC queue: the lease watchdog that promotes reserve heads. */
  readonly leaseSweepSchedule: events.Rule;
  readonly head: SledgeFunction;
  readonly worker: SledgeFunction;
  readonly httpApi: apigwv2.HttpApi;
  /** The sleds' server access logs. */
  readonly accessLogsBucket: s3.Bucket;
  /** The API's access log. */
  readonly apiAccessLogs: logs.LogGroup;
  /** The role operators assume; it has `operatorPolicy`. */
  readonly operatorRole: iam.Role;
  /** What a tenant principal needs: invoke the volume routes (attach it to the tenants' users or roles). */
  readonly tenantPolicy: iam.ManagedPolicy;
  /** What an operator needs: invoke every route. */
  readonly operatorPolicy: iam.ManagedPolicy;
  /** The customer managed key of the sleds, tables and queues, or undefined with AWS managed encryption (`encryptionKey`). */
  readonly dataKey?: kms.IKey;

  constructor(scope: Construct, id: string, props: SledgeStackProps = {}) {
    super(scope, id, { ...props, analyticsReporting: props.analyticsReporting ?? false });

    const sledCount = props.sledCount ?? 8;
    if (!Number.isInteger(sledCount) || sledCount < 1 || sledCount > 64) {
      throw new Error(`sledCount ${sledCount} must be an integer from 1 to 64`);
    }
    const dataRemovalPolicy = props.dataRemovalPolicy ?? RemovalPolicy.RETAIN;
    const workerTimeout = props.workerTimeout ?? Duration.minutes(2);
    const logRetention = props.logRetention ?? logs.RetentionDays.ONE_MONTH;

    const encryptionKey = props.encryptionKey ?? 'aws-managed';
    if (encryptionKey === 'customer') {
      this.dataKey = new kms.Key(this, CONSTRUCT_IDS.dataKey, {
        description: `Sledge ${this.stackName}: sleds, tables and work queues`,
        enableKeyRotation: true,
        // Deleting the key loses the data it encrypts, so it goes with the data.
        removalPolicy: dataRemovalPolicy,
      });
    } else if (encryptionKey !== 'aws-managed') {
      this.dataKey = encryptionKey;
    }
    const dataKey = this.dataKey;

    const table = (constructId: string, partitionKey: dynamodb.Attribute, sortKey?: dynamodb.Attribute) =>
      new dynamodb.Table(this, constructId, {
        partitionKey,
        ...(sortKey ? { sortKey } : {}),
        billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
        pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
        ...(dataKey ? { encryption: dynamodb.TableEncryption.CUSTOMER_MANAGED, encryptionKey: dataKey } : { encryption: dynamodb.TableEncryption.AWS_MANAGED }),
        deletionProtection: dataRemovalPolicy === RemovalPolicy.RETAIN,
        removalPolicy: dataRemovalPolicy,
      });
    this.volumesTable = table(CONSTRUCT_IDS.volumesTable, { name: 'volumeId', type: dynamodb.AttributeType.STRING });
    this.pagesTable = table(
      CONSTRUCT_IDS.pagesTable,
      { name: 'volumeId', type: dynamodb.AttributeType.STRING },
      { name: 'page', type: dynamodb.AttributeType.NUMBER },
    );
    this.segmentsTable = table(
      CONSTRUCT_IDS.segmentsTable,
      { name: 'volumeId', type: dynamodb.AttributeType.STRING },
      { name: 'segmentId', type: dynamodb.AttributeType.STRING },
    );
    this.snapshotsTable = table(
      CONSTRUCT_IDS.snapshotsTable,
      { name: 'volumeId', type: dynamodb.AttributeType.STRING },
      { name: 'snapshotId', type: dynamodb.AttributeType.STRING },
    );
    this.drivesTable = table(CONSTRUCT_IDS.drivesTable, { name: 'driveId', type: dynamodb.AttributeType.STRING });

    this.accessLogsBucket = new s3.Bucket(this, CONSTRUCT_IDS.accessLogsBucket, {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      // Server access logging delivers only to SSE-S3 buckets.
      encryption: s3.BucketEncryption.S3_MANAGED,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      lifecycleRules: [{ id: 'ExpireAccessLogs', expiration: Duration.days(365) }],
      removalPolicy: dataRemovalPolicy,
    });
    acknowledge(this.accessLogsBucket, 'AwsSolutions-S1', 'This is the server access log bucket of the sleds; logging its own accesses into itself would loop.');

    const sleds: s3.Bucket[] = [];
    for (let i = 0; i < sledCount; i++) {
      sleds.push(
        new s3.Bucket(this, `${CONSTRUCT_IDS.sledPrefix}${i}`, {
          serverAccessLogsBucket: this.accessLogsBucket,
          serverAccessLogsPrefix: `sled${i}/`,
          blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
          enforceSSL: true,
          // Chunks are immutable and written with If-None-Match, so versions would only keep
          // garbage that GC has already decided to delete.
          versioned: false,
          // Bucket keys: S3 asks KMS for a data key per bucket key, not per chunk object.
          ...(dataKey ? { encryption: s3.BucketEncryption.KMS, encryptionKey: dataKey, bucketKeyEnabled: true } : { encryption: s3.BucketEncryption.S3_MANAGED }),
          objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
          lifecycleRules: [{ id: 'AbortIncompleteMultipartUploads', abortIncompleteMultipartUploadAfter: Duration.days(1) }],
          removalPolicy: dataRemovalPolicy,
        }),
      );
    }
    this.sleds = sleds;

    const queueEncryption: Pick<sqs.QueueProps, 'encryption' | 'encryptionMasterKey'> = dataKey
      ? { encryption: sqs.QueueEncryption.KMS, encryptionMasterKey: dataKey }
      : { encryption: sqs.QueueEncryption.SQS_MANAGED };
    const workQueue = (queueId: string, deadLetterQueueId: string): WorkQueue => {
      const deadLetterQueue = new sqs.Queue(this, deadLetterQueueId, {
        // The maximum, so a poison message waits two weeks for a human.
        retentionPeriod: Duration.days(14),
        ...queueEncryption,
        enforceSSL: true,
      });
      const queue = new sqs.Queue(this, queueId, {
        visibilityTimeout: Duration.seconds(workerTimeout.toSeconds() * 6),
        retentionPeriod: Duration.days(4),
        receiveMessageWaitTime: Duration.seconds(20),
        ...queueEncryption,
        enforceSSL: true,
        deadLetterQueue: { queue: deadLetterQueue, maxReceiveCount: MAX_RECEIVE_COUNT },
      });
      return { queue, deadLetterQueue };
    };
    this.gcQueue = workQueue(CONSTRUCT_IDS.gcQueue, CONSTRUCT_IDS.gcDeadLetterQueue);
    this.evacuationQueue = workQueue(CONSTRUCT_IDS.evacuationQueue, CONSTRUCT_IDS.evacuationDeadLetterQueue);
    this.checkpointQueue = workQueue(CONSTRUCT_IDS.checkpointQueue, CONSTRUCT_IDS.checkpointDeadLetterQueue);

    const sweepInterval = props.checkpointSweepInterval ?? Duration.hours(1);
    if (sweepInterval.toSeconds() < 60 || sweepInterval.toSeconds() > 86_400) {
      throw new Error(`checkpointSweepInterval ${sweepInterval.toHumanString()} must be from 1 minute to 1 day`);
    }
    // The sweep is a message like any other on the checkpoint queue, so it gets the queue's
    // retries and dead-letter queue, and the worker stays the only consumer.
    this.checkpointSchedule = new events.Rule(this, CONSTRUCT_IDS.checkpointSchedule, {
      description: 'Sledge: sweep volumes for checkpoints (docs/checkpoints.md)',
      schedule: events.Schedule.rate(sweepInterval),
      targets: [
        new targets.SqsQueue(this.checkpointQueue.queue, {
          message: events.RuleTargetInput.fromObject({ type: 'checkpoint-sweep' }),
          // A sweep lost to an EventBridge delivery failure is taken by the next one.
          retryAttempts: 2,
        }),
      ],
    });

    const scheduled = (id: string, description: string, interval: Duration, queue: sqs.IQueue, message: Record<string, unknown>) =>
      new events.Rule(this, id, {
        description,
        schedule: events.Schedule.rate(interval),
        targets: [new targets.SqsQueue(queue, { message: events.RuleTargetInput.fromObject(message), retryAttempts: 2 })],
      });
    const gcInterval = props.gcSweepInterval ?? Duration.hours(6);
    if (gcInterval.toSeconds() < 3600 || gcInterval.toSeconds() > 7 * 86_400) {
      throw new Error(`gcSweepInterval ${gcInterval.toHumanString()} must be from 1 hour to 7 days`);
    }
    this.gcSchedule = scheduled(CONSTRUCT_IDS.gcSchedule, 'Sledge: a GC pass of every active volume (docs/evacuation.md)', gcInterval, this.gcQueue.queue, { type: 'gc-sweep' });
    const leaseInterval = props.leaseSweepInterval ?? Duration.minutes(1);
    if (leaseInterval.toSeconds() < 60 || leaseInterval.toSeconds() > 3600) {
      throw new Error(`leaseSweepInterval ${leaseInterval.toHumanString()} must be from 1 minute to 1 hour`);
    }
    this.leaseSweepSchedule = scheduled(
      CONSTRUCT_IDS.leaseSweepSchedule,
      'Sledge: promote reserve heads of volumes whose primary lease lapsed (docs/dumps.md)',
      leaseInterval,
      this.gcQueue.queue,
      { type: 'sweep-leases' },
    );

    const headRole = functionRole(this, CONSTRUCT_IDS.headRole, 'Sledge head: the volume API');
    const workerRole = functionRole(this, CONSTRUCT_IDS.workerRole, 'Sledge worker: GC, evacuation and checkpoints');
    const headReserved = props.headReservedConcurrency;
    if (headReserved !== undefined && !(Number.isInteger(headReserved) && headReserved >= 1)) {
      throw new Error(`headReservedConcurrency ${headReserved} must be a positive integer`);
    }
    this.head = new SledgeFunction(this, CONSTRUCT_IDS.head, {
      entry: 'lambdas/api.ts',
      description: 'Sledge head: the volume API',
      memorySize: props.headMemoryMb ?? 1769,
      runtime: props.functionRuntime ?? SLEDGE_FUNCTION_RUNTIME,
      timeout: props.headTimeout ?? Duration.seconds(29),
      logRetention,
      role: headRole,
      ...(headReserved !== undefined ? { reservedConcurrentExecutions: headReserved } : {}),
    });
    this.worker = new SledgeFunction(this, CONSTRUCT_IDS.worker, {
      entry: 'lambdas/worker.ts',
      description: 'Sledge worker: GC, evacuation and checkpoints from SQS',
      memorySize: props.workerMemoryMb ?? 1024,
      runtime: props.functionRuntime ?? SLEDGE_FUNCTION_RUNTIME,
      timeout: workerTimeout,
      logRetention,
      role: workerRole,
      // A job may enqueue its own continuation (evacuating a drive one batch of segments at a
      // time), which Lambda's loop detection would cut off after 16 hops. Every job makes
      // progress and is idempotent, so the chain ends by itself.
      recursiveLoop: lambda.RecursiveLoop.ALLOW,
    });

    // Both functions get the same variables: the head enqueues work, and the worker reads
    // and rewrites the same tables and sleds the head does. Only the head, which serves the
    // operator's peek and redrive, may read the dead-letter queues.
    for (const fn of [this.head, this.worker]) {
      fn.logGroup.grantWrite(fn);
      bindTable(fn, ENV.volumesTable, this.volumesTable);
      bindTable(fn, ENV.pagesTable, this.pagesTable);
      bindTable(fn, ENV.segmentsTable, this.segmentsTable);
      bindTable(fn, ENV.snapshotsTable, this.snapshotsTable);
      bindTable(fn, ENV.drivesTable, this.drivesTable);
      bindBuckets(fn, ENV.sledBuckets, this.sleds);
      bindQueue(fn, ENV.gcQueueUrl, this.gcQueue.queue);
      bindQueue(fn, ENV.evacuationQueueUrl, this.evacuationQueue.queue);
      bindQueue(fn, ENV.checkpointQueueUrl, this.checkpointQueue.queue);
      const grant = fn === this.head;
      bindDeadLetterQueue(fn, ENV.gcDeadLetterQueueUrl, this.gcQueue.deadLetterQueue, { grant });
      bindDeadLetterQueue(fn, ENV.evacuationDeadLetterQueueUrl, this.evacuationQueue.deadLetterQueue, { grant });
      bindDeadLetterQueue(fn, ENV.checkpointDeadLetterQueueUrl, this.checkpointQueue.deadLetterQueue, { grant });
      if (dataKey) grantDataKey(fn, dataKey);
    }

    if (props.vault) this.bindVault(props.vault, [headRole, workerRole]);

    const workerMaxConcurrency = props.workerMaxConcurrency ?? 5;
    if (!Number.isInteger(workerMaxConcurrency) || workerMaxConcurrency < 2 || workerMaxConcurrency > 1000) {
      throw new Error(`workerMaxConcurrency ${workerMaxConcurrency} must be an integer from 2 to 1000`);
    }
    for (const { queue } of [this.gcQueue, this.evacuationQueue, this.checkpointQueue]) {
      this.worker.addEventSource(
        new SqsEventSource(queue, {
          batchSize: props.workerBatchSize ?? 10,
          reportBatchItemFailures: true,
          maxConcurrency: workerMaxConcurrency,
        }),
      );
    }

    // Chunk objects are named per volume and segment at run time, so the object grants are per
    // sled bucket (`<sled ARN>/*`), and nothing beyond the sleds.
    for (const role of [headRole, workerRole]) {
      for (const sled of this.sleds) {
        acknowledge(
          role,
          `AwsSolutions-IAM5[Resource::<${this.getLogicalId(sled.node.defaultChild as s3.CfnBucket)}.Arn>/*]`,
          'Chunks are objects whose keys (drive/volume/segment) are made at run time; the function gets Get/Put/DeleteObject on the objects of the sled buckets and on nothing else.',
        );
      }
    }

    // One `$default` route sends every request to the head, whose router owns the whole API
    // surface (paths, 404s, 405s, error bodies). Per-path routes would be a second copy of
    // that surface to keep in step, would answer unknown paths with API Gateway's own error
    // shape instead of Sledge's, and would make the local runtime emulate route matching.
    const iamAuthorization = props.apiIamAuthorization ?? true;
    this.httpApi = new apigwv2.HttpApi(this, CONSTRUCT_IDS.httpApi, {
      description: 'Sledge volume API',
      defaultIntegration: new HttpLambdaIntegration('HeadIntegration', this.head, {
        payloadFormatVersion: apigwv2.PayloadFormatVersion.VERSION_2_0,
      }),
      ...(iamAuthorization ? { defaultAuthorizer: new HttpIamAuthorizer() } : {}),
      createDefaultStage: true,
    });
    if (!iamAuthorization) {
      acknowledge(this.httpApi, 'AwsSolutions-APIG4', 'IAM authorization was turned off explicitly (apiIamAuthorization: false); docs/security.md says what that opens.');
    }

    // Access logs and throttling on the stage (the `$default` stage CDK creates).
    this.apiAccessLogs = new logs.LogGroup(this, CONSTRUCT_IDS.apiAccessLogs, { retention: logRetention, removalPolicy: RemovalPolicy.DESTROY });
    const throttle = props.apiThrottle ?? { rateLimit: 2000, burstLimit: 1000 };
    if (!(throttle.rateLimit > 0 && Number.isInteger(throttle.burstLimit) && throttle.burstLimit > 0)) {
      throw new Error(`apiThrottle ${JSON.stringify(throttle)} needs a positive rateLimit and a positive integer burstLimit`);
    }
    const stage = this.httpApi.defaultStage!.node.defaultChild as apigwv2.CfnStage;
    stage.accessLogSettings = {
      destinationArn: this.apiAccessLogs.logGroupArn,
      format: JSON.stringify({
        requestId: '$context.requestId',
        requestTime: '$context.requestTime',
        ip: '$context.identity.sourceIp',
        caller: '$context.identity.caller',
        userArn: '$context.identity.userArn',
        accessKey: '$context.identity.accessKey',
        method: '$context.httpMethod',
        path: '$context.path',
        status: '$context.status',
        responseLength: '$context.responseLength',
        integrationLatency: '$context.integrationLatency',
        error: '$context.error.message',
        authorizerError: '$context.authorizer.error',
      }),
    };
    stage.defaultRouteSettings = { throttlingRateLimit: throttle.rateLimit, throttlingBurstLimit: throttle.burstLimit };

    // Who is an operator: the operator role (by name, so the head's variable needs no reference
    // to the role, and the local runtime can resolve it) and any principals given.
    const operatorRoleName = `${this.stackName}-operator`.slice(0, 64);
    this.operatorRole = new iam.Role(this, CONSTRUCT_IDS.operatorRole, {
      roleName: operatorRoleName,
      assumedBy: props.operatorRoleTrust ?? new iam.AccountRootPrincipal(),
      description: 'Sledge operator: every API route (drives, dead letters, dumps, forced head failure, GC, rebuild) on every volume',
    });
    const operatorArns = [
      Fn.join('', ['arn:', this.partition, ':iam::', this.account, `:role/${operatorRoleName}`]),
      ...(props.operatorPrincipalArns ?? []),
    ];
    this.head.addEnvironment(ENV.apiAuth, iamAuthorization ? 'iam' : 'none');
    this.head.addEnvironment(ENV.operatorPrincipals, Fn.join(',', operatorArns));

    // The policies a tenant and an operator get, on the API's execute-api ARNs
    // (arn:aws:execute-api:<region>:<account>:<api>/<stage>/<METHOD>/<path>).
    const invoke = (method: string, path: string) => this.httpApi.arnForExecuteApi(method, path, '$default');
    this.tenantPolicy = new iam.ManagedPolicy(this, CONSTRUCT_IDS.tenantPolicy, {
      description: 'Sledge tenant: create, list and use volumes through the API; the head limits each tenant to the volumes it created',
      statements: [
        new iam.PolicyStatement({
          sid: 'VolumeRoutes',
          actions: ['execute-api:Invoke'],
          resources: [invoke('*', '/volumes'), invoke('*', '/volumes/*'), invoke('GET', '/openapi.json')],
        }),
        new iam.PolicyStatement({
          sid: 'NotOperatorRoutes',
          effect: iam.Effect.DENY,
          actions: ['execute-api:Invoke'],
          resources: OPERATOR_VOLUME_ROUTES.map(([method, path]) => invoke(method, path)),
        }),
      ],
    });
    this.operatorPolicy = new iam.ManagedPolicy(this, CONSTRUCT_IDS.operatorPolicy, {
      description: 'Sledge operator: every API route',
      statements: [new iam.PolicyStatement({ sid: 'AllRoutes', actions: ['execute-api:Invoke'], resources: [invoke('*', '/*')] })],
      roles: [this.operatorRole],
    });
    // cdk-nag names an execute-api ARN by its template form.
    const apiArn = (method: string, path: string) =>
      `Resource::arn:<AWS::Partition>:execute-api:<AWS::Region>:<AWS::AccountId>:<${this.getLogicalId(this.httpApi.node.defaultChild as apigwv2.CfnApi)}>/$default/${method}${path}`;
    for (const path of ['/volumes', '/volumes/*']) {
      acknowledge(
        this.tenantPolicy,
        `AwsSolutions-IAM5[${apiArn('*', path)}]`,
        'execute-api ARNs name API paths: a tenant may call any method on /volumes and on any volume path (volume ids are made at run time; the head lets it reach only the volumes it created), and is denied the operator routes among them.',
      );
    }
    acknowledge(
      this.operatorPolicy,
      `AwsSolutions-IAM5[${apiArn('*', '/*')}]`,
      'The operator may call every route of this one API (its own stage only), which is what an operator is for.',
    );

    new CfnOutput(this, CONSTRUCT_IDS.apiUrlOutput, {
      description: 'Base URL of the Sledge volume API',
      value: this.httpApi.apiEndpoint,
    });
    new CfnOutput(this, CONSTRUCT_IDS.tenantPolicyOutput, {
      description: 'Managed policy to attach to tenant users or roles',
      value: this.tenantPolicy.managedPolicyArn,
    });
    new CfnOutput(this, CONSTRUCT_IDS.operatorRoleOutput, {
      description: 'Role operators assume (sledge --profile with role_arn)',
      value: this.operatorRole.roleArn,
    });
  }

  /** The vault's names in both functions' environment, and its bucket, catalog and key granted to their roles. */
  private bindVault(vault: NonNullable<SledgeStackProps['vault']>, roles: iam.Role[]): void {
    const account = vault.account ?? this.account;
    // The vault's partition from its region, as a literal: the ARNs name a resource of another stack.
    const partition = vault.region.startsWith('cn-') ? 'aws-cn' : vault.region.startsWith('us-gov-') ? 'aws-us-gov' : 'aws';
    const bucketArn = `arn:${partition}:s3:::${vault.bucketName}`;
    const tableArn = `arn:${partition}:dynamodb:${vault.region}:${account}:table/${vault.tableName}`;
    for (const fn of [this.head, this.worker]) {
      fn.addEnvironment(VAULT_ENV.bucket, vault.bucketName);
      fn.addEnvironment(VAULT_ENV.table, vault.tableName);
      fn.addEnvironment(VAULT_ENV.region, vault.region);
    }
    for (const role of roles) {
      role.addToPolicy(new iam.PolicyStatement({ actions: ['s3:PutObject', 's3:GetObject', 's3:DeleteObject'], resources: [`${bucketArn}/*`] }));
      role.addToPolicy(new iam.PolicyStatement({ actions: ['s3:ListBucket'], resources: [bucketArn] }));
      role.addToPolicy(
        new iam.PolicyStatement({
          actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query', 'dynamodb:Scan', 'dynamodb:BatchGetItem'],
          resources: [tableArn],
        }),
      );
      role.addToPolicy(new iam.PolicyStatement({ actions: ['kms:Encrypt', 'kms:Decrypt', 'kms:GenerateDataKey*'], resources: [vault.keyArn] }));
      acknowledge(
        role,
        `AwsSolutions-IAM5[Resource::${bucketArn}/*]`,
        "Pack objects are named per backup at run time; Get/Put/DeleteObject on the vault bucket's objects and nothing else (docs/backup.md).",
      );
      acknowledge(role, 'AwsSolutions-IAM5[Action::kms:GenerateDataKey*]', "KMS's own action family for data keys, on the vault's key only.");
    }
  }
}
