import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, Validations } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { describe, expect, it } from 'vitest';
import { cdkJsonContext } from '../../cdk/contract.ts';
import { SledgeStack } from '../../cdk/stack.ts';
import { VAULT_ENV } from '#shared/core/vault-config.ts';
import { SledgeVaultStack, type SledgeVaultStackProps } from '../../cdk/vault-stack.ts';

/** The vault stack (cdk/vault-stack.ts, docs/backup.md): its bucket, key and catalog, who may write, and cdk-nag. */
const BACKUP_ROLE = 'arn:aws:iam::111111111111:role/Sledge-WorkerRole';
const RESTORE_ROLE = 'arn:aws:iam::222222222222:role/SledgeDr-WorkerRole';

function synthWithNag(props: SledgeVaultStackProps, extra?: (s: SledgeVaultStack) => void): { error?: Error; template?: Template; report: string } {
  const outdir = mkdtempSync(join(tmpdir(), 'sledge-vault-nag-'));
  try {
    const app = new App({ outdir, context: cdkJsonContext() });
    const stack = new SledgeVaultStack(app, 'SledgeVault', { ...props, env: { region: 'eu-west-1' } });
    extra?.(stack);
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    try {
      app.synth();
      return { template: Template.fromStack(stack), report: '' };
    } catch (error) {
      let report = '(no report)';
      try {
        report = readFileSync(join(outdir, 'validation-report.json'), 'utf8');
      } catch {}
      return { error: error as Error, report };
    }
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}

/** The catalog item actions the backup code uses (shared/backup): no Scan. */
const CATALOG_ITEM_ACTIONS = ['dynamodb:BatchGetItem', 'dynamodb:DeleteItem', 'dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:Query', 'dynamodb:UpdateItem'];

describe('SledgeVaultStack', () => {
  it("passes cdk-nag's AwsSolutions pack with zero errors", () => {
    const { error, report } = synthWithNag({ backupRoleArn: BACKUP_ROLE, restoreRoleArns: [RESTORE_ROLE] });
    expect(error, report).toBeUndefined();
  });

  it('is a live check: an unlogged bucket fails the synth', () => {
    const { error, report } = synthWithNag({ backupRoleArn: BACKUP_ROLE }, (s) => new s3.Bucket(s, 'Unlogged'));
    expect(error).toBeDefined();
    expect(`${error?.message} ${report}`).toMatch(/AwsSolutions-S1/);
  });

  it('encrypts with its own rotated key, requires TLS, and lets only the backup role write packs', () => {
    const { template } = synthWithNag({ backupRoleArn: BACKUP_ROLE, restoreRoleArns: [RESTORE_ROLE] });
    const t = template!;
    t.hasResourceProperties('AWS::KMS::Key', { EnableKeyRotation: true });
    t.hasResourceProperties('AWS::S3::Bucket', {
      BucketEncryption: { ServerSideEncryptionConfiguration: [Match.objectLike({ ServerSideEncryptionByDefault: Match.objectLike({ SSEAlgorithm: 'aws:kms' }) })] },
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
    });
    const policies = Object.values(t.findResources('AWS::S3::BucketPolicy')) as Array<{ Properties: { PolicyDocument: { Statement: any[] } } }>;
    const statements = policies.flatMap((p) => p.Properties.PolicyDocument.Statement);
    // TLS only, on both buckets.
    expect(statements.filter((s) => s.Effect === 'Deny' && s.Condition?.Bool?.['aws:SecureTransport'] === 'false').length).toBe(2);
    const onlyBackup = statements.find((s) => s.Sid === 'OnlyTheBackupRoleWrites');
    expect(onlyBackup).toMatchObject({ Effect: 'Deny', Principal: { AWS: '*' }, Condition: { ArnNotEquals: { 'aws:PrincipalArn': BACKUP_ROLE } } });
    expect([onlyBackup.Action].flat().sort()).toEqual(['s3:DeleteObject', 's3:PutObject']);
    const writes = statements.find((s) => s.Sid === 'BackupRoleWrites');
    expect(writes.Principal).toEqual({ AWS: BACKUP_ROLE });
    const reads = statements.find((s) => s.Sid === 'RestoringSitesRead');
    expect(reads.Principal).toEqual({ AWS: RESTORE_ROLE });
    expect([reads.Action].flat()).toEqual(['s3:GetObject']);
    t.hasResourceProperties('AWS::DynamoDB::Table', {
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      SSESpecification: Match.objectLike({ SSEEnabled: true, SSEType: 'KMS' }),
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      ResourcePolicy: Match.anyValue(),
    });
    // The catalog's users get the item actions the code uses, no Scan (listing is by Query).
    const table = Object.values(t.findResources('AWS::DynamoDB::Table'))[0] as { Properties: { ResourcePolicy: { PolicyDocument: { Statement: any[] } } } };
    const catalog = table.Properties.ResourcePolicy.PolicyDocument.Statement.find((st) => st.Sid === 'VaultRolesUseTheCatalog');
    expect([catalog.Action].flat().sort()).toEqual([...CATALOG_ITEM_ACTIONS, 'dynamodb:DescribeTable'].sort());
  });

  it('the primary stack, given the vault, passes its names to both functions and grants them its bucket, catalog and key; cdk-nag stays clean', () => {
    const outdir = mkdtempSync(join(tmpdir(), 'sledge-vault-primary-'));
    try {
      const app = new App({ outdir, context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': [] } });
      const vault = { bucketName: 'sledgevault-packs-x', tableName: 'SledgeVault-Catalog-x', region: 'eu-west-1', keyArn: 'arn:aws:kms:eu-west-1:111111111111:key/k' };
      const stack = new SledgeStack(app, 'Sledge', { vault });
      Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
      let error: Error | undefined;
      try {
        app.synth();
      } catch (e) {
        error = e as Error;
      }
      expect(error?.message).toBeUndefined();
      const t = Template.fromStack(stack);
      const fns = Object.values(t.findResources('AWS::Lambda::Function')).filter((f: any) => f.Properties.Environment?.Variables?.[VAULT_ENV.bucket]);
      expect(fns.length).toBe(2);
      for (const f of fns as any[]) {
        expect(f.Properties.Environment.Variables).toMatchObject({ [VAULT_ENV.bucket]: vault.bucketName, [VAULT_ENV.table]: vault.tableName, [VAULT_ENV.region]: vault.region });
      }
      const statements = Object.values(t.findResources('AWS::IAM::Policy')).flatMap((p: any) => p.Properties.PolicyDocument.Statement);
      const catalog = statements.filter((st: any) => JSON.stringify(st.Resource).includes(`table/${vault.tableName}`));
      expect(catalog.length).toBeGreaterThan(0);
      for (const st of catalog) expect([st.Action].flat().filter((a: string) => a !== 'dynamodb:DescribeTable').sort()).toEqual(CATALOG_ITEM_ACTIONS);
      expect(statements.some((st: any) => st.Resource === vault.keyArn)).toBe(true);
    } finally {
      rmSync(outdir, { recursive: true, force: true });
    }
  });
});
