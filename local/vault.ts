/**
 * The vault locally (docs/backup.md): a second bundled AWS endpoint process on its own port, so
 * that nothing at the vault can read the primary's state by accident, with the vault's bucket
 * and catalog table created on it. `SLEDGE_VAULT_ENDPOINT_URL` (or the `endpointUrl` option)
 * names an existing vault instead: a second control plane restoring from the first one's vault
 * (the disaster-recovery case) uses it, and creating the bucket and table again changes nothing.
 *
 * The vault's resources are the ones `SledgeVaultStack` (cdk/vault-stack.ts) defines: one bucket
 * and one table with a `pk`/`sk` key, made here with the SDK rather than deployed from that
 * stack's template (the stack's other resources, the key and the bucket policy, have no local
 * counterpart).
 */
import { CreateTableCommand, DescribeTableCommand, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { DEFAULT_VAULT_BUCKET, DEFAULT_VAULT_TABLE, VAULT_ENV } from '#shared/core/vault-config.ts';
import { startSeparateEndpoint } from './endpoint.ts';

export interface LocalVault {
  url: string;
  /** The process id of the vault endpoint when this call started it. */
  pid?: number;
  /** The variables that point the backup code at it. */
  env: Record<string, string>;
  stop(): Promise<void>;
}

export async function ensureVault(opts: { endpointUrl?: string } = {}): Promise<LocalVault> {
  const named = opts.endpointUrl ?? process.env[VAULT_ENV.endpointUrl];
  const started = named ? undefined : await startSeparateEndpoint(0);
  const url = (named ?? started!.url).replace(/\/+$/, '');
  try {
    await createResources(url);
  } catch (err) {
    await started?.stop();
    throw err;
  }
  return {
    url,
    ...(started?.pid !== undefined ? { pid: started.pid } : {}),
    env: { [VAULT_ENV.endpointUrl]: url, [VAULT_ENV.bucket]: DEFAULT_VAULT_BUCKET, [VAULT_ENV.table]: DEFAULT_VAULT_TABLE },
    stop: async () => {
      await started?.stop();
    },
  };
}

async function createResources(url: string): Promise<void> {
  const config = { endpoint: url, region: process.env.AWS_REGION || 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } };
  const s3 = new S3Client({ ...config, forcePathStyle: true });
  const dynamo = new DynamoDBClient(config);
  try {
    try {
      await s3.send(new CreateBucketCommand({ Bucket: DEFAULT_VAULT_BUCKET }));
    } catch (err) {
      if (!['BucketAlreadyOwnedByYou', 'BucketAlreadyExists'].includes((err as Error).name)) throw err;
    }
    try {
      await dynamo.send(
        new CreateTableCommand({
          TableName: DEFAULT_VAULT_TABLE,
          BillingMode: 'PAY_PER_REQUEST',
          AttributeDefinitions: [
            { AttributeName: 'pk', AttributeType: 'S' },
            { AttributeName: 'sk', AttributeType: 'S' },
          ],
          KeySchema: [
            { AttributeName: 'pk', KeyType: 'HASH' },
            { AttributeName: 'sk', KeyType: 'RANGE' },
          ],
        }),
      );
    } catch (err) {
      if ((err as Error).name !== 'ResourceInUseException') throw err;
    }
    await dynamo.send(new DescribeTableCommand({ TableName: DEFAULT_VAULT_TABLE }));
  } finally {
    s3.destroy();
    dynamo.destroy();
  }
}
