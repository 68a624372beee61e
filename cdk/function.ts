/**
 * The building blocks of Sledge's functions: `SledgeFunction` (the project's Lambda defaults)
 * and the `bind*` functions, each of which names a resource in a function's environment and
 * grants exactly what its use needs.
 */
import { Duration, Fn, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { NodejsFunction, OutputFormat, type NodejsFunctionProps } from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { DATA_KEY_ACTIONS, DATA_KEY_SERVICES, type EnvName, projectPath, projectRoot, SLED_OBJECT_ACTIONS, TABLE_ITEM_ACTIONS } from './contract.ts';
import { nativeCrcBundling } from './native-crc.ts';

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
