/**
 * The local deployment of the CDK stack (`local/stack.ts`) against the local AWS endpoint.
 *
 * Uses nothing from the global setup but the endpoint (`AWS_ENDPOINT_URL`), and its own stack
 * under a unique name, which it deletes afterwards.
 */
import { randomUUID } from 'node:crypto';
import { CloudFormationClient, DeleteStackCommand, DescribeStacksCommand } from '@aws-sdk/client-cloudformation';
import { DescribeTableCommand, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { HeadBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { GetQueueAttributesCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ENV } from '#shared/core/config.ts';
import { deployLocalStack, LOCAL_RESOURCE_TYPES, type LocalStackDeployment } from '#local/stack.ts';
import { eventSources, rateIntervalMs, schedules } from '#local/stack-settings.ts';

const endpointUrl = process.env.AWS_ENDPOINT_URL;
if (!endpointUrl) {
  throw new Error('AWS_ENDPOINT_URL is not set; run through the integration project, whose global setup starts the local endpoint');
}

const clientConfig = {
  endpoint: endpointUrl,
  region: process.env.AWS_REGION || 'us-east-1',
  credentials: {
    accessKeyId: process.env.AWS_ACCESS_KEY_ID || 'test',
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY || 'test',
  },
};
const s3 = new S3Client({ ...clientConfig, forcePathStyle: true });
const dynamo = new DynamoDBClient(clientConfig);
const sqs = new SQSClient(clientConfig);
const cfn = new CloudFormationClient(clientConfig);

/** ENV variables the stack must set: all but the optional ones, which have defaults at runtime. */
const OPTIONAL: string[] = [
  ENV.erasureImpl,
  ENV.crcImpl,
  ENV.mode,
  ENV.evacuationSettleMs,
  ENV.evacuationRecheckSeconds,
  ENV.orphanGraceMs,
  ENV.gcEveryCommits,
  ENV.faults,
  // Read repair is on unless this says 0 (docs/evacuation.md, "Read repair"); the stack leaves it unset.
  ENV.readRepair,
  // Lost chunks retire a drive at 3 unless this says otherwise (docs/evacuation.md, "Drives that keep losing chunks").
  ENV.lostChunkRetireThreshold,
  // Consistency groups' tuning knobs, with defaults (docs/consistency-groups.md).
  ENV.groupTransactionMembers,
  ENV.groupBarrierLeaseMs,
];
const REQUIRED = Object.values(ENV).filter((name) => !OPTIONAL.includes(name));

interface TemplateShape {
  Resources: Record<string, { Type: string; Properties?: Record<string, unknown> }>;
}

describe('deployLocalStack', () => {
  const stackName = `sledge-test-${randomUUID().slice(0, 8)}`;
  let deployment: LocalStackDeployment;
  let template: TemplateShape;

  beforeAll(async () => {
    deployment = await deployLocalStack({ endpointUrl, stackName });
    template = deployment.template as TemplateShape;
  });

  afterAll(async () => {
    // The local stack's data resources have DeletionPolicy Delete, so this removes them too.
    await cfn.send(new DeleteStackCommand({ StackName: stackName }));
    for (const client of [s3, dynamo, sqs, cfn]) client.destroy();
  });

  it('resolves every required ENV variable to a concrete value', () => {
    for (const name of REQUIRED) {
      expect(deployment.env[name], name).toEqual(expect.any(String));
      expect(deployment.env[name], name).not.toBe('');
      // Resolved, not a token or a serialized intrinsic.
      expect(deployment.env[name], name).not.toMatch(/\$\{Token|Fn::|"Ref"/);
    }
    for (const name of OPTIONAL) expect(deployment.env[name], name).toBeUndefined();
  });

  it('resolves exactly the variables the head function has in the template', () => {
    const head = Object.values(template.Resources).find(
      (r) => r.Type === 'AWS::Lambda::Function' && (r.Properties?.Description as string | undefined)?.startsWith('Sledge head'),
    );
    const variables = (head?.Properties?.Environment as { Variables: Record<string, unknown> }).Variables;
    expect(Object.keys(deployment.env).sort()).toEqual(Object.keys(variables).sort());
  });

  it('deploys every data resource of the template and reports its physical ID', () => {
    const local = Object.entries(template.Resources).filter(([, r]) => LOCAL_RESOURCE_TYPES.includes(r.Type));
    const count = (type: string) => local.filter(([, r]) => r.Type === type).length;
    expect({ buckets: count('AWS::S3::Bucket'), tables: count('AWS::DynamoDB::Table'), queues: count('AWS::SQS::Queue') }).toEqual({
      // The 8 sleds and the bucket of their server access logs (docs/security.md).
      buckets: 9,
      tables: 5,
      queues: 6,
    });
    expect(Object.keys(deployment.resources).sort()).toEqual(local.map(([id]) => id).sort());
  });

  it('creates the sleds on the endpoint, in the order of the template', async () => {
    const buckets = deployment.env[ENV.sledBuckets]?.split(',') ?? [];
    expect(buckets).toHaveLength(8);
    expect(new Set(buckets).size).toBe(8);
    for (const bucket of buckets) {
      // Throws NotFound if the bucket does not exist.
      await s3.send(new HeadBucketCommand({ Bucket: bucket }));
    }
  });

  it('creates the tables on the endpoint with their keys', async () => {
    const expected: Record<string, string[]> = {
      [ENV.volumesTable]: ['volumeId:HASH'],
      [ENV.pagesTable]: ['volumeId:HASH', 'page:RANGE'],
      [ENV.segmentsTable]: ['volumeId:HASH', 'segmentId:RANGE'],
      [ENV.snapshotsTable]: ['volumeId:HASH', 'snapshotId:RANGE'],
      [ENV.drivesTable]: ['driveId:HASH'],
    };
    for (const [name, keys] of Object.entries(expected)) {
      const { Table } = await dynamo.send(new DescribeTableCommand({ TableName: deployment.env[name] }));
      expect(Table?.TableStatus, name).toBe('ACTIVE');
      expect(Table?.KeySchema?.map((k) => `${k.AttributeName}:${k.KeyType}`), name).toEqual(keys);
      expect(Table?.BillingModeSummary?.BillingMode, name).toBe('PAY_PER_REQUEST');
    }
  });

  it('creates the work queues on the endpoint, each redriving to its own dead-letter queue after 5 receives', async () => {
    const deadLetterArns = new Set<string>();
    for (const name of [ENV.gcQueueUrl, ENV.evacuationQueueUrl, ENV.checkpointQueueUrl]) {
      const queueUrl = deployment.env[name] ?? '';
      // The URL the endpoint itself hands out, so requests to it reach the endpoint.
      expect(new URL(queueUrl).host, name).toBe(new URL(endpointUrl).host);
      const { Attributes } = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['All'] }));
      const redrive = JSON.parse(Attributes?.RedrivePolicy ?? '{}') as { deadLetterTargetArn?: string; maxReceiveCount?: number | string };
      expect(Number(redrive.maxReceiveCount), name).toBe(5);
      expect(redrive.deadLetterTargetArn, name).toMatch(/^arn:aws:sqs:/);
      deadLetterArns.add(redrive.deadLetterTargetArn ?? '');
    }
    expect(deadLetterArns.size).toBe(3);

    // Each dead-letter queue exists and is itself the end of the line.
    const queueUrls = Object.entries(deployment.resources)
      .filter(([id]) => template.Resources[id]?.Type === 'AWS::SQS::Queue')
      .map(([, url]) => url);
    const arns = new Map<string, Record<string, string> | undefined>();
    for (const queueUrl of queueUrls) {
      const { Attributes } = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['All'] }));
      arns.set(Attributes?.QueueArn ?? '', Attributes);
    }
    for (const arn of deadLetterArns) {
      expect(arns.has(arn), arn).toBe(true);
      expect(arns.get(arn)?.RedrivePolicy, arn).toBeUndefined();
    }
  });

  it('gives the local pollers and schedules the settings of the deployed stack', async () => {
    const worker = template.Resources[deployment.functions.worker];
    expect(worker?.Type).toBe('AWS::Lambda::Function');
    const workerTimeout = worker?.Properties?.Timeout as number;
    expect(workerTimeout).toBe(120);

    const sources = eventSources(deployment);
    expect(sources).toHaveLength(3);
    for (const source of sources) {
      expect(source.functionLogicalId).toBe(deployment.functions.worker);
      expect(source.queueUrl).toBe(deployment.resources[source.queueLogicalId]);
      expect(source).toMatchObject({ batchSize: 10, reportBatchItemFailures: true, functionTimeoutSeconds: 120, visibilityTimeoutSeconds: 720 });
      // The stack caps each mapping at workerMaxConcurrency (5) concurrent batches; the poller does the same.
      expect(source.maximumConcurrency).toBe(5);
      // The queue on the endpoint has the visibility timeout the poller relies on.
      const { Attributes } = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: source.queueUrl, AttributeNames: ['VisibilityTimeout'] }));
      expect(Attributes?.VisibilityTimeout).toBe('720');
    }

    const rules = Object.fromEntries(schedules(deployment).map((rule) => [rule.ruleLogicalId.replace(/[0-9A-F]{8}$/, ''), rule]));
    const queueOf = (id: string) => deployment.resources[Object.keys(template.Resources).find((key) => key.startsWith(id)) ?? ''];
    expect(rules).toEqual({
      LeaseSweepSchedule: expect.objectContaining({ intervalMs: 60_000, targets: [expect.objectContaining({ queueUrl: queueOf('GcQueue'), input: '{"type":"sweep-leases"}' })] }),
      CheckpointSchedule: expect.objectContaining({
        intervalMs: 3_600_000,
        targets: [expect.objectContaining({ queueUrl: queueOf('CheckpointQueue'), input: '{"type":"checkpoint-sweep"}' })],
      }),
      GcSchedule: expect.objectContaining({ intervalMs: 21_600_000, targets: [expect.objectContaining({ queueUrl: queueOf('GcQueue'), input: '{"type":"gc-sweep"}' })] }),
    });
    expect(rateIntervalMs('rate(5 minutes)')).toBe(300_000);
    expect(() => rateIntervalMs('rate(1 minutes)')).toThrow(/singular/);
    expect(() => rateIntervalMs('cron(0 * * * ? *)')).toThrow(/only rates/);
  });

  it('is idempotent: deploying again changes nothing and resolves the same environment', async () => {
    const again = await deployLocalStack({ endpointUrl, stackName });
    expect(again.env).toEqual(deployment.env);
    expect(again.resources).toEqual(deployment.resources);
    const { Stacks } = await cfn.send(new DescribeStacksCommand({ StackName: stackName }));
    // Nothing to update: the stack was not touched.
    expect(Stacks?.[0]?.StackStatus).toBe('CREATE_COMPLETE');
  });

  it('updates the stack in place when the template changes, keeping existing resources', async () => {
    const more = await deployLocalStack({ endpointUrl, stackName, sledCount: 9 });
    const before = deployment.env[ENV.sledBuckets]?.split(',') ?? [];
    const after = more.env[ENV.sledBuckets]?.split(',') ?? [];
    // Sled i stays the same bucket; the new sled is appended.
    expect(after.slice(0, 8)).toEqual(before);
    expect(after).toHaveLength(9);
    await s3.send(new HeadBucketCommand({ Bucket: after[8] }));
    expect(more.env[ENV.volumesTable]).toBe(deployment.env[ENV.volumesTable]);
    expect(more.env[ENV.gcQueueUrl]).toBe(deployment.env[ENV.gcQueueUrl]);
  });
});
