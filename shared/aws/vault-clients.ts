/**
 * The vault's AWS clients (docs/backup.md): separate from the primary's (shared/aws/clients.ts),
 * pointed at the vault's endpoint or region, so nothing the backup code does can land in the
 * primary's buckets or tables by accident, nor the other way round.
 *
 * They count their own requests (`vaultRequestCounts`), so a benchmark can tell what a backup
 * cost at the vault from what it cost at the primary.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { S3Client } from '@aws-sdk/client-s3';
import { vaultConfig } from '../core/vault-config.ts';

const counts: Record<string, number> = {};
let bytesSent = 0;

/** `VaultS3:PutObject` -> requests sent (retries included), and the request body bytes sent to the vault. */
export function vaultRequestCounts(): { requests: Record<string, number>; bytesSent: number } {
  return { requests: { ...counts }, bytesSent };
}

export function resetVaultRequestCounts(): void {
  for (const key of Object.keys(counts)) delete counts[key];
  bytesSent = 0;
}

type Next = (args: unknown) => Promise<unknown>;
interface StackLike {
  add(mw: (next: Next, context: { commandName?: string }) => Next, opts: { step: 'finalizeRequest' | 'build'; name: string }): void;
}

function counted<C extends S3Client | DynamoDBClient>(client: C, service: string): C {
  const stack = client.middlewareStack as unknown as StackLike;
  stack.add(
    (next, context) => async (args) => {
      const key = `${service}:${String(context.commandName ?? 'unknown').replace(/Command$/, '')}`;
      counts[key] = (counts[key] ?? 0) + 1;
      const body = (args as { request?: { body?: unknown } }).request?.body;
      if (body instanceof Uint8Array) bytesSent += body.byteLength;
      else if (typeof body === 'string') bytesSent += Buffer.byteLength(body);
      try {
        return await next(args);
      } catch (err) {
        if (typeof err === 'object' && err !== null) fromVault.add(err);
        throw err;
      }
    },
    { step: 'finalizeRequest', name: 'sledgeVaultCounter' },
  );
  return client;
}

/** Errors thrown by a request to the vault (any attempt), to tell them from the primary's. */
const fromVault = new WeakSet<object>();

/**
 * Whether `err` is a vault request that got no usable answer: no response at all (refused
 * connection, timeout, reset) or a 5xx, after the SDK's own retries. A refusal the vault
 * answered (a failed condition, a missing key) is not.
 */
export function isVaultUnreachable(err: unknown): boolean {
  if (typeof err !== 'object' || err === null || !fromVault.has(err)) return false;
  const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  return status === undefined || status >= 500;
}

/** The vault as an error message names it. */
export function describeVault(): string {
  const c = vaultConfig();
  return `catalog ${c.table} / bucket ${c.bucket} at ${c.endpointUrl ?? c.region}`;
}

let s3Client: S3Client | undefined;
let dynamoClient: DynamoDBClient | undefined;

function common(): { region: string; endpoint?: string } {
  const c = vaultConfig();
  return { region: c.region, ...(c.endpointUrl ? { endpoint: c.endpointUrl } : {}) };
}

export function vaultS3(): S3Client {
  return (s3Client ??= counted(
    new S3Client({
      ...common(),
      forcePathStyle: true,
      maxAttempts: 3,
      requestHandler: { requestTimeout: 30_000, connectionTimeout: 3_000 },
      // Pack PUTs carry their own CRC-32C; the SDK need not compute another.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    }),
    'VaultS3',
  ));
}

export function vaultDynamo(): DynamoDBClient {
  return (dynamoClient ??= counted(
    new DynamoDBClient({ ...common(), maxAttempts: 3, requestHandler: { requestTimeout: 10_000, connectionTimeout: 3_000 } }),
    'VaultDynamoDB',
  ));
}
