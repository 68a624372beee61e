/**
 * What a `SledgeStack` can be given (cdk/stack.ts), each with its default and the reason for it.
 */
import type { Duration, RemovalPolicy, StackProps } from 'aws-cdk-lib';
import type * as iam from 'aws-cdk-lib/aws-iam';
import type * as kms from 'aws-cdk-lib/aws-kms';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as logs from 'aws-cdk-lib/aws-logs';

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
   * The tail bound of volumes the head creates (docs/page-map.md, "Folding"): above 0, new
   * volumes commit by folding (a commit records its segment and moves the head in two items;
   * the worker folds the tail into page items, at most this many commits behind). 0 creates
   * volumes that write their page items at every commit. A volume keeps the protocol it was
   * made with. Between 0 and 1024.
   *
   * @default 256
   */
  readonly foldTailMax?: number;

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
