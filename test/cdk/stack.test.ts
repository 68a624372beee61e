import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { App, CfnWaitConditionHandle, Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { Match, Template } from 'aws-cdk-lib/assertions';
import type { CfnElement } from 'aws-cdk-lib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCheckpointMessage, parseWorkMessage } from '#shared/core/work-messages.ts';
import { ENV, VOLUMES_BY_OWNER_INDEX } from '#shared/core/config.ts';
import { BUNDLED_CRC_ADDON_FILE } from '#shared/data/crc32c.ts';
import { CONSTRUCT_IDS, cdkJsonContext, DATA_KEY_ACTIONS, MAX_RECEIVE_COUNT, OPERATOR_VOLUME_ROUTES } from '../../cdk/contract.ts';
import { SledgeFunction } from '../../cdk/function.ts';
import { SledgeStack } from '../../cdk/stack.ts';
import type { SledgeStackProps } from '../../cdk/stack-props.ts';

const projectRoot = fileURLToPath(new URL('../..', import.meta.url));

/**
 * An app as `npx cdk synth` builds it (cdk.json's feature flags), but without bundling: the
 * template does not depend on the bundle, and bundling is tested once on its own below.
 */
function synth(props: SledgeStackProps = {}, appProps: { analyticsReporting?: boolean; bundle?: boolean } = {}) {
  const app = new App({
    context: { ...cdkJsonContext(), ...(appProps.bundle ? {} : { 'aws:cdk:bundling-stacks': [] }) },
    ...(appProps.analyticsReporting !== undefined ? { analyticsReporting: appProps.analyticsReporting } : {}),
  });
  const stack = new SledgeStack(app, 'Sledge', props);
  return { app, stack, template: Template.fromStack(stack) };
}

const logicalId = (stack: Stack, construct: { node: { defaultChild?: unknown } }): string =>
  stack.resolve((construct.node.defaultChild as CfnElement).logicalId) as string;
const ref = (id: string) => ({ Ref: id });
const arn = (id: string) => ({ 'Fn::GetAtt': [id, 'Arn'] });

interface Statement {
  Effect: string;
  Action: string | string[];
  Resource: unknown;
  Condition?: unknown;
}

/** The Allow statements of every IAM policy attached to the role of the function `functionId`. */
function allowStatements(template: Template, functionId: string): Statement[] {
  const fn = template.toJSON().Resources[functionId] as { Properties: { Role: { 'Fn::GetAtt': [string, string] } } };
  const roleId = fn.Properties.Role['Fn::GetAtt'][0];
  const policies = Object.values(template.findResources('AWS::IAM::Policy')) as {
    Properties: { Roles: unknown[]; PolicyDocument: { Statement: Statement[] } };
  }[];
  return policies
    .filter((p) => p.Properties.Roles.some((r) => JSON.stringify(r) === JSON.stringify(ref(roleId))))
    .flatMap((p) => p.Properties.PolicyDocument.Statement)
    .filter((s) => s.Effect === 'Allow');
}

/** Whether some statement allows `action` (IAM wildcards honoured) on exactly `resource`. */
function allows(statements: Statement[], action: string, resource: unknown): boolean {
  const matches = (pattern: string) => new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`).test(action);
  return statements.some(
    (s) =>
      [s.Action].flat().some(matches) &&
      [s.Resource].flat().some((r) => JSON.stringify(r) === JSON.stringify(resource)),
  );
}

describe('SledgeStack', () => {
  let stack: SledgeStack;
  let template: Template;
  let ids: {
    tables: Record<'volumes' | 'pages' | 'segments' | 'snapshots' | 'drives', string>;
    sleds: string[];
    queues: { queue: string; dlq: string; env: string }[];
    head: string;
    worker: string;
  };

  beforeAll(() => {
    ({ stack, template } = synth());
    ids = {
      tables: {
        volumes: logicalId(stack, stack.volumesTable),
        pages: logicalId(stack, stack.pagesTable),
        segments: logicalId(stack, stack.segmentsTable),
        snapshots: logicalId(stack, stack.snapshotsTable),
        drives: logicalId(stack, stack.drivesTable),
      },
      sleds: stack.sleds.map((sled) => logicalId(stack, sled)),
      queues: [
        { ...stack.gcQueue, env: ENV.gcQueueUrl },
        { ...stack.evacuationQueue, env: ENV.evacuationQueueUrl },
        { ...stack.checkpointQueue, env: ENV.checkpointQueueUrl },
      ].map((q) => ({ queue: logicalId(stack, q.queue), dlq: logicalId(stack, q.deadLetterQueue), env: q.env })),
      head: logicalId(stack, stack.head),
      worker: logicalId(stack, stack.worker),
    };
  });

  it('keeps the construct IDs, and so the logical IDs, that deployed stacks already have', () => {
    // Renaming a construct replaces its resource; for a table or a sled that loses data. If
    // this fails, the change is not a refactoring: it is a migration.
    const byId = (constructId: string) => logicalId(stack, stack.node.findChild(constructId));
    expect({
      volumesTable: byId(CONSTRUCT_IDS.volumesTable),
      pagesTable: byId(CONSTRUCT_IDS.pagesTable),
      segmentsTable: byId(CONSTRUCT_IDS.segmentsTable),
      drivesTable: byId(CONSTRUCT_IDS.drivesTable),
      sled0: byId(`${CONSTRUCT_IDS.sledPrefix}0`),
      sled7: byId(`${CONSTRUCT_IDS.sledPrefix}7`),
      gcQueue: byId(CONSTRUCT_IDS.gcQueue),
      gcDeadLetterQueue: byId(CONSTRUCT_IDS.gcDeadLetterQueue),
      evacuationQueue: byId(CONSTRUCT_IDS.evacuationQueue),
      evacuationDeadLetterQueue: byId(CONSTRUCT_IDS.evacuationDeadLetterQueue),
      checkpointQueue: byId(CONSTRUCT_IDS.checkpointQueue),
      checkpointDeadLetterQueue: byId(CONSTRUCT_IDS.checkpointDeadLetterQueue),
      checkpointSchedule: byId(CONSTRUCT_IDS.checkpointSchedule),
      gcSchedule: byId(CONSTRUCT_IDS.gcSchedule),
      leaseSweepSchedule: byId(CONSTRUCT_IDS.leaseSweepSchedule),
      head: byId(CONSTRUCT_IDS.head),
      worker: byId(CONSTRUCT_IDS.worker),
      httpApi: byId(CONSTRUCT_IDS.httpApi),
    }).toEqual({
      volumesTable: 'VolumesTable1CDEC7F3',
      pagesTable: 'PagesTableD9CB6473',
      segmentsTable: 'SegmentsTable28FC09E7',
      drivesTable: 'DrivesTableF4144F61',
      sled0: 'Sled0D89E8366',
      sled7: 'Sled788287355',
      gcQueue: 'GcQueueE4A3BDEA',
      gcDeadLetterQueue: 'GcDeadLetterQueue7337FD33',
      evacuationQueue: 'EvacuationQueue45B63916',
      evacuationDeadLetterQueue: 'EvacuationDeadLetterQueue0E300476',
      checkpointQueue: 'CheckpointQueue27655B76',
      checkpointDeadLetterQueue: 'CheckpointDeadLetterQueueC25F7A9C',
      checkpointSchedule: 'CheckpointSchedule5AB72C36',
      gcSchedule: 'GcSchedule62BDBEAD',
      leaseSweepSchedule: 'LeaseSweepSchedule1A455529',
      head: 'Head7BEADE55',
      worker: 'Worker11F36D0F',
      httpApi: 'HttpApiF5A9A8A7',
    });
    for (const id of ['VolumesTable1CDEC7F3', 'Sled0D89E8366', 'GcQueueE4A3BDEA', 'Head7BEADE55', 'HttpApiF5A9A8A7']) {
      expect(template.toJSON().Resources[id], id).toBeDefined();
    }
    template.hasOutput(CONSTRUCT_IDS.apiUrlOutput, { Value: { 'Fn::GetAtt': ['HttpApiF5A9A8A7', 'ApiEndpoint'] } });
  });

  describe('sleds', () => {
    // One more bucket: the sleds' server access logs.
    it('creates 8 by default, in order', () => {
      template.resourceCountIs('AWS::S3::Bucket', 9);
      expect(stack.sleds.map((s) => s.node.id)).toEqual(['Sled0', 'Sled1', 'Sled2', 'Sled3', 'Sled4', 'Sled5', 'Sled6', 'Sled7']);
    });

    it('creates sledCount when configured', () => {
      synth({ sledCount: 3 }).template.resourceCountIs('AWS::S3::Bucket', 3 + 1);
      synth({ sledCount: 12 }).template.resourceCountIs('AWS::S3::Bucket', 12 + 1);
    });

    it('refuses a sledCount that is not a positive integer', () => {
      expect(() => synth({ sledCount: 0 })).toThrow(/sledCount 0/);
      expect(() => synth({ sledCount: 2.5 })).toThrow(/sledCount 2.5/);
    });

    it('blocks public access, has no versioning and no explicit name, and refuses plain HTTP', () => {
      const buckets = template.findResources('AWS::S3::Bucket');
      for (const [id, bucket] of Object.entries(buckets)) {
        expect(bucket.Properties.PublicAccessBlockConfiguration, id).toEqual({
          BlockPublicAcls: true,
          BlockPublicPolicy: true,
          IgnorePublicAcls: true,
          RestrictPublicBuckets: true,
        });
        // Chunks are immutable (If-None-Match); versions would only keep garbage.
        expect(bucket.Properties.VersioningConfiguration, id).toBeUndefined();
        expect(bucket.Properties.BucketName, id).toBeUndefined();
        expect(bucket.DeletionPolicy, id).toBe('Retain');
        template.hasResourceProperties('AWS::S3::BucketPolicy', {
          Bucket: ref(id),
          PolicyDocument: {
            Statement: Match.arrayWith([
              Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }),
            ]),
          },
        });
      }
    });
  });

  describe('tables', () => {
    it('has Volumes, Pages, Segments, Snapshots and Drives with their keys, on demand, with point-in-time recovery', () => {
      template.resourceCountIs('AWS::DynamoDB::Table', 5);
      const expected = {
        [ids.tables.volumes]: {
          keys: [{ AttributeName: 'volumeId', KeyType: 'HASH' }],
          attrs: [
            { AttributeName: 'volumeId', AttributeType: 'S' },
            { AttributeName: 'owner', AttributeType: 'S' },
          ],
        },
        [ids.tables.pages]: {
          keys: [
            { AttributeName: 'volumeId', KeyType: 'HASH' },
            { AttributeName: 'page', KeyType: 'RANGE' },
          ],
          attrs: [
            { AttributeName: 'volumeId', AttributeType: 'S' },
            { AttributeName: 'page', AttributeType: 'N' },
          ],
        },
        [ids.tables.segments]: {
          keys: [
            { AttributeName: 'volumeId', KeyType: 'HASH' },
            { AttributeName: 'segmentId', KeyType: 'RANGE' },
          ],
          attrs: [
            { AttributeName: 'volumeId', AttributeType: 'S' },
            { AttributeName: 'segmentId', AttributeType: 'S' },
          ],
        },
        [ids.tables.snapshots]: {
          keys: [
            { AttributeName: 'volumeId', KeyType: 'HASH' },
            { AttributeName: 'snapshotId', KeyType: 'RANGE' },
          ],
          attrs: [
            { AttributeName: 'volumeId', AttributeType: 'S' },
            { AttributeName: 'snapshotId', AttributeType: 'S' },
          ],
        },
        [ids.tables.drives]: { keys: [{ AttributeName: 'driveId', KeyType: 'HASH' }], attrs: [{ AttributeName: 'driveId', AttributeType: 'S' }] },
      };
      const tables = template.findResources('AWS::DynamoDB::Table');
      for (const [id, { keys, attrs }] of Object.entries(expected)) {
        const table = tables[id];
        expect(table, id).toBeDefined();
        expect(table?.Properties.KeySchema).toEqual(keys);
        expect(table?.Properties.AttributeDefinitions).toEqual(expect.arrayContaining(attrs));
        expect(table?.Properties.AttributeDefinitions).toHaveLength(attrs.length);
        expect(table?.Properties.BillingMode).toBe('PAY_PER_REQUEST');
        expect(table?.Properties.PointInTimeRecoverySpecification).toEqual({ PointInTimeRecoveryEnabled: true });
        expect(table?.Properties.DeletionProtectionEnabled).toBe(true);
        expect(table?.DeletionPolicy).toBe('Retain');
        // Only the Volumes table has an index: volume ids by owner, keys only, so that the commits'
        // updates of a volume item never write it (a tenant's volume list queries it).
        expect(table?.Properties.GlobalSecondaryIndexes, id).toEqual(
          id === ids.tables.volumes
            ? [
                {
                  IndexName: VOLUMES_BY_OWNER_INDEX,
                  KeySchema: [
                    { AttributeName: 'owner', KeyType: 'HASH' },
                    { AttributeName: 'volumeId', KeyType: 'RANGE' },
                  ],
                  Projection: { ProjectionType: 'KEYS_ONLY' },
                },
              ]
            : undefined,
        );
        // Only the Snapshots table expires items: the notes it keeps (shared/aws/notes.ts), by `expiresAt`.
        expect(table?.Properties.TimeToLiveSpecification, id).toEqual(id === ids.tables.snapshots ? { AttributeName: 'expiresAt', Enabled: true } : undefined);
      }
    });

    it('lets dataRemovalPolicy DESTROY delete tables and sleds', () => {
      const { template: destroy } = synth({ dataRemovalPolicy: RemovalPolicy.DESTROY });
      for (const table of Object.values(destroy.findResources('AWS::DynamoDB::Table'))) {
        expect(table.DeletionPolicy).toBe('Delete');
        expect(table.Properties.DeletionProtectionEnabled).toBe(false);
      }
      for (const bucket of Object.values(destroy.findResources('AWS::S3::Bucket'))) expect(bucket.DeletionPolicy).toBe('Delete');
    });
  });

  describe('work queues', () => {
    it('has gc, evacuation and checkpoint queues, each with its own dead-letter queue after 5 receives', () => {
      template.resourceCountIs('AWS::SQS::Queue', 6);
      expect(MAX_RECEIVE_COUNT).toBe(5);
      const queues = template.findResources('AWS::SQS::Queue');
      const deadLetterQueues = new Set(ids.queues.map((q) => q.dlq));
      expect(deadLetterQueues.size).toBe(3);
      for (const { queue, dlq } of ids.queues) {
        expect(queues[queue]?.Properties.RedrivePolicy).toEqual({ deadLetterTargetArn: arn(dlq), maxReceiveCount: 5 });
        // A dead-letter queue is the end of the line.
        expect(queues[dlq]?.Properties.RedrivePolicy).toBeUndefined();
        expect(queues[dlq]?.Properties.MessageRetentionPeriod).toBe(Duration.days(14).toSeconds());
      }
    });

    it('hides a message for six worker timeouts, so a slow invocation is not raced by a redelivery', () => {
      const worker = template.toJSON().Resources[ids.worker].Properties;
      expect(worker.Timeout).toBe(120);
      for (const { queue } of ids.queues) {
        expect(template.toJSON().Resources[queue].Properties.VisibilityTimeout).toBe(720);
      }
    });

    it('feeds the worker from each work queue with partial batch failures', () => {
      template.resourceCountIs('AWS::Lambda::EventSourceMapping', 3);
      for (const { queue } of ids.queues) {
        template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
          EventSourceArn: arn(queue),
          FunctionName: ref(ids.worker),
          FunctionResponseTypes: ['ReportBatchItemFailures'],
          BatchSize: 10,
        });
      }
    });
  });

  describe('GC and lease-sweep schedules', () => {
    const ruleOf = (r: unknown) => template.findResources('AWS::Events::Rule')[logicalId(stack, r as CfnElement & object)]!;
    it('puts a GC sweep on the GC queue every 6 hours and a lease sweep every minute, as messages the worker understands', () => {
      for (const [rule, rate, message] of [
        [ruleOf(stack.gcSchedule), 'rate(6 hours)', { type: 'gc-sweep' }],
        [ruleOf(stack.leaseSweepSchedule), 'rate(1 minute)', { type: 'sweep-leases' }],
      ] as const) {
        expect(rule.Properties).toMatchObject({ ScheduleExpression: rate, State: 'ENABLED' });
        expect(rule.Properties.Targets).toHaveLength(1);
        const target = rule.Properties.Targets[0];
        expect(target.Arn).toEqual(arn(ids.queues[0]!.queue));
        expect(parseWorkMessage(target.Input)).toEqual(message);
        expect(target.RetryPolicy).toEqual({ MaximumRetryAttempts: 2 });
      }
    });

    it('takes the intervals from props and refuses ones out of range', () => {
      const t = synth({ gcSweepInterval: Duration.hours(24), leaseSweepInterval: Duration.minutes(5) }).template;
      t.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(1 day)' });
      t.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(5 minutes)' });
      expect(() => synth({ gcSweepInterval: Duration.minutes(10) })).toThrow(/gcSweepInterval 10 minutes must be from 1 hour to 7 days/);
      expect(() => synth({ leaseSweepInterval: Duration.seconds(10) })).toThrow(/leaseSweepInterval 10 seconds must be from 1 minute to 1 hour/);
    });
  });

  describe('checkpoint schedule', () => {
    it('puts a sweep message the worker understands on the checkpoint queue every hour', () => {
      template.resourceCountIs('AWS::Events::Rule', 3);
      const rule = template.findResources('AWS::Events::Rule')[logicalId(stack, stack.checkpointSchedule)]!;
      expect(rule.Properties).toMatchObject({ ScheduleExpression: 'rate(1 hour)', State: 'ENABLED' });
      expect(rule.Properties.Targets).toHaveLength(1);
      const target = rule.Properties.Targets[0];
      expect(target.Arn).toEqual(arn(ids.queues[2]!.queue));
      expect(parseCheckpointMessage(JSON.parse(target.Input))).toEqual({ type: 'checkpoint-sweep' });
      expect(target.RetryPolicy).toEqual({ MaximumRetryAttempts: 2 });
    });

    it('lets EventBridge send to the checkpoint queue only from this rule, and no other queue', () => {
      const fromEvents = (queue: string) =>
        Object.values(template.findResources('AWS::SQS::QueuePolicy'))
          .filter((p) => JSON.stringify(p.Properties.Queues) === JSON.stringify([ref(queue)]))
          .flatMap((p) => p.Properties.PolicyDocument.Statement as Array<Record<string, any>>)
          .filter((st) => st.Effect === 'Allow' && st.Principal?.Service === 'events.amazonaws.com');
      const statements = fromEvents(ids.queues[2]!.queue);
      expect(statements).toHaveLength(1);
      expect([statements[0]!.Action].flat()).toContain('sqs:SendMessage');
      expect(statements[0]!.Condition).toEqual({ ArnEquals: { 'aws:SourceArn': arn(logicalId(stack, stack.checkpointSchedule)) } });
      // The GC queue takes the two other schedules, and nothing else; the evacuation queue none.
      expect(fromEvents(ids.queues[1]!.queue)).toEqual([]);
      const toGc = fromEvents(ids.queues[0]!.queue);
      expect(toGc.map((st) => st.Condition.ArnEquals['aws:SourceArn']).sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)))).toEqual(
        [arn(logicalId(stack, stack.gcSchedule)), arn(logicalId(stack, stack.leaseSweepSchedule))].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))),
      );
    });

    it('takes the interval from props and refuses one out of range', () => {
      synth({ checkpointSweepInterval: Duration.minutes(15) }).template.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(15 minutes)' });
      expect(() => synth({ checkpointSweepInterval: Duration.seconds(30) })).toThrow(/checkpointSweepInterval 30 seconds must be from 1 minute to 1 day/);
      expect(() => synth({ checkpointSweepInterval: Duration.days(2) })).toThrow(/checkpointSweepInterval/);
    });
  });

  describe('functions', () => {
    it('runs both on Node.js 24, ARM64, ESM bundles with source maps, JSON logs with a retention', () => {
      for (const id of [ids.head, ids.worker]) {
        const fn = template.toJSON().Resources[id].Properties;
        expect(fn).toMatchObject({
          Runtime: 'nodejs24.x',
          Architectures: ['arm64'],
          Handler: 'index.handler',
          LoggingConfig: { LogFormat: 'JSON', LogGroup: { Ref: expect.any(String) } },
        });
        expect(fn.Environment.Variables.NODE_OPTIONS).toBe('--enable-source-maps');
        const logGroup = template.toJSON().Resources[fn.LoggingConfig.LogGroup.Ref];
        expect(logGroup).toMatchObject({ Type: 'AWS::Logs::LogGroup', Properties: { RetentionInDays: 30 } });
      }
      expect(template.toJSON().Resources[ids.head].Properties).toMatchObject({ MemorySize: 1769, Timeout: 29 });
      expect(template.toJSON().Resources[ids.worker].Properties).toMatchObject({ MemorySize: 1024, Timeout: 120, RecursiveLoop: 'Allow' });
    });

    it('takes memory and timeouts from props', () => {
      const { stack: s, template: t } = synth({ headMemoryMb: 512, workerMemoryMb: 3008, workerTimeout: Duration.minutes(5) });
      expect(t.toJSON().Resources[logicalId(s, s.head)].Properties.MemorySize).toBe(512);
      expect(t.toJSON().Resources[logicalId(s, s.worker)].Properties).toMatchObject({ MemorySize: 3008, Timeout: 300 });
      expect(t.toJSON().Resources[logicalId(s, s.gcQueue.queue)].Properties.VisibilityTimeout).toBe(1800);
    });

    it('sets every required ENV variable on both functions, pointing at the right resources', () => {
      for (const id of [ids.head, ids.worker]) {
        const variables = template.toJSON().Resources[id].Properties.Environment.Variables;
        expect(variables).toMatchObject({
          [ENV.volumesTable]: ref(ids.tables.volumes),
          [ENV.pagesTable]: ref(ids.tables.pages),
          [ENV.segmentsTable]: ref(ids.tables.segments),
          [ENV.snapshotsTable]: ref(ids.tables.snapshots),
          [ENV.drivesTable]: ref(ids.tables.drives),
          // Sled order is the sled index: a chunk map names sled i, and i must stay the same bucket.
          [ENV.sledBuckets]: { 'Fn::Join': [',', ids.sleds.map(ref)] },
          [ENV.gcQueueUrl]: ref(ids.queues[0]?.queue ?? ''),
          [ENV.evacuationQueueUrl]: ref(ids.queues[1]?.queue ?? ''),
          [ENV.checkpointQueueUrl]: ref(ids.queues[2]?.queue ?? ''),
          // The dead-letter queues, for the operator's peek and redrive (docs/evacuation.md, section 7).
          [ENV.gcDeadLetterQueueUrl]: ref(ids.queues[0]?.dlq ?? ''),
          [ENV.evacuationDeadLetterQueueUrl]: ref(ids.queues[1]?.dlq ?? ''),
          [ENV.checkpointDeadLetterQueueUrl]: ref(ids.queues[2]?.dlq ?? ''),
        });
        // Optional variables are left to the runtime's defaults.
        expect(variables[ENV.erasureImpl]).toBeUndefined();
        expect(variables[ENV.crcImpl]).toBeUndefined();
        expect(variables[ENV.mode]).toBeUndefined();
      }
    });

    it('grants what each variable implies: item access to tables, object access to sleds, sending to queues', () => {
      for (const id of [ids.head, ids.worker]) {
        const statements = allowStatements(template, id);
        for (const table of Object.values(ids.tables)) {
          for (const action of ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem', 'dynamodb:Query', 'dynamodb:BatchWriteItem', 'dynamodb:ConditionCheckItem']) {
            expect(allows(statements, action, arn(table)), `${id} ${action} ${table}`).toBe(true);
          }
        }
        for (const sled of ids.sleds) {
          const objects = { 'Fn::Join': ['', [arn(sled), '/*']] };
          for (const action of ['s3:GetObject', 's3:PutObject', 's3:DeleteObject']) {
            expect(allows(statements, action, objects), `${id} ${action} ${sled}/*`).toBe(true);
          }
          expect(allows(statements, 's3:ListBucket', arn(sled)), `${id} s3:ListBucket ${sled}`).toBe(true);
        }
        for (const { queue, dlq } of ids.queues) {
          expect(allows(statements, 'sqs:SendMessage', arn(queue)), `${id} sqs:SendMessage ${queue}`).toBe(true);
          expect(allows(statements, 'sqs:SendMessage', arn(dlq)), `${id} must not write to ${dlq}`).toBe(false);
          // Only the head serves the operator's peek and redrive of the dead-letter queues.
          expect(allows(statements, 'sqs:ReceiveMessage', arn(dlq)), `${id} sqs:ReceiveMessage ${dlq}`).toBe(id === ids.head);
        }
      }
      // Only the worker consumes.
      const worker = allowStatements(template, ids.worker);
      const head = allowStatements(template, ids.head);
      for (const { queue } of ids.queues) {
        for (const action of ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:ChangeMessageVisibility']) {
          expect(allows(worker, action, arn(queue)), `worker ${action} ${queue}`).toBe(true);
          expect(allows(head, action, arn(queue)), `head ${action} ${queue}`).toBe(false);
        }
      }
    });
  });

  describe('HTTP API', () => {
    it('sends every request to the head through one $default route, payload format 2.0, SigV4 required', () => {
      template.resourceCountIs('AWS::ApiGatewayV2::Api', 1);
      template.hasResourceProperties('AWS::ApiGatewayV2::Api', { ProtocolType: 'HTTP' });
      template.resourceCountIs('AWS::ApiGatewayV2::Route', 1);
      template.hasResourceProperties('AWS::ApiGatewayV2::Route', {
        RouteKey: '$default',
        AuthorizationType: 'AWS_IAM',
        Target: { 'Fn::Join': ['', ['integrations/', { Ref: Match.anyValue() }]] },
      });
      template.resourceCountIs('AWS::ApiGatewayV2::Integration', 1);
      template.hasResourceProperties('AWS::ApiGatewayV2::Integration', {
        IntegrationType: 'AWS_PROXY',
        IntegrationUri: arn(ids.head),
        PayloadFormatVersion: '2.0',
      });
      template.hasResourceProperties('AWS::ApiGatewayV2::Stage', { StageName: '$default', AutoDeploy: true });
      template.hasResourceProperties('AWS::Lambda::Permission', {
        Action: 'lambda:InvokeFunction',
        FunctionName: arn(ids.head),
        Principal: 'apigateway.amazonaws.com',
      });
    });

    it('tells the head to require an IAM identity, and turns both off only when asked (apiIamAuthorization: false)', () => {
      expect(template.toJSON().Resources[ids.head].Properties.Environment.Variables[ENV.apiAuth]).toBe('iam');
      const { stack: open, template: t } = synth({ apiIamAuthorization: false });
      t.hasResourceProperties('AWS::ApiGatewayV2::Route', { RouteKey: '$default', AuthorizationType: 'NONE' });
      expect(t.toJSON().Resources[logicalId(open, open.head)].Properties.Environment.Variables[ENV.apiAuth]).toBe('none');
    });
  });

  describe('folding (foldTailMax, docs/page-map.md)', () => {
    it('creates folding volumes by default (bound 512), and volumes that do not fold when asked with 0: the head gets the bound, checked to be 0..1024', () => {
      expect(template.toJSON().Resources[ids.head].Properties.Environment.Variables[ENV.foldTailMax]).toBe('512');
      const off = synth({ foldTailMax: 0 });
      expect(off.template.toJSON().Resources[logicalId(off.stack, off.stack.head)].Properties.Environment.Variables[ENV.foldTailMax]).toBe('0');
      const on = synth({ foldTailMax: 64 });
      const resources = on.template.toJSON().Resources;
      expect(resources[logicalId(on.stack, on.stack.head)].Properties.Environment.Variables[ENV.foldTailMax]).toBe('64');
      // The worker folds by the bound each volume item carries, not by its environment.
      expect(resources[logicalId(on.stack, on.stack.worker)].Properties.Environment.Variables[ENV.foldTailMax]).toBeUndefined();
      expect(() => synth({ foldTailMax: 1025 })).toThrow(/foldTailMax 1025/);
      expect(() => synth({ foldTailMax: 1.5 })).toThrow(/foldTailMax 1.5/);
    });
  });

  describe('security (docs/security.md)', () => {
    /** Synthesizes with cdk-nag's AwsSolutions pack as a policy validation plugin; returns the error, if synth refused. */
    function synthWithNag(props: SledgeStackProps = {}, extra?: (stack: SledgeStack) => void): { error?: Error; app: App; outdir: string } {
      const outdir = mkdtempSync(join(tmpdir(), 'sledge-nag-'));
      const app = new App({ outdir, context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': [] } });
      const s = new SledgeStack(app, 'Sledge', props);
      extra?.(s);
      Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
      try {
        app.synth();
        return { app, outdir };
      } catch (error) {
        return { error: error as Error, app, outdir };
      }
    }
    const report = (outdir: string) => {
      try {
        return readFileSync(join(outdir, 'validation-report.json'), 'utf8');
      } catch {
        return '(no report)';
      }
    };

    it('passes cdk-nag\'s AwsSolutions pack (policy validation plugin) with zero errors: as deployed, with IAM turned off, with the customer key', () => {
      for (const props of [{}, { apiIamAuthorization: false }, { sledCount: 3, headReservedConcurrency: 50 }, { encryptionKey: 'customer' as const }]) {
        const { error, outdir } = synthWithNag(props);
        try {
          expect(error, `${JSON.stringify(props)}: ${report(outdir)}`).toBeUndefined();
        } finally {
          rmSync(outdir, { recursive: true, force: true });
        }
      }
    });

    it('is a live check: a finding nobody acknowledged fails the synth', () => {
      const { error, outdir } = synthWithNag({}, (st) => new s3.Bucket(st, 'Unlogged'));
      try {
        expect(error, 'synth should have refused the unlogged bucket').toBeDefined();
        expect(`${error?.message} ${report(outdir)}`).toMatch(/AwsSolutions-S1/);
      } finally {
        rmSync(outdir, { recursive: true, force: true });
      }
    });

    it('lists every acknowledged finding, with a reason in code, in docs/security.md', () => {
      const app = new App({ context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': [] } });
      const s = new SledgeStack(app, 'Sledge', { apiIamAuthorization: false });
      const found: Array<{ construct: string; id: string; reason: string }> = [];
      const walk = (c: IConstruct) => {
        for (const entry of c.node.metadata) {
          if (entry.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY) continue;
          for (const [key, value] of Object.entries(entry.data as Record<string, unknown>)) {
            found.push({ construct: c.node.id, id: key.replace(/^annotation::/i, ''), reason: typeof value === 'string' ? value : JSON.stringify(value) });
          }
        }
        for (const child of c.node.children) walk(child);
      };
      walk(s);
      expect(found.length).toBeGreaterThan(10);
      const docs = readFileSync(join(projectRoot, 'docs/security.md'), 'utf8');
      const rows = docs.split('\n').filter((l) => l.startsWith('|'));
      const missing = found.filter((f) => {
        const rule = f.id.replace(/\[.*$/, '');
        return !rows.some((row) => row.includes(rule) && row.includes(`\`${f.construct}\``));
      });
      expect(missing.map((m) => `${m.construct} ${m.id}`)).toEqual([]);
      for (const f of found) expect(f.reason.length, `${f.construct} ${f.id}`).toBeGreaterThan(30);
    });

    it('gives each function a role of its own, with no AWS managed policy and no wildcard action, writing only to its own log group', () => {
      const resources = template.toJSON().Resources as Record<string, { Type: string; Properties: Record<string, any> }>;
      const roleOf = (fn: string) => resources[fn]!.Properties.Role['Fn::GetAtt'][0] as string;
      expect(roleOf(ids.head)).not.toBe(roleOf(ids.worker));
      for (const [id, role] of Object.entries(resources).filter(([, r]) => r.Type === 'AWS::IAM::Role')) {
        expect(role.Properties.ManagedPolicyArns, id).toBeUndefined();
      }
      for (const fn of [ids.head, ids.worker]) {
        const statements = allowStatements(template, fn);
        for (const st of statements) for (const action of [st.Action].flat()) expect(action, `${fn} ${action}`).not.toMatch(/\*/);
        const logGroup = resources[fn]!.Properties.LoggingConfig.LogGroup.Ref as string;
        const logStatements = statements.filter((st) => [st.Action].flat().some((a) => a.startsWith('logs:')));
        expect(logStatements.flatMap((st) => [st.Resource].flat())).toEqual([arn(logGroup)]);
        expect(logStatements.flatMap((st) => [st.Action].flat()).sort()).toEqual(['logs:CreateLogStream', 'logs:PutLogEvents']);
      }
    });

    it('shows the tenant and operator policies on execute-api ARNs, and tells the head who the operators are', () => {
      const resources = template.toJSON().Resources as Record<string, { Type: string; Properties: Record<string, any> }>;
      const apiId = logicalId(stack, stack.httpApi);
      const executeApi = (method: string, path: string) => ({
        'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':execute-api:', { Ref: 'AWS::Region' }, ':', { Ref: 'AWS::AccountId' }, ':', { Ref: apiId }, `/$default/${method}${path}`]],
      });
      const tenant = resources[logicalId(stack, stack.tenantPolicy)]!;
      expect(tenant.Type).toBe('AWS::IAM::ManagedPolicy');
      expect(tenant.Properties.PolicyDocument.Statement).toEqual([
        { Sid: 'VolumeRoutes', Effect: 'Allow', Action: 'execute-api:Invoke', Resource: [executeApi('*', '/volumes'), executeApi('*', '/volumes/*'), executeApi('GET', '/openapi.json')] },
        {
          Sid: 'NotOperatorRoutes',
          Effect: 'Deny',
          Action: 'execute-api:Invoke',
          Resource: expect.arrayContaining(OPERATOR_VOLUME_ROUTES.map(([m, p]) => executeApi(m, p))),
        },
      ]);
      expect(tenant.Properties.PolicyDocument.Statement[1].Resource).toHaveLength(OPERATOR_VOLUME_ROUTES.length);
      const operator = resources[logicalId(stack, stack.operatorPolicy)]!;
      expect(operator.Properties.PolicyDocument.Statement).toEqual([{ Sid: 'AllRoutes', Effect: 'Allow', Action: 'execute-api:Invoke', Resource: executeApi('*', '/*') }]);
      expect(operator.Properties.Roles).toEqual([ref(logicalId(stack, stack.operatorRole))]);
      const role = resources[logicalId(stack, stack.operatorRole)]!;
      expect(role.Properties.RoleName).toBe('Sledge-operator');
      const operators = resources[ids.head]!.Properties.Environment.Variables[ENV.operatorPrincipals];
      expect(operators).toEqual({ 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':iam::', { Ref: 'AWS::AccountId' }, ':role/Sledge-operator']] });
      template.hasOutput(CONSTRUCT_IDS.tenantPolicyOutput, { Value: ref(logicalId(stack, stack.tenantPolicy)) });
      template.hasOutput(CONSTRUCT_IDS.operatorRoleOutput, { Value: arn(logicalId(stack, stack.operatorRole)) });
      // More operators from props.
      const more = synth({ operatorPrincipalArns: ['arn:aws:iam::111122223333:user/ops'] });
      const joined = more.template.toJSON().Resources[logicalId(more.stack, more.stack.head)].Properties.Environment.Variables[ENV.operatorPrincipals];
      expect(JSON.stringify(joined)).toMatch(/:role\/Sledge-operator.*arn:aws:iam::111122223333:user\/ops/);
    });

    it('logs API access and throttles the stage; logs sled access to the log bucket; caps the worker, reserves the head when asked', () => {
      const stage = Object.values(template.findResources('AWS::ApiGatewayV2::Stage'))[0]!;
      expect(stage.Properties.AccessLogSettings.DestinationArn).toEqual(arn(logicalId(stack, stack.apiAccessLogs)));
      expect(JSON.parse(stage.Properties.AccessLogSettings.Format)).toMatchObject({ userArn: '$context.identity.userArn', status: '$context.status' });
      expect(stage.Properties.DefaultRouteSettings).toEqual({ ThrottlingRateLimit: 2000, ThrottlingBurstLimit: 1000 });
      const logs = logicalId(stack, stack.accessLogsBucket);
      stack.sleds.forEach((sled, i) => {
        expect(template.toJSON().Resources[logicalId(stack, sled)].Properties.LoggingConfiguration).toEqual({ DestinationBucketName: ref(logs), LogFilePrefix: `sled${i}/` });
      });
      for (const mapping of Object.values(template.findResources('AWS::Lambda::EventSourceMapping'))) {
        expect(mapping.Properties.ScalingConfig).toEqual({ MaximumConcurrency: 5 });
      }
      expect(template.toJSON().Resources[ids.head].Properties.ReservedConcurrentExecutions).toBeUndefined();
      const reserved = synth({ headReservedConcurrency: 100, workerMaxConcurrency: 2 });
      expect(reserved.template.toJSON().Resources[logicalId(reserved.stack, reserved.stack.head)].Properties.ReservedConcurrentExecutions).toBe(100);
      reserved.template.hasResourceProperties('AWS::Lambda::EventSourceMapping', { ScalingConfig: { MaximumConcurrency: 2 } });
      expect(() => synth({ workerMaxConcurrency: 1 })).toThrow(/workerMaxConcurrency 1/);
    });
  });

  describe('encryption key (encryptionKey)', () => {
    const kmsStatements = (t: Template, fn: string) => allowStatements(t, fn).filter((st) => [st.Action].flat().some((a) => a.startsWith('kms:')));
    const viaServices = {
      StringEquals: {
        'kms:ViaService': ['s3', 'dynamodb', 'sqs'].map((service) => ({
          'Fn::Join': ['', [`${service}.`, { Ref: 'AWS::Region' }, '.', { Ref: 'AWS::URLSuffix' }]],
        })),
      },
    };

    it('uses AWS managed encryption and no key by default', () => {
      template.resourceCountIs('AWS::KMS::Key', 0);
      expect(stack.dataKey).toBeUndefined();
      for (const [id, bucket] of Object.entries(template.findResources('AWS::S3::Bucket'))) {
        expect(bucket.Properties.BucketEncryption, id).toEqual({ ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] });
      }
      for (const [id, table] of Object.entries(template.findResources('AWS::DynamoDB::Table'))) {
        expect(table.Properties.SSESpecification, id).toEqual({ SSEEnabled: true });
      }
      for (const [id, queue] of Object.entries(template.findResources('AWS::SQS::Queue'))) {
        expect(queue.Properties.SqsManagedSseEnabled, id).toBe(true);
        expect(queue.Properties.KmsMasterKeyId, id).toBeUndefined();
      }
      for (const fn of [ids.head, ids.worker]) expect(kmsStatements(template, fn), fn).toEqual([]);
    });

    describe("with 'customer'", () => {
      let customer: ReturnType<typeof synth>;
      let keyId: string;
      let fns: { head: string; worker: string };
      beforeAll(() => {
        customer = synth({ encryptionKey: 'customer' });
        keyId = logicalId(customer.stack, customer.stack.dataKey as kms.Key);
        fns = { head: logicalId(customer.stack, customer.stack.head), worker: logicalId(customer.stack, customer.stack.worker) };
      });

      it('creates one key with rotation, kept with the data, used by nobody but the account and EventBridge', () => {
        const t = customer.template;
        t.resourceCountIs('AWS::KMS::Key', 1);
        expect(Object.keys(t.findResources('AWS::KMS::Key'))).toEqual([keyId]);
        expect(customer.stack.node.findChild(CONSTRUCT_IDS.dataKey)).toBe(customer.stack.dataKey);
        const key = t.findResources('AWS::KMS::Key')[keyId]!;
        expect(key.Properties.EnableKeyRotation).toBe(true);
        expect(key.DeletionPolicy).toBe('Retain');
        const principals = (key.Properties.KeyPolicy.Statement as Array<{ Principal: unknown }>).map((st) => st.Principal);
        expect(principals).toEqual([
          { AWS: { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':iam::', { Ref: 'AWS::AccountId' }, ':root']] } },
          // The schedules' messages to the encrypted queues.
          { Service: 'events.amazonaws.com' },
        ]);
        // Deleted with the data when the data is.
        const destroy = synth({ encryptionKey: 'customer', dataRemovalPolicy: RemovalPolicy.DESTROY }).template;
        expect(Object.values(destroy.findResources('AWS::KMS::Key'))[0]?.DeletionPolicy).toBe('Delete');
      });

      it('encrypts every sled (SSE-KMS, bucket keys), every table and every queue with it; the log bucket stays SSE-S3', () => {
        const t = customer.template;
        const resources = t.toJSON().Resources as Record<string, { Properties: Record<string, any> }>;
        const sleds = customer.stack.sleds.map((sled) => logicalId(customer.stack, sled));
        expect(sleds).toHaveLength(8);
        for (const sled of sleds) {
          expect(resources[sled]!.Properties.BucketEncryption, sled).toEqual({
            ServerSideEncryptionConfiguration: [{ BucketKeyEnabled: true, ServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: arn(keyId) } }],
          });
        }
        expect(resources[logicalId(customer.stack, customer.stack.accessLogsBucket)]!.Properties.BucketEncryption).toEqual({
          ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
        });
        const tables = t.findResources('AWS::DynamoDB::Table');
        expect(Object.keys(tables)).toHaveLength(5);
        for (const [id, table] of Object.entries(tables)) {
          expect(table.Properties.SSESpecification, id).toEqual({ SSEEnabled: true, SSEType: 'KMS', KMSMasterKeyId: arn(keyId) });
        }
        const queues = t.findResources('AWS::SQS::Queue');
        expect(Object.keys(queues)).toHaveLength(6);
        for (const [id, queue] of Object.entries(queues)) {
          expect(queue.Properties.KmsMasterKeyId, id).toEqual(arn(keyId));
          expect(queue.Properties.SqsManagedSseEnabled, id).toBeUndefined();
        }
      });

      it('grants each function role only the data key actions, on that key, through S3, DynamoDB and SQS', () => {
        const t = customer.template;
        expect([...DATA_KEY_ACTIONS].sort()).toEqual(['kms:Decrypt', 'kms:DescribeKey', 'kms:Encrypt', 'kms:GenerateDataKey']);
        for (const fn of [fns.head, fns.worker]) {
          const statements = kmsStatements(t, fn);
          expect(statements.filter((st) => st.Condition), fn).toEqual([
            expect.objectContaining({ Action: [...DATA_KEY_ACTIONS].sort(), Resource: arn(keyId), Condition: viaServices }),
          ]);
          for (const st of statements) {
            expect(st.Resource, fn).toEqual(arn(keyId));
            for (const action of [st.Action].flat()) expect(DATA_KEY_ACTIONS as readonly string[], `${fn} ${action}`).toContain(action);
          }
          // Every action of every statement is named, no wildcard, with the key as with AWS managed encryption.
          for (const st of allowStatements(t, fn)) for (const action of [st.Action].flat()) expect(action, `${fn} ${action}`).not.toMatch(/\*/);
        }
        // The one grant not through the condition: the SQS event source mapping's kms:Decrypt for
        // the worker (CDK adds it with the mapping; it is also one of DATA_KEY_ACTIONS).
        expect(kmsStatements(t, fns.head).filter((st) => !st.Condition)).toEqual([]);
        expect(kmsStatements(t, fns.worker).filter((st) => !st.Condition).map((st) => st.Action)).toEqual(['kms:Decrypt']);
        // No other role or policy may use the key.
        const others = Object.entries(t.toJSON().Resources as Record<string, { Type: string; Properties: Record<string, any> }>)
          .filter(([, r]) => r.Type === 'AWS::IAM::Policy' || r.Type === 'AWS::IAM::ManagedPolicy')
          .filter(([, r]) => JSON.stringify(r.Properties.PolicyDocument).includes('kms:'))
          .flatMap(([, r]) => r.Properties.Roles ?? []);
        const roleOf = (fn: string) => t.toJSON().Resources[fn].Properties.Role['Fn::GetAtt'][0];
        expect(others.sort((a: unknown, b: unknown) => JSON.stringify(a).localeCompare(JSON.stringify(b)))).toEqual([ref(roleOf(fns.head)), ref(roleOf(fns.worker))]);
      });

      it('uses a key made elsewhere instead, creating none', () => {
        const keyArn = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
        const app = new App({ context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': [] } });
        // A key made in another account's stack, imported by ARN (the holder needs a resource to synthesize).
        const holder = new Stack(app, 'Keys');
        new CfnWaitConditionHandle(holder, 'Placeholder');
        const s = new SledgeStack(app, 'Sledge', { encryptionKey: kms.Key.fromKeyArn(holder, 'Imported', keyArn) });
        const t = Template.fromStack(s);
        t.resourceCountIs('AWS::KMS::Key', 0);
        for (const table of Object.values(t.findResources('AWS::DynamoDB::Table'))) expect(table.Properties.SSESpecification.KMSMasterKeyId).toBe(keyArn);
        for (const queue of Object.values(t.findResources('AWS::SQS::Queue'))) expect(queue.Properties.KmsMasterKeyId).toBe(keyArn);
        for (const sled of s.sleds) {
          expect(t.toJSON().Resources[logicalId(s, sled)].Properties.BucketEncryption.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault.KMSMasterKeyID).toBe(keyArn);
        }
        for (const fn of [s.head, s.worker]) {
          expect(kmsStatements(t, logicalId(s, fn)).filter((st) => st.Condition)).toEqual([
            expect.objectContaining({ Action: [...DATA_KEY_ACTIONS].sort(), Resource: keyArn, Condition: viaServices }),
          ]);
        }
      });
    });
  });

  describe('version reporting', () => {
    it('adds no AWS::CDK::Metadata by default, even when the app would', () => {
      template.resourceCountIs('AWS::CDK::Metadata', 0);
      synth({}, { analyticsReporting: true }).template.resourceCountIs('AWS::CDK::Metadata', 0);
    });

    it('adds it when asked, so the switch really controls it', () => {
      synth({ analyticsReporting: true }).template.resourceCountIs('AWS::CDK::Metadata', 1);
    });

    it('is off in cdk.json too, with notices off, so `npx cdk synth` stays offline', () => {
      const cdkJson = JSON.parse(readFileSync(join(projectRoot, 'cdk.json'), 'utf8'));
      expect(cdkJson).toMatchObject({ app: 'npx tsx cdk/app.ts', versionReporting: false, notices: false });
    });
  });

  describe('bundling', () => {
    let outdir: string | undefined;
    afterAll(() => {
      if (outdir) rmSync(outdir, { recursive: true, force: true });
    });

    it('bundles each function into one ESM file with its source map and the arm64 CRC-32C addon (none on x86)', () => {
      outdir = mkdtempSync(join(tmpdir(), 'sledge-cdk-bundle-'));
      const app = new App({ outdir, context: cdkJsonContext() });
      const s = new SledgeStack(app, 'Sledge');
      // An x86 function of the same kind: the arm64 addon could never load there, so it is left out.
      const x86 = new Stack(app, 'SledgeX86');
      new SledgeFunction(x86, 'Head', { entry: 'lambdas/api.ts', architecture: lambda.Architecture.X86_64 });
      const assembly = app.synth();
      const assetDir = (stackOf: Stack, name: string) => {
        const assets = JSON.parse(readFileSync(join(assembly.directory, `${stackOf.artifactId}.assets.json`), 'utf8')) as {
          files: Record<string, { displayName?: string; source: { path: string } }>;
        };
        const asset = Object.values(assets.files).find((f) => f.displayName === name);
        expect(asset, name).toBeDefined();
        return join(assembly.directory, asset?.source.path ?? '');
      };
      expect(readdirSync(assetDir(x86, 'Head/Code')).sort()).toEqual(['index.mjs', 'index.mjs.map']);
      for (const name of ['Head/Code', 'Worker/Code']) {
        const dir = assetDir(s, name);
        expect(readdirSync(dir).sort(), name).toEqual([BUNDLED_CRC_ADDON_FILE, 'index.mjs', 'index.mjs.map'].sort());
        // An ELF shared object for AArch64 (e_machine 183), 64-bit little-endian: what Lambda's arm64 loads.
        const elf = readFileSync(join(dir, BUNDLED_CRC_ADDON_FILE));
        expect(elf.subarray(0, 4).toString('latin1'), name).toBe('\x7fELF');
        expect({ elfClass: elf[4], dataEncoding: elf[5], machine: elf.readUInt16LE(18) }, name).toEqual({ elfClass: 2, dataEncoding: 1, machine: 183 });
        const code = readFileSync(join(dir, 'index.mjs'), 'utf8');
        // ESM with a `require` for bundled CommonJS code, and the handler exported.
        expect(code.startsWith("import { createRequire as __sledgeCreateRequire } from 'node:module';")).toBe(true);
        expect(code).toMatch(/export\s*\{[^}]*\bhandler\b/);
      }
    });
  });

  describe('cfn-lint', () => {
    it('finds nothing in the synthesized template (scripts/cfn-lint.sh documents the ignored rules)', () => {
      const dir = mkdtempSync(join(tmpdir(), 'sledge-cfn-lint-'));
      try {
        // As deployed by default, and with the customer managed key.
        const files = [
          ['Sledge.template.json', template],
          ['SledgeCustomerKey.template.json', synth({ encryptionKey: 'customer' }).template],
        ].map(([name, t]) => {
          const file = join(dir, name as string);
          writeFileSync(file, JSON.stringify((t as Template).toJSON(), null, 1));
          return file;
        });
        const lint = spawnSync('bash', [join(projectRoot, 'scripts/cfn-lint.sh'), ...files], { encoding: 'utf8', timeout: 110_000 });
        expect(lint.error, 'could not run scripts/cfn-lint.sh').toBeUndefined();
        expect({ status: lint.status, output: `${lint.stdout}${lint.stderr}` }).toEqual({ status: 0, output: expect.any(String) });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
