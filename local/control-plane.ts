/**
 * The whole control plane on one machine: the local AWS endpoint, the resources of the CDK
 * stack deployed to it from the synthesized template, the head behind a local API Gateway
 * stand-in, the worker behind local SQS event source mappings, and (when asked) the stack's
 * schedules.
 *
 * The handlers are the very modules Lambda runs; they read their configuration from the
 * environment the stack's template gives the head function. The event source mappings and
 * schedules are read from the same template (`local/stack-settings.ts`): batch size,
 * concurrency, the worker's timeout, each queue's visibility timeout, each schedule's rate.
 *
 * The API requires SigV4-signed requests, as the deployed stack does: the stand-in knows the
 * local principals (local/principals.ts), an operator and two tenants, whose keys are in a
 * shared credentials file, and the head is told which of them is the operator.
 */
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SQSClient } from '@aws-sdk/client-sqs';
import { ENV } from '#shared/core/config.ts';
import { ensureEndpoint } from './endpoint.ts';
import { startLocalApi } from './http-adapter.ts';
import { LOCAL_AUDIT_LOG_ENV, LOCAL_CREDENTIALS_ENV, localPrincipals, type LocalPrincipals } from './principals.ts';
import { startSchedules, type Scheduler } from './schedules.ts';
import { startPoller, type SqsHandler } from './sqs-poller.ts';

export { LOCAL_AUDIT_LOG_ENV, LOCAL_CREDENTIALS_ENV };
import { deployLocalStack } from './stack.ts';
import { eventSources, schedules } from './stack-settings.ts';
import { ensureVault } from './vault.ts';

export interface ControlPlaneOptions {
  /** API port; 0 picks a free one. Default 3000. */
  port?: number;
  /** Local AWS endpoint port when one must be started; 0 picks a free one. Default 4566. */
  endpointPort?: number;
  /**
   * Use the endpoint AWS_ENDPOINT_URL names when it is set (refusing one that does not answer
   * or fails the transaction self-test, see `ensureEndpoint`). Default true.
   */
  preferExistingEndpoint?: boolean;
  stackName?: string;
  sledCount?: number;
  /**
   * Overrides the work queues' visibility timeout (the stack's is six times the worker's
   * timeout, 12 minutes) when receiving. Default: none, the queues' own. Tests that wait for a
   * failed message to come back, or to reach its dead-letter queue after 5 receives, set a few
   * seconds. The worker's timeout stays the stack's; while a batch runs, the poller keeps it
   * invisible (on AWS the visibility timeout is never below the function's timeout), so only the
   * wait after a failure is shorter.
   */
  visibilityTimeoutSeconds?: number;
  /**
   * Overrides every event source mapping's concurrency (default: its `MaximumConcurrency`, else
   * the 5 concurrent batches Lambda starts with). `lost-responses.test.ts` sets 1.
   */
  maxConcurrency?: number;
  /**
   * Run the stack's EventBridge schedules (lease sweep every minute, checkpoint sweep every hour,
   * GC sweep every 6 hours) at their rates. Default false: tests drive sweeps and failover
   * themselves, and a sweep at a moment they do not choose would race them. `npm start` turns
   * it on.
   */
  schedules?: boolean;
  /**
   * The shared credentials file of the local principals: reused when it holds their three
   * profiles, else written. Default: `SLEDGE_LOCAL_CREDENTIALS_FILE` when set (so that control
   * planes started by tests share one set of keys), else a new file in a temporary folder that
   * `stop()` removes.
   */
  credentialsFile?: string;
  /**
   * `iam` (default): only requests signed by a local principal reach the head, as with the
   * stack's IAM authorization. `none`: the explicit opt-out, as `apiIamAuthorization: false`.
   */
  apiAuth?: 'iam' | 'none';
  /**
   * Where the head's audit lines go: `stdout`, or a file (JSON lines). Default:
   * `SLEDGE_LOCAL_AUDIT_LOG` when set, else `audit.log` beside a temporary credentials file.
   */
  auditLog?: 'stdout' | string;
  /**
   * The vault backups go to (docs/backup.md): by default a second endpoint process this call
   * starts (or the one `SLEDGE_VAULT_ENDPOINT_URL` names); `{ endpointUrl }` uses another
   * control plane's vault (a second site); `false` runs without one.
   */
  vault?: false | { endpointUrl?: string };
}

export interface ControlPlane {
  apiUrl: string;
  endpointUrl: string;
  /** The process id of the local endpoint when this control plane started it. */
  endpointPid?: number;
  /** The vault's endpoint, and its process id when this control plane started it. */
  vaultUrl?: string;
  vaultPid?: number;
  /**
   * The environment the head and worker run with (table, bucket and queue names, the operator
   * principals), plus `SLEDGE_LOCAL_CREDENTIALS_FILE` and `SLEDGE_LOCAL_AUDIT_LOG`: where the
   * local principals' keys and the audit log are.
   */
  env: Record<string, string>;
  /** The local principals the API accepts. */
  principals: LocalPrincipals;
  /** Resolves when every work queue was just seen empty and nothing is in flight. */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

export async function startControlPlane(opts: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const [endpoint, vault] = await Promise.all([
    ensureEndpoint({ port: opts.endpointPort ?? 4566, preferExisting: opts.preferExistingEndpoint ?? true }),
    opts.vault === false ? Promise.resolve(undefined) : ensureVault(opts.vault ?? {}),
  ]);
  process.env.AWS_ENDPOINT_URL = endpoint.url;
  const named = opts.credentialsFile ?? process.env[LOCAL_CREDENTIALS_ENV];
  const scratch = named === undefined ? mkdtempSync(join(tmpdir(), 'sledge-principals-')) : undefined;
  try {
    const principals = localPrincipals(named ?? join(scratch!, 'credentials'));
    const auditLog = opts.auditLog ?? process.env[LOCAL_AUDIT_LOG_ENV] ?? join(scratch ?? mkdtempSync(join(tmpdir(), 'sledge-audit-')), 'audit.log');
    const apiAuth = opts.apiAuth ?? 'iam';
    const deployment = await deployLocalStack({ endpointUrl: endpoint.url, stackName: opts.stackName ?? 'sledge-local', sledCount: opts.sledCount });
    const env: Record<string, string> = {
      ...deployment.env,
      ...(vault?.env ?? {}),
      // The stack names its operator role; locally the operator is the local operator user.
      [ENV.apiAuth]: apiAuth,
      [ENV.operatorPrincipals]: principals.operatorArns.join(','),
      [LOCAL_CREDENTIALS_ENV]: principals.credentialsFile!,
      ...(auditLog === 'stdout' ? {} : { [LOCAL_AUDIT_LOG_ENV]: auditLog }),
      // Set by whoever starts the local control plane, the tail bound of new volumes wins over
      // the stack's default (what `-c foldTailMax=N` does for a deployment): 0 makes volumes that
      // do not fold (docs/page-map.md, "Folding").
      ...(process.env[ENV.foldTailMax] ? { [ENV.foldTailMax]: process.env[ENV.foldTailMax] } : {}),
      // Likewise whether reads ask for repairs (docs/evacuation.md, "Read repair"; on unless `0`).
      ...(process.env[ENV.readRepair] ? { [ENV.readRepair]: process.env[ENV.readRepair] } : {}),
      // And how many lost chunks retire a drive (docs/evacuation.md, "Drives that keep losing chunks").
      ...(process.env[ENV.lostChunkRetireThreshold] ? { [ENV.lostChunkRetireThreshold]: process.env[ENV.lostChunkRetireThreshold] } : {}),
    };
    Object.assign(process.env, env);
    // Imported only now: the handlers read their configuration from the environment just set.
    const api = await import('#lambdas/api.ts');
    const worker = await import('#lambdas/worker.ts');
    const { setAuditSink } = await import('#shared/api/authz.ts');
    if (auditLog !== 'stdout') setAuditSink((record) => appendFileSync(auditLog, `${JSON.stringify(record)}\n`));
    const handlers: Record<string, SqsHandler> = { [deployment.functions.worker]: worker.handler };
    const server = await startLocalApi({
      handler: api.handler,
      port: opts.port ?? 3000,
      ...(apiAuth === 'iam' ? { iam: { principals: Object.values(principals.byProfile) } } : {}),
    });
    // The pollers' and schedules' own client, outside the handlers' (which tests may wrap for faults).
    const sqs = new SQSClient(process.env.AWS_REGION ? {} : { region: 'us-east-1' });
    const poller = startPoller(
      eventSources(deployment).map((source) => {
        const handler = handlers[source.functionLogicalId];
        if (!handler) throw new Error(`event source mapping ${source.mappingLogicalId} invokes ${source.functionLogicalId}, which has no local handler`);
        return {
          queueUrl: source.queueUrl,
          handler,
          batchSize: source.batchSize,
          functionTimeoutSeconds: source.functionTimeoutSeconds,
          reportBatchItemFailures: source.reportBatchItemFailures,
          // Without ScalingConfig the poller keeps to the 5 concurrent batches Lambda starts with.
          ...(source.maximumConcurrency !== undefined ? { maxConcurrency: source.maximumConcurrency } : {}),
          ...(opts.maxConcurrency !== undefined ? { maxConcurrency: opts.maxConcurrency } : {}),
          ...(opts.visibilityTimeoutSeconds !== undefined ? { visibilityTimeoutSeconds: opts.visibilityTimeoutSeconds } : {}),
        };
      }),
      { sqs, onError: (err) => console.error('sqs poller:', err) },
    );
    const scheduler: Scheduler | undefined = opts.schedules ? startSchedules(schedules(deployment), { sqs, onError: (err) => console.error('schedule:', err) }) : undefined;
    return {
      apiUrl: server.url,
      endpointUrl: endpoint.url,
      endpointPid: endpoint.pid,
      ...(vault ? { vaultUrl: vault.url } : {}),
      ...(vault?.pid !== undefined ? { vaultPid: vault.pid } : {}),
      env,
      principals,
      idle: () => poller.idle(),
      async stop() {
        await scheduler?.stop();
        await poller.stop();
        sqs.destroy();
        await server.close();
        await endpoint.stop();
        await vault?.stop();
        if (scratch) rmSync(scratch, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await endpoint.stop();
    await vault?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
    throw err;
  }
}
