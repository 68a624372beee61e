/**
 * API Gateway's IAM authorization, for the local stand-in (local/http-adapter.ts): a request
 * must carry an AWS Signature Version 4 for the service `execute-api` made with the secret of a
 * known access key, or it is refused with 403 before the handler sees it. What is checked, as on
 * AWS:
 *
 * - the `Authorization` header: `AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/execute-api/aws4_request,
 *   SignedHeaders=..., Signature=...` (no header at all: `{"message":"Forbidden"}`);
 * - the credential scope: the API's region, the service `execute-api`, the date of `x-amz-date`;
 * - `x-amz-date` within 15 minutes of now (either way);
 * - the signed headers include `host` and `x-amz-date`, and every one of them is present;
 * - the body: its SHA-256 is the payload hash of the canonical request; an `x-amz-content-sha256`
 *   header, when sent, must equal it (a tampered body fails either way);
 * - the signature, recomputed with the AWS SDK's signer over the canonical request (method,
 *   path, query, the signed headers, the body's hash) with the key's secret;
 * - a session token (`x-amz-security-token`) must be the one issued with the key.
 *
 * On success the event gets `requestContext.authorizer.iam`, filled in as API Gateway fills it
 * for an IAM user (accessKey, accountId, callerId, userArn, userId, principalOrgId,
 * cognitoIdentity).
 *
 * Not reproduced: presigned URLs (query-string signatures), the `date` header instead of
 * `x-amz-date`, SigV4A, and IAM policy evaluation (which execute-api ARNs a principal may
 * invoke): locally every known key may call every route, and the head's own authorization
 * (shared/api/authz.ts) decides, as it does on AWS after IAM has let a request through.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { APIGatewayEventRequestContextIAMAuthorizer } from 'aws-lambda';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256, SIGNING_SERVICE } from '#shared/api/signing.ts';

/** A principal the stand-in knows: an IAM user with one access key. */
export interface LocalPrincipal {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  /** e.g. `arn:aws:iam::123456789012:user/sledge-tenant-a`. */
  userArn: string;
  /** The IAM unique id (`AIDA...`). */
  userId: string;
  accountId: string;
}

export interface LocalIamOptions {
  principals: readonly LocalPrincipal[];
  /** The region in the credential scope. Default `AWS_REGION`, else us-east-1. */
  region?: string;
  /** Allowed clock skew either way. Default 15 minutes, as API Gateway. */
  maxSkewMs?: number;
  /** The clock; default Date.now. */
  now?: () => number;
}

export type IamIdentity = APIGatewayEventRequestContextIAMAuthorizer['iam'];

export type IamVerdict = { ok: true; iam: IamIdentity } | { ok: false; message: string };

export const MAX_SKEW_MS = 15 * 60 * 1000;

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const SIGNATURE_MISMATCH =
  'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.';
const INVALID_TOKEN = 'The security token included in the request is invalid.';

/** `20240102T030405Z` -> epoch ms, or NaN. */
function parseAmzDate(value: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return Number.NaN;
  return Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
}

function formatAmzDate(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z').replace(/[-:]/g, '');
}

/** The parts of an `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...` header. */
function parseAuthorization(header: string): { credential: string; signedHeaders: string; signature: string } | string {
  const space = header.indexOf(' ');
  const algorithm = space < 0 ? header : header.slice(0, space);
  if (algorithm !== 'AWS4-HMAC-SHA256') return `Authorization header requires the AWS4-HMAC-SHA256 algorithm, not '${algorithm}'.`;
  const fields: Record<string, string> = {};
  for (const part of header.slice(space + 1).split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  for (const name of ['Credential', 'SignedHeaders', 'Signature']) {
    if (!fields[name]) return `Authorization header requires '${name}' parameter. Authorization=${header}`;
  }
  return { credential: fields.Credential!, signedHeaders: fields.SignedHeaders!, signature: fields.Signature! };
}

/** A query string decoded into the SDK signer's shape (repeated keys become arrays). */
function parseQuery(raw: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of new URLSearchParams(raw)) {
    const prior = out[k];
    out[k] = prior === undefined ? v : [prior, v].flat();
  }
  return out;
}

export interface SignedRequest {
  method: string;
  /** The path as sent on the request line, still percent-encoded, without the query. */
  path: string;
  /** The query string as sent, without `?`. */
  query: string;
  /** Lowercase names; repeated headers joined with commas (Node's `headersDistinct`, joined). */
  headers: Record<string, string | undefined>;
  body: Buffer;
}

/**
 * Checks a request's signature the way API Gateway's IAM authorization does.
 *
 * @example
 * const verdict = await verifySigV4({ principals }, { method: 'GET', path: '/volumes', query: '', headers, body });
 * if (!verdict.ok) reply(403, verdict.message);
 */
export async function verifySigV4(opts: LocalIamOptions, req: SignedRequest): Promise<IamVerdict> {
  const authorization = req.headers.authorization;
  if (!authorization) return { ok: false, message: 'Forbidden' };
  const parsed = parseAuthorization(authorization);
  if (typeof parsed === 'string') return { ok: false, message: parsed };

  const [accessKeyId, date, region, service, terminator, ...rest] = parsed.credential.split('/');
  const expectedRegion = opts.region ?? process.env.AWS_REGION ?? 'us-east-1';
  if (!accessKeyId || !date || !region || !service || terminator !== 'aws4_request' || rest.length > 0) {
    return { ok: false, message: `Credential should be scoped to a valid region, service and aws4_request terminator. Credential=${parsed.credential}` };
  }
  if (region !== expectedRegion) return { ok: false, message: `Credential should be scoped to a valid region, not '${region}'.` };
  if (service !== SIGNING_SERVICE) return { ok: false, message: `Credential should be scoped to correct service: '${SIGNING_SERVICE}'.` };

  const amzDate = req.headers['x-amz-date'];
  if (!amzDate) return { ok: false, message: 'Authorization header requires existence of either a \'X-Amz-Date\' or a \'Date\' header (only X-Amz-Date is supported here).' };
  const signedAt = parseAmzDate(amzDate);
  if (Number.isNaN(signedAt)) return { ok: false, message: `X-Amz-Date must be in the ISO8601 Long Format "yyyyMMdd'T'HHmmss'Z'", got '${amzDate}'.` };
  if (amzDate.slice(0, 8) !== date) return { ok: false, message: `Credential should be scoped to a valid date: '${amzDate.slice(0, 8)}', not '${date}'.` };
  const now = (opts.now ?? Date.now)();
  const skew = opts.maxSkewMs ?? MAX_SKEW_MS;
  const minutes = `${Math.round(skew / 60_000)} min.`;
  if (signedAt < now - skew) {
    return { ok: false, message: `Signature expired: ${amzDate} is now earlier than ${formatAmzDate(now - skew)} (${formatAmzDate(now)} - ${minutes})` };
  }
  if (signedAt > now + skew) {
    return { ok: false, message: `Signature not yet current: ${amzDate} is still later than ${formatAmzDate(now + skew)} (${formatAmzDate(now)} + ${minutes})` };
  }

  const signedHeaders = parsed.signedHeaders.split(';');
  if (!signedHeaders.includes('host')) return { ok: false, message: `'Host' must be a 'SignedHeader' in the AWS Authorization.` };
  if (!signedHeaders.includes('x-amz-date')) return { ok: false, message: `'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.` };
  const canonicalHeaders: Record<string, string> = {};
  for (const name of signedHeaders) {
    const value = req.headers[name];
    if (value === undefined || name !== name.toLowerCase()) return { ok: false, message: SIGNATURE_MISMATCH };
    canonicalHeaders[name] = value;
  }

  const principal = opts.principals.find((p) => p.accessKeyId === accessKeyId);
  if (!principal) return { ok: false, message: INVALID_TOKEN };
  if ((req.headers['x-amz-security-token'] ?? undefined) !== principal.sessionToken) return { ok: false, message: INVALID_TOKEN };

  // The body's hash, computed here; a declared one must match it.
  const payloadHash = req.body.length === 0 ? EMPTY_SHA256 : createHash('sha256').update(req.body).digest('hex');
  const declared = req.headers['x-amz-content-sha256'];
  if (declared !== undefined && declared !== payloadHash) {
    return { ok: false, message: 'The provided x-amz-content-sha256 header does not match what was computed.' };
  }

  // The canonical request and signature, recomputed by the SDK's signer with the signed headers
  // only and the computed payload hash (passed as x-amz-content-sha256, which the signer takes as
  // the payload hash, and signs only if the client did).
  const signer = new SignatureV4({
    service: SIGNING_SERVICE,
    region,
    credentials: {
      accessKeyId: principal.accessKeyId,
      secretAccessKey: principal.secretAccessKey,
      ...(principal.sessionToken ? { sessionToken: principal.sessionToken } : {}),
    },
    sha256: Sha256,
    applyChecksum: false,
  });
  const recomputed = await signer.sign(
    {
      method: req.method.toUpperCase(),
      protocol: 'http:',
      hostname: canonicalHeaders.host ?? '',
      path: req.path,
      query: parseQuery(req.query),
      headers: { ...canonicalHeaders, 'x-amz-content-sha256': payloadHash },
    },
    {
      signingDate: new Date(signedAt),
      signableHeaders: new Set(signedHeaders),
      ...(signedHeaders.includes('x-amz-content-sha256') ? {} : { unsignableHeaders: new Set(['x-amz-content-sha256']) }),
    },
  );
  const ours = parseAuthorization(String(recomputed.headers.authorization));
  if (typeof ours === 'string') return { ok: false, message: SIGNATURE_MISMATCH };
  const a = Buffer.from(ours.signature);
  const b = Buffer.from(parsed.signature);
  if (ours.signedHeaders !== parsed.signedHeaders || a.length !== b.length || !timingSafeEqual(a, b)) return { ok: false, message: SIGNATURE_MISMATCH };

  return {
    ok: true,
    iam: {
      accessKey: principal.accessKeyId,
      accountId: principal.accountId,
      callerId: principal.userId,
      cognitoIdentity: null,
      principalOrgId: null as unknown as string,
      userArn: principal.userArn,
      userId: principal.userId,
    },
  };
}
