/**
 * The whole control plane on one machine: the local AWS endpoint, the resources of the CDK
 * stack deployed to it from the synthesized template, the head behind a local API Gateway
 * stand-in, and the worker behind a local SQS event source mapping.
 *
 * The handlers are the very modules Lambda runs; they read their configuration from the
 * environment the stack's template gives the head function.
 *
 * The API requires SigV4-signed requests, as the deployed stack does: the stand-in knows the
 * local principals (local/principals.ts), an operator and two tenants, whose keys are in a
 * shared credentials file, and the head is told which of them is the operator.
 */
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ENV } from '#shared/core/config.ts';
import { ensureEndpoint } from './endpoint.ts';
import { startLocalApi } from './http-adapter.ts';
import { LOCAL_AUDIT_LOG_ENV, LOCAL_CREDENTIALS_ENV, localPrincipals, type LocalPrincipals } from './principals.ts';

export { LOCAL_AUDIT_LOG_ENV, LOCAL_CREDENTIALS_ENV };
import { startPoller } from './sqs-poller.ts';
import { deployLocalStack } from './stack.ts';

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
  /** Visibility timeout the poller uses for work messages. */
  visibilityTimeoutSeconds?: number;
  /**
   * How often to sweep leases (what the stack's schedule does on AWS); 0 turns it off.
   * Default 0: tests drive failover themselves. `npm start` turns it on.
   */
  leaseSweepIntervalMs?: number;
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
}

export interface ControlPlane {
  apiUrl: string;
  endpointUrl: string;
  /** The process id of the local endpoint when this control plane started it. */
  endpointPid?: number;
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

function queueArn(url: string): string {
  // https://host/<account>/<name> -> arn:aws:sqs:<region>:<account>:<name>
  const parts = new URL(url).pathname.split('/').filter(Boolean);
  return `arn:aws:sqs:${process.env.AWS_REGION ?? 'us-east-1'}:${parts[0]}:${parts[1]}`;
}

export async function startControlPlane(opts: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const endpoint = await ensureEndpoint({ port: opts.endpointPort ?? 4566, preferExisting: opts.preferExistingEndpoint ?? true });
  process.env.AWS_ENDPOINT_URL = endpoint.url;
  const named = opts.credentialsFile ?? process.env[LOCAL_CREDENTIALS_ENV];
  const scratch = named === undefined ? mkdtempSync(join(tmpdir(), 'sledge-principals-')) : undefined;
  try {
    const principals = localPrincipals(named ?? join(scratch!, 'credentials'));
    const auditLog = opts.auditLog ?? process.env[LOCAL_AUDIT_LOG_ENV] ?? join(scratch ?? mkdtempSync(join(tmpdir(), 'sledge-audit-')), 'audit.log');
    const apiAuth = opts.apiAuth ?? 'iam';
    const deployed = await deployLocalStack({ endpointUrl: endpoint.url, stackName: opts.stackName ?? 'sledge-local', sledCount: opts.sledCount });
    const env: Record<string, string> = {
      ...deployed.env,
      // The stack names its operator role; locally the operator is the local operator user.
      [ENV.apiAuth]: apiAuth,
      [ENV.operatorPrincipals]: principals.operatorArns.join(','),
      [LOCAL_CREDENTIALS_ENV]: principals.credentialsFile!,
      ...(auditLog === 'stdout' ? {} : { [LOCAL_AUDIT_LOG_ENV]: auditLog }),
    };
    Object.assign(process.env, env);
    // Imported only now: the handlers read their configuration from the environment just set.
    const api = await import('#lambdas/api.ts');
    const worker = await import('#lambdas/worker.ts');
    const { sweepLeases } = await import('#shared/control/heads.ts');
    const { setAuditSink } = await import('#shared/api/authz.ts');
    if (auditLog !== 'stdout') setAuditSink((record) => appendFileSync(auditLog, `${JSON.stringify(record)}\n`));
    const server = await startLocalApi({
      handler: api.handler,
      port: opts.port ?? 3000,
      ...(apiAuth === 'iam' ? { iam: { principals: Object.values(principals.byProfile) } } : {}),
    });
    const queues = [ENV.gcQueueUrl, ENV.evacuationQueueUrl, ENV.checkpointQueueUrl].map((name) => env[name]!);
    const poller = startPoller(
      queues.map((queueUrl) => ({
        queueUrl,
        queueArn: queueArn(queueUrl),
        handler: worker.handler,
        batchSize: 10,
        visibilityTimeoutSeconds: opts.visibilityTimeoutSeconds ?? 30,
      })),
      { onError: (err) => console.error('sqs poller:', err) },
    );
    const sweepMs = opts.leaseSweepIntervalMs ?? 0;
    // On AWS the stack's schedule queues a `sweep-leases` message and the worker logs the result
    // of every job. Here the sweep runs in this process and is logged only when it promoted a
    // head: a line every few seconds would bury what `npm start` prints.
    let sweeping: Promise<void> | undefined;
    const sweeper =
      sweepMs > 0
        ? setInterval(() => {
            // One sweep at a time; a slow one just delays the next.
            if (sweeping) return;
            sweeping = sweepLeases()
              .then(
                (result) => {
                  if (result.promoted.length > 0) console.log(JSON.stringify({ msg: 'swept leases', ...result }));
                },
                (err) => console.error('lease sweep:', err),
              )
              .finally(() => {
                sweeping = undefined;
              });
          }, sweepMs)
        : undefined;
    sweeper?.unref();
    return {
      apiUrl: server.url,
      endpointUrl: endpoint.url,
      endpointPid: endpoint.pid,
      env,
      principals,
      idle: () => poller.idle(),
      async stop() {
        if (sweeper) clearInterval(sweeper);
        await sweeping;
        await poller.stop();
        await server.close();
        await endpoint.stop();
        if (scratch) rmSync(scratch, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await endpoint.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
    throw err;
  }
}
