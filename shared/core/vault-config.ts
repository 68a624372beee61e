/**
 * Where the vault is (docs/backup.md): its own endpoint or region, its bucket and its catalog
 * table. Read lazily, once, like `config()`; a deployment without a vault answers 503 on the
 * backup routes and names the variables.
 */
import { ConfigError } from './config.ts';

export const VAULT_ENV = {
  /** Optional: the vault's AWS endpoint (locally its own endpoint process). Default: the region's. */
  endpointUrl: 'SLEDGE_VAULT_ENDPOINT_URL',
  /** Optional: the vault's region. Default: AWS_REGION. */
  region: 'SLEDGE_VAULT_REGION',
  /** The bucket the packs go to. */
  bucket: 'SLEDGE_VAULT_BUCKET',
  /** The catalog table: backups, pack records, restores. */
  table: 'SLEDGE_VAULT_TABLE',
  /** Optional: this deployment's name as a restoring site. Default: its Volumes table at its endpoint or region. */
  site: 'SLEDGE_SITE',
  /** Optional: data bytes per pack, a multiple of 64 KiB from 64 KiB to 64 MiB. Default 16 MiB. Tests set less to make many packs. */
  packBytes: 'SLEDGE_BACKUP_PACK_BYTES',
  /** Optional: bytes one restore message writes before it queues the next, at least 1 MiB. Default 256 MiB. Tests set less. */
  restoreBytesPerMessage: 'SLEDGE_RESTORE_BYTES_PER_MESSAGE',
} as const;

export const DEFAULT_RESTORE_BYTES_PER_MESSAGE = 256 * 1024 * 1024;

export const DEFAULT_PACK_BYTES = 16 * 1024 * 1024;

/** The names the local vault and the vault stack use by default. */
export const DEFAULT_VAULT_BUCKET = 'sledge-vault-packs';
export const DEFAULT_VAULT_TABLE = 'SledgeVaultCatalog';

export interface VaultConfig {
  endpointUrl: string | undefined;
  region: string;
  bucket: string;
  table: string;
  site: string;
  packBytes: number;
  restoreBytesPerMessage: number;
}

let cached: VaultConfig | undefined;

/** Whether this deployment has a vault at all (its bucket and table are named). */
export function hasVault(): boolean {
  return Boolean(process.env[VAULT_ENV.bucket] && process.env[VAULT_ENV.table]);
}

export function vaultConfig(): VaultConfig {
  if (cached) return cached;
  const bucket = process.env[VAULT_ENV.bucket];
  const table = process.env[VAULT_ENV.table];
  if (!bucket || !table) {
    throw new ConfigError(`no vault: set ${VAULT_ENV.bucket} and ${VAULT_ENV.table} (and ${VAULT_ENV.endpointUrl} or ${VAULT_ENV.region}); \`npm start\` does`);
  }
  const region = process.env[VAULT_ENV.region] || process.env.AWS_REGION || 'us-east-1';
  const endpointUrl = process.env[VAULT_ENV.endpointUrl] || undefined;
  const primary = process.env.AWS_ENDPOINT_URL || region;
  const site = process.env[VAULT_ENV.site] || `${process.env.SLEDGE_VOLUMES_TABLE ?? 'volumes'}@${primary}`;
  const rawPack = process.env[VAULT_ENV.packBytes];
  const packBytes = rawPack ? Number(rawPack) : DEFAULT_PACK_BYTES;
  if (!Number.isSafeInteger(packBytes) || packBytes < 65536 || packBytes > 64 * 1024 * 1024 || packBytes % 65536 !== 0) {
    throw new ConfigError(`${VAULT_ENV.packBytes} must be a multiple of 65536 from 65536 to 67108864, got ${JSON.stringify(rawPack)}`);
  }
  const rawRestore = process.env[VAULT_ENV.restoreBytesPerMessage];
  const restoreBytesPerMessage = rawRestore ? Number(rawRestore) : DEFAULT_RESTORE_BYTES_PER_MESSAGE;
  if (!Number.isSafeInteger(restoreBytesPerMessage) || restoreBytesPerMessage < 1024 * 1024) {
    throw new ConfigError(`${VAULT_ENV.restoreBytesPerMessage} must be an integer of at least 1048576, got ${JSON.stringify(rawRestore)}`);
  }
  cached = { endpointUrl, region, bucket, table, site, packBytes, restoreBytesPerMessage };
  return cached;
}
