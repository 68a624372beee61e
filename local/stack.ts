/**
 * The local deployment of the Sledge stack: the same CDK stack as on AWS, its data resources
 * created on the local endpoint's CloudFormation, and the functions' environment read back
 * from it.
 *
 * 1. Synthesize `SledgeStack` in-process (bundling skipped: the functions run in-process
 *    locally, so their code assets are never used).
 * 2. Keep the resources the local runtime needs and moto's CloudFormation creates
 *    (`LOCAL_RESOURCE_TYPES`); drop the rest, and every output, condition, parameter and rule
 *    that only they used.
 * 3. Create the stack, or update it if it exists (a re-run of `npm start` changes nothing when
 *    the template is the same), and wait until CloudFormation is done.
 * 4. Resolve the head function's `Environment.Variables` from the original template against
 *    the deployed resources. That map is what the local runtime puts in `process.env`, so the
 *    local runtime is configured from the stack, not from a second list of variables.
 *
 * What moto 5's CloudFormation does with the stack's types (verified against moto 5.2.1):
 * - creates `AWS::S3::Bucket`, `AWS::DynamoDB::Table`, `AWS::SQS::Queue` (with the redrive
 *   policy), and also `AWS::IAM::Role`, `AWS::IAM::Policy`, `AWS::Logs::LogGroup`, which the
 *   local runtime has no use for;
 * - reports `AWS::S3::BucketPolicy` and `AWS::SQS::QueuePolicy` as CREATE_COMPLETE without
 *   creating anything (its DescribeStackResources then lists them with no logical ID or type),
 *   and the same for `AWS::ApiGatewayV2::*`. The TLS-only policies would mean nothing on a
 *   plain-HTTP endpoint anyway;
 * - rejects `AWS::Lambda::Function`: its Lambda cannot fetch the code from the CDK asset
 *   bucket, which does not exist locally, and CreateStack then fails with a malformed error
 *   response and leaves the stack CREATE_IN_PROGRESS. Lambda handlers run in-process locally.
 * moto ignores some properties of the resources it does create (of a bucket, all but its
 * encryption and tags; of a table, point-in-time recovery), none of which the local runtime
 * depends on.
 */
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CloudFormationClient,
  CreateStackCommand,
  DeleteStackCommand,
  DescribeStackEventsCommand,
  DescribeStackResourcesCommand,
  DescribeStacksCommand,
  GetTemplateCommand,
  UpdateStackCommand,
  type Stack as CfnStack,
} from '@aws-sdk/client-cloudformation';
import { GetQueueUrlCommand, SQSClient } from '@aws-sdk/client-sqs';
import { App, DefaultStackSynthesizer, RemovalPolicy } from 'aws-cdk-lib';
import type { CfnFunction } from 'aws-cdk-lib/aws-lambda';
import { cdkJsonContext } from '../cdk/contract.ts';
import { SledgeStack } from '../cdk/stack.ts';

/** The resource types deployed to the local endpoint: the data resources the local runtime uses. */
export const LOCAL_RESOURCE_TYPES: readonly string[] = ['AWS::S3::Bucket', 'AWS::DynamoDB::Table', 'AWS::SQS::Queue'];

/** The stack name when none is given; the same as `cdk/app.ts`'s. */
export const DEFAULT_LOCAL_STACK_NAME = 'Sledge';

/** How long CloudFormation may take to create or update the stack (moto is done at once; LocalStack takes seconds). */
const DEPLOY_TIMEOUT_MS = 120_000;
const POLL_INTERVAL_MS = 250;
/** How many stack events are read to explain a failure. */
const FAILURE_EVENTS_MAX = 100;

export interface DeployLocalStackOptions {
  /** The local endpoint, e.g. `http://127.0.0.1:4566`. */
  endpointUrl: string;
  /** @default 'Sledge' */
  stackName?: string;
  /** @default the stack's default (8) */
  sledCount?: number;
}

export interface LocalStackDeployment {
  /**
   * The head function's environment variables, resolved against the deployed resources:
   * `SLEDGE_*` (see `ENV` in `#shared/config.ts`) plus whatever else the stack sets on the
   * function (`NODE_OPTIONS=--enable-source-maps`). Queue URLs are the ones the endpoint
   * itself hands out (GetQueueUrl), so requests go to it.
   */
  env: Record<string, string>;
  /**
   * The whole synthesized template, functions and event source mappings included (only its
   * data resources were deployed locally). It is the AWS template but for two local choices:
   * data resources are deletable (`dataRemovalPolicy: DESTROY`) and there is no bootstrap
   * version check. The local runtime reads its SQS pollers' and schedules' settings from it
   * (`local/stack-settings.ts`).
   */
  template: unknown;
  /**
   * Logical ID -> physical ID of every deployed resource: bucket name, table name, and for a
   * queue its URL on the endpoint.
   */
  resources: Record<string, string>;
  /** The logical IDs of the two functions in `template`, which run in-process locally. */
  functions: { head: string; worker: string };
}

/**
 * Deploys the Sledge stack's data resources to the local endpoint's CloudFormation and
 * returns the environment the functions would get on AWS. Idempotent: a second call with the
 * same options finds the stack up to date and returns the same values.
 *
 * @example
 * const endpoint = await ensureEndpoint();
 * const { env } = await deployLocalStack({ endpointUrl: endpoint.url });
 * Object.assign(process.env, env);
 */
export async function deployLocalStack(opts: DeployLocalStackOptions): Promise<LocalStackDeployment> {
  const stackName = opts.stackName ?? DEFAULT_LOCAL_STACK_NAME;
  const { template, headLogicalId, workerLogicalId } = synthesizeOrReuse(stackName, opts.sledCount);
  const localTemplate = localOnly(template);
  const templateBody = JSON.stringify(localTemplate);

  const clientConfig = awsClientConfig(opts.endpointUrl);
  const cfn = new CloudFormationClient(clientConfig);
  const sqs = new SQSClient(clientConfig);
  try {
    const stack = await deploy(cfn, stackName, templateBody);
    const physicalIds = await deployedResources(cfn, stackName, localTemplate);
    const resources = await withLocalQueueUrls(sqs, localTemplate, physicalIds);
    const env = resolveEnvironment(template, headLogicalId, resources, stack);
    return { env, template, resources, functions: { head: headLogicalId, worker: workerLogicalId } };
  } finally {
    cfn.destroy();
    sqs.destroy();
  }
}

// ---------------------------------------------------------------------------------------
// Synthesis and filtering

interface Template {
  Resources: Record<string, TemplateResource>;
  Outputs?: Record<string, unknown>;
  Conditions?: Record<string, unknown>;
  Parameters?: Record<string, unknown>;
  Rules?: Record<string, unknown>;
  [section: string]: unknown;
}

interface TemplateResource {
  Type: string;
  Properties?: Record<string, unknown>;
  DependsOn?: string | string[];
  Condition?: string;
  [key: string]: unknown;
}

/**
 * `SLEDGE_LOCAL_SYNTH_CACHE` names a folder where a synthesized template is kept and reused by
 * later deployments of the same stack name and sled count: the tests that start control planes
 * in child processes again and again (test/integration/site-process.ts) synthesize once. Only
 * for tests: the cache is never invalidated, so it must be a fresh folder per run.
 */
const SYNTH_CACHE_ENV = 'SLEDGE_LOCAL_SYNTH_CACHE';

function synthesizeOrReuse(stackName: string, sledCount: number | undefined): { template: Template; headLogicalId: string; workerLogicalId: string } {
  const dir = process.env[SYNTH_CACHE_ENV];
  if (!dir) return synthesize(stackName, sledCount);
  const file = join(dir, `${stackName}-${sledCount ?? 'default'}.json`);
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as ReturnType<typeof synthesize>;
  } catch {
    const out = synthesize(stackName, sledCount);
    mkdirSync(dir, { recursive: true });
    writeFileSync(`${file}.tmp`, JSON.stringify(out));
    renameSync(`${file}.tmp`, file);
    return out;
  }
}

function synthesize(stackName: string, sledCount: number | undefined): { template: Template; headLogicalId: string; workerLogicalId: string } {
  const outdir = mkdtempSync(join(tmpdir(), 'sledge-local-synth-'));
  try {
    const app = new App({
      outdir,
      analyticsReporting: false,
      // Same feature flags as `npx cdk synth`; no stack is bundled (see the file comment).
      context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': [] },
    });
    const stack = new SledgeStack(app, stackName, {
      ...(sledCount !== undefined ? { sledCount } : {}),
      analyticsReporting: false,
      // No `encryptionKey`: AWS managed encryption, as by default. The customer key's path is not
      // deployed locally (the key is not among LOCAL_RESOURCE_TYPES, and the endpoint's KMS would
      // prove nothing about AWS's); test/cdk/stack.test.ts checks its template.
      // Local data is disposable, and a retained table would survive DeleteStack.
      dataRemovalPolicy: RemovalPolicy.DESTROY,
      // No BootstrapVersion parameter and rule: nothing is bootstrapped locally.
      synthesizer: new DefaultStackSynthesizer({ generateBootstrapVersionRule: false }),
    });
    const headLogicalId = stack.resolve((stack.head.node.defaultChild as CfnFunction).logicalId) as string;
    const workerLogicalId = stack.resolve((stack.worker.node.defaultChild as CfnFunction).logicalId) as string;
    const template = app.synth().getStackArtifact(stack.artifactId).template as Template;
    return { template, headLogicalId, workerLogicalId };
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}

/** Names of the resources, parameters and conditions `value` refers to. */
function references(value: unknown, found = new Set<string>()): Set<string> {
  if (Array.isArray(value)) {
    for (const item of value) references(item, found);
  } else if (value && typeof value === 'object') {
    for (const [key, inner] of Object.entries(value)) {
      if (key === 'Ref' && typeof inner === 'string') found.add(inner);
      else if (key === 'Fn::GetAtt') {
        const target = Array.isArray(inner) ? inner[0] : typeof inner === 'string' ? inner.split('.')[0] : undefined;
        if (typeof target === 'string') found.add(target);
        else references(inner, found);
      } else if (key === 'Fn::Sub') {
        const [text, variables] = Array.isArray(inner) ? [inner[0], inner[1]] : [inner, undefined];
        if (typeof text === 'string') {
          const local = new Set(Object.keys((variables as Record<string, unknown> | undefined) ?? {}));
          for (const match of text.matchAll(/\$\{([^!}][^}]*)\}/g)) {
            const name = (match[1] ?? '').split('.')[0] ?? '';
            if (!local.has(name)) found.add(name);
          }
        }
        references(variables, found);
      } else if ((key === 'Condition' || key === 'Fn::If') && typeof inner === 'string') {
        found.add(inner);
      } else {
        if (key === 'Fn::If' && Array.isArray(inner) && typeof inner[0] === 'string') found.add(inner[0]);
        references(inner, found);
      }
    }
  }
  return found;
}

/**
 * The template with only `LOCAL_RESOURCE_TYPES`. A kept resource that refers to a dropped one
 * is an error (the local stack would differ from the real one); outputs that refer to dropped
 * resources are dropped, and so are parameters, conditions and rules nothing kept uses.
 */
function localOnly(template: Template): Template {
  const kept = new Map(Object.entries(template.Resources).filter(([, r]) => LOCAL_RESOURCE_TYPES.includes(r.Type)));
  const dropped = new Set(Object.keys(template.Resources).filter((id) => !kept.has(id)));

  const resources: Record<string, TemplateResource> = {};
  for (const [id, resource] of kept) {
    const { DependsOn, ...rest } = resource;
    const needs = [...references(rest)].filter((name) => dropped.has(name));
    if (needs.length > 0) {
      throw new Error(`${id} (${resource.Type}) refers to ${needs.join(', ')}, which the local stack does not deploy; add its type to LOCAL_RESOURCE_TYPES`);
    }
    const dependsOn = (DependsOn === undefined ? [] : [DependsOn].flat()).filter((name) => !dropped.has(name));
    resources[id] = dependsOn.length > 0 ? { ...rest, DependsOn: dependsOn } : rest;
  }

  const outputs = Object.fromEntries(
    Object.entries(template.Outputs ?? {}).filter(([, output]) => ![...references(output)].some((name) => dropped.has(name))),
  );

  // Conditions may use conditions; follow them until nothing new turns up (bounded by their count).
  const used = references([resources, outputs]);
  const conditions = template.Conditions ?? {};
  for (let round = 0; round <= Object.keys(conditions).length; round++) {
    const before = used.size;
    for (const name of [...used]) if (name in conditions) references(conditions[name], used);
    if (used.size === before) break;
  }

  const pick = (section: Record<string, unknown> | undefined) =>
    Object.fromEntries(Object.entries(section ?? {}).filter(([name]) => used.has(name)));
  const result: Template = { Resources: resources };
  for (const key of ['AWSTemplateFormatVersion', 'Description', 'Mappings'] as const) {
    if (template[key] !== undefined) result[key] = template[key];
  }
  const parameters = pick(template.Parameters);
  const keptConditions = pick(template.Conditions);
  if (Object.keys(parameters).length > 0) result.Parameters = parameters;
  if (Object.keys(keptConditions).length > 0) result.Conditions = keptConditions;
  if (Object.keys(outputs).length > 0) result.Outputs = outputs;
  // Rules only check parameters on AWS (the bootstrap version); none apply locally.
  return result;
}

// ---------------------------------------------------------------------------------------
// Deployment

function awsClientConfig(endpointUrl: string) {
  const hasCredentials = Boolean(process.env.AWS_ACCESS_KEY_ID && process.env.AWS_SECRET_ACCESS_KEY);
  return {
    endpoint: endpointUrl,
    region: process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1',
    // LocalStack's test credentials unless the environment has some; the endpoint ignores them.
    ...(hasCredentials ? {} : { credentials: { accessKeyId: 'test', secretAccessKey: 'test' } }),
    maxAttempts: 3,
  };
}

const COMPLETE = new Set(['CREATE_COMPLETE', 'UPDATE_COMPLETE']);
/** States a stack cannot be updated from; it is deleted and created again. */
const UNUSABLE = new Set(['CREATE_FAILED', 'ROLLBACK_COMPLETE', 'ROLLBACK_FAILED', 'DELETE_FAILED', 'UPDATE_ROLLBACK_FAILED']);

function errorName(err: unknown): string {
  return err instanceof Error ? err.name : '';
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function describeStack(cfn: CloudFormationClient, stackName: string): Promise<CfnStack | undefined> {
  try {
    const { Stacks } = await cfn.send(new DescribeStacksCommand({ StackName: stackName }));
    const stack = Stacks?.[0];
    return stack && stack.StackStatus !== 'DELETE_COMPLETE' ? stack : undefined;
  } catch (err) {
    if (errorName(err) === 'ValidationError' && /does not exist/.test(errorMessage(err))) return undefined;
    throw err;
  }
}

/** Creates or updates the stack and waits until it is complete; returns its final description. */
async function deploy(cfn: CloudFormationClient, stackName: string, templateBody: string): Promise<CfnStack> {
  let existing = await describeStack(cfn, stackName);
  if (existing?.StackStatus?.endsWith('_IN_PROGRESS')) {
    existing = await waitUntilSettled(cfn, stackName, 'waiting for a deployment already in progress');
  }
  if (existing && UNUSABLE.has(existing.StackStatus ?? '')) {
    await cfn.send(new DeleteStackCommand({ StackName: stackName }));
    existing = await waitUntilSettled(cfn, stackName, `deleting the stack left in ${existing.StackStatus}`);
    if (existing) throw await stackError(cfn, existing, `deleting the stack left in a failed state`);
  }

  if (!existing) {
    await cfn.send(new CreateStackCommand({ StackName: stackName, TemplateBody: templateBody }));
    return waitUntilComplete(cfn, stackName, 'creating');
  }

  const { TemplateBody: current } = await cfn.send(new GetTemplateCommand({ StackName: stackName }));
  if (COMPLETE.has(existing.StackStatus ?? '') && current !== undefined && sameTemplate(current, templateBody)) return existing;
  try {
    await cfn.send(new UpdateStackCommand({ StackName: stackName, TemplateBody: templateBody }));
  } catch (err) {
    // CloudFormation (and LocalStack) refuse an update that changes nothing.
    if (/No updates are to be performed/.test(errorMessage(err))) return existing;
    throw err;
  }
  return waitUntilComplete(cfn, stackName, 'updating');
}

function sameTemplate(current: string, wanted: string): boolean {
  try {
    return JSON.stringify(JSON.parse(current)) === wanted;
  } catch {
    // An endpoint that returns the template as YAML: update to be sure.
    return false;
  }
}

/** Polls until the stack leaves its `_IN_PROGRESS` state; undefined if it is gone. */
async function waitUntilSettled(cfn: CloudFormationClient, stackName: string, what: string): Promise<CfnStack | undefined> {
  const deadline = Date.now() + DEPLOY_TIMEOUT_MS;
  for (;;) {
    const stack = await describeStack(cfn, stackName);
    if (!stack || !stack.StackStatus?.endsWith('_IN_PROGRESS')) return stack;
    if (Date.now() > deadline) {
      throw await stackError(cfn, stack, `${what} did not finish within ${DEPLOY_TIMEOUT_MS / 1000} s`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

/** Polls until the stack is CREATE_COMPLETE or UPDATE_COMPLETE; throws with the failed resources' reasons otherwise. */
async function waitUntilComplete(cfn: CloudFormationClient, stackName: string, what: string): Promise<CfnStack> {
  const stack = await waitUntilSettled(cfn, stackName, what);
  if (stack && COMPLETE.has(stack.StackStatus ?? '')) return stack;
  throw await stackError(cfn, stack ?? { StackName: stackName, StackStatus: 'DELETE_COMPLETE', CreationTime: undefined }, what);
}

async function stackError(cfn: CloudFormationClient, stack: CfnStack, what: string): Promise<Error> {
  const reason = stack.StackStatusReason ? ` (${stack.StackStatusReason})` : '';
  return new Error(`local stack ${stack.StackName}: ${what}: the stack is ${stack.StackStatus}${reason}${await failureReasons(cfn, stack.StackName ?? '')}`);
}

async function failureReasons(cfn: CloudFormationClient, stackName: string): Promise<string> {
  try {
    const { StackEvents } = await cfn.send(new DescribeStackEventsCommand({ StackName: stackName }));
    const failed = (StackEvents ?? [])
      .slice(0, FAILURE_EVENTS_MAX)
      .filter((event) => event.ResourceStatus?.endsWith('_FAILED'))
      .map((event) => `\n  ${event.LogicalResourceId} (${event.ResourceType}): ${event.ResourceStatus}: ${event.ResourceStatusReason ?? 'no reason given'}`);
    return failed.length > 0 ? `; failed resources:${failed.join('')}` : '';
  } catch (err) {
    return `; its events could not be read: ${errorMessage(err)}`;
  }
}

/** Logical ID -> physical ID of every resource in `template`; throws if one was not created. */
async function deployedResources(cfn: CloudFormationClient, stackName: string, template: Template): Promise<Record<string, string>> {
  const { StackResources } = await cfn.send(new DescribeStackResourcesCommand({ StackName: stackName }));
  const physicalIds: Record<string, string> = {};
  for (const resource of StackResources ?? []) {
    // moto lists a resource type it does not implement with no logical ID; LOCAL_RESOURCE_TYPES has none.
    if (resource.LogicalResourceId && resource.PhysicalResourceId && COMPLETE.has(resource.ResourceStatus ?? '')) {
      physicalIds[resource.LogicalResourceId] = resource.PhysicalResourceId;
    }
  }
  const missing = Object.keys(template.Resources).filter((id) => !(id in physicalIds));
  if (missing.length > 0) {
    throw new Error(
      `local stack ${stackName} is complete but lacks ${missing.join(', ')}. Either the endpoint's CloudFormation does not support their types, ` +
        `or it updated an existing stack whose table definitions changed (moto's CloudFormation forgets such a table instead of updating it). ` +
        `Start on a fresh endpoint, or delete the stack first (aws cloudformation delete-stack --stack-name ${stackName}).`,
    );
  }
  return Object.fromEntries(Object.keys(template.Resources).map((id) => [id, physicalIds[id] as string]));
}

/**
 * Replaces each queue's physical ID (CloudFormation reports the URL on AWS's host) with the
 * URL the endpoint gives for it, so a client sending to it reaches the endpoint even when the
 * SDK takes the queue URL's host as the endpoint.
 */
async function withLocalQueueUrls(sqs: SQSClient, template: Template, physicalIds: Record<string, string>): Promise<Record<string, string>> {
  const resolved = { ...physicalIds };
  for (const [id, resource] of Object.entries(template.Resources)) {
    if (resource.Type !== 'AWS::SQS::Queue') continue;
    const queueName = (physicalIds[id] ?? '').split('/').pop() ?? '';
    const { QueueUrl } = await sqs.send(new GetQueueUrlCommand({ QueueName: queueName }));
    if (!QueueUrl) throw new Error(`the endpoint gave no URL for queue ${queueName} (${id})`);
    resolved[id] = QueueUrl;
  }
  return resolved;
}

// ---------------------------------------------------------------------------------------
// Resolving the functions' environment

interface ResolveContext {
  template: Template;
  resources: Record<string, string>;
  partition: string;
  region: string;
  accountId: string;
  stackName: string;
  stackId: string;
}

function resolveEnvironment(template: Template, headLogicalId: string, resources: Record<string, string>, stack: CfnStack): Record<string, string> {
  const head = template.Resources[headLogicalId];
  const variables = (head?.Properties?.Environment as { Variables?: Record<string, unknown> } | undefined)?.Variables;
  if (!head || !variables) throw new Error(`the synthesized template has no environment on the head function ${headLogicalId}`);

  // arn:aws:cloudformation:us-east-1:123456789012:stack/name/id
  const stackId = stack.StackId ?? '';
  const [, partition, , region, accountId] = stackId.split(':');
  if (!partition || !region || !accountId) throw new Error(`cannot read partition, region and account from stack ID '${stackId}'`);
  const context: ResolveContext = { template, resources, partition, region, accountId, stackName: stack.StackName ?? '', stackId };

  return Object.fromEntries(Object.entries(variables).map(([name, value]) => [name, resolveString(value, context, name)]));
}

function resolveString(value: unknown, context: ResolveContext, where: string): string {
  const resolved = resolveValue(value, context, where);
  if (typeof resolved !== 'string') throw new Error(`${where} resolves to ${JSON.stringify(resolved)}, not a string`);
  return resolved;
}

/** Resolves the intrinsic functions the stack's environment uses; anything else is a clear error. */
function resolveValue(value: unknown, context: ResolveContext, where: string): unknown {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return value.map((item) => resolveValue(item, context, where));
  if (!value || typeof value !== 'object') throw new Error(`${where}: cannot resolve ${JSON.stringify(value)}`);

  const entries = Object.entries(value);
  const [fn, args] = entries[0] ?? [];
  if (entries.length !== 1 || fn === undefined) throw new Error(`${where}: cannot resolve ${JSON.stringify(value)}`);
  switch (fn) {
    case 'Ref':
      return resolveRef(String(args), context, where);
    case 'Fn::GetAtt': {
      const [id, attribute] = Array.isArray(args) ? args : String(args).split(/\.(.*)/s);
      return resolveGetAtt(String(id), String(attribute), context, where);
    }
    case 'Fn::Join': {
      const [separator, list] = args as [string, unknown];
      const items = resolveValue(list, context, where);
      if (!Array.isArray(items)) throw new Error(`${where}: Fn::Join of ${JSON.stringify(list)} is not a list`);
      return items.map((item) => resolveString(item, context, where)).join(separator);
    }
    case 'Fn::Select': {
      const [index, list] = args as [unknown, unknown];
      const items = resolveValue(list, context, where);
      const position = Number(resolveValue(index, context, where));
      if (!Array.isArray(items) || !Number.isInteger(position) || position < 0 || position >= items.length) {
        throw new Error(`${where}: Fn::Select ${JSON.stringify(args)} is out of range`);
      }
      return items[position];
    }
    case 'Fn::Split': {
      const [separator, text] = args as [string, unknown];
      return resolveString(text, context, where).split(separator);
    }
    case 'Fn::Sub': {
      const [text, variables] = (Array.isArray(args) ? args : [args, {}]) as [string, Record<string, unknown>];
      return text.replace(/\$\{([^}]*)\}/g, (whole, name: string) => {
        if (name.startsWith('!')) return `\${${name.slice(1)}}`;
        if (name in variables) return resolveString(variables[name], context, where);
        const [id, attribute] = name.split(/\.(.*)/s);
        return attribute ? resolveGetAtt(id ?? '', attribute, context, where) : resolveRef(name, context, where);
      });
    }
    default:
      throw new Error(`${where}: ${fn} is not supported by the local stack's resolver (${JSON.stringify(value)})`);
  }
}

function resolveRef(name: string, context: ResolveContext, where: string): string {
  switch (name) {
    case 'AWS::Region':
      return context.region;
    case 'AWS::AccountId':
      return context.accountId;
    case 'AWS::Partition':
      return context.partition;
    case 'AWS::URLSuffix':
      return context.partition === 'aws-cn' ? 'amazonaws.com.cn' : 'amazonaws.com';
    case 'AWS::StackName':
      return context.stackName;
    case 'AWS::StackId':
      return context.stackId;
  }
  const physicalId = context.resources[name];
  if (physicalId === undefined) throw new Error(`${where}: Ref ${name} names nothing the local stack deploys`);
  // Ref of a bucket or table is its name and of a queue its URL: the physical IDs here.
  return physicalId;
}

function resolveGetAtt(id: string, attribute: string, context: ResolveContext, where: string): string {
  const type = context.template.Resources[id]?.Type;
  const physicalId = context.resources[id];
  if (!type || physicalId === undefined) throw new Error(`${where}: Fn::GetAtt ${id}.${attribute} names nothing the local stack deploys`);
  const { partition, region, accountId } = context;
  const queueName = (): string => physicalId.split('/').pop() ?? '';
  const value = (
    {
      'AWS::S3::Bucket': {
        Arn: () => `arn:${partition}:s3:::${physicalId}`,
        DomainName: () => `${physicalId}.s3.amazonaws.com`,
        RegionalDomainName: () => `${physicalId}.s3.${region}.amazonaws.com`,
      },
      'AWS::DynamoDB::Table': {
        Arn: () => `arn:${partition}:dynamodb:${region}:${accountId}:table/${physicalId}`,
      },
      'AWS::SQS::Queue': {
        Arn: () => `arn:${partition}:sqs:${region}:${accountId}:${queueName()}`,
        QueueName: queueName,
        QueueUrl: () => physicalId,
      },
    } as Record<string, Record<string, () => string>>
  )[type]?.[attribute];
  if (!value) throw new Error(`${where}: Fn::GetAtt ${id}.${attribute} (${type}) is not supported by the local stack's resolver`);
  return value();
}
