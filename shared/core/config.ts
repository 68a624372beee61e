/**
 * Every environment variable the head and worker functions read, in one place.
 *
 * Each variable is read once, when the module loads. The CDK construct that sets a
 * variable also grants the permission it implies (see `cdk/stack.ts`), and the local
 * runtime derives the same variables from the synthesized template, so the two cannot
 * drift apart.
 */

/**
 * The Volumes table's index of each owned volume by its owner (partition `owner`, sort
 * `volumeId`, keys only): a tenant's `GET /volumes` queries its own partition instead of
 * scanning every tenant's volumes (docs/security.md, "Lists"). The CDK stack creates it.
 */
export const VOLUMES_BY_OWNER_INDEX = 'byOwner';

/** Names of the environment variables, shared by the CDK stack and the local runtime. */
export const ENV = {
  volumesTable: 'SLEDGE_VOLUMES_TABLE',
  pagesTable: 'SLEDGE_PAGES_TABLE',
  segmentsTable: 'SLEDGE_SEGMENTS_TABLE',
  snapshotsTable: 'SLEDGE_SNAPSHOTS_TABLE',
  drivesTable: 'SLEDGE_DRIVES_TABLE',
  sledBuckets: 'SLEDGE_SLED_BUCKETS',
  gcQueueUrl: 'SLEDGE_GC_QUEUE_URL',
  evacuationQueueUrl: 'SLEDGE_EVACUATION_QUEUE_URL',
  checkpointQueueUrl: 'SLEDGE_CHECKPOINT_QUEUE_URL',
  gcDeadLetterQueueUrl: 'SLEDGE_GC_DEAD_LETTER_QUEUE_URL',
  evacuationDeadLetterQueueUrl: 'SLEDGE_EVACUATION_DEAD_LETTER_QUEUE_URL',
  checkpointDeadLetterQueueUrl: 'SLEDGE_CHECKPOINT_DEAD_LETTER_QUEUE_URL',
  /** Optional: how long after a drive becomes retiring its emptiness counts (docs/evacuation.md). Default 60000. */
  evacuationSettleMs: 'SLEDGE_EVACUATION_SETTLE_MS',
  /** Optional: the delay between an evacuation's emptiness checks, in seconds (0 to 900). Default 10. */
  evacuationRecheckSeconds: 'SLEDGE_EVACUATION_RECHECK_SECONDS',
  /** Optional: how old an uncommitted chunk must be before GC or evacuation deletes it. Default 3600000. */
  orphanGraceMs: 'SLEDGE_ORPHAN_GRACE_MS',
  /** Optional: a head queues GC of a volume every this many commits (0: never). Default 256. */
  gcEveryCommits: 'SLEDGE_GC_EVERY_COMMITS',
  /**
   * Optional: the tail bound of the volumes created: above 0 they commit by folding
   * (docs/page-map.md, "Folding"), a tail of at most this many commits not yet in the page
   * items; 0 creates volumes that write their page items at every commit. Default 512.
   */
  foldTailMax: 'SLEDGE_FOLD_TAIL_MAX',
  /**
   * Optional: the largest consistency group whose snapshot is one transaction, 1 to 49
   * (docs/consistency-groups.md); larger groups take the barrier path. Default 49.
   */
  groupTransactionMembers: 'SLEDGE_GROUP_TRANSACTION_MEMBERS',
  /** Optional: the lease of a group snapshot's write barriers, in ms. Default 5000. */
  groupBarrierLeaseMs: 'SLEDGE_GROUP_BARRIER_LEASE_MS',
  /** Optional: fault-injection rules, a JSON array (shared/aws/faults.ts). Never set in a deployment. */
  faults: 'SLEDGE_FAULTS',
  /** Optional: `0` turns off the repair requests of reads and of GC's listing check (docs/evacuation.md, "Read repair"); on by default. */
  readRepair: 'SLEDGE_READ_REPAIR',
  /** Optional: lost chunks (confirmed by repairs) in 10 minutes that retire a drive; `0` never retires for them. Default 3 (docs/evacuation.md, "Drives that keep losing chunks"). */
  lostChunkRetireThreshold: 'SLEDGE_LOST_CHUNK_RETIRE_THRESHOLD',
  /** `portable` forces the pure-TypeScript erasure codec; anything else prefers the native one. */
  erasureImpl: 'SLEDGE_EC_IMPL',
  /** `portable` forces the pure-TypeScript CRC-32C; anything else prefers the native one. Read once, at load. */
  crcImpl: 'SLEDGE_CRC_IMPL',
  /** `development` adds stacks to 500 responses. */
  mode: 'SLEDGE_MODE',
  /**
   * `iam` (the default): every API request must come with API Gateway's IAM identity
   * (`requestContext.authorizer.iam`), else 403. `none`: the stack was deployed without IAM
   * authorization on purpose (`apiIamAuthorization: false`), and every caller is an operator.
   */
  apiAuth: 'SLEDGE_API_AUTH',
  /**
   * Comma-separated ARNs of the operator principals (IAM users, or roles, whose sessions count
   * as the role); everyone else who signs is a tenant (docs/security.md).
   */
  operatorPrincipals: 'SLEDGE_OPERATOR_PRINCIPALS',
} as const;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** An optional non-negative integer variable, or its default. */
/**
 * The tail bound of new volumes when `SLEDGE_FOLD_TAIL_MAX` is not set, and of a folding volume
 * whose item carries none (docs/page-map.md, "Folding": why 512).
 */
export const DEFAULT_FOLD_TAIL_MAX = 512;

function optionalInteger(name: string, fallback: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 0 || value > max)
    throw new ConfigError(`environment variable ${name} must be an integer from 0 to ${max}, got ${JSON.stringify(raw)}`);
  return value;
}

function required(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === '') {
    throw new ConfigError(`environment variable ${name} is not set; run through \`npm start\` or deploy the CDK stack, which set it`);
  }
  return value;
}

export interface SledgeConfig {
  volumesTable: string;
  pagesTable: string;
  segmentsTable: string;
  snapshotsTable: string;
  drivesTable: string;
  sledBuckets: string[];
  gcQueueUrl: string;
  evacuationQueueUrl: string;
  checkpointQueueUrl: string;
  gcDeadLetterQueueUrl: string;
  evacuationDeadLetterQueueUrl: string;
  checkpointDeadLetterQueueUrl: string;
  evacuationSettleMs: number;
  evacuationRecheckSeconds: number;
  orphanGraceMs: number;
  gcEveryCommits: number;
  foldTailMax: number;
  groupTransactionMembers: number;
  groupBarrierLeaseMs: number;
  development: boolean;
  apiAuth: 'iam' | 'none';
  operatorPrincipals: string[];
}

function apiAuthMode(): 'iam' | 'none' {
  const raw = process.env[ENV.apiAuth];
  if (raw === undefined || raw === '' || raw === 'iam') return 'iam';
  if (raw === 'none') return 'none';
  throw new ConfigError(`environment variable ${ENV.apiAuth} must be iam or none, got ${JSON.stringify(raw)}`);
}

let cached: SledgeConfig | undefined;

/**
 * The configuration of this process. Read lazily on first use (so that tests and the
 * local runtime can set the variables before the first request) and then never again.
 */
export function config(): SledgeConfig {
  if (cached) return cached;
  const sledBuckets = required(ENV.sledBuckets)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  cached = {
    volumesTable: required(ENV.volumesTable),
    pagesTable: required(ENV.pagesTable),
    segmentsTable: required(ENV.segmentsTable),
    snapshotsTable: required(ENV.snapshotsTable),
    drivesTable: required(ENV.drivesTable),
    sledBuckets,
    gcQueueUrl: required(ENV.gcQueueUrl),
    evacuationQueueUrl: required(ENV.evacuationQueueUrl),
    checkpointQueueUrl: required(ENV.checkpointQueueUrl),
    gcDeadLetterQueueUrl: required(ENV.gcDeadLetterQueueUrl),
    evacuationDeadLetterQueueUrl: required(ENV.evacuationDeadLetterQueueUrl),
    checkpointDeadLetterQueueUrl: required(ENV.checkpointDeadLetterQueueUrl),
    evacuationSettleMs: optionalInteger(ENV.evacuationSettleMs, 60_000, 24 * 3600_000),
    evacuationRecheckSeconds: optionalInteger(ENV.evacuationRecheckSeconds, 10, 900),
    orphanGraceMs: optionalInteger(ENV.orphanGraceMs, 3600_000, 30 * 24 * 3600_000),
    gcEveryCommits: optionalInteger(ENV.gcEveryCommits, 256, 1_000_000),
    foldTailMax: optionalInteger(ENV.foldTailMax, DEFAULT_FOLD_TAIL_MAX, 1024),
    groupTransactionMembers: Math.max(1, optionalInteger(ENV.groupTransactionMembers, 49, 49)),
    groupBarrierLeaseMs: Math.max(100, optionalInteger(ENV.groupBarrierLeaseMs, 5000, 600_000)),
    development: process.env[ENV.mode] === 'development',
    apiAuth: apiAuthMode(),
    operatorPrincipals: (process.env[ENV.operatorPrincipals] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  };
  return cached;
}

/** At most this many commits of folding volume `v` are not yet in its page items (docs/page-map.md, "Folding"). */
export function foldTailBound(v: { foldTailMax?: number }): number {
  return v.foldTailMax || config().foldTailMax || DEFAULT_FOLD_TAIL_MAX;
}
