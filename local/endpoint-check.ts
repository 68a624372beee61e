/**
 * Whether a local AWS endpoint isolates concurrent DynamoDB transactions, found out by trying.
 *
 * Sledge's commit is one TransactWriteItems whose conditions decide between concurrent writers
 * (docs/page-map.md). Plain `moto_server` implements a transaction by deep-copying the tables it
 * names and putting the copies back when a condition fails, with no lock: a cancelled
 * transaction beside a committing one erases the other's committed, acknowledged write. The
 * self-test here makes that race happen on purpose, in scratch tables, and reports every
 * acknowledged commit it finds undone. docs/local-endpoint.md explains why it is enough and
 * what it costs.
 */
import { randomBytes } from 'node:crypto';
import {
  BatchGetItemCommand,
  BatchWriteItemCommand,
  CreateTableCommand,
  DeleteTableCommand,
  DescribeTableCommand,
  DynamoDBClient,
  TransactWriteItemsCommand,
  type AttributeValue,
} from '@aws-sdk/client-dynamodb';

/** Set to `1` to use an endpoint that failed the self-test anyway, with a warning. */
export const ALLOW_UNSAFE_ENDPOINT_ENV = 'SLEDGE_ALLOW_UNSAFE_ENDPOINT';

/** The endpoints that isolate transactions, named in every refusal. */
export const SAFE_ENDPOINTS = [
  'Use one of:',
  '  - the bundled endpoint, moto with isolated transactions: `python3 local/moto-server.py -H 127.0.0.1 -p 4566`',
  '    (needs `pip install \'moto[server]\'`; `npm start` starts it itself when AWS_ENDPOINT_URL is unset);',
  '  - LocalStack with its DynamoDB (`localstack start`, then AWS_ENDPOINT_URL=http://127.0.0.1:4566);',
  '  - AWS itself (deploy the stack with `npx cdk deploy`).',
].join('\n');

/** What an endpoint that fails the self-test does to Sledge, for the refusal and the override's warning. */
export const UNSAFE_RISK =
  'acknowledged writes are lost when two or more writers commit to one volume at the same time ' +
  '(a cancelled commit puts back a stale copy of the table), and reads then return old data without any error';

/** A local AWS endpoint that Sledge refuses to use; the message says why and what to use instead. */
export class UnsafeEndpointError extends Error {
  override name = 'UnsafeEndpointError';

  constructor(
    message: string,
    /** What the self-test found, when it ran. */
    readonly report?: SelfTestReport,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export interface VerifyEndpointOptions {
  /** Use a failing endpoint anyway, with a warning. Default: `SLEDGE_ALLOW_UNSAFE_ENDPOINT=1` in the environment. */
  allowUnsafe?: boolean;
  /** Where the override's warning goes. Default `console.warn`. */
  warn?: (message: string) => void;
  selfTest?: SelfTestOptions;
}

/**
 * Runs the self-test against `endpointUrl` and throws an `UnsafeEndpointError` when the
 * endpoint loses or applies a write it must not, or cannot run the test at all. With the
 * override it warns instead of throwing. Resolves with the self-test's report (undefined when
 * it could not run and the override let the endpoint through).
 *
 * @example
 * await verifyEndpointIsolation('http://127.0.0.1:4566'); // throws for a plain moto_server
 */
export async function verifyEndpointIsolation(endpointUrl: string, opts: VerifyEndpointOptions = {}): Promise<SelfTestReport | undefined> {
  const allowUnsafe = opts.allowUnsafe ?? process.env[ALLOW_UNSAFE_ENDPOINT_ENV] === '1';
  const warn = opts.warn ?? ((message: string) => console.warn(message));
  let report: SelfTestReport | undefined;
  let problem: string;
  let cause: unknown;
  try {
    report = await selfTestIsolation(endpointUrl, opts.selfTest);
    if (report.isolated) {
      if (allowUnsafe) warn(`note: ${ALLOW_UNSAFE_ENDPOINT_ENV}=1 is set, but ${endpointUrl} passed the transaction self-test, so it is not needed.`);
      return report;
    }
    problem = `does not isolate concurrent DynamoDB transactions: ${report.failure} (the self-test took ${report.durationMs} ms)`;
  } catch (err) {
    cause = err;
    problem = `could not run Sledge's DynamoDB transaction self-test: ${(err as Error).message ?? String(err)}`;
  }
  if (allowUnsafe) {
    const bar = 'WARNING ' + '*'.repeat(88);
    warn(
      [
        bar,
        `WARNING  ${ALLOW_UNSAFE_ENDPOINT_ENV}=1: using the AWS endpoint ${endpointUrl}, which ${problem}.`,
        `WARNING  On this endpoint ${UNSAFE_RISK}.`,
        'WARNING  Use it with one writer per volume at most, and keep nothing on it you need to read back.',
        bar,
      ].join('\n'),
    );
    return report;
  }
  throw new UnsafeEndpointError(
    [
      `the AWS endpoint ${endpointUrl} ${problem}.`,
      `Sledge commits every write as a conditional DynamoDB transaction, so on this endpoint ${UNSAFE_RISK}. ` +
        'Plain `moto_server` behaves like this; Sledge refuses it.',
      SAFE_ENDPOINTS,
      `To use this endpoint anyway, at that risk, set ${ALLOW_UNSAFE_ENDPOINT_ENV}=1.`,
    ].join('\n'),
    report,
    cause === undefined ? undefined : { cause },
  );
}

export interface SelfTestOptions {
  /** Rounds to run at most; the test stops after the first round that finds a write lost. */
  rounds?: number;
  /** Writers per round that commit, each to its own item. */
  committers?: number;
  /** Writers per round whose transactions a condition cancels. */
  cancellers?: number;
  /** Cancelled transactions each canceller sends per round, one after another. */
  cancelledPerCanceller?: number;
  /**
   * Bound on the transactions each committer sends per round, one after another. A committer
   * keeps committing while the cancellers run, and sends one at least.
   */
  commitsPerCommitterMax?: number;
  /** Items of the second table that each cancelled transaction also checks (at most 98: a transaction holds 100 items). */
  slowChecks?: number;
  /** Number elements in the list item of the second table. */
  ballastElements?: number;
  /** Bound on each request to the endpoint. */
  requestTimeoutMs?: number;
}

export interface SelfTestReport {
  /** True when no round lost a committed write or applied a cancelled one. */
  isolated: boolean;
  /** Rounds run (fewer than asked when a round failed). */
  rounds: number;
  /** Committed transactions acknowledged. */
  committed: number;
  /** Acknowledged commits whose write was found reverted. */
  lostWrites: number;
  /** Transactions cancelled by their condition, as they should be. */
  cancelled: number;
  /** Writes of cancelled transactions that were nevertheless found applied. */
  appliedCancelledWrites: number;
  /** Transactions whose condition was false that committed anyway. */
  uncancelled: number;
  /** Transactions that failed with an error other than their cancellation (they count as unacknowledged). */
  errors: number;
  durationMs: number;
  /** What went wrong, in a sentence, when `isolated` is false. */
  failure?: string;
}

/**
 * Measured on a 2-core machine (docs/local-endpoint.md): a freshly started plain moto_server
 * loses commits in the first round 20 times in 20, and one that has served for a while in the
 * first round about 19 times in 20; five rounds leave a wide margin. On the bundled endpoint a
 * round costs about 0.1 s.
 */
export const DEFAULTS: Required<SelfTestOptions> = {
  rounds: 5,
  committers: 4,
  cancellers: 1,
  cancelledPerCanceller: 1,
  commitsPerCommitterMax: 50,
  slowChecks: 10,
  ballastElements: 5000,
  requestTimeoutMs: 10_000,
};

/** How long a new scratch table may take to become ACTIVE (seconds on AWS, at once locally). */
const TABLE_ACTIVE_TIMEOUT_MS = 60_000;
const TABLE_POLL_INTERVAL_MS = 200;
/** Batch requests whose items the endpoint leaves unprocessed (throttling, on AWS) are sent again this many times at most. */
const BATCH_ATTEMPTS_MAX = 10;
const BATCH_BACKOFF_MS = 50;

const S = (s: string): AttributeValue => ({ S: s });
const N = (n: number): AttributeValue => ({ N: String(n) });

/**
 * Runs the isolation self-test against the DynamoDB at `endpointUrl` in two scratch tables,
 * which it deletes afterwards. Resolves with what it found; rejects only when the endpoint
 * cannot run it at all (no DynamoDB, a table that never becomes ACTIVE, every commit failing).
 */
export async function selfTestIsolation(endpointUrl: string, options: SelfTestOptions = {}): Promise<SelfTestReport> {
  const o = { ...DEFAULTS, ...options };
  if (o.slowChecks + 2 > 100) throw new RangeError(`slowChecks ${o.slowChecks} makes a transaction of more than 100 items`);
  const started = performance.now();
  const client = new DynamoDBClient({
    endpoint: endpointUrl,
    region: process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1',
    // The endpoint's own test credentials unless the environment has some; local endpoints ignore them.
    ...(process.env.AWS_ACCESS_KEY_ID && process.env.AWS_SECRET_ACCESS_KEY ? {} : { credentials: { accessKeyId: 'test', secretAccessKey: 'test' } }),
    // One attempt: the report must know whether each transaction was acknowledged.
    maxAttempts: 1,
    requestHandler: { requestTimeout: o.requestTimeoutMs, connectionTimeout: o.requestTimeoutMs },
  });
  const name = `sledge-endpoint-check-${randomBytes(6).toString('hex')}`;
  // The writes race in the first table. The second only makes a transaction that names it
  // slow on an emulator that copies whole tables (see the cancelled transactions below).
  const table = `${name}-writes`;
  const slowTable = `${name}-slow`;
  const report: SelfTestReport = {
    isolated: true,
    rounds: 0,
    committed: 0,
    lostWrites: 0,
    cancelled: 0,
    appliedCancelledWrites: 0,
    uncancelled: 0,
    errors: 0,
    durationMs: 0,
  };
  const created: string[] = [];
  try {
    for (const t of [table, slowTable]) {
      await client.send(
        new CreateTableCommand({
          TableName: t,
          KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
          AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
          BillingMode: 'PAY_PER_REQUEST',
        }),
      );
      created.push(t);
    }
    for (const t of created) await waitUntilActive(client, t);

    // Each committer adds 1 to its own counter per commit, so a reverted commit stays visible
    // (the counter falls short of the acknowledgements) even after later commits succeed.
    const committerKeys = Array.from({ length: o.committers }, (_, i) => `commit-${i}`);
    const acknowledged = committerKeys.map(() => 0);
    const cancelKeys = Array.from({ length: o.cancellers }, (_, c) => `cancel-${c}`);
    const slowKeys = Array.from({ length: o.slowChecks }, (_, j) => `slow-${j}`);
    // Every item written exists beforehand: an emulator's table then keeps its size while the
    // transactions run, so that its copies are taken rather than failing outright.
    await putItems(client, table, [...committerKeys.map((key) => ({ pk: S(key), commits: N(0) })), ...cancelKeys.map((key) => ({ pk: S(key), round: N(0) }))]);
    await putItems(client, slowTable, [
      ...slowKeys.map((key) => ({ pk: S(key) })),
      { pk: S('ballast'), list: { L: Array.from({ length: o.ballastElements }, (_, i) => N(i)) } },
    ]);

    for (let round = 1; round <= o.rounds; round++) {
      report.rounds = round;
      let cancellersRunning = o.cancellers;
      // Committing goes on as long as a cancelled transaction may be running, so that commits
      // land whenever an emulator is between its backup and its restore.
      const commitLoop = async (i: number): Promise<void> => {
        for (let t = 0; t < o.commitsPerCommitterMax && (t === 0 || cancellersRunning > 0); t++) {
          try {
            await client.send(
              new TransactWriteItemsCommand({
                TransactItems: [{ Update: { TableName: table, Key: { pk: S(committerKeys[i]!) }, UpdateExpression: 'ADD commits :one', ExpressionAttributeValues: { ':one': N(1) } } }],
              }),
            );
            acknowledged[i]!++;
            report.committed++;
          } catch {
            // The write may or may not have happened: it may raise the counter, never lower it.
            report.errors++;
          }
        }
      };
      // Each cancelled transaction puts an item and fails a condition in the first table, then
      // checks items of the second, whose conditions hold. Nothing of it may take effect, nor
      // undo anything else. An emulator that backs up every table a transaction names, item by
      // item, and puts the backups back on cancellation takes its backup of the first table
      // before spending a while on the second: commits landing meanwhile are what it erases.
      const cancelLoop = async (c: number): Promise<void> => {
        for (let t = 0; t < o.cancelledPerCanceller; t++) {
          try {
            await client.send(
              new TransactWriteItemsCommand({
                TransactItems: [
                  { Put: { TableName: table, Item: { pk: S(cancelKeys[c]!), round: N(round) } } },
                  { ConditionCheck: { TableName: table, Key: { pk: S('never-written') }, ConditionExpression: 'attribute_exists(pk)' } },
                  ...slowKeys.map((key) => ({ ConditionCheck: { TableName: slowTable, Key: { pk: S(key) }, ConditionExpression: 'attribute_exists(pk)' } })),
                ],
              }),
            );
            report.uncancelled++;
          } catch (err) {
            if ((err as Error).name === 'TransactionCanceledException') report.cancelled++;
            else report.errors++;
          }
        }
        cancellersRunning--;
      };
      await Promise.all([...cancelKeys.map((_, c) => cancelLoop(c)), ...committerKeys.map((_, i) => commitLoop(i))]);

      const found = await readItems(client, table, [...committerKeys, ...cancelKeys]);
      report.lostWrites = 0;
      committerKeys.forEach((key, i) => {
        const commits = Number(found.get(key)?.commits?.N ?? 0);
        report.lostWrites += Math.max(0, acknowledged[i]! - commits);
      });
      // A transaction that failed with an error rather than its cancellation may have been
      // applied, so only rounds where every cancelled transaction was cancelled are checked.
      if (report.uncancelled === 0) report.appliedCancelledWrites = cancelKeys.filter((key) => found.get(key)?.round?.N !== '0').length;
      if (report.lostWrites > 0 || report.appliedCancelledWrites > 0 || report.uncancelled > 0) break;
    }
  } finally {
    for (const t of created) {
      await client.send(new DeleteTableCommand({ TableName: t })).catch((err: Error) => {
        console.warn(`warning: could not delete the endpoint self-test's scratch table ${t}: ${err.message}`);
      });
    }
    client.destroy();
  }
  report.durationMs = Math.round(performance.now() - started);
  if (report.committed === 0) {
    throw new Error(`no committing transaction of the endpoint self-test succeeded (${report.errors} failed), so it proved nothing`);
  }
  report.failure = describeFailure(report);
  report.isolated = report.failure === undefined;
  return report;
}

function describeFailure(r: SelfTestReport): string | undefined {
  const parts: string[] = [];
  if (r.lostWrites > 0) parts.push(`${r.lostWrites} of ${r.committed} acknowledged commits were undone by ${r.cancelled} concurrent cancelled transaction${r.cancelled === 1 ? '' : 's'}`);
  if (r.appliedCancelledWrites > 0) parts.push(`${r.appliedCancelledWrites} write(s) of cancelled transactions took effect`);
  if (r.uncancelled > 0) parts.push(`${r.uncancelled} transaction(s) whose condition was false committed anyway`);
  if (parts.length === 0) return undefined;
  return `in round ${r.rounds} of its self-test, ${parts.join('; ')}`;
}

async function waitUntilActive(client: DynamoDBClient, table: string): Promise<void> {
  const deadline = Date.now() + TABLE_ACTIVE_TIMEOUT_MS;
  for (;;) {
    const { Table } = await client.send(new DescribeTableCommand({ TableName: table }));
    if (Table?.TableStatus === 'ACTIVE') return;
    if (Date.now() > deadline) throw new Error(`the self-test's scratch table ${table} was not ACTIVE within ${TABLE_ACTIVE_TIMEOUT_MS / 1000} s (status ${Table?.TableStatus})`);
    await new Promise((resolve) => setTimeout(resolve, TABLE_POLL_INTERVAL_MS));
  }
}

/** BatchWriteItem of 25 items at a time, with unprocessed items sent again a bounded number of times. */
async function putItems(client: DynamoDBClient, table: string, items: Array<Record<string, AttributeValue>>): Promise<void> {
  const BATCH_ITEMS_MAX = 25;
  for (let start = 0; start < items.length; start += BATCH_ITEMS_MAX) {
    let pending = items.slice(start, start + BATCH_ITEMS_MAX).map((Item) => ({ PutRequest: { Item } }));
    for (let attempt = 0; pending.length > 0; attempt++) {
      if (attempt === BATCH_ATTEMPTS_MAX) throw new Error(`the endpoint left ${pending.length} item(s) of the self-test's table unprocessed ${BATCH_ATTEMPTS_MAX} times`);
      if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, BATCH_BACKOFF_MS * attempt));
      const out = await client.send(new BatchWriteItemCommand({ RequestItems: { [table]: pending } }));
      pending = (out.UnprocessedItems?.[table] ?? []).flatMap((r) => (r.PutRequest?.Item ? [{ PutRequest: { Item: r.PutRequest.Item } }] : []));
    }
  }
}

/** BatchGetItem of up to 100 keys at a time, consistent, with unprocessed keys asked again a bounded number of times. */
async function readItems(client: DynamoDBClient, table: string, keys: string[]): Promise<Map<string, Record<string, AttributeValue>>> {
  const found = new Map<string, Record<string, AttributeValue>>();
  const BATCH_KEYS_MAX = 100;
  for (let start = 0; start < keys.length; start += BATCH_KEYS_MAX) {
    let pending: Array<Record<string, AttributeValue>> = keys.slice(start, start + BATCH_KEYS_MAX).map((k) => ({ pk: S(k) }));
    for (let attempt = 0; pending.length > 0; attempt++) {
      if (attempt === BATCH_ATTEMPTS_MAX) throw new Error(`the endpoint left ${pending.length} key(s) of the self-test's table unprocessed ${BATCH_ATTEMPTS_MAX} times`);
      if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, BATCH_BACKOFF_MS * attempt));
      const out = await client.send(new BatchGetItemCommand({ RequestItems: { [table]: { Keys: pending, ConsistentRead: true } } }));
      for (const item of out.Responses?.[table] ?? []) found.set(item.pk!.S!, item);
      pending = out.UnprocessedKeys?.[table]?.Keys ?? [];
    }
  }
  return found;
}
