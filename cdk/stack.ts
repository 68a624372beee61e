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
import { CfnOutput, Duration, Fn, RemovalPolicy, Stack } from 'aws-cdk-lib';
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
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { DEFAULT_FOLD_TAIL_MAX, ENV, VOLUMES_BY_OWNER_INDEX } from '#shared/core/config.ts';
import { CONSTRUCT_IDS, MAX_RECEIVE_COUNT, OPERATOR_VOLUME_ROUTES } from './contract.ts';
import { acknowledge, bindBuckets, bindDeadLetterQueue, bindQueue, bindTable, functionRole, grantDataKey, SLEDGE_FUNCTION_RUNTIME, SledgeFunction, type WorkQueue } from './function.ts';
import type { SledgeStackProps } from './stack-props.ts';
import { VAULT_ENV } from '#shared/core/vault-config.ts';

/** One Sledge deployment (see the file comment); its props are documented in cdk/stack-props.ts. */
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

    const table = (constructId: string, partitionKey: dynamodb.Attribute, sortKey?: dynamodb.Attribute, timeToLiveAttribute?: string) =>
      new dynamodb.Table(this, constructId, {
        partitionKey,
        ...(sortKey ? { sortKey } : {}),
        ...(timeToLiveAttribute ? { timeToLiveAttribute } : {}),
        billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
        pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
        ...(dataKey ? { encryption: dynamodb.TableEncryption.CUSTOMER_MANAGED, encryptionKey: dataKey } : { encryption: dynamodb.TableEncryption.AWS_MANAGED }),
        deletionProtection: dataRemovalPolicy === RemovalPolicy.RETAIN,
        removalPolicy: dataRemovalPolicy,
      });
    this.volumesTable = table(CONSTRUCT_IDS.volumesTable, { name: 'volumeId', type: dynamodb.AttributeType.STRING });
    // A tenant's volume list queries its own partition (shared/aws/pagemap/volumes.ts). Keys only:
    // the index is written when a volume is created or deleted, not on every commit's update of
    // the volume item (no other attribute is projected).
    this.volumesTable.addGlobalSecondaryIndex({
      indexName: VOLUMES_BY_OWNER_INDEX,
      partitionKey: { name: 'owner', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'volumeId', type: dynamodb.AttributeType.STRING },
      projectionType: dynamodb.ProjectionType.KEYS_ONLY,
    });
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
    // The notes kept in it (job records, failure notes: shared/aws/notes.ts) expire; nothing else carries `expiresAt`.
    this.snapshotsTable = table(
      CONSTRUCT_IDS.snapshotsTable,
      { name: 'volumeId', type: dynamodb.AttributeType.STRING },
      { name: 'snapshotId', type: dynamodb.AttributeType.STRING },
      'expiresAt',
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
    const foldTailMax = props.foldTailMax ?? DEFAULT_FOLD_TAIL_MAX;
    if (!(Number.isInteger(foldTailMax) && foldTailMax >= 0 && foldTailMax <= 1024)) {
      throw new Error(`foldTailMax ${foldTailMax} must be an integer from 0 to 1024`);
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
      environment: { [ENV.foldTailMax]: String(foldTailMax) },
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

    // CDK grants a table's actions on its indexes as `<table ARN>/index/*`; the Volumes table's
    // one index is the owner index, which the volume list queries.
    for (const role of [headRole, workerRole]) {
      acknowledge(
        role,
        `AwsSolutions-IAM5[Resource::<${this.getLogicalId(this.volumesTable.node.defaultChild as dynamodb.CfnTable)}.Arn>/index/*]`,
        `The Volumes table's indexes (one: ${VOLUMES_BY_OWNER_INDEX}, volume ids by owner, for a tenant's volume list); nothing outside the table.`,
      );
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
          actions: ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query', 'dynamodb:BatchGetItem'],
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
