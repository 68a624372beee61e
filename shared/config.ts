/**
 * Every environment variable the head and worker functions read, in one place.
 *
 * Each variable is read once, when the module loads. The CDK construct that sets a
 * variable also grants the permission it implies (see `cdk/stack.ts`), and the local
 * runtime derives the same variables from the synthesized template, so the two cannot
 * drift apart.
 */

/** Names of the environment variables, shared by the CDK stack and the local runtime. */
export const ENV = {
  volumesTable: 'SLEDGE_VOLUMES_TABLE',
  pagesTable: 'SLEDGE_PAGES_TABLE',
  segmentsTable: 'SLEDGE_SEGMENTS_TABLE',
  drivesTable: 'SLEDGE_DRIVES_TABLE',
  sledBuckets: 'SLEDGE_SLED_BUCKETS',
  gcQueueUrl: 'SLEDGE_GC_QUEUE_URL',
  evacuationQueueUrl: 'SLEDGE_EVACUATION_QUEUE_URL',
  checkpointQueueUrl: 'SLEDGE_CHECKPOINT_QUEUE_URL',
  /** `portable` forces the pure-TypeScript erasure codec; anything else prefers the native one. */
  erasureImpl: 'SLEDGE_EC_IMPL',
  /** `development` adds stacks to 500 responses. */
  mode: 'SLEDGE_MODE',
} as const;

export class ConfigError extends Error {
  override name = 'ConfigError';
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
  drivesTable: string;
  sledBuckets: string[];
  gcQueueUrl: string;
  evacuationQueueUrl: string;
  checkpointQueueUrl: string;
  development: boolean;
}

let cached: SledgeConfig | undefined;

/**
 * The configuration of this process. Read lazily on first use (so that tests and the
 * local runtime can set the variables before the first request) and then never again.
 */
export function config(): SledgeConfig {
  if (cached) return cached;
  const sledBuckets = required(ENV.sledBuckets).split(',').map((s) => s.trim()).filter(Boolean);
  cached = {
    volumesTable: required(ENV.volumesTable),
    pagesTable: required(ENV.pagesTable),
    segmentsTable: required(ENV.segmentsTable),
    drivesTable: required(ENV.drivesTable),
    sledBuckets,
    gcQueueUrl: required(ENV.gcQueueUrl),
    evacuationQueueUrl: required(ENV.evacuationQueueUrl),
    checkpointQueueUrl: required(ENV.checkpointQueueUrl),
    development: process.env[ENV.mode] === 'development',
  };
  return cached;
}
