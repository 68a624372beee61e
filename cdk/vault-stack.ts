/**
 * The vault (docs/backup.md): where one Sledge deployment's backups go, deployable to another
 * region or account than the deployment itself.
 *
 * - `Packs`: the bucket of pack objects, encrypted with the vault's own KMS key, TLS only,
 *   public access blocked, server access logs in `AccessLogs`. Its policy lets only the
 *   primary's backup role write or delete (every other principal is denied, whatever its IAM
 *   policies say) and the restoring sites' roles read.
 * - `Catalog`: the table of backup, pack and restore records (`pk`, `sk`), encrypted with the
 *   same key, point-in-time recovery on, with a resource policy giving the same roles access.
 * - `VaultKey`: the KMS key, rotated yearly, usable by those roles only (and administered by
 *   the account).
 *
 * The primary's backup role is its worker role, passed as an ARN (`backupRoleArn`): the vault
 * is usually another stack in another region or account, so no construct reference can cross.
 * Locally, local/vault.ts makes the same bucket and table on the vault's endpoint process.
 */
import { CfnOutput, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';
import { acknowledge } from './function.ts';

/** Construct IDs: a contract, as the primary stack's (renaming one replaces the resource). */
export const VAULT_CONSTRUCT_IDS = {
  key: 'VaultKey',
  packs: 'Packs',
  accessLogs: 'AccessLogs',
  catalog: 'Catalog',
} as const;

export interface SledgeVaultStackProps extends StackProps {
  /** The primary deployment's backup role (its worker role): the only principal that may write packs. */
  backupRoleArn: string;
  /** Roles of sites that restore from the vault (a second deployment's worker and head roles). Default none. */
  restoreRoleArns?: string[];
  /** Default RETAIN: a vault that goes with its stack is no vault. */
  dataRemovalPolicy?: RemovalPolicy;
}

const CATALOG_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:Query',
  'dynamodb:BatchGetItem',
  'dynamodb:DescribeTable',
];

export class SledgeVaultStack extends Stack {
  readonly key: kms.Key;
  readonly packs: s3.Bucket;
  readonly catalog: dynamodb.Table;

  constructor(scope: Construct, id: string, props: SledgeVaultStackProps) {
    super(scope, id, props);
    const removalPolicy = props.dataRemovalPolicy ?? RemovalPolicy.RETAIN;
    const backup = new iam.ArnPrincipal(props.backupRoleArn);
    const restorers = (props.restoreRoleArns ?? []).map((arn) => new iam.ArnPrincipal(arn));
    const users = [backup, ...restorers];
    const userArns = [props.backupRoleArn, ...(props.restoreRoleArns ?? [])];

    this.key = new kms.Key(this, VAULT_CONSTRUCT_IDS.key, {
      description: 'Sledge vault: packs and catalog',
      enableKeyRotation: true,
      removalPolicy,
    });
    this.key.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'VaultRolesUseTheKey',
        principals: users,
        actions: ['kms:Encrypt', 'kms:Decrypt', 'kms:GenerateDataKey*', 'kms:DescribeKey', 'kms:ReEncrypt*'],
        resources: ['*'],
      }),
    );

    const accessLogs = new s3.Bucket(this, VAULT_CONSTRUCT_IDS.accessLogs, {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      // Server access logging delivers only to SSE-S3 buckets.
      encryption: s3.BucketEncryption.S3_MANAGED,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      lifecycleRules: [{ id: 'ExpireAccessLogs', expiration: Duration.days(365) }],
      removalPolicy,
    });
    acknowledge(accessLogs, 'AwsSolutions-S1', "This is the vault's server access log bucket; logging its own accesses into itself would loop.");

    this.packs = new s3.Bucket(this, VAULT_CONSTRUCT_IDS.packs, {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      encryption: s3.BucketEncryption.KMS,
      encryptionKey: this.key,
      bucketKeyEnabled: true,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      serverAccessLogsBucket: accessLogs,
      serverAccessLogsPrefix: 'packs/',
      lifecycleRules: [{ id: 'AbortIncompleteMultipartUploads', abortIncompleteMultipartUploadAfter: Duration.days(1) }],
      removalPolicy,
    });
    this.packs.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'OnlyTheBackupRoleWrites',
        effect: iam.Effect.DENY,
        principals: [new iam.AnyPrincipal()],
        actions: ['s3:PutObject', 's3:DeleteObject'],
        resources: [this.packs.arnForObjects('*')],
        conditions: { ArnNotEquals: { 'aws:PrincipalArn': props.backupRoleArn } },
      }),
    );
    this.packs.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'BackupRoleWrites',
        principals: [backup],
        actions: ['s3:PutObject', 's3:GetObject', 's3:DeleteObject'],
        resources: [this.packs.arnForObjects('*')],
      }),
    );
    this.packs.addToResourcePolicy(
      new iam.PolicyStatement({ sid: 'VaultRolesList', principals: users, actions: ['s3:ListBucket'], resources: [this.packs.bucketArn] }),
    );
    if (restorers.length > 0) {
      this.packs.addToResourcePolicy(
        new iam.PolicyStatement({ sid: 'RestoringSitesRead', principals: restorers, actions: ['s3:GetObject'], resources: [this.packs.arnForObjects('*')] }),
      );
    }

    this.catalog = new dynamodb.Table(this, VAULT_CONSTRUCT_IDS.catalog, {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.CUSTOMER_MANAGED,
      encryptionKey: this.key,
      deletionProtection: removalPolicy === RemovalPolicy.RETAIN,
      removalPolicy,
      resourcePolicy: new iam.PolicyDocument({
        statements: [
          new iam.PolicyStatement({ sid: 'VaultRolesUseTheCatalog', principals: users, actions: CATALOG_ACTIONS, resources: ['*'] }),
        ],
      }),
    });

    new CfnOutput(this, 'PacksBucket', { value: this.packs.bucketName, description: 'SLEDGE_VAULT_BUCKET' });
    new CfnOutput(this, 'CatalogTable', { value: this.catalog.tableName, description: 'SLEDGE_VAULT_TABLE' });
    new CfnOutput(this, 'VaultRegion', { value: this.region, description: 'SLEDGE_VAULT_REGION' });
    new CfnOutput(this, 'VaultUsers', { value: userArns.join(','), description: 'The roles the vault lets in' });
  }
}
