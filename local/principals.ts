/**
 * The local principals: three IAM users the local API Gateway stand-in knows, an operator and
 * two tenants, each with an access key, written to an AWS shared credentials file so that the
 * CLI, curl and the SDK use them the way they use real credentials:
 *
 *   [sledge-operator]   arn:aws:iam::123456789012:user/sledge-operator  (may call every route)
 *   [sledge-tenant-a]   arn:aws:iam::123456789012:user/sledge-tenant-a  (its own volumes only)
 *   [sledge-tenant-b]   arn:aws:iam::123456789012:user/sledge-tenant-b
 *
 * The keys are random. A file that already holds the three profiles is reused (so a restart of
 * `npm start` keeps working shells working); otherwise new keys are written, mode 0600.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { LocalPrincipal } from './iam-auth.ts';

/** The variable naming the local principals' credentials file (local/control-plane.ts, `credentialsFile`). */
export const LOCAL_CREDENTIALS_ENV = 'SLEDGE_LOCAL_CREDENTIALS_FILE';
/** The variable naming the local audit log (local/control-plane.ts, `auditLog`). */
export const LOCAL_AUDIT_LOG_ENV = 'SLEDGE_LOCAL_AUDIT_LOG';

/** The account the stand-in reports (as local/http-adapter.ts's `requestContext.accountId`). */
export const LOCAL_ACCOUNT_ID = '123456789012';

export const PROFILES = {
  operator: 'sledge-operator',
  tenantA: 'sledge-tenant-a',
  tenantB: 'sledge-tenant-b',
} as const;

export type ProfileName = (typeof PROFILES)[keyof typeof PROFILES];

export interface LocalPrincipals {
  /** By profile name. */
  byProfile: Record<ProfileName, LocalPrincipal>;
  /** The operators' ARNs (what the head gets in SLEDGE_OPERATOR_PRINCIPALS). */
  operatorArns: string[];
  /** Where the credentials were written, if they were. */
  credentialsFile?: string;
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function randomId(prefix: string, length: number): string {
  const bytes = randomBytes(length);
  let out = prefix;
  for (const b of bytes) out += BASE32[b % 32];
  return out;
}

function newPrincipal(userName: string, keys?: { accessKeyId: string; secretAccessKey: string }): LocalPrincipal {
  return {
    accessKeyId: keys?.accessKeyId ?? randomId('AKIA', 16),
    secretAccessKey: keys?.secretAccessKey ?? randomBytes(30).toString('base64'),
    userArn: `arn:aws:iam::${LOCAL_ACCOUNT_ID}:user/${userName}`,
    // A user's unique id is stable; derived from the name so a reused file gives the same one.
    userId: `AIDA${Buffer.from(userName).toString('hex').toUpperCase().slice(0, 17).padEnd(17, 'X')}`,
    accountId: LOCAL_ACCOUNT_ID,
  };
}

/** The profiles of a shared credentials file (INI): name -> keys. */
export function parseCredentialsFile(text: string): Record<string, { accessKeyId?: string; secretAccessKey?: string }> {
  const out: Record<string, { accessKeyId?: string; secretAccessKey?: string }> = {};
  let current: { accessKeyId?: string; secretAccessKey?: string } | undefined;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = out[section[1]!.trim()] = {};
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 0) continue;
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    if (key === 'aws_access_key_id') current.accessKeyId = value;
    if (key === 'aws_secret_access_key') current.secretAccessKey = value;
  }
  return out;
}

/** The shared credentials file for `principals`. */
export function credentialsFileText(principals: Record<ProfileName, LocalPrincipal>): string {
  const lines = [
    '# Sledge local principals, written by `npm start` (local/principals.ts).',
    '# Use with: export AWS_SHARED_CREDENTIALS_FILE=<this file>; then --profile or AWS_PROFILE.',
  ];
  for (const [profile, p] of Object.entries(principals)) {
    lines.push('', `# ${p.userArn}`, `[${profile}]`, `aws_access_key_id = ${p.accessKeyId}`, `aws_secret_access_key = ${p.secretAccessKey}`);
  }
  return `${lines.join('\n')}\n`;
}

/**
 * The local principals, with the keys in `credentialsFile` when it already holds all three
 * profiles, else new ones (written there when a file is named).
 */
export function localPrincipals(credentialsFile?: string): LocalPrincipals {
  let existing: ReturnType<typeof parseCredentialsFile> = {};
  if (credentialsFile && existsSync(credentialsFile)) {
    try {
      existing = parseCredentialsFile(readFileSync(credentialsFile, 'utf8'));
    } catch {
      existing = {};
    }
  }
  const reusable = Object.values(PROFILES).every((name) => existing[name]?.accessKeyId && existing[name]?.secretAccessKey);
  const byProfile = Object.fromEntries(
    Object.values(PROFILES).map((name) => [name, newPrincipal(name, reusable ? (existing[name] as { accessKeyId: string; secretAccessKey: string }) : undefined)]),
  ) as Record<ProfileName, LocalPrincipal>;
  if (credentialsFile && !reusable) {
    mkdirSync(dirname(credentialsFile), { recursive: true, mode: 0o700 });
    writeFileSync(credentialsFile, credentialsFileText(byProfile), { mode: 0o600 });
    chmodSync(credentialsFile, 0o600);
  }
  return { byProfile, operatorArns: [byProfile[PROFILES.operator].userArn], ...(credentialsFile ? { credentialsFile } : {}) };
}
