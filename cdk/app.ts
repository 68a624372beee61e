/**
 * The CDK app: `npx cdk synth`, `npx cdk deploy`.
 *
 * Context (`-c key=value`, or `context` in cdk.json):
 * - `stackName`: the stack's name. Default `Sledge`.
 * - `sledCount`: how many sleds (S3 buckets). Default 8 (see `SledgeStackProps.sledCount`).
 * - `apiIamAuthorization`: `false` to turn off IAM authorization (SigV4) on the API, the explicit
 *   opt-out of docs/security.md. Default `true`: every request must be signed.
 * - `encryptionKey`: `customer` to encrypt the sleds, tables and queues with a customer managed
 *   KMS key the stack creates (see `SledgeStackProps.encryptionKey`). Default `aws-managed`.
 * - `vaultBackupRoleArn` (with `vaultRegion`, `vaultRestoreRoleArns`): also synthesize the vault
 *   stack `<stackName>Vault` (cdk/vault-stack.ts, docs/backup.md).
 * - `sledge:skipBundling`: `true` to skip esbuild bundling, for a fast synth whose templates
 *   are right but whose function code is the whole project directory (never deploy that).
 *   The CLI refuses `-c aws:...` keys and sets `aws:cdk:bundling-stacks` itself, so this flag
 *   sets that context inside the app, after the CLI's. In-process apps (tests,
 *   `local/stack.ts`) pass `aws:cdk:bundling-stacks: []` in `new App({ context })` directly.
 *
 * Without the CLI, `CDK_OUTDIR=out CDK_CONTEXT_JSON='{"sledge:skipBundling":true}' npx tsx
 * cdk/app.ts` synthesizes the same template (scripts/cfn-lint.sh does this).
 *
 * The stack is environment-agnostic (no account or region), so synth needs no credentials
 * and no network. Version reporting is off (`versionReporting: false` in cdk.json and
 * `analyticsReporting` defaulting to false on the stack).
 */
import { App } from 'aws-cdk-lib';
import { cdkJsonContext } from './contract.ts';
import { SledgeStack } from './stack.ts';
import { SledgeVaultStack } from './vault-stack.ts';

const BUNDLING_STACKS_CONTEXT = 'aws:cdk:bundling-stacks';

// The CLI already passes cdk.json's context (and its own wins over `props.context`); passing
// it here too keeps `npx tsx cdk/app.ts` without the CLI synthesizing the same template.
const app = new App({ context: cdkJsonContext() });

function contextFlag(key: string): boolean {
  const value: unknown = app.node.tryGetContext(key);
  return value === true || value === 'true' || value === '1';
}

function contextFalse(key: string): boolean {
  const value: unknown = app.node.tryGetContext(key);
  return value === false || value === 'false' || value === '0';
}

function contextInteger(key: string): number | undefined {
  const value: unknown = app.node.tryGetContext(key);
  if (value === undefined) return undefined;
  const parsed = typeof value === 'number' ? value : Number(String(value));
  if (!Number.isInteger(parsed)) throw new Error(`context ${key}=${String(value)} is not an integer`);
  return parsed;
}

if (contextFlag('sledge:skipBundling')) {
  // Allowed because the app has no children yet.
  app.node.setContext(BUNDLING_STACKS_CONTEXT, []);
}

const stackName = String(app.node.tryGetContext('stackName') ?? 'Sledge');
const sledCount = contextInteger('sledCount');
const foldTailMax = contextInteger('foldTailMax');
const encryptionKey = String(app.node.tryGetContext('encryptionKey') ?? 'aws-managed');
if (encryptionKey !== 'aws-managed' && encryptionKey !== 'customer') {
  throw new Error(`context encryptionKey=${encryptionKey} must be aws-managed or customer`);
}

// The vault this deployment backs up to (docs/backup.md): `-c vaultBucket=... -c vaultTable=...
// -c vaultRegion=... -c vaultKeyArn=...` (the vault stack's outputs; `-c vaultAccount=...` for another account).
const vaultBucket = app.node.tryGetContext('vaultBucket') as string | undefined;
const vault = vaultBucket
  ? {
      bucketName: vaultBucket,
      tableName: String(app.node.tryGetContext('vaultTable')),
      region: String(app.node.tryGetContext('vaultRegion')),
      keyArn: String(app.node.tryGetContext('vaultKeyArn')),
      ...(app.node.tryGetContext('vaultAccount') ? { account: String(app.node.tryGetContext('vaultAccount')) } : {}),
    }
  : undefined;

new SledgeStack(app, stackName, {
  description: 'Sledge: serverless block storage (volumes on S3 sleds, page map in DynamoDB, heads on Lambda)',
  ...(sledCount !== undefined ? { sledCount } : {}),
  ...(foldTailMax !== undefined ? { foldTailMax } : {}),
  apiIamAuthorization: !contextFalse('apiIamAuthorization'),
  encryptionKey,
  ...(vault ? { vault } : {}),
});

// The vault (docs/backup.md), when the primary's backup role is named: `-c vaultBackupRoleArn=arn:...`
// (the deployed primary's worker role), `-c vaultRegion=...` for another region,
// `-c vaultRestoreRoleArns=arn1,arn2` for the roles of sites that restore from it.
const vaultBackupRoleArn = app.node.tryGetContext('vaultBackupRoleArn') as string | undefined;
if (vaultBackupRoleArn) {
  const vaultRegion = app.node.tryGetContext('vaultRegion') as string | undefined;
  const restorers = String(app.node.tryGetContext('vaultRestoreRoleArns') ?? '')
    .split(',')
    .filter(Boolean);
  new SledgeVaultStack(app, `${stackName}Vault`, {
    description: 'Sledge vault: incremental backups of one Sledge deployment',
    backupRoleArn: vaultBackupRoleArn,
    restoreRoleArns: restorers,
    ...(vaultRegion ? { env: { region: vaultRegion } } : {}),
  });
}

app.synth();
